"""The maintenance lease: one worker at a time leads, and runs the leader-only services.

Every worker calls :meth:`Leader.tick` from its loop; it takes or renews the lease, and
the holder runs each service's ``run_once`` (rescue, prune). The lease is a row
(``protocol.workers.ACQUIRE_LEASE``), not a session advisory lock, so leadership also
works behind PgBouncer in transaction mode. Correctness does not rest on it: the rescue
locks what it moves, so two leaders at once (a lease that expired mid-round) would
still move each job once.

No maintenance error stops a worker. A service that raises is logged with its
traceback, announced (``signals.maintenance_failed``, which the metrics count), and
tried again next round; the services after it still run. A lost connection is the
exception that is passed on: the worker's connection handling reconnects, and the next
round starts over. A lease statement that fails is logged the same way, and the worker
goes on without leading until the next round.
"""

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg

from .. import signals
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
        try:
            self.is_leader = protocol.acquire_lease(
                cursor,
                name=LEASE_NAME,
                holder=self.worker_id,
                ttl=self.interval * self.LEASE_ROUNDS,
            )
        except Exception as exc:
            self._failed("the maintenance lease", exc, cursor)
            self.is_leader = False
            return
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
            except Exception as exc:
                self._failed(type(service).__name__, exc, cursor)

    def _failed(self, what: str, exc: Exception, cursor: Cursor) -> None:
        """Log and announce a failed chore; pass on only a lost connection."""
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and (
            cursor.connection.broken or cursor.connection.closed
        ):
            raise exc  # an outage: the worker's connection handling takes over
        logger.error(
            "Maintenance: %s failed (%s: %s); the worker goes on, and tries again in %g s",
            what, type(exc).__name__, str(exc).strip() or "no message", self.interval,
            exc_info=exc, extra={"action": "maintenance_error"},
        )  # fmt: skip
        signals.send(
            signals.maintenance_failed, Leader,
            worker_id=self.worker_id, service=what, exception=exc,
        )  # fmt: skip

    def resign(self, cursor: Cursor) -> None:
        """Hand the lease back (at shutdown), so another worker leads at once."""
        if self.is_leader:
            protocol.release_lease(cursor, name=LEASE_NAME, holder=self.worker_id)
            self.is_leader = False
