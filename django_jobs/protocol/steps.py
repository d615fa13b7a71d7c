"""What ending a job does to the workflow steps after it: SQL fragments, no statements.

A step is a job with edges on both ends (``parents``, ``dependents``: ``bigint[]``) and a
counter of parents not finished yet (``pending_parents``). A step with parents waits
``BLOCKED``; the statement that finishes its last parent makes it ``READY`` and sends the
NOTIFY, in the same transaction (``UNBLOCK``, part of ``jobs.COMPLETE_STEPS``). A step
that ends ``FAILED`` or ``CANCELLED`` cancels the steps after it (``cancel_after()``,
part of every statement that can end one), and the first final failure of a workflow
enqueues its ``on_error`` task, once (``ON_FIRST_FAILURE``, part of ``jobs.FAIL_MANY``).
The statements themselves live with their subject (``jobs.py``, ``operator.py``).

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

from . import NOTIFY_CHANNEL

#: Channel carrying "job <payload> was asked to stop": the worker running it listens.
CANCEL_CHANNEL = "django_jobs_cancel"

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


def cancel_after(name: str, *, skip: str | None = None) -> str:
    """CTEs that cancel the steps after the rows of CTE ``name`` that ended FAILED or
    CANCELLED (``name`` has id, state, task_path, dependents).

    ``skip`` is a condition on ``c`` for rows the statement moves itself.
    """
    return f"""
ended AS (
    SELECT id, state, task_path, dependents FROM {name}
    WHERE dependents IS NOT NULL AND state IN ('FAILED', 'CANCELLED')
),
{_CANCEL_DESCENDANTS.format(skip=f" AND NOT ({skip})" if skip else "")}"""


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
        run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors,
        task_proof
    )
    SELECT m.on_error_job_id, m.on_error->>'task_path', m.on_error->>'queue_name',
           (m.on_error->>'priority')::smallint, 'READY', m.backend,
           CASE WHEN (m.on_error->>'immutable')::boolean THEN m.on_error->'args'
                ELSE jsonb_build_array(m.step_id::text, m.error) || (m.on_error->'args') END,
           m.on_error->'kwargs', NULL, now(), now(), 0,
           (m.on_error->>'max_attempts')::int, '[]', '[]',
           COALESCE(m.on_error->>'task_proof', '')
    FROM marked AS m
    WHERE m.on_error_job_id IS NOT NULL
    RETURNING queue_name
),
handler_woken AS (
    SELECT pg_notify('{NOTIFY_CHANNEL}', q.queue_name)
    FROM (SELECT DISTINCT queue_name FROM handler) AS q
)"""
