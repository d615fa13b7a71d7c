"""Run ONE claimed job in the current thread and describe what happened.

Resolves the task through the registry (never by importing the stored path),
builds its TaskResult and TaskContext, sends ``task_started``, calls the function
(sync or async), and turns the return value or exception into an :class:`Outcome`.
Recording the outcome is the worker's job.
"""

import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections
from django.tasks import TaskContext, TaskResult
from django.tasks.signals import task_started

from . import registry, retry
from .backend import JobsBackend, encode_json
from .protocol import ClaimedJob
from .sql import JOB_COLUMNS

logger = logging.getLogger("django_jobs.executor")


@dataclass(slots=True)
class Outcome:
    job: ClaimedJob
    duration: float
    #: JSON text of the return value when the attempt succeeded.
    return_json: str | None = None
    #: The error record (see models.Job.errors) when it failed.
    error: dict[str, Any] | None = None
    #: Seconds until the next attempt; None when it succeeded or will not be retried.
    retry_in: float | None = None
    #: The TaskResult sent with task_started, updated and sent with task_finished.
    task_result: TaskResult | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None


def _error_record(exc: BaseException, job: ClaimedJob, worker_id: str) -> dict[str, Any]:
    kind = type(exc)
    return {
        "exception_class_path": f"{kind.__module__}.{kind.__qualname__}",
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "worker_id": worker_id,
        "attempt": job.attempts,
    }


def execute(job: ClaimedJob, backend: JobsBackend, worker_id: str) -> Outcome:
    """Run ``job`` once; never raises (but lets KeyboardInterrupt through)."""
    started = time.perf_counter()
    task = registry.get(job.task_path)
    if task is None:
        exc = registry.UnknownTask(job.task_path)
        logger.error("Job %s not run: %s", job.id, exc, extra={"action": "job_unknown_task"})
        return Outcome(job=job, duration=0.0, error=_error_record(exc, job, worker_id))

    row = {name: getattr(job, name) for name in JOB_COLUMNS}
    result = backend.result_from_row(row)
    task_started.send(sender=type(backend), task_result=result)
    close_old_connections()
    try:
        if task.takes_context:
            value = task.call(TaskContext(task_result=result), *job.args, **job.kwargs)
        else:
            value = task.call(*job.args, **job.kwargs)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        duration = time.perf_counter() - started
        options = backend.jobs_options
        delay = retry.retry_in(
            job.attempts,
            job.max_attempts,
            base=options.RETRY_BASE_DELAY,
            factor=options.RETRY_FACTOR,
            cap=options.RETRY_MAX_DELAY,
        )
        if delay is None:
            logger.error(
                "Job %s %s failed on attempt %d of %d after %.1f ms",
                job.id, job.task_path, job.attempts, job.max_attempts, duration * 1000,
                exc_info=exc, extra={"action": "job_failed", "job_id": job.id},
            )  # fmt: skip
        else:
            logger.warning(
                "Job %s %s failed on attempt %d of %d after %.1f ms (%s: %s); retry in %.1f s",
                job.id, job.task_path, job.attempts, job.max_attempts, duration * 1000,
                type(exc).__name__, exc, delay,
                extra={"action": "job_retrying", "job_id": job.id},
            )  # fmt: skip
        return Outcome(
            job=job,
            duration=duration,
            error=_error_record(exc, job, worker_id),
            retry_in=delay,
            task_result=result,
        )
    finally:
        close_old_connections()
    duration = time.perf_counter() - started
    try:
        return_json = encode_json(value, f"The return value of task {job.task_path!r}")
    except TypeError as exc:
        # The task did its work; running it again would repeat its effects for the same
        # unstorable value, so this failure is final whatever attempts remain.
        logger.error(
            "Job %s %s returned a value that cannot be stored: %s", job.id, job.task_path, exc,
            extra={"action": "job_failed", "job_id": job.id},
        )  # fmt: skip
        return Outcome(
            job=job,
            duration=duration,
            error=_error_record(exc, job, worker_id),
            task_result=result,
        )
    logger.info(
        "Job %s %s succeeded in %.1f ms",
        job.id, job.task_path, duration * 1000,
        extra={"action": "job_succeeded", "job_id": job.id},
    )  # fmt: skip
    return Outcome(job=job, duration=duration, return_json=return_json, task_result=result)
