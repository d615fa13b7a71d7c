"""Keep the limiters honest: recount them from the jobs, and forget keys nobody uses.

The claim and the statements that end an attempt keep every limiter's counts exact
between them (protocol/limits.py; the recount is protocol/limiters.py). This is the
safety net, run by the maintenance leader each round: a statement written elsewhere
that moves a limited job out of RUNNING without giving its slot back, or an operator
who cancels or deletes a parked job, would otherwise leave a count off for good. A
count found off is logged and set right. Key rows unused for an hour are deleted, so a
key per customer does not grow the table for ever.
"""

import logging

from ..protocol import Cursor
from ..protocol import limiters as protocol

logger = logging.getLogger(__name__)


class LimitKeeper:
    #: Limiter rows checked per round (one transaction).
    BATCH = 1000
    #: A key row unused this long (seconds) is deleted.
    IDLE_KEYS_AFTER = 3600.0

    def run_once(self, cursor: Cursor) -> list[protocol.Recount]:
        """Recount up to BATCH limiters and prune idle keys; return the rows set right."""
        with cursor.connection.transaction():
            ids = protocol.lock_counted(cursor, limit=self.BATCH)
            fixed = protocol.recount(cursor, ids)
        for row in fixed:
            logger.warning(
                "Limiter %s of backend %r counted %d running and %d parked jobs; there are "
                "%d and %d: set right", row.name, row.backend, row.running_was,
                row.parked_was, row.running, row.parked,
                extra={"action": "limiter_recounted", "limiter": row.name},
            )  # fmt: skip
        protocol.prune_idle_keys(cursor, idle=self.IDLE_KEYS_AFTER, limit=self.BATCH)
        return fixed
