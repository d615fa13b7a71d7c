"""Example tasks: Django's own ``@task`` and our ``@job`` side by side."""

import asyncio
import time

from django.core.mail import send_mail

from django_jobs import job
from django_jobs.compat import task


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
async def async_sleep(seconds: float) -> float:
    """Waits on the event loop: the asyncio pool runs hundreds of these at once."""
    await asyncio.sleep(seconds)
    return seconds


@job(timeout=1.0, max_attempts=1)
async def async_block_the_loop(seconds: float = 60) -> None:
    """Blocks its event loop (a sync sleep in async code): only the hard limit stops it."""
    time.sleep(seconds)


@job(soft_timeout=0.5, timeout=5.0, max_attempts=1)
async def async_overrun_soft_limit(seconds: float = 3) -> str:
    """Cancelled at its soft limit; cleans up and returns, so the attempt succeeds."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        return "cleaned up after the soft limit"
    return "finished"


@job(cancel_grace=1.5, max_attempts=1)
async def async_ignore_cancel(seconds: float = 60) -> float:
    """Awaits and never looks at cancel_requested: the asyncio pool cancels its coroutine."""
    await asyncio.sleep(seconds)
    return seconds


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


@task
def fan_out(count: int) -> int:
    """Enqueue ``count`` more jobs: run_jobs() must run them too."""
    add.enqueue_many([((n, n), {}) for n in range(count)])
    return count


@task
def enqueue_myself() -> None:
    """A job that enqueues itself again, for ever: the test helpers must stop it."""
    enqueue_myself.enqueue()


# ── workflows, progress, cancellation (docs/howto/workflows.md and friends) ──────────


@task
def mul(a: int, b: int) -> int:
    return a * b


@task
def total(numbers: list[int]) -> int:
    """A chord's callback: add up its members' results."""
    return sum(numbers)


@task
def collect(values: list) -> list:
    """A chord's callback that returns what it got, to check the order."""
    return values


@job(max_attempts=2, retry_base_delay=0.01)
def fails_on(value: int, bad: int) -> int:
    """Return ``value``, or fail (after a retry) when it is ``bad``."""
    if value == bad:
        raise ValueError(f"{value} is the bad value")
    return value


@task
def report_failure(step_id: str, error: dict, channel: str = "ops") -> str:
    """A workflow's on_error: note which step failed, once per run (Execution rows)."""
    from .models import Execution

    Execution.objects.create(key=f"on_error:{step_id}:{error['exception_class_path']}", pid=0)
    return channel


@job(takes_context=True, cancel_grace=5)
def crunch(context, steps: int, pause: float = 0.05) -> int:
    """Work in steps, reporting progress, and stop early when cancelled (cooperative)."""
    for done in range(steps):
        if context.cancel_requested:
            return done
        context.set_progress(done, steps, f"step {done} of {steps}")
        time.sleep(pause)
    context.set_progress(steps, steps, "done")
    return steps


@job(cancel_grace=1)
def stubborn(seconds: float) -> float:
    """Ignore cancellation (uncooperative): the worker kills it after its 1 s grace."""
    time.sleep(seconds)
    return seconds


@task
def fetch_page(number: int) -> dict:
    """The demo chord's member: pretend to fetch a page and count its words."""
    from django_jobs import set_progress

    time.sleep(0.05)
    set_progress(1, 1, f"page {number} fetched")
    return {"page": number, "words": 100 + number % 17}


@task
def merge_pages(pages: list[dict]) -> dict:
    """The demo chord's callback: one summary of all the pages, in page order."""
    return {"pages": len(pages), "words": sum(p["words"] for p in pages)}


@job(max_attempts=1)
def fails_until_retried(key: str) -> str:
    """Fail for good the first time (leaving a ledger row), succeed when run again."""
    from .models import LedgerEntry

    _, created = LedgerEntry.objects.get_or_create(key=key)
    if created:
        raise RuntimeError(f"{key}: the first run fails")
    return key


@task
def record_callback(values: list, key: str) -> int:
    """A chord's callback that logs each of its runs (Execution rows): must run once."""
    import os

    from .models import Execution

    Execution.objects.create(key=key, pid=os.getpid())
    return len(values)


@job(max_attempts=3)
def slow_square(number: int, milliseconds: int = 20) -> int:
    """A chord member that takes a little time and may safely run twice (after a rescue)."""
    time.sleep(milliseconds / 1000)
    return number * number


@task
def count_results(values: list) -> int:
    """The benchmark chord's callback: how many results it received."""
    return len(values)


@job(atomic=True, max_attempts=3, takes_context=True)
def timed_attempt(context, seconds: float, log_path: str) -> int:
    """Log this attempt's start, a tick every 0.1 s and its end to a file every worker
    shares (one JSON line each, with wall-clock times: one host), and write a ledger row
    in the job's transaction. The fencing tests read from the file that no two attempts
    of one job ever ran at the same time, and count the rows: one per job."""
    import json
    import os

    from .models import LedgerEntry

    job_id = int(context.task_result.id)

    def log(event: str) -> None:
        line = {"job": job_id, "attempt": context.attempt, "pid": os.getpid(), "event": event}
        with open(log_path, "a") as out:
            out.write(json.dumps({**line, "t": time.time()}) + "\n")

    log("start")
    LedgerEntry.objects.create(key=f"timed-{job_id}", job_attempt=context.attempt)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.1)
        log("tick")
    log("end")
    return context.attempt


# ── several hosts and a partition (tests/process/test_partition.py) ─────────────────


def journal(path: str, **record: object) -> None:
    """Append one JSON line to ``path``: one write of under 4 KiB with O_APPEND, so lines
    from processes on different "hosts" (network namespaces share the filesystem) never
    interleave."""
    import json
    import os

    record.update(pid=os.getpid(), host=os.environ.get("JOBS_TEST_HOST", ""), t=time.time())
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@job(atomic=True, max_attempts=3, takes_context=True)
def partition_probe(context, seconds: float, journal_path: str, tick: float = 0.2) -> str:
    """Run ``seconds``, journaling start, a tick every ``tick`` s, and the end; commit one
    Execution row with the success (atomic), so a refused or killed attempt leaves none.
    The journal shows when each attempt really ran, on which host."""
    import os

    from .models import Execution

    job_id, attempt = int(context.task_result.id), context.attempt
    began = time.time()
    journal(journal_path, event="start", job=job_id, attempt=attempt)
    while (elapsed := time.time() - began) < seconds:
        time.sleep(min(tick, seconds - elapsed))
        journal(journal_path, event="tick", job=job_id, attempt=attempt)
    Execution.objects.create(
        key=f"probe-{job_id}", pid=os.getpid(), started=began, finished=time.time()
    )
    journal(journal_path, event="end", job=job_id, attempt=attempt)
    return os.environ.get("JOBS_TEST_HOST", "")
