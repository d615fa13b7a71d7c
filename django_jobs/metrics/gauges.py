"""Gauges read from the database at scrape time, the same numbers for every scraper.

Read through ``console/stats.py``, which reads only the partial indexes and counts
exactly only under a bound (else the planner's estimate, flagged), so a scrape stays
cheap with millions of finished rows. The answer is kept for ``TTL`` seconds: several
Prometheus servers, or one scraping every worker, cost one set of queries per TTL.
"""

import threading
import time
from dataclasses import dataclass, field

from django.db import connections

from ..backend import get_backend, jobs_backends, jobs_database
from ..compat import InvalidTaskBackend
from ..conf import JobsOptions
from ..console import stats

#: Seconds a reading is reused.
TTL = 5.0


@dataclass
class Reading:
    #: (queue, ready now, scheduled later, running, blocked, oldest ready age or None)
    queues: list[tuple[str, int, int, int, int, float | None]] = field(default_factory=list)
    estimated: bool = False
    #: backend -> (workers alive, their slots, busy slots)
    workers: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    taken_at: float = 0.0


_lock = threading.Lock()
_last: Reading | None = None


def _worker_timeout(alias: str) -> float:
    try:
        return get_backend(alias).jobs_options.WORKER_TIMEOUT
    except InvalidTaskBackend:  # rows of a backend no longer configured
        return JobsOptions.WORKER_TIMEOUT


def read(*, close_connection: bool = False) -> Reading:
    """The current gauges (cached for TTL seconds).

    ``close_connection``: close this thread's database connection afterwards (the
    ``runjobs`` metrics server runs each scrape on a new thread, which Django's
    request cycle would otherwise have closed).
    """
    global _last
    with _lock:
        if _last is not None and time.monotonic() - _last.taken_at < TTL:
            return _last
        using = jobs_database()
        try:
            _last = _read(using)
        finally:
            if close_connection:
                connections[using].close()
        return _last


def _read(using: str) -> Reading:
    known_queues = sorted({q for b in jobs_backends() for q in b.queues})
    depths = stats.depths(known_queues, using=using)
    reading = Reading(estimated=depths.ready_estimated, taken_at=time.monotonic())
    for q in depths.queues:
        reading.queues.append(
            (q.name, q.runnable, q.delayed, q.running, depths.blocked.get(q.name, 0),
             q.oldest_runnable_age)
        )  # fmt: skip
    alive: dict[str, list[int]] = {b.alias: [0, 0] for b in jobs_backends()}
    for backend, slots, age, lost in stats.workers_seen(using):
        if not lost and age < _worker_timeout(backend):
            counts = alive.setdefault(backend, [0, 0])
            counts[0] += 1
            counts[1] += slots
    for backend in set(alive) | set(depths.running_by_backend):
        workers, slots = alive.get(backend, (0, 0))
        reading.workers[backend] = (workers, slots, depths.running_by_backend.get(backend, 0))
    return reading


def forget() -> None:
    """Drop the cached reading (tests)."""
    global _last
    with _lock:
        _last = None
