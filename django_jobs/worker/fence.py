"""Self-fencing: a worker that cannot renew its heartbeat stops its jobs before the rescue.

The maintenance leader rescues the RUNNING jobs of a worker whose row has not been
refreshed for that worker's ``WORKER_TIMEOUT``, measured on the database's clock from
the ``now()`` of its last heartbeat. A worker cut off from the database (a partition,
a hung connection, a database that stopped answering) cannot tell when that happens,
and must not still be running an attempt when the rescued one starts elsewhere.

So the worker keeps its own lease, on the monotonic clock: ``renewed_at`` is the
moment just *before* it sent the last heartbeat that the database confirmed. The
database's ``now()`` for that heartbeat came later, so the rescue cannot come before
``renewed_at + WORKER_TIMEOUT`` (clocks advance at the same rate; they need not agree
on the time). From that moment on the worker:

- stops claiming once the lease is older than ``claim_until`` (halfway between a normal
  heartbeat's age and the fence), so it does not start work it would have to kill;
- never starts a job past ``fence_after`` (a claim whose reply was held up by the
  partition), and kills every process running a job by then (``WORKER_TIMEOUT`` minus
  ``margin``: a check period and the time a killed process takes to die, with room).

``time.monotonic()`` is CLOCK_MONOTONIC, the same clock in every process of the host,
so the supervisor renews the lease in shared memory and its children read it there.
What this cannot cover: a worker frozen as a whole (SIGSTOP, a paused VM, a host that
swaps for longer than the margin) runs nothing while frozen, but is killed only when it
thaws; and a database whose wall clock is stepped forward declares workers lost early.
``docs/explanation/guarantees.md`` states the guarantee and the test that proves it.
"""

import logging
import os
import time
from multiprocessing.sharedctypes import RawValue

logger = logging.getLogger(__name__)

#: The exit code of a process that stopped itself at the fence (EX_TEMPFAIL: a process
#: manager restarts it, and it serves again once the database answers).
EXIT_FENCED = 75


class Fence:
    """A worker's heartbeat lease, shared by its supervisor and its children."""

    def __init__(self, *, heartbeat_interval: float, worker_timeout: float) -> None:
        self.worker_timeout = worker_timeout
        #: Kill a little before the rescue can come: a tenth of the timeout, at least 1 s,
        #: and never more than a quarter (the settings keep the timeout >= 2 intervals,
        #: so the fence stays 1.5 intervals or more after a heartbeat).
        self.margin = min(max(1.0, 0.1 * worker_timeout), worker_timeout / 4)
        self.fence_after = worker_timeout - self.margin
        self.claim_until = (heartbeat_interval + self.fence_after) / 2
        # Shared memory; no lock: one writer (the heartbeat), a double is written whole.
        self._renewed_at = RawValue("d", time.monotonic())

    def renew(self, sent_at: float) -> None:
        """The database confirmed a heartbeat sent at ``sent_at`` (time.monotonic())."""
        if sent_at > self._renewed_at.value:
            self._renewed_at.value = sent_at

    @property
    def renewed_at(self) -> float:
        return self._renewed_at.value

    def age(self, now: float | None = None) -> float:
        """Seconds since the last confirmed heartbeat was sent."""
        return (time.monotonic() if now is None else now) - self._renewed_at.value

    def may_claim(self, now: float | None = None) -> bool:
        return self.age(now) < self.claim_until

    def expired(self, now: float | None = None) -> bool:
        """Past the fence: nothing may run any more until a heartbeat gets through."""
        return self.age(now) >= self.fence_after

    def describe(self) -> str:
        return (
            f"no heartbeat confirmed for {self.age():.1f} s (WORKER_TIMEOUT "
            f"{self.worker_timeout:g} s; jobs are stopped {self.margin:g} s before it)"
        )


def exit_fenced(fence: Fence, what: str) -> None:
    """Stop this process at once: it runs ``what`` and the fence has passed.

    For what cannot be killed from outside (a thread of the supervisor's process with
    ``--pool threads``, a job about to start whose claim's reply came late): the
    process goes, and with it every attempt it could still run.
    """
    logger.critical(
        "Stopping process %s at once: it %s, and %s", os.getpid(), what, fence.describe(),
        extra={"action": "worker_fenced_exit"},
    )  # fmt: skip
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_FENCED)
