"""The worker's side of running jobs: the cancel requests heard, the progress reported.

One :class:`Controls` per runner. The executor gets a :class:`RunningJob` per attempt:
the job's code reads ``cancel_requested`` from it (a set lookup, no I/O) and hands it
progress, which is throttled (``context.ProgressThrottle``) and passed to ``report``:
a message to the supervisor, which writes it (the job's thread never waits on the
database, and a runner busy with a long job on its only thread still gets its progress
written). A thread of the process calls ``flush_due()`` so that a value held back by
the throttle is sent within a second even if the job reports nothing more. When the
attempt ends, the value still held goes with its outcome instead (``take_held()``),
written in the same transaction just before it: a job's last progress always lands
while it is still RUNNING.
"""

import threading
from collections.abc import Callable
from typing import Any

from ..codec import encode_json
from ..context import ProgressThrottle
from ..protocol.jobs import ClaimedJob, Progressed


class RunningJob:
    """One attempt's control (``context.JobControl``)."""

    __slots__ = ("_cancelled", "_report", "_throttle", "attempt", "job_id")

    def __init__(
        self, job: ClaimedJob, cancelled: set[int], report: Callable[[Progressed], None]
    ) -> None:
        self.job_id = job.id
        self.attempt = job.attempts
        self._cancelled = cancelled
        self._report = report
        # Made on the first report: most jobs never report progress.
        self._throttle: ProgressThrottle | None = None

    @property
    def cancel_requested(self) -> bool:
        return self.job_id in self._cancelled

    def set_progress(self, progress: dict[str, Any]) -> None:
        if self._throttle is None:
            self._throttle = ProgressThrottle(self._send)
        self._throttle.offer(progress)

    def _send(self, payload: dict[str, Any]) -> None:
        self._report(self.progressed(payload))

    def progressed(self, payload: dict[str, Any]) -> Progressed:
        return Progressed(self.job_id, self.attempt, encode_json(payload, "progress"))

    @property
    def last_progress(self) -> dict[str, Any] | None:
        """The last value the job reported (sent or not)."""
        return None if self._throttle is None else self._throttle.latest

    def due_in(self) -> float | None:
        return None if self._throttle is None else self._throttle.due_in()

    def flush_due(self) -> None:
        if self._throttle is not None:
            self._throttle.flush_due()

    def take_held(self) -> str | None:
        """The progress held back by the throttle, as JSON to write with the outcome."""
        if self._throttle is None:
            return None
        payload = self._throttle.take()
        return None if payload is None else self.progressed(payload).progress_json


class Controls:
    """The attempts running in one runner, and the cancel requests for its jobs."""

    #: How often the flushing thread looks, at most, when nothing is due.
    IDLE_WAIT = 1.0

    def __init__(self, report: Callable[[Progressed], None]) -> None:
        self._report = report
        self._lock = threading.Lock()
        self._running: dict[int, RunningJob] = {}
        #: Ids of jobs someone asked to cancel; a held job found here never starts.
        self.cancelled: set[int] = set()
        #: Told of each cancel request too (the asyncio pool cancels coroutines).
        self.on_cancel: Callable[[int], None] | None = None

    def start(self, job: ClaimedJob) -> RunningJob:
        control = RunningJob(job, self.cancelled, self._report)
        with self._lock:
            self._running[job.id] = control
        return control

    def finish(self, control: RunningJob) -> None:
        """The attempt ended: forget it (its held progress went with its outcome)."""
        with self._lock:
            self._running.pop(control.job_id, None)
        self.cancelled.discard(control.job_id)

    def cancel(self, job_id: int) -> None:
        """Someone asked to cancel ``job_id`` (any thread)."""
        self.cancelled.add(job_id)
        if self.on_cancel is not None:
            self.on_cancel(job_id)

    def forget(self, job_ids: Any) -> None:
        """Jobs given back without running (released): their requests go with them."""
        self.cancelled.difference_update(job_ids)

    def flush_due(self) -> float:
        """Send the progress values that are due; return seconds until the next one."""
        with self._lock:
            running = list(self._running.values())
        wait = self.IDLE_WAIT
        for control in running:
            control.flush_due()
            due = control.due_in()
            if due is not None:
                wait = min(wait, max(due, 0.01))
        return wait
