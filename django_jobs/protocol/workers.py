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
from datetime import datetime

from . import Cursor

REGISTER_WORKER = """
INSERT INTO django_jobs_worker (id, backend, host, pid, queues, concurrency, version,
                                worker_timeout, started_at, last_heartbeat)
VALUES (%(id)s, %(backend)s, %(host)s, %(pid)s, %(queues)s::jsonb, %(concurrency)s,
        %(version)s, %(worker_timeout)s, now(), now())
ON CONFLICT (id) DO UPDATE
    SET last_heartbeat = now(), concurrency = EXCLUDED.concurrency, lost_at = NULL,
        worker_timeout = EXCLUDED.worker_timeout
"""

# How long a worker may stay silent before it is lost: its own WORKER_TIMEOUT, which it
# fences itself by (worker/fence.py), so a leader with a shorter setting never rescues
# it early; the leader's own for rows written before workers stored theirs.
_TIMEOUT_OF_W = "make_interval(secs => coalesce(w.worker_timeout, %(stale_after)s))"

# One statement for a supervisor and its children, whose ids are "<supervisor id>/<pid>":
# their rows stay fresh exactly as long as the supervisor is heard from. Returns no row
# for the supervisor when it is gone: it was declared lost and must register again. A
# worker declared lost that beats again is not lost any more (lost_at back to NULL), so
# a second loss is announced again.
HEARTBEAT = """
UPDATE django_jobs_worker
SET last_heartbeat = now(),
    concurrency = CASE WHEN id = %(id)s THEN %(concurrency)s ELSE concurrency END,
    lost_at = NULL
WHERE id = %(id)s OR starts_with(id, %(id)s || '/')
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

# Declare workers lost once per loss: the conditional UPDATE (lost_at IS NULL) moves each
# row once however many leaders race, so worker_lost fires once. The worker table holds a
# row per live worker (and the recently dead): a scan of it is cheap.
MARK_LOST_WORKERS = f"""
UPDATE django_jobs_worker AS w SET lost_at = now()
WHERE w.lost_at IS NULL AND w.last_heartbeat < now() - {_TIMEOUT_OF_W}
RETURNING w.id, w.backend, w.host, w.pid, w.last_heartbeat
"""
# (A child's row, "<supervisor id>/<pid>", goes silent with its supervisor: it is marked
# lost too, and the rescuer announces the supervisor only.)

RELEASE_LEASE = "DELETE FROM django_jobs_lease WHERE name = %(name)s AND holder = %(holder)s"

# RUNNING jobs whose worker has not been heard from for `stale_after` seconds (or whose
# worker row is gone), locked for the caller's transaction so that the policy can be
# asked about each before their attempts are failed (jobs.FAIL_MANY, fenced as usual).
# Reads the partial index on RUNNING rows only; SKIP LOCKED passes over rows a live
# worker is finishing right now.
LOCK_LOST_JOBS = f"""
SELECT j.id, j.task_path, j.queue_name, j.backend, j.attempts, j.max_attempts, j.worker_id,
       j.task_proof
FROM django_jobs_job AS j
WHERE j.state = 'RUNNING'
  AND NOT EXISTS (
      SELECT 1 FROM django_jobs_worker AS w
      WHERE w.id = j.worker_id
        AND w.last_heartbeat > now() - {_TIMEOUT_OF_W}
  )
ORDER BY j.id
LIMIT %(limit)s
FOR UPDATE OF j SKIP LOCKED
"""


# RUNNING jobs by id, locked: what a dead child was running, to fail those attempts.
LOCK_RUNNING_JOBS = """
SELECT id, task_path, queue_name, backend, attempts, max_attempts, worker_id, task_proof
FROM django_jobs_job
WHERE id = ANY(%(ids)s::bigint[]) AND state = 'RUNNING'
ORDER BY id
FOR UPDATE
"""


# The jobs this worker runs that someone asked to cancel: the worker's safety net for a
# missed notification (a LISTEN reconnect, LISTEN turned off), read with its heartbeat.
# The partial index on RUNNING rows by worker_id makes it a probe.
CANCEL_REQUESTS = """
SELECT j.id, j.attempts, j.worker_id, j.task_path, j.task_proof FROM django_jobs_job AS j
WHERE j.worker_id = ANY(%(worker_ids)s::text[]) AND j.state = 'RUNNING'
  AND j.cancel_requested_at IS NOT NULL
"""


@dataclass(frozen=True, slots=True)
class LostJob:
    """A RUNNING job whose worker stopped heart-beating, locked for rescue."""

    id: int
    task_path: str
    queue_name: str
    backend: str
    attempts: int
    max_attempts: int
    worker_id: str
    #: Lets the leader find the task's retry policy when it has not imported its module.
    task_proof: str = ""


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
    worker_timeout: float | None = None,
) -> None:
    """Announce a worker; its heartbeat then keeps its RUNNING jobs from being rescued
    for ``worker_timeout`` seconds after each beat (the leader's setting when None)."""
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
            "worker_timeout": worker_timeout,
        },
    )


def heartbeat(cursor: Cursor, *, worker_id: str, concurrency: int) -> bool:
    """Refresh the heartbeat of a worker and its children; False: its own row is gone."""
    cursor.execute(HEARTBEAT, {"id": worker_id, "concurrency": concurrency})
    return any(row[0] == worker_id for row in cursor.fetchall())


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


def lock_running_jobs(cursor: Cursor, *, ids: Sequence[int]) -> list[LostJob]:
    """Lock the RUNNING jobs among ``ids`` (call in a transaction), e.g. a dead child's."""
    if not ids:
        return []
    cursor.execute(LOCK_RUNNING_JOBS, {"ids": list(ids)})
    return [LostJob(*row) for row in cursor.fetchall()]


@dataclass(frozen=True, slots=True)
class LostWorker:
    """A worker just declared lost."""

    id: str
    backend: str
    host: str
    pid: int
    last_heartbeat: datetime


def mark_lost_workers(cursor: Cursor, *, stale_after: float) -> list[LostWorker]:
    """Declare workers silent for ``stale_after`` s lost; return those declared just now."""
    cursor.execute(MARK_LOST_WORKERS, {"stale_after": stale_after})
    return [LostWorker(*row) for row in cursor.fetchall()]


def lock_lost_jobs(cursor: Cursor, *, stale_after: float, limit: int) -> list[LostJob]:
    """Lock RUNNING jobs of workers silent for ``stale_after`` s (call in a transaction)."""
    cursor.execute(LOCK_LOST_JOBS, {"stale_after": stale_after, "limit": limit})
    return [LostJob(*row) for row in cursor.fetchall()]


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A running job someone asked to cancel: which attempt, run by which worker id."""

    id: int
    attempts: int
    worker_id: str
    task_path: str
    task_proof: str


def cancel_requests(cursor: Cursor, *, worker_ids: Sequence[str]) -> list[CancelRequest]:
    """The jobs running under ``worker_ids`` that someone asked to cancel."""
    cursor.execute(CANCEL_REQUESTS, {"worker_ids": list(worker_ids)})
    return [CancelRequest(*row) for row in cursor.fetchall()]
