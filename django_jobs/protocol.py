"""The queue protocol: the only code that changes a job's state.

Each function runs one statement from ``sql.py`` on the cursor it is given: the
caller's Django cursor for enqueue (so the job commits or rolls back with the
caller's transaction), the worker's own long-lived connection for the rest. The
functions neither open transactions nor commit: the caller owns that choice.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import Any, Protocol

from . import sql


class Cursor(Protocol):
    """The part of a DB-API cursor we use: Django's CursorWrapper and psycopg's both fit."""

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to insert. ``args_json``/``kwargs_json`` are already-validated JSON text."""

    task_path: str
    queue_name: str
    priority: int
    backend: str
    args_json: str
    kwargs_json: str
    run_after: datetime | None
    max_attempts: int


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job a worker holds: the row as the claim left it (``attempts`` already bumped)."""

    id: int
    task_path: str
    queue_name: str
    priority: int
    backend: str
    args: list[Any]
    kwargs: dict[str, Any]
    run_after: datetime | None
    available_at: datetime
    enqueued_at: datetime
    started_at: datetime
    last_attempted_at: datetime
    attempts: int
    max_attempts: int
    worker_ids: list[str]
    errors: list[dict[str, Any]]

    def to_wire(self) -> tuple:
        """A plain tuple for a pipe: pickling a slots dataclass is several times slower."""
        return _claimed_fields(self)


_claimed_fields = attrgetter(*sql.JOB_COLUMNS)
# Where each of ClaimedJob's fields sits in (plain columns..., *parsed JSON columns).
_PLAIN_COUNT = len(sql.JOB_COLUMNS) - len(sql.JSON_COLUMNS)
_FIELD_ORDER = itemgetter(
    *(
        _PLAIN_COUNT + sql.JSON_COLUMNS.index(c)
        if c in sql.JSON_COLUMNS
        else [p for p in sql.JOB_COLUMNS if p not in sql.JSON_COLUMNS].index(c)
        for c in sql.JOB_COLUMNS
    )
)


def _claimed_job(row: tuple) -> ClaimedJob:
    """A claim's row: the plain columns, then the JSON ones as one array's text."""
    return ClaimedJob(*_FIELD_ORDER((*row[:-1], *json.loads(row[-1]))))


@dataclass(frozen=True, slots=True)
class Success:
    job_id: int
    attempt: int
    return_json: str


@dataclass(frozen=True, slots=True)
class Failure:
    job_id: int
    attempt: int
    error_json: str
    #: Seconds until the next attempt, or None when this was the last one.
    retry_in: float | None


def enqueue(cursor: Cursor, job: NewJob) -> tuple[int, datetime]:
    """Insert one job (and wake workers if it can run now); return its id and enqueued_at."""
    cursor.execute(
        sql.ENQUEUE,
        {
            "task_path": job.task_path,
            "queue_name": job.queue_name,
            "priority": job.priority,
            "backend": job.backend,
            "args": job.args_json,
            "kwargs": job.kwargs_json,
            "run_after": job.run_after,
            "max_attempts": job.max_attempts,
        },
    )
    job_id, enqueued_at, _ = cursor.fetchone()
    return job_id, enqueued_at


def enqueue_many(
    cursor: Cursor, jobs: Sequence[NewJob], *, now: datetime
) -> list[tuple[int, datetime]]:
    """Insert many jobs in one statement; return (id, enqueued_at) in input order."""
    if not jobs:
        return []
    cursor.execute(
        sql.ENQUEUE_MANY,
        {
            "task_path": [j.task_path for j in jobs],
            "queue_name": [j.queue_name for j in jobs],
            "priority": [j.priority for j in jobs],
            "backend": [j.backend for j in jobs],
            "args": [j.args_json for j in jobs],
            "kwargs": [j.kwargs_json for j in jobs],
            "run_after": [j.run_after for j in jobs],
            "max_attempts": [j.max_attempts for j in jobs],
        },
    )
    rows = cursor.fetchall()
    # The wake-up is a hint, so the caller's clock is good enough to skip it for
    # jobs that are plainly in the future; the claim itself uses the database clock.
    runnable = sorted({j.queue_name for j in jobs if j.run_after is None or j.run_after <= now})
    if runnable:
        cursor.execute(sql.NOTIFY_QUEUES, {"queues": runnable})
    return [(row[0], row[1]) for row in rows]


def claim(
    cursor: Cursor, *, worker_id: str, backend: str, queues: Sequence[str] | None, limit: int
) -> list[ClaimedJob]:
    """Mark up to ``limit`` runnable jobs RUNNING for ``worker_id``, highest priority first."""
    if limit <= 0:
        return []
    params = {"worker_id": worker_id, "backend": backend, "limit": limit}
    if queues is None:
        cursor.execute(sql.CLAIM_ANY_QUEUE, params)
    else:
        cursor.execute(sql.CLAIM, {**params, "queues": list(queues)})
    jobs = [_claimed_job(row) for row in cursor.fetchall()]
    # RETURNING does not keep the sub-select's order.
    jobs.sort(key=lambda j: (-j.priority, j.available_at, j.id))
    return jobs


def complete(cursor: Cursor, successes: Iterable[Success]) -> dict[int, datetime]:
    """Record successes; return finished_at per job id actually recorded (fenced)."""
    successes = list(successes)
    if not successes:
        return {}
    cursor.execute(
        sql.COMPLETE_MANY,
        {
            "ids": [s.job_id for s in successes],
            "attempts": [s.attempt for s in successes],
            "return_values": [s.return_json for s in successes],
        },
    )
    return dict(cursor.fetchall())


def fail(cursor: Cursor, failures: Iterable[Failure]) -> dict[int, tuple[str, datetime | None]]:
    """Record failed attempts (retry or final); return (state, finished_at) per recorded id."""
    failures = list(failures)
    if not failures:
        return {}
    cursor.execute(
        sql.FAIL_MANY,
        {
            "ids": [f.job_id for f in failures],
            "attempts": [f.attempt for f in failures],
            "errors": [f.error_json for f in failures],
            "retry_in": [f.retry_in for f in failures],
        },
    )
    return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}


def release(cursor: Cursor, jobs: Iterable[ClaimedJob]) -> set[int]:
    """Give claimed jobs that never started back to the queue without spending an attempt."""
    jobs = list(jobs)
    if not jobs:
        return set()
    cursor.execute(
        sql.RELEASE_MANY,
        {"ids": [j.id for j in jobs], "attempts": [j.attempts for j in jobs]},
    )
    return {row[0] for row in cursor.fetchall()}


@dataclass(frozen=True, slots=True)
class Snoozed:
    job_id: int
    attempt: int
    snooze_for: float


def snooze(cursor: Cursor, snoozed: Iterable[Snoozed]) -> set[int]:
    """Put jobs that asked to run later back to READY without counting an error."""
    snoozed = list(snoozed)
    if not snoozed:
        return set()
    cursor.execute(
        sql.SNOOZE_MANY,
        {
            "ids": [s.job_id for s in snoozed],
            "attempts": [s.attempt for s in snoozed],
            "snooze_for": [s.snooze_for for s in snoozed],
        },
    )
    return {row[0] for row in cursor.fetchall()}


# ── workers, leases, rescue ─────────────────────────────────────────────────


def register_worker(
    cursor: Cursor,
    *,
    worker_id: str,
    backend: str,
    host: str,
    pid: int,
    queues: Sequence[str] | None,
    concurrency: int,
    version: str,
) -> None:
    """Announce a worker; its heartbeat then keeps its RUNNING jobs from being rescued."""
    cursor.execute(
        sql.REGISTER_WORKER,
        {
            "id": worker_id,
            "backend": backend,
            "host": host,
            "pid": pid,
            "queues": json.dumps(list(queues or [])),
            "concurrency": concurrency,
            "version": version,
        },
    )


def heartbeat(cursor: Cursor, *, worker_id: str, concurrency: int) -> bool:
    """Refresh the worker's heartbeat; False means its row is gone (it was declared lost)."""
    cursor.execute(sql.HEARTBEAT, {"id": worker_id, "concurrency": concurrency})
    return cursor.fetchone() is not None


def deregister_worker(cursor: Cursor, *, worker_id: str) -> None:
    cursor.execute(sql.DEREGISTER_WORKER, {"id": worker_id})


def acquire_lease(cursor: Cursor, *, name: str, holder: str, ttl: float) -> bool:
    """Take or renew the lease ``name`` for ``ttl`` seconds; True if ``holder`` has it."""
    cursor.execute(sql.ACQUIRE_LEASE, {"name": name, "holder": holder, "ttl": ttl})
    return cursor.fetchone() is not None


def release_lease(cursor: Cursor, *, name: str, holder: str) -> None:
    cursor.execute(sql.RELEASE_LEASE, {"name": name, "holder": holder})


def rescue(
    cursor: Cursor, *, stale_after: float, retry_in: float, limit: int = 1000
) -> list[tuple[int, str, str]]:
    """Retry or fail RUNNING jobs of workers silent for ``stale_after`` s; return what moved."""
    cursor.execute(sql.RESCUE, {"stale_after": stale_after, "retry_in": retry_in, "limit": limit})
    return [tuple(row) for row in cursor.fetchall()]


def prune_workers(cursor: Cursor, *, older_than: float) -> None:
    cursor.execute(sql.PRUNE_WORKERS, {"older_than": older_than})


# ── operations (admin actions and the `jobs` command) ───────────────────────


def retry_jobs(cursor: Cursor, ids: Iterable[int]) -> list[int]:
    """Re-queue FAILED or CANCELLED jobs now; return the ids that moved (others are skipped)."""
    cursor.execute(sql.RETRY_JOBS, {"ids": list(ids)})
    return [row[0] for row in cursor.fetchall()]


def cancel_jobs(cursor: Cursor, ids: Iterable[int]) -> list[int]:
    """Cancel READY or BLOCKED jobs; return the ids that moved (running ones are skipped)."""
    cursor.execute(sql.CANCEL_JOBS, {"ids": list(ids)})
    return [row[0] for row in cursor.fetchall()]


def run_jobs_now(cursor: Cursor, ids: Iterable[int]) -> list[int]:
    """Make delayed READY jobs due now; return the ids that moved."""
    cursor.execute(sql.RUN_JOBS_NOW, {"ids": list(ids)})
    return [row[0] for row in cursor.fetchall()]


FINISHED = ("SUCCESSFUL", "FAILED", "CANCELLED")


def prune(
    cursor: Cursor,
    *,
    older_than: float,
    states: Sequence[str] = FINISHED,
    batch: int = 10_000,
    max_batches: int | None = None,
) -> int:
    """Delete finished jobs older than ``older_than`` seconds in batches; return the count.

    Each batch is its own statement: with autocommit each commits on its own.
    """
    unknown = set(states) - set(FINISHED)
    if unknown:
        raise ValueError(
            f"prune deletes only finished jobs ({', '.join(FINISHED)}), not {unknown}"
        )
    deleted = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        cursor.execute(
            sql.PRUNE_BATCH,
            {"older_than": older_than, "states": list(states), "limit": batch},
        )
        count = cursor.rowcount
        deleted += count
        batches += 1
        if count < batch:
            break
    return deleted


def release_orphans(cursor: Cursor, *, worker_id: str, held: Iterable[int]) -> list[int]:
    """Release RUNNING jobs claimed under ``worker_id`` that the worker does not hold."""
    cursor.execute(sql.RELEASE_ORPHANS, {"worker_id": worker_id, "held": list(held)})
    return [row[0] for row in cursor.fetchall()]


# ── schedules ───────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A schedule as the scheduler reads it (``sql.SCHEDULE_COLUMNS``), plus the DB time."""

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
    cursor.execute(sql.LOCK_DUE_SCHEDULES, {"backend": backend, "limit": limit})
    return [_schedule_row(row) for row in cursor.fetchall()]


def lock_schedule(cursor: Cursor, schedule_id: int) -> ScheduleRow | None:
    """Lock one schedule (waiting for a tick that holds it); call in a transaction."""
    cursor.execute(sql.SELECT_SCHEDULE, {"id": schedule_id})
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
    cursor.execute(sql.NEXT_SCHEDULE_DUE_IN, {"backend": backend})
    row = cursor.fetchone()
    return None if row is None else row[0]


def database_now(cursor: Cursor) -> datetime:
    """The database's clock: what decides when schedules are due."""
    cursor.execute(sql.DATABASE_NOW)
    return cursor.fetchone()[0]


def insert_schedule_run(
    cursor: Cursor, *, schedule_id: int, fire_at: datetime | None, manual: bool = False
) -> tuple[int, datetime] | None:
    """Claim fire time ``fire_at`` (None: now) of a schedule; None if it was already run."""
    cursor.execute(
        sql.INSERT_SCHEDULE_RUN,
        {"schedule_id": schedule_id, "fire_at": fire_at, "manual": manual},
    )
    row = cursor.fetchone()
    return None if row is None else (row[0], row[1])


def set_schedule_run_job(cursor: Cursor, *, run_id: int, job_id: int) -> None:
    cursor.execute(sql.SET_SCHEDULE_RUN_JOB, {"id": run_id, "job_id": job_id})


def prune_schedule_runs(cursor: Cursor, *, schedule_id: int, keep: int) -> None:
    """Forget all but the newest ``keep`` runs of a schedule."""
    cursor.execute(sql.PRUNE_SCHEDULE_RUNS, {"schedule_id": schedule_id, "keep": keep})


def mark_schedule_fired(cursor: Cursor, *, schedule_id: int, job_id: int) -> None:
    """Record that a schedule enqueued ``job_id`` now, and that it is healthy."""
    cursor.execute(sql.MARK_SCHEDULE_FIRED, {"id": schedule_id, "job_id": job_id})


def advance_schedule(
    cursor: Cursor, *, schedule_id: int, next_run_at: datetime | None, error: str | None = None
) -> None:
    """Set a schedule's next fire time, and its problem when ``error`` is given."""
    cursor.execute(
        sql.ADVANCE_SCHEDULE, {"id": schedule_id, "next_run_at": next_run_at, "error": error}
    )


def set_schedule_enabled(
    cursor: Cursor, *, schedule_id: int, enabled: bool, next_run_at: datetime | None
) -> None:
    cursor.execute(
        sql.SET_SCHEDULE_ENABLED,
        {"id": schedule_id, "enabled": enabled, "next_run_at": next_run_at},
    )


def upsert_declared_schedule(cursor: Cursor, schedule: DeclaredSchedule) -> bool:
    """Write a schedule declared in settings; return True if the row is new."""
    cursor.execute(
        sql.UPSERT_DECLARED_SCHEDULE,
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
    cursor.execute(sql.RETIRE_UNDECLARED_SCHEDULES, {"backend": backend, "names": list(names)})
    return [row[0] for row in cursor.fetchall()]


def delete_jobs(cursor: Cursor, ids: Iterable[int]) -> list[int]:
    """Delete jobs that are not running; return the ids deleted (running ones are kept)."""
    cursor.execute(sql.DELETE_JOBS, {"ids": list(ids)})
    return [row[0] for row in cursor.fetchall()]
