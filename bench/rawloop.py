"""R2: the hand-written psycopg loop, our worker's statements with no framework around them.

Run as its own process (``python -m bench.rawloop --shape children``) so nothing of
Django is loaded: the SQL text comes from the parent (``BENCH_SQL``, our statements as
``django_jobs.protocol.jobs`` has them), and nothing of django_jobs is imported (the
output says whether Django got imported anyway). Shapes:

* ``children``: the shape of ``runjobs``: one supervisor with one autocommit
  connection claims ``--batch`` jobs at a time (keeping at most two batches in flight),
  sends each of ``--children`` spawned processes its share of a batch as one list of
  plain tuples over a pipe, gets a list of ``(id, attempt, return_json)`` back and
  completes them ``--batch`` at a time. Child start-up is not timed (they report
  "ready" first), as in ``runjobs``.
* ``single``: one process, one connection: claim ``--batch``, complete them, repeat.
* ``one``: one process, one job per transaction (claim 1, complete 1), for at most
  ``--seconds``.

Connection parameters come as JSON in the ``BENCH_CONN_PARAMS`` environment variable
(psycopg.connect keywords; the environment keeps a password out of ``ps``). The result
is one JSON object on stdout.
"""

import argparse
import json
import multiprocessing
import os
import sys
import time
from multiprocessing.connection import Connection, wait
from typing import Any

import psycopg


class _Statements:
    """Our statements as the parent process passed them (BENCH_SQL)."""

    def __init__(self, text: str) -> None:
        self.__dict__.update(json.loads(text))


sql = _Statements(os.environ.get("BENCH_SQL", "{}"))
WORKER_ID = "bench-rawloop"
BACKEND = "default"
#: A claimed row is the plain columns of sql.JOB_COLUMNS, then (when the claim returns
#: them that way) sql.JSON_COLUMNS as the text of one JSON array.
_JSON = tuple(getattr(sql, "JSON_COLUMNS", ()))
_PLAIN = [c for c in sql.JOB_COLUMNS if c not in _JSON]
_WIDTH = len(_PLAIN) + (1 if _JSON else 0)
_ATTEMPTS = _PLAIN.index("attempts")


def _call_args(row: tuple) -> tuple[list[Any], dict[str, Any]]:
    """The task's args and kwargs from a claimed row (parsed in the child, not the loop)."""
    if _JSON:
        values = json.loads(row[-1])
        return values[_JSON.index("args")], values[_JSON.index("kwargs")]
    return row[_PLAIN.index("args")], row[_PLAIN.index("kwargs")]


def _run(row: tuple) -> tuple[int, int, str]:
    args, kwargs = _call_args(row)
    return row[0], row[_ATTEMPTS], json.dumps(_noop(*args, **kwargs))


def _noop(*args: Any, **kwargs: Any) -> None:
    """The task: nothing, so only the queue's cost is measured."""


class Queue:
    """The two statements of the hot path on one connection, each its own transaction."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.statements = 0

    def claim(self, limit: int) -> list[tuple]:
        self.statements += 1
        params = {"worker_id": WORKER_ID, "backend": BACKEND, "limit": limit}
        rows = self.conn.execute(sql.CLAIM_ANY_QUEUE, params).fetchall()
        if rows and len(rows[0]) != _WIDTH:
            raise RuntimeError(
                f"the claim returned {len(rows[0])} columns, expected {_WIDTH}: "
                "sql.CLAIM_ANY_QUEUE changed shape; update bench/rawloop.py"
            )
        return rows

    def complete(self, done: list[tuple[int, int, str]]) -> int:
        self.statements += 1
        rows = self.conn.execute(
            sql.COMPLETE_MANY,
            {
                "job_id": [d[0] for d in done],
                "attempt": [d[1] for d in done],
                "return_json": [d[2] for d in done],
            },
        ).fetchall()
        return len(rows)


def _child_main(pipe: Connection) -> None:
    """A child: run each list of job tuples it receives, answer with (id, attempt, JSON)s."""
    pipe.send(("ready",))
    while True:
        jobs = pipe.recv()
        if jobs is None:
            return
        pipe.send([_run(job) for job in jobs])


def run_children(q: Queue, *, batch: int, children: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    processes = []
    for _ in range(children):
        parent_end, child_end = context.Pipe()
        process = context.Process(target=_child_main, args=(child_end,), daemon=True)
        process.start()
        child_end.close()
        pipes.append(parent_end)
        processes.append(process)
    for pipe in pipes:
        if not pipe.poll(60) or pipe.recv() != ("ready",):
            raise RuntimeError("a child did not start")
    in_flight = [0] * children
    index = {id(p): n for n, p in enumerate(pipes)}
    done: list[tuple[int, int, str]] = []
    claimed = completed = 0
    exhausted = False
    began = time.perf_counter()
    while True:
        if not exhausted and sum(in_flight) <= batch:
            jobs = q.claim(batch)
            exhausted = not jobs
            claimed += len(jobs)
            # One message per child: an equal share of the claimed batch.
            for n in range(children):
                share = jobs[n::children]
                if share:
                    pipes[n].send(share)
                    in_flight[n] += len(share)
        busy = sum(in_flight)
        if done and (len(done) >= batch or busy == 0):
            completed += q.complete(done)
            done.clear()
        if exhausted and busy == 0 and not done:
            break
        if busy:
            for pipe in wait(pipes, timeout=5.0):
                n = index[id(pipe)]
                while in_flight[n] and pipe.poll():
                    finished = pipe.recv()
                    done.extend(finished)
                    in_flight[n] -= len(finished)
    elapsed = time.perf_counter() - began
    for pipe in pipes:
        pipe.send(None)
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.kill()
    return {"claimed": claimed, "completed": completed, "loop_s": elapsed}


def run_single(q: Queue, *, batch: int, seconds: float | None) -> dict[str, Any]:
    claimed = completed = 0
    began = time.perf_counter()
    deadline = None if seconds is None else began + seconds
    while deadline is None or time.perf_counter() < deadline:
        jobs = q.claim(batch)
        if not jobs:
            break
        claimed += len(jobs)
        done = [_run(job) for job in jobs]
        completed += q.complete(done)
    return {"claimed": claimed, "completed": completed, "loop_s": time.perf_counter() - began}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", choices=["children", "single", "one"], required=True)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args(argv)
    params = json.loads(os.environ["BENCH_CONN_PARAMS"])
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        q = Queue(conn)
        if args.shape == "children":
            result = run_children(q, batch=args.batch, children=args.children)
        else:
            batch = 1 if args.shape == "one" else args.batch
            result = run_single(q, batch=batch, seconds=args.seconds)
    result["statements"] = q.statements
    result["imports_django"] = any(m == "django" or m.startswith("django.") for m in sys.modules)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
