"""Operator moves with a report: what moved, and why the rest did not.

The admin's actions and the ``jobs`` command both call these. The moves themselves are
the queue protocol's (``protocol.retry_jobs`` and friends): one conditional statement
each, so a job that changed state since the operator looked at it is skipped, never
forced. The reasons for skipping are read afterwards, from the rows as they are now.
Workflow steps move with their workflow where moving one alone would strand the
others (``control.py``): a retry re-queues the failed part of the workflow.
"""

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import connections, transaction

from .. import control
from ..backend import jobs_database
from ..models import Job
from ..protocol import operator as protocol
from ..states import FINISHED, FINISHED_STATES, JobState

#: Most ids one operation touches; "select all" on a huge changelist is cut to this.
MAX_IDS = 10_000


@dataclass
class Report:
    """The outcome of one operation over a set of job ids."""

    verb: str
    moved: list[int] = field(default_factory=list)
    #: Skipped id -> reason ("still running", "not found", ...).
    skipped: dict[int, str] = field(default_factory=dict)
    #: Ids past the first MAX_IDS, not looked at (for "select all" in the admin, one
    #: stands for "and more").
    dropped: list[int] = field(default_factory=list)
    #: Running jobs asked to stop (cancel): they end CANCELLED when their worker stops them.
    stopping: list[int] = field(default_factory=list)
    #: Other workflow steps moved with the ones asked for (a retry re-queues the failed
    #: part of their workflows).
    also: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every id was looked at and moved."""
        return not self.skipped and not self.dropped

    @property
    def truncated(self) -> bool:
        return bool(self.dropped)

    def summary(self) -> str:
        """``"3 jobs re-queued, 1 skipped: still running"``."""
        n = len(self.moved)
        text = f"{n} job{'s' if n != 1 else ''} {self.verb}"
        if self.stopping:
            k = len(self.stopping)
            text += f", {k} running job{'s' if k != 1 else ''} asked to stop"
        if self.also:
            k = len(self.also)
            text += f" (and {k} other step{'s' if k != 1 else ''} of their workflows)"
        if self.skipped:
            reasons = Counter(self.skipped.values())
            detail = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
            if len(reasons) == 1:
                text += f", {len(self.skipped)} skipped: {next(iter(reasons))}"
            else:
                text += f", {len(self.skipped)} skipped ({detail})"
        if self.truncated:
            text += f" (only the first {MAX_IDS} selected jobs were considered)"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.verb,
            "moved": self.moved,
            "stopping": self.stopping,
            "also": self.also,
            "skipped": {str(k): v for k, v in self.skipped.items()},
            # Ids not looked at because one operation handles at most MAX_IDS.
            "truncated": self.dropped,
            "summary": self.summary(),
        }


def _retry_reason(state: str) -> str:
    return {
        JobState.RUNNING: "still running",
        JobState.READY: "already queued",
        JobState.BLOCKED: "waiting for other jobs",
        JobState.SUCCESSFUL: "already successful",
    }.get(state, f"in state {state}")


def _cancel_reason(state: str) -> str:
    if state in FINISHED_STATES:
        return "already finished"
    return f"in state {state}"


def _delete_reason(state: str) -> str:
    if state == JobState.RUNNING:
        return "still running"
    return "a workflow step its workflow still needs (cancel the workflow first)"


def _run_now_reason(state: str) -> str:
    if state == JobState.READY:
        return "already due"
    if state == JobState.RUNNING:
        return "already running"
    if state in FINISHED_STATES:
        return "already finished"
    return "not waiting to run"


def _operate(
    ids: Iterable[int],
    move: Callable[[Any, list[int]], list[int]],
    verb: str,
    reason: Callable[[str], str],
    using: str | None,
) -> Report:
    ids = list(dict.fromkeys(int(i) for i in ids))
    report = Report(verb, dropped=ids[MAX_IDS:])
    ids = ids[:MAX_IDS]
    if not ids:
        return report
    using = using or jobs_database()
    with transaction.atomic(using=using), connections[using].cursor() as cur:
        report.moved = sorted(move(cur, ids))
    left = sorted(set(ids) - set(report.moved))
    if left:
        states = dict(Job.objects.using(using).filter(pk__in=left).values_list("pk", "state"))
        for job_id in left:
            state = states.get(job_id)
            report.skipped[job_id] = "not found" if state is None else reason(state)
    return report


def retry(ids: Iterable[int], using: str | None = None) -> Report:
    """Re-queue FAILED or CANCELLED jobs to run now.

    A workflow step is re-queued with the failed part of its workflow: each step waits
    again for its parents, so none runs without the results it needs.
    """
    using = using or jobs_database()
    report = _operate(ids, protocol.retry_jobs, "re-queued", _retry_reason, using)
    steps = dict(
        Job.objects.using(using)
        .filter(
            pk__in=list(report.skipped),
            workflow__isnull=False,
            state__in=[JobState.FAILED, JobState.CANCELLED],
        )
        .values_list("pk", "workflow_id")
    )
    if steps:
        moved = set(control.retry_workflows(sorted(set(steps.values())), using=using))
        for job_id in steps:
            if job_id in moved:
                del report.skipped[job_id]
                report.moved.append(job_id)
        report.moved.sort()
        report.also = sorted(moved - set(steps))
    return report


def cancel(ids: Iterable[int], using: str | None = None, *, by: str = "an operator") -> Report:
    """Cancel jobs, saying who did: waiting ones at once, running ones are asked to stop."""
    outcome: dict[int, str] = {}

    def move(cur: Any, job_ids: list[int]) -> list[int]:
        outcome.update(control.cancel_in(cur, job_ids, by=by))
        return list(outcome)

    report = _operate(ids, move, "cancelled", _cancel_reason, using)
    report.stopping = sorted(i for i, state in outcome.items() if state == JobState.RUNNING)
    report.moved = sorted(i for i, state in outcome.items() if state == JobState.CANCELLED)
    return report


def cancel_workflows(
    workflow_ids: Iterable[int], using: str | None = None, *, by: str = "an operator"
) -> Report:
    """Cancel every unfinished step of the workflows (running ones are asked to stop)."""
    using = using or jobs_database()
    moved = control.cancel_workflows(list(workflow_ids), by=by, using=using)
    return Report(
        "cancelled",
        moved=sorted(i for i, state in moved.items() if state == JobState.CANCELLED),
        stopping=sorted(i for i, state in moved.items() if state == JobState.RUNNING),
    )


def retry_workflows(workflow_ids: Iterable[int], using: str | None = None) -> Report:
    """Re-queue the failed and cancelled steps of the workflows."""
    using = using or jobs_database()
    return Report(
        "re-queued", moved=sorted(control.retry_workflows(list(workflow_ids), using=using))
    )


def run_now(ids: Iterable[int], using: str | None = None) -> Report:
    """Make delayed READY jobs due now."""
    return _operate(ids, protocol.run_jobs_now, "set to run now", _run_now_reason, using)


def delete(ids: Iterable[int], using: str | None = None) -> Report:
    """Delete jobs that are not running (a running job's worker still owns its row)."""
    return _operate(ids, protocol.delete_jobs, "deleted", _delete_reason, using)


def prune(older_than: float, states: Iterable[str] | None = None, using: str | None = None) -> int:
    """Delete finished jobs older than ``older_than`` seconds, in bounded batches."""
    using = using or jobs_database()
    with connections[using].cursor() as cur:
        states = [str(s) for s in (states or FINISHED)]
        return protocol.prune(cur, older_than=older_than, states=states)
