"""The chaos run's tasks: one of each kind, all journaling when they really ran.

Every run appends ``start``, a ``tick`` every 0.1 s and ``end`` to the JSONL file in
``CHAOS_JOURNAL`` (one O_APPEND write per line, so processes never interleave): the checks
count executions and look for overlapping attempts from it, not from the job rows.
"""

import json
import os
import time
from typing import Any

from django_jobs import job
from django_jobs.exceptions import Snooze

TICK = 0.1


def journal(kind: str, context: Any, event: str, **extra: Any) -> None:
    path = os.environ.get("CHAOS_JOURNAL")
    if not path:
        return
    record = {
        "kind": kind,
        "job": int(context.task_result.id),
        "attempt": context.attempt,
        "event": event,
        "pid": os.getpid(),
        "host": os.environ.get("JOBS_TEST_HOST", ""),
        "t": time.time(),
        **extra,
    }
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def work(kind: str, context: Any, seconds: float) -> None:
    """Journal the start, tick while ``seconds`` pass, journal the end."""
    journal(kind, context, "start")
    began = time.monotonic()
    while (left := seconds - (time.monotonic() - began)) > 0:
        time.sleep(min(TICK, left))
        journal(kind, context, "tick")
    journal(kind, context, "end")


@job(max_attempts=10, retry_base_delay=0.05, takes_context=True)
def plain(context: Any, seconds: float) -> float:
    work("plain", context, seconds)
    return seconds


@job(atomic=True, max_attempts=10, retry_base_delay=0.05, takes_context=True)
def atomic(context: Any, seconds: float) -> int:
    """Commits one Execution row with its success: exactly one per successful job."""
    from testproject.example.models import Execution

    work("atomic", context, seconds)
    Execution.objects.create(key=f"chaos-atomic-{context.task_result.id}", pid=os.getpid())
    return context.attempt


@job(max_attempts=10, retry_base_delay=0.05, takes_context=True)
def retried(context: Any, seconds: float) -> int:
    """Fails its first attempt on purpose, succeeds on a later one."""
    work("retried", context, seconds)
    if context.attempt == 1:
        raise ConnectionError("the first attempt fails on purpose")
    return context.attempt


@job(max_attempts=10, retry_base_delay=0.05, takes_context=True)
def snoozed(context: Any, seconds: float) -> int:
    """Snoozes on its first attempt (no error, no attempt spent), succeeds after."""
    work("snoozed", context, seconds)
    if context.attempt == 1:
        raise Snooze(0.2)
    return context.attempt


@job(timeout=0.5, max_attempts=2, retry_base_delay=0.05, takes_context=True)
def times_out(context: Any, seconds: float = 3.0) -> None:
    """Runs past its hard limit every time: killed twice, then FAILED."""
    work("times_out", context, seconds)


@job(max_attempts=10, retry_base_delay=0.05, takes_context=True)
def every_second(context: Any) -> None:
    work("every_second", context, 0.05)


@job(max_attempts=10, retry_base_delay=0.05, takes_context=True)
def every_minute(context: Any) -> None:
    work("every_minute", context, 0.05)


@job(max_attempts=10, retry_base_delay=0.05, takes_context=True)
def step_add(context: Any, a: int, b: int) -> int:
    """A workflow step: a chain passes the previous result as ``a``."""
    work("step_add", context, 0.05)
    return a + b


@job(max_attempts=10, retry_base_delay=0.05, takes_context=True)
def step_total(context: Any, numbers: list[int]) -> int:
    """A chord's callback: must run to success once its members have."""
    work("step_total", context, 0.05)
    return sum(numbers)


@job(rate_limit="20/s", max_attempts=10, retry_base_delay=0.05, takes_context=True)
def rated(context: Any, n: int) -> int:
    work("rated", context, 0.02)
    return n


@job(concurrency_limit=2, max_attempts=10, retry_base_delay=0.05, takes_context=True)
def capped(context: Any, n: int, seconds: float) -> int:
    work("capped", context, seconds)
    return n


@job(unique_key=lambda key, *_, **__: f"chaos-{key}", max_attempts=10, retry_base_delay=0.05,
     takes_context=True)  # fmt: skip
def unique_key(context: Any, key: str, seconds: float) -> str:
    """One job per ``key`` while it waits or runs (the duration is not part of the key)."""
    work("unique_key", context, seconds)
    return key
