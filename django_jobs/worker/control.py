"""The worker's side of running jobs: the cancel requests heard, the progress reported.

One :class:`Controls` per process that runs jobs (a child, or the supervisor with
``--pool threads``). The executor gets a :class:`RunningJob` per attempt: the job's
code reads ``cancel_requested`` from it (a set lookup, no I/O) and hands it progress,
which is throttled (``context.ProgressThrottle``) and passed to ``report``: a pipe
message to the supervisor from a child, the supervisor's inbox in-process. The job's
thread never waits on the database. A thread of the process calls ``flush_due()`` so
that a value held back by the throttle is sent within a second even if the job
reports nothing more; ``finish()`` sends it at once when the attempt ends.
"""

import threading
from collections.abc import Callable
from typing import Any

from ..codec import encode_json
from ..context import ProgressThrottle
from ..protocol.jobs import ClaimedJob, Progressed


class RunningJob:
    """One attempt's control (``context.JobControl``)."""

    def __init__(
        self, job: ClaimedJob, cancelled: set[int], report: Callable[[Progressed], None]
    ) -> None:
        self.job_id = job.id
        self.attempt = job.attempts
        self._cancelled = cancelled
        self._throttle = ProgressThrottle(
            lambda payload: report(
                Progressed(self.job_id, self.attempt, encode_json(payload, "progress"))
            )
        )

    @property
    def cancel_requested(self) -> bool:
        return self.job_id in self._cancelled

    def set_progress(self, progress: dict[str, Any]) -> None:
        self._throttle.offer(progress)

    @property
    def last_progress(self) -> dict[str, Any] | None:
        """The last value the job reported (sent or not)."""
        return self._throttle.latest

    def due_in(self) -> float | None:
        return self._throttle.due_in()

    def flush_due(self) -> None:
        self._throttle.flush_due()

    def flush(self) -> None:
        self._throttle.flush()


class Controls:
    """The attempts running in this process, and the cancel requests for its jobs."""

    #: How often the flushing thread looks, at most, when nothing is due.
    IDLE_WAIT = 1.0

    def __init__(self, report: Callable[[Progressed], None]) -> None:
        self._report = report
        self._lock = threading.Lock()
        self._running: dict[int, RunningJob] = {}
        #: Ids of jobs someone asked to cancel; a queued job found here never starts.
        self.cancelled: set[int] = set()

    def start(self, job: ClaimedJob) -> RunningJob:
        control = RunningJob(job, self.cancelled, self._report)
        with self._lock:
            self._running[job.id] = control
        return control

    def finish(self, control: RunningJob) -> None:
        """The attempt ended: send its held progress now, and forget it."""
        control.flush()
        with self._lock:
            self._running.pop(control.job_id, None)
        self.cancelled.discard(control.job_id)

    def cancel(self, job_id: int) -> None:
        self.cancelled.add(job_id)

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
