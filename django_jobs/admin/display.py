"""How the job admin shows a job: durations, state badges, the attempts table."""

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.utils.dateformat import format as date_format
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html
from django.utils.timezone import template_localtime

from django_jobs.context import Progress
from django_jobs.limits import FLOW_PARKED, KEY_PREFIX
from django_jobs.models import Job, Limiter
from django_jobs.states import JobState


def short_name(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


#: The one way the job admin writes a time: seconds matter for jobs, and the same
#: format on the list, the fields and the attempts table reads as one clock.
TIME_FORMAT = "Y-m-d H:i:s"


def format_time(value: Any) -> str:
    """``value`` (a datetime, or ISO text from a JSON record) in the current time zone."""
    value = _datetime(value)
    if value is None:
        return "-"
    return date_format(template_localtime(value), TIME_FORMAT)


def time_column(field: str, description: str) -> Callable[[Any, Job], str]:
    """An admin display method that writes the job's ``field`` as format_time() does."""

    @admin.display(description=description)
    def show(model_admin: Any, job: Job) -> str:
        return format_time(getattr(job, field))

    return show


def seconds_between(start: Any, end: Any) -> float | None:
    start, end = _datetime(start), _datetime(end)
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def state_badge(state: str) -> str:
    return format_html(
        '<span class="jobs-badge jobs-badge-{}">{}</span>', state.lower(), JobState(state).label
    )


def _datetime(value: Any) -> Any:
    return parse_datetime(value) if isinstance(value, str) else value


def attempts_of(job: Job) -> list[dict[str, Any]]:
    """One entry per attempt, newest first: worker, times, duration, outcome and error.

    The row keeps the first attempt's start and the last one's; a failed attempt's
    record keeps its own (``started_at``, written since 0.1). A snoozed attempt in the
    middle leaves no record, so its times are unknown.
    """
    errors = {e.get("attempt"): e for e in job.errors or [] if isinstance(e, dict)}
    rows = []
    for n in range(1, job.attempts + 1):
        worker = job.worker_ids[n - 1] if n <= len(job.worker_ids or []) else ""
        error = errors.get(n)
        row: dict[str, Any] = {"number": n, "worker": worker, "error": error}
        started = ended = None
        if error:
            row["outcome"] = "failed"
            started, ended = error.get("started_at"), error.get("failed_at")
        elif n == job.attempts:
            row["outcome"] = {
                JobState.RUNNING: "running",
                JobState.SUCCESSFUL: "successful",
            }.get(job.state, job.state.lower())
            ended = job.finished_at
        else:
            row["outcome"] = "snoozed"
        if n == job.attempts and job.last_attempted_at:
            started = job.last_attempted_at
        elif n == 1 and not started:
            started = job.started_at
        row["started"] = format_time(started)
        row["ended"] = format_time(ended)
        row["took"] = format_duration(seconds_between(started, ended))
        rows.append(row)
    return rows[::-1]


def current_progress(job: Job) -> Progress | None:
    """The progress the job's current attempt reported, or None."""
    progress = Progress.from_json(job.progress)
    if progress is None or progress.attempt not in (None, job.attempts):
        return None
    return progress


def progress_bar(progress: Progress | None) -> str:
    """A <progress> element with the numbers beside it (no inline style: CSP-safe)."""
    if progress is None:
        return "-"
    if progress.total:
        text = f"{progress.done:g}/{progress.total:g}"
        bar = format_html(
            '<progress class="jobs-progress" value="{}" max="{}" title="{}"></progress>',
            progress.done,
            progress.total,
            progress.message,
        )
    else:  # total unknown: an indeterminate bar
        text = f"{progress.done:g}"
        bar = format_html(
            '<progress class="jobs-progress" title="{}"></progress>', progress.message
        )
    return format_html('{}<span class="jobs-progress-text">{}</span>', bar, text)


def limits_status(job: Job) -> str:
    """What the limits do to ``job`` now, in a sentence."""
    if not job.flow:
        return "No limit applies." if not job.unique_key else "Unique; no limit applies."
    if job.state == JobState.READY and job.flow == FLOW_PARKED:
        key = (
            Limiter.objects.using(job._state.db)
            .filter(backend=job.backend, name=KEY_PREFIX + (job.concurrency_key or ""))
            .values_list("running", flat=True)
            .first()
        )
        running = "?" if key is None else key
        return (
            f"Waiting for a slot of key {job.concurrency_key!r} ({running} of "
            f"{job.concurrency_limit} running); it starts when one frees."
        )
    if job.state == JobState.READY:
        return "Under a limit: it starts when its task's, queue's or key's limits have room."
    return "Counted by its task's, queue's or key's limits while it runs."
