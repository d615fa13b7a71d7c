"""``WorkflowResult``: a workflow as its steps' rows say it is, and ``get_workflow()``.

The status is read from the steps, never stored step by step (finishing a step does
not write the workflow row): FAILED once a step failed for good, CANCELLED once a step
was cancelled, SUCCESSFUL when every step succeeded, RUNNING once any step started,
READY before. The return value is the last step's, or the list of a final group's
values in order.
"""

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.db import models

from .. import control
from ..backend import RESULT_FIELDS, get_backend
from ..compat import DEFAULT_TASK_BACKEND_ALIAS, TaskResult, TaskResultDoesNotExist
from ..context import Progress
from ..models import Job, Workflow, parse_job_id
from ..protocol.workflows import NewWorkflow
from ..states import JobState


class WorkflowStatus(models.TextChoices):
    READY = "READY", "Ready"
    RUNNING = "RUNNING", "Running"
    SUCCESSFUL = "SUCCESSFUL", "Successful"
    FAILED = "FAILED", "Failed"
    CANCELLED = "CANCELLED", "Cancelled"


#: States in which a step may still run.
UNFINISHED = (JobState.BLOCKED, JobState.READY, JobState.RUNNING)


def workflow_status(
    counts: Counter, *, failed_step_id: Any = None, cancelled_by: str = ""
) -> WorkflowStatus:
    """The workflow's status from the number of its steps in each state."""
    if counts[JobState.FAILED] or failed_step_id is not None:
        return WorkflowStatus.FAILED
    if counts[JobState.CANCELLED] or cancelled_by:
        return WorkflowStatus.CANCELLED
    if counts and counts[JobState.SUCCESSFUL] == sum(counts.values()):
        return WorkflowStatus.SUCCESSFUL
    if counts[JobState.RUNNING] or counts[JobState.SUCCESSFUL]:
        return WorkflowStatus.RUNNING
    return WorkflowStatus.READY


@dataclass
class WorkflowResult:
    """A workflow's steps and status; ``refresh()`` reads them again."""

    id: str
    backend: str
    description: str
    status: WorkflowStatus
    #: The TaskResult of every step, in the order the steps were written.
    results: list[TaskResult]
    #: How many steps are in each exact state (BLOCKED, READY, RUNNING, ...).
    counts: Counter = field(default_factory=Counter)
    created_at: datetime | None = None
    #: The first step that failed for good, who cancelled the workflow, and the job
    #: its on_error task runs as (ids as strings, or None / "").
    failed_step_id: str | None = None
    cancelled_by: str = ""
    on_error_id: str | None = None
    #: Per step id: the progress it last reported while running.
    progress_of: dict[str, Progress] = field(default_factory=dict, repr=False)
    _outputs: list[int] = field(default_factory=list, repr=False)
    _returns_list: bool = field(default=False, repr=False)

    @classmethod
    def enqueued(
        cls,
        workflow: NewWorkflow,
        results: list[TaskResult],
        created_at: datetime,
        *,
        blocked: int,
    ) -> "WorkflowResult":
        """The result of a workflow just written (no database read)."""
        counts = Counter({JobState.READY: len(results) - blocked, JobState.BLOCKED: blocked})
        return cls(
            id=str(workflow.id),
            backend=workflow.backend,
            description=workflow.description,
            status=WorkflowStatus.READY,
            results=results,
            counts=counts,
            created_at=created_at,
            _outputs=workflow.outputs,
            _returns_list=workflow.returns_list,
        )

    @property
    def is_finished(self) -> bool:
        """No step will run any more (some may still be running after a failure)."""
        return not any(self.counts[state] for state in UNFINISHED)

    @property
    def return_value(self) -> Any:
        """The last step's return value, or the list of a final group's; once SUCCESSFUL."""
        if self.status == WorkflowStatus.SUCCESSFUL:
            by_id = {int(r.id): r for r in self.results}
            values = [by_id[i].return_value for i in self._outputs]
            return values if self._returns_list else values[0]
        if self.status in (WorkflowStatus.FAILED, WorkflowStatus.CANCELLED):
            raise ValueError(f"Workflow {self.id} is {self.status.label.lower()}")
        raise ValueError(f"Workflow {self.id} has not finished yet")

    @property
    def progress(self) -> float:
        """How far along it is, from 0 to 1: finished steps, plus the running ones' share."""
        total = len(self.results)
        if not total:
            return 0.0
        done = sum(
            self.counts[s] for s in (JobState.SUCCESSFUL, JobState.FAILED, JobState.CANCELLED)
        )
        running = sum((p.fraction or 0.0) for p in self.progress_of.values())
        return min(1.0, (done + running) / total)

    def refresh(self) -> None:
        """Read the workflow and its steps again."""
        fresh = get_workflow(self.id, backend=self.backend)
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))

    async def arefresh(self) -> None:
        await sync_to_async(self.refresh, thread_sensitive=True)()

    def cancel(self, *, by: str = control.DEFAULT_CANCELLER) -> dict[int, str]:
        """Cancel every unfinished step (running ones are asked to stop); return what moved."""
        return control.cancel_workflows(
            [int(self.id)], by=by, using=get_backend(self.backend).database
        )

    def retry_failed(self) -> list[int]:
        """Re-queue the failed and cancelled steps; each waits again for its parents."""
        return control.retry_workflows([int(self.id)], using=get_backend(self.backend).database)


def get_workflow(workflow_id: str, *, backend: str = DEFAULT_TASK_BACKEND_ALIAS) -> WorkflowResult:
    """The workflow ``workflow_id``; raise TaskResultDoesNotExist if there is none."""
    jobs_backend = get_backend(backend)
    database = jobs_backend.database
    pk = parse_job_id(workflow_id)
    workflow = (
        Workflow.objects.using(database).filter(pk=pk, backend=jobs_backend.alias).first()
        if pk is not None
        else None
    )
    if workflow is None:
        raise TaskResultDoesNotExist(f"No workflow {workflow_id!r}.")
    rows = list(
        Job.objects.using(database)
        .filter(workflow_id=workflow.pk)
        .order_by("id")
        .values(*RESULT_FIELDS, "progress")
    )
    if not rows and workflow.step_count:
        raise TaskResultDoesNotExist(
            f"Workflow {workflow_id}'s steps were deleted (finished jobs are pruned after "
            "OPTIONS['RETENTION'])."
        )
    counts = Counter(row["state"] for row in rows)
    progress_of = {}
    for row in rows:
        progress = Progress.from_json(row["progress"])
        if row["state"] == JobState.RUNNING and progress and progress.attempt == row["attempts"]:
            progress_of[str(row["id"])] = progress
    return WorkflowResult(
        id=str(workflow.pk),
        backend=workflow.backend,
        description=workflow.description,
        status=workflow_status(
            counts, failed_step_id=workflow.failed_step_id, cancelled_by=workflow.cancelled_by
        ),
        results=[jobs_backend.result_from_row(row) for row in rows],
        counts=counts,
        created_at=workflow.created_at,
        failed_step_id=None if workflow.failed_step_id is None else str(workflow.failed_step_id),
        cancelled_by=workflow.cancelled_by,
        on_error_id=None if workflow.on_error_job_id is None else str(workflow.on_error_job_id),
        progress_of=progress_of,
        _outputs=list(workflow.outputs),
        _returns_list=workflow.returns_list,
    )
