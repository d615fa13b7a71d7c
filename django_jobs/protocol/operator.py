"""An operator's moves (the admin's actions, the ``jobs`` command): retry, cancel, run now,
delete, prune.

Each is one conditional statement over a set of ids: a job that changed state since the
operator looked at it no longer matches and is skipped, never forced. The callers
(``console/operations.py``) read afterwards why the others did not move.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..policy import OPERATOR_RETRY_ATTEMPTS
from ..states import FINISHED, FINISHED_SQL
from . import NOTIFY_CHANNEL, Cursor, webhooks

# Re-queue finished-but-unsuccessful jobs, due now. They are allowed `grant` attempts
# beyond those used (policy.OPERATOR_RETRY_ATTEMPTS), so a job that exhausted
# max_attempts can run again.
RETRY_JOBS = f"""
WITH moved AS (
    UPDATE django_jobs_job AS j
    SET state = 'READY', available_at = now(), finished_at = NULL,
        max_attempts = GREATEST(j.max_attempts, j.attempts + %(grant)s)
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state IN ('FAILED', 'CANCELLED')
    RETURNING j.id, j.queue_name
)
SELECT moved.id, pg_notify('{NOTIFY_CHANNEL}', moved.queue_name) FROM moved
"""

# Returns what the job_cancelled signal reports of each job (its metrics labels). A job
# with a callback URL gets its webhook delivery in the same statement, as on finishing.
CANCEL_JOBS = f"""
WITH done AS (
    UPDATE django_jobs_job AS j
    SET state = 'CANCELLED', finished_at = now()
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state IN ('READY', 'BLOCKED')
    RETURNING j.id, j.task_path, j.queue_name, j.backend, {webhooks.RETURNING}
), {webhooks.deliveries("done", "job.cancelled")}
SELECT id, task_path, queue_name, backend FROM done
"""

RUN_JOBS_NOW = f"""
WITH moved AS (
    UPDATE django_jobs_job AS j
    SET available_at = now()
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state = 'READY' AND j.available_at > now()
    RETURNING j.id, j.queue_name
)
SELECT moved.id, pg_notify('{NOTIFY_CHANNEL}', moved.queue_name) FROM moved
"""

# A running job's worker still owns its row: the state test is inside the one DELETE,
# so a job claimed between the operator's click and this statement is kept.
DELETE_JOBS = """
DELETE FROM django_jobs_job
WHERE id = ANY(%(ids)s::bigint[]) AND state <> 'RUNNING'
RETURNING id
"""

# Delete finished jobs older than the cut-off, one bounded batch per statement so a big
# backlog never holds locks or bloats one transaction. The state list is spelled as in
# the partial index django_jobs_job_finished, so the planner can use it.
PRUNE_BATCH = f"""
DELETE FROM django_jobs_job
WHERE id IN (
    SELECT id FROM django_jobs_job
    WHERE state IN {FINISHED_SQL}
      AND finished_at < now() - make_interval(secs => %(older_than)s)
      AND state = ANY(%(states)s::text[])
    ORDER BY finished_at
    LIMIT %(limit)s
)
"""


def _ids(cursor: Cursor, statement: str, ids: Iterable[int], **params: object) -> list[int]:
    cursor.execute(statement, {"ids": list(ids), **params})
    return [row[0] for row in cursor.fetchall()]


def retry_jobs(
    cursor: Cursor, ids: Iterable[int], *, grant: int = OPERATOR_RETRY_ATTEMPTS
) -> list[int]:
    """Re-queue FAILED or CANCELLED jobs now; return the ids that moved (others are skipped)."""
    return _ids(cursor, RETRY_JOBS, ids, grant=grant)


@dataclass(frozen=True, slots=True)
class CancelledJob:
    id: int
    task_path: str
    queue_name: str
    backend: str


def cancel(cursor: Cursor, ids: Iterable[int]) -> list[CancelledJob]:
    """Cancel READY or BLOCKED jobs; return those that moved (running ones are skipped)."""
    cursor.execute(CANCEL_JOBS, {"ids": list(ids)})
    return [CancelledJob(*row) for row in cursor.fetchall()]


def cancel_jobs(cursor: Cursor, ids: Iterable[int]) -> list[int]:
    """Cancel READY or BLOCKED jobs; return the ids that moved (running ones are skipped)."""
    return [job.id for job in cancel(cursor, ids)]


def run_jobs_now(cursor: Cursor, ids: Iterable[int]) -> list[int]:
    """Make delayed READY jobs due now; return the ids that moved."""
    return _ids(cursor, RUN_JOBS_NOW, ids)


def delete_jobs(cursor: Cursor, ids: Iterable[int]) -> list[int]:
    """Delete jobs that are not running; return the ids deleted (running ones are kept)."""
    return _ids(cursor, DELETE_JOBS, ids)


def prune(
    cursor: Cursor,
    *,
    older_than: float,
    states: Sequence[str] = FINISHED,
    batch: int = 10_000,
    max_batches: int | None = None,
) -> int:
    """Delete finished jobs older than ``older_than`` seconds in batches; return the count.

    Each batch is its own statement: with autocommit each commits on its own.
    """
    unknown = set(states) - set(FINISHED)
    if unknown:
        raise ValueError(
            f"prune deletes only finished jobs ({', '.join(FINISHED)}), not {sorted(unknown)}"
        )
    deleted = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        cursor.execute(
            PRUNE_BATCH,
            {"older_than": older_than, "states": list(states), "limit": batch},
        )
        count = cursor.rowcount
        deleted += count
        batches += 1
        if count < batch:
            break
    return deleted
