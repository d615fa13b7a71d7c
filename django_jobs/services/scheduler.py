"""The schedule tick: fire due schedules of one backend, from every worker.

Every worker ticks (no leader needed): the tick locks the due schedules ``FOR UPDATE
SKIP LOCKED`` in one transaction, so each due row goes to exactly one worker, and fires
each in a savepoint (``schedules/firing.py``), so one broken schedule does not hold up
the others. Between ticks it sleeps until the next schedule is due (at most
``MAX_SLEEP``, so a schedule added in the admin is noticed within seconds). The first
tick writes the schedules declared in settings.
"""

import logging
import time

import psycopg

from .. import registry
from ..backend import JobsBackend
from ..protocol import schedules as protocol
from ..protocol.schedules import ScheduleRow
from ..schedules import declared, firing
from ..schedules.firing import Fired
from ..schedules.timing import Timing
from . import Service

logger = logging.getLogger(__name__)


class Scheduler(Service):
    """Fire the due schedules of one backend; every worker runs one."""

    #: Longest sleep between ticks: how soon a schedule added in the admin is noticed.
    MAX_SLEEP = 5.0
    #: Shortest sleep, so a schedule another worker is firing is not polled in a spin.
    MIN_SLEEP = 0.05
    #: Schedules fired per transaction; more are taken at once by the next tick.
    BATCH = 100
    #: Pause after a tick failed as a whole (not one schedule: the whole statement).
    FAILED_SLEEP = 60.0

    def __init__(self, backend: JobsBackend, worker_id: str) -> None:
        super().__init__(self.MAX_SLEEP)
        self.backend = backend
        self.worker_id = worker_id
        self._synced = False
        #: When to try writing the settings' schedules again after a failed attempt.
        self._sync_retry_at = 0.0

    def tick(self, cursor: psycopg.Cursor) -> list[Fired]:
        """Fire what is due on the worker's (autocommit) connection; return what fired."""
        self.wait(self.MAX_SLEEP)
        if not self._synced:
            self._sync(cursor)
        try:
            with cursor.connection.transaction():
                rows = protocol.lock_due_schedules(
                    cursor, backend=self.backend.alias, limit=self.BATCH
                )
                fired = [f for row in rows for f in self._fire(cursor, row)]
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # The worker's outage handling retries later.
        except Exception:
            # Not a schedule's fault (those are caught one by one): the table itself, say,
            # before `migrate`. Log it, and do not fill the log every few seconds.
            logger.exception("Scheduler tick failed", extra={"action": "scheduler_error"})
            self.wait(self.FAILED_SLEEP)
            return []
        firing.announce(self.backend, fired)
        due_in = protocol.next_schedule_due_in(cursor, backend=self.backend.alias)
        if len(rows) == self.BATCH:
            due_in = 0.0
        sleep = self.MAX_SLEEP if due_in is None else due_in + 0.01
        self.wait(min(self.MAX_SLEEP, max(self.MIN_SLEEP, sleep)))
        return fired

    def _fire(self, cursor: psycopg.Cursor, row: ScheduleRow) -> list[Fired]:
        try:
            with cursor.connection.transaction():  # a savepoint: one schedule's failure
                return firing.fire_due(cursor, self.backend, row)  # leaves the others intact
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except Exception as exc:
            if isinstance(exc, firing.ScheduleError):
                error = str(exc)
            else:
                error = f"{type(exc).__name__}: {exc}"
            logger.error(
                "Schedule %r could not fire: %s", row.name, error,
                exc_info=not isinstance(exc, firing.ScheduleError),
                extra={"action": "schedule_broken", "schedule": row.name},
            )  # fmt: skip
            try:
                next_run_at = Timing.of(row).first_after(row.now, anchor=row.next_run_at)
            except Exception:  # a timing the tick cannot read stops the schedule
                next_run_at = None
            with cursor.connection.transaction():
                protocol.advance_schedule(
                    cursor, schedule_id=row.id, next_run_at=next_run_at, error=error
                )
            return []

    def _sync(self, cursor: psycopg.Cursor) -> None:
        # The worker has done this already (it is done once per process); a scheduler
        # used on its own must know the tasks too.
        if time.monotonic() < self._sync_retry_at:
            return
        registry.discover(self.backend.jobs_options.TASK_MODULES)
        try:
            declared.sync_declared(cursor, self.backend)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except Exception:
            # Not one declaration's fault (those are skipped one by one): the table
            # itself, say, before `migrate`. Try again later, without filling the log.
            logger.exception(
                "Could not write the schedules declared in settings; retrying in %d s",
                self.FAILED_SLEEP,
                extra={"action": "scheduler_error"},
            )
            self._sync_retry_at = time.monotonic() + self.FAILED_SLEEP
            return
        self._synced = True
