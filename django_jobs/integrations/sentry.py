"""Sentry: failed jobs reported with their task, id, attempt and (redacted) arguments.

Around each attempt, in the process that runs it, an isolation scope carries the job's
tags and context, so anything reported while the task runs (an exception, an error it
logs, Sentry's logging integration picking up our own "Job ... failed" line) says which
job it was. When the attempt fails for good, its exception is captured (Sentry's
deduplication drops a second report of the same exception). Attempts that will be
retried are reported only with ``DJANGO_JOBS["SENTRY_REPORT_RETRIES"]``.

Failures that raise nothing in the task's process (the child was killed at its hard
time limit, or died; the worker was lost) are reported where they are recorded, as a
message.

Configure ``sentry_sdk.init()`` as usual in settings, so that every process (web,
``runjobs``, its children) has it.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.exceptions import ImproperlyConfigured

try:
    import sentry_sdk
except ImportError as exc:  # pragma: no cover - exercised by the extras test
    raise ImproperlyConfigured(
        "DJANGO_JOBS['SENTRY'] needs the sentry-sdk package: pip install 'django-pg-jobs[sentry]'."
    ) from exc

from .. import instrumentation, signals
from ..codec import class_path
from ..compat import TaskResultStatus, task_finished
from ..conf import jobs_settings
from ..exceptions import TimeLimitExceeded, WorkerProcessDied
from ..redaction import redact, redact_pattern

#: Failures recorded without an exception in hand: reported where they are recorded.
_NO_EXCEPTION = {class_path(TimeLimitExceeded), class_path(WorkerProcessDied)}


def _tag(scope: Any, job_id: Any, task: str, queue: str, backend: str, attempt: int) -> None:
    scope.set_tag("django_jobs.task", task)
    scope.set_tag("django_jobs.queue", queue)
    scope.set_tag("django_jobs.backend", backend)
    scope.set_tag("django_jobs.job_id", str(job_id))
    scope.set_tag("django_jobs.attempt", str(attempt))


@contextmanager
def report_run(run: instrumentation.JobRun) -> Iterator[None]:
    job = run.job
    pattern = redact_pattern()
    with sentry_sdk.isolation_scope() as scope:
        _tag(scope, job.id, job.task_path, job.queue_name, job.backend, job.attempts)
        scope.set_context(
            "django_jobs job",
            {
                "id": job.id,
                "task": job.task_path,
                "queue": job.queue_name,
                "attempt": job.attempts,
                "max_attempts": job.max_attempts,
                "enqueued_at": job.enqueued_at.isoformat(),
                "args": redact(job.args, pattern),
                "kwargs": redact(job.kwargs, pattern),
            },
        )
        yield
        if run.exception is None or run.outcome not in ("failed", "retrying"):
            return
        if run.outcome == "retrying" and not jobs_settings().SENTRY_REPORT_RETRIES:
            return
        scope.set_tag("django_jobs.will_retry", "true" if run.outcome == "retrying" else "false")
        sentry_sdk.capture_exception(run.exception)


def report_killed(sender: Any, task_result: Any, **kwargs: Any) -> None:
    """A final failure recorded without an exception: hard time limit, a dead child."""
    if task_result.status != TaskResultStatus.FAILED or not task_result.errors:
        return
    kind = task_result.errors[-1].exception_class_path
    if kind not in _NO_EXCEPTION:
        return
    with sentry_sdk.isolation_scope() as scope:
        _tag(
            scope, task_result.id, task_result.task.module_path, task_result.task.queue_name,
            task_result.backend, task_result.attempts,
        )  # fmt: skip
        scope.set_tag("django_jobs.will_retry", "false")
        sentry_sdk.capture_message(
            f"Job {task_result.id} ({task_result.task.module_path}) failed: "
            f"{kind.rsplit('.', 1)[-1]}",
            level="error",
        )


def report_rescued(
    sender: Any, *, job_id: int, task_path: str, queue_name: str, backend: str, attempt: int,
    lost_worker_id: str, state: str, **kwargs: Any,
) -> None:  # fmt: skip
    """A job of a lost worker that had no attempt left."""
    if state != "FAILED":
        return
    with sentry_sdk.isolation_scope() as scope:
        _tag(scope, job_id, task_path, queue_name, backend, attempt)
        scope.set_tag("django_jobs.will_retry", "false")
        sentry_sdk.capture_message(
            f"Job {job_id} ({task_path}) failed: its worker {lost_worker_id} was lost",
            level="error",
        )


def enable() -> None:
    """Report failed jobs from this process from now on (idempotent)."""
    instrumentation.add_run_wrapper(report_run)
    task_finished.connect(report_killed, dispatch_uid="django_jobs.sentry.killed")
    signals.job_rescued.connect(report_rescued, dispatch_uid="django_jobs.sentry.rescued")


def disable() -> None:
    """Stop reporting (tests)."""
    if report_run in instrumentation.run_wrappers:
        instrumentation.run_wrappers.remove(report_run)
    task_finished.disconnect(dispatch_uid="django_jobs.sentry.killed")
    signals.job_rescued.disconnect(dispatch_uid="django_jobs.sentry.rescued")
