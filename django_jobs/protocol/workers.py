"""Workers coming and going: registration, heartbeats, leases, and rescuing lost jobs.

A worker's row and its heartbeat are what keep its RUNNING jobs its own. When the
heartbeat stops (SIGKILL, a lost host, a long partition), the maintenance leader
finds and locks those jobs here, and fails their attempts with a ``WorkerLost`` error
through the same fenced statement as any failure (``jobs.fail``): back to READY after
the task's backoff, or FAILED on the last attempt, as the policy says.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass

from . import Cursor

REGISTER_WORKER = """
INSERT INTO django_jobs_worker (id, backend, host, pid, queues, concurrency, version,
                                started_at, last_heartbeat)
VALUES (%(id)s, %(backend)s, %(host)s, %(pid)s, %(queues)s::jsonb, %(concurrency)s,
        %(version)s, now(), now())
ON CONFLICT (id) DO UPDATE SET last_heartbeat = now(), concurrency = EXCLUDED.concurrency
"""

# Returns nothing when the row is gone: the worker was declared lost and must re-register.
HEARTBEAT = """
UPDATE django_jobs_worker SET last_heartbeat = now(), concurrency = %(concurrency)s
WHERE id = %(id)s
RETURNING id
"""

DEREGISTER_WORKER = "DELETE FROM django_jobs_worker WHERE id = %(id)s"

# Worker rows nobody has heard from for a long time: only for the admin's history.
PRUNE_WORKERS = """
DELETE FROM django_jobs_worker
WHERE last_heartbeat < now() - make_interval(secs => %(older_than)s)
"""

# Take or renew the lease when it is free, expired, or already ours. Exactly one holder
# can satisfy the WHERE at a time because the upsert locks the row.
ACQUIRE_LEASE = """
INSERT INTO django_jobs_lease (name, holder, expires_at)
VALUES (%(name)s, %(holder)s, now() + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO UPDATE
    SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
    WHERE django_jobs_lease.holder = EXCLUDED.holder OR django_jobs_lease.expires_at < now()
RETURNING holder
"""

RELEASE_LEASE = "DELETE FROM django_jobs_lease WHERE name = %(name)s AND holder = %(holder)s"

# RUNNING jobs whose worker has not been heard from for `stale_after` seconds (or whose
# worker row is gone), locked for the caller's transaction so that the policy can be
# asked about each before their attempts are failed (jobs.FAIL_MANY, fenced as usual).
# Reads the partial index on RUNNING rows only; SKIP LOCKED passes over rows a live
# worker is finishing right now.
LOCK_LOST_JOBS = """
SELECT j.id, j.task_path, j.backend, j.attempts, j.max_attempts, j.worker_id
FROM django_jobs_job AS j
WHERE j.state = 'RUNNING'
  AND NOT EXISTS (
      SELECT 1 FROM django_jobs_worker AS w
      WHERE w.id = j.worker_id
        AND w.last_heartbeat > now() - make_interval(secs => %(stale_after)s)
  )
ORDER BY j.id
LIMIT %(limit)s
FOR UPDATE OF j SKIP LOCKED
"""


# The jobs this worker runs that someone asked to cancel: the worker's safety net for a
# missed notification (a LISTEN reconnect, LISTEN turned off), read with its heartbeat.
# The partial index on RUNNING rows by worker_id makes it a probe.
CANCEL_REQUESTS = """
SELECT j.id FROM django_jobs_job AS j
WHERE j.worker_id = %(worker_id)s AND j.state = 'RUNNING'
  AND j.cancel_requested_at IS NOT NULL
"""


@dataclass(frozen=True, slots=True)
class LostJob:
    """A RUNNING job whose worker stopped heart-beating, locked for rescue."""

    id: int
    task_path: str
    backend: str
    attempts: int
    max_attempts: int
    worker_id: str


def register_worker(
    cursor: Cursor,
    *,
    worker_id: str,
    backend: str,
    host: str,
    pid: int,
    queues: Sequence[str] | None,
    concurrency: int,
    version: str,
) -> None:
    """Announce a worker; its heartbeat then keeps its RUNNING jobs from being rescued."""
    cursor.execute(
        REGISTER_WORKER,
        {
            "id": worker_id,
            "backend": backend,
            "host": host,
            "pid": pid,
            "queues": json.dumps(list(queues or [])),
            "concurrency": concurrency,
            "version": version,
        },
    )


def heartbeat(cursor: Cursor, *, worker_id: str, concurrency: int) -> bool:
    """Refresh the worker's heartbeat; False means its row is gone (it was declared lost)."""
    cursor.execute(HEARTBEAT, {"id": worker_id, "concurrency": concurrency})
    return cursor.fetchone() is not None


def deregister_worker(cursor: Cursor, *, worker_id: str) -> None:
    cursor.execute(DEREGISTER_WORKER, {"id": worker_id})


def prune_workers(cursor: Cursor, *, older_than: float) -> None:
    cursor.execute(PRUNE_WORKERS, {"older_than": older_than})


def acquire_lease(cursor: Cursor, *, name: str, holder: str, ttl: float) -> bool:
    """Take or renew the lease ``name`` for ``ttl`` seconds; True if ``holder`` has it."""
    cursor.execute(ACQUIRE_LEASE, {"name": name, "holder": holder, "ttl": ttl})
    return cursor.fetchone() is not None


def release_lease(cursor: Cursor, *, name: str, holder: str) -> None:
    cursor.execute(RELEASE_LEASE, {"name": name, "holder": holder})


def lock_lost_jobs(cursor: Cursor, *, stale_after: float, limit: int) -> list[LostJob]:
    """Lock RUNNING jobs of workers silent for ``stale_after`` s (call in a transaction)."""
    cursor.execute(LOCK_LOST_JOBS, {"stale_after": stale_after, "limit": limit})
    return [LostJob(*row) for row in cursor.fetchall()]


def cancel_requests(cursor: Cursor, *, worker_id: str) -> list[int]:
    """Ids of the jobs ``worker_id`` runs that someone asked to cancel."""
    cursor.execute(CANCEL_REQUESTS, {"worker_id": worker_id})
    return [row[0] for row in cursor.fetchall()]
