"""Periodic schedules: when each fires, what happens to missed runs, and the tick.

Every worker calls :meth:`Scheduler.tick` from its loop (no leader needed). The tick
locks the due schedules ``FOR UPDATE SKIP LOCKED``, enqueues their jobs through the
queue protocol and moves ``next_run_at`` on, all in one transaction: a due schedule
goes to exactly one worker, and a worker that dies mid-tick leaves it due for the
next. A unique (schedule, fire_at) row per run is the second guard: even a schedule
fired twice for the same instant (its fire time moved back by hand, a lock lost)
enqueues one job. What is due is decided by the database clock, never the host's.

Missed runs (no worker was up, or the schedule was locked out for a long time) are
handled by the schedule's misfire policy, see :func:`plan`.
"""

import inspect
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from django.db import connections, transaction
from django.tasks import InvalidTaskBackend, Task, task_backends

from . import cron, protocol, registry
from .backend import JobsBackend, encode_arguments
from .models import MAX_CATCHUP, MisfirePolicy
from .protocol import Cursor, ScheduleRow
from .stats import jobs_database

logger = logging.getLogger("django_jobs.scheduler")

#: A fire time no later than this behind the database clock is on time, not missed:
#: the "skip" policy still runs it.
MISFIRE_GRACE = timedelta(seconds=60)
#: Runs kept per schedule (its history in the admin).
KEEP_RUNS = 100
#: Cron fire times counted at most, when reporting how many runs were missed.
COUNT_CAP = 10_000
#: The longest interval a schedule may have: ten years. Rarer runs are a cron
#: expression's job (@yearly); the column is a 32-bit integer (at most 2,147,483,647 s).
MAX_INTERVAL_SECONDS = 10 * 365 * 24 * 3600


class ScheduleError(Exception):
    """A schedule cannot fire as it stands; the message is stored in ``last_error``."""


# ── timing ──────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class Timing:
    """When a schedule fires: a cron expression in a time zone, or every N seconds."""

    cron: str = ""
    interval_seconds: int | None = None
    timezone: str = "UTC"
    start_at: datetime | None = None
    end_at: datetime | None = None

    @classmethod
    def of(cls, schedule: Any) -> "Timing":
        """Read the timing fields of a Schedule model instance or a ScheduleRow."""
        return cls(
            cron=schedule.cron or "",
            interval_seconds=schedule.interval_seconds,
            timezone=schedule.timezone or "UTC",
            start_at=schedule.start_at,
            end_at=schedule.end_at,
        )

    def _ended(self, moment: datetime | None) -> datetime | None:
        if moment is None or (self.end_at is not None and moment > self.end_at):
            return None
        return moment

    def first_after(self, now: datetime, anchor: datetime | None = None) -> datetime | None:
        """Return the first fire time strictly after ``now``, or None if there is none.

        Intervals keep their cadence from ``anchor`` (the last fire time), else from
        ``start_at``, else they start one interval from ``now``.
        """
        if self.start_at is not None and self.start_at > now:
            if self.interval_seconds:
                return self._ended(self.start_at)
            return self._ended(cron.next_after(self.cron, self.timezone, self.start_at - _TICK))
        if self.interval_seconds:
            step = timedelta(seconds=self.interval_seconds)
            base = anchor if anchor is not None else self.start_at
            if base is None:
                return self._ended(now + step)
            if base > now:
                return self._ended(base)
            return self._ended(base + step * ((now - base) // step + 1))
        return self._ended(cron.next_after(self.cron, self.timezone, now))

    def upcoming(self, now: datetime, count: int) -> list[datetime]:
        """Return the next ``count`` fire times after ``now`` (fewer if it ends)."""
        times: list[datetime] = []
        try:
            moment = self.first_after(now)
            while moment is not None and len(times) < count:
                times.append(moment)
                if self.interval_seconds:
                    moment = self._ended(moment + timedelta(seconds=self.interval_seconds))
                else:
                    moment = self.first_after(moment)
        except OverflowError:
            pass  # the calendar ends (year 9999) before `count` fire times
        return times

    def due(self, since: datetime, now: datetime, keep: int) -> tuple[list[datetime], int]:
        """Return the newest ``keep`` fire times in [since, now], oldest first, and how
        many there are in all (counted up to COUNT_CAP for cron).

        ``since`` is the stored next_run_at: intervals count from it; for cron it is due
        itself when no grid time falls in the window (it was set off the grid).
        """
        until = now if self.end_at is None else min(now, self.end_at)
        if since > until:
            return [], 0
        if self.interval_seconds:
            step = timedelta(seconds=self.interval_seconds)
            total = (until - since) // step + 1
            first = max(0, total - keep)
            # Counted like cron's, up to COUNT_CAP, so the log reads the same for both.
            return [since + step * n for n in range(first, total)], min(total, COUNT_CAP)
        newest: list[datetime] = []
        total = 0
        for fire in cron.at_or_before(self.cron, self.timezone, until):
            if fire < since or total >= COUNT_CAP:
                break
            total += 1
            if len(newest) < keep:
                newest.append(fire)
        if total == 0:
            # `since` is off the grid (the expression changed, or it was set by hand),
            # and no grid time has come since: it is still due.
            return [since], 1
        return sorted(newest), total


_TICK = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Plan:
    #: Fire times to enqueue a job for, oldest first.
    fire_times: list[datetime]
    #: Due fire times that get no job (skipped, coalesced, or past max_catchup).
    missed: int
    #: The next fire time after now, or None when the schedule has ended.
    next_run_at: datetime | None


def plan(timing: Timing, policy: str, max_catchup: int, since: datetime, now: datetime) -> Plan:
    """Decide which due fire times in [since, now] get a job.

    The newest due fire time is the current run; older ones were missed (a later one
    has come since). Policies:

    - ``once``: one job, for the newest fire time, however many were missed;
    - ``skip``: a job only for the newest fire time, and only if it is on time (no more
      than MISFIRE_GRACE behind the clock);
    - ``all``: a job for each due fire time, the newest ``max_catchup`` of them (never
      more than MAX_CATCHUP, whatever the row says, cron or interval).
    """
    keep = min(max(1, max_catchup), MAX_CATCHUP) if policy == MisfirePolicy.ALL else 1
    recent, total = timing.due(since, now, keep)
    if not recent:
        fire: list[datetime] = []
    elif policy == MisfirePolicy.ALL:
        fire = recent
    elif policy == MisfirePolicy.SKIP and now - recent[-1] > MISFIRE_GRACE:
        fire = []
    else:
        fire = recent[-1:]
    anchor = recent[-1] if recent else since
    return Plan(fire, max(0, total - len(fire)), timing.first_after(now, anchor=anchor))


# ── validation (admin form, system checks, the tick) ────────────────────────


def timing_problems(cron_text: str, interval_seconds: Any, timezone: str) -> dict[str, str]:
    """Return {field: message} for what is wrong with a schedule's timing fields."""
    problems = {}
    if cron_text and interval_seconds is not None:
        problems["cron"] = "Give a cron expression or an interval, not both."
    elif not cron_text and interval_seconds is None:
        problems["cron"] = "Give a cron expression or an interval."
    elif cron_text:
        try:
            cron.normalize(cron_text)
        except cron.CronError as exc:
            problems["cron"] = str(exc)
    elif (
        not isinstance(interval_seconds, int)
        or isinstance(interval_seconds, bool)
        or interval_seconds < 1
    ):
        problems["interval_seconds"] = (
            f"The interval must be a whole number of seconds >= 1, got {interval_seconds!r}."
        )
    elif interval_seconds > MAX_INTERVAL_SECONDS:
        problems["interval_seconds"] = (
            f"The interval must be at most {MAX_INTERVAL_SECONDS:,} seconds (10 years), got "
            f"{interval_seconds:,} seconds. For rarer runs use a cron expression such as "
            "@yearly."
        )
    try:
        cron.zone(timezone)
    except cron.CronError as exc:
        problems["timezone"] = str(exc)
    return problems


def call_problem(task: Task, args: Any, kwargs: Any) -> str | None:
    """Return why ``task(*args, **kwargs)`` cannot be enqueued, or None if it can."""
    if not isinstance(args, list | tuple):
        return f"args must be a JSON list, got {type(args).__name__}."
    if not isinstance(kwargs, Mapping):
        return f"kwargs must be a JSON object, got {type(kwargs).__name__}."
    try:
        encode_arguments(task, args, kwargs)
    except TypeError as exc:
        return str(exc)
    try:
        signature = inspect.signature(task.func)
    except (TypeError, ValueError):
        return None  # No signature to check against (a builtin, say): let it run.
    leading = (None,) if task.takes_context else ()
    try:
        signature.bind(*leading, *args, **kwargs)
    except TypeError as exc:
        return f"The arguments do not fit {task.module_path}{signature}: {exc}."
    return None


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


def new_job(backend: JobsBackend, row: ScheduleRow) -> tuple[Task, protocol.NewJob]:
    """Build the job a schedule enqueues; raise ScheduleError if it cannot be built."""
    task = declared_task(row.task_path)
    problem = call_problem(task, row.args, row.kwargs)
    if problem:
        raise ScheduleError(problem)
    try:
        task = task.using(queue_name=row.queue_name, priority=row.priority, backend=backend.alias)
    except Exception as exc:  # InvalidTask and friends: an unknown queue, say.
        raise ScheduleError(f"{type(exc).__name__}: {exc}") from None
    args_json, kwargs_json = encode_arguments(task, row.args, row.kwargs)
    max_attempts = getattr(task, "max_attempts", None) or backend.jobs_options.MAX_ATTEMPTS
    return task, protocol.NewJob(
        task_path=task.module_path,
        queue_name=row.queue_name,
        priority=row.priority,
        backend=backend.alias,
        args_json=args_json,
        kwargs_json=kwargs_json,
        run_after=None,
        max_attempts=max_attempts,
    )


# ── firing ──────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class Fired:
    schedule: str
    fire_at: datetime
    job_id: int
    enqueued_at: datetime
    task: Task
    job: protocol.NewJob


def _enqueue_run(
    cursor: Cursor, row: ScheduleRow, task: Task, job: protocol.NewJob, fire_at: datetime | None
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
    run_id, fire_at = run
    job_id, enqueued_at = protocol.enqueue(cursor, job)
    protocol.set_schedule_run_job(cursor, run_id=run_id, job_id=job_id)
    return Fired(row.name, fire_at, job_id, enqueued_at, task, job)


def _record(cursor: Cursor, row: ScheduleRow, fired: list[Fired]) -> None:
    if fired:
        protocol.mark_schedule_fired(cursor, schedule_id=row.id, job_id=fired[-1].job_id)
        protocol.prune_schedule_runs(cursor, schedule_id=row.id, keep=KEEP_RUNS)


def _announce(backend: JobsBackend, fired: Iterable[Fired]) -> None:
    for f in fired:
        logger.info(
            "Schedule %r fired for %s: job %s", f.schedule, f.fire_at.isoformat(), f.job_id,
            extra={"action": "schedule_fired", "schedule": f.schedule, "job_id": f.job_id},
        )  # fmt: skip
        try:
            backend._enqueued(f.task, f.job_id, f.enqueued_at, f.job)  # sends task_enqueued
        except Exception:
            # A receiver's bug must not stop the worker; the job is committed anyway.
            logger.exception("A task_enqueued receiver failed for job %s", f.job_id)


class Scheduler:
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
        self.backend = backend
        self.worker_id = worker_id
        self.next_run = 0.0
        self._synced = False
        #: When to try writing the settings' schedules again after a failed attempt.
        self._sync_retry_at = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self.next_run

    def tick(self, cursor: psycopg.Cursor) -> list[Fired]:
        """Fire what is due on the worker's (autocommit) connection; return what fired."""
        self.next_run = time.monotonic() + self.MAX_SLEEP
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
            self.next_run = time.monotonic() + self.FAILED_SLEEP
            return []
        _announce(self.backend, fired)
        due_in = protocol.next_schedule_due_in(cursor, backend=self.backend.alias)
        if len(rows) == self.BATCH:
            due_in = 0.0
        sleep = self.MAX_SLEEP if due_in is None else due_in + 0.01
        self.next_run = time.monotonic() + min(self.MAX_SLEEP, max(self.MIN_SLEEP, sleep))
        return fired

    def _fire(self, cursor: psycopg.Cursor, row: ScheduleRow) -> list[Fired]:
        try:
            with cursor.connection.transaction():  # a savepoint: one schedule's failure
                return self.fire_due(cursor, row)  # leaves the others' work intact
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except Exception as exc:
            error = str(exc) if isinstance(exc, ScheduleError) else f"{type(exc).__name__}: {exc}"
            logger.error(
                "Schedule %r could not fire: %s", row.name, error,
                exc_info=not isinstance(exc, ScheduleError),
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

    def fire_due(self, cursor: Cursor, row: ScheduleRow) -> list[Fired]:
        """Enqueue what a locked, due schedule owes under its misfire policy; move it on."""
        p = plan(Timing.of(row), row.misfire_policy, row.max_catchup, row.next_run_at, row.now)
        fired: list[Fired] = []
        if p.fire_times:
            task, job = new_job(self.backend, row)
            for fire_at in p.fire_times:
                one = _enqueue_run(cursor, row, task, job, fire_at)
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

    def _sync(self, cursor: psycopg.Cursor) -> None:
        from .schedules_conf import sync_declared

        # The worker has done this already (it is done once per process); a scheduler
        # used on its own must know the tasks too.
        if time.monotonic() < self._sync_retry_at:
            return
        registry.discover(self.backend.jobs_options.TASK_MODULES)
        try:
            sync_declared(cursor, self.backend)
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


# ── operator moves (the admin) ──────────────────────────────────────────────


def run_now(schedule_id: int) -> Fired:
    """Enqueue one job of a schedule now, outside its timing; raise ScheduleError if not."""
    from .models import Schedule

    schedule = Schedule.objects.using(jobs_database()).get(pk=schedule_id)
    backend = backend_of(schedule)
    registry.discover(backend.jobs_options.TASK_MODULES)
    database = backend.database
    with transaction.atomic(using=database), connections[database].cursor() as cursor:
        row = protocol.lock_schedule(cursor, schedule_id)
        if row is None:
            raise ScheduleError("The schedule was deleted.")
        task, job = new_job(backend, row)
        fired = _enqueue_run(cursor, row, task, job, None)
        if fired is None:
            raise ScheduleError("A run for this instant exists already.")
        _record(cursor, row, [fired])
        transaction.on_commit(lambda: _announce(backend, [fired]), using=database)
    return fired


def backend_of(schedule: Any) -> JobsBackend:
    """The jobs backend a schedule enqueues through; raise ScheduleError if it is gone."""
    try:
        backend = task_backends[schedule.backend]
    except InvalidTaskBackend:
        raise ScheduleError(
            f"Its backend {schedule.backend!r} is not in settings.TASKS any more: no worker "
            "fires it. Add the backend back, or delete the schedule and create it again "
            "on a configured backend."
        ) from None
    if not isinstance(backend, JobsBackend):
        raise ScheduleError(
            f"TASKS[{schedule.backend!r}] is not a django_jobs backend "
            f"({type(backend).__module__}.{type(backend).__name__}): no worker fires it."
        )
    return backend


def set_enabled(schedule_id: int, enabled: bool) -> datetime | None:
    """Enable (fire times counted from now) or disable a schedule; return next_run_at.

    Raise ScheduleError when a schedule cannot be enabled: its timing cannot be read
    (a broken cron expression or time zone in the row) or its backend is gone. Disabling
    always works.
    """
    from .models import Schedule

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
