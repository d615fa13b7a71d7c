"""Schedules declared in settings: ``TASKS[alias]["OPTIONS"]["SCHEDULES"]``.

::

    TASKS = {"default": {
        "BACKEND": "django_jobs.backend.JobsBackend",
        "OPTIONS": {"SCHEDULES": {
            "nightly-report": {
                "task": "reports.tasks.nightly",
                "cron": "30 2 * * *",
                "timezone": "Europe/Berlin",
                "kwargs": {"format": "pdf"},
            },
            "poll-feeds": {"task": "feeds.tasks.poll", "every": 300},
        }},
    }}

A worker writes them to the schedule table when it starts (an upsert by name, rows
marked ``source = "code"``). Settings own every field they declare; the admin may
only enable or disable such rows. A declaration that leaves settings disables its row
(``source = "removed"``) rather than deleting it. The system checks (``checks.py``,
django_jobs.E010-E015) report bad declarations; a worker skips them with a log line.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from ..backend import JobsBackend
from ..codec import encode_json
from ..models import MAX_CATCHUP, MisfirePolicy
from ..protocol import schedules as protocol
from .timing import Timing, timing_problems

logger = logging.getLogger(__name__)

KEYS = {
    "task": "dotted path of a declared task (required)",
    "cron": "cron expression or @daily-style nickname",
    "every": "interval in seconds (int) or a timedelta",
    "timezone": "IANA time zone of the cron fields (default 'UTC')",
    "args": "list of JSON values",
    "kwargs": "dict of JSON values",
    "queue_name": "queue of the jobs (default 'default')",
    "priority": "priority of the jobs, -100..100 (default 0)",
    "enabled": "whether a new row starts enabled (default True)",
    "start_at": "aware datetime: no runs before it",
    "end_at": "aware datetime: no runs after it",
    "misfire": "'once' (default), 'skip' or 'all'",
    "max_catchup": f"with misfire 'all': most missed runs enqueued, 1..{MAX_CATCHUP} (default 10)",
}


@dataclass(frozen=True, slots=True)
class Declaration:
    name: str
    task_path: str
    args: list[Any]
    kwargs: dict[str, Any]
    cron: str = ""
    interval_seconds: int | None = None
    timezone: str = "UTC"
    enabled: bool = True
    queue_name: str = "default"
    priority: int = 0
    start_at: datetime | None = None
    end_at: datetime | None = None
    misfire_policy: str = MisfirePolicy.ONCE
    max_catchup: int = 10

    @property
    def timing(self) -> Timing:
        return Timing(self.cron, self.interval_seconds, self.timezone, self.start_at, self.end_at)


@dataclass(frozen=True, slots=True)
class Problem:
    name: str | None
    check_id: str
    message: str


@dataclass
class Declarations:
    valid: list[Declaration] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: Every declared name, valid or not: rows of invalid ones are left as they are.
    names: list[str] = field(default_factory=list)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read(raw: Any) -> Declarations:
    """Validate the SCHEDULES option without importing tasks (see checks.py for those)."""
    out = Declarations()
    if raw is None:
        return out
    if not isinstance(raw, Mapping):
        out.problems.append(
            Problem(None, "E010", f"SCHEDULES must be a dict of name -> schedule, got {raw!r}.")
        )
        return out
    for name, spec in raw.items():
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            out.problems.append(
                Problem(None, "E010", f"Schedule names must be non-empty strings, got {name!r}.")
            )
            continue
        out.names.append(name)
        declaration, problems = _read_one(name, spec)
        out.problems.extend(problems)
        if declaration is not None and not problems:
            out.valid.append(declaration)
    return out


def _read_one(name: str, spec: Any) -> tuple[Declaration | None, list[Problem]]:
    def problem(check_id: str, message: str) -> Problem:
        return Problem(name, check_id, message)

    if not isinstance(spec, Mapping):
        return None, [problem("E010", f"the schedule must be a dict, got {spec!r}.")]
    problems = [
        problem("E010", f"unknown key {key!r}; the keys are {', '.join(KEYS)}.")
        for key in spec
        if key not in KEYS
    ]
    task_path = spec.get("task")
    if not isinstance(task_path, str) or not task_path:
        problems.append(problem("E013", "'task' must be the dotted path of a declared task."))
    every = spec.get("every")
    if isinstance(every, timedelta):
        seconds = every.total_seconds()
        every = int(seconds) if seconds == int(seconds) else seconds
    cron_text = spec.get("cron") or ""
    timezone = spec.get("timezone", "UTC")
    if not isinstance(cron_text, str):
        problems.append(problem("E011", f"'cron' must be a string, got {cron_text!r}."))
        cron_text = ""
    for key, message in timing_problems(cron_text, every, timezone).items():
        check_id = "E012" if key == "timezone" else "E011"
        text = message.replace("an interval", "'every'")
        problems.append(problem(check_id, text))
    args, kwargs = spec.get("args", []), spec.get("kwargs", {})
    if not isinstance(args, list | tuple):
        problems.append(problem("E014", f"'args' must be a list, got {args!r}."))
    elif not isinstance(kwargs, Mapping):
        problems.append(problem("E014", f"'kwargs' must be a dict, got {kwargs!r}."))
    else:
        for what, value in (("args", list(args)), ("kwargs", dict(kwargs))):
            try:
                encode_json(value, f"{what} of schedule {name!r}")
            except TypeError as exc:
                problems.append(problem("E014", str(exc)))
    misfire = spec.get("misfire", MisfirePolicy.ONCE)
    if misfire not in MisfirePolicy.values:
        problems.append(
            problem("E015", f"'misfire' must be one of {MisfirePolicy.values}, got {misfire!r}.")
        )
    catchup = spec.get("max_catchup", 10)
    if not _whole(catchup) or not 1 <= catchup <= MAX_CATCHUP:
        problems.append(
            problem("E015", f"'max_catchup' must be an int 1..{MAX_CATCHUP}, got {catchup!r}.")
        )
    priority = spec.get("priority", 0)
    if not _whole(priority) or not -100 <= priority <= 100:
        problems.append(problem("E015", f"'priority' must be an int -100..100, got {priority!r}."))
    queue = spec.get("queue_name", "default")
    if not isinstance(queue, str) or not queue:
        problems.append(problem("E015", f"'queue_name' must be a queue name, got {queue!r}."))
    enabled = spec.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append(problem("E015", f"'enabled' must be True or False, got {enabled!r}."))
    bounds = {}
    for key in ("start_at", "end_at"):
        value = spec.get(key)
        if value is not None and not (isinstance(value, datetime) and value.tzinfo is not None):
            problems.append(
                problem("E015", f"'{key}' must be an aware datetime or None, got {value!r}.")
            )
            value = None
        bounds[key] = value
    if bounds["start_at"] and bounds["end_at"] and bounds["end_at"] <= bounds["start_at"]:
        problems.append(problem("E015", "'end_at' must be after 'start_at'."))
    if problems:
        return None, problems
    return Declaration(
        name=name,
        task_path=task_path,
        args=list(args),
        kwargs=dict(kwargs),
        cron=cron_text,
        interval_seconds=every,
        timezone=timezone,
        enabled=enabled,
        queue_name=queue,
        priority=priority,
        start_at=bounds["start_at"],
        end_at=bounds["end_at"],
        misfire_policy=misfire,
        max_catchup=catchup,
    ), []


def sync_declared(cursor: psycopg.Cursor, backend: JobsBackend) -> list[str]:
    """Write the backend's declared schedules; disable removed ones; return the names written.

    One transaction, and a savepoint per declaration: one that the database refuses is
    skipped and logged, and the others are written. The log says what was committed.
    """
    declared = read(backend.jobs_options.SCHEDULES)
    for p in declared.problems:
        logger.error(
            "Schedule %r in TASKS[%r]['OPTIONS']['SCHEDULES'] is not written: %s (%s)",
            p.name, backend.alias, p.message, f"django_jobs.{p.check_id}",
            extra={"action": "schedule_invalid", "schedule": p.name},
        )  # fmt: skip
    written: list[str] = []
    created: list[str] = []
    with cursor.connection.transaction():
        now = protocol.database_now(cursor)
        for d in declared.valid:
            try:
                with cursor.connection.transaction():  # a savepoint
                    new = _write(cursor, backend, d, now)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except Exception as exc:
                logger.error(
                    "Schedule %r in TASKS[%r]['OPTIONS']['SCHEDULES'] is not written: %s: %s. "
                    "Its row, if it has one, is left as it was; fix the declaration.",
                    d.name, backend.alias, type(exc).__name__, exc,
                    extra={"action": "schedule_invalid", "schedule": d.name},
                )  # fmt: skip
                continue
            written.append(d.name)
            if new:
                created.append(d.name)
        retired = protocol.retire_undeclared_schedules(
            cursor, backend=backend.alias, names=declared.names
        )
    for name in created:
        logger.info(
            "Schedule %r declared in settings was added", name,
            extra={"action": "schedule_declared", "schedule": name},
        )  # fmt: skip
    for name in retired:
        logger.warning(
            "Schedule %r is no longer declared in settings: disabled (delete it in the admin, "
            "or declare it again)", name,
            extra={"action": "schedule_removed", "schedule": name},
        )  # fmt: skip
    return written


def _write(cursor: psycopg.Cursor, backend: JobsBackend, d: Declaration, now: datetime) -> bool:
    """Upsert one declaration; return True if its row is new."""
    return protocol.upsert_declared_schedule(
        cursor,
        protocol.DeclaredSchedule(
            name=d.name,
            backend=backend.alias,
            task_path=d.task_path,
            args_json=encode_json(d.args, "args"),
            kwargs_json=encode_json(d.kwargs, "kwargs"),
            cron=d.cron,
            interval_seconds=d.interval_seconds,
            timezone=d.timezone,
            enabled=d.enabled,
            queue_name=d.queue_name,
            priority=d.priority,
            start_at=d.start_at,
            end_at=d.end_at,
            misfire_policy=d.misfire_policy,
            max_catchup=d.max_catchup,
            next_run_at=d.timing.first_after(now),
        ),
    )
