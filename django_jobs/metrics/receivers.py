"""Count job events in this process: receivers of Django's task signals and of ours.

Counters are labelled by backend alias, queue and task path (a bounded set: the tasks
declared in code). Run time and queue wait come from one run wrapper (around each
attempt, where the job runs), which sees the claimed row: queue wait is measured on the
database clock, from when the job became due (``available_at``: enqueue, ``run_after``,
or the end of a retry's backoff) to its claim (``last_attempted_at``).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .. import instrumentation, signals
from ..compat import TaskResultStatus, task_enqueued, task_finished, task_started
from ..states import JobState
from ..tally import TALLY

ENQUEUED = "jobs_enqueued"
STARTED = "jobs_started"
SUCCEEDED = "jobs_succeeded"
FAILED = "jobs_failed"
RETRIED = "jobs_retried"
SNOOZED = "jobs_snoozed"
RESCUED = "jobs_rescued"
CANCELLED = "jobs_cancelled"
WORKERS_LOST = "workers_lost"
MAINTENANCE_ERRORS = "maintenance_errors"
RUN_SECONDS = "job_run_seconds"
WAIT_SECONDS = "job_queue_wait_seconds"

#: Counter name -> what it counts (the metric's HELP text).
COUNTERS = {
    ENQUEUED: "Jobs enqueued by this process.",
    STARTED: "Attempts started (the task function was called).",
    SUCCEEDED: "Jobs that ended SUCCESSFUL.",
    FAILED: "Jobs that ended FAILED (no attempt left, not retryable, killed or crashed on "
    "the last attempt); not those a rescue failed.",
    RETRIED: "Failed attempts that will be retried.",
    SNOOZED: "Attempts that asked to run later (Snooze).",
    RESCUED: "RUNNING jobs of lost workers moved back to READY or to FAILED.",
    CANCELLED: "Jobs that ended CANCELLED: before they started (counted where cancelled), "
    "or while running (counted by the worker).",
}
HISTOGRAMS = {
    RUN_SECONDS: "Seconds the task function ran, per attempt.",
    WAIT_SECONDS: "Seconds from when a job became due to its claim (database clock).",
}
JOB_LABELS = ("backend", "queue", "task")


def _labels(result: Any) -> tuple[str, str, str]:
    return (result.backend, result.task.queue_name, result.task.module_path)


def on_enqueued(sender: Any, task_result: Any, **kwargs: Any) -> None:
    TALLY.add(ENQUEUED, _labels(task_result))


def on_started(sender: Any, task_result: Any, **kwargs: Any) -> None:
    TALLY.add(STARTED, _labels(task_result))


def on_finished(sender: Any, task_result: Any, state: str | None = None, **kwargs: Any) -> None:
    # Only final states come here; retries and snoozes are counted by our own signals.
    # A job that ended CANCELLED has status FAILED: our worker sends its exact state too
    # (from a child, or from the supervisor for one killed after its cancel grace).
    if state == JobState.CANCELLED:
        TALLY.add(CANCELLED, _labels(task_result))
    elif task_result.status == TaskResultStatus.SUCCESSFUL:
        TALLY.add(SUCCEEDED, _labels(task_result))
    elif task_result.status == TaskResultStatus.FAILED:
        TALLY.add(FAILED, _labels(task_result))


def on_retrying(sender: Any, task_result: Any, **kwargs: Any) -> None:
    TALLY.add(RETRIED, _labels(task_result))


def on_snoozed(sender: Any, task_result: Any, **kwargs: Any) -> None:
    TALLY.add(SNOOZED, _labels(task_result))


def on_rescued(sender: Any, *, task_path: str, queue_name: str, backend: str, **kw: Any) -> None:
    TALLY.add(RESCUED, (backend, queue_name, task_path))


def on_cancelled(sender: Any, *, task_path: str, queue_name: str, backend: str, **kw: Any) -> None:
    TALLY.add(CANCELLED, (backend, queue_name, task_path))


def on_worker_lost(sender: Any, *, backend: str, **kwargs: Any) -> None:
    TALLY.add(WORKERS_LOST, (backend,))


def on_maintenance_failed(sender: Any, *, service: str, **kwargs: Any) -> None:
    TALLY.add(MAINTENANCE_ERRORS, (service,))


@contextmanager
def time_run(run: instrumentation.JobRun) -> Iterator[None]:
    """Observe the attempt's queue wait now and its run time when it is over."""
    job = run.job
    labels = (job.backend, job.queue_name, job.task_path)
    wait = (job.last_attempted_at - job.available_at).total_seconds()
    TALLY.observe(WAIT_SECONDS, labels, max(wait, 0.0))
    yield
    if run.outcome is not None:
        TALLY.observe(RUN_SECONDS, labels, run.duration)


_RECEIVERS = (
    (task_enqueued, on_enqueued),
    (task_started, on_started),
    (task_finished, on_finished),
    (signals.job_retrying, on_retrying),
    (signals.job_snoozed, on_snoozed),
    (signals.job_rescued, on_rescued),
    (signals.job_cancelled, on_cancelled),
    (signals.worker_lost, on_worker_lost),
    (signals.maintenance_failed, on_maintenance_failed),
)


def enable() -> None:
    """Count job events in this process from now on (idempotent)."""
    for signal, receiver in _RECEIVERS:
        signal.connect(receiver, dispatch_uid=f"django_jobs.metrics.{receiver.__name__}")
    instrumentation.add_run_wrapper(time_run)
    TALLY.enabled = True


def disable() -> None:
    """Stop counting (tests)."""
    for signal, receiver in _RECEIVERS:
        signal.disconnect(dispatch_uid=f"django_jobs.metrics.{receiver.__name__}")
    if time_run in instrumentation.run_wrappers:
        instrumentation.run_wrappers.remove(time_run)
    TALLY.enabled = False
