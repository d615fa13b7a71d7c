"""Run ONE claimed job in the current thread and describe what happened.

Resolves the task through the registry (never by importing the stored path),
builds its TaskResult and context, reads what a workflow step receives from the steps
before it, sends ``task_started``, calls the function (sync or async) under its soft
time limit, and turns the return value or exception into an :class:`Outcome`.
Recording the outcome is the worker's job, except for ``atomic`` tasks, whose success
is recorded inside their own transaction here. A job someone cancelled ends CANCELLED
however it ends (see ``control.py`` for where the request comes from).
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction, sync_to_async
from django.db import close_old_connections, connections, transaction

from .. import instrumentation, registry
from ..backend import JobsBackend
from ..codec import class_path, encode_json, error_record
from ..compat import Task, TaskResult, signal_wanted, task_started
from ..context import JobContext, JobControl, running
from ..exceptions import JobCancelled, ParentResultMissing, Snooze, SoftTimeLimitExceeded
from ..policy import Policy, snooze_delay
from ..protocol import jobs as protocol
from ..protocol.jobs import ClaimedJob
from ..workflows.inputs import step_inputs
from .outcomes import Outcome, OutcomeKind
from .timelimits import soft_time_limit

logger = logging.getLogger(__name__)


class _LostLease(Exception):
    """An atomic task's completion found its attempt superseded: roll its work back."""


class _Cancelled(Exception):
    """An atomic task returned after a cancel request: roll its work back."""


class _NoControl:
    """For a job run with no worker around it (django_jobs.testing)."""

    cancel_requested = False
    last_progress = None

    def set_progress(self, progress: dict[str, Any]) -> None:
        pass

    def take_held(self) -> None:
        return None


_NO_CONTROL = _NoControl()


@dataclass(slots=True)
class _Run:
    """One attempt being run: what its outcome is built from."""

    job: ClaimedJob
    task: Task
    worker_id: str
    started: float
    result: TaskResult | None
    policy: Policy
    #: What the integrations' run wrappers see (None when none is on).
    trace: instrumentation.JobRun | None = None
    #: Cancel requests and progress (see control.py).
    control: Any = _NO_CONTROL


def _start(
    job: ClaimedJob,
    backend: JobsBackend,
    worker_id: str,
    trace: instrumentation.JobRun | None,
    control: Any,
) -> _Run | Outcome:
    """Find the task and announce the attempt; an Outcome if it cannot run at all."""
    started = time.perf_counter()
    try:
        # Declared here, or its module imported on the strength of the job's proof.
        task = registry.resolve(job.task_path, job.task_proof)
    except registry.UnknownTask as exc:
        logger.error("Job %s not run: %s", job.id, exc, extra={"action": "job_unknown_task"})
        error = error_record(exc, attempt=job.attempts, worker_id=worker_id)
        if trace is not None:
            trace.exception = exc
        return Outcome(job, OutcomeKind.FAILED, error=error)
    if control.cancel_requested:
        logger.info(
            "Job %s %s was cancelled before it started", job.id, job.task_path,
            extra={"action": "job_cancelled", "job_id": job.id},
        )  # fmt: skip
        error = _cancel_record(job, worker_id, None, "it was cancelled before it started")
        return Outcome(job, OutcomeKind.CANCELLED, error=error)
    # The TaskResult is built only for someone: the task's context, or a receiver.
    started_wanted = signal_wanted(task_started, logging.INFO)
    result = None
    if task.takes_context or started_wanted:
        result = backend.result_from_row(job.as_row())
        if started_wanted:
            task_started.send(sender=type(backend), task_result=result)
    if trace is not None:
        trace.task_result = result
    policy = Policy.for_task(task, backend.jobs_options)
    return _Run(job, task, worker_id, started, result, policy, trace, control)


def _raised(run: _Run, exc: BaseException) -> Outcome:
    """The outcome of an attempt that raised ``exc``."""
    job = run.job
    duration = time.perf_counter() - run.started
    if run.control.cancel_requested and not isinstance(exc, _LostLease):
        return _cancelled(run, duration, exc)
    if isinstance(exc, Snooze):
        logger.info(
            "Job %s %s snoozed for %.1f s", job.id, job.task_path, exc.after,
            extra={"action": "job_snoozed", "job_id": job.id},
        )  # fmt: skip
        delay = snooze_delay(exc.after)
        return Outcome(job, OutcomeKind.SNOOZED, duration, delay=delay, task_result=run.result)
    if isinstance(exc, _LostLease):
        return Outcome(job, OutcomeKind.LOST, duration)
    if run.trace is not None:
        run.trace.exception = exc
    # A step whose inputs are gone cannot succeed by trying again.
    delay = (
        None
        if isinstance(exc, ParentResultMissing)
        else run.policy.next_attempt_in(job.attempts, job.max_attempts, exc)
    )
    _log_failure(job, exc, duration, delay)
    error = error_record(exc, attempt=job.attempts, worker_id=run.worker_id)
    return Outcome(
        job, OutcomeKind.FAILED, duration, error=error, delay=delay, task_result=run.result
    )


def _returned(run: _Run, value: Any) -> Outcome:
    """The outcome of an attempt that returned ``value``."""
    job = run.job
    duration = time.perf_counter() - run.started
    if run.control.cancel_requested:
        return _cancelled(run, duration, None)
    if value is None:
        return_json = "null"  # the common case, without a trip through the encoder
    else:
        try:
            return_json = encode_json(value, f"The return value of task {job.task_path!r}")
        except TypeError as exc:
            # The task did its work; running it again would repeat its effects for the
            # same unstorable value, so this failure is final whatever attempts remain.
            logger.error(
                "Job %s %s returned a value that cannot be stored: %s",
                job.id, job.task_path, exc, extra={"action": "job_failed", "job_id": job.id},
            )  # fmt: skip
            error = error_record(exc, attempt=job.attempts, worker_id=run.worker_id)
            return Outcome(job, OutcomeKind.FAILED, duration, error=error, task_result=run.result)
    _log_success(job, duration)
    return Outcome(
        job, OutcomeKind.SUCCEEDED, duration, return_json=return_json, task_result=run.result
    )


def execute(
    job: ClaimedJob,
    backend: JobsBackend,
    worker_id: str,
    control: JobControl | None = None,
    *,
    manage_connections: bool = True,
) -> Outcome:
    """Run ``job`` once on this thread; never raises (but lets KeyboardInterrupt through).

    ``control`` carries cancel requests in and progress out (``control.RunningJob``);
    without one, the job is never asked to stop and its progress goes nowhere.
    ``manage_connections=False`` leaves Django's connections alone: django_jobs.testing
    runs jobs inside a test's transaction, which closing "old" connections would break.
    """
    steer = control or _NO_CONTROL
    if not instrumentation.run_wrappers:
        return _held_progress(
            _execute(job, backend, worker_id, None, steer, manage_connections), steer
        )
    # The integrations' wrappers (a tracing span, error reporting) are entered before
    # task_started and left after the outcome is known: what the task does runs inside.
    trace = instrumentation.JobRun(job)
    with instrumentation.running(trace):
        outcome = _execute(job, backend, worker_id, trace, steer, manage_connections)
        _describe(trace, outcome)
    return _held_progress(outcome, steer)


def _held_progress(outcome: Outcome, control: Any) -> Outcome:
    """Give the outcome the progress value the throttle held back: it is written with
    the outcome, just before it (an atomic task wrote its own already)."""
    if outcome.kind != OutcomeKind.RECORDED:
        outcome.progress_json = control.take_held()
    return outcome


_OUTCOME_NAMES = {OutcomeKind.RECORDED: "succeeded", OutcomeKind.SUCCEEDED: "succeeded"}


def _describe(trace: instrumentation.JobRun, outcome: Outcome) -> None:
    """Tell the run wrappers how the attempt ended, before they exit."""
    trace.outcome = _OUTCOME_NAMES.get(outcome.kind, outcome.kind.value)
    if outcome.kind == OutcomeKind.FAILED and outcome.delay is not None:
        trace.outcome = "retrying"
    trace.error = outcome.error
    trace.duration = outcome.duration


def _execute(
    job: ClaimedJob,
    backend: JobsBackend,
    worker_id: str,
    trace: instrumentation.JobRun | None,
    control: Any,
    manage_connections: bool = True,
) -> Outcome:
    run = _start(job, backend, worker_id, trace, control)
    if isinstance(run, Outcome):
        return run
    if manage_connections:
        close_old_connections()
    try:
        with soft_time_limit(run.policy.soft_timeout), running(control):
            inputs = step_inputs(job, backend.database)
            if run.policy.atomic:
                return_json = _run_atomic(run.task, job, run.result, backend, control, inputs)
                _log_success(job, time.perf_counter() - run.started)
                return Outcome(
                    job,
                    OutcomeKind.RECORDED,
                    time.perf_counter() - run.started,
                    return_json=return_json,
                    task_result=run.result,
                )
            value = _call(run.task, job, run.result, control, inputs)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return _raised(run, exc)
    finally:
        if manage_connections:
            close_old_connections()
    return _returned(run, value)


def runs_on_event_loop(job: ClaimedJob) -> bool:
    """Whether the asyncio pool awaits this job on its loop (a plain ``async def`` task);
    anything else (sync, atomic, unknown) runs on a thread through :func:`execute`."""
    task = registry.find(job.task_path, job.task_proof)
    return task is not None and _is_async(task.func) and not getattr(task, "atomic", False)


async def aexecute(
    job: ClaimedJob, backend: JobsBackend, worker_id: str, control: JobControl | None = None
) -> Outcome:
    """Run an ``async def`` job once on the running event loop; never raises.

    At the soft time limit the coroutine is cancelled (it sees ``CancelledError`` and
    may clean up); the attempt is then recorded as ``SoftTimeLimitExceeded``.
    """
    steer = control or _NO_CONTROL
    if not instrumentation.run_wrappers:
        return _held_progress(await _aexecute(job, backend, worker_id, None, steer), steer)
    trace = instrumentation.JobRun(job)
    with instrumentation.running(trace):
        outcome = await _aexecute(job, backend, worker_id, trace, steer)
        _describe(trace, outcome)
    return _held_progress(outcome, steer)


async def _aexecute(
    job: ClaimedJob,
    backend: JobsBackend,
    worker_id: str,
    trace: instrumentation.JobRun | None,
    control: Any,
) -> Outcome:
    run = _start(job, backend, worker_id, trace, control)
    if isinstance(run, Outcome):
        return run
    task = run.task
    try:
        inputs = (
            await sync_to_async(step_inputs)(job, backend.database)
            if job.receives and job.parents
            else []
        )
    except BaseException as exc:
        return _raised(run, exc)
    args: tuple = (
        (JobContext(task_result=run.result, control=control), *inputs, *job.args)
        if task.takes_context
        else (*inputs, *job.args)
    )
    try:
        # Each job runs in its own asyncio task, so in its own copy of the context.
        with running(control):
            if run.policy.soft_timeout:
                limit = asyncio.timeout(run.policy.soft_timeout)
                try:
                    async with limit:
                        value = await task.func(*args, **job.kwargs)
                except TimeoutError:
                    if not limit.expired():
                        raise  # the task's own TimeoutError
                    raise SoftTimeLimitExceeded("the job ran past its soft time limit") from None
            else:
                value = await task.func(*args, **job.kwargs)
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise
    except BaseException as exc:
        return _raised(run, exc)
    return _returned(run, value)


def _call(
    task: Task, job: ClaimedJob, result: TaskResult | None, control: Any, inputs: list
) -> Any:
    func = task.func
    if task.takes_context:
        args: tuple = (JobContext(task_result=result, control=control), *inputs, *job.args)
    elif inputs:
        args = (*inputs, *job.args)
    else:
        args = tuple(job.args)
    if _is_async(func):
        return async_to_sync(func)(*args, **job.kwargs)
    return func(*args, **job.kwargs)


_async_functions: dict[Any, bool] = {}


def _is_async(func: Any) -> bool:
    """``iscoroutinefunction``, remembered per function: asking costs more than a no-op job."""
    known = _async_functions.get(func)
    if known is None:
        known = _async_functions[func] = iscoroutinefunction(func)
    return known


def _run_atomic(
    task: Task,
    job: ClaimedJob,
    result: TaskResult | None,
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
            held = control.take_held()
            if held is not None:
                # Written with the success: the worker's own write would come too late.
                protocol.record_progress(cursor, [protocol.Progressed(job.id, job.attempts, held)])
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


def _cancel_record(
    job: ClaimedJob, worker_id: str, exc: BaseException | None, how: str
) -> dict[str, Any]:
    record = error_record(exc, attempt=job.attempts, worker_id=worker_id)
    record["exception_class_path"] = class_path(JobCancelled)
    record["message"] = how
    return record


def stopped_by_cancel(job: ClaimedJob, worker_id: str, duration: float, how: str) -> Outcome:
    """The outcome of an attempt the worker stopped because it was cancelled."""
    logger.info(
        "Job %s %s cancelled: %s", job.id, job.task_path, how,
        extra={"action": "job_cancelled", "job_id": job.id},
    )  # fmt: skip
    error = _cancel_record(job, worker_id, None, how)
    return Outcome(job, OutcomeKind.CANCELLED, duration, error=error)


def _cancelled(run: _Run, duration: float, exc: BaseException | None) -> Outcome:
    """The attempt ended after a cancel request: CANCELLED, whatever it returned or raised."""
    job = run.job
    if exc is None or isinstance(exc, _Cancelled):
        how = "it stopped after a cancel request"
    else:
        how = f"it stopped after a cancel request, raising {class_path(type(exc))}: {exc}"
    logger.info(
        "Job %s %s cancelled: %s", job.id, job.task_path, how,
        extra={"action": "job_cancelled", "job_id": job.id},
    )  # fmt: skip
    error = _cancel_record(job, run.worker_id, None if isinstance(exc, _Cancelled) else exc, how)
    return Outcome(job, OutcomeKind.CANCELLED, duration, error=error, task_result=run.result)


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
