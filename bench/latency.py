"""S4: how long a job waits between its enqueue's COMMIT and the start of its task.

A latency is ``started_at`` (set by the claim, from the database clock) minus a
timestamp taken just before COMMIT: an upper bound that includes the commit itself
(after it, the worker may already have started the job). Same host, same clock.

* sequential jobs with LISTEN on (``--poll-interval 60``: polling cannot help),
* an open-loop offered load (100 jobs/s regardless of how the worker keeps up),
* sequential jobs with ``--no-listen``: the latency must stay within the poll interval.
"""

import random
import time
from collections.abc import Callable
from typing import Any

from bench import db, measure
from bench.context import Context
from bench.report import print_table
from bench.workerproc import WorkerProcess

#: Pause between sequential samples, so each job finds the worker idle (its outcome
#: is flushed within a few milliseconds of the task's end).
IDLE_GAP = 0.02


def _enqueue_committed() -> tuple[int, float]:
    """Enqueue one no-op job in its own transaction; return its id and the pre-COMMIT time."""
    from django.db import transaction

    from testproject.example import tasks

    with transaction.atomic():
        job_id = int(tasks.noop.enqueue().id)
        committed = time.time()
    return job_id, committed


def sequential(
    samples: int, *, gap: Callable[[], float], timeout: float, check: Callable[[], None]
) -> list[float]:
    """One job at a time: enqueue, wait until it has started, pause ``gap()``; ms each."""
    delays = []
    for _ in range(samples):
        job_id, committed = _enqueue_committed()
        time.sleep(0.002)
        started = db.wait_for_started(job_id, timeout, check)
        delays.append((started.timestamp() - committed) * 1000)
        time.sleep(gap())
    return delays


def open_loop(
    rate: float, seconds: float, timeout: float, check: Callable[[], None]
) -> tuple[list[float], float]:
    """Offer ``rate`` jobs/s for ``seconds`` on a fixed schedule (never waiting for the
    worker); return each job's latency in ms and the rate actually offered.
    """
    count = int(rate * seconds)
    sent: dict[int, float] = {}
    began = time.perf_counter()
    for n in range(count):
        delay = began + n / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        job_id, committed = _enqueue_committed()
        sent[job_id] = committed
    offered = count / (time.perf_counter() - began)
    deadline = time.monotonic() + timeout
    ids = list(sent)
    while True:
        waiting = db.fetchone(
            "SELECT count(*) FROM django_jobs_job WHERE id = ANY(%s) AND started_at IS NULL",
            [ids],
        )[0]
        if not waiting:
            break
        check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{waiting} open-loop jobs had not started after {timeout:.0f} s")
        time.sleep(0.05)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, extract(epoch FROM started_at)::float8 FROM django_jobs_job"
            " WHERE id = ANY(%s)",
            [ids],
        )
        started = dict(cursor.fetchall())
    return [(started[i] - sent[i]) * 1000 for i in ids], offered


def _check_done(ctx: Context, label: str, low: int, high: int) -> None:
    stats = db.job_stats(low, high)
    problems = db.exactly_once_problems(stats, stats["rows"])
    ctx.check(f"{label}: every job done exactly once", not problems, "; ".join(problems))


def run_s4(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    db.reset_jobs()
    result: dict[str, Any] = {}
    with WorkerProcess(
        ["--concurrency", "2", "--poll-interval", "60"], ctx.log_dir / "S4_listen.log"
    ) as worker:
        alive = worker.ensure_running
        low = db.warm_up(alive)
        listen = sequential(sizes.s4_samples, gap=lambda: IDLE_GAP, timeout=10, check=alive)
        offered_ms, offered = open_loop(
            sizes.s4_open_rate, sizes.s4_open_seconds, timeout=60, check=alive
        )
        high = db.fetchone("SELECT max(id) FROM django_jobs_job")[0]
        result["listen_worker_exit"] = worker.stop()
    _check_done(ctx, "S4 LISTEN worker", low, high)
    result["listen"] = measure.latency_summary(listen)
    result["open_loop"] = {
        "offered_jobs_per_s": round(offered, 1),
        "seconds": sizes.s4_open_seconds,
        **measure.latency_summary(offered_ms),
    }

    interval = sizes.s4_poll_interval
    db.reset_jobs()
    args = ["--concurrency", "2", "--no-listen", "--poll-interval", str(interval)]
    with WorkerProcess(args, ctx.log_dir / "S4_poll.log") as worker:
        low = db.warm_up(worker.ensure_running)
        # A random pause puts each enqueue at a random point of the poll cycle.
        polled = sequential(
            sizes.s4_poll_samples,
            gap=lambda: random.uniform(0, interval),
            timeout=10 + interval,
            check=worker.ensure_running,
        )
        high = db.fetchone("SELECT max(id) FROM django_jobs_job")[0]
        result["poll_worker_exit"] = worker.stop()
    _check_done(ctx, "S4 polling worker", low, high)
    db.reset_jobs()
    # The worker jitters its poll by +-10%; allow the claim and its commit on top.
    bound_ms = interval * 1.1 * 1000 + 25
    poll = measure.latency_summary(polled)
    result["poll"] = {
        "poll_interval_s": interval,
        **poll,
        "bound_ms": bound_ms,
        "within_interval": poll["max_ms"] is not None and poll["max_ms"] <= bound_ms,
    }
    rows = []
    for name, r in (
        ("LISTEN, sequential", result["listen"]),
        (f"open loop {sizes.s4_open_rate:.0f}/s", result["open_loop"]),
        (f"--no-listen, poll {interval} s", result["poll"]),
    ):
        rows.append([name, r["samples"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["max_ms"]])
    print_table(
        "S4 latency, enqueue COMMIT -> task start (ms)",
        ["mode", "samples", "p50", "p95", "p99", "max"],
        rows,
    )
    return result
