"""Workflows: writing one (its row and all its steps at once), cancelling and retrying it.

The steps' edges and counters, and what finishing a step does to the steps after it,
are described in ``steps.py``; the statements that finish jobs are in ``jobs.py``.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from . import NOTIFY_CHANNEL, Cursor
from .jobs import NewJob

# ── writing a workflow ──────────────────────────────────────────────────────────────

# Ids first, for the workflow and each step: both ends of every edge can then be
# written in one INSERT. Drawn in the order the steps are listed, which puts parents
# before their dependents (the lock order above relies on it). Gaps left by a
# rollback are harmless.
RESERVE_IDS = """
SELECT nextval(pg_get_serial_sequence('django_jobs_workflow', 'id')),
       ARRAY(SELECT nextval(s.seq) FROM generate_series(1, %(steps)s),
             (SELECT pg_get_serial_sequence('django_jobs_job', 'id')::regclass AS seq) AS s)
"""

# The workflow row and all its steps in one statement, in the caller's transaction:
# steps with parents BLOCKED, the others READY; then one NOTIFY per queue that got a
# step that can run at once (delivered at commit, like any enqueue). Edges arrive as
# text ('{1,2,3}'), one per step, since a SQL array of arrays must be rectangular.
ENQUEUE_WORKFLOW = f"""
WITH w AS (
    INSERT INTO django_jobs_workflow (
        id, backend, description, created_at, step_count, outputs, returns_list,
        on_error, cancelled_by
    )
    VALUES (
        %(workflow_id)s, %(workflow_backend)s, %(description)s, now(), %(step_count)s,
        %(outputs)s::bigint[], %(returns_list)s, %(on_error)s::jsonb, ''
    )
    RETURNING id
),
j AS (
    INSERT INTO django_jobs_job (
        id, task_path, queue_name, priority, state, backend, args, kwargs,
        run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors,
        workflow_id, parents, dependents, pending_parents, receives,
        trace_context, callback_url, task_proof, concurrency_key, concurrency_limit, flow
    )
    SELECT t.id, t.task_path, t.queue_name, t.priority,
           CASE WHEN t.pending > 0 THEN 'BLOCKED' ELSE 'READY' END,
           t.backend, t.args, t.kwargs, t.run_after, COALESCE(t.run_after, now()), now(),
           0, t.max_attempts, '[]', '[]',
           (SELECT id FROM w), t.parents::bigint[], t.dependents::bigint[], t.pending,
           t.receives, t.trace_context, t.callback_url, t.task_proof, t.concurrency_key,
           t.concurrency_limit, t.flow
    FROM unnest(
        %(id)s::bigint[], %(task_path)s::text[], %(queue_name)s::text[],
        %(priority)s::smallint[], %(backend)s::text[], %(args_json)s::jsonb[],
        %(kwargs_json)s::jsonb[], %(run_after)s::timestamptz[], %(max_attempts)s::int[],
        %(parents)s::text[], %(dependents)s::text[], %(pending)s::int[], %(receives)s::text[],
        %(trace_context_json)s::jsonb[], %(callback_url)s::text[], %(task_proof)s::text[],
        %(concurrency_key)s::text[], %(concurrency_limit)s::int[], %(flow)s::text[]
    ) AS t(id, task_path, queue_name, priority, backend, args, kwargs, run_after,
           max_attempts, parents, dependents, pending, receives, trace_context, callback_url,
           task_proof, concurrency_key, concurrency_limit, flow)
    RETURNING id, enqueued_at, state, available_at, queue_name
)
SELECT j.id, j.enqueued_at FROM j
WHERE (SELECT count(pg_notify('{NOTIFY_CHANNEL}', r.queue_name))
       FROM (SELECT DISTINCT queue_name FROM j
             WHERE state = 'READY' AND available_at <= now()) AS r) >= 0
"""

# ── operating on workflows ──────────────────────────────────────────────────────────

# Every step of the workflows, locked in id order before anything else is touched: the
# statements after it may then take the workflow rows without waiting in a circle
# with a worker that holds a step and wants the workflow row (FAIL_MANY).
LOCK_STEPS = """
SELECT j.id FROM django_jobs_job AS j
WHERE j.workflow_id = ANY(%(ids)s::bigint[])
ORDER BY j.id
FOR UPDATE
"""

# Retry the failed part of workflows: every FAILED or CANCELLED step goes back, and waits
# again for its parents that have not succeeded (counted from the rows as they are now,
# under the locks of LOCK_STEPS, so a parent finishing concurrently is counted once: its
# completion waits for this transaction and then finds the step BLOCKED). A step whose
# parents all succeeded is READY at once, with `grant` attempts beyond those it used.
RETRY_STEPS = f"""
WITH steps AS (
    SELECT j.id, j.state, j.parents FROM django_jobs_job AS j
    WHERE j.workflow_id = ANY(%(ids)s::bigint[])
    ORDER BY j.id
    FOR UPDATE
),
again AS (
    SELECT s.id,
           count(p.id) FILTER (WHERE p.state <> 'SUCCESSFUL')::int AS pending
    FROM steps AS s
    LEFT JOIN LATERAL unnest(s.parents) AS u(parent) ON true
    LEFT JOIN steps AS p ON p.id = u.parent
    WHERE s.state IN ('FAILED', 'CANCELLED')
    GROUP BY s.id
),
moved AS (
    UPDATE django_jobs_job AS j
    SET state = CASE WHEN a.pending = 0 THEN 'READY' ELSE 'BLOCKED' END,
        pending_parents = a.pending, available_at = now(), finished_at = NULL,
        cancelled_by = '', cancel_requested_at = NULL,
        max_attempts = GREATEST(j.max_attempts, j.attempts + %(grant)s)
    FROM again AS a
    WHERE j.id = a.id
    RETURNING j.id, j.state, j.queue_name
)
SELECT m.id, CASE WHEN m.state = 'READY' THEN pg_notify('{NOTIFY_CHANNEL}', m.queue_name) END
FROM moved AS m
"""

# After RETRY_STEPS: the workflows are not failed or cancelled any more, so a new final
# failure runs on_error again.
CLEAR_OUTCOME = """
UPDATE django_jobs_workflow
SET failed_step_id = NULL, on_error_job_id = NULL, cancelled_by = ''
WHERE id = ANY(%(ids)s::bigint[])
"""

# After the steps were cancelled (operator.cancel_steps): who cancelled the workflow.
MARK_CANCELLED = """
UPDATE django_jobs_workflow SET cancelled_by = %(by)s
WHERE id = ANY(%(ids)s::bigint[]) AND cancelled_by = ''
RETURNING id
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class NewStep(NewJob):
    """A job to insert as a workflow step, with its id drawn already (``reserve_ids``).

    ``parents`` and ``dependents`` are SQL array literals (``'{1,2}'``) or None.
    """

    id: int
    parents: str | None
    dependents: str | None
    pending: int
    receives: str


@dataclass(frozen=True, slots=True)
class NewWorkflow:
    id: int
    backend: str
    description: str
    outputs: list[int]
    returns_list: bool
    #: JSON text of the on_error task (task_path, queue_name, priority, max_attempts,
    #: args, kwargs, immutable), or None.
    on_error_json: str | None


# A step's inputs, read when it starts: its parents' states and return values, by id
# (one probe of the primary key per parent, whatever their number). The values come as
# text: a Django cursor and a plain psycopg one would decode jsonb differently.
PARENT_RESULTS = """
SELECT id, state, return_value::text FROM django_jobs_job WHERE id = ANY(%(ids)s::bigint[])
"""


def parent_results(cursor: Cursor, ids: Sequence[int]) -> dict[int, tuple[str, Any]]:
    """(state, return value) of each job of ``ids`` that exists."""
    cursor.execute(PARENT_RESULTS, {"ids": list(ids)})
    return {
        row[0]: (row[1], None if row[2] is None else json.loads(row[2]))
        for row in cursor.fetchall()
    }


def array_literal(ids: Sequence[int]) -> str:
    """``'{1,2,3}'``: ids as the text of a SQL bigint array."""
    return "{" + ",".join(str(int(i)) for i in ids) + "}"


def reserve_ids(cursor: Cursor, steps: int) -> tuple[int, list[int]]:
    """Draw a workflow id and ``steps`` job ids, in order."""
    cursor.execute(RESERVE_IDS, {"steps": steps})
    workflow_id, step_ids = cursor.fetchone()
    return workflow_id, list(step_ids)


def enqueue_workflow(
    cursor: Cursor, workflow: NewWorkflow, steps: Sequence[NewStep]
) -> list[tuple[int, datetime]]:
    """Insert the workflow and its steps; return (id, enqueued_at) per step, in order."""
    params: dict[str, object] = {
        "workflow_id": workflow.id,
        "workflow_backend": workflow.backend,
        "description": workflow.description,
        "step_count": len(steps),
        "outputs": workflow.outputs,
        "returns_list": workflow.returns_list,
        "on_error": workflow.on_error_json,
    }
    for column in fields(NewStep):
        params[column.name] = [getattr(step, column.name) for step in steps]
    cursor.execute(ENQUEUE_WORKFLOW, params)
    rows = {row[0]: row[1] for row in cursor.fetchall()}
    return [(step.id, rows[step.id]) for step in steps]


def lock_steps(cursor: Cursor, workflow_ids: Sequence[int]) -> list[int]:
    """Lock every step of the workflows in id order (call in a transaction)."""
    cursor.execute(LOCK_STEPS, {"ids": list(workflow_ids)})
    return [row[0] for row in cursor.fetchall()]


def retry_steps(cursor: Cursor, workflow_ids: Sequence[int], *, grant: int) -> list[int]:
    """Re-queue the FAILED and CANCELLED steps of the workflows; return the ids moved."""
    lock_steps(cursor, workflow_ids)
    cursor.execute(RETRY_STEPS, {"ids": list(workflow_ids), "grant": grant})
    moved = [row[0] for row in cursor.fetchall()]
    cursor.execute(CLEAR_OUTCOME, {"ids": list(workflow_ids)})
    return moved


def mark_cancelled(cursor: Cursor, workflow_ids: Sequence[int], *, by: str) -> list[int]:
    """Record who cancelled the workflows (after their steps were cancelled)."""
    cursor.execute(MARK_CANCELLED, {"ids": list(workflow_ids), "by": by})
    return [row[0] for row in cursor.fetchall()]
