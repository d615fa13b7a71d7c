"""Exceptions a task may raise to steer its own retries, and the ones we record."""

from datetime import datetime, timedelta

from django.utils import timezone


def _seconds(after: float | timedelta | datetime | None) -> float | None:
    if after is None:
        return None
    if isinstance(after, datetime):
        return max(0.0, (after - timezone.now()).total_seconds())
    if isinstance(after, timedelta):
        return max(0.0, after.total_seconds())
    if isinstance(after, int | float) and not isinstance(after, bool) and after >= 0:
        return float(after)
    raise TypeError(
        f"after must be seconds (a number >= 0), a timedelta or an aware datetime, got {after!r}"
    )


class Retry(Exception):
    """Raise inside a task to fail this attempt and retry: after ``after``, or by backoff.

    It counts as a failed attempt (recorded, and bounded by ``max_attempts``), even when
    the task's ``retry_on`` would not otherwise retry.
    """

    def __init__(self, reason: str = "", *, after: float | timedelta | datetime | None = None):
        super().__init__(reason or "the task asked to be retried")
        self.after = _seconds(after)


class Snooze(Exception):
    """Raise inside a task to run it again later without counting an error.

    The job goes back to READY until ``after`` has passed; the attempt stays in the
    history, but does not use up ``max_attempts``.
    """

    def __init__(self, after: float | timedelta | datetime):
        seconds = _seconds(after)
        if seconds is None:
            raise TypeError("Snooze needs an `after`: seconds, a timedelta or a datetime")
        super().__init__(f"snoozed for {seconds:.3f} s")
        self.after = seconds


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task that runs past its ``soft_timeout``, so it can clean up."""


class TimeLimitExceeded(Exception):
    """Recorded for a job whose process was killed at its hard ``timeout``."""


class WorkerLost(Exception):
    """Recorded for a job whose worker stopped heart-beating (SIGKILL, lost host)."""


class WorkerProcessDied(Exception):
    """Recorded for a job whose child process died while running it."""


class InvalidWorkflow(ValueError):
    """A workflow that cannot be enqueued as given: empty, circular, or too big.

    Raised by ``enqueue()`` before anything is written; the message names the step.
    """


class JobCancelled(Exception):
    """Recorded for an attempt stopped because someone cancelled the job."""


class ParentResultMissing(LookupError):
    """A workflow step could not read the result of a step before it (deleted, say)."""
