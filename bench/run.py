"""The benchmark suite's entry point: ``scripts/bench`` (full) or ``scripts/bench --quick``.

Runs the references (R1 pgbench, R2 psycopg loop, R3 lean queue, R4 LISTEN/NOTIFY) and
the scenarios (S1-S7, W1, F1, F2, RSS) against the database in DATABASE_URL, prints a
table per scenario and a summary of the targets, and writes everything to
``bench/results/<timestamp>.json`` and ``bench/results/latest.json`` (plus ``summary.svg``).

The exit status is 1 only when a correctness check fails (a job lost, run twice or
left behind, a claim plan that scans the table, a scenario that crashed or hung) and
never because a figure is slow. The job tables of that database are emptied.
"""

import argparse
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

# Heavy imports (Django, the scenarios) wait for main(): bench.rawloop's spawned
# children must not pay for them, and --help stays instant.

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS: list[tuple[str, str]] = [
    ("R1", "pgbench with our statements: the database's ceiling"),
    ("R2", "hand-written psycopg loop: the framework-free ceiling"),
    ("R3", "lean queue: a minimal table and queue, the design's ceiling"),
    ("R4", "LISTEN/NOTIFY wake-up time"),
    ("S1", "drain no-op jobs with runjobs --burst"),
    ("S2", "enqueue() one per transaction, 4 threads"),
    ("S3", "enqueue_many in batches"),
    ("S4", "idle latency: LISTEN, open loop, polling"),
    ("S5", "drain with millions of history rows"),
    ("S6", "held REPEATABLE READ transaction under load"),
    ("S7", "async tasks on one child with --pool asyncio"),
    ("W1", "chord of 10,000 members: enqueue and completion"),
    ("F1", "rate-limited drain: the rate achieved, never above it"),
    ("F2", "drain under concurrency keys, one running per key"),
    ("RSS", "worker memory over a long drain"),
]


def _runner(key: str) -> Callable[[Any], dict[str, Any]]:
    from bench import asyncpool, drain, enqueue, flow, held, latency, references, workflow

    return {
        "R1": references.run_r1,
        "R2": references.run_r2,
        "R3": references.run_r3,
        "R4": references.run_r4,
        "S1": drain.run_s1,
        "S2": enqueue.run_s2,
        "S3": enqueue.run_s3,
        "S4": latency.run_s4,
        "S5": drain.run_s5,
        "S6": held.run_s6,
        "S7": asyncpool.run_s7,
        "W1": workflow.run_w1,
        "F1": flow.run_f1,
        "F2": flow.run_f2,
        "RSS": drain.run_rss,
    }[key]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Scenarios: "
        + "; ".join(f"{key} {title}" for key, title in SCENARIOS)
        + ". Quick sizes: < 2 minutes; full: < 15 minutes on 2 cores.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI (< 2 min)")
    parser.add_argument(
        "--only",
        type=lambda text: [part.strip().upper() for part in text.split(",") if part.strip()],
        help="comma-separated scenarios to run, e.g. S1,R2 (default: all)",
    )
    parser.add_argument("--results-dir", type=Path, default=None, help="default: bench/results")
    args = parser.parse_args(argv)
    known = {key for key, _ in SCENARIOS}
    unknown = set(args.only or []) - known
    if unknown:
        parser.error(
            f"--only: unknown {', '.join(sorted(unknown))}; choose from "
            f"{', '.join(key for key, _ in SCENARIOS)}"
        )
    return args


def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench import chart, db, measure, report
    from bench.context import Context, Sizes

    began = time.monotonic()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    db.setup_django()
    results_dir = args.results_dir or report.RESULTS_DIR
    ctx = Context(
        sizes=Sizes.for_mode(args.quick),
        conn_params=db.connection_params(),
        log_dir=results_dir / "logs",
    )
    with ctx.connect() as conn:
        machine = measure.machine_info(conn)
        ctx.statements_available = measure.statements_available(conn)
        ctx.postmaster_pid = measure.find_postmaster(conn)
        database = conn.info.dbname
    mode = "quick" if args.quick else "full"
    settings = machine["postgresql_settings"]
    report.print_table(
        f"django_jobs benchmark ({mode}) on database {database!r}",
        [
            "CPUs",
            "CPU model",
            "RAM GiB",
            "PostgreSQL",
            "shared_buffers",
            "synchronous_commit",
            "fsync",
            "counting",
        ],
        [
            [
                machine["cpu_count"],
                machine["cpu_model"],
                machine["ram_gib"],
                machine["postgresql"].split(" on ")[0],
                settings.get("shared_buffers"),
                settings.get("synchronous_commit"),
                settings.get("fsync"),
                "statements" if ctx.statements_available else "xacts",
            ]
        ],
    )
    selected = [key for key, _ in SCENARIOS if not args.only or key in args.only]
    timings: dict[str, float] = {}
    for key in selected:
        title = dict(SCENARIOS)[key]
        print(f"\n=== {key}: {title}", flush=True)
        started = time.monotonic()
        try:
            ctx.results[key] = _runner(key)(ctx)
        except Exception as exc:
            text = traceback.format_exc()
            print(text, file=sys.stderr, flush=True)
            ctx.results[key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": text}
            ctx.check(f"{key} completed", False, f"{type(exc).__name__}: {exc}")
            try:
                db.reset_jobs()
            except Exception as cleanup:
                print(f"cleanup after {key} failed: {cleanup}", file=sys.stderr)
                from django.db import connection

                connection.close()
        timings[key] = round(time.monotonic() - started, 1)
        print(f"--- {key} took {timings[key]:.1f} s", flush=True)

    targets = report.evaluate_targets(ctx.results)
    report.print_summary(targets)
    failed = [c for c in ctx.checks if not c.ok]
    report.print_table(
        f"Correctness checks: {len(ctx.checks) - len(failed)} of {len(ctx.checks)} hold",
        ["check", "result"],
        [[c.name, "ok" if c.ok else f"FAILED: {c.detail[:200]}"] for c in ctx.checks],
    )
    payload = {
        "mode": mode,
        "started_at": started_at,
        "duration_s": round(time.monotonic() - began, 1),
        "scenario_seconds": timings,
        "git": git_revision(),
        "database": database,
        "machine": machine,
        "counting": "statements (pg_stat_statements)" if ctx.statements_available else "xacts",
        "sizes": asdict(ctx.sizes),
        "results": ctx.results,
        "targets": [asdict(t) for t in targets],
        "checks": [asdict(c) for c in ctx.checks],
        "notes": ctx.notes,
        "ok": not failed,
    }
    path = report.write_results(payload, results_dir)
    svg = chart.write_chart(payload, results_dir / "summary.svg")
    print(f"\nResults: {path} (and latest.json); chart: {svg}")
    verdict = f"{len(failed)} check(s) FAILED" if failed else "all correctness checks hold"
    print(f"Total {payload['duration_s']:.0f} s; {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
