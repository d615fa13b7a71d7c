"""The ``runjobs`` supervisor's loop: wait (notify | poll) → claim for free slots → record.

One ``Supervisor`` per ``runjobs`` process. It owns the queue connection and makes all
the protocol calls (it never writes SQL itself): registration and heartbeats, claims
sized to its free slots, and the services it hosts (the maintenance leader and the
schedule tick). Jobs run in a pool (``pool.py``): child processes in production,
threads in-process for tests. Outcomes go to an ``OutcomeRecorder`` (``outcomes.py``),
which records them in batches.
"""

import atexit
import logging
import os
import queue
import random
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from .. import __version__, registry
from ..backend import get_backend
from ..protocol import jobs as protocol
from ..protocol import workers as worker_protocol
from ..protocol.jobs import ClaimedJob
from ..services.leader import Leader
from ..services.limits import LimitKeeper
from ..services.pruner import Pruner
from ..services.rescuer import Rescuer
from ..services.scheduler import Scheduler
from . import dbconn
from .executor import execute
from .listener import Listener
from .outcomes import Outcome, OutcomeKind, OutcomeRecorder, WorkerStats
from .pool import ProcessPool, ThreadPool

logger = logging.getLogger(__name__)

# Put on the inbox to wake the loop (a notification, a signal).
_WAKE = object()


class Supervisor:
    """Claim and run jobs of one backend until stopped (or, in burst mode, until idle)."""

    #: Claim beyond free slots only as many jobs as recent ones would finish in this many
    #: seconds. Short jobs get batched claims; long jobs are never hoarded while another
    #: worker sits idle.
    PREFETCH_WINDOW = 0.05
    MAX_PREFETCH = 200

    def __init__(
        self,
        *,
        backend: str = "default",
        queues: Sequence[str] | None = None,
        processes: int | None = None,
        threads: int = 1,
        burst: bool = False,
        poll_interval: float | None = None,
        listen: bool | None = None,
        grace: float = 30.0,
        max_jobs_per_child: int | None = None,
        max_memory_kib: int | None = None,
        autoscale: tuple[int, int] | None = None,
        worker_id: str | None = None,
    ) -> None:
        jobs_backend = get_backend(backend)
        self.backend = jobs_backend
        options = jobs_backend.jobs_options
        self.options = options
        self.queues = list(queues) if queues else None
        self.burst = burst
        self.grace = grace
        self.poll_interval = poll_interval if poll_interval is not None else options.POLL_INTERVAL
        self.listen = options.LISTEN if listen is None else listen
        self.worker_id = worker_id or (
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        )
        self.stats = WorkerStats()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.pool: ThreadPool | ProcessPool
        if processes is None:
            self.pool = ThreadPool(threads, self._execute, self._inbox)
        else:
            self.pool = ProcessPool(
                backend=jobs_backend,
                worker_id=self.worker_id,
                processes=processes,
                threads=threads,
                inbox=self._inbox,
                max_jobs_per_child=max_jobs_per_child,
                max_memory_kib=max_memory_kib,
                autoscale=autoscale,
            )
        self.leader = Leader(
            self.worker_id,
            interval=options.MAINTENANCE_INTERVAL,
            services=[
                Rescuer(worker_timeout=options.WORKER_TIMEOUT),
                Pruner(retention=options.RETENTION),
                LimitKeeper(),
            ],
        )
        self.scheduler = Scheduler(jobs_backend, self.worker_id)
        self._queue_db = dbconn.QueueConnection(
            jobs_backend.database, purpose="worker", on_back=self._database_back
        )

        self._next_heartbeat = 0.0
        self._in_flight = 0
        #: Ids of jobs claimed and not yet recorded: what this worker really holds.
        self._held: set[int] = set()
        self._reconcile = False
        self.outcomes = OutcomeRecorder(
            jobs_backend, self.worker_id, self._queue_db, self.stats, self._held.discard
        )
        self._avg_duration: float | None = None
        self._stopping = False
        self._aborting = False
        self._wake_pending = False
        self._run_done = threading.Event()
        self.listener: Listener | None = None

    # ── lifecycle ────────────────────────────────────────────────────────────

    def run(self) -> None:
        """Serve until stopped; every claimed job is finished or released on the way out."""
        registry.discover(self.options.TASK_MODULES)
        previous_handlers = self._install_signal_handlers()
        # When the interpreter exits under us (the autoreloader's restart), stop first:
        # running jobs go back to the queue instead of waiting for a rescue.
        atexit.register(self._stop_at_exit)
        try:
            self._register()
            if self.listen:
                listen_db = self.options.LISTEN_DATABASE or self.backend.database
                self.listener = Listener(listen_db, self.queues, self.wake)
                self.listener.start()
            self.pool.start()
            paths = registry.registered_paths()
            logger.info(
                "Worker %s serving backend %r, queues %s, %s, %d declared task(s)",
                self.worker_id, self.backend.alias, ", ".join(self.queues or ["(all)"]),
                self._describe_pool(), len(paths), extra={"action": "worker_started"},
            )  # fmt: skip
            logger.debug("Declared tasks: %s", ", ".join(paths) or "(none)")
            self._loop()
        finally:
            self._shutdown()
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            atexit.unregister(self._stop_at_exit)
            self._run_done.set()

    def _stop_at_exit(self) -> None:
        if not self._run_done.is_set():
            self.stop(abort=True)
            self._run_done.wait(15)

    def stop(self, abort: bool = False) -> None:
        """Stop claiming and finish what is running (safe from any thread)."""
        self._stopping = True
        self._aborting = self._aborting or abort
        self.wake()

    def wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            self._inbox.put(_WAKE)

    def _describe_pool(self) -> str:
        if isinstance(self.pool, ProcessPool):
            size = (
                f"autoscale {self.pool.autoscale[0]}-{self.pool.autoscale[1]}"
                if self.pool.autoscale
                else str(self.pool.target)
            )
            return f"{size} process(es) x {self.pool.threads} thread(s)"
        return f"{self.pool.size} thread(s) in-process"

    def _install_signal_handlers(self) -> dict[int, Any]:
        """Make SIGTERM and SIGINT stop gracefully; return the handlers they replaced."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handle(signum: int, frame: object) -> None:
            name = signal.Signals(signum).name
            if self._stopping:
                logger.warning(
                    "Got %s again: stopping now; %d running job(s) go back to the queue",
                    name, self._in_flight,
                )  # fmt: skip
                self._aborting = True
            else:
                logger.info(
                    "Got %s: no new jobs; waiting up to %.0f s for %d running job(s)",
                    name, self.grace, self._in_flight,
                )  # fmt: skip
                self._stopping = True
            # A queue put from inside a signal handler could deadlock on the queue's own
            # lock; a short-lived thread does it safely.
            threading.Thread(target=self._inbox.put, args=(_WAKE,), daemon=True).start()

        return {
            signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)
        }

    def _register(self) -> None:
        def register(cur: psycopg.Cursor) -> None:
            worker_protocol.register_worker(
                cur,
                worker_id=self.worker_id,
                backend=self.backend.alias,
                host=socket.gethostname(),
                pid=os.getpid(),
                queues=self.queues,
                concurrency=self._slots(),
                version=__version__,
            )

        while not self._stopping:
            ok, _ = self._db(register)
            if ok:
                self._next_heartbeat = time.monotonic() + self.options.HEARTBEAT_INTERVAL
                return
            time.sleep(min(1.0, max(0.0, self._queue_db.retry_at - time.monotonic())))

    def _slots(self) -> int:
        if isinstance(self.pool, ProcessPool):
            return max(self.pool.target, 1) * self.pool.threads
        return self.pool.size

    def _shutdown(self) -> None:
        try:
            self._drain()
        finally:
            self._close()

    def _drain(self) -> None:
        """Release what never started, let the rest finish (up to the grace), record all."""
        unstarted = self.pool.take_unstarted()
        for job in unstarted:
            self.outcomes.add(Outcome(job, OutcomeKind.RELEASED))
        self._in_flight -= len(unstarted)
        deadline = time.monotonic() + self.grace
        while self._in_flight > 0 and not self._aborting and time.monotonic() < deadline:
            self._timers()
            self._collect(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            self._flush()
        if self._in_flight > 0:
            if self._aborting:
                logger.warning("Stopping now: %d job(s) go back to the queue", self._in_flight)
            else:
                logger.warning(
                    "Grace period of %.0f s is over: %d job(s) go back to the queue",
                    self.grace, self._in_flight,
                )  # fmt: skip
            self.pool.abort()
            abort_deadline = time.monotonic() + 10
            while self._in_flight > 0 and time.monotonic() < abort_deadline:
                self._collect(timeout=0.2)
        # Outcomes are worth a little patience: without them the jobs would be re-run.
        flush_deadline = time.monotonic() + 10
        while self.outcomes and time.monotonic() < flush_deadline:
            self._flush(force=True)
            if self.outcomes:
                time.sleep(0.2)

    def _close(self) -> None:
        self.pool.stop()
        if self.listener:
            self.listener.stop()
        self._db(self.leader.resign)
        self._db(lambda cur: worker_protocol.deregister_worker(cur, worker_id=self.worker_id))
        self._queue_db.close()
        elapsed = time.monotonic() - self.stats.started_at
        s = self.stats
        logger.info(
            "Worker %s stopped after %.1f s: %d succeeded, %d failed, %d retried, %d snoozed, "
            "%d released, %d lost to a newer attempt",
            self.worker_id, elapsed, s.succeeded, s.failed, s.retried, s.snoozed, s.released,
            s.lost, extra={"action": "worker_stopped"},
        )  # fmt: skip

    # ── the loop ─────────────────────────────────────────────────────────────

    def _loop(self) -> None:
        while not self._stopping:
            self._timers()
            self._flush()
            claimed = self._claim()
            if self._stopping:
                break
            idle = self._in_flight == 0 and not claimed
            if idle and self.burst and self.pool.capacity > 0 and self._queue_db.up:
                self._flush(force=True)
                if not self.outcomes:
                    return
            if idle:
                # Sleep until a notification or the next poll (jittered so that workers
                # started together do not poll in step), or the next timer.
                jitter = 0.9 + 0.2 * random.random()  # noqa: S311
                self._collect(min(self.poll_interval * jitter, self._time_to_timers()))
            elif not claimed:
                # Busy: wake for the next outcome, or when buffered ones are due.
                self._collect(min(self._time_to_flush(), self._time_to_timers()))

    def _timers(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.options.HEARTBEAT_INTERVAL
            ok, alive = self._db(
                lambda cur: worker_protocol.heartbeat(
                    cur, worker_id=self.worker_id, concurrency=self._slots()
                )
            )
            if ok and not alive:
                logger.warning(
                    "Worker %s had been declared lost; registering again", self.worker_id
                )
                self._register()
        if self._reconcile:
            ok, orphans = self._db(
                lambda cur: protocol.release_orphans(
                    cur, worker_id=self.worker_id, held=self._held
                )
            )
            if ok:
                self._reconcile = False
                if orphans:
                    logger.warning(
                        "Released %d job(s) claimed while the connection was failing: %s",
                        len(orphans), orphans, extra={"action": "orphans_released"},
                    )  # fmt: skip
        if self.leader.due():
            self._db(self.leader.tick)
        if self.scheduler.due():
            self._db(self.scheduler.tick)

    def _time_to_timers(self) -> float:
        now = time.monotonic()
        return max(
            0.0,
            min(self._next_heartbeat, self.leader.next_run, self.scheduler.next_run) - now,
        )

    def _collect(self, timeout: float) -> None:
        """Move finished outcomes from the inbox to the buffer, waiting up to ``timeout``."""
        try:
            item = self._inbox.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return
        while True:
            if item is _WAKE:
                self._wake_pending = False
            else:
                self._finished(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _finished(self, outcome: Outcome) -> None:
        self._in_flight -= 1
        self.outcomes.add(outcome)
        if outcome.kind in (OutcomeKind.SUCCEEDED, OutcomeKind.RECORDED, OutcomeKind.FAILED):
            # An exponentially weighted average of run time steers the prefetch.
            if self._avg_duration is None:
                self._avg_duration = outcome.duration
            else:
                self._avg_duration += 0.2 * (outcome.duration - self._avg_duration)

    def _time_to_flush(self) -> float:
        return self.outcomes.time_to_flush(self.poll_interval)

    def _claim_size(self) -> int:
        capacity = self.pool.capacity
        if capacity <= 0:
            return 0
        extra = 0
        if self._avg_duration is not None:
            expected = max(self._avg_duration, 1e-5)
            extra = min(self.MAX_PREFETCH, int(self.PREFETCH_WINDOW / expected))
        # Refill at half the prefetch, so slots never wait on a claim round trip while
        # one claim still serves a whole batch.
        if extra == 0:
            return capacity - self._in_flight
        if self._in_flight > capacity + extra // 2:
            return 0
        return capacity + extra - self._in_flight

    def _claim(self) -> list[ClaimedJob]:
        limit = self._claim_size()
        if limit <= 0:
            return []
        ok, claimed = self._db(
            lambda cur: protocol.claim(
                cur,
                worker_id=self.worker_id,
                backend=self.backend.alias,
                queues=self.queues,
                limit=limit,
            )
        )
        if not ok or not claimed:
            return []
        self.pool.note_demand(len(claimed) == limit)
        self.stats.claimed += len(claimed)
        self._in_flight += len(claimed)
        self._held.update(job.id for job in claimed)
        self.pool.submit(claimed)
        return claimed

    def _execute(self, job: ClaimedJob) -> Outcome:
        return execute(job, self.backend, self.worker_id)

    def _flush(self, force: bool = False) -> None:
        self.outcomes.flush(force=force, busy=self._in_flight > 0)

    # ── database access that survives an outage ─────────────────────────────

    def _db(self, work: Callable[[psycopg.Cursor], Any]) -> tuple[bool, Any]:
        """Run ``work`` on the queue connection; (False, None) while the database is away."""
        return self._queue_db.run(work)

    def _database_back(self) -> None:
        # A claim may have committed without its reply reaching us.
        self._reconcile = True
