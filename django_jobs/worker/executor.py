"""Run ONE claimed job in the current thread and describe what happened.

Resolves the task through the registry (never by importing the stored path),
builds its TaskResult and TaskContext, sends ``task_started``, calls the function
(sync or async) under its soft time limit, and turns the return value or exception
into an :class:`Outcome`. Recording the outcome is the worker's job, except for
``atomic`` tasks, whose success is recorded inside their own transaction here.
"""

import logging
import time
from typing import Any

from django.db import close_old_connections, connections, transaction

from .. import registry
from ..backend import JobsBackend
from ..codec import encode_json, error_record
from ..compat import Task, TaskContext, TaskResult, task_started
from ..exceptions import Snooze
from ..policy import Policy, snooze_delay
from ..protocol import jobs as protocol
from ..protocol.jobs import ClaimedJob
from .outcomes import Outcome, OutcomeKind
from .timelimits import soft_time_limit

logger = logging.getLogger(__name__)


class _LostLease(Exception):
    """An atomic task's completion found its attempt superseded: roll its work back."""


def execute(
    job: ClaimedJob, backend: JobsBackend, worker_id: str, *, manage_connections: bool = True
) -> Outcome:
    """Run ``job`` once; never raises (but lets KeyboardInterrupt through).

    ``manage_connections=False`` leaves Django's connections alone: django_jobs.testing
    runs jobs inside a test's transaction, which closing "old" connections would break.
    """
    started = time.perf_counter()
    try:
        # Declared here, or its module imported on the strength of the job's proof.
        task = registry.resolve(job.task_path, job.task_proof)
    except registry.UnknownTask as exc:
        logger.error("Job %s not run: %s", job.id, exc, extra={"action": "job_unknown_task"})
        error = error_record(exc, attempt=job.attempts, worker_id=worker_id)
        return Outcome(job, OutcomeKind.FAILED, error=error)

    result = backend.result_from_row(job.as_row())
    task_started.send(sender=type(backend), task_result=result)
    policy = Policy.for_task(task, backend.jobs_options)
    atomic = policy.atomic
    if manage_connections:
        close_old_connections()
    try:
        with soft_time_limit(policy.soft_timeout):
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
        delay = snooze_delay(snooze.after)
        return Outcome(job, OutcomeKind.SNOOZED, duration, delay=delay, task_result=result)
    except BaseException as exc:
        duration = time.perf_counter() - started
        if isinstance(exc, _LostLease):
            return Outcome(job, OutcomeKind.LOST, duration)
        delay = policy.next_attempt_in(job.attempts, job.max_attempts, exc)
        _log_failure(job, exc, duration, delay)
        error = error_record(exc, attempt=job.attempts, worker_id=worker_id)
        return Outcome(
            job, OutcomeKind.FAILED, duration, error=error, delay=delay, task_result=result
        )
    finally:
        if manage_connections:
            close_old_connections()
    duration = time.perf_counter() - started
    if atomic:
        _log_success(job, duration)
        return Outcome(
            job, OutcomeKind.RECORDED, duration, return_json=return_json, task_result=result
        )
    try:
        return_json = encode_json(value, f"The return value of task {job.task_path!r}")
    except TypeError as exc:
        # The task did its work; running it again would repeat its effects for the same
        # unstorable value, so this failure is final whatever attempts remain.
        logger.error(
            "Job %s %s returned a value that cannot be stored: %s", job.id, job.task_path, exc,
            extra={"action": "job_failed", "job_id": job.id},
        )  # fmt: skip
        error = error_record(exc, attempt=job.attempts, worker_id=worker_id)
        return Outcome(job, OutcomeKind.FAILED, duration, error=error, task_result=result)
    _log_success(job, duration)
    return Outcome(
        job, OutcomeKind.SUCCEEDED, duration, return_json=return_json, task_result=result
    )


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
