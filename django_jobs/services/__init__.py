"""Chores the workers do besides running jobs, one small module each.

- ``leader``: the maintenance lease; its holder runs the leader-only services:
- ``rescuer``: jobs of workers that stopped heart-beating go back to READY or FAILED;
- ``pruner``: finished jobs past their retention, and long-dead worker rows, deleted;
- ``scheduler``: due schedules fired (every worker ticks; locks and a unique run per
  fire time make each fire time enqueue once, so no leader is needed).

A service runs in the supervisor's loop, on its queue connection, between claims, so
each round is bounded (a batch, a time budget). ``run_once(cursor)`` does one round and
returns what it did, which is also how the tests drive it. Correctness never rests on
there being one leader: every statement locks what it moves.
"""

import random
import time


class Service:
    """Something to do every ``interval`` seconds, jittered so workers spread out."""

    #: Each wait is the interval times a random factor in [1 - JITTER, 1 + JITTER].
    JITTER = 0.2

    def __init__(self, interval: float) -> None:
        self.interval = interval
        #: When the next round is due (time.monotonic()); 0: at once.
        self.next_run = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self.next_run

    def wait(self, seconds: float | None = None) -> None:
        """Next round after ``seconds``, or after a jittered interval."""
        if seconds is None:
            seconds = self.interval * (1 - self.JITTER + 2 * self.JITTER * random.random())  # noqa: S311
        self.next_run = time.monotonic() + seconds
