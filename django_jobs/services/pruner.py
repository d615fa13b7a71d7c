"""Delete history past its retention: finished jobs (``OPTIONS["RETENTION"]``), workflows
whose steps are all gone, and the rows of workers gone for a day.

The round runs in the leader's worker loop, so it is bounded: bounded batches (one
short transaction each) and a time budget per round. A backlog of old rows is worked off
over several rounds instead of stalling the leader's claims.
"""

import logging
import time

from ..protocol import Cursor, operator, workers

logger = logging.getLogger(__name__)


class Pruner:
    #: Rows deleted per statement ...
    BATCH = 5_000
    #: ... and seconds spent per round at most.
    BUDGET = 0.5
    #: Dead worker rows are kept this long for the admin's history.
    FORGET_WORKERS_AFTER = 24 * 3600.0

    def __init__(self, retention: dict[str, float | None]) -> None:
        #: Seconds to keep finished jobs, per state (None: forever); see conf.RETENTION.
        self.retention = retention

    def run_once(self, cursor: Cursor) -> int:
        """Delete what is past its retention, within the budget; return the jobs deleted."""
        workers.prune_workers(cursor, older_than=self.FORGET_WORKERS_AFTER)
        deadline = time.monotonic() + self.BUDGET
        deleted = 0
        for state, keep in self.retention.items():
            if keep is None:
                continue
            while time.monotonic() < deadline:
                count = operator.prune(
                    cursor, older_than=keep, states=[state], batch=self.BATCH, max_batches=1
                )
                deleted += count
                if count < self.BATCH:
                    break
        kept = [keep for keep in self.retention.values() if keep is not None]
        if kept and time.monotonic() < deadline:
            # A workflow outlives its steps only as an empty row: none of its steps can
            # be younger than the shortest retention once they are all gone.
            operator.prune_workflows(cursor, older_than=min(kept), batch=self.BATCH)
        if deleted:
            logger.info(
                "Pruned %d finished job(s) past their retention", deleted,
                extra={"action": "jobs_pruned"},
            )  # fmt: skip
        return deleted
