"""R3: the lean-queue reference, a minimal psycopg queue on a minimal table.

R1 and R2 run *our* statements on *our* table, so they cannot show what the table's
design and the per-job work cost. R3 is the queue people write by hand: a table with
``id, state, payload, run_at`` and one partial index, and ``--processes`` processes
(each with its own connection) that each claim ``--batch`` jobs with ``FOR UPDATE SKIP
LOCKED``, "run" them (parse the payload, call a no-op) and complete them in one UPDATE.
Every drain figure of the suite is also given as a share of this one.

Run as its own process (``python -m bench.leanqueue --jobs N``), with no Django; the
connection parameters come as JSON in ``BENCH_CONN_PARAMS``. It creates, fills, drains
and drops its own table (``bench_lean_job``), so it never touches the job tables. The
result is one JSON object on stdout.
"""

import argparse
import json
import multiprocessing
import os
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import psycopg

TABLE = "bench_lean_job"

SCHEMA = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE TABLE {TABLE} (
    id bigserial PRIMARY KEY,
    state text NOT NULL DEFAULT 'ready',
    payload jsonb NOT NULL,
    run_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX {TABLE}_ready ON {TABLE} (run_at, id) WHERE state = 'ready';
"""

FILL = f"""
INSERT INTO {TABLE} (payload)
SELECT jsonb_build_object('args', jsonb_build_array(n), 'kwargs', '{{}}'::jsonb)
FROM generate_series(1, %(jobs)s) AS n
"""

CLAIM = f"""
UPDATE {TABLE} SET state = 'running'
WHERE id IN (
    SELECT id FROM {TABLE}
    WHERE state = 'ready' AND run_at <= now()
    ORDER BY run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id, payload::text
"""

COMPLETE = f"UPDATE {TABLE} SET state = 'done' WHERE id = ANY(%(ids)s::bigint[])"


def _noop(*args: Any, **kwargs: Any) -> None:
    """The task: nothing, so only the queue's cost is measured."""


def _drain(params: dict[str, Any], batch: int, pipe: Connection) -> None:
    """One process: claim a batch, run it, complete it, until nothing is left."""
    with psycopg.connect(**params, autocommit=True) as conn:
        pipe.send("ready")
        pipe.recv()  # the start signal, so that both processes begin together
        began = time.monotonic()
        done = statements = 0
        while True:
            rows = conn.execute(CLAIM, {"limit": batch}).fetchall()
            statements += 1
            if not rows:
                break
            for _, payload in rows:
                call = json.loads(payload)
                _noop(*call["args"], **call["kwargs"])
            conn.execute(COMPLETE, {"ids": [row[0] for row in rows]})
            statements += 1
            done += len(rows)
        pipe.send(
            {"began": began, "ended": time.monotonic(), "done": done, "statements": statements}
        )


def run(params: dict[str, Any], *, jobs: int, batch: int, processes: int) -> dict[str, Any]:
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(FILL, {"jobs": jobs})
        conn.execute(f"VACUUM ANALYZE {TABLE}")
    context = multiprocessing.get_context("spawn")
    pipes, workers = [], []
    for _ in range(processes):
        parent_end, child_end = context.Pipe()
        worker = context.Process(target=_drain, args=(params, batch, child_end), daemon=True)
        worker.start()
        child_end.close()
        pipes.append(parent_end)
        workers.append(worker)
    for pipe in pipes:
        if not pipe.poll(60) or pipe.recv() != "ready":
            raise RuntimeError("a lean-queue process did not start")
    for pipe in pipes:
        pipe.send("go")
    reports = []
    for pipe in pipes:
        if not pipe.poll(600):
            raise RuntimeError("a lean-queue process did not finish in 600 s")
        reports.append(pipe.recv())
    for worker in workers:
        worker.join(10)
    with psycopg.connect(**params, autocommit=True) as conn:
        left = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE state <> 'done'").fetchone()[0]
        conn.execute(f"DROP TABLE {TABLE}")
    busy = max(r["ended"] for r in reports) - min(r["began"] for r in reports)
    done = sum(r["done"] for r in reports)
    return {
        "jobs": jobs,
        "done": done,
        "left": left,
        "busy_s": round(busy, 3),
        "jobs_per_s": round(done / busy) if busy else None,
        "statements": sum(r["statements"] for r in reports),
        "per_process": [r["done"] for r in reports],
        "imports_django": any(m == "django" or m.startswith("django.") for m in sys.modules),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    params = json.loads(os.environ["BENCH_CONN_PARAMS"])
    result = run(params, jobs=args.jobs, batch=args.batch, processes=args.processes)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
