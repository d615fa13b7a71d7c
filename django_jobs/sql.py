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
#: The JSON columns among them, which the claim returns as one JSON array text: parsing
#: one document per row costs half of what four jsonb values cost (bench/, S1).
JSON_COLUMNS = ("args", "kwargs", "worker_ids", "errors")
_RETURNING = ", ".join(
    [f"j.{c}" for c in JOB_COLUMNS if c not in JSON_COLUMNS]
    + [f"jsonb_build_array({', '.join(f'j.{c}' for c in JSON_COLUMNS)})::text"]
)

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
# Undo a claim: back to READY, and the attempt, its worker entry and its times go too.
_UNCLAIM = """
SET state = 'READY',
    attempts = j.attempts - 1,
    worker_ids = j.worker_ids - (jsonb_array_length(j.worker_ids) - 1),
    started_at = CASE WHEN j.attempts = 1 THEN NULL ELSE j.started_at END,
    last_attempted_at = CASE WHEN j.attempts = 1 THEN NULL ELSE j.last_attempted_at END
"""

RELEASE_MANY = f"""
UPDATE django_jobs_job AS j
{_UNCLAIM}
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS o(id, attempt)
WHERE j.id = o.id AND j.state = 'RUNNING' AND j.attempts = o.attempt
RETURNING j.id
"""

# ── workers, leases, rescue ─────────────────────────────────────────────────

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
# worker row is gone) are rescued: retried after a backoff if attempts remain, else FAILED.
# Reads the partial index on RUNNING rows only; locks skip rows a live worker is finishing.
RESCUE = """
WITH lost AS (
    SELECT j.id FROM django_jobs_job AS j
    WHERE j.state = 'RUNNING'
      AND NOT EXISTS (
          SELECT 1 FROM django_jobs_worker AS w
          WHERE w.id = j.worker_id
            AND w.last_heartbeat > now() - make_interval(secs => %(stale_after)s)
      )
    ORDER BY j.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE django_jobs_job AS j
SET state = CASE WHEN j.attempts < j.max_attempts THEN 'READY' ELSE 'FAILED' END,
    finished_at = CASE WHEN j.attempts < j.max_attempts THEN NULL ELSE now() END,
    available_at = CASE WHEN j.attempts < j.max_attempts
                        THEN now() + make_interval(secs => %(retry_in)s)
                        ELSE j.available_at END,
    errors = j.errors || jsonb_build_array(jsonb_build_object(
        'exception_class_path', 'django_jobs.exceptions.WorkerLost',
        'message', format('worker %%s was lost (no heartbeat for %%s s) while running '
                          'attempt %%s of this job', j.worker_id, %(stale_after)s, j.attempts),
        'traceback', '',
        'worker_id', j.worker_id,
        'attempt', j.attempts,
        'failed_at', now()))
FROM lost
WHERE j.id = lost.id
RETURNING j.id, j.state, j.worker_id
"""

# Worker rows nobody has heard from for a long time: only for the admin's history.
PRUNE_WORKERS = """
DELETE FROM django_jobs_worker
WHERE last_heartbeat < now() - make_interval(secs => %(older_than)s)
"""

# Snooze: the job asked to run later. The attempt is not an error and does not use up
# max_attempts (it is added back), but it stays in the history (worker_ids).
SNOOZE_MANY = """
UPDATE django_jobs_job AS j
SET state = 'READY',
    max_attempts = j.max_attempts + 1,
    available_at = now() + make_interval(secs => o.snooze_for)
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(snooze_for)s::float8[])
     AS o(id, attempt, snooze_for)
WHERE j.id = o.id AND j.state = 'RUNNING' AND j.attempts = o.attempt
RETURNING j.id
"""

# ── operations (admin actions and the `jobs` command) ───────────────────────

# Re-queue finished-but-unsuccessful jobs. They get one more attempt than they have used,
# so a job that exhausted max_attempts can run again.
RETRY_JOBS = f"""
WITH moved AS (
    UPDATE django_jobs_job AS j
    SET state = 'READY', available_at = now(), finished_at = NULL,
        max_attempts = GREATEST(j.max_attempts, j.attempts + 1)
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state IN ('FAILED', 'CANCELLED')
    RETURNING j.id, j.queue_name
)
SELECT moved.id, pg_notify('{NOTIFY_CHANNEL}', moved.queue_name) FROM moved
"""

CANCEL_JOBS = """
UPDATE django_jobs_job AS j
SET state = 'CANCELLED', finished_at = now()
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state IN ('READY', 'BLOCKED')
RETURNING j.id
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

# Delete finished jobs older than the cut-off, one bounded batch per statement so a big
# backlog never holds locks or bloats one transaction. Uses django_jobs_job_finished.
PRUNE_BATCH = """
DELETE FROM django_jobs_job
WHERE id IN (
    SELECT id FROM django_jobs_job
    WHERE state IN ('SUCCESSFUL', 'FAILED', 'CANCELLED')
      AND finished_at < now() - make_interval(secs => %(older_than)s)
      AND state = ANY(%(states)s::text[])
    ORDER BY finished_at
    LIMIT %(limit)s
)
"""

# After a reconnect: RUNNING rows under this worker's id that it does not hold (a claim
# committed but its reply was lost with the connection) go back, no attempt spent.
RELEASE_ORPHANS = f"""
UPDATE django_jobs_job AS j
{_UNCLAIM}
WHERE j.worker_id = %(worker_id)s AND j.state = 'RUNNING'
  AND NOT (j.id = ANY(%(held)s::bigint[]))
RETURNING j.id
"""

# ── schedules (scheduler.py, the admin's schedule actions) ──────────────────

#: Columns the scheduler needs to fire a schedule, in this order.
SCHEDULE_COLUMNS = (
    "id",
    "name",
    "backend",
    "task_path",
    "args",
    "kwargs",
    "cron",
    "interval_seconds",
    "timezone",
    "queue_name",
    "priority",
    "start_at",
    "end_at",
    "misfire_policy",
    "max_catchup",
    "next_run_at",
)

# Due schedules of one backend, locked for this transaction. SKIP LOCKED lets every
# worker tick at once: each due row goes to exactly one of them, and a row another
# worker is firing is simply not due for us. Reads the partial index on enabled rows.
# now() is the transaction's start, so every decision of one tick uses one instant.
LOCK_DUE_SCHEDULES = f"""
SELECT {", ".join(SCHEDULE_COLUMNS)}, now()
FROM django_jobs_schedule
WHERE backend = %(backend)s AND enabled AND next_run_at <= now()
ORDER BY next_run_at, id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

SELECT_SCHEDULE = f"""
SELECT {", ".join(SCHEDULE_COLUMNS)}, now()
FROM django_jobs_schedule
WHERE id = %(id)s
FOR UPDATE
"""

# Seconds until the next enabled schedule of the backend is due (negative: overdue),
# NULL when none is pending. Tells an idle worker how long it may sleep.
NEXT_SCHEDULE_DUE_IN = """
SELECT EXTRACT(EPOCH FROM min(next_run_at) - now())::float8
FROM django_jobs_schedule
WHERE backend = %(backend)s AND enabled AND next_run_at IS NOT NULL
"""

DATABASE_NOW = "SELECT now()"

# The second guard behind the row lock: one run per (schedule, fire time). A fire time
# that already has a run (the lock was lost, next_run_at was moved back by hand) inserts
# nothing and so enqueues nothing. `fire_at` NULL (run now) takes the exact current time.
INSERT_SCHEDULE_RUN = """
INSERT INTO django_jobs_schedulerun (schedule_id, fire_at, manual, created_at)
VALUES (%(schedule_id)s, COALESCE(%(fire_at)s::timestamptz, clock_timestamp()), %(manual)s, now())
ON CONFLICT (schedule_id, fire_at) DO NOTHING
RETURNING id, fire_at
"""

SET_SCHEDULE_RUN_JOB = "UPDATE django_jobs_schedulerun SET job_id = %(job_id)s WHERE id = %(id)s"

# Keep the newest `keep` runs of a schedule (its recent history in the admin); older
# runs can no longer collide with a fire time, since next_run_at only moves forward.
PRUNE_SCHEDULE_RUNS = """
DELETE FROM django_jobs_schedulerun
WHERE schedule_id = %(schedule_id)s
  AND fire_at <= (
      SELECT fire_at FROM django_jobs_schedulerun
      WHERE schedule_id = %(schedule_id)s
      ORDER BY fire_at DESC
      OFFSET %(keep)s LIMIT 1
  )
"""

MARK_SCHEDULE_FIRED = """
UPDATE django_jobs_schedule
SET last_run_at = now(), last_job_id = %(job_id)s, last_error = '', updated_at = now()
WHERE id = %(id)s
"""

# Move a schedule on after a tick: its next fire time (NULL once it has ended), and the
# problem that stopped this fire, if any (NULL leaves last_error as it is).
ADVANCE_SCHEDULE = """
UPDATE django_jobs_schedule
SET next_run_at = %(next_run_at)s::timestamptz,
    last_error = COALESCE(%(error)s, last_error),
    updated_at = now()
WHERE id = %(id)s
"""

SET_SCHEDULE_ENABLED = """
UPDATE django_jobs_schedule
SET enabled = %(enabled)s, next_run_at = %(next_run_at)s::timestamptz, updated_at = now()
WHERE id = %(id)s
"""

# Write a schedule declared in settings. Settings own every field they declare;
# `enabled` is the operator's switch, taken from settings only when the row is new,
# was an admin row, or had been removed from settings. The fire time is recomputed
# only when the timing changed, so restarts keep the cadence and any pending run.
UPSERT_DECLARED_SCHEDULE = """
INSERT INTO django_jobs_schedule AS s (
    name, source, backend, task_path, args, kwargs, cron, interval_seconds, timezone,
    enabled, queue_name, priority, start_at, end_at, misfire_policy, max_catchup,
    next_run_at, last_error, created_at, updated_at
)
VALUES (
    %(name)s, 'code', %(backend)s, %(task_path)s, %(args)s::jsonb, %(kwargs)s::jsonb,
    %(cron)s, %(interval_seconds)s, %(timezone)s, %(enabled)s, %(queue_name)s,
    %(priority)s, %(start_at)s::timestamptz, %(end_at)s::timestamptz, %(misfire_policy)s,
    %(max_catchup)s, %(next_run_at)s::timestamptz, '', now(), now()
)
ON CONFLICT (name) DO UPDATE SET
    source = 'code',
    backend = EXCLUDED.backend,
    task_path = EXCLUDED.task_path,
    args = EXCLUDED.args,
    kwargs = EXCLUDED.kwargs,
    cron = EXCLUDED.cron,
    interval_seconds = EXCLUDED.interval_seconds,
    timezone = EXCLUDED.timezone,
    queue_name = EXCLUDED.queue_name,
    priority = EXCLUDED.priority,
    start_at = EXCLUDED.start_at,
    end_at = EXCLUDED.end_at,
    misfire_policy = EXCLUDED.misfire_policy,
    max_catchup = EXCLUDED.max_catchup,
    enabled = CASE WHEN s.source = 'code' THEN s.enabled ELSE EXCLUDED.enabled END,
    next_run_at = CASE
        WHEN s.source <> 'code'
          OR (s.cron, s.interval_seconds, s.timezone, s.start_at, s.end_at)
             IS DISTINCT FROM (EXCLUDED.cron, EXCLUDED.interval_seconds, EXCLUDED.timezone,
                               EXCLUDED.start_at, EXCLUDED.end_at)
        THEN EXCLUDED.next_run_at ELSE s.next_run_at END,
    -- A changed declaration is a new start: forget the old one's problem.
    last_error = CASE
        WHEN (s.source, s.backend, s.task_path, s.args, s.kwargs, s.queue_name, s.priority)
             IS DISTINCT FROM ('code', EXCLUDED.backend, EXCLUDED.task_path, EXCLUDED.args,
                               EXCLUDED.kwargs, EXCLUDED.queue_name, EXCLUDED.priority)
        THEN '' ELSE s.last_error END,
    updated_at = now()
RETURNING s.id, (s.xmax = 0) AS created
"""

# Declarations that left settings: disabled and marked, never deleted (their history
# and last job stay visible). Declaring the name again brings the row back.
RETIRE_UNDECLARED_SCHEDULES = """
UPDATE django_jobs_schedule
SET source = 'removed', enabled = false, updated_at = now()
WHERE backend = %(backend)s AND source = 'code' AND NOT (name = ANY(%(names)s::text[]))
RETURNING name
"""


# ── deleting jobs (admin and `jobs` command) ────────────────────────────────

# A running job's worker still owns its row: the state test is inside the one DELETE,
# so a job claimed between the operator's click and this statement is kept.
DELETE_JOBS = """
DELETE FROM django_jobs_job
WHERE id = ANY(%(ids)s::bigint[]) AND state <> 'RUNNING'
RETURNING id
"""
