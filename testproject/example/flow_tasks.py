"""Example tasks with flow control: unique jobs, rate limits, concurrency keys.

Kept apart from ``tasks.py`` so that a process can leave them out: the settings list
this module in ``TASK_MODULES`` unless ``JOBS_TASK_MODULES`` says otherwise, and the
benchmark drains ``tasks.noop`` both with them (a process that declares limits) and
without (one that declares none).
"""

import os
import time
from datetime import timedelta

from django_jobs import job


@job(unique=True)
def unique_add(a: int, b: int) -> int:
    return a + b


@job(unique_for=timedelta(minutes=10), unique_key=lambda feed_id, **_: f"feed-{feed_id}")
def refresh_feed(feed_id: int, reason: str = "") -> int:
    return feed_id


@job(rate_limit="10/s")
def rate_limited(n: int) -> int:
    """A no-op under a cluster-wide rate limit: the rate test reads its start times."""
    return n


@job(concurrency_key=lambda account, *_, **__: f"acct-{account}", concurrency_limit=1)
def per_account(account: int, n: int, milliseconds: int = 0) -> int:
    """At most one per account at a time: record when it really ran, to look for overlap."""
    from .models import Execution

    began = time.time()
    time.sleep(milliseconds / 1000)
    Execution.objects.create(
        key=f"acct-{account}", pid=os.getpid(), started=began, finished=time.time()
    )
    return n


@job(concurrency_limit=2)
def two_at_a_time(n: int) -> int:
    """At most two running at once, cluster-wide (a task-wide concurrency limit)."""
    return n


@job(concurrency_key=lambda key: key)
def keyed_by(key: object) -> None:
    """The concurrency key is the argument itself: anything but a str is refused."""


@job(rate_limit="100/s")
def rated_noop() -> None:
    """Does nothing, at most 100 a second: the benchmark's rate-limited drain (S7)."""
