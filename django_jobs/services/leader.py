"""The maintenance lease: one worker at a time leads, and runs the leader-only services.

Every worker calls :meth:`Leader.tick` from its loop; it takes or renews the lease, and
the holder runs each service's ``run_once`` (rescue, prune). The lease is a row
(``protocol.workers.ACQUIRE_LEASE``), not a session advisory lock, so leadership also
works behind PgBouncer in transaction mode. Correctness does not rest on it: the rescue
locks what it moves, so two leaders at once (a lease that expired mid-round) would
still move each job once. A service that fails is logged and tried again next round;
it never stops the worker that leads.
"""

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg

from ..protocol import Cursor
from ..protocol import workers as protocol
from . import Service

logger = logging.getLogger(__name__)

LEASE_NAME = "maintenance"


class LeaderService(Protocol):
    def run_once(self, cursor: Cursor) -> Any: ...


class Leader(Service):
    #: The lease outlives this many rounds, so one slow round does not hand it over.
    LEASE_ROUNDS = 3

    def __init__(
        self, worker_id: str, *, interval: float, services: Sequence[LeaderService]
    ) -> None:
        super().__init__(interval)
        self.worker_id = worker_id
        self.services = list(services)
        self.is_leader = False

    def tick(self, cursor: Cursor) -> None:
        """Renew or take the lease; as leader, run one round of every service."""
        self.wait()
        was_leader = self.is_leader
        self.is_leader = protocol.acquire_lease(
            cursor, name=LEASE_NAME, holder=self.worker_id, ttl=self.interval * self.LEASE_ROUNDS
        )
        if self.is_leader != was_leader:
            logger.info(
                "Worker %s %s the maintenance lease", self.worker_id,
                "took" if self.is_leader else "lost", extra={"action": "lease_change"},
            )  # fmt: skip
        if not self.is_leader:
            return
        for service in self.services:
            try:
                service.run_once(cursor)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise  # an outage: the worker's connection handling takes over
            except Exception:
                logger.exception(
                    "Maintenance: %s failed; the worker goes on, and tries again in %.0f s",
                    type(service).__name__, self.interval,
                    extra={"action": "maintenance_error"},
                )  # fmt: skip

    def resign(self, cursor: Cursor) -> None:
        """Hand the lease back (at shutdown), so another worker leads at once."""
        if self.is_leader:
            protocol.release_lease(cursor, name=LEASE_NAME, holder=self.worker_id)
            self.is_leader = False
