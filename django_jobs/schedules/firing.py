"""Firing schedules: enqueue what a due schedule owes, exactly once per fire time.

A worker's tick (``services/scheduler.py``) locks due schedules ``FOR UPDATE SKIP
LOCKED`` and calls :func:`fire_due` for each, in its transaction: the jobs are enqueued
through the queue protocol and ``next_run_at`` moves on together, so a due schedule goes
to exactly one worker, and a worker that dies mid-tick leaves it due for the next. A
unique (schedule, fire_at) row per run is the second guard: even a schedule fired twice
for the same instant (its fire time moved back by hand, a lock lost) enqueues one job.
What is due is decided by the database clock, never the host's.

The admin's moves (run now, enable, disable) are here too, on the same statements.
"""

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from django.db import connections, transaction

from .. import registry
from ..backend import JobsBackend, get_backend, jobs_database
from ..codec import call_problem
from ..compat import InvalidTaskBackend, Task, task_backends
from ..models import Schedule
from ..protocol import Cursor
from ..protocol import jobs as job_protocol
from ..protocol import schedules as protocol
from ..protocol.schedules import ScheduleRow
from . import cron
from .timing import COUNT_CAP, Timing, plan

logger = logging.getLogger(__name__)

#: Runs kept per schedule (its history in the admin).
KEEP_RUNS = 100


class ScheduleError(Exception):
    """A schedule cannot fire as it stands; the message is stored in ``last_error``."""


def declared_task(path: str) -> Task:
    """Return the declared task ``path``; raise ScheduleError if this process has none."""
    task = registry.get(path)
    if task is None:
        raise ScheduleError(
            f"Task {path!r} is not declared in this process: it was renamed or removed, or "
            "its module is not imported (add it to OPTIONS['TASK_MODULES']). The schedule "
            "skips its runs until the task is back or the schedule is changed."
        )
    return task


def new_job(backend: JobsBackend, row: ScheduleRow) -> tuple[Task, job_protocol.NewJob]:
    """Build the job a schedule enqueues; raise ScheduleError if it cannot be built."""
    task = declared_task(row.task_path)
    problem = call_problem(task, row.args, row.kwargs)
    if problem:
        raise ScheduleError(problem)
    try:
        task = task.using(queue_name=row.queue_name, priority=row.priority, backend=backend.alias)
    except Exception as exc:  # InvalidTask and friends: an unknown queue, say.
        raise ScheduleError(f"{type(exc).__name__}: {exc}") from None
    # A schedule's jobs are due at their fire time, whatever run_after the task carries.
    return task, replace(backend.new_job(task, row.args, row.kwargs), run_after=None)


@dataclass(frozen=True, slots=True)
class Fired:
    schedule: str
    fire_at: datetime
    job_id: int
    enqueued_at: datetime
    task: Task
    job: job_protocol.NewJob


def fire_due(cursor: Cursor, backend: JobsBackend, row: ScheduleRow) -> list[Fired]:
    """Enqueue what a locked, due schedule owes under its misfire policy; move it on."""
    p = plan(Timing.of(row), row.misfire_policy, row.max_catchup, row.next_run_at, row.now)
    fired: list[Fired] = []
    if p.fire_times:
        task, job = new_job(backend, row)
        for fire_at in p.fire_times:
            one = _enqueue_run(cursor, backend, row, task, job, fire_at)
            if one is not None:
                fired.append(one)
    _record(cursor, row, fired)
    if p.missed:
        logger.warning(
            "Schedule %r missed %s run(s) since %s (misfire policy %r): %d enqueued",
            row.name, f"{p.missed}+" if p.missed >= COUNT_CAP else p.missed,
            row.next_run_at.isoformat(), row.misfire_policy, len(fired),
            extra={"action": "schedule_misfired", "schedule": row.name},
        )  # fmt: skip
    protocol.advance_schedule(cursor, schedule_id=row.id, next_run_at=p.next_run_at)
    return fired


def _enqueue_run(
    cursor: Cursor,
    backend: JobsBackend,
    row: ScheduleRow,
    task: Task,
    job: job_protocol.NewJob,
    fire_at: datetime | None,
) -> Fired | None:
    run = protocol.insert_schedule_run(
        cursor, schedule_id=row.id, fire_at=fire_at, manual=fire_at is None
    )
    if run is None:
        logger.warning(
            "Schedule %r already ran for %s; not enqueued again", row.name, fire_at,
            extra={"action": "schedule_duplicate", "schedule": row.name},
        )  # fmt: skip
        return None
    manual = fire_at is None
    run_id, fire_at = run
    inserted = backend.insert(cursor, task, job)
    if isinstance(inserted, dict):
        if manual:  # "run now" (in a transaction): the operator is told, nothing is kept
            raise ScheduleError(
                f"Task {row.task_path} is unique and job {inserted['id']} with its key is "
                f"{inserted['state']}: nothing was enqueued."
            )
        # A unique task whose key is held: this fire time is spent, and nothing runs
        # twice at once (the way to keep a slow schedule from overlapping itself).
        logger.warning(
            "Schedule %r: task %s is unique and job %s with its key is %s; the run for "
            "%s was skipped", row.name, row.task_path, inserted["id"], inserted["state"],
            fire_at, extra={"action": "schedule_duplicate", "schedule": row.name},
        )  # fmt: skip
        return None
    job_id, enqueued_at = inserted
    protocol.set_schedule_run_job(cursor, run_id=run_id, job_id=job_id)
    return Fired(row.name, fire_at, job_id, enqueued_at, task, job)


def _record(cursor: Cursor, row: ScheduleRow, fired: list[Fired]) -> None:
    if fired:
        protocol.mark_schedule_fired(cursor, schedule_id=row.id, job_id=fired[-1].job_id)
        protocol.prune_schedule_runs(cursor, schedule_id=row.id, keep=KEEP_RUNS)


def announce(backend: JobsBackend, fired: Iterable[Fired]) -> None:
    """Log committed fires and send ``task_enqueued`` for their jobs."""
    for f in fired:
        logger.info(
            "Schedule %r fired for %s: job %s", f.schedule, f.fire_at.isoformat(), f.job_id,
            extra={"action": "schedule_fired", "schedule": f.schedule, "job_id": f.job_id},
        )  # fmt: skip
        try:
            # Sends task_enqueued (the arguments as the job row holds them).
            backend.enqueued(
                f.task, f.job_id, f.enqueued_at, json.loads(f.job.args_json),
                json.loads(f.job.kwargs_json),
            )  # fmt: skip
        except Exception:
            # A receiver's bug must not stop the worker; the job is committed anyway.
            logger.exception("A task_enqueued receiver failed for job %s", f.job_id)


def run_now(schedule_id: int) -> Fired:
    """Enqueue one job of a schedule now, outside its timing; raise ScheduleError if not."""
    schedule = Schedule.objects.using(jobs_database()).get(pk=schedule_id)
    backend = backend_of(schedule)
    registry.discover(backend.jobs_options.TASK_MODULES)
    database = backend.database
    with transaction.atomic(using=database), connections[database].cursor() as cursor:
        row = protocol.lock_schedule(cursor, schedule_id)
        if row is None:
            raise ScheduleError("The schedule was deleted.")
        task, job = new_job(backend, row)
        fired = _enqueue_run(cursor, backend, row, task, job, None)
        if fired is None:
            raise ScheduleError("A run for this instant exists already.")
        _record(cursor, row, [fired])
        transaction.on_commit(lambda: announce(backend, [fired]), using=database)
    return fired


def backend_of(schedule: Any) -> JobsBackend:
    """The jobs backend a schedule enqueues through; raise ScheduleError if it is gone."""
    if schedule.backend not in task_backends.settings:
        raise ScheduleError(
            f"Its backend {schedule.backend!r} is not in settings.TASKS any more: no worker "
            "fires it. Add the backend back, or delete the schedule and create it again "
            "on a configured backend."
        )
    try:
        return get_backend(schedule.backend)
    except InvalidTaskBackend as exc:
        raise ScheduleError(f"{exc} No worker fires it.") from None


def set_enabled(schedule_id: int, enabled: bool) -> datetime | None:
    """Enable (fire times counted from now) or disable a schedule; return next_run_at.

    Raise ScheduleError when a schedule cannot be enabled: its timing cannot be read
    (a broken cron expression or time zone in the row) or its backend is gone. Disabling
    always works.
    """
    schedule = Schedule.objects.using(jobs_database()).get(pk=schedule_id)
    try:
        database = backend_of(schedule).database
    except ScheduleError:
        if enabled:
            raise
        database = schedule._state.db  # its backend is gone; switch it off where it is
    with transaction.atomic(using=database), connections[database].cursor() as cursor:
        next_run_at = schedule.next_run_at
        if enabled:
            # Runs missed while disabled are not owed: start afresh from now.
            try:
                next_run_at = Timing.of(schedule).first_after(protocol.database_now(cursor))
            except (cron.CronError, OverflowError) as exc:
                raise ScheduleError(
                    f"Its timing cannot be read: {exc} Fix the cron expression, interval "
                    "or time zone, then enable it."
                ) from None
        protocol.set_schedule_enabled(
            cursor, schedule_id=schedule_id, enabled=enabled, next_run_at=next_run_at
        )
    return next_run_at


def database_now(using: str = "default") -> datetime:
    with connections[using].cursor() as cursor:
        return protocol.database_now(cursor).astimezone(UTC)
