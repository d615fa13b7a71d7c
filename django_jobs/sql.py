"""Every SQL statement that changes a job's state, each a named constant.

Only ``protocol.py`` executes these. States are literals, not parameters, so the
planner can match the partial indexes (``WHERE state = 'READY'``) even in prepared
plans. All times come from the database clock (``now()``), so hosts whose clocks
disagree still agree on what is due.

Parameters use psycopg's ``%(name)s`` style, which Django's cursor passes through,
so the same statement runs on the caller's connection (enqueue) and on the worker's
own connection (everything else).
"""

#: Channel carrying "a job became runnable in queue <payload>".
NOTIFY_CHANNEL = "django_jobs"

#: Columns a worker needs to run a job and to build its TaskResult, in this order.
JOB_COLUMNS = (
    "id",
    "task_path",
    "queue_name",
    "priority",
    "backend",
    "args",
    "kwargs",
    "run_after",
    "available_at",
    "enqueued_at",
    "started_at",
    "last_attempted_at",
    "attempts",
    "max_attempts",
    "worker_ids",
    "errors",
)
_RETURNING = ", ".join(f"j.{c}" for c in JOB_COLUMNS)

# One INSERT, and in the same statement (so in the caller's transaction) one NOTIFY
# when the job may run at once. Postgres delivers it only on commit, and folds
# duplicates within a transaction, so a request that enqueues 100 jobs wakes workers once.
ENQUEUE = f"""
WITH j AS (
    INSERT INTO django_jobs_job (
        task_path, queue_name, priority, state, backend, args, kwargs,
        run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors
    )
    VALUES (
        %(task_path)s, %(queue_name)s, %(priority)s, 'READY', %(backend)s,
        %(args)s::jsonb, %(kwargs)s::jsonb, %(run_after)s::timestamptz,
        COALESCE(%(run_after)s::timestamptz, now()), now(), 0, %(max_attempts)s, '[]', '[]'
    )
    RETURNING id, enqueued_at, available_at, queue_name
)
SELECT j.id, j.enqueued_at,
       CASE WHEN j.available_at <= now() THEN pg_notify('{NOTIFY_CHANNEL}', j.queue_name) END
FROM j
"""

# Bulk enqueue: one statement for any number of jobs (arrays unnested server-side),
# then one NOTIFY per distinct queue that got a runnable job.
ENQUEUE_MANY = """
INSERT INTO django_jobs_job (
    task_path, queue_name, priority, state, backend, args, kwargs,
    run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors
)
SELECT t.task_path, t.queue_name, t.priority, 'READY', t.backend, t.args, t.kwargs,
       t.run_after, COALESCE(t.run_after, now()), now(), 0, t.max_attempts, '[]', '[]'
FROM unnest(
    %(task_path)s::text[], %(queue_name)s::text[], %(priority)s::smallint[],
    %(backend)s::text[], %(args)s::jsonb[], %(kwargs)s::jsonb[],
    %(run_after)s::timestamptz[], %(max_attempts)s::int[]
) WITH ORDINALITY AS t(task_path, queue_name, priority, backend, args, kwargs,
                      run_after, max_attempts, n)
ORDER BY t.n
RETURNING id, enqueued_at
"""

NOTIFY_QUEUES = f"""
SELECT pg_notify('{NOTIFY_CHANNEL}', q) FROM unnest(%(queues)s::text[]) AS q
"""

# Claim: pick up to `limit` runnable jobs in priority order, skipping rows another
# worker has locked, and mark them RUNNING in the same statement. The lock is held
# only for this statement's transaction, never while the task runs. `attempts` is
# bumped here and becomes the fencing token for the completion.
_CLAIM = f"""
UPDATE django_jobs_job AS j
SET state = 'RUNNING',
    attempts = j.attempts + 1,
    worker_id = %(worker_id)s::text,
    worker_ids = j.worker_ids || jsonb_build_array(%(worker_id)s::text),
    started_at = COALESCE(j.started_at, now()),
    last_attempted_at = now()
WHERE j.id IN (
    SELECT id FROM django_jobs_job
    WHERE state = 'READY' AND backend = %(backend)s AND available_at <= now() {{queue_filter}}
    ORDER BY priority DESC, available_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING {_RETURNING}
"""
CLAIM = _CLAIM.format(queue_filter="AND queue_name = ANY(%(queues)s::text[])")
CLAIM_ANY_QUEUE = _CLAIM.format(queue_filter="")

# Fenced success: only the attempt that claimed the job may finish it. A row that was
# rescued (and maybe re-claimed) since then no longer matches and is left alone.
COMPLETE_MANY = """
UPDATE django_jobs_job AS j
SET state = 'SUCCESSFUL', finished_at = now(), return_value = o.return_value
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(return_values)s::jsonb[])
     AS o(id, attempt, return_value)
WHERE j.id = o.id AND j.state = 'RUNNING' AND j.attempts = o.attempt
RETURNING j.id, j.finished_at
"""

# Fenced failure. `retry_in` (seconds) NULL means the attempt was the last one: FAILED.
# Otherwise the job goes back to READY, due after the backoff.
FAIL_MANY = """
UPDATE django_jobs_job AS j
SET state = CASE WHEN o.retry_in IS NULL THEN 'FAILED' ELSE 'READY' END,
    finished_at = CASE WHEN o.retry_in IS NULL THEN now() END,
    available_at = CASE WHEN o.retry_in IS NULL THEN j.available_at
                        ELSE now() + make_interval(secs => o.retry_in) END,
    errors = j.errors || jsonb_build_array(o.error || jsonb_build_object('failed_at', now()))
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(errors)s::jsonb[],
            %(retry_in)s::float8[]) AS o(id, attempt, error, retry_in)
WHERE j.id = o.id AND j.state = 'RUNNING' AND j.attempts = o.attempt
RETURNING j.id, j.state, j.finished_at
"""

# Hand claimed-but-unstarted jobs back (shutdown, or a prefetch the worker will not
# run): READY again, and the claim is undone so no attempt is spent.
RELEASE_MANY = """
UPDATE django_jobs_job AS j
SET state = 'READY',
    attempts = j.attempts - 1,
    worker_ids = j.worker_ids - (jsonb_array_length(j.worker_ids) - 1),
    started_at = CASE WHEN j.attempts = 1 THEN NULL ELSE j.started_at END,
    last_attempted_at = CASE WHEN j.attempts = 1 THEN NULL ELSE j.last_attempted_at END
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS o(id, attempt)
WHERE j.id = o.id AND j.state = 'RUNNING' AND j.attempts = o.attempt
RETURNING j.id
"""
