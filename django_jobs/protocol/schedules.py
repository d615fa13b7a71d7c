"""Periodic schedules: what the tick locks and writes, and the settings' declarations.

A due schedule is locked ``FOR UPDATE SKIP LOCKED`` by whichever worker's tick gets it
first; a unique (schedule, fire_at) run row is the second guard, so each fire time
enqueues at most one job even if a lock is lost (see ``schedules/firing.py``).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import Cursor

#: Columns the scheduler needs to fire a schedule, in this order.
SCHEDULE_COLUMNS = (
    "id",
    "name",
    "backend",
    "task_path",
    "args",
    "kwargs",
    "cron",
    "interval_seconds",
    "timezone",
    "queue_name",
    "priority",
    "start_at",
    "end_at",
    "misfire_policy",
    "max_catchup",
    "next_run_at",
)

# Due schedules of one backend, locked for this transaction. SKIP LOCKED lets every
# worker tick at once: each due row goes to exactly one of them, and a row another
# worker is firing is simply not due for us. Reads the partial index on enabled rows.
# now() is the transaction's start, so every decision of one tick uses one instant.
LOCK_DUE_SCHEDULES = f"""
SELECT {", ".join(SCHEDULE_COLUMNS)}, now()
FROM django_jobs_schedule
WHERE backend = %(backend)s AND enabled AND next_run_at <= now()
ORDER BY next_run_at, id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

SELECT_SCHEDULE = f"""
SELECT {", ".join(SCHEDULE_COLUMNS)}, now()
FROM django_jobs_schedule
WHERE id = %(id)s
FOR UPDATE
"""

# Seconds until the next enabled schedule of the backend is due (negative: overdue),
# NULL when none is pending. Tells an idle worker how long it may sleep.
NEXT_SCHEDULE_DUE_IN = """
SELECT EXTRACT(EPOCH FROM min(next_run_at) - now())::float8
FROM django_jobs_schedule
WHERE backend = %(backend)s AND enabled AND next_run_at IS NOT NULL
"""

DATABASE_NOW = "SELECT now()"

# The second guard behind the row lock: one run per (schedule, fire time). A fire time
# that already has a run (the lock was lost, next_run_at was moved back by hand) inserts
# nothing and so enqueues nothing. `fire_at` NULL (run now) takes the exact current time.
INSERT_SCHEDULE_RUN = """
INSERT INTO django_jobs_schedulerun (schedule_id, fire_at, manual, created_at)
VALUES (%(schedule_id)s, COALESCE(%(fire_at)s::timestamptz, clock_timestamp()), %(manual)s, now())
ON CONFLICT (schedule_id, fire_at) DO NOTHING
RETURNING id, fire_at
"""

SET_SCHEDULE_RUN_JOB = "UPDATE django_jobs_schedulerun SET job_id = %(job_id)s WHERE id = %(id)s"

# Keep the newest `keep` runs of a schedule (its recent history in the admin); older
# runs can no longer collide with a fire time, since next_run_at only moves forward.
PRUNE_SCHEDULE_RUNS = """
DELETE FROM django_jobs_schedulerun
WHERE schedule_id = %(schedule_id)s
  AND fire_at <= (
      SELECT fire_at FROM django_jobs_schedulerun
      WHERE schedule_id = %(schedule_id)s
      ORDER BY fire_at DESC
      OFFSET %(keep)s LIMIT 1
  )
"""

MARK_SCHEDULE_FIRED = """
UPDATE django_jobs_schedule
SET last_run_at = now(), last_job_id = %(job_id)s, last_error = '', updated_at = now()
WHERE id = %(id)s
"""

# Move a schedule on after a tick: its next fire time (NULL once it has ended), and the
# problem that stopped this fire, if any (NULL leaves last_error as it is).
ADVANCE_SCHEDULE = """
UPDATE django_jobs_schedule
SET next_run_at = %(next_run_at)s::timestamptz,
    last_error = COALESCE(%(error)s, last_error),
    updated_at = now()
WHERE id = %(id)s
"""

SET_SCHEDULE_ENABLED = """
UPDATE django_jobs_schedule
SET enabled = %(enabled)s, next_run_at = %(next_run_at)s::timestamptz, updated_at = now()
WHERE id = %(id)s
"""

# Write a schedule declared in settings. Settings own every field they declare;
# `enabled` is the operator's switch, taken from settings only when the row is new,
# was an admin row, or had been removed from settings. The fire time is recomputed
# only when the timing changed, so restarts keep the cadence and any pending run.
UPSERT_DECLARED_SCHEDULE = """
INSERT INTO django_jobs_schedule AS s (
    name, source, backend, task_path, args, kwargs, cron, interval_seconds, timezone,
    enabled, queue_name, priority, start_at, end_at, misfire_policy, max_catchup,
    next_run_at, last_error, created_at, updated_at
)
VALUES (
    %(name)s, 'code', %(backend)s, %(task_path)s, %(args)s::jsonb, %(kwargs)s::jsonb,
    %(cron)s, %(interval_seconds)s, %(timezone)s, %(enabled)s, %(queue_name)s,
    %(priority)s, %(start_at)s::timestamptz, %(end_at)s::timestamptz, %(misfire_policy)s,
    %(max_catchup)s, %(next_run_at)s::timestamptz, '', now(), now()
)
ON CONFLICT (name) DO UPDATE SET
    source = 'code',
    backend = EXCLUDED.backend,
    task_path = EXCLUDED.task_path,
    args = EXCLUDED.args,
    kwargs = EXCLUDED.kwargs,
    cron = EXCLUDED.cron,
    interval_seconds = EXCLUDED.interval_seconds,
    timezone = EXCLUDED.timezone,
    queue_name = EXCLUDED.queue_name,
    priority = EXCLUDED.priority,
    start_at = EXCLUDED.start_at,
    end_at = EXCLUDED.end_at,
    misfire_policy = EXCLUDED.misfire_policy,
    max_catchup = EXCLUDED.max_catchup,
    enabled = CASE WHEN s.source = 'code' THEN s.enabled ELSE EXCLUDED.enabled END,
    next_run_at = CASE
        WHEN s.source <> 'code'
          OR (s.cron, s.interval_seconds, s.timezone, s.start_at, s.end_at)
             IS DISTINCT FROM (EXCLUDED.cron, EXCLUDED.interval_seconds, EXCLUDED.timezone,
                               EXCLUDED.start_at, EXCLUDED.end_at)
        THEN EXCLUDED.next_run_at ELSE s.next_run_at END,
    -- A changed declaration is a new start: forget the old one's problem.
    last_error = CASE
        WHEN (s.source, s.backend, s.task_path, s.args, s.kwargs, s.queue_name, s.priority)
             IS DISTINCT FROM ('code', EXCLUDED.backend, EXCLUDED.task_path, EXCLUDED.args,
                               EXCLUDED.kwargs, EXCLUDED.queue_name, EXCLUDED.priority)
        THEN '' ELSE s.last_error END,
    updated_at = now()
RETURNING s.id, (s.xmax = 0) AS created
"""

# Declarations that left settings: disabled and marked, never deleted (their history
# and last job stay visible). Declaring the name again brings the row back.
RETIRE_UNDECLARED_SCHEDULES = """
UPDATE django_jobs_schedule
SET source = 'removed', enabled = false, updated_at = now()
WHERE backend = %(backend)s AND source = 'code' AND NOT (name = ANY(%(names)s::text[]))
RETURNING name
"""


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A schedule as the scheduler reads it (``SCHEDULE_COLUMNS``), plus the DB time."""

    id: int
    name: str
    backend: str
    task_path: str
    args: list[Any]
    kwargs: dict[str, Any]
    cron: str
    interval_seconds: int | None
    timezone: str
    queue_name: str
    priority: int
    start_at: datetime | None
    end_at: datetime | None
    misfire_policy: str
    max_catchup: int
    next_run_at: datetime | None
    #: The database's now() when the row was read (the transaction's start).
    now: datetime


@dataclass(frozen=True, slots=True)
class DeclaredSchedule:
    """A schedule from settings, validated, ready to write."""

    name: str
    backend: str
    task_path: str
    args_json: str
    kwargs_json: str
    cron: str
    interval_seconds: int | None
    timezone: str
    enabled: bool
    queue_name: str
    priority: int
    start_at: datetime | None
    end_at: datetime | None
    misfire_policy: str
    max_catchup: int
    next_run_at: datetime | None


def lock_due_schedules(cursor: Cursor, *, backend: str, limit: int) -> list[ScheduleRow]:
    """Lock up to ``limit`` due, enabled schedules, skipping locked ones (in a transaction)."""
    cursor.execute(LOCK_DUE_SCHEDULES, {"backend": backend, "limit": limit})
    return [_schedule_row(row) for row in cursor.fetchall()]


def lock_schedule(cursor: Cursor, schedule_id: int) -> ScheduleRow | None:
    """Lock one schedule (waiting for a tick that holds it); call in a transaction."""
    cursor.execute(SELECT_SCHEDULE, {"id": schedule_id})
    row = cursor.fetchone()
    return _schedule_row(row) if row else None


def _schedule_row(row: Sequence[Any]) -> ScheduleRow:
    values = list(row)
    # Django's cursor hands jsonb over as text (its JSONField decodes); psycopg's decodes.
    for n in (4, 5):
        if isinstance(values[n], str):
            values[n] = json.loads(values[n])
    return ScheduleRow(*values)


def next_schedule_due_in(cursor: Cursor, *, backend: str) -> float | None:
    """Seconds until the backend's next schedule is due (<= 0: due now), None if none is."""
    cursor.execute(NEXT_SCHEDULE_DUE_IN, {"backend": backend})
    row = cursor.fetchone()
    return None if row is None else row[0]


def database_now(cursor: Cursor) -> datetime:
    """The database's clock: what decides when schedules are due."""
    cursor.execute(DATABASE_NOW)
    return cursor.fetchone()[0]


def insert_schedule_run(
    cursor: Cursor, *, schedule_id: int, fire_at: datetime | None, manual: bool = False
) -> tuple[int, datetime] | None:
    """Claim fire time ``fire_at`` (None: now) of a schedule; None if it was already run."""
    cursor.execute(
        INSERT_SCHEDULE_RUN,
        {"schedule_id": schedule_id, "fire_at": fire_at, "manual": manual},
    )
    row = cursor.fetchone()
    return None if row is None else (row[0], row[1])


def set_schedule_run_job(cursor: Cursor, *, run_id: int, job_id: int) -> None:
    cursor.execute(SET_SCHEDULE_RUN_JOB, {"id": run_id, "job_id": job_id})


def prune_schedule_runs(cursor: Cursor, *, schedule_id: int, keep: int) -> None:
    """Forget all but the newest ``keep`` runs of a schedule."""
    cursor.execute(PRUNE_SCHEDULE_RUNS, {"schedule_id": schedule_id, "keep": keep})


def mark_schedule_fired(cursor: Cursor, *, schedule_id: int, job_id: int) -> None:
    """Record that a schedule enqueued ``job_id`` now, and that it is healthy."""
    cursor.execute(MARK_SCHEDULE_FIRED, {"id": schedule_id, "job_id": job_id})


def advance_schedule(
    cursor: Cursor, *, schedule_id: int, next_run_at: datetime | None, error: str | None = None
) -> None:
    """Set a schedule's next fire time, and its problem when ``error`` is given."""
    cursor.execute(
        ADVANCE_SCHEDULE, {"id": schedule_id, "next_run_at": next_run_at, "error": error}
    )


def set_schedule_enabled(
    cursor: Cursor, *, schedule_id: int, enabled: bool, next_run_at: datetime | None
) -> None:
    cursor.execute(
        SET_SCHEDULE_ENABLED,
        {"id": schedule_id, "enabled": enabled, "next_run_at": next_run_at},
    )


def upsert_declared_schedule(cursor: Cursor, schedule: DeclaredSchedule) -> bool:
    """Write a schedule declared in settings; return True if the row is new."""
    cursor.execute(
        UPSERT_DECLARED_SCHEDULE,
        {
            "name": schedule.name,
            "backend": schedule.backend,
            "task_path": schedule.task_path,
            "args": schedule.args_json,
            "kwargs": schedule.kwargs_json,
            "cron": schedule.cron,
            "interval_seconds": schedule.interval_seconds,
            "timezone": schedule.timezone,
            "enabled": schedule.enabled,
            "queue_name": schedule.queue_name,
            "priority": schedule.priority,
            "start_at": schedule.start_at,
            "end_at": schedule.end_at,
            "misfire_policy": schedule.misfire_policy,
            "max_catchup": schedule.max_catchup,
            "next_run_at": schedule.next_run_at,
        },
    )
    return bool(cursor.fetchone()[1])


def retire_undeclared_schedules(
    cursor: Cursor, *, backend: str, names: Sequence[str]
) -> list[str]:
    """Disable settings schedules of ``backend`` not in ``names``; return their names."""
    cursor.execute(RETIRE_UNDECLARED_SCHEDULES, {"backend": backend, "names": list(names)})
    return [row[0] for row in cursor.fetchall()]
