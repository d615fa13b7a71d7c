"""Read-only numbers about limits, for the dashboard and ``jobs status``: what waits on a
limit, as opposed to what waits for a worker, and each limit's use right now.

A READY job waits on a limit when it is parked behind a full concurrency key, or when it
is one of a (queue, task) range's due jobs beyond the room its limiters have now. The
rest of the due jobs could start at once: they wait for a worker. Every query reads a
partial index of READY jobs or the limiter table; nothing here writes or locks.
"""

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..limits import (
    FLOW_LIMITED,
    FLOW_PARKED,
    KEY_PREFIX,
    QUEUE_PREFIX,
    TASK_PREFIX,
    rate_next_start,
    rate_used,
)
from ..models import Job, Limiter

TABLE = Job._meta.db_table
LIMITERS_TABLE = Limiter._meta.db_table

# Due and delayed limited jobs per (queue, task) range: the limited index, in its order.
LIMITED_BY_RANGE = f"""
SELECT queue_name, task_path,
       count(*) FILTER (WHERE available_at <= now()),
       count(*) FILTER (WHERE available_at > now()),
       min(available_at) FILTER (WHERE available_at <= now())
FROM {TABLE} WHERE state = 'READY' AND flow = '{FLOW_LIMITED}'
GROUP BY queue_name, task_path
"""

# Parked jobs per queue: the parked index.
PARKED_BY_QUEUE = f"""
SELECT queue_name, count(*) FROM {TABLE} WHERE state = 'READY' AND flow = '{FLOW_PARKED}'
GROUP BY queue_name
"""

# Every task and queue limiter (few), then the busiest keys (those running or with
# parked jobs; idle key rows are pruned after an hour, so this stays a short read).
LIMITERS = f"""
(SELECT backend, name, rate_text, rate_limit, rate_period, concurrency, running, parked,
        starts, extract(epoch FROM now())
 FROM {LIMITERS_TABLE} WHERE name NOT LIKE '{KEY_PREFIX}%%' ORDER BY backend, name)
UNION ALL
(SELECT backend, name, rate_text, rate_limit, rate_period, concurrency, running, parked,
        '{{}}'::jsonb, extract(epoch FROM now())
 FROM {LIMITERS_TABLE}
 WHERE name LIKE '{KEY_PREFIX}%%' AND (running > 0 OR parked > 0)
 ORDER BY parked DESC, running DESC, name LIMIT %(keys)s)
"""

#: Keys listed at most (the busiest).
MAX_KEYS = 20


@dataclass
class LimiterStats:
    """One limit and its use now."""

    backend: str
    name: str
    rate_text: str
    rate_limit: int | None
    rate_period: float | None
    concurrency: int | None
    running: int
    #: Starts counted in the last period (rate limits).
    started: int | None = None
    #: Seconds until the rate allows another start, when it allows none now.
    next_start_in: float | None = None
    #: Jobs waiting on this limit: parked (keys), or due beyond the room (tasks, queues).
    waiting: int = 0

    @property
    def kind(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def subject(self) -> str:
        return self.name.split(":", 1)[1]

    @property
    def room(self) -> int | None:
        """How many more may start now; None: no limit of either kind."""
        rooms = []
        if self.concurrency is not None:
            rooms.append(self.concurrency - self.running)
        if self.rate_limit is not None and self.started is not None:
            rooms.append(self.rate_limit - self.started)
        return max(0, min(rooms)) if rooms else None

    @property
    def full(self) -> bool:
        return self.room == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "limiter": self.name,
            "rate_limit": self.rate_text or None,
            "started_in_period": self.started,
            "concurrency": self.concurrency,
            "running": self.running,
            "room": self.room,
            "next_start_in_seconds": self.next_start_in,
            "waiting": self.waiting,
        }


@dataclass
class QueueFlow:
    """A queue's limited READY jobs, split by what they wait for."""

    runnable: int = 0
    waiting_on_limit: int = 0
    delayed: int = 0
    oldest_runnable: datetime | None = None


def limiters(cursor: Any) -> list[LimiterStats]:
    """Every task and queue limit, and the busiest keys, with their use now."""
    cursor.execute(LIMITERS, {"keys": MAX_KEYS})
    found = []
    for row in cursor.fetchall():
        backend, name, text, count, period, concurrency, running, parked, starts, epoch = row
        stats = LimiterStats(backend, name, text, count, period, concurrency, running)
        if name.startswith(KEY_PREFIX):
            stats.waiting = parked
        elif count is not None and period:
            window = starts if isinstance(starts, dict) else json.loads(starts or "{}")
            stats.started = rate_used(window, period, float(epoch))
            stats.next_start_in = rate_next_start(count, window, period, float(epoch))
        found.append(stats)
    return found


def by_queue(
    ranges: list[tuple] | None, parked: list[tuple] | None, limits: list[LimiterStats]
) -> dict[str, QueueFlow]:
    """Split each queue's limited jobs (rows of LIMITED_BY_RANGE and PARKED_BY_QUEUE)
    into those that may start now and those that wait on a limit; count the latter on
    the limits that hold them back."""
    flows: dict[str, QueueFlow] = defaultdict(QueueFlow)
    named = {(s.backend, s.name): s for s in limits if not s.name.startswith(KEY_PREFIX)}
    for queue, task, due, delayed, oldest in ranges or []:
        holding = [
            s for s in named.values() if s.name in (QUEUE_PREFIX + queue, TASK_PREFIX + task)
        ]
        rooms = [s.room for s in holding if s.room is not None]
        room = min(rooms) if rooms else due
        may = min(due, room)
        flow = flows[queue]
        flow.runnable += may
        flow.waiting_on_limit += due - may
        flow.delayed += delayed
        if may and oldest and (flow.oldest_runnable is None or oldest < flow.oldest_runnable):
            flow.oldest_runnable = oldest
        for s in holding:
            if s.full:
                s.waiting += due - may
    for queue, n in parked or []:
        flows[queue].waiting_on_limit += n
    return dict(flows)
