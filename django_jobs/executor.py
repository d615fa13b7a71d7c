"""Run ONE claimed job in the current thread and describe what happened.

Resolves the task through the registry (never by importing the stored path),
builds its TaskResult and TaskContext, sends ``task_started``, calls the function
(sync or async) under its soft time limit, and turns the return value or exception
into an :class:`Outcome`. Recording the outcome is the worker's job, except for
``atomic`` tasks, whose success is recorded inside their own transaction here.
"""

import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections, connections, transaction
from django.tasks import Task, TaskContext, TaskResult
from django.tasks.signals import task_started

from . import protocol, registry, retry
from .backend import JobsBackend, encode_json
from .exceptions import Retry, Snooze
from .protocol import ClaimedJob
from .sql import JOB_COLUMNS
from .timelimits import soft_time_limit

logger = logging.getLogger("django_jobs.executor")

SUCCEEDED = "succeeded"
#: Succeeded, and already recorded by the task's own transaction (atomic tasks).
RECORDED = "recorded"
FAILED = "failed"
SNOOZED = "snoozed"
#: Never started, or interrupted through no fault of its own: back to READY, no attempt spent.
RELEASED = "released"
#: Superseded by a newer attempt (found out by an atomic task): nothing to record.
LOST = "lost"


@dataclass(slots=True)
class Outcome:
    job: ClaimedJob
    kind: str
    duration: float = 0.0
    #: JSON text of the return value when the attempt succeeded.
    return_json: str | None = None
    #: The error record (see models.Job.errors) when it failed.
    error: dict[str, Any] | None = None
    #: Seconds until the next attempt (failed: None means final), or the snooze.
    delay: float | None = None
    #: The TaskResult sent with task_started, updated and sent with task_finished.
    task_result: TaskResult | None = None

    @property
    def succeeded(self) -> bool:
        return self.kind in (SUCCEEDED, RECORDED)

    def to_wire(self) -> tuple:
        """The parts a child process sends back (the parent has the job)."""
        return (self.kind, self.duration, self.return_json, self.error, self.delay)

    @classmethod
    def from_wire(cls, job: ClaimedJob, wire: tuple) -> "Outcome":
        kind, duration, return_json, error, delay = wire
        return cls(job, kind, duration, return_json, error, delay)


#: Longest delay we store (ten years): beyond it PostgreSQL's timestamps overflow.
MAX_DELAY = 10 * 365 * 24 * 3600.0


def storable_text(text: str) -> str:
    """Text as jsonb can hold it: no NUL characters, no lone surrogates."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_record(
    exc: BaseException | None,
    job: ClaimedJob,
    worker_id: str,
    *,
    class_path: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """The dict stored in ``Job.errors`` for one failed attempt."""
    if exc is not None:
        kind = type(exc)
        class_path = f"{kind.__module__}.{kind.__qualname__}"
        message = str(exc)
        trace = "".join(traceback.format_exception(exc))
    else:
        trace = ""
    return {
        "exception_class_path": class_path,
        "message": storable_text(message or ""),
        "traceback": storable_text(trace),
        "worker_id": worker_id,
        "attempt": job.attempts,
    }


def retry_delay(
    task: Task | None, job: ClaimedJob, backend: JobsBackend, exc: BaseException | None
) -> float | None:
    """Seconds until the next attempt after a failure, or None if this one was final."""
    if isinstance(exc, Retry) and exc.after is not None:
        return min(exc.after, MAX_DELAY) if job.attempts < job.max_attempts else None
    retry_on = getattr(task, "retry_on", None)
    if retry_on is not None and exc is not None and not isinstance(exc, (Retry, *retry_on)):
        return None
    options = backend.jobs_options
    return retry.retry_in(
        job.attempts,
        job.max_attempts,
        base=getattr(task, "retry_base_delay", None) or options.RETRY_BASE_DELAY,
        factor=getattr(task, "retry_factor", None) or options.RETRY_FACTOR,
        cap=getattr(task, "retry_max_delay", None) or options.RETRY_MAX_DELAY,
    )


def soft_timeout_for(task: Task | None, backend: JobsBackend) -> float | None:
    return getattr(task, "soft_timeout", None) or backend.jobs_options.SOFT_TIMEOUT


def hard_timeout_for(task: Task | None, backend: JobsBackend) -> float | None:
    return getattr(task, "timeout", None) or backend.jobs_options.TIMEOUT


class _LostLease(Exception):
    """An atomic task's completion found its attempt superseded: roll its work back."""


def execute(job: ClaimedJob, backend: JobsBackend, worker_id: str) -> Outcome:
    """Run ``job`` once; never raises (but lets KeyboardInterrupt through)."""
    started = time.perf_counter()
    task = registry.get(job.task_path)
    if task is None:
        exc = registry.UnknownTask(job.task_path)
        logger.error("Job %s not run: %s", job.id, exc, extra={"action": "job_unknown_task"})
        return Outcome(job, FAILED, error=error_record(exc, job, worker_id))

    row = {name: getattr(job, name) for name in JOB_COLUMNS}
    result = backend.result_from_row(row)
    task_started.send(sender=type(backend), task_result=result)
    atomic = getattr(task, "atomic", False)
    close_old_connections()
    try:
        with soft_time_limit(soft_timeout_for(task, backend)):
            if atomic:
                return_json = _run_atomic(task, job, result, backend)
            else:
                value = _call(task, job, result)
                return_json = None
    except KeyboardInterrupt:
        raise
    except Snooze as snooze:
        logger.info(
            "Job %s %s snoozed for %.1f s", job.id, job.task_path, snooze.after,
            extra={"action": "job_snoozed", "job_id": job.id},
        )  # fmt: skip
        duration = time.perf_counter() - started
        delay = min(snooze.after, MAX_DELAY)
        return Outcome(job, SNOOZED, duration, delay=delay, task_result=result)
    except BaseException as exc:
        duration = time.perf_counter() - started
        if isinstance(exc, _LostLease):
            return Outcome(job, LOST, duration)
        delay = retry_delay(task, job, backend, exc)
        _log_failure(job, exc, duration, delay)
        error = error_record(exc, job, worker_id)
        return Outcome(job, FAILED, duration, error=error, delay=delay, task_result=result)
    finally:
        close_old_connections()
    duration = time.perf_counter() - started
    if atomic:
        _log_success(job, duration)
        return Outcome(job, RECORDED, duration, return_json=return_json, task_result=result)
    try:
        return_json = encode_json(value, f"The return value of task {job.task_path!r}")
    except TypeError as exc:
        # The task did its work; running it again would repeat its effects for the same
        # unstorable value, so this failure is final whatever attempts remain.
        logger.error(
            "Job %s %s returned a value that cannot be stored: %s", job.id, job.task_path, exc,
            extra={"action": "job_failed", "job_id": job.id},
        )  # fmt: skip
        error = error_record(exc, job, worker_id)
        return Outcome(job, FAILED, duration, error=error, task_result=result)
    _log_success(job, duration)
    return Outcome(job, SUCCEEDED, duration, return_json=return_json, task_result=result)


def _call(task: Task, job: ClaimedJob, result: TaskResult) -> Any:
    if task.takes_context:
        return task.call(TaskContext(task_result=result), *job.args, **job.kwargs)
    return task.call(*job.args, **job.kwargs)


def _run_atomic(task: Task, job: ClaimedJob, result: TaskResult, backend: JobsBackend) -> str:
    """Run the task and record its success in one transaction on the jobs database."""
    database = backend.database
    with transaction.atomic(using=database):
        value = _call(task, job, result)
        # An unstorable value raises TypeError here and rolls the work back.
        return_json = encode_json(value, f"The return value of task {job.task_path!r}")
        with connections[database].cursor() as cursor:
            recorded = protocol.complete(
                cursor, [protocol.Success(job.id, job.attempts, return_json)]
            )
        if job.id not in recorded:
            logger.warning(
                "Job %s attempt %d was taken over by a newer attempt; its work was rolled back",
                job.id, job.attempts, extra={"action": "job_lost_lease"},
            )  # fmt: skip
            raise _LostLease(job.id)
    return return_json


def _log_success(job: ClaimedJob, duration: float) -> None:
    logger.info(
        "Job %s %s succeeded in %.1f ms", job.id, job.task_path, duration * 1000,
        extra={"action": "job_succeeded", "job_id": job.id},
    )  # fmt: skip


def _log_failure(
    job: ClaimedJob, exc: BaseException, duration: float, delay: float | None
) -> None:
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
