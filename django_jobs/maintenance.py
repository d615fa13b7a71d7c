"""Leader-elected chores: rescue jobs of lost workers, forget long-dead workers.

Every worker calls :meth:`Maintenance.tick` from its loop; only the holder of the
``maintenance`` lease does the work. The lease is a row (see ``sql.ACQUIRE_LEASE``),
so leadership also works behind PgBouncer in transaction mode. Correctness does not
rest on it: the rescue statement locks what it moves, so two leaders at once (a
lease that expired mid-round) would still move each job once.
"""

import logging
import random
import time
from dataclasses import dataclass

from . import protocol
from .protocol import Cursor

logger = logging.getLogger("django_jobs.maintenance")

LEASE_NAME = "maintenance"
#: Dead worker rows are kept this long for the admin's history.
FORGET_WORKERS_AFTER = 24 * 3600.0


@dataclass
class Maintenance:
    worker_id: str
    interval: float
    worker_timeout: float
    retry_delay: float = 1.0
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
        return rescued

    def resign(self, cursor: Cursor) -> None:
        if self.is_leader:
            protocol.release_lease(cursor, name=LEASE_NAME, holder=self.worker_id)
            self.is_leader = False
