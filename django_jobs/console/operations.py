"""Operator moves with a report: what moved, and why the rest did not.

The admin's actions and the ``jobs`` command both call these. The moves themselves are
the queue protocol's (``protocol.retry_jobs`` and friends): one conditional statement
each, so a job that changed state since the operator looked at it is skipped, never
forced. The reasons for skipping are read afterwards, from the rows as they are now.
"""

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import connections, transaction

from .. import signals
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
    if state == JobState.RUNNING:
        return "already running"
    if state in FINISHED_STATES:
        return "already finished"
    return f"in state {state}"


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
    """Re-queue FAILED or CANCELLED jobs to run now."""

    return _operate(ids, protocol.retry_jobs, "re-queued", _retry_reason, using)


def cancel(ids: Iterable[int], using: str | None = None) -> Report:
    """Cancel jobs that have not started (READY or BLOCKED); send job_cancelled for each."""

    def move(cur: Any, ids: list[int]) -> list[int]:
        cancelled = protocol.cancel(cur, ids)
        # Once committed (and never for a rolled-back cancel, in the caller's atomic).
        transaction.on_commit(lambda: _announce(cancelled), using=cur.db.alias)
        return [job.id for job in cancelled]

    return _operate(ids, move, "cancelled", _cancel_reason, using)


def _announce(cancelled: list[protocol.CancelledJob]) -> None:
    for job in cancelled:
        signals.send(
            signals.job_cancelled, Job, job_id=job.id, task_path=job.task_path,
            queue_name=job.queue_name, backend=job.backend,
        )  # fmt: skip


def run_now(ids: Iterable[int], using: str | None = None) -> Report:
    """Make delayed READY jobs due now."""
    return _operate(ids, protocol.run_jobs_now, "set to run now", _run_now_reason, using)


def delete(ids: Iterable[int], using: str | None = None) -> Report:
    """Delete jobs that are not running (a running job's worker still owns its row)."""
    return _operate(ids, protocol.delete_jobs, "deleted", lambda state: "still running", using)


def prune(older_than: float, states: Iterable[str] | None = None, using: str | None = None) -> int:
    """Delete finished jobs older than ``older_than`` seconds, in bounded batches."""
    using = using or jobs_database()
    with connections[using].cursor() as cur:
        states = [str(s) for s in (states or FINISHED)]
        return protocol.prune(cur, older_than=older_than, states=states)
