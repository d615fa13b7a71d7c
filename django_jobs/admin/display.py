"""How the job admin shows a job: durations, state badges, the attempts table."""

from typing import Any

from django.utils.dateparse import parse_datetime
from django.utils.html import format_html

from django_jobs.limits import FLOW_PARKED, KEY_PREFIX
from django_jobs.models import Job, Limiter
from django_jobs.states import JobState


def short_name(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def state_badge(state: str) -> str:
    return format_html(
        '<span class="jobs-badge jobs-badge-{}">{}</span>', state.lower(), JobState(state).label
    )


def _datetime(value: Any) -> Any:
    return parse_datetime(value) if isinstance(value, str) else value


def attempts_of(job: Job) -> list[dict[str, Any]]:
    """One entry per attempt, newest first: worker, times, outcome and error."""
    errors = {e.get("attempt"): e for e in job.errors or [] if isinstance(e, dict)}
    rows = []
    for n in range(1, job.attempts + 1):
        worker = job.worker_ids[n - 1] if n <= len(job.worker_ids or []) else ""
        error = errors.get(n)
        row: dict[str, Any] = {"number": n, "worker": worker, "error": error}
        if error:
            row["outcome"] = "failed"
            row["ended_at"] = _datetime(error.get("failed_at"))
        elif n == job.attempts:
            row["outcome"] = {
                JobState.RUNNING: "running",
                JobState.SUCCESSFUL: "successful",
            }.get(job.state, job.state.lower())
            row["ended_at"] = job.finished_at
        else:
            row["outcome"] = "snoozed or released"
        if n == 1:
            row["started_at"] = job.started_at
        if n == job.attempts:
            row["started_at"] = job.last_attempted_at
        rows.append(row)
    return rows[::-1]


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
