"""F1 (a rate-limited drain: how close to its rate, and never above it) and F2 (a drain
of jobs under concurrency keys: what one slot per key costs).

Both run the test project's flow-control examples (``testproject/example/flow_tasks``)
in workers that declare them, so the limited claim and the slot give-backs are on
the path being measured.
"""

import math
import time
from typing import Any

from bench import db, drain, measure
from bench.context import Context
from bench.report import print_table
from bench.workerproc import WorkerProcess

RATED = "testproject.example.flow_tasks.rated_noop"
KEYED = "testproject.example.flow_tasks.keyed_by"
#: rated_noop's rate_limit: "100/s".
RATE = 100
WORKERS = 2


def max_in_any_second(starts: list[float]) -> int:
    """The most starts in any one-second window (a window beginning at each start)."""
    best = 0
    j = 0
    for i, start in enumerate(starts):
        while j < len(starts) and starts[j] < start + 1.0:
            j += 1
        best = max(best, j - i)
    return best


def run_f1(ctx: Context) -> dict[str, Any]:
    """F1: N jobs of a task limited to 100 a second, drained by two ``runjobs``
    (``--concurrency 2`` each): the rate achieved from the rows' start times over whole
    periods, and the most starts in any one second, which must not pass 100. A rate
    frees up with time, and idle workers see it at their next poll: the full run drains
    once with the default poll interval (1 s) and once with ``--poll-interval 0.2``.
    """
    runs = [drain_rated(ctx, [])]
    if not ctx.sizes.quick:
        runs.append(drain_rated(ctx, ["--poll-interval", "0.2"]))
    print_table(
        f"F1 rate-limited drain ({RATE}/s, {WORKERS} workers x --concurrency 2)",
        [
            "poll s",
            "jobs",
            "first to last start s",
            "at best s",
            "jobs/s over whole periods",
            "of the limit",
            "most in any 1 s",
        ],
        [
            [
                r["poll_interval_s"],
                r["jobs"],
                r["span_s"],
                r["ideal_span_s"],
                r["achieved_per_s"],
                r["accuracy"],
                r["max_starts_in_any_second"],
            ]
            for r in runs
        ],
    )
    return {
        "runs": runs,
        "accuracy": runs[-1]["accuracy"],
        "accuracy_default_poll": runs[0]["accuracy"],
        "max_starts_in_any_second": max(r["max_starts_in_any_second"] for r in runs),
    }


def drain_rated(ctx: Context, extra: list[str]) -> dict[str, Any]:
    """Drain F1's jobs with two workers given ``extra`` arguments; check and measure."""
    from testproject.example import flow_tasks

    jobs = ctx.sizes.f1_jobs
    poll = float(extra[1]) if extra else 1.0
    db.reset_jobs()
    flow_tasks.rated_noop.enqueue_many([((), {})] * jobs)
    db.analyze()
    timeout = jobs / RATE * 4 + 60
    with ctx.connect() as conn:
        workers = [
            WorkerProcess(
                [*drain.PROCESSES, *extra], ctx.log_dir / f"F1_worker_{n}.log", drain.DECLARING
            )
            for n in range(WORKERS)
        ]
        try:
            for worker in workers:
                worker.__enter__()
            deadline = time.monotonic() + timeout
            while True:
                (left,) = conn.execute(
                    "SELECT count(*) FROM django_jobs_job WHERE state <> 'SUCCESSFUL'"
                ).fetchone()
                if not left:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"F1: {left} of {jobs} jobs left after {timeout:.0f} s")
                for worker in workers:
                    worker.ensure_running()
                time.sleep(0.2)
            for worker in workers:
                worker.stop()
        finally:
            for worker in workers:
                worker.__exit__(None, None, None)
        starts = [
            row[0]
            for row in conn.execute(
                "SELECT extract(epoch FROM last_attempted_at)::float8 FROM django_jobs_job "
                "WHERE task_path = %s AND last_attempted_at IS NOT NULL ORDER BY 1",
                [RATED],
            ).fetchall()
        ]
        attempts = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE attempts = 1 AND state = 'SUCCESSFUL') "
            "FROM django_jobs_job WHERE task_path = %s",
            [RATED],
        ).fetchone()
    db.reset_jobs()
    peak = max_in_any_second(starts)
    span = starts[-1] - starts[0] if len(starts) > 1 else None
    # A rate of 100/s lets 100 start at once and the next 100 a period later, so N jobs
    # need at least (ceil(N / 100) - 1) periods from the first start to the last, and
    # deliver N over that span plus the last period.
    ideal = (math.ceil(len(starts) / RATE) - 1) * 1.0
    achieved = len(starts) / (span + 1.0) if span is not None else None
    efficiency = ideal / span if span else None
    ctx.check(
        f"F1 (poll {poll:g} s): no second holds more starts than the rate allows",
        peak <= RATE,
        f"{peak} starts in one second under a limit of {RATE}/s",
    )
    ctx.check(
        f"F1 (poll {poll:g} s): every job ran once",
        attempts == (jobs, jobs),
        f"{attempts[1]} of {attempts[0]} rows SUCCESSFUL after one attempt, {jobs} enqueued",
    )
    accuracy = achieved / RATE if achieved else None
    return {
        "jobs": jobs,
        "poll_interval_s": poll,
        "limit_per_s": RATE,
        "workers": WORKERS,
        "span_s": round(span, 3) if span else None,
        "ideal_span_s": ideal,
        "span_efficiency": round(efficiency, 3) if efficiency else None,
        "achieved_per_s": round(achieved, 1) if achieved else None,
        "accuracy": round(accuracy, 3) if accuracy else None,
        "max_starts_in_any_second": peak,
    }


def run_f2(ctx: Context) -> dict[str, Any]:
    """F2: N no-op jobs over K concurrency keys, one running per key, drained like S1
    (one ``runjobs --burst --concurrency 2``): throughput and costs per job beside S1's.
    """
    jobs, keys = ctx.sizes.f2_jobs, ctx.sizes.f2_keys

    def seed(count: int) -> tuple[int, int]:
        db.execute(
            """
            INSERT INTO django_jobs_job (
                task_path, queue_name, priority, state, backend, args, kwargs,
                available_at, enqueued_at, attempts, max_attempts, worker_ids, errors,
                flow, concurrency_key, concurrency_limit
            )
            SELECT %(task)s, 'default', 0, 'READY', 'default',
                   jsonb_build_array('k-' || (g %% %(keys)s)), '{}', now(), now(), 0, 1,
                   '[]', '[]', 'limited', 'k-' || (g %% %(keys)s), 1
            FROM generate_series(1, %(count)s) AS g
            """,
            {"task": KEYED, "keys": keys, "count": count},
        )
        return db.fetchone("SELECT min(id), max(id) FROM django_jobs_job")

    result, _, _ = drain.drain(
        ctx, "F2 keyed drain", jobs, drain.PROCESSES, env=drain.DECLARING, seed=seed
    )
    left = db.fetchone(
        "SELECT count(*) FROM django_jobs_limiter WHERE running <> 0 OR parked <> 0 OR wake"
    )[0]
    ctx.check("F2: every key's count is back to zero", left == 0, f"{left} key rows count jobs")
    db.reset_jobs()
    s1 = ctx.results.get("S1", {}).get("median_jobs_per_s_draining")
    rate = result["jobs_per_s_draining"]
    ratio = rate / s1 if rate and s1 else None
    print_table(
        f"F2 drain under {keys} concurrency keys, one running per key",
        [*drain.DRAIN_HEADERS, "ratio to S1"],
        [[*row, ratio] for row in drain.drain_rows([result], "keyed")],
    )
    return {
        **result,
        "keys": keys,
        "ratio_to_s1": round(ratio, 3) if ratio else None,
        "median_drain": measure.median([rate] if rate else []),
    }
