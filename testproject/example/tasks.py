"""Example tasks: Django's own ``@task`` and our ``@job`` side by side."""

import asyncio
import time

from django.core.mail import send_mail
from django.tasks import task

from django_jobs import job


@task
def add(a: int, b: int) -> int:
    return a + b


@job(queue_name="slow")
def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@job(max_attempts=3)
def always_fails(message: str = "this task fails on purpose") -> None:
    raise RuntimeError(message)


@task(queue_name="emails")
def send_welcome_email(address: str) -> int:
    return send_mail(
        "Welcome",
        "Thanks for trying django_jobs.",
        "noreply@example.com",
        [address],
    )


@task(takes_context=True)
def report_attempt(context) -> int:
    return context.attempt


@task
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@task
def record(key: str) -> str:
    """Insert a ledger row; running the same job twice raises IntegrityError."""
    from .models import LedgerEntry

    LedgerEntry.objects.create(key=key)
    return key


def plain_function(path: str) -> None:
    """Not a task: a job row naming it must never make a worker call it."""
    from pathlib import Path

    Path(path).write_text("a plain function was called")


@job(max_attempts=3)
def returns_a_set() -> set[int]:
    return {1, 2, 3}


@job(max_attempts=2, takes_context=True)
def flaky_reports_attempt(context) -> int:
    """Fail on the first attempt, succeed on the second, and say which attempt it was."""
    if context.attempt < 2:
        raise ConnectionError("transient failure on the first attempt")
    return context.attempt


@task
def noop() -> None:
    """Does nothing: the benchmark's job, so only the queue's own cost is measured."""


@job(max_attempts=2)
def crash_process(code: int = 1) -> None:
    """Kill the process running it, as a segfault or the OOM killer would."""
    import os

    os._exit(code)


@job(timeout=1.0, max_attempts=1)
def hang(seconds: float = 60) -> None:
    """Block past its hard limit: the process running it is killed."""
    time.sleep(seconds)


@job(soft_timeout=0.5, timeout=5.0, max_attempts=1)
def overrun_soft_limit(seconds: float = 3) -> str:
    """Run past the soft limit, catch it, and clean up in time."""
    from django_jobs.exceptions import SoftTimeLimitExceeded

    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "cleaned up after the soft limit"
    return "finished"


@task
def sleep_ms(milliseconds: int, key: str) -> str:
    """Sleep, then write a ledger row: a job that takes time and must not run twice."""
    from .models import LedgerEntry

    time.sleep(milliseconds / 1000)
    LedgerEntry.objects.create(key=key)
    return key


@job(max_attempts=10)
def chaos_step(milliseconds: int, key: str) -> str:
    """Sleep, then log this execution: the chaos test counts runs per job."""
    import os

    from .models import Execution

    time.sleep(milliseconds / 1000)
    Execution.objects.create(key=key, pid=os.getpid())
    return key


@job(max_attempts=3, retry_on=(ConnectionError,), retry_base_delay=0.01)
def fails_with(exception_name: str) -> None:
    """Raise the named builtin exception: only ConnectionError is retried."""
    import builtins

    raise getattr(builtins, exception_name)("raised on purpose")


@job(max_attempts=1, takes_context=True)
def snooze_once(context) -> int:
    """Ask to run again later on the first attempt, then succeed."""
    from django_jobs.exceptions import Snooze

    if context.attempt == 1:
        raise Snooze(0)
    return context.attempt


@job(max_attempts=2, takes_context=True)
def retry_explicitly(context) -> int:
    from django_jobs.exceptions import Retry

    if context.attempt == 1:
        raise Retry("not yet", after=0)
    return context.attempt


@job(atomic=True, max_attempts=1)
def atomic_write(key: str, fail: bool = False) -> str:
    """Write a ledger row in the job's own transaction."""
    from .models import LedgerEntry

    LedgerEntry.objects.create(key=key)
    if fail:
        raise RuntimeError("fails after writing: the write must roll back")
    return key


@job(atomic=True, max_attempts=1, takes_context=True)
def atomic_superseded(context, key: str) -> str:
    """Write a row, then let another "worker" take the job over before we finish."""
    from django.db import connections

    from django_jobs.worker import dbconn

    from .models import LedgerEntry

    LedgerEntry.objects.create(key=key)
    # As if the job had been rescued and claimed again meanwhile: the attempt moves on.
    other = dbconn.connect(connections["default"].alias, purpose="test")
    try:
        other.execute(
            "UPDATE django_jobs_job SET attempts = attempts + 1 WHERE id = %s",
            [int(context.task_result.id)],
        )
    finally:
        other.close()
    return key


_HOARD: list[bytearray] = []


@task
def hoard_memory(megabytes: int) -> int:
    """Keep ``megabytes`` allocated in this process (a leak); return the process id."""
    import os

    block = bytearray(megabytes * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page so it is resident
    _HOARD.append(block)
    return os.getpid()
