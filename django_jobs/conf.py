"""Backend options: every key of ``TASKS[alias]["OPTIONS"]``, its type and its default.

Reading is cheap and touches no database, because Django builds backends lazily and
sometimes twice during start-up. Bad values are reported by the system checks
(``checks.py``) with the key, the value and what to do.
"""

import math
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .limits import QueueLimit, parse_queue_limits, queue_limits_problems

#: The task every webhook delivery job runs (declared in django_jobs/tasks.py). The
#: protocol enqueues it and the admin's deliveries list filters on it, so the path lives
#: here, below both.
DELIVERY_TASK = "django_jobs.webhooks.delivery.deliver"

#: Longest duration any option, task declaration or command takes: a hundred years, in
#: seconds. Durations end up in PostgreSQL's timestamp arithmetic (``now() -
#: make_interval(secs => ...)``), whose calendar ends in 4713 BC and 294276 AD, and in
#: Python's datetime, which ends in 9999: a longer one (``timedelta.max`` is 2.7 million
#: years) fails with "timestamp out of range" each time the statement runs. Keeping
#: something forever is None where an option allows it.
MAX_DURATION = 36_500 * 86_400.0

#: Longest POLL_INTERVAL, HEARTBEAT_INTERVAL, MAINTENANCE_INTERVAL and WORKER_TIMEOUT:
#: a day. A worker waits up to one of these in a single call, and the operating
#: system's waits end at about 24 days; a worker silent for longer than a day cannot be
#: told from a dead one either.
MAX_WORKER_PERIOD = 86_400.0


def human_duration(seconds: float) -> str:
    """``seconds`` in the largest whole unit that reads well: "100 years", "1 day"."""
    for unit, size in (("year", 365 * 86_400.0), ("day", 86_400.0), ("hour", 3600.0)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count:,} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:,g} s"


def duration_problem(
    label: str, value: Any, *, limit: float = MAX_DURATION, hint: str = ""
) -> str | None:
    """Why ``value`` (seconds, or a timedelta) cannot be the duration ``label``, or None.

    The message names the value, says what is wrong and what to do: the checks, the
    task declarations and the commands all show it as it is.
    """
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return f"{label} must be a number of seconds, got {value!r}. {hint}".rstrip()
    if not seconds > 0 or not math.isfinite(seconds):
        return f"{label} must be more than 0 seconds and finite, got {value!r}. {hint}".rstrip()
    if seconds > limit:
        given = (
            f"{value!r} ({seconds:,.0f} s)" if isinstance(value, timedelta) else f"{value:,g} s"
        )
        return (
            f"{label} is {given}, longer than the {human_duration(limit)} "
            f"({limit:,.0f} s) it may be. {hint}"
        ).rstrip()
    return None


#: Successful jobs are history after a week; failures and cancellations are kept a month
#: so that someone can look at them (and retry them) after a holiday.
DEFAULT_RETENTION: dict[str, float | None] = {
    "SUCCESSFUL": 7 * 24 * 3600.0,
    "FAILED": 30 * 24 * 3600.0,
    "CANCELLED": 30 * 24 * 3600.0,
}


@dataclass(frozen=True, kw_only=True)
class JobsOptions:
    #: Database alias holding the job tables. Enqueue is transactional with the caller's
    #: work only when the caller writes to this same alias.
    DATABASE: str = "default"
    #: Default number of attempts for a job whose task does not set ``max_attempts``.
    MAX_ATTEMPTS: int = 1
    #: Retry delay: ``min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * RETRY_FACTOR ** (attempt - 1))``
    #: seconds, with "equal jitter" (a random point in the upper half) (see ``retry.py``).
    RETRY_BASE_DELAY: float = 1.0
    RETRY_FACTOR: float = 2.0
    RETRY_MAX_DELAY: float = 3600.0
    #: Wake idle workers with LISTEN/NOTIFY. Turn off behind a transaction-mode pooler
    #: (PgBouncer), where LISTEN does not work; polling then bounds the latency.
    LISTEN: bool = True
    #: Seconds between polls for runnable jobs when no notification arrives.
    POLL_INTERVAL: float = 1.0
    #: Hard time limit per job in seconds (the process running it is killed); None: none.
    TIMEOUT: float | None = None
    #: Soft time limit per job: SoftTimeLimitExceeded is raised inside the task.
    SOFT_TIMEOUT: float | None = None
    #: Seconds between a worker's heartbeats.
    HEARTBEAT_INTERVAL: float = 5.0
    #: A worker silent this long is lost: its RUNNING jobs are retried or failed.
    WORKER_TIMEOUT: float = 30.0
    #: Seconds between maintenance rounds (rescue) in the elected leader.
    MAINTENANCE_INTERVAL: float = 5.0
    #: Database alias for the LISTEN connection, when DATABASE goes through a pooler in
    #: transaction mode: point this at a direct connection. None: use DATABASE.
    LISTEN_DATABASE: str | None = None
    #: Extra modules the worker imports at start, for tasks declared outside an
    #: installed app's ``tasks`` module. Only tasks from imported modules can run.
    TASK_MODULES: tuple[str, ...] = field(default_factory=tuple)
    #: Periodic schedules declared in code, by name (see ``schedules_conf.py``); each is
    #: checked by the system checks django_jobs.E010-E015.
    SCHEDULES: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: How long finished jobs are kept, per final state (seconds or a timedelta; None:
    #: forever). The maintenance leader deletes older ones in bounded batches. States
    #: left out keep their default.
    RETENTION: dict[str, float | None] = field(default_factory=lambda: dict(DEFAULT_RETENTION))
    #: Limits per queue, shared by every worker: {"emails": {"rate_limit": "20/s",
    #: "concurrency": 5}} (see limits.py and the flow control how-to).
    QUEUE_LIMITS: dict[str, QueueLimit] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "JobsOptions":
        """Build options from ``OPTIONS``; raise ImproperlyConfigured listing every problem."""
        problems = validate(raw or {})
        if problems:
            raise ImproperlyConfigured("; ".join(problems))
        values = dict(raw or {})
        if "TASK_MODULES" in values:
            values["TASK_MODULES"] = tuple(values["TASK_MODULES"])
        if "RETENTION" in values:
            values["RETENTION"] = {
                **DEFAULT_RETENTION,
                **{state: _seconds(keep) for state, keep in values["RETENTION"].items()},
            }
        if "QUEUE_LIMITS" in values:
            values["QUEUE_LIMITS"] = parse_queue_limits(values["QUEUE_LIMITS"])
        return cls(**values)


_KNOWN = {f.name for f in fields(JobsOptions)}


def _seconds(value: Any) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


def _positive_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


#: The worker's own periods, each with why a longer one is refused.
_WORKER_PERIODS = {
    "POLL_INTERVAL": "An idle worker waits this long in one call",
    "HEARTBEAT_INTERVAL": "A worker waits this long between heartbeats in one call",
    "MAINTENANCE_INTERVAL": "The leader waits this long between rounds, and holds its "
    "lease three times as long",
    "WORKER_TIMEOUT": "The jobs of a worker that died would wait this long to run again",
}


def validate(raw: dict[str, Any]) -> list[str]:
    """Return a readable message for each bad key or value in ``OPTIONS``."""
    problems = []
    for key in sorted(set(raw) - _KNOWN):
        problems.append(
            f"unknown option {key!r}; the known options are {', '.join(sorted(_KNOWN))}"
        )
    if "DATABASE" in raw and not isinstance(raw["DATABASE"], str):
        problems.append(f"DATABASE must be a database alias (a str), got {raw['DATABASE']!r}")
    attempts = raw.get("MAX_ATTEMPTS", 1)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        problems.append(f"MAX_ATTEMPTS must be a whole number >= 1, got {attempts!r}")
    for key in ("RETRY_BASE_DELAY", "RETRY_MAX_DELAY"):
        if key in raw and not _positive_number(raw[key]):
            problems.append(f"{key} must be a number of seconds > 0, got {raw[key]!r}")
        elif key in raw and (problem := duration_problem(key, raw[key])):
            problems.append(
                f"{problem} Retries are never put off further than that; give a shorter delay."
            )
    for key, why in _WORKER_PERIODS.items():
        if key in raw and not _positive_number(raw[key]):
            problems.append(f"{key} must be a number of seconds > 0, got {raw[key]!r}")
        elif key in raw and (problem := duration_problem(key, raw[key], limit=MAX_WORKER_PERIOD)):
            problems.append(
                f"{problem} {why}; give a number of seconds (the default is "
                f"{getattr(JobsOptions, key):g})."
            )
    factor = raw.get("RETRY_FACTOR", 2.0)
    if not isinstance(factor, int | float) or isinstance(factor, bool) or factor < 1:
        problems.append(f"RETRY_FACTOR must be a number >= 1, got {factor!r}")
    for key in ("TIMEOUT", "SOFT_TIMEOUT"):
        if raw.get(key) is not None and not _positive_number(raw[key]):
            problems.append(f"{key} must be None or a number of seconds > 0, got {raw[key]!r}")
        elif raw.get(key) is not None and (problem := duration_problem(key, raw[key])):
            problems.append(f"{problem} For no time limit at all, set {key} to None.")
    hard, soft = raw.get("TIMEOUT"), raw.get("SOFT_TIMEOUT")
    if _positive_number(hard) and _positive_number(soft) and soft >= hard:
        problems.append(
            f"SOFT_TIMEOUT ({soft}) must be shorter than TIMEOUT ({hard}), or tasks are "
            "killed before they can clean up"
        )
    beat, lost = raw.get("HEARTBEAT_INTERVAL", 5.0), raw.get("WORKER_TIMEOUT", 30.0)
    if _positive_number(beat) and _positive_number(lost) and lost < 2 * beat:
        problems.append(
            "WORKER_TIMEOUT must be at least twice HEARTBEAT_INTERVAL, or a worker that "
            "misses one beat is declared lost while it still runs its jobs"
        )
    listen_db = raw.get("LISTEN_DATABASE")
    if listen_db is not None and not isinstance(listen_db, str):
        problems.append(f"LISTEN_DATABASE must be a database alias or None, got {listen_db!r}")
    if "LISTEN" in raw and not isinstance(raw["LISTEN"], bool):
        problems.append(f"LISTEN must be True or False, got {raw['LISTEN']!r}")
    modules = raw.get("TASK_MODULES", ())
    if isinstance(modules, str) or not all(isinstance(m, str) for m in modules):
        problems.append(f"TASK_MODULES must be a list of dotted module paths, got {modules!r}")
    retention = raw.get("RETENTION", {})
    if not isinstance(retention, dict):
        problems.append(
            f"RETENTION must be a dict of final state -> seconds, timedelta or None, "
            f"got {retention!r}"
        )
    else:
        for state, keep in retention.items():
            if state not in DEFAULT_RETENTION:
                problems.append(
                    f"RETENTION has {state!r}; only finished jobs are deleted, so the keys "
                    f"are {', '.join(DEFAULT_RETENTION)}"
                )
            elif keep is not None and not _positive_number(_seconds(keep)):
                problems.append(
                    f"RETENTION[{state!r}] must be None (keep forever) or a number of seconds "
                    f"or a timedelta > 0, got {keep!r}"
                )
            elif keep is not None and (problem := duration_problem(f"RETENTION[{state!r}]", keep)):
                problems.append(
                    f"{problem} The pruner computes the cut-off date from it, and that far "
                    f"back is off PostgreSQL's calendar. To keep {state} jobs forever, set "
                    "it to None."
                )
    if "QUEUE_LIMITS" in raw:
        problems.extend(queue_limits_problems(raw["QUEUE_LIMITS"]))
    schedules = raw.get("SCHEDULES", {})
    if not isinstance(schedules, dict):
        problems.append(f"SCHEDULES must be a dict of name -> schedule, got {schedules!r}")
    return problems


#: Process-wide settings: ``settings.DJANGO_JOBS``, key -> (default, description).
SETTINGS_DEFAULTS: dict[str, Any] = {
    "ADMIN_REDACT": None,  # None: redaction.DEFAULT_REDACT
    "METRICS": False,
    "TRACING": False,
    "SENTRY": False,
    "SENTRY_REPORT_RETRIES": False,
    "API_TASKS": (),
    "API_MAX_BODY_BYTES": 256 * 1024,
    "API_SESSION_AUTH": True,
    "WEBHOOK_SECRET": None,
    "WEBHOOK_ALLOWED_URLS": (),
    "WEBHOOK_TIMEOUT": 10.0,
}


@dataclass(frozen=True, kw_only=True)
class JobsSettings:
    """``settings.DJANGO_JOBS``, with defaults, read when asked (never cached: tests and
    ``override_settings`` change it)."""

    #: Regex of dict keys whose values are hidden (admin, API, Sentry); "" hides nothing.
    ADMIN_REDACT: str | None = None
    #: Count job events in every process from start-up (web processes count enqueues).
    METRICS: bool = False
    #: OpenTelemetry spans for enqueues and job runs, and trace context propagation.
    TRACING: bool = False
    #: Report failed jobs to Sentry.
    SENTRY: bool = False
    #: Also report attempts that will be retried (by default only final failures).
    SENTRY_REPORT_RETRIES: bool = False
    #: Tasks that may be enqueued over the HTTP API: dotted paths, or "module.*".
    API_TASKS: tuple[str, ...] = ()
    #: Largest request body the API reads.
    API_MAX_BODY_BYTES: int = 256 * 1024
    #: Accept a logged-in user's session (with permissions and CSRF) besides tokens.
    API_SESSION_AUTH: bool = True
    #: Secrets that sign webhooks: the first signs, all are sent during a rotation.
    WEBHOOK_SECRET: tuple[str, ...] = ()
    #: URL prefixes a callback URL given over the HTTP API must start with.
    WEBHOOK_ALLOWED_URLS: tuple[str, ...] = ()
    #: Seconds a webhook POST may take before the attempt fails (and is retried).
    WEBHOOK_TIMEOUT: float = 10.0


def jobs_settings() -> JobsSettings:
    """``settings.DJANGO_JOBS``; values the checks would reject fall back to the default."""
    raw = getattr(settings, "DJANGO_JOBS", None) or {}
    bad = {key for key, _ in settings_problems(raw)}
    values: dict[str, Any] = {}
    for key in SETTINGS_DEFAULTS:
        if key in raw and key not in bad:
            value = raw[key]
            if key in ("API_TASKS", "WEBHOOK_ALLOWED_URLS"):
                value = tuple(value)
            elif key == "WEBHOOK_SECRET":
                value = (value,) if isinstance(value, str) else tuple(value or ())
            values[key] = value
    return JobsSettings(**values)


def settings_problems(raw: Any) -> list[tuple[str, str]]:
    """(key, message) for each bad key or value of ``DJANGO_JOBS``."""
    if not isinstance(raw, dict):
        return [("", f"DJANGO_JOBS must be a dict, got {type(raw).__name__}")]
    problems = []
    for key in sorted(set(raw) - set(SETTINGS_DEFAULTS)):
        problems.append(
            (key, f"unknown key {key!r}; the known keys are {', '.join(SETTINGS_DEFAULTS)}")
        )
    for key in ("METRICS", "TRACING", "SENTRY", "SENTRY_REPORT_RETRIES", "API_SESSION_AUTH"):
        if key in raw and not isinstance(raw[key], bool):
            problems.append((key, f"{key} must be True or False, got {raw[key]!r}"))
    redact = raw.get("ADMIN_REDACT")
    if redact is not None and not isinstance(redact, str):
        problems.append(("ADMIN_REDACT", f"ADMIN_REDACT must be a regex string, got {redact!r}"))
    for key in ("API_TASKS", "WEBHOOK_ALLOWED_URLS"):
        value = raw.get(key, ())
        if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
            problems.append((key, f"{key} must be a list of non-empty strings, got {value!r}"))
    for prefix in raw.get("WEBHOOK_ALLOWED_URLS", ()) or ():
        if isinstance(prefix, str) and not prefix.startswith(("https://", "http://")):
            problems.append(
                (
                    "WEBHOOK_ALLOWED_URLS",
                    f"WEBHOOK_ALLOWED_URLS entries are URL prefixes starting with https:// "
                    f"(or http://), got {prefix!r}",
                )
            )
    size = raw.get("API_MAX_BODY_BYTES", 1)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        problems.append(
            ("API_MAX_BODY_BYTES", f"API_MAX_BODY_BYTES must be a whole number > 0, got {size!r}")
        )
    secret = raw.get("WEBHOOK_SECRET")
    secrets_ = [secret] if isinstance(secret, str) else secret
    if secret is not None and (
        not isinstance(secrets_, list | tuple)
        or not secrets_
        or not all(isinstance(s, str) and len(s) >= 24 for s in secrets_)
    ):
        problems.append(
            (
                "WEBHOOK_SECRET",
                "WEBHOOK_SECRET must be a string of at least 24 characters (or a list of "
                "them, newest first, while rotating); generate one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            )
        )
    if "WEBHOOK_TIMEOUT" in raw and not _positive_number(raw["WEBHOOK_TIMEOUT"]):
        problems.append(
            (
                "WEBHOOK_TIMEOUT",
                f"WEBHOOK_TIMEOUT must be a number of seconds > 0, got {raw['WEBHOOK_TIMEOUT']!r}",
            )
        )
    return problems
