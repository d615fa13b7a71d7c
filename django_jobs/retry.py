"""When to try a failed job again: pure functions, no database, no clock."""

import random
from collections.abc import Callable


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
    ceiling = min(cap, base * factor ** max(attempt - 1, 0))
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
