"""S2 (enqueue one job per transaction from 4 threads) and S3 (bulk enqueue).

Both go through the public API an application calls (``Task.enqueue()`` inside
``transaction.atomic()``, ``enqueue_many``), so they include Django's and our Python
work per job, not just the INSERT. S2 is judged against R1's pgbench enqueue (the same
statement, no Python) and, above all, against the same statement written by hand with
psycopg in the same shape (4 threads, BEGIN, INSERT, COMMIT), measured in the same run;
S3 against an absolute rate.
"""

import threading
import time
from typing import Any

from bench import db, measure
from bench.context import Context
from bench.report import print_table


def _psycopg_enqueue(ctx: Context, total: int, threads: int) -> float:
    """Jobs/s of our ENQUEUE statement by hand: psycopg, one connection per thread, each
    job BEGIN, INSERT, COMMIT (the reference S2 is judged against)."""
    import psycopg

    from django_jobs.protocol import jobs

    params = {
        "task_path": db.NOOP_PATH,
        "queue_name": "default",
        "priority": 0,
        "backend": "default",
        "args_json": "[]",
        "kwargs_json": "{}",
        "run_after": None,
        "max_attempts": 1,
        "trace_context_json": None,
        "callback_url": None,
        # The proof of declaration our enqueue writes: a 32-digit hex text.
        "task_proof": "0" * 32,
    }
    shares = [total // threads + (1 if n < total % threads else 0) for n in range(threads)]
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with psycopg.connect(**ctx.conn_params) as conn:
                barrier.wait(timeout=60)
                for _ in range(shares[n]):
                    with conn.transaction():
                        conn.execute(jobs.ENQUEUE, params).fetchone()
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(threads)]
    for thread in workers:
        thread.start()
    barrier.wait(timeout=60)
    began = time.perf_counter()
    for thread in workers:
        thread.join(ctx.sizes.drain_timeout_s)
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    db.reset_jobs()
    return total / elapsed


def run_s2(ctx: Context) -> dict[str, Any]:
    """S2: ``noop.enqueue()`` in ``transaction.atomic()``, one job per transaction, from
    4 threads (each its own Django connection, closed at the end). Per-call latency
    is the whole atomic block: BEGIN, INSERT, COMMIT.
    """
    from django.db import connection, transaction

    from testproject.example import tasks

    total, threads = ctx.sizes.s2_jobs, ctx.sizes.s2_threads
    db.reset_jobs()
    shares = [total // threads + (1 if n < total % threads else 0) for n in range(threads)]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def work(n: int) -> None:
        try:
            connection.ensure_connection()
            barrier.wait(timeout=60)
            mine = latencies[n]
            for _ in range(shares[n]):
                began = time.perf_counter()
                with transaction.atomic():
                    tasks.noop.enqueue()
                mine.append((time.perf_counter() - began) * 1000)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()

    workers = [
        threading.Thread(target=work, args=(n,), name=f"bench-s2-{n}", daemon=True)
        for n in range(threads)
    ]
    for thread in workers:
        thread.start()
    barrier.wait(timeout=60)
    began = time.perf_counter()
    deadline = time.monotonic() + ctx.sizes.drain_timeout_s
    for thread in workers:
        thread.join(max(0.0, deadline - time.monotonic()))
    elapsed = time.perf_counter() - began
    if any(thread.is_alive() for thread in workers):
        raise TimeoutError("S2 enqueue threads did not finish in time")
    if errors:
        raise errors[0]
    rows = db.fetchone("SELECT count(*) FROM django_jobs_job WHERE state = 'READY'")[0]
    ctx.check("S2: one row per enqueue() call", rows == total, f"{rows} rows for {total} calls")
    db.reset_jobs()
    every = [ms for mine in latencies for ms in mine]
    summary = measure.latency_summary(every)
    result = {
        "jobs": total,
        "threads": threads,
        "jobs_per_s": round(total / elapsed),
        "elapsed_s": round(elapsed, 3),
        "call_p50_ms": summary["p50_ms"],
        "call_p99_ms": summary["p99_ms"],
        "call_max_ms": summary["max_ms"],
    }
    # The reference, right after, in the same shape: by hand with psycopg.
    result["psycopg_jobs_per_s"] = round(_psycopg_enqueue(ctx, total, threads))
    result["share_of_psycopg"] = round(result["jobs_per_s"] / result["psycopg_jobs_per_s"], 3)
    r1 = ctx.results.get("R1", {}).get("enqueue_one_per_transaction", {}).get("jobs_per_s")
    share = result["jobs_per_s"] / r1 if r1 else None
    print_table(
        "S2 enqueue(), one job per transaction, 4 threads",
        [
            "jobs",
            "threads",
            "jobs/s",
            "call p50 ms",
            "call p99 ms",
            "by hand (psycopg) jobs/s",
            "share of by hand",
            "share of R1 enqueue",
        ],
        [
            [
                total,
                threads,
                result["jobs_per_s"],
                summary["p50_ms"],
                summary["p99_ms"],
                result["psycopg_jobs_per_s"],
                f"{result['share_of_psycopg']:.0%}",
                None if share is None else f"{share:.0%}",
            ]
        ],
    )
    return result


def run_s3(ctx: Context) -> dict[str, Any]:
    """S3: ``noop.enqueue_many`` in batches, each batch in its own transaction.

    Statements per batch are counted twice: on the client (Django's execute wrapper:
    exact, min and max over all batches) and on the server (commits in
    pg_stat_database per batch), to show the cost per batch does not grow with its size.
    """
    from django.db import connection, transaction

    from testproject.example import tasks

    total, batch = ctx.sizes.s3_jobs, ctx.sizes.s3_batch
    db.reset_jobs()
    # Closing a connection reports its pending commit counts: start from a clean slate.
    connection.close()
    with ctx.connect() as conn:
        # Closed before the run too, so its own 2 commits (time zone, this reading) are
        # counted at once and subtracted below.
        before = ctx.counters(conn)
    connection.ensure_connection()
    per_batch: list[int] = []
    count = [0]

    def counting(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        count[0] += 1
        return execute(sql, params, many, context)

    calls = [((), {})] * batch
    began = time.perf_counter()
    with connection.execute_wrapper(counting):
        for start in range(0, total, batch):
            size = min(batch, total - start)
            count[0] = 0
            with transaction.atomic():
                tasks.noop.enqueue_many(calls if size == batch else calls[:size])
            per_batch.append(count[0])
    elapsed = time.perf_counter() - began
    connection.close()  # reports this connection's commits to the statistics
    time.sleep(0.3)
    with ctx.connect() as conn:
        after = ctx.counters(conn)
    rows = db.fetchone("SELECT count(*) FROM django_jobs_job")[0]
    ctx.check("S3: one row per job in enqueue_many", rows == total, f"{rows} rows for {total}")
    db.reset_jobs()
    batches = len(per_batch)
    xacts = (after.xact_commit - before.xact_commit - 2) / batches
    result = {
        "jobs": total,
        "batch_size": batch,
        "batches": batches,
        "jobs_per_s": round(total / elapsed),
        "elapsed_s": round(elapsed, 3),
        "statements_per_batch_min": min(per_batch),
        "statements_per_batch_max": max(per_batch),
        "xacts_per_batch": round(xacts, 3),
    }
    if ctx.statements_available and after.statement_calls is not None:
        calls_delta = after.statement_calls - (before.statement_calls or 0)
        result["server_statements_per_batch"] = round(calls_delta / batches, 3)
    print_table(
        "S3 enqueue_many (bulk), one transaction per batch",
        ["jobs", "batch", "jobs/s", "statements/batch (min-max)", "xacts/batch"],
        [
            [
                total,
                batch,
                result["jobs_per_s"],
                f"{min(per_batch)}-{max(per_batch)}",
                result["xacts_per_batch"],
            ]
        ],
    )
    return result
