"""S1 (drain), S5 (drain with history in the table) and RSS (memory over a long drain).

A drain is: empty table, N no-op jobs created with the bulk API, ANALYZE, then one
``runjobs --burst`` subprocess that exits when nothing is left. The figure that
matters is jobs/s *while draining* (max(finished_at) - min(started_at), both from
the rows), reported with start-up included too; the costs per job (CPU split between
PostgreSQL and the worker tree, WAL bytes, transactions) say where the time goes.
"""

import time
from collections.abc import Callable
from typing import Any

from bench import db, measure
from bench.context import Context
from bench.report import print_table
from bench.workerproc import WorkerProcess
from django_jobs.protocol import jobs as sql

PROCESSES = ["--concurrency", "2"]
THREADS = ["--pool", "threads", "--concurrency", "2"]
#: The worker's environment for a drain of jobs with no limit in a process that declares
#: none (the test project's flow-control examples left out): the plain claim, as the
#: scenarios measured before limits existed. DECLARING leaves them in.
NO_LIMITS = {"JOBS_TASK_MODULES": ""}
DECLARING: dict[str, str] = {}


def drain(
    ctx: Context,
    label: str,
    jobs: int,
    worker_args: list[str],
    *,
    reset: bool = True,
    generated: bool = False,
    before_start: Callable[[], None] | None = None,
    sample_interval: float = 0.25,
    env: dict[str, str] | None = None,
    seed: Callable[[int], tuple[int, int]] | None = None,
) -> tuple[dict[str, Any], measure.ProcessTreeSampler, tuple[int, int]]:
    """Drain ``jobs`` fresh no-op jobs with one ``runjobs --burst``; check exactly-once.

    The jobs are created with ``enqueue_many``, or with one INSERT … SELECT when
    ``generated`` (the same rows, faster for a million). Returns the figures, the
    process-tree sampler (RSS over time) and the jobs' id range.
    """
    if reset:
        db.reset_jobs()
    if seed is not None:
        low, high = seed(jobs)
    elif generated:
        (floor,) = db.fetchone("SELECT coalesce(max(id), 0) FROM django_jobs_job")
        db.insert_generated(ready=jobs)
        low, high = db.fetchone(
            "SELECT min(id), max(id) FROM django_jobs_job WHERE id > %s", [floor]
        )
    else:
        low, high = db.enqueue_noop(jobs, batch=ctx.sizes.seed_batch)
    db.analyze()
    if before_start is not None:
        before_start()
    with ctx.connect() as conn:
        before = ctx.counters(conn)
        pg_cpu_before = measure.postgres_cpu_seconds(ctx.postmaster_pid)
        cpu_before = measure.rusage_children_cpu()
        log = ctx.log_dir / f"{label.replace(' ', '_')}.log"
        with WorkerProcess(
            ["--burst", *worker_args], log, NO_LIMITS if env is None else env
        ) as worker:
            sampler = measure.ProcessTreeSampler(worker.pid, sample_interval).start()
            try:
                code = worker.wait(ctx.sizes.drain_timeout_s)
            finally:
                sampler.stop()
            ended = time.time()
            started = worker.started_at or ended
            tail = worker.log_tail()
        worker_cpu = measure.rusage_children_cpu() - cpu_before
        # The worker's server process exits (and reports its counters) just after it.
        time.sleep(0.3)
        pg_cpu_after = measure.postgres_cpu_seconds(ctx.postmaster_pid)
        after = ctx.counters(conn)
        wal = measure.wal_bytes(conn, before, after)
    stats = db.job_stats(low, high)
    problems = db.exactly_once_problems(stats, jobs)
    ctx.check(f"{label}: every job done exactly once", not problems, "; ".join(problems))
    ctx.check(f"{label}: runjobs --burst exited 0", code == 0, f"exit {code}; log:\n{tail}")
    done = max(1, stats["successful"])
    busy = stats["busy_s"]
    sampled_cpu = sampler.tree_cpu()
    pg_cpu = (
        pg_cpu_after - pg_cpu_before
        if pg_cpu_after is not None and pg_cpu_before is not None
        else None
    )
    statements = (
        after.statement_calls - before.statement_calls
        if after.statement_calls is not None and before.statement_calls is not None
        else None
    )
    active = (
        after.active_ms - before.active_ms
        if after.active_ms is not None and before.active_ms is not None
        else None
    )
    result = {
        "jobs": jobs,
        "worker_args": ["--burst", *worker_args],
        "jobs_per_s_draining": round(stats["successful"] / busy) if busy else None,
        "jobs_per_s_including_startup": round(stats["successful"] / (ended - started)),
        "drain_s": round(busy, 3) if busy else None,
        "startup_s": round(stats["first_start_epoch"] - started, 3)
        if stats["first_start_epoch"]
        else None,
        "shutdown_s": round(ended - stats["last_finish_epoch"], 3)
        if stats["last_finish_epoch"]
        else None,
        "worker_cpu_s_per_1000": round(worker_cpu / done * 1000, 4),
        # Cross-check of RUSAGE_CHILDREN: the last /proc reading of every pid of the tree.
        "worker_cpu_sampled_s_per_1000": round(sampled_cpu / done * 1000, 4),
        "worker_cpu_supervisor_sampled_s_per_1000": round(
            sampler.last_cpu.get(sampler.root, 0.0) / done * 1000, 4
        ),
        "rusage_covers_children": worker_cpu >= 0.9 * sampled_cpu,
        "postgres_cpu_s_per_1000": None if pg_cpu is None else round(pg_cpu / done * 1000, 4),
        # This database only, statements running: the figure a shared server leaves clean.
        "postgres_active_ms_per_1000": None if active is None else round(active / done * 1000, 2),
        "wal_bytes_per_job": round(wal / done, 1),
        "xacts_per_job": round((after.xact_commit - before.xact_commit) / done, 4),
        "statements_per_job": None if statements is None else round(statements / done, 4),
        "peak_rss_kib_any_process": max(sampler.peak_hwm_kib.values(), default=None),
        "exit_code": code,
    }
    return result, sampler, (low, high)


def drain_rows(runs: list[dict[str, Any]], name: str) -> list[list[Any]]:
    return [
        [
            f"{name} #{n + 1}",
            r["jobs"],
            r["jobs_per_s_draining"],
            r["jobs_per_s_including_startup"],
            r["startup_s"],
            r["shutdown_s"],
            r["worker_cpu_s_per_1000"],
            r["postgres_cpu_s_per_1000"],
            r.get("postgres_active_ms_per_1000"),
            r["wal_bytes_per_job"],
            r["xacts_per_job"],
        ]
        for n, r in enumerate(runs)
    ]


DRAIN_HEADERS = [
    "run",
    "jobs",
    "jobs/s draining",
    "jobs/s incl. start/stop",
    "start-up s",
    "shutdown s",
    "worker CPU s/1000",
    "PG CPU s/1000",
    "PG active ms/1000",
    "WAL B/job",
    "xacts/job",
]


def run_s1(ctx: Context) -> dict[str, Any]:
    """S1: drain N no-op jobs with ``runjobs --burst --concurrency 2`` (repeated in the
    full run; the median counts), and once with the thread pool (``--pool threads
    --concurrency 2``: the same supervisor, jobs on its own threads).
    """
    jobs = ctx.sizes.s1_jobs
    processes = []
    declaring = []
    # The full run alternates with a process that declares limits (the limited claim
    # then runs now and then), so both see the same load on a shared machine.
    for n in range(ctx.sizes.repeats):
        processes.append(drain(ctx, f"S1 processes run {n + 1}", jobs, PROCESSES)[0])
        if not ctx.sizes.quick:
            declaring.append(
                drain(ctx, f"S1 declaring limits run {n + 1}", jobs, PROCESSES, env=DECLARING)[0]
            )
    threads = [drain(ctx, "S1 threads", jobs, THREADS)[0]]
    db.reset_jobs()
    for r in processes + threads:
        if not r["rusage_covers_children"]:
            ctx.note("RUSAGE_CHILDREN covered less than the sampled worker tree's CPU")
    print_table(
        "S1 drain no-op jobs (runjobs --burst)",
        DRAIN_HEADERS,
        drain_rows(processes, "processes")
        + drain_rows(declaring, "declaring limits")
        + drain_rows(threads, "threads"),
    )
    rates = [r["jobs_per_s_draining"] for r in processes if r["jobs_per_s_draining"]]
    startups = [r["startup_s"] for r in processes if r["startup_s"] is not None]
    with_limits = [r["jobs_per_s_draining"] for r in declaring if r["jobs_per_s_draining"]]
    return {
        "processes": {"runs": processes, "median_jobs_per_s_draining": measure.median(rates)},
        "declaring_limits": {
            "runs": declaring,
            "median_jobs_per_s_draining": measure.median(with_limits),
            "median_worker_cpu_s_per_1000": measure.median(
                [r["worker_cpu_s_per_1000"] for r in declaring]
            ),
            "median_postgres_active_ms_per_1000": _median_of(
                declaring, "postgres_active_ms_per_1000"
            ),
        },
        "median_worker_cpu_s_per_1000": measure.median(
            [r["worker_cpu_s_per_1000"] for r in processes]
        ),
        "median_postgres_active_ms_per_1000": _median_of(processes, "postgres_active_ms_per_1000"),
        "threads": {"runs": threads},
        "median_jobs_per_s_draining": measure.median(rates),
        # From starting runjobs to the first job claimed (by the rows' own started_at).
        "median_startup_s": measure.median(startups),
        "counting": "statements (pg_stat_statements)" if ctx.statements_available else "xacts",
    }


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    return measure.median([r[key] for r in runs if r.get(key) is not None])


def explain_claim(ctx: Context) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the real claim statement, rolled back (ANALYZE runs it)."""
    with ctx.connect() as conn, conn.transaction(force_rollback=True):
        rows = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS) " + sql.CLAIM_ANY_QUEUE,
            {"worker_id": "bench-explain", "backend": "default", "limit": 50},
        ).fetchall()
    return "\n".join(row[0] for row in rows)


def run_s5(ctx: Context) -> dict[str, Any]:
    """S5: S1's drain with a large history in the table: finished rows plus READY rows due
    in a day (which the claim must step over). Claiming must not notice them: the
    claim plan has to read the partial index on READY rows, never scan the table.
    """
    sizes = ctx.sizes
    db.reset_jobs()
    began = time.perf_counter()
    db.insert_generated(successful=sizes.s5_history, future=sizes.s5_future)
    insert_s = time.perf_counter() - began
    began = time.perf_counter()
    db.execute("VACUUM ANALYZE django_jobs_job")
    vacuum_s = time.perf_counter() - began
    plan: list[str] = []

    def explain() -> None:
        plan.append(explain_claim(ctx))

    result, _, _ = drain(
        ctx, "S5 drain with history", sizes.s1_jobs, PROCESSES, reset=False, before_start=explain
    )
    text = plan[0] if plan else ""
    print(
        f"\nS5 claim plan (EXPLAIN ANALYZE, BUFFERS; limit 50) with "
        f"{sizes.s5_history:,} finished + {sizes.s5_future:,} future rows:\n{text}"
    )
    uses_index = "django_jobs_job_claim" in text and "Seq Scan on django_jobs_job" not in text
    ctx.check(
        "S5: the claim reads the partial index, no Seq Scan on django_jobs_job", uses_index, text
    )
    future_left = db.fetchone(
        "SELECT count(*) FROM django_jobs_job"
        " WHERE state = 'READY' AND available_at > now() AND attempts = 0"
    )[0]
    ctx.check(
        "S5: future jobs were left alone",
        future_left == sizes.s5_future,
        f"{future_left} of {sizes.s5_future} still READY in the future",
    )
    db.reset_jobs()
    s1 = ctx.results.get("S1", {}).get("median_jobs_per_s_draining")
    rate = result["jobs_per_s_draining"]
    ratio = rate / s1 if rate and s1 else None
    print_table(
        "S5 drain with history",
        [*DRAIN_HEADERS, "ratio to S1"],
        [[*row, ratio] for row in drain_rows([result], "history")],
    )
    return {
        **result,
        "history_rows": sizes.s5_history,
        "future_rows": sizes.s5_future,
        "insert_s": round(insert_s, 2),
        "vacuum_analyze_s": round(vacuum_s, 2),
        "ratio_to_s1": round(ratio, 3) if ratio else None,
        "claim_plan": text,
        "claim_uses_partial_index": uses_index,
    }


def run_rss(ctx: Context) -> dict[str, Any]:
    """RSS of the supervisor and its children after the first 10,000 jobs and at the end
    of a long drain (VmRSS sampled from /proc; VmHWM for the peak). Flat within 10%
    means no leak. The drain is capped at what S1's rate does in the time budget.
    """
    sizes = ctx.sizes
    rate, measured = ctx.drain_rate(default=2_000.0)
    jobs = min(sizes.rss_jobs, max(sizes.rss_checkpoint * 2, int(rate * sizes.rss_budget_s)))
    if jobs < sizes.rss_jobs:
        ctx.note(
            f"RSS drain cut to {jobs:,} jobs (of {sizes.rss_jobs:,}): "
            f"{rate:,.0f} jobs/s {'from S1' if measured else 'assumed'} "
            f"x {sizes.rss_budget_s:.0f} s budget"
        )
    result, sampler, (low, high) = drain(
        ctx,
        "RSS drain",
        jobs,
        PROCESSES,
        generated=True,
        sample_interval=0.25 if sizes.quick else 0.5,
    )
    # Jobs finished by each sample's time, from the rows (0.1 s buckets).
    with ctx.connect() as conn:
        buckets = conn.execute(
            "SELECT floor(extract(epoch FROM finished_at) * 10)::bigint, count(*)"
            " FROM django_jobs_job WHERE id BETWEEN %s AND %s AND finished_at IS NOT NULL"
            " GROUP BY 1 ORDER BY 1",
            [low, high],
        ).fetchall()
    db.reset_jobs()
    cumulative: list[tuple[float, int]] = []
    total = 0
    for bucket, count in buckets:
        total += count
        cumulative.append(((bucket + 1) / 10, total))

    def done_by(t: float) -> int:
        n = 0
        for end, count in cumulative:
            if end > t:
                break
            n = count
        return n

    last_finish = cumulative[-1][0] if cumulative else 0.0
    live = [s for s in sampler.samples if s.children_kib and s.t <= last_finish]
    first = next((s for s in live if done_by(s.t) >= sizes.rss_checkpoint), None)
    final = live[-1] if live else None
    if first is None or final is None or first is final:
        ctx.note("RSS: not enough samples to compare")
        return {**result, "growth_pct": None}
    children_first = sum(first.children_kib.values())
    children_final = sum(final.children_kib.values())
    sup_growth = (final.supervisor_kib - first.supervisor_kib) / first.supervisor_kib * 100
    child_growth = (children_final - children_first) / children_first * 100
    peak_supervisor = max(s.supervisor_kib for s in sampler.samples)
    peak_children = max(sum(s.children_kib.values()) for s in sampler.samples)
    rows = [
        [
            "supervisor",
            done_by(first.t),
            first.supervisor_kib,
            done_by(final.t),
            final.supervisor_kib,
            peak_supervisor,
            sup_growth,
        ],
        [
            f"children ({len(final.children_kib)}, sum)",
            done_by(first.t),
            children_first,
            done_by(final.t),
            children_final,
            peak_children,
            child_growth,
        ],
    ]
    print_table(
        "RSS of the worker tree (KiB)",
        ["process", "after jobs", "RSS", "after jobs", "RSS", "peak RSS", "growth %"],
        rows,
    )
    return {
        **result,
        "jobs_reached": total,
        "checkpoint_jobs": done_by(first.t),
        "final_jobs": done_by(final.t),
        "supervisor_kib": {
            "at_checkpoint": first.supervisor_kib,
            "final": final.supervisor_kib,
            "peak_sampled": peak_supervisor,
        },
        "children_kib": {
            "at_checkpoint": first.children_kib,
            "final": final.children_kib,
            "peak_sampled_sum": peak_children,
        },
        "vmhwm_kib": sampler.peak_hwm_kib,
        "supervisor_growth_pct": round(sup_growth, 2),
        "children_growth_pct": round(child_growth, 2),
        "growth_pct": round(max(sup_growth, child_growth), 2),
    }
