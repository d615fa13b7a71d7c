"""What happened to an attempt, and recording it: buffered, batched, fenced, then signalled.

The pool puts an :class:`Outcome` on the supervisor's inbox for every job it ran (or
could not run). The supervisor hands them to an :class:`OutcomeRecorder`, which keeps
them for a few milliseconds and records them with one fenced statement per kind
(success, failure, snooze, release). Then it signals each outcome the database
accepted: ``task_finished`` for a job that reached a final state, ``job_retrying`` or
``job_snoozed`` for a job going back to the queue (the metrics count from these, in
whichever process records), and counts them. This is what lets one process record
thousands of short jobs per second.
"""

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import psycopg
from django.utils import timezone

from .. import policy, registry, signals
from ..backend import JobsBackend
from ..codec import encode_json, error_record, storable_text
from ..compat import TaskError, TaskResult, TaskResultStatus, signal_wanted, task_finished
from ..protocol import jobs as protocol
from ..protocol.jobs import ClaimedJob
from ..states import FINISHED_STATES, JobState, to_task_status
from .dbconn import QueueConnection

logger = logging.getLogger(__name__)


class OutcomeKind(StrEnum):
    SUCCEEDED = "succeeded"
    #: Succeeded, and already recorded by the task's own transaction (atomic tasks).
    RECORDED = "recorded"
    FAILED = "failed"
    SNOOZED = "snoozed"
    #: Never started, or interrupted through no fault of its own: back to READY, no
    #: attempt spent.
    RELEASED = "released"
    #: Superseded by a newer attempt (found out by an atomic task): nothing to record.
    LOST = "lost"
    #: Stopped because someone cancelled the job (it returned or raised after the
    #: request, or was killed when its grace ran out): CANCELLED, never retried.
    CANCELLED = "cancelled"


@dataclass(slots=True)
class Outcome:
    job: ClaimedJob
    kind: OutcomeKind
    duration: float = 0.0
    #: JSON text of the return value when the attempt succeeded.
    return_json: str | None = None
    #: The error record (see models.Job.errors) when it failed.
    error: dict[str, Any] | None = None
    #: Seconds until the next attempt (failed: None means final), or the snooze.
    delay: float | None = None
    #: The TaskResult sent with task_started, updated and sent with task_finished.
    task_result: TaskResult | None = None
    #: The last progress the job reported that is not written yet (JSON): written just
    #: before the outcome, while the job is still RUNNING.
    progress_json: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.kind in (OutcomeKind.SUCCEEDED, OutcomeKind.RECORDED)


@dataclass
class WorkerStats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    snoozed: int = 0
    released: int = 0
    lost: int = 0
    cancelled: int = 0
    started_at: float = field(default_factory=time.monotonic)


#: The counts of WorkerStats, as worker_stopped reports them.
STAT_NAMES = (
    "claimed",
    "succeeded",
    "failed",
    "retried",
    "snoozed",
    "released",
    "lost",
    "cancelled",
)


#: What the database took of one batch: finished_at per success, (state, finished_at)
#: per failure, the new state per snooze, the ids released, and finished_at per
#: cancelled attempt. A job in none of them was refused.
Recorded = tuple[
    dict[int, Any], dict[int, tuple[str, Any]], dict[int, str], set[int], dict[int, Any]
]


def record(cur: psycopg.Cursor, outcomes: list[Outcome]) -> Recorded:
    """Record a batch: one fenced statement per kind of outcome."""
    by_kind: dict[OutcomeKind, list[Outcome]] = {}
    progressed = []
    for outcome in outcomes:
        by_kind.setdefault(outcome.kind, []).append(outcome)
        if outcome.progress_json is not None:
            progressed.append(
                protocol.Progressed(outcome.job.id, outcome.job.attempts, outcome.progress_json)
            )
    if progressed:
        protocol.record_progress(cur, progressed)
    done = protocol.complete(
        cur,
        [
            protocol.Success(o.job.id, o.job.attempts, o.return_json, o.job.dependents is not None)
            for o in by_kind.get(OutcomeKind.SUCCEEDED, ())
        ],
    )
    failed = protocol.fail(
        cur,
        [
            protocol.Failure(o.job.id, o.job.attempts, encode_json(o.error, "error"), o.delay)
            for o in by_kind.get(OutcomeKind.FAILED, ())
        ],
    )
    snoozed = protocol.snooze(
        cur,
        [
            protocol.Snoozed(
                o.job.id,
                o.job.attempts,
                o.delay or 0.0,
                policy.max_attempts_after_snooze(o.job.max_attempts),
            )
            for o in by_kind.get(OutcomeKind.SNOOZED, ())
        ],
    )
    released = protocol.release(cur, [o.job for o in by_kind.get(OutcomeKind.RELEASED, ())])
    cancelled = protocol.cancelled(
        cur,
        [
            protocol.Cancelled(o.job.id, o.job.attempts, encode_json(o.error, "error"))
            for o in by_kind.get(OutcomeKind.CANCELLED, ())
        ],
    )
    return done, failed, snoozed, released, cancelled


def send_finished(backend: JobsBackend, outcome: Outcome, state: str, finished_at: Any) -> None:
    """Signal a recorded outcome, with the TaskResult as stored: ``task_finished`` when
    the job is final (SUCCESSFUL, FAILED, or CANCELLED while it ran), ``job_retrying`` or
    ``job_snoozed`` when it goes back to the queue instead.

    Django's receivers read ``task_finished`` as "this task is done" (its own logging
    says "finished"), so it is never sent for a job that will run again: ``READY`` is
    not a finished status.

    The TaskResult is built only if one of them has a receiver that does something (see
    compat.signal_wanted): a worker whose signals nobody listens to pays nothing here.
    """
    status = to_task_status(state)
    level = logging.ERROR if status == TaskResultStatus.FAILED else logging.INFO
    finished_wanted = state in FINISHED_STATES and signal_wanted(task_finished, level)
    follow_up = None
    if state == JobState.READY:
        follow_up = (
            signals.job_snoozed if outcome.kind == OutcomeKind.SNOOZED else signals.job_retrying
        )
        if not follow_up.receivers:
            follow_up = None
    if not finished_wanted and follow_up is None:
        return
    result = outcome.task_result
    if result is None:
        # The job ran in a child process: rebuild its result here for the signal.
        if registry.find(outcome.job.task_path, outcome.job.task_proof) is None:
            return
        result = backend.result_from_row(outcome.job.as_row())
    object.__setattr__(result, "status", status)
    if finished_at is None and status == TaskResultStatus.SUCCESSFUL:
        finished_at = timezone.now()  # an atomic task recorded it in its own transaction
    object.__setattr__(result, "finished_at", finished_at)
    if outcome.succeeded and outcome.return_json is not None:
        object.__setattr__(result, "_return_value", json.loads(outcome.return_json))
    elif outcome.error is not None:
        result.errors.append(
            TaskError(
                exception_class_path=outcome.error["exception_class_path"],
                traceback=outcome.error["traceback"],
            )
        )
    if finished_wanted:
        # Robustly, like our own signals: the outcome is recorded already, and a receiver
        # that raises must not take the runner's thread (or the child) down with it.
        # ``state``: the table's exact state, which ``status`` cannot say (CANCELLED is
        # FAILED there); receivers accept **kwargs, so Django's own ignore it.
        signals.send(task_finished, type(backend), task_result=result, state=str(state))
    if follow_up is signals.job_snoozed:
        signals.send(follow_up, type(backend), task_result=result, delay=outcome.delay)
    elif follow_up is not None:
        signals.send(
            follow_up, type(backend),
            task_result=result, error=outcome.error, delay=outcome.delay,
        )  # fmt: skip


def announce_recorded(
    backend: JobsBackend, job_id: int, state: str, error_json: str, delay: float | None
) -> None:
    """Signal an attempt recorded without an :class:`Outcome`, as :func:`send_finished`
    does for the others: its process died, passed its hard time limit, or was killed
    after a cancel's grace, and the supervisor recorded it. ``task_finished`` if the job
    is final now, ``job_retrying`` if it runs again.

    The TaskResult is read back from the table, and only if someone listens: the
    process that ran the attempt, and the TaskResult it had, are gone.
    """
    final = state in FINISHED_STATES
    if final:
        failed = to_task_status(state) == TaskResultStatus.FAILED
        if not signal_wanted(task_finished, logging.ERROR if failed else logging.INFO):
            return
    elif state != JobState.READY or not signals.job_retrying.receivers:
        return
    try:
        result = backend.get_result(str(job_id))
    except Exception:  # gone already (deleted), or the database went away meanwhile
        logger.warning("Job %s: could not read its result to signal it", job_id, exc_info=True)
        return
    if final:
        signals.send(task_finished, type(backend), task_result=result, state=str(state))
    else:
        signals.send(
            signals.job_retrying, type(backend),
            task_result=result, error=json.loads(error_json), delay=delay,
        )  # fmt: skip


class OutcomeRecorder:
    """Buffer outcomes for a few milliseconds, then record them in batches."""

    #: Flush buffered outcomes once the oldest has waited this long (seconds) ...
    FLUSH_AFTER = 0.005
    #: ... or once this many are buffered.
    FLUSH_BATCH = 200

    def __init__(
        self,
        backend: JobsBackend,
        worker_id: str,
        db: QueueConnection,
        stats: WorkerStats,
        on_settled: Callable[[int], None],
    ) -> None:
        self.backend = backend
        self.worker_id = worker_id
        self._db = db
        self.stats = stats
        #: Called with a job's id once its outcome is settled (recorded, or given up).
        self._on_settled = on_settled
        self._buffer: deque[tuple[float, Outcome]] = deque()

    def __len__(self) -> int:
        return len(self._buffer)

    def add(self, outcome: Outcome) -> None:
        self._buffer.append((time.monotonic(), outcome))

    def time_to_flush(self, default: float) -> float:
        """Seconds until the buffer is due (``default`` when it is empty)."""
        if not self._buffer:
            return default
        return max(0.0, self._buffer[0][0] + self.FLUSH_AFTER - time.monotonic())

    def flush(self, *, force: bool = False, busy: bool = True) -> None:
        """Record the buffer if it is due (``force``: now). ``busy``: jobs are running,
        so more outcomes are coming and a small batch may wait for them."""
        if not self._buffer:
            return
        if not force and (
            len(self._buffer) < self.FLUSH_BATCH and busy and self.time_to_flush(0.0) > 0
        ):
            return
        batch = [outcome for _, outcome in self._buffer]
        try:
            ok, recorded = self._db.run(lambda cur: record(cur, batch))
        except (psycopg.DatabaseError, TypeError, ValueError):
            # Not an outage: the database refused a value. Record the rest one by one so
            # one bad outcome cannot hold up (or crash) the others.
            logger.exception("Could not record %d outcome(s) together", len(batch))
            ok, recorded = self._record_one_by_one(batch)
        if not ok:
            return  # The database is away; keep the buffer and try again later.
        self._buffer.clear()
        for outcome in batch:
            self._report(outcome, recorded)

    def _record_one_by_one(self, batch: list[Outcome]) -> tuple[bool, Recorded | None]:
        merged: Recorded = ({}, {}, {}, set(), {})
        for outcome in batch:
            try:
                ok, part = self._db.run(lambda cur, o=outcome: record(cur, [o]))
            except (psycopg.DatabaseError, TypeError, ValueError) as exc:
                failure = Outcome(
                    outcome.job,
                    OutcomeKind.FAILED,
                    outcome.duration,
                    error=error_record(
                        None,
                        attempt=outcome.job.attempts,
                        worker_id=self.worker_id,
                        exception_class="django_jobs.exceptions.OutcomeNotStored",
                        message=storable_text(f"the outcome of this attempt was refused: {exc}"),
                    ),
                )
                try:
                    ok, part = self._db.run(lambda cur, o=failure: record(cur, [o]))
                except (psycopg.DatabaseError, TypeError, ValueError):
                    logger.exception("Job %s: no outcome could be recorded", outcome.job.id)
                    self._on_settled(outcome.job.id)
                    continue
            if not ok:
                return False, None
            for whole, piece in zip(merged, part, strict=True):
                whole.update(piece)
        return True, merged

    def _report(self, outcome: Outcome, recorded: Recorded) -> None:
        """Count an outcome as the database took it, and signal it."""
        done, failed, snoozed, released, cancelled = recorded
        job_id = outcome.job.id
        self._on_settled(job_id)
        finished_at = None
        if outcome.kind == OutcomeKind.RECORDED:
            state = JobState.SUCCESSFUL
        elif job_id in done:
            state, finished_at = JobState.SUCCESSFUL, done[job_id]
        elif job_id in failed:
            state, finished_at = failed[job_id]
        elif job_id in cancelled:
            state, finished_at = JobState.CANCELLED, cancelled[job_id]
        elif job_id in snoozed:
            state = snoozed[job_id]
        elif job_id in released:
            self.stats.released += 1
            return
        else:
            self.stats.lost += 1
            if outcome.kind != OutcomeKind.LOST:
                logger.warning(
                    "Job %s attempt %d finished, but the job was taken over by a newer "
                    "attempt meanwhile; this late outcome was discarded",
                    job_id, outcome.job.attempts, extra={"action": "job_lost_lease"},
                )  # fmt: skip
            return
        if state == JobState.SUCCESSFUL:
            self.stats.succeeded += 1
        elif state == JobState.CANCELLED:
            self.stats.cancelled += 1
        elif job_id in snoozed:
            self.stats.snoozed += 1
        elif state == JobState.READY:
            self.stats.retried += 1
        else:
            self.stats.failed += 1
        send_finished(self.backend, outcome, state, finished_at)
