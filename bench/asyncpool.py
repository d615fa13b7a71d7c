"""S7: async tasks that wait, run concurrently by one child with ``--pool asyncio``.

2,000 jobs that each ``await asyncio.sleep(0.1)``, one ``runjobs --burst --pool asyncio
--concurrency 200`` (one child, 200 jobs at once). Run one at a time they would take
200 s; 200 at a time, 1 s plus the pool's own cost. The figure is the drain
(max(finished_at) - min(started_at)), and the most jobs seen running at once.
"""

from typing import Any

from bench import db
from bench.context import Context
from bench.report import print_table
from bench.workerproc import WorkerProcess

JOBS = 2_000
SLEEP = 0.1
CONCURRENCY = 200


def run_s7(ctx: Context) -> dict[str, Any]:
    from django.db import transaction

    from testproject.example import tasks

    db.reset_jobs()
    with transaction.atomic():
        results = tasks.async_sleep.enqueue_many([((SLEEP,), {})] * JOBS)
    low, high = int(results[0].id), int(results[-1].id)
    db.analyze()
    args = ["--burst", "--pool", "asyncio", "--concurrency", str(CONCURRENCY)]
    with WorkerProcess(args, ctx.log_dir / "S7_asyncio.log") as worker:
        code = worker.wait(ctx.sizes.drain_timeout_s)
        tail = worker.log_tail()
    stats = db.job_stats(low, high)
    problems = db.exactly_once_problems(stats, JOBS)
    ctx.check("S7 asyncio pool: every job done exactly once", not problems, "; ".join(problems))
    ctx.check("S7 asyncio pool: runjobs --burst exited 0", code == 0, f"exit {code}; {tail}")
    # The most jobs running at one instant, from the rows' own start and finish times.
    (overlap,) = db.fetchone(
        """
        SELECT max(running) FROM (
            SELECT sum(delta) OVER (ORDER BY at, delta) AS running FROM (
                SELECT started_at AS at, 1 AS delta FROM django_jobs_job
                WHERE id BETWEEN %(low)s AND %(high)s
                UNION ALL
                SELECT finished_at, -1 FROM django_jobs_job
                WHERE id BETWEEN %(low)s AND %(high)s
            ) AS events
        ) AS counted
        """,
        {"low": low, "high": high},
    )
    result = {
        "jobs": JOBS,
        "sleep_s": SLEEP,
        "concurrency": CONCURRENCY,
        "drain_s": round(stats["busy_s"], 3) if stats["busy_s"] else None,
        "most_running_at_once": int(overlap or 0),
        "exit_code": code,
    }
    db.reset_jobs()
    print_table(
        "S7 --pool asyncio, one child, 200 at once: 2,000 jobs of asyncio.sleep(0.1)",
        ["jobs", "drain s", "most running at once", "one at a time would take"],
        [[JOBS, result["drain_s"], result["most_running_at_once"], f"{JOBS * SLEEP:.0f} s"]],
    )
    return result
