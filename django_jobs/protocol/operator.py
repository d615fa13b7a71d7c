"""An operator's moves (the admin's actions, the ``jobs`` command, ``django_jobs.cancel``):
retry, cancel, run now, delete, prune.

Each is one conditional statement over a set of ids: a job that changed state since the
operator looked at it no longer matches and is skipped, never forced. The callers
(``console/operations.py``) read afterwards why the others did not move. Workflow steps
are retried with their workflow (``workflows.retry_steps``): a step re-queued alone
would run without the results of its parents.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..policy import OPERATOR_RETRY_ATTEMPTS
from ..states import FINISHED, FINISHED_SQL
from . import NOTIFY_CHANNEL, Cursor, webhooks
from .steps import CANCEL_CHANNEL, cancel_after
from .workflows import mark_cancelled

# Re-queue finished-but-unsuccessful jobs, due now. They are allowed `grant` attempts
# beyond those used (policy.OPERATOR_RETRY_ATTEMPTS), so a job that exhausted
# max_attempts can run again. Workflow steps are left to workflows.retry_steps.
RETRY_JOBS = f"""
WITH moved AS (
    UPDATE django_jobs_job AS j
    SET state = 'READY', available_at = now(), finished_at = NULL, cancelled_by = '',
        cancel_requested_at = NULL,
        max_attempts = GREATEST(j.max_attempts, j.attempts + %(grant)s)
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state IN ('FAILED', 'CANCELLED')
      AND j.workflow_id IS NULL
    RETURNING j.id, j.queue_name
)
SELECT moved.id, pg_notify('{NOTIFY_CHANNEL}', moved.queue_name) FROM moved
"""


# Cancel jobs, saying who did (`by`). Those that have not started end CANCELLED at once,
# and so do the workflow steps waiting after them; a job with a callback URL gets its
# webhook delivery in the same statement, as on finishing. A RUNNING job is asked to
# stop: the request is recorded on its row and announced on CANCEL_CHANNEL (at commit),
# where the worker that runs it listens; the statement that ends its attempt makes it
# CANCELLED. Asking again re-sends the notification and keeps the first request's time
# and author. The jobs are locked in id order first, and read as they are now. Each row
# answered carries what the job_cancelled signal reports (its metrics labels).
def _cancel_statement(selector: str, descendants: str) -> str:
    return f"""
WITH RECURSIVE target AS (
    SELECT j.id, j.state FROM django_jobs_job AS j
    WHERE {selector}
    ORDER BY j.id
    FOR UPDATE
),
stopped AS (
    UPDATE django_jobs_job AS j
    SET state = 'CANCELLED', finished_at = now(), cancelled_by = %(by)s
    FROM target AS t
    WHERE j.id = t.id AND t.state IN ('READY', 'BLOCKED')
    RETURNING j.id, j.state, j.dependents, j.task_path, j.queue_name, j.backend,
              j.workflow_id, {webhooks.RETURNING}
),
asked AS (
    UPDATE django_jobs_job AS j
    SET cancel_requested_at = COALESCE(j.cancel_requested_at, now()),
        cancelled_by = CASE WHEN j.cancel_requested_at IS NULL THEN %(by)s
                            ELSE j.cancelled_by END
    FROM target AS t
    WHERE j.id = t.id AND t.state = 'RUNNING'
    RETURNING j.id, j.task_path, j.queue_name, j.backend, j.workflow_id,
              pg_notify('{CANCEL_CHANNEL}', j.id::text)
),
{webhooks.deliveries("stopped", "job.cancelled")}{descendants}
SELECT stopped.id, 'CANCELLED', stopped.task_path, stopped.queue_name, stopped.backend,
       stopped.workflow_id
FROM stopped
UNION ALL
SELECT asked.id, 'RUNNING', asked.task_path, asked.queue_name, asked.backend,
       asked.workflow_id
FROM asked
"""


CANCEL_JOBS = _cancel_statement(
    "j.id = ANY(%(ids)s::bigint[])",
    ",\n" + cancel_after("stopped", skip="c.id = ANY(%(ids)s::bigint[])"),
)
# Every step of the workflows: none is left for a step before it to cancel.
CANCEL_STEPS = _cancel_statement("j.workflow_id = ANY(%(ids)s::bigint[])", "")

RUN_JOBS_NOW = f"""
WITH moved AS (
    UPDATE django_jobs_job AS j
    SET available_at = now()
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state = 'READY' AND j.available_at > now()
    RETURNING j.id, j.queue_name
)
SELECT moved.id, pg_notify('{NOTIFY_CHANNEL}', moved.queue_name) FROM moved
"""

# A finished workflow step whose dependents have not all finished (they will read its
# result, or wait for it): deleting or pruning it would strand them.
_NEEDED = """
EXISTS (SELECT 1 FROM django_jobs_job AS d
        WHERE d.id = ANY(j.dependents) AND d.state IN ('BLOCKED', 'READY', 'RUNNING'))
"""

# A running job's worker still owns its row: the state test is inside the one DELETE,
# so a job claimed between the operator's click and this statement is kept. A workflow
# step goes only once finished and not needed by the steps after it.
DELETE_JOBS = f"""
DELETE FROM django_jobs_job AS j
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state <> 'RUNNING'
  AND (j.workflow_id IS NULL OR (j.state IN {FINISHED_SQL} AND NOT {_NEEDED}))
RETURNING j.id
"""

# Delete finished jobs older than the cut-off, one bounded batch per statement so a big
# backlog never holds locks or bloats one transaction. The state list is spelled as in
# the partial index django_jobs_job_finished, so the planner can use it.
PRUNE_BATCH = f"""
DELETE FROM django_jobs_job
WHERE id IN (
    SELECT id FROM django_jobs_job AS j
    WHERE state IN {FINISHED_SQL}
      AND finished_at < now() - make_interval(secs => %(older_than)s)
      AND state = ANY(%(states)s::text[])
      AND (dependents IS NULL OR NOT {_NEEDED})
    ORDER BY finished_at
    LIMIT %(limit)s
)
"""

# Workflow rows whose steps are all gone (pruned or deleted), oldest first, bounded.
PRUNE_WORKFLOWS = """
DELETE FROM django_jobs_workflow
WHERE id IN (
    SELECT w.id FROM django_jobs_workflow AS w
    WHERE w.created_at < now() - make_interval(secs => %(older_than)s)
      AND NOT EXISTS (SELECT 1 FROM django_jobs_job AS j WHERE j.workflow_id = w.id)
    ORDER BY w.created_at
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
    """A job a cancel reached: CANCELLED now, or RUNNING and asked to stop."""

    id: int
    state: str
    task_path: str
    queue_name: str
    backend: str
    workflow_id: int | None


def cancel(cursor: Cursor, ids: Iterable[int], *, by: str = "") -> list[CancelledJob]:
    """Cancel jobs; return those the cancel reached, each with the state it is in now.

    CANCELLED: it had not started (the workflow steps after it are cancelled too).
    RUNNING: it was asked to stop; it ends CANCELLED when its worker stops it. Jobs not
    in the answer were finished (or not found). The workflows of the steps cancelled here
    record who cancelled them (after the steps: the order a failing step locks them in).
    """
    cursor.execute(CANCEL_JOBS, {"ids": list(ids), "by": by})
    reached = [CancelledJob(*row) for row in cursor.fetchall()]
    # Only steps ended here: a running step asked to stop may still finish successfully.
    workflows = sorted(
        {
            job.workflow_id
            for job in reached
            if job.workflow_id is not None and job.state == "CANCELLED"
        }
    )
    if workflows:
        mark_cancelled(cursor, workflows, by=by)
    return reached


def cancel_jobs(cursor: Cursor, ids: Iterable[int], *, by: str = "") -> dict[int, str]:
    """Cancel jobs (see :func:`cancel`); return the state each job reached is in now."""
    return {job.id: job.state for job in cancel(cursor, ids, by=by)}


def cancel_steps(
    cursor: Cursor, workflow_ids: Iterable[int], *, by: str = ""
) -> list[CancelledJob]:
    """Cancel every unfinished step of the workflows, as :func:`cancel` does."""
    cursor.execute(CANCEL_STEPS, {"ids": list(workflow_ids), "by": by})
    return [CancelledJob(*row) for row in cursor.fetchall()]


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


def prune_workflows(cursor: Cursor, *, older_than: float, batch: int = 5_000) -> int:
    """Delete up to ``batch`` workflows older than ``older_than`` s with no steps left."""
    cursor.execute(PRUNE_WORKFLOWS, {"older_than": older_than, "limit": batch})
    return cursor.rowcount
