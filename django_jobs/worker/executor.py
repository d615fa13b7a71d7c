"""Run ONE claimed job in the current thread and describe what happened.

Resolves the task through the registry (never by importing the stored path),
builds its TaskResult and context, reads what a workflow step receives from the steps
before it, sends ``task_started``, calls the function (sync or async) under its soft
time limit, and turns the return value or exception into an :class:`Outcome`.
Recording the outcome is the worker's job, except for ``atomic`` tasks, whose success
is recorded inside their own transaction here. A job someone cancelled ends CANCELLED
however it ends (see ``control.py`` for where the request comes from).
"""

import logging
import time
from typing import Any

from django.db import close_old_connections, connections, transaction

from .. import registry
from ..backend import JobsBackend
from ..codec import class_path, encode_json, error_record
from ..compat import Task, TaskResult, task_started
from ..context import JobContext, running
from ..exceptions import JobCancelled, ParentResultMissing, Snooze
from ..policy import Policy, snooze_delay
from ..protocol import jobs as protocol
from ..protocol.jobs import ClaimedJob
from ..workflows.inputs import step_inputs
from .control import RunningJob
from .outcomes import Outcome, OutcomeKind
from .timelimits import soft_time_limit

logger = logging.getLogger(__name__)


class _LostLease(Exception):
    """An atomic task's completion found its attempt superseded: roll its work back."""


class _Cancelled(Exception):
    """An atomic task returned after a cancel request: roll its work back."""


class _NoControl:
    """For a job run with no worker around it (tests, ``testing.drain``)."""

    cancel_requested = False

    def set_progress(self, progress: dict[str, Any]) -> None:
        pass

    last_progress = None

    def flush(self) -> None:
        pass


def execute(
    job: ClaimedJob, backend: JobsBackend, worker_id: str, control: RunningJob | None = None
) -> Outcome:
    """Run ``job`` once; never raises (but lets KeyboardInterrupt through)."""
    started = time.perf_counter()
    task = registry.get(job.task_path)
    if task is None:
        exc = registry.UnknownTask(job.task_path)
        logger.error("Job %s not run: %s", job.id, exc, extra={"action": "job_unknown_task"})
        error = error_record(exc, attempt=job.attempts, worker_id=worker_id)
        return Outcome(job, OutcomeKind.FAILED, error=error)
    steer: Any = control or _NoControl()
    if steer.cancel_requested:
        logger.info(
            "Job %s %s was cancelled before it started", job.id, job.task_path,
            extra={"action": "job_cancelled", "job_id": job.id},
        )  # fmt: skip
        error = _cancel_record(job, worker_id, None, "it was cancelled before it started")
        return Outcome(job, OutcomeKind.CANCELLED, error=error)

    result = backend.result_from_row(job.as_row())
    task_started.send(sender=type(backend), task_result=result)
    policy = Policy.for_task(task, backend.jobs_options)
    atomic = policy.atomic
    close_old_connections()
    try:
        with soft_time_limit(policy.soft_timeout), running(steer):
            inputs = step_inputs(job, backend.database)
            if atomic:
                return_json = _run_atomic(task, job, result, backend, steer, inputs)
            else:
                value = _call(task, job, result, steer, inputs)
                return_json = None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        duration = time.perf_counter() - started
        if steer.cancel_requested and not isinstance(exc, _LostLease):
            return _cancelled(job, worker_id, duration, result, exc)
        if isinstance(exc, Snooze):
            return _snoozed(job, exc, duration, result)
        if isinstance(exc, _LostLease):
            return Outcome(job, OutcomeKind.LOST, duration)
        # A step whose inputs are gone cannot succeed by trying again.
        delay = (
            None
            if isinstance(exc, ParentResultMissing)
            else policy.next_attempt_in(job.attempts, job.max_attempts, exc)
        )
        _log_failure(job, exc, duration, delay)
        error = error_record(exc, attempt=job.attempts, worker_id=worker_id)
        return Outcome(
            job, OutcomeKind.FAILED, duration, error=error, delay=delay, task_result=result
        )
    finally:
        # The last progress goes to the worker before the outcome does.
        steer.flush()
        close_old_connections()
    duration = time.perf_counter() - started
    if steer.cancel_requested and not atomic:
        return _cancelled(job, worker_id, duration, result, None)
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


def _snoozed(job: ClaimedJob, snooze: Snooze, duration: float, result: TaskResult) -> Outcome:
    logger.info(
        "Job %s %s snoozed for %.1f s", job.id, job.task_path, snooze.after,
        extra={"action": "job_snoozed", "job_id": job.id},
    )  # fmt: skip
    delay = snooze_delay(snooze.after)
    return Outcome(job, OutcomeKind.SNOOZED, duration, delay=delay, task_result=result)


def _cancel_record(
    job: ClaimedJob, worker_id: str, exc: BaseException | None, how: str
) -> dict[str, Any]:
    record = error_record(exc, attempt=job.attempts, worker_id=worker_id)
    record["exception_class_path"] = class_path(JobCancelled)
    record["message"] = how
    return record


def _cancelled(
    job: ClaimedJob,
    worker_id: str,
    duration: float,
    result: TaskResult,
    exc: BaseException | None,
) -> Outcome:
    """The attempt ended after a cancel request: CANCELLED, whatever it returned or raised."""
    if exc is None or isinstance(exc, _Cancelled):
        how = "it stopped after a cancel request"
    else:
        how = f"it stopped after a cancel request, raising {class_path(type(exc))}: {exc}"
    logger.info(
        "Job %s %s cancelled: %s", job.id, job.task_path, how,
        extra={"action": "job_cancelled", "job_id": job.id},
    )  # fmt: skip
    error = _cancel_record(job, worker_id, None if isinstance(exc, _Cancelled) else exc, how)
    return Outcome(job, OutcomeKind.CANCELLED, duration, error=error, task_result=result)


def _call(task: Task, job: ClaimedJob, result: TaskResult, control: Any, inputs: list) -> Any:
    if task.takes_context:
        context = JobContext(task_result=result, control=control)
        return task.call(context, *inputs, *job.args, **job.kwargs)
    return task.call(*inputs, *job.args, **job.kwargs)


def _run_atomic(
    task: Task,
    job: ClaimedJob,
    result: TaskResult,
    backend: JobsBackend,
    control: Any,
    inputs: list,
) -> str:
    """Run the task and record its success in one transaction on the jobs database."""
    database = backend.database
    with transaction.atomic(using=database):
        value = _call(task, job, result, control, inputs)
        if control.cancel_requested:
            raise _Cancelled(job.id)  # its work rolls back; the attempt ends CANCELLED
        # An unstorable value raises TypeError here and rolls the work back.
        return_json = encode_json(value, f"The return value of task {job.task_path!r}")
        with connections[database].cursor() as cursor:
            if control.last_progress is not None:
                # Written with the success: the worker's own write would come too late.
                protocol.record_progress(
                    cursor,
                    [
                        protocol.Progressed(
                            job.id, job.attempts, encode_json(control.last_progress, "progress")
                        )
                    ],
                )
            success = protocol.Success(
                job.id, job.attempts, return_json, job.dependents is not None
            )
            recorded = protocol.complete(cursor, [success])
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
