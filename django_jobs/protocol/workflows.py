"""Workflow steps: writing a workflow, and what finishing a step does to the steps after it.

A step is a job with edges on both ends (``parents``, ``dependents``: ``bigint[]``) and a
counter of parents not finished yet (``pending_parents``). A step with parents waits
``BLOCKED``; the statement that finishes its last parent makes it ``READY`` and sends the
NOTIFY, in the same transaction (``UNBLOCK``, part of ``jobs.COMPLETE_STEPS``). A step
that ends ``FAILED`` or ``CANCELLED`` cancels the steps after it (``CANCEL_DESCENDANTS``,
part of every statement that can end one), and the first final failure of a workflow
enqueues its ``on_error`` task, once (part of ``jobs.FAIL_MANY``).

Three rules keep concurrent writers correct:

- **Lock, then read the row as it is now.** Under READ COMMITTED an UPDATE tests its
  WHERE against the statement's snapshot first: a dependent that another transaction
  moved from CANCELLED back to BLOCKED after the snapshot would be skipped for good.
  So dependents are picked by id only, locked with ``SELECT ... FOR UPDATE`` (which
  returns the newest version of each row), and decided on from that.
- **Lock in id order.** Every statement that moves several rows locks them ordered by
  id (and workflow rows after step rows), so two finishers never wait on each other.
  Parents get smaller ids than their dependents (ids are drawn in topological order).
- **Nothing for jobs in no workflow.** The fragments start from ``unnest(dependents)``
  of the rows just updated, and reach other rows only through ``id = ANY(ARRAY(...))``
  (an index probe per id, never a join the planner could turn into a scan): for a
  job in no workflow the array is NULL, and no row is read.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from . import NOTIFY_CHANNEL, Cursor

#: Channel carrying "job <payload> was asked to stop": the worker running it listens.
CANCEL_CHANNEL = "django_jobs_cancel"

# ── fragments shared by the statements that end a job ─────────────────────────────────

# The dependents of the rows of CTE `done` (id, dependents), one row per dependent with
# the number of its parents finished here; locked in id order, as they are now; and
# moved: a counter that reaches 0 makes the step READY, due at once (or at its own
# run_after), and wakes the workers of its queue. Steps that are not BLOCKED any more
# (cancelled meanwhile) are left alone.
UNBLOCK = f"""
edge AS (
    SELECT d.child, count(*)::int AS n
    FROM done, unnest(done.dependents) AS d(child)
    GROUP BY d.child
),
waiting AS (
    SELECT c.id, c.state FROM django_jobs_job AS c
    WHERE c.id = ANY(ARRAY(SELECT child FROM edge))
    ORDER BY c.id
    FOR UPDATE
),
unblocked AS (
    UPDATE django_jobs_job AS c
    SET pending_parents = GREATEST(c.pending_parents - e.n, 0),
        state = CASE WHEN c.pending_parents <= e.n THEN 'READY' ELSE 'BLOCKED' END,
        available_at = CASE WHEN c.pending_parents <= e.n
                            THEN GREATEST(now(), COALESCE(c.run_after, now()))
                            ELSE c.available_at END
    FROM waiting AS w, edge AS e
    WHERE c.id = w.id AND w.state = 'BLOCKED' AND e.child = w.id
    RETURNING c.state, c.queue_name, c.available_at
),
woken AS (
    SELECT pg_notify('{NOTIFY_CHANNEL}', q.queue_name)
    FROM (SELECT DISTINCT queue_name FROM unblocked
          WHERE state = 'READY' AND available_at <= now()) AS q
)"""

# Every step after the rows of CTE `ended` (id, state, task_path, dependents: steps that
# just ended FAILED or CANCELLED), found through the dependents arrays, each with the
# step it is cancelled for. Then the BLOCKED ones are cancelled, saying why. (Needs
# WITH RECURSIVE. The recursion reads each row's dependents with a scalar subquery,
# which is an index probe by id whatever the planner thinks of the sizes.) `skip` is
# a condition on `c` for rows the statement moves itself: PostgreSQL cannot update one
# row twice in one statement.
_CANCEL_DESCENDANTS = """
descendant(id, root, root_task, how) AS (
    SELECT d.id, e.id, e.task_path,
           CASE WHEN e.state = 'FAILED' THEN 'failed' ELSE 'was cancelled' END
    FROM ended AS e, unnest(e.dependents) AS d(id)
    UNION
    SELECT n.id, d.root, d.root_task, d.how
    FROM descendant AS d,
         unnest((SELECT c.dependents FROM django_jobs_job AS c WHERE c.id = d.id)) AS n(id)
),
doomed AS (
    SELECT c.id, c.state FROM django_jobs_job AS c
    WHERE c.id = ANY(ARRAY(SELECT id FROM descendant)){skip}
    ORDER BY c.id
    FOR UPDATE
),
cancelled_after AS (
    UPDATE django_jobs_job AS c
    SET state = 'CANCELLED', finished_at = now(),
        cancelled_by = 'step ' || r.root || ' (' || r.root_task || ') ' || r.how
    FROM doomed AS x,
         (SELECT DISTINCT ON (id) id, root, root_task, how FROM descendant
          ORDER BY id, root) AS r
    WHERE c.id = x.id AND x.state = 'BLOCKED' AND r.id = x.id
    RETURNING c.id
)"""
CANCEL_DESCENDANTS = _CANCEL_DESCENDANTS.format(skip="")


def cancel_descendants(skip: str) -> str:
    """CANCEL_DESCENDANTS, leaving out the rows for which ``skip`` (SQL on ``c``) holds."""
    return _CANCEL_DESCENDANTS.format(skip=f" AND NOT ({skip})")


# The first final failure of each workflow among the rows of CTE `failed` (id, state,
# workflow_id, error): the workflow row records it (locked as it is now: a second
# failure, here or in a concurrent transaction, finds it set and does nothing), and in
# the same statement its on_error task is enqueued with an id drawn for it. That makes
# on_error run once per failure of the workflow, however many steps fail together.
ON_FIRST_FAILURE = f"""
first_failure AS (
    SELECT DISTINCT ON (f.workflow_id) f.workflow_id, f.id, f.error
    FROM failed AS f
    WHERE f.workflow_id IS NOT NULL AND f.state = 'FAILED'
    ORDER BY f.workflow_id, f.id
),
flagged AS (
    SELECT w.id, w.failed_step_id FROM django_jobs_workflow AS w
    WHERE w.id = ANY(ARRAY(SELECT workflow_id FROM first_failure))
    ORDER BY w.id
    FOR UPDATE
),
marked AS (
    UPDATE django_jobs_workflow AS w
    SET failed_step_id = f.id,
        on_error_job_id = CASE WHEN w.on_error IS NOT NULL
                               THEN nextval(pg_get_serial_sequence('django_jobs_job', 'id'))
                          END
    FROM flagged AS l, first_failure AS f
    WHERE w.id = l.id AND l.failed_step_id IS NULL AND f.workflow_id = l.id
    RETURNING w.backend, w.on_error, w.on_error_job_id, f.id AS step_id, f.error
),
handler AS (
    INSERT INTO django_jobs_job (
        id, task_path, queue_name, priority, state, backend, args, kwargs,
        run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors
    )
    SELECT m.on_error_job_id, m.on_error->>'task_path', m.on_error->>'queue_name',
           (m.on_error->>'priority')::smallint, 'READY', m.backend,
           CASE WHEN (m.on_error->>'immutable')::boolean THEN m.on_error->'args'
                ELSE jsonb_build_array(m.step_id::text, m.error) || (m.on_error->'args') END,
           m.on_error->'kwargs', NULL, now(), now(), 0,
           (m.on_error->>'max_attempts')::int, '[]', '[]'
    FROM marked AS m
    WHERE m.on_error_job_id IS NOT NULL
    RETURNING queue_name
),
handler_woken AS (
    SELECT pg_notify('{NOTIFY_CHANNEL}', q.queue_name)
    FROM (SELECT DISTINCT queue_name FROM handler) AS q
)"""

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
        workflow_id, parents, dependents, pending_parents, receives
    )
    SELECT t.id, t.task_path, t.queue_name, t.priority,
           CASE WHEN t.pending > 0 THEN 'BLOCKED' ELSE 'READY' END,
           t.backend, t.args, t.kwargs, t.run_after, COALESCE(t.run_after, now()), now(),
           0, t.max_attempts, '[]', '[]',
           (SELECT id FROM w), t.parents::bigint[], t.dependents::bigint[], t.pending,
           t.receives
    FROM unnest(
        %(id)s::bigint[], %(task_path)s::text[], %(queue_name)s::text[],
        %(priority)s::smallint[], %(backend)s::text[], %(args_json)s::jsonb[],
        %(kwargs_json)s::jsonb[], %(run_after)s::timestamptz[], %(max_attempts)s::int[],
        %(parents)s::text[], %(dependents)s::text[], %(pending)s::int[], %(receives)s::text[]
    ) AS t(id, task_path, queue_name, priority, backend, args, kwargs, run_after,
           max_attempts, parents, dependents, pending, receives)
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

# A parent step's result, for a step that receives it: read when the step starts, so a
# large value is passed by reference (read once from its row), never copied into rows.
PARENT_RESULTS = """
SELECT id, state, return_value FROM django_jobs_job WHERE id = ANY(%(ids)s::bigint[])
"""


@dataclass(frozen=True, slots=True)
class NewStep:
    """A step to insert, with its id drawn already (``reserve_ids``).

    ``parents`` and ``dependents`` are SQL array literals (``'{1,2}'``) or None.
    """

    id: int
    task_path: str
    queue_name: str
    priority: int
    backend: str
    args_json: str
    kwargs_json: str
    run_after: datetime | None
    max_attempts: int
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
    for name in NewStep.__slots__:
        params[name] = [getattr(step, name) for step in steps]
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


def parent_results(cursor: Cursor, parent_ids: Sequence[int]) -> dict[int, tuple[str, object]]:
    """(state, return value) of each parent step found, by id."""
    cursor.execute(PARENT_RESULTS, {"ids": list(parent_ids)})
    return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}
