"""What code outside a job may do to it: look at it (``job_info``), cancel it, and cancel or
retry a workflow.

Each move is one protocol call (``protocol/operator.py``, ``protocol/workflows.py``) in a
transaction on the jobs database, or a savepoint in the caller's: the NOTIFY that tells
a worker to stop a running job goes out when that transaction commits. The admin and
the ``jobs`` command reach the same calls through ``console/operations.py``.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connections, transaction

from . import signals
from .backend import get_backend
from .compat import DEFAULT_TASK_BACKEND_ALIAS, TaskResultDoesNotExist, TaskResultStatus
from .context import Progress
from .models import Job, parse_job_id
from .policy import OPERATOR_RETRY_ATTEMPTS
from .protocol import operator
from .protocol import workflows as workflow_protocol
from .states import FINISHED_STATES, JobState, to_task_status

#: Who cancelled, when the caller does not say.
DEFAULT_CANCELLER = "django_jobs.cancel()"


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A job as stored, with what ``TaskResult`` has no room for."""

    id: str
    task_path: str
    #: The exact state (BLOCKED, CANCELLED...), and the django.tasks status it maps to.
    state: str
    status: TaskResultStatus
    queue_name: str
    priority: int
    attempts: int
    max_attempts: int
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    #: The last progress the job reported (of its current attempt), or None.
    progress: Progress | None
    cancel_requested_at: datetime | None
    cancelled_by: str
    #: The workflow the job is a step of, or None.
    workflow_id: str | None


def job_info(result_id: str, *, backend: str = DEFAULT_TASK_BACKEND_ALIAS) -> JobInfo:
    """The job ``result_id`` of ``backend``; raise TaskResultDoesNotExist if there is none."""
    jobs_backend = get_backend(backend)
    job_id = parse_job_id(result_id)
    row = (
        Job.objects.using(jobs_backend.database)
        .filter(pk=job_id, backend=jobs_backend.alias)
        .values(*(f.name for f in JobInfo.__dataclass_fields__.values() if f.name != "status"))
        .first()
        if job_id is not None
        else None
    )
    if row is None:
        raise TaskResultDoesNotExist(result_id)
    progress = Progress.from_json(row["progress"])
    if progress is not None and progress.attempt not in (None, row["attempts"]):
        progress = None  # reported by an earlier attempt
    return JobInfo(
        **{
            **row,
            "id": str(row["id"]),
            "status": to_task_status(row["state"]),
            "progress": progress,
            "workflow_id": None if row["workflow_id"] is None else str(row["workflow_id"]),
        }
    )


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What ``cancel()`` did: ``outcome`` is one of the class constants."""

    CANCELLED = "cancelled"
    #: It was running: asked to stop; it ends CANCELLED when its worker stops it.
    STOPPING = "stopping"
    FINISHED = "already finished"
    NOT_FOUND = "not found"

    id: str
    outcome: str
    #: The job's state after the call (None when not found).
    state: str | None

    def __str__(self) -> str:
        return {
            self.CANCELLED: f"Job {self.id} cancelled.",
            self.STOPPING: f"Job {self.id} is running: its worker was asked to stop it.",
            self.FINISHED: f"Job {self.id} had already finished ({self.state}); nothing changed.",
            self.NOT_FOUND: f"No job {self.id!r}; nothing changed.",
        }[self.outcome]


def cancel(
    result_id: str,
    *,
    by: str = DEFAULT_CANCELLER,
    backend: str = DEFAULT_TASK_BACKEND_ALIAS,
) -> Cancellation:
    """Cancel the job ``result_id``, saying who did (``by``).

    A job that has not started ends CANCELLED at once (with the workflow steps waiting
    after it); a running one is asked to stop (see ``Cancellation.STOPPING``). A job
    that does not exist or has finished is left alone, and the answer says so.
    """
    jobs_backend = get_backend(backend)
    job_id = parse_job_id(result_id)
    if job_id is None:
        return Cancellation(str(result_id), Cancellation.NOT_FOUND, None)
    moved = cancel_jobs([job_id], by=by, using=jobs_backend.database)
    if job_id in moved:
        outcome = Cancellation.CANCELLED if moved[job_id] == JobState.CANCELLED else None
        return Cancellation(str(job_id), outcome or Cancellation.STOPPING, moved[job_id])
    state = (
        Job.objects.using(jobs_backend.database)
        .filter(pk=job_id, backend=jobs_backend.alias)
        .values_list("state", flat=True)
        .first()
    )
    if state is None:
        return Cancellation(str(job_id), Cancellation.NOT_FOUND, None)
    outcome = Cancellation.FINISHED if state in FINISHED_STATES else Cancellation.NOT_FOUND
    return Cancellation(str(job_id), outcome, state)


def _in_transaction(using: str, work: Any) -> Any:
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        return work(cursor)


def cancel_jobs(ids: Iterable[int], *, by: str, using: str) -> dict[int, str]:
    """Cancel jobs (see ``protocol.operator.cancel``); the state of each one moved."""
    return _in_transaction(using, lambda cur: cancel_in(cur, ids, by=by))


def cancel_in(cursor: Any, ids: Iterable[int], *, by: str) -> dict[int, str]:
    """Cancel jobs in the cursor's transaction; the state of each one reached, by id.

    ``job_cancelled`` is sent for each job cancelled at once, when the transaction
    commits (never for a cancel rolled back). A running job asked to stop reports its
    end as any attempt does, from its worker (``task_finished``, CANCELLED).
    """
    reached = operator.cancel(cursor, ids, by=by)
    _announce_on_commit(cursor, reached)
    return {job.id: job.state for job in reached}


def _announce_on_commit(cursor: Any, reached: list[operator.CancelledJob]) -> None:
    cancelled = [job for job in reached if job.state == JobState.CANCELLED]
    if not cancelled or not signals.job_cancelled.has_listeners(Job):
        return

    def announce() -> None:
        for job in cancelled:
            signals.send(
                signals.job_cancelled, Job, job_id=job.id, task_path=job.task_path,
                queue_name=job.queue_name, backend=job.backend,
            )  # fmt: skip

    transaction.on_commit(announce, using=cursor.db.alias)


def cancel_workflows(workflow_ids: Sequence[int], *, by: str, using: str) -> dict[int, str]:
    """Cancel every unfinished step of the workflows; the state of each step moved."""

    def work(cursor: Any) -> dict[int, str]:
        # Steps first, then the workflow rows: the order a failing step takes them in.
        reached = operator.cancel_steps(cursor, workflow_ids, by=by)
        workflow_protocol.mark_cancelled(cursor, workflow_ids, by=by)
        _announce_on_commit(cursor, reached)
        return {job.id: job.state for job in reached}

    return _in_transaction(using, work)


def retry_workflows(
    workflow_ids: Sequence[int], *, using: str, grant: int = OPERATOR_RETRY_ATTEMPTS
) -> list[int]:
    """Re-queue the failed and cancelled steps of the workflows; return the step ids moved."""
    return _in_transaction(
        using, lambda cur: workflow_protocol.retry_steps(cur, workflow_ids, grant=grant)
    )
