"""A task's retry and time-limit policy: the one place that answers "another attempt, when?".

The policy of a job is its task's options (``@job(max_attempts=..., retry_on=...,
timeout=...)``) with the backend's ``OPTIONS`` filling in what the task leaves out. The
executor (a task raised), the pool (a child died or passed its hard limit), the rescuer
(a worker was lost), a snooze and an operator's retry all ask here; the SQL statements
only carry the answer out. Pure functions: no database, no clock.
"""

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .conf import JobsOptions
from .exceptions import Retry

#: Longest delay stored (ten years): beyond it PostgreSQL's timestamps overflow.
MAX_DELAY = 10 * 365 * 24 * 3600.0

#: Seconds a cancelled running job has to stop by itself, for tasks that do not say.
DEFAULT_CANCEL_GRACE = 10.0

#: An operator's retry (admin, ``jobs retry``) allows this many attempts beyond the ones
#: a job has used, so a job that exhausted ``max_attempts`` can run again.
OPERATOR_RETRY_ATTEMPTS = 1


def backoff_delay(
    attempt: int,
    *,
    base: float,
    factor: float,
    cap: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    Exponential growth capped at ``cap``, with "equal jitter": a random point in the
    upper half of the window. The lower half keeps a floor under the wait, and the
    random half spreads out jobs that failed together (say, during an outage).
    """
    try:
        grown = base * factor ** max(attempt - 1, 0)
    except OverflowError:  # a float power past 1e308: attempt 1025 of factor 2, say
        grown = math.inf
    ceiling = min(cap, grown)
    return ceiling / 2 + rand() * ceiling / 2


def retry_in(
    attempt: int,
    max_attempts: int,
    *,
    base: float,
    factor: float,
    cap: float,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds until the next attempt, or None when ``attempt`` was the last one allowed."""
    if attempt >= max_attempts:
        return None
    return backoff_delay(attempt, base=base, factor=factor, cap=cap, rand=rand)


def default_max_attempts(task: Any, options: JobsOptions) -> int:
    """Attempts a new job of ``task`` gets (the task's own, else ``MAX_ATTEMPTS``)."""
    return getattr(task, "max_attempts", None) or options.MAX_ATTEMPTS


def snooze_delay(seconds: float) -> float:
    """Seconds a snoozed job waits, bounded to what the table can store."""
    return min(max(seconds, 0.0), MAX_DELAY)


def max_attempts_after_snooze(max_attempts: int) -> int:
    """A snooze is not a failure: the attempt it used is given back to the budget."""
    return max_attempts + 1


@dataclass(frozen=True, slots=True)
class Policy:
    """The resolved policy of one task (its options, or the backend's defaults)."""

    max_attempts: int
    #: Retry only these exception classes; None retries any.
    retry_on: tuple[type[BaseException], ...] | None
    base_delay: float
    factor: float
    max_delay: float
    #: Hard limit in seconds (the process is killed), soft limit (an exception is raised).
    timeout: float | None
    soft_timeout: float | None
    atomic: bool
    #: Seconds a cancelled running job has to stop by itself before it is killed.
    cancel_grace: float = 10.0

    @classmethod
    def of(cls, task: Any, options: JobsOptions) -> "Policy":
        """The policy of ``task`` (None: a task this process does not know)."""
        return cls(
            max_attempts=default_max_attempts(task, options),
            retry_on=getattr(task, "retry_on", None),
            base_delay=getattr(task, "retry_base_delay", None) or options.RETRY_BASE_DELAY,
            factor=getattr(task, "retry_factor", None) or options.RETRY_FACTOR,
            max_delay=getattr(task, "retry_max_delay", None) or options.RETRY_MAX_DELAY,
            timeout=getattr(task, "timeout", None) or options.TIMEOUT,
            soft_timeout=getattr(task, "soft_timeout", None) or options.SOFT_TIMEOUT,
            atomic=bool(getattr(task, "atomic", False)),
            cancel_grace=getattr(task, "cancel_grace", None) or DEFAULT_CANCEL_GRACE,
        )

    @classmethod
    def for_task(cls, task: Any, options: JobsOptions) -> "Policy":
        """Like :meth:`of`, remembered per (task, options) object: the executor asks per job."""
        key = (id(task), id(options))
        hit = _resolved.get(key)
        if hit is not None and hit[0] is task and hit[1] is options:
            return hit[2]
        resolved = cls.of(task, options)
        if len(_resolved) > 4096:  # tasks rebuilt again and again (.using() copies)
            _resolved.clear()
        # The task and options are kept with the answer so that their ids stay theirs.
        _resolved[key] = (task, options, resolved)
        return resolved

    def backoff(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        return backoff_delay(
            attempt, base=self.base_delay, factor=self.factor, cap=self.max_delay, rand=rand
        )

    def next_attempt_in(
        self, attempt: int, max_attempts: int, exc: BaseException | None = None
    ) -> float | None:
        """Seconds until the next attempt after failed ``attempt``, or None if it was final.

        ``max_attempts`` is the job row's (a snooze or an operator's retry may have
        raised it above the task's). ``exc`` is what the attempt raised; None means it
        raised nothing in our hands: its process died, it passed its hard time limit, or
        its worker was lost. Those are retried whenever attempts remain, because
        ``retry_on`` describes the task's own exceptions. ``Retry(after=...)`` sets the
        delay itself, and is retried whatever ``retry_on`` says.
        """
        if isinstance(exc, Retry):
            if attempt >= max_attempts:
                return None
            if exc.after is not None:
                return min(exc.after, MAX_DELAY)
        elif self.retry_on is not None and exc is not None and not isinstance(exc, self.retry_on):
            return None
        if attempt >= max_attempts:
            return None
        return min(self.backoff(attempt), MAX_DELAY)


_resolved: dict[tuple[int, int], tuple[Any, JobsOptions, Policy]] = {}
