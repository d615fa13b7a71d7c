"""Leader-elected chores: rescue jobs of lost workers, prune old jobs, forget dead workers.

Every worker calls :meth:`Maintenance.tick` from its loop; only the holder of the
``maintenance`` lease does the work. The lease is a row (see ``sql.ACQUIRE_LEASE``),
so leadership also works behind PgBouncer in transaction mode. Correctness does not
rest on it: the rescue statement locks what it moves, so two leaders at once (a
lease that expired mid-round) would still move each job once.
"""

import logging
import random
import time
from dataclasses import dataclass, field

from . import protocol
from .protocol import Cursor

logger = logging.getLogger("django_jobs.maintenance")

LEASE_NAME = "maintenance"
#: Dead worker rows are kept this long for the admin's history.
FORGET_WORKERS_AFTER = 24 * 3600.0
#: Pruning deletes this many rows per statement (one short transaction each) ...
PRUNE_BATCH = 5_000
#: ... and stops for the round after this many seconds, because the round runs in the
#: leader's worker loop: a backlog of old rows is worked off over several rounds
#: instead of stalling the leader's claims.
PRUNE_BUDGET = 0.5


@dataclass
class Maintenance:
    worker_id: str
    interval: float
    worker_timeout: float
    retry_delay: float = 1.0
    #: Seconds to keep finished jobs, per state (None: forever); see conf.RETENTION.
    retention: dict[str, float | None] = field(default_factory=dict)
    next_run: float = 0.0
    is_leader: bool = False

    def due(self) -> bool:
        return time.monotonic() >= self.next_run

    def tick(self, cursor: Cursor) -> list[tuple[int, str, str]]:
        """Renew or take the lease; as leader, run one round. Return the rescued jobs."""
        # Jitter spreads the workers' attempts to take the lease.
        self.next_run = time.monotonic() + self.interval * (0.8 + 0.4 * random.random())  # noqa: S311
        was_leader = self.is_leader
        # The lease outlives three missed rounds, so one slow round does not hand it over.
        self.is_leader = protocol.acquire_lease(
            cursor, name=LEASE_NAME, holder=self.worker_id, ttl=self.interval * 3
        )
        if self.is_leader != was_leader:
            logger.info(
                "Worker %s %s the maintenance lease", self.worker_id,
                "took" if self.is_leader else "lost", extra={"action": "lease_change"},
            )  # fmt: skip
        if not self.is_leader:
            return []
        return self.run_once(cursor)

    def run_once(self, cursor: Cursor) -> list[tuple[int, str, str]]:
        rescued = protocol.rescue(
            cursor, stale_after=self.worker_timeout, retry_in=self.retry_delay
        )
        for job_id, state, worker in rescued:
            logger.warning(
                "Rescued job %s from lost worker %s: %s", job_id, worker,
                "will run again" if state == "READY" else "no attempts left, FAILED",
                extra={"action": "job_rescued", "job_id": job_id},
            )  # fmt: skip
        protocol.prune_workers(cursor, older_than=FORGET_WORKERS_AFTER)
        self.prune(cursor)
        return rescued

    def prune(self, cursor: Cursor) -> int:
        """Delete finished jobs past their retention, within the round's time budget."""
        deadline = time.monotonic() + PRUNE_BUDGET
        deleted = 0
        for state, keep in self.retention.items():
            if keep is None:
                continue
            while time.monotonic() < deadline:
                count = protocol.prune(
                    cursor, older_than=keep, states=[state], batch=PRUNE_BATCH, max_batches=1
                )
                deleted += count
                if count < PRUNE_BATCH:
                    break
        if deleted:
            logger.info(
                "Pruned %d finished job(s) past their retention", deleted,
                extra={"action": "jobs_pruned"},
            )  # fmt: skip
        return deleted

    def resign(self, cursor: Cursor) -> None:
        if self.is_leader:
            protocol.release_lease(cursor, name=LEASE_NAME, holder=self.worker_id)
            self.is_leader = False
