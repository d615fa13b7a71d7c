"""Django-side helpers: set-up, empty tables, create no-op jobs, and the exactly-once check.

Jobs are created through the public bulk API (``noop.enqueue_many``) so the rows are
exactly what an application would write; the timed part of a drain starts after.
"""

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOOP_PATH = "testproject.example.tasks.noop"


def setup_django() -> None:
    """Configure Django for the benchmark: the test project, DEBUG off (no query log)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    # DEBUG=True keeps every query in connection.queries: slower and growing memory.
    os.environ["DEBUG"] = "False"
    os.environ.setdefault("JOBS_LOG_LEVEL", "WARNING")
    import django

    django.setup()


def connection_params() -> dict[str, Any]:
    """psycopg.connect() keyword arguments for the default database, as the worker builds them."""
    from django.db import connection

    params = dict(connection.get_connection_params())
    params.pop("context", None)
    params.pop("cursor_factory", None)
    params.setdefault("connect_timeout", 10)
    return params


def execute(statement: str, params: Any = None) -> None:
    """Run one statement on Django's connection (autocommit: VACUUM is allowed)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def fetchone(statement: str, params: Any = None) -> tuple:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchone()


def reset_jobs() -> None:
    """Empty the job tables (TRUNCATE: no dead rows left behind), forget old workers and
    limiters."""
    execute("TRUNCATE django_jobs_job, django_jobs_workflow CASCADE")
    execute("DELETE FROM django_jobs_worker")
    execute("DELETE FROM django_jobs_lease")
    execute("DELETE FROM django_jobs_limiter")


def enqueue_noop(count: int, *, batch: int = 5_000) -> tuple[int, int]:
    """Create ``count`` no-op jobs through ``enqueue_many``; return (lowest, highest) id.

    Each batch is one statement in its own transaction, the path S3 measures.
    """
    from django.db import transaction

    from testproject.example import tasks

    low = high = None
    for start in range(0, count, batch):
        size = min(batch, count - start)
        with transaction.atomic():
            results = tasks.noop.enqueue_many([((), {})] * size)
        ids = [int(r.id) for r in results]
        low = min(ids) if low is None else min(low, min(ids))
        high = max(ids) if high is None else max(high, max(ids))
    if low is None or high is None:
        raise ValueError("enqueue_noop needs count >= 1")
    return low, high


def analyze() -> None:
    execute("ANALYZE django_jobs_job")


def job_stats(low: int, high: int) -> dict[str, Any]:
    """What happened to the jobs with ids in [low, high]: the exactly-once facts and times.

    ``busy_s`` is max(finished_at) - min(started_at): the drain itself, without the
    worker's start-up and shutdown.
    """
    row = fetchone(
        """
        SELECT count(*),
               count(*) FILTER (WHERE state = 'SUCCESSFUL'),
               count(*) FILTER (WHERE state IN ('READY', 'RUNNING')),
               count(*) FILTER (WHERE state = 'SUCCESSFUL' AND attempts <> 1),
               min(attempts), max(attempts),
               extract(epoch FROM min(started_at))::float8,
               extract(epoch FROM max(finished_at))::float8
        FROM django_jobs_job WHERE id BETWEEN %s AND %s
        """,
        [low, high],
    )
    total, ok, pending, multi, min_att, max_att, first_start, last_finish = row
    busy = (last_finish - first_start) if first_start and last_finish else None
    return {
        "rows": total,
        "successful": ok,
        "ready_or_running": pending,
        "successful_not_one_attempt": multi,
        "min_attempts": min_att,
        "max_attempts": max_att,
        "first_start_epoch": first_start,
        "last_finish_epoch": last_finish,
        "busy_s": busy,
    }


def exactly_once_problems(stats: dict[str, Any], expected: int) -> list[str]:
    """Why ``stats`` (from job_stats) is not "every job done exactly once"; [] if it is."""
    problems = []
    if stats["rows"] != expected:
        problems.append(f"{stats['rows']} rows for {expected} jobs enqueued")
    if stats["successful"] != expected:
        problems.append(f"{stats['successful']} of {expected} SUCCESSFUL")
    if stats["successful_not_one_attempt"]:
        problems.append(f"{stats['successful_not_one_attempt']} jobs with attempts != 1")
    if stats["ready_or_running"]:
        problems.append(f"{stats['ready_or_running']} jobs left READY/RUNNING")
    return problems


def wait_for_started(job_id: int, timeout: float, check: Callable[[], None] | None = None) -> Any:
    """Poll until job ``job_id`` has a started_at; return it (raises TimeoutError).

    ``check`` is called while waiting (``WorkerProcess.ensure_running``: fail fast).
    """
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        polls += 1
        if check is not None and polls % 100 == 0:
            check()
        row = fetchone("SELECT started_at FROM django_jobs_job WHERE id = %s", [job_id])
        if row and row[0] is not None:
            return row[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not start within {timeout:.0f} s")
        time.sleep(0.001)


def warm_up(check: Callable[[], None] | None = None, timeout: float = 60.0) -> int:
    """Enqueue one job and wait until it has finished: the worker is up and listening."""
    from testproject.example import tasks

    job_id = int(tasks.noop.enqueue().id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check is not None:
            check()
        row = fetchone("SELECT state FROM django_jobs_job WHERE id = %s", [job_id])
        if row and row[0] == "SUCCESSFUL":
            return job_id
        time.sleep(0.05)
    raise TimeoutError(f"the worker did not run a warm-up job within {timeout:.0f} s")


def insert_generated(*, ready: int = 0, successful: int = 0, future: int = 0) -> None:
    """Insert rows with one INSERT … SELECT generate_series (no Python per row).

    ``ready``: runnable no-op jobs (as enqueue would write them). ``successful``: finished
    history. ``future``: READY jobs due in a day, which the claim must step over cheaply.
    """
    execute(
        """
        INSERT INTO django_jobs_job (
            task_path, queue_name, priority, state, backend, args, kwargs, return_value,
            run_after, available_at, enqueued_at, started_at, last_attempted_at, finished_at,
            attempts, max_attempts, worker_id, worker_ids, errors
        )
        SELECT %(task)s, 'default', 0, k.state, 'default', '[]', '{}', k.return_value,
               k.run_after, k.available_at, k.at, k.started, k.started, k.finished,
               k.attempts, 1, k.worker_id, k.worker_ids, '[]'
        FROM generate_series(1, %(total)s) AS g
        CROSS JOIN LATERAL (
            SELECT CASE WHEN g <= %(ok)s THEN 'SUCCESSFUL' ELSE 'READY' END AS state,
                   CASE WHEN g <= %(ok)s THEN 'null'::jsonb END AS return_value,
                   CASE WHEN g > %(ok)s + %(ready)s THEN now() + interval '1 day' END
                       AS run_after,
                   CASE WHEN g <= %(ok)s THEN now() - interval '1 day'
                        WHEN g <= %(ok)s + %(ready)s THEN now()
                        ELSE now() + interval '1 day' END AS available_at,
                   CASE WHEN g <= %(ok)s THEN now() - interval '1 day' ELSE now() END AS at,
                   CASE WHEN g <= %(ok)s THEN now() - interval '1 day' END AS started,
                   CASE WHEN g <= %(ok)s THEN now() - interval '1 day' + interval '1 ms'
                       END AS finished,
                   CASE WHEN g <= %(ok)s THEN 1 ELSE 0 END AS attempts,
                   CASE WHEN g <= %(ok)s THEN 'bench-history' ELSE '' END AS worker_id,
                   CASE WHEN g <= %(ok)s THEN '["bench-history"]'::jsonb ELSE '[]'::jsonb END
                       AS worker_ids
        ) AS k
        """,
        {
            "task": NOOP_PATH,
            "total": ready + successful + future,
            "ok": successful,
            "ready": ready,
        },
    )
