"""What each slot of a child process is running, in memory the supervisor can read.

A child claims and records its own jobs, so the supervisor is off the per-job path;
but it must still know which job a child is running to kill it at its hard time limit
and to report the right job when a child dies. The child writes the job into its slot
before running it and clears it after: three stores to shared memory, no message, no
system call. The supervisor reads the slots when it checks time limits and after a
child died (the memory outlives the process).

A reader may catch a slot mid-write; every writer orders its stores so that a torn read
is harmless: the id is written last when a job starts and cleared first when it ends,
and whatever the supervisor does with a job is fenced by the attempt number it read.
"""

import time
from dataclasses import dataclass
from multiprocessing.sharedctypes import RawArray
from typing import Any

#: A slot with this id is free.
FREE = 0


@dataclass(frozen=True, slots=True)
class Running:
    slot: int
    job_id: int
    attempt: int
    #: time.monotonic() past which the job has overrun its hard limit; 0: no limit.
    deadline: float


class Slots:
    """``size`` slots of (job id, attempt, deadline) in shared memory."""

    def __init__(self, size: int, *, context: Any = None) -> None:
        # RawArray: no lock; each slot has one writer (the thread running it).
        self.size = size
        self._ids = RawArray("q", size)
        self._attempts = RawArray("q", size)
        self._deadlines = RawArray("d", size)

    def start(self, slot: int, job_id: int, attempt: int, timeout: float | None) -> None:
        """Mark ``slot`` as running attempt ``attempt`` of ``job_id`` from now."""
        self._deadlines[slot] = time.monotonic() + timeout if timeout else 0.0
        self._attempts[slot] = attempt
        self._ids[slot] = job_id

    def clear(self, slot: int) -> None:
        self._ids[slot] = FREE

    def running(self) -> list[Running]:
        """The slots that hold a job now."""
        found = []
        for slot in range(self.size):
            job_id = self._ids[slot]
            if job_id != FREE:
                found.append(Running(slot, job_id, self._attempts[slot], self._deadlines[slot]))
        return found

    def reset(self) -> None:
        """Free every slot (before a new child takes these slots over)."""
        for slot in range(self.size):
            self._ids[slot] = FREE
