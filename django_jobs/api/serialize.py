"""Jobs as the API shows them: ids as strings (JavaScript numbers stop at 2**53), times
in ISO 8601, arguments and return values with secrets hidden as in the admin, errors
without tracebacks (they show code paths; the admin has them)."""

from datetime import datetime
from typing import Any

from django.urls import reverse

from ..models import Job
from ..redaction import redact, redact_pattern
from ..states import JobState, to_task_status

#: The columns a summary needs; the heavy JSON ones are left in the table.
SUMMARY_FIELDS = (
    "id", "task_path", "queue_name", "priority", "backend", "state", "attempts",
    "max_attempts", "enqueued_at", "available_at", "started_at", "finished_at",
)  # fmt: skip


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def links(job_id: int) -> dict[str, str]:
    return {
        "self": reverse("django_jobs_api:job", args=[job_id]),
        "cancel": reverse("django_jobs_api:cancel", args=[job_id]),
    }


def summary(job: Job) -> dict[str, Any]:
    return {
        "id": str(job.pk),
        "task": job.task_path,
        "queue": job.queue_name,
        "priority": job.priority,
        "backend": job.backend,
        "state": job.state,
        "status": to_task_status(job.state).value,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "enqueued_at": _time(job.enqueued_at),
        "available_at": _time(job.available_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
        "links": links(job.pk),
    }


def detail(job: Job) -> dict[str, Any]:
    pattern = redact_pattern()
    successful = job.state == JobState.SUCCESSFUL
    return {
        **summary(job),
        "run_after": _time(job.run_after),
        "last_attempted_at": _time(job.last_attempted_at),
        "args": redact(job.args, pattern),
        "kwargs": redact(job.kwargs, pattern),
        "return_value": redact(job.return_value, pattern) if successful else None,
        "errors": [
            {
                "exception_class": e.get("exception_class_path"),
                "message": e.get("message"),
                "attempt": e.get("attempt"),
                "failed_at": e.get("failed_at"),
            }
            for e in job.errors
        ],
        "callback_url": job.callback_url,
        "cancel_requested_at": _time(job.cancel_requested_at),
        "cancelled_by": job.cancelled_by,
        "progress": job.progress or None,
        "workflow": None if job.workflow_id is None else str(job.workflow_id),
    }
