"""References measured in the same run, so our figures read as ratios to what is possible.

* R1, the database's ceiling: ``pgbench`` running our own statements as literal SQL.
* R2, the framework-free ceiling: a hand-written psycopg loop (``bench/rawloop.py``)
  with the worker's statements and process shape.
* R3, the lean queue: a minimal table and a hand-written psycopg queue on it
  (``bench/leanqueue.py``): what the queue would cost with no table design and no
  per-job work of ours; every drain figure is also given as a share of it.
* R4, the wake-up floor: one connection LISTENs, another NOTIFYs.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import db, measure
from bench.context import Context
from bench.report import print_table
from django_jobs.protocol import jobs as sql

# ── R1: pgbench ─────────────────────────────────────────────────────────────


def _literal(value: Any) -> str:
    """A Python value as an SQL literal (strings quoted, None as NULL)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _fill(statement: str, values: dict[str, str]) -> str:
    """Replace the ``%(name)s`` placeholders of one of our statements with SQL text."""
    return statement % values


def pgbench_scripts(batch: int) -> dict[str, str]:
    """The pgbench scripts, generated from ``django_jobs.sql`` so they cannot drift.

    They mirror ``sql.ENQUEUE``, ``sql.CLAIM_ANY_QUEUE`` and ``sql.COMPLETE_MANY``
    statement for statement: the same text with the ``%(name)s`` parameters replaced by
    literals (pgbench has no bind parameters in simple mode). The claim's ids and
    attempts come back through ``\\gset`` as comma-separated text and go into the
    completion as ``ARRAY[:ids]``; each statement is its own transaction (autocommit),
    as in the worker. The claim is wrapped in a CTE only to aggregate its RETURNING
    rows into the one row ``\\gset`` needs.
    """
    enqueue = _fill(
        sql.ENQUEUE,
        {
            "task_path": _literal(db.NOOP_PATH),
            "queue_name": _literal("default"),
            "priority": "0",
            "backend": _literal("default"),
            "args_json": _literal("[]"),
            "kwargs_json": _literal("{}"),
            "run_after": "NULL",
            "max_attempts": "1",
            # The proof of declaration our enqueue writes: a 32-digit hex text.
            "task_proof": _literal("0" * 32),
            "trace_context_json": "NULL",
            "callback_url": "NULL",
        },
    )
    claim = _fill(
        sql.CLAIM_ANY_QUEUE,
        {"worker_id": _literal("bench-pgbench"), "backend": _literal("default"), "limit": batch},
    )
    complete = _fill(
        sql.COMPLETE_MANY,
        {
            "job_id": "ARRAY[:ids]",
            "attempt": "ARRAY[:attempts]",
            "return_json": "array_fill('null'::jsonb, ARRAY[:n])",
        },
    )
    claim_complete = (
        f"WITH claimed AS ({claim.strip()})\n"
        "SELECT count(*) AS n, coalesce(string_agg(id::text, ','), '') AS ids,\n"
        "       coalesce(string_agg(attempts::text, ','), '') AS attempts FROM claimed\n"
        "\\gset\n"
        f"{complete.strip()};\n"
    )
    return {"enqueue": enqueue.strip() + ";\n", "claim_complete": claim_complete}


def find_pgbench() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))
    return candidates[-1] if candidates else None


def _pgbench(
    ctx: Context, binary: str, script: Path, *, seconds: int, clients: int
) -> dict[str, Any]:
    params = ctx.conn_params
    args = [binary, "-n", "-f", str(script), "-T", str(seconds)]
    args += ["-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1))]
    for flag, key in (("-h", "host"), ("-p", "port"), ("-U", "user")):
        if params.get(key):
            args += [flag, str(params[key])]
    args.append(str(params.get("dbname", "")))
    env = dict(os.environ)
    if params.get("password"):
        env["PGPASSWORD"] = str(params["password"])
    done = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    processed = re.search(r"actually processed: (\d+)", done.stdout)
    if done.returncode != 0 or tps is None:
        raise RuntimeError(f"pgbench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return {
        "tps": float(tps.group(1)),
        "transactions": int(processed.group(1)) if processed else None,
        "clients": clients,
        "seconds": seconds,
    }


def run_r1(ctx: Context) -> dict[str, Any]:
    """pgbench: one-per-transaction enqueue (4 clients, as S2's 4 threads), and claim +
    complete with batch 1 and batch 100 (1 client, as the worker's one connection;
    the full run adds 2 clients). Claim rates are counted in the table (SUCCESSFUL rows
    over max(finished_at) - min(started_at)); a run that emptied the queue says so.
    """
    binary = find_pgbench()
    if binary is None:
        ctx.note("R1 skipped: pgbench not found (embedded server?)")
        return {"skipped": "pgbench not found"}
    seconds = ctx.sizes.r1_seconds
    variants: list[tuple[str, int, int]] = [("claim_complete_b1", 1, 1)]
    variants.append(("claim_complete_b100", 100, 1))
    if not ctx.sizes.quick:
        variants.append(("claim_complete_b100_c2", 100, 2))
    result: dict[str, Any] = {"pgbench": binary}
    with tempfile.TemporaryDirectory(prefix="bench-pgbench-") as tmp:
        scripts_dir = Path(tmp)
        enqueue = scripts_dir / "enqueue.sql"
        enqueue.write_text(pgbench_scripts(1)["enqueue"])
        db.reset_jobs()
        run = _pgbench(ctx, binary, enqueue, seconds=seconds, clients=4)
        rows = db.fetchone("SELECT count(*) FROM django_jobs_job")[0]
        result["enqueue_one_per_transaction"] = {
            **run,
            "jobs_per_s": round(run["tps"]),
            "rows": rows,
        }
        for name, batch, clients in variants:
            script = scripts_dir / f"{name}.sql"
            script.write_text(pgbench_scripts(batch)["claim_complete"])
            db.reset_jobs()
            # Enough for generous rates; a run that empties the queue is flagged below.
            seed = seconds * (5_000 if batch == 1 else 40_000) * clients
            db.insert_generated(ready=seed)
            db.analyze()
            run = _pgbench(ctx, binary, script, seconds=seconds, clients=clients)
            done, left, busy = db.fetchone(
                "SELECT count(*) FILTER (WHERE state = 'SUCCESSFUL'),"
                " count(*) FILTER (WHERE state = 'READY'),"
                " extract(epoch FROM max(finished_at) - min(started_at))::float8"
                " FROM django_jobs_job"
            )
            result[name] = {
                **run,
                "batch": batch,
                "jobs_per_s": round(done / busy) if busy else None,
                "completed": done,
                "ran_out_of_jobs": left == 0,
            }
            if left == 0:
                ctx.note(f"R1 {name} emptied its {seed} jobs: its rate is a lower bound")
    db.reset_jobs()
    print_table(
        "R1 pgbench (our statements as literal SQL)",
        ["variant", "clients", "jobs/s", "pgbench tps"],
        [
            [name, r["clients"], r["jobs_per_s"], round(r["tps"])]
            for name, r in result.items()
            if isinstance(r, dict)
        ],
    )
    return result


# ── R2: the hand-written psycopg loop ───────────────────────────────────────


def _rawloop(ctx: Context, args: list[str], timeout: float) -> dict[str, Any]:
    env = {
        **os.environ,
        "BENCH_CONN_PARAMS": json.dumps(ctx.conn_params, default=str),
        # The statements as text: the loop's process imports nothing of django_jobs (whose
        # modules import Django), so it runs them with no framework around them.
        "BENCH_SQL": json.dumps(
            {
                "CLAIM_ANY_QUEUE": sql.CLAIM_ANY_QUEUE,
                "COMPLETE_MANY": sql.COMPLETE_MANY,
                "JOB_COLUMNS": sql.JOB_COLUMNS,
                "JSON_COLUMNS": sql.JSON_COLUMNS,
            }
        ),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.rawloop", *args],
        cwd=db.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.rawloop {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_r2(ctx: Context) -> dict[str, Any]:
    """The psycopg loop in three shapes, each draining freshly enqueued no-op jobs.

    ``two_children_batch50`` is the shape of ``runjobs --concurrency 2`` and is what S1
    is compared with. The batch-50 shapes are repeated in the full run (medians count).
    Rates are counted like S1's: SUCCESSFUL rows over max(finished_at) - min(started_at).
    """
    sizes = ctx.sizes
    shapes: list[tuple[str, list[str], int]] = [
        (
            "two_children_batch50",
            ["--shape", "children", "--batch", "50", "--children", "2"],
            sizes.repeats,
        ),
        ("one_process_batch50", ["--shape", "single", "--batch", "50"], sizes.repeats),
        ("one_per_transaction", ["--shape", "one", "--seconds", str(sizes.r2_single_seconds)], 1),
    ]
    result: dict[str, Any] = {}
    for name, args, repeats in shapes:
        runs = []
        for _ in range(repeats):
            db.reset_jobs()
            jobs = sizes.r2_jobs
            if name == "one_per_transaction":
                jobs = min(jobs, int(sizes.r2_single_seconds * 3_000))
            low, high = db.enqueue_noop(jobs, batch=sizes.seed_batch)
            db.analyze()
            cpu_before = measure.rusage_children_cpu()
            loop = _rawloop(ctx, args, timeout=sizes.drain_timeout_s)
            cpu = measure.rusage_children_cpu() - cpu_before
            stats = db.job_stats(low, high)
            rate = stats["successful"] / stats["busy_s"] if stats["busy_s"] else None
            runs.append(
                {
                    "jobs_per_s": round(rate) if rate else None,
                    "jobs": stats["successful"],
                    "busy_s": round(stats["busy_s"] or 0, 3),
                    "loop_cpu_s_per_1000": round(cpu / max(1, stats["successful"]) * 1000, 3),
                    "statements": loop["statements"],
                    "imports_django": loop["imports_django"],
                }
            )
            ctx.check(f"R2 {name}: no Django in the loop", not loop["imports_django"])
            if name == "one_per_transaction":
                ctx.check(
                    f"R2 {name}: completed jobs ran once, none left RUNNING",
                    stats["successful_not_one_attempt"] == 0
                    and stats["successful"] == loop["completed"]
                    and db.fetchone(
                        "SELECT count(*) FROM django_jobs_job WHERE state = 'RUNNING'"
                    )[0]
                    == 0,
                    json.dumps(stats),
                )
            else:
                problems = db.exactly_once_problems(stats, jobs)
                ctx.check(
                    f"R2 {name}: every job done exactly once", not problems, "; ".join(problems)
                )
        rates = [r["jobs_per_s"] for r in runs if r["jobs_per_s"]]
        result[name] = {"runs": runs, "median_jobs_per_s": measure.median(rates)}
    db.reset_jobs()
    print_table(
        "R2 hand-written psycopg loop (same SQL, no Django)",
        ["shape", "runs", "median jobs/s", "each run", "loop CPU s/1000 jobs"],
        [
            [
                name,
                len(r["runs"]),
                r["median_jobs_per_s"],
                ", ".join(str(x["jobs_per_s"]) for x in r["runs"]),
                r["runs"][0]["loop_cpu_s_per_1000"],
            ]
            for name, r in result.items()
        ],
    )
    return result


# ── R3: the lean queue ──────────────────────────────────────────────────────


def run_r3(ctx: Context) -> dict[str, Any]:
    """A minimal queue (id, state, payload, run_at; one partial index), 2 processes each
    claiming 50 with SKIP LOCKED and completing them in one UPDATE, on S1's job count.

    It makes and drops its own table, so the job tables are not involved. Repeated in
    the full run (the median counts).
    """
    env = {**os.environ, "BENCH_CONN_PARAMS": json.dumps(ctx.conn_params, default=str)}
    runs = []
    for _ in range(ctx.sizes.repeats):
        cpu_before = measure.rusage_children_cpu()
        done = subprocess.run(
            [sys.executable, "-m", "bench.leanqueue", "--jobs", str(ctx.sizes.s1_jobs)],
            cwd=db.ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=ctx.sizes.drain_timeout_s,
            check=False,
        )
        cpu = measure.rusage_children_cpu() - cpu_before
        if done.returncode != 0:
            raise RuntimeError(f"bench.leanqueue failed:\n{done.stderr[-3000:]}")
        run = json.loads(done.stdout.strip().splitlines()[-1])
        run["loop_cpu_s_per_1000"] = round(cpu / max(1, run["done"]) * 1000, 3)
        runs.append(run)
        ctx.check(
            "R3 lean queue: every job done once, none left",
            run["done"] == run["jobs"] and run["left"] == 0,
            json.dumps(run),
        )
        ctx.check("R3 lean queue: no Django in the loop", not run["imports_django"])
    rates = [r["jobs_per_s"] for r in runs if r["jobs_per_s"]]
    result = {"runs": runs, "median_jobs_per_s": measure.median(rates)}
    print_table(
        "R3 lean queue (minimal table, 2 processes, batch 50, no Django)",
        ["runs", "median jobs/s", "each run", "loop CPU s/1000 jobs"],
        [
            [
                len(runs),
                result["median_jobs_per_s"],
                ", ".join(str(r["jobs_per_s"]) for r in runs),
                runs[0]["loop_cpu_s_per_1000"],
            ]
        ],
    )
    return result


# ── R4: LISTEN/NOTIFY ───────────────────────────────────────────────────────


def run_r4(ctx: Context) -> dict[str, Any]:
    """Time from just before a NOTIFY (autocommit: it is sent at its commit) until a
    thread blocked on another connection's LISTEN has it: the floor under S4's latency.
    """
    samples = ctx.sizes.r4_samples
    channel = "django_jobs_bench_r4"
    arrived: dict[int, float] = {}
    got = threading.Event()
    listener = ctx.connect()
    sender = ctx.connect()
    listener.execute(f"LISTEN {channel}")

    def listen() -> None:
        for note in listener.notifies():
            if note.payload == "stop":
                return
            arrived[int(note.payload)] = time.perf_counter()
            got.set()

    thread = threading.Thread(target=listen, name="bench-r4", daemon=True)
    thread.start()
    delays = []
    try:
        for n in range(samples):
            got.clear()
            sent = time.perf_counter()
            sender.execute("SELECT pg_notify(%s, %s)", [channel, str(n)])
            if not got.wait(5):
                raise TimeoutError(f"NOTIFY {n} did not arrive within 5 s")
            delays.append((arrived[n] - sent) * 1000)
            time.sleep(0.002)
    finally:
        sender.execute("SELECT pg_notify(%s, 'stop')", [channel])
        thread.join(5)
        sender.close()
        listener.close()
    result = measure.latency_summary(delays)
    print_table(
        "R4 LISTEN/NOTIFY wake-up (psycopg)",
        ["samples", "p50 ms", "p95 ms", "p99 ms", "max ms"],
        [
            [
                result["samples"],
                result["p50_ms"],
                result["p95_ms"],
                result["p99_ms"],
                result["max_ms"],
            ]
        ],
    )
    return result
