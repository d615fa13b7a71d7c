"""Flow control's vocabulary: rate strings, limiter names, key rules, the ``flow`` column.

Pure definitions, no database: the task declaration (``task.py``), the options
(``conf.py``), the enqueue path (``backend.py``) and the SQL (``protocol/limits.py``,
``protocol/limiters.py``, ``protocol/unique.py``) all take their rules from here, so a
limit is parsed, a key checked and a limiter named the same way everywhere.

A *limiter* is a row of ``django_jobs_limiter`` shared by every worker: ``task:<path>``
(a task's rate and concurrency limit), ``queue:<name>`` (``OPTIONS["QUEUE_LIMITS"]``) or
``key:<key>`` (the slots of one concurrency key). Its name is the prefix and the value,
spelled the same in Python and in SQL.
"""

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .states import FINISHED, JobState

#: A limited job's ``flow``: claimed through its limiters. Unlimited jobs have NULL, which
#: keeps them in the plain claim index and out of every index below.
FLOW_LIMITED = "limited"
#: A job whose concurrency key was full when a claim reached it: out of every claim
#: index until a slot of its key frees (the statement that frees it wakes the key).
FLOW_PARKED = "parked"
FLOWS = (FLOW_LIMITED, FLOW_PARKED)

TASK_PREFIX = "task:"
QUEUE_PREFIX = "queue:"
KEY_PREFIX = "key:"

#: Sub-windows a rate limit's period is counted in. A claim counts every sub-window that
#: overlaps the last period, so no period ever holds more starts than the limit; the
#: price is that a full burst waits up to one sub-window (1/50 of the period) longer.
RATE_BUCKETS = 50

#: Longest key, in bytes of UTF-8: it sits in a B-tree index (a row at most 2,704 bytes)
#: next to the backend alias and, for unique keys, the task's path.
MAX_KEY_BYTES = 1000

#: Most jobs one concurrency key may run at once; more is a pool, not a key.
MAX_CONCURRENCY = 10_000
#: Largest count of a rate limit.
MAX_RATE = 1_000_000

#: A job holds its unique key while it waits or runs; these always count.
ACTIVE_STATES = (JobState.READY, JobState.BLOCKED, JobState.RUNNING)
#: What counts by default once a job has finished (within ``unique_for``): a success.
#: A failed or cancelled job does not stop the same work being enqueued again.
DEFAULT_UNIQUE_STATES = (*ACTIVE_STATES, JobState.SUCCESSFUL)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_UNIT_NAMES = {
    "s": "s", "sec": "s", "second": "s", "seconds": "s",
    "m": "m", "min": "m", "minute": "m", "minutes": "m",
    "h": "h", "hour": "h", "hours": "h",
    "d": "d", "day": "d", "days": "d",
}  # fmt: skip
_RATE = re.compile(
    r"^\s*(?P<count>\d+)\s*/\s*(?P<n>\d+(?:\.\d+)?)?\s*(?P<unit>[a-z]+)\s*$", re.IGNORECASE
)
RATE_HELP = (
    "a rate is a count per period such as '100/m', '5/s', '1000/h' or '10/30s' "
    "(the period in s, m, h or d, optionally with a number)"
)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` starts in any ``period`` seconds, cluster-wide."""

    count: int
    period: float
    text: str

    def __str__(self) -> str:
        return self.text


def parse_rate(value: Any) -> RateLimit:
    """``"100/m"`` as a RateLimit; raise ValueError saying what a rate looks like."""
    if isinstance(value, RateLimit):
        return value
    match = _RATE.match(value) if isinstance(value, str) else None
    unit = _UNIT_NAMES.get(match["unit"].lower()) if match else None
    if match is None or unit is None:
        raise ValueError(f"{value!r} is not a rate: {RATE_HELP}")
    count = int(match["count"])
    period = float(match["n"] or 1) * _UNITS[unit]
    if count < 1 or count > MAX_RATE:
        raise ValueError(f"{value!r}: the count must be from 1 to {MAX_RATE:,}, got {count}")
    if not math.isfinite(period) or period <= 0 or period > 366 * 86400:
        raise ValueError(f"{value!r}: the period must be more than 0 and at most a year")
    return RateLimit(count, period, value.strip())


@dataclass(frozen=True, slots=True)
class QueueLimit:
    """``OPTIONS["QUEUE_LIMITS"][queue]``: a rate and/or a number running at once."""

    rate: RateLimit | None = None
    concurrency: int | None = None


_QUEUE_LIMIT_KEYS = ("rate_limit", "concurrency")


def whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def queue_limits_problems(raw: Any) -> list[str]:
    """Why ``OPTIONS["QUEUE_LIMITS"]`` is malformed, one message per problem."""
    if not isinstance(raw, Mapping):
        return [
            f"QUEUE_LIMITS must be a dict of queue name -> {{'rate_limit': '20/s', "
            f"'concurrency': 5}}, got {raw!r}"
        ]
    problems = []
    for queue, limit in raw.items():
        where = f"QUEUE_LIMITS[{queue!r}]"
        if not isinstance(queue, str) or not queue:
            problems.append(f"QUEUE_LIMITS keys must be queue names, got {queue!r}")
            continue
        if not isinstance(limit, Mapping) or not limit:
            problems.append(
                f"{where} must be a dict with 'rate_limit' and/or 'concurrency', got {limit!r}"
            )
            continue
        for key in sorted(set(limit) - set(_QUEUE_LIMIT_KEYS)):
            problems.append(
                f"{where} has an unknown key {key!r}; the keys are 'rate_limit' and 'concurrency'"
            )
        if "rate_limit" in limit:
            try:
                parse_rate(limit["rate_limit"])
            except ValueError as exc:
                problems.append(f"{where}['rate_limit']: {exc}")
        if "concurrency" in limit and not (
            whole(limit["concurrency"]) and 1 <= limit["concurrency"] <= MAX_CONCURRENCY
        ):
            problems.append(
                f"{where}['concurrency'] must be a whole number from 1 to {MAX_CONCURRENCY:,}, "
                f"got {limit['concurrency']!r}"
            )
    return problems


def parse_queue_limits(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, QueueLimit]:
    """Validated ``QUEUE_LIMITS`` (see ``queue_limits_problems``) as QueueLimit objects."""
    return {
        queue: QueueLimit(
            rate=parse_rate(limit["rate_limit"]) if "rate_limit" in limit else None,
            concurrency=limit.get("concurrency"),
        )
        for queue, limit in raw.items()
    }


def check_key(value: Any, what: str) -> str:
    """``value`` if it can be a key; else TypeError or ValueError naming ``what`` and it."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__} {value!r}.")
    if not value:
        raise ValueError(f"{what} is an empty string; a key needs at least one character.")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise ValueError(
            f"{what} is {size:,} bytes long in UTF-8, more than the {MAX_KEY_BYTES:,} an "
            f"index entry allows (it starts {value[:40]!r}). Use a shorter key, or a digest "
            "of the long one (hashlib.sha256(key.encode()).hexdigest())."
        )
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL character, which PostgreSQL cannot store.")
    return value


def unique_states_problem(states: Any) -> str | None:
    """Why ``states`` cannot be a task's ``unique_states``, or None."""
    if isinstance(states, str) or not isinstance(states, tuple | list | frozenset | set):
        return f"must be a tuple of job states, got {states!r}"
    unknown = [s for s in states if s not in JobState.values]
    if unknown:
        return f"names unknown states {unknown!r}; the states are {', '.join(JobState.values)}"
    missing = [s.value for s in ACTIVE_STATES if s not in states]
    if missing:
        return (
            f"must include {', '.join(s.value for s in ACTIVE_STATES)} (missing "
            f"{', '.join(missing)}): a job keeps its key while it waits or runs, so a retry "
            "can never collide with a newer job of the same key"
        )
    return None


def finished_unique_states(states: tuple[str, ...]) -> list[str]:
    """The finished states among ``states``: those that count within ``unique_for``."""
    return [s.value for s in FINISHED if s in states]


def _bucket(epoch: float, period: float) -> int:
    return math.floor(epoch * RATE_BUCKETS / period)


def rate_used(starts: Mapping[str, int], period: float, epoch: float) -> int:
    """Starts a rate limiter counts at ``epoch`` (seconds), from its ``starts`` column.

    The same count the claim makes in SQL (protocol/limits.py): every sub-window from
    the current one back by RATE_BUCKETS, and any later one.
    """
    first = _bucket(epoch, period) - RATE_BUCKETS
    return sum(n for bucket, n in starts.items() if int(bucket) >= first)


def rate_next_start(
    count: int, starts: Mapping[str, int], period: float, epoch: float
) -> float | None:
    """Seconds until a rate limiter with no room left may start a job; None if it may now."""
    first = _bucket(epoch, period) - RATE_BUCKETS
    counted = sorted((int(b), n) for b, n in starts.items() if int(b) >= first)
    used = sum(n for _, n in counted)
    if used < count:
        return None
    for bucket, n in counted:
        used -= n
        if used < count:
            # A sub-window stops counting once the current one is RATE_BUCKETS + 1 on.
            free_at = (bucket + RATE_BUCKETS + 1) * period / RATE_BUCKETS
            return max(0.0, free_at - epoch)
    return None  # not reached: a count is at least 1
