"""A job's life under a worker: enqueue, claim, and the fenced outcomes of an attempt.

``attempts`` is bumped by the claim and is the fencing token of everything after it:
an outcome is written only ``WHERE state = 'RUNNING' AND attempts = <the claimed
attempt>``, so a worker that comes back after its job was rescued (and maybe claimed
again) cannot overwrite the newer attempt. Each function returns what the database
took; what is missing was refused by the fence.

The statements that end an attempt also carry out what that means for workflow steps
after it (``workflows.py``: unblock them, or cancel them) in the same statement, and
none of them sends a job with a cancel request back to READY: it ends CANCELLED.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import Any

from . import NOTIFY_CHANNEL, Cursor, execute_many, limiters, limits, webhooks
from .steps import ON_FIRST_FAILURE, UNBLOCK, cancel_after

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
    "trace_context",
    # Last, so that ClaimedJob can give it a default (registry.py says what it proves).
    "task_proof",
    # What a workflow step receives from its parents (models.Receives), and from whom;
    # and the steps waiting for it (its success goes to COMPLETE_STEPS at once).
    "receives",
    "parents",
    "dependents",
)
#: The JSON columns among them, which the claim returns as one JSON array text: parsing
#: one document per row costs half of what four jsonb values cost (bench/, S1).
JSON_COLUMNS = ("args", "kwargs", "worker_ids", "errors", "trace_context")
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
        run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors,
        trace_context, callback_url, task_proof
    )
    VALUES (
        %(task_path)s, %(queue_name)s, %(priority)s, 'READY', %(backend)s,
        %(args_json)s::jsonb, %(kwargs_json)s::jsonb, %(run_after)s::timestamptz,
        COALESCE(%(run_after)s::timestamptz, now()), now(), 0, %(max_attempts)s, '[]', '[]',
        %(trace_context_json)s::jsonb, %(callback_url)s, %(task_proof)s
    )
    RETURNING id, enqueued_at, available_at, queue_name
)
SELECT j.id, j.enqueued_at,
       CASE WHEN j.available_at <= now() THEN pg_notify('{NOTIFY_CHANNEL}', j.queue_name) END
FROM j
"""

# Bulk enqueue: one statement for any number of jobs. The calls come as one JSON
# document, [[args, kwargs, spec], ...], taken apart here (one encoding in Python for the
# whole batch); what the jobs of one task share (path, queue, priority...) comes once
# per task as the spec arrays. The answer is one row: the new ids as one array (sequence
# values rise in insert order, which is the calls') and the enqueue time they share.
ENQUEUE_BATCH = """
WITH inserted AS (
INSERT INTO django_jobs_job (
    task_path, queue_name, priority, state, backend, args, kwargs,
    run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors,
    trace_context, callback_url, task_proof
)
SELECT s.task_path, s.queue_name, s.priority, 'READY', s.backend, c.call -> 0, c.call -> 1,
       s.run_after, COALESCE(s.run_after, now()), now(), 0, s.max_attempts, '[]', '[]',
       s.trace_context, s.callback_url, s.task_proof
FROM jsonb_array_elements(%(calls)s::jsonb) WITH ORDINALITY AS c(call, n)
JOIN unnest(
    %(task_path)s::text[], %(queue_name)s::text[], %(priority)s::smallint[],
    %(backend)s::text[], %(run_after)s::timestamptz[], %(max_attempts)s::int[],
    %(trace_context_json)s::jsonb[], %(callback_url)s::text[], %(task_proof)s::text[]
) WITH ORDINALITY AS s(task_path, queue_name, priority, backend, run_after, max_attempts,
                      trace_context, callback_url, task_proof, spec)
    ON s.spec = (c.call ->> 2)::bigint + 1
ORDER BY c.n
RETURNING id
)
SELECT array_agg(id ORDER BY id), now() FROM inserted
"""

# Flow control's columns (limits.py): all NULL for a job that uses none of it, which
# then goes through ENQUEUE or ENQUEUE_BATCH above.
_FLOW_COLUMNS = ("unique_key", "concurrency_key", "concurrency_limit", "flow")

# Enqueue with flow control: the row ENQUEUE writes, plus its unique key, concurrency
# key and flow. A unique key another row holds inserts nothing (and returns nothing):
# the unique index decides, and a holder still being written by another transaction is
# waited for. What to answer then is protocol/unique.py's.
INSERT_FLOW = """
INSERT INTO django_jobs_job (
    task_path, queue_name, priority, state, backend, args, kwargs,
    run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors,
    trace_context, callback_url, task_proof,
    unique_key, concurrency_key, concurrency_limit, flow
)
VALUES (
    %(task_path)s, %(queue_name)s, %(priority)s, 'READY', %(backend)s,
    %(args_json)s::jsonb, %(kwargs_json)s::jsonb, %(run_after)s::timestamptz,
    COALESCE(%(run_after)s::timestamptz, now()), now(), 0, %(max_attempts)s, '[]', '[]',
    %(trace_context_json)s::jsonb, %(callback_url)s, %(task_proof)s,
    %(unique_key)s, %(concurrency_key)s, %(concurrency_limit)s, %(flow)s
)
ON CONFLICT (backend, task_path, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
RETURNING id, enqueued_at, available_at, queue_name
"""
ENQUEUE_FLOW = f"""
WITH j AS ({INSERT_FLOW})
SELECT j.id, j.enqueued_at,
       CASE WHEN j.available_at <= now() THEN pg_notify('{NOTIFY_CHANNEL}', j.queue_name) END
FROM j
"""

# Bulk enqueue with flow control, one array per column. RETURNING keeps the input order
# (the rows are inserted in `n` order), minus the rows whose unique key was taken, and
# says which came back.
ENQUEUE_MANY_FLOW = """
INSERT INTO django_jobs_job (
    task_path, queue_name, priority, state, backend, args, kwargs,
    run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors,
    trace_context, callback_url, task_proof,
    unique_key, concurrency_key, concurrency_limit, flow
)
SELECT t.task_path, t.queue_name, t.priority, 'READY', t.backend, t.args, t.kwargs,
       t.run_after, COALESCE(t.run_after, now()), now(), 0, t.max_attempts, '[]', '[]',
       t.trace_context, t.callback_url, t.task_proof,
       t.unique_key, t.concurrency_key, t.concurrency_limit, t.flow
FROM unnest(
    %(task_path)s::text[], %(queue_name)s::text[], %(priority)s::smallint[],
    %(backend)s::text[], %(args_json)s::jsonb[], %(kwargs_json)s::jsonb[],
    %(run_after)s::timestamptz[], %(max_attempts)s::int[],
    %(trace_context_json)s::jsonb[], %(callback_url)s::text[], %(task_proof)s::text[],
    %(unique_key)s::text[], %(concurrency_key)s::text[], %(concurrency_limit)s::int[],
    %(flow)s::text[]
) WITH ORDINALITY AS t(task_path, queue_name, priority, backend, args, kwargs,
                      run_after, max_attempts, trace_context, callback_url, task_proof,
                      unique_key, concurrency_key, concurrency_limit, flow, n)
ORDER BY t.n
ON CONFLICT (backend, task_path, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
RETURNING id, enqueued_at, backend, task_path, unique_key
"""

NOTIFY_QUEUES = f"""
SELECT pg_notify('{NOTIFY_CHANNEL}', q) FROM unnest(%(queues)s::text[]) AS q
"""

# Claim: pick up to `limit` runnable jobs in priority order, skipping rows another
# worker has locked, and mark them RUNNING in the same statement. The lock is held
# only for this statement's transaction, never while the task runs. `attempts` is
# bumped here and becomes the fencing token for the completion.
#
# The claim index is (backend, priority DESC, available_at, id) on READY rows. Walked as
# one range, `available_at <= now()` would only be a filter after the priority column:
# once the due jobs are taken, the walk would go on through every job due later (a
# million reminders scheduled for next week: every idle poll reading a million index
# entries). So the claim goes priority level by priority level: `levels` finds the
# distinct priorities of READY jobs with one index probe each, highest first, and for
# each level the due jobs are a range of the index that stops at the first job due
# later. A nested loop takes the levels in that order and stops once `limit` rows came.
# The distinct priorities of the backend's READY jobs, highest first: one index probe each.
# ({flow} is `AND flow IS NULL`, the claim index's predicate, where the index must serve:
# limited jobs are claimed by CLAIM_LIMITED, within their limits.)
_LEVELS = """
WITH RECURSIVE levels(priority) AS (
    (SELECT priority FROM django_jobs_job
     WHERE state = 'READY' AND backend = %(backend)s {flow}
     ORDER BY priority DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT j.priority FROM django_jobs_job AS j
            WHERE j.state = 'READY' AND j.backend = %(backend)s AND j.priority < levels.priority
                  {flow}
            ORDER BY j.priority DESC LIMIT 1)
    FROM levels WHERE levels.priority IS NOT NULL
)"""

_CLAIM = f"""
{_LEVELS},
due AS (
    SELECT d.id
    FROM levels
    CROSS JOIN LATERAL (
        SELECT id FROM django_jobs_job
        WHERE state = 'READY' AND backend = %(backend)s AND priority = levels.priority
          AND available_at <= {{due}} {{flow}} {{queue_filter}}
        ORDER BY available_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS d
    WHERE levels.priority IS NOT NULL
    LIMIT %(limit)s
)
UPDATE django_jobs_job AS j
SET state = 'RUNNING',
    attempts = j.attempts + 1,
    worker_id = %(worker_id)s::text,
    worker_ids = j.worker_ids || jsonb_build_array(%(worker_id)s::text),
    started_at = COALESCE(j.started_at, now()),
    last_attempted_at = now()
FROM due
WHERE j.id = due.id
RETURNING {_RETURNING}
"""
_PLAIN_ONLY = "AND flow IS NULL"
CLAIM = _CLAIM.format(
    due="now()", flow=_PLAIN_ONLY, queue_filter="AND queue_name = ANY(%(queues)s::text[])"
)
CLAIM_ANY_QUEUE = _CLAIM.format(due="now()", flow=_PLAIN_ONLY, queue_filter="")

# The claim of a process that declares limits, or finds limited jobs waiting: the plain
# claim's jobs and the limited ones in one priority order, within the limits
# (protocol/limits.py). `flow IS NULL` above keeps the plain claim off limited jobs.
CLAIM_LIMITED = limits.claim_statement(_RETURNING, queue_filter=True)
CLAIM_LIMITED_ANY_QUEUE = limits.claim_statement(_RETURNING, queue_filter=False)

# The claim for django_jobs.testing, run inside a test's transaction, where now() stands
# still at the transaction's start: it may also take jobs due up to a later time (a
# retry's, a run_after), and only some jobs (immediate mode runs the one just enqueued).
# Each filter is off when its parameter is NULL (GREATEST ignores a NULL). Limits do not
# apply: a test runs the jobs it enqueued. Workers never run it: its plan is not the hot
# claim's.
CLAIM_IN_TEST = _CLAIM.format(
    due="GREATEST(now(), %(due_by)s::timestamptz)",
    flow="",
    queue_filter="AND (%(queues)s::text[] IS NULL OR queue_name = ANY(%(queues)s::text[])) "
    "AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))",
)

# Seconds until the next READY job of a backend (and queues) is due, for `--burst`
# deciding whether to wait (negative: due already). A read, level by level like the
# claim: the first job of each priority in django_jobs_job_claim is its earliest.
_NEXT_DUE = f"""
{_LEVELS}
SELECT EXTRACT(EPOCH FROM min(d.available_at) - now())::float8
FROM levels
CROSS JOIN LATERAL (
    SELECT available_at FROM django_jobs_job
    WHERE state = 'READY' AND backend = %(backend)s AND priority = levels.priority
          {{flow}} {{queue_filter}}
    ORDER BY available_at, id
    LIMIT 1
) AS d
WHERE levels.priority IS NOT NULL
"""
NEXT_DUE = _NEXT_DUE.format(
    flow=_PLAIN_ONLY, queue_filter="AND queue_name = ANY(%(queues)s::text[])"
)
NEXT_DUE_ANY_QUEUE = _NEXT_DUE.format(flow=_PLAIN_ONLY, queue_filter="")

# Every statement that ends an attempt also returns, last, for limited jobs the limiters
# they counted in (limits.SLOTS), which the functions below give back (_ended).

# Fenced success: only the attempt that claimed the job may finish it. A row that was
# rescued (and maybe re-claimed) since then no longer matches and is left alone. Only
# jobs with no dependents: a workflow step is finished by COMPLETE_STEPS, with the
# dependents it unblocks (see complete()); the extra test reads the row being updated.
# The webhook deliveries of the jobs that name a callback URL are enqueued in the same
# statement (protocol/webhooks.py says why).
COMPLETE_MANY = f"""
WITH done AS (
    UPDATE django_jobs_job AS j
    SET state = 'SUCCESSFUL', finished_at = now(), return_value = o.return_value
    FROM unnest(%(job_id)s::bigint[], %(attempt)s::int[], %(return_json)s::jsonb[])
         AS o(id, attempt, return_value)
    WHERE j.id = o.id AND j.state = 'RUNNING' AND j.attempts = o.attempt
      AND j.dependents IS NULL
    RETURNING j.id, j.finished_at, {webhooks.RETURNING}, {limits.SLOTS} AS slots
), {webhooks.deliveries("done", "job.finished")}
SELECT id, finished_at, slots FROM done
"""

# Fenced success of workflow steps: the same statement counts each step off its
# dependents and makes those whose last parent it was READY (steps.UNBLOCK), so
# no step is left BLOCKED by a worker that died between two statements. Kept apart
# from COMPLETE_MANY because its extra nodes cost every statement a little, even
# empty. The one-time filter runs the notification CTE.
COMPLETE_STEPS = f"""
WITH done AS (
    UPDATE django_jobs_job AS j
    SET state = 'SUCCESSFUL', finished_at = now(), return_value = o.return_value
    FROM unnest(%(job_id)s::bigint[], %(attempt)s::int[], %(return_json)s::jsonb[])
         AS o(id, attempt, return_value)
    WHERE j.id = o.id AND j.state = 'RUNNING' AND j.attempts = o.attempt
    RETURNING j.id, j.finished_at, j.dependents, {webhooks.RETURNING},
              {limits.SLOTS} AS slots
),
{UNBLOCK},
{webhooks.deliveries("done", "job.finished")}
SELECT done.id, done.finished_at, done.slots FROM done
WHERE (SELECT count(*) FROM woken) >= 0
"""


# Fenced failure. `retry_in` (seconds) NULL means the attempt was the last one: FAILED.
# Otherwise the job goes back to READY, due after the backoff. The decision is the
# policy's (policy.py); this statement only carries it out, except for a job someone
# asked to cancel, which ends CANCELLED whatever the policy says (a cancelled job is
# not retried). For workflow steps that end here, the steps after them are cancelled,
# and the workflow's first failure enqueues its on_error task (steps.py). The error
# record gets the attempt's start here: the row keeps only the first and the last
# attempt's. A final failure with a callback URL enqueues its webhook delivery, as a
# success does.
FAIL_MANY = f"""
WITH RECURSIVE failed AS (
    UPDATE django_jobs_job AS j
    SET state = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'CANCELLED'
                     WHEN o.retry_in IS NULL THEN 'FAILED' ELSE 'READY' END,
        finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL OR o.retry_in IS NULL
                           THEN now() END,
        available_at = CASE WHEN j.cancel_requested_at IS NOT NULL OR o.retry_in IS NULL
                            THEN j.available_at
                            ELSE now() + make_interval(secs => o.retry_in) END,
        errors = j.errors || jsonb_build_array(
            o.error
            || jsonb_build_object('failed_at', now(), 'started_at', j.last_attempted_at)
        )
    FROM unnest(%(job_id)s::bigint[], %(attempt)s::int[], %(error_json)s::jsonb[],
                %(retry_in)s::float8[]) AS o(id, attempt, error, retry_in)
    WHERE j.id = o.id AND j.state = 'RUNNING' AND j.attempts = o.attempt
    RETURNING j.id, j.state, j.finished_at, j.workflow_id, j.dependents, j.task_path, o.error,
              {webhooks.RETURNING}, {limits.SLOTS} AS slots
),
{cancel_after("failed")},
{ON_FIRST_FAILURE},
{webhooks.deliveries("failed", "job.finished")}
SELECT failed.id, failed.state, failed.finished_at, failed.slots FROM failed
WHERE (SELECT count(*) FROM handler_woken) >= 0
"""

# The attempt stopped because someone cancelled the job (it returned or raised after
# the request, or was killed when its grace ran out): CANCELLED, never retried, the
# attempt's record appended, the workflow steps after it cancelled, and its webhook
# (if it names a callback URL) enqueued, as an operator's cancel does.
CANCEL_RUNNING_MANY = f"""
WITH RECURSIVE stopped AS (
    UPDATE django_jobs_job AS j
    SET state = 'CANCELLED', finished_at = now(),
        errors = j.errors || jsonb_build_array(
            o.error
            || jsonb_build_object('failed_at', now(), 'started_at', j.last_attempted_at)
        )
    FROM unnest(%(job_id)s::bigint[], %(attempt)s::int[], %(error_json)s::jsonb[])
         AS o(id, attempt, error)
    WHERE j.id = o.id AND j.state = 'RUNNING' AND j.attempts = o.attempt
    RETURNING j.id, j.state, j.finished_at, j.dependents, j.task_path, {webhooks.RETURNING},
              {limits.SLOTS} AS slots
),
{cancel_after("stopped")},
{webhooks.deliveries("stopped", "job.cancelled")}
SELECT stopped.id, stopped.finished_at, stopped.slots FROM stopped
"""

# Snooze: the job asked to run later. The attempt is not an error: the policy gives it
# back to the budget (the new max_attempts), and it stays in the history (worker_ids).
# A job with a cancel request ends CANCELLED instead.
SNOOZE_MANY = f"""
WITH RECURSIVE snoozed AS (
    UPDATE django_jobs_job AS j
    SET state = CASE WHEN j.cancel_requested_at IS NULL THEN 'READY' ELSE 'CANCELLED' END,
        finished_at = CASE WHEN j.cancel_requested_at IS NULL THEN NULL ELSE now() END,
        max_attempts = o.max_attempts,
        available_at = now() + make_interval(secs => o.snooze_for)
    FROM unnest(%(job_id)s::bigint[], %(attempt)s::int[], %(snooze_for)s::float8[],
                %(max_attempts)s::int[]) AS o(id, attempt, snooze_for, max_attempts)
    WHERE j.id = o.id AND j.state = 'RUNNING' AND j.attempts = o.attempt
    RETURNING j.id, j.state, j.dependents, j.task_path, {limits.SLOTS} AS slots
),
{cancel_after("snoozed")}
SELECT snoozed.id, snoozed.state, snoozed.slots FROM snoozed
"""

# Undo a claim: back to READY, and the attempt, its worker entry and its times go too.
# A job someone asked to cancel ends CANCELLED instead (the claim is undone all the same).
_UNCLAIM = """
SET state = CASE WHEN j.cancel_requested_at IS NULL THEN 'READY' ELSE 'CANCELLED' END,
    finished_at = CASE WHEN j.cancel_requested_at IS NULL THEN NULL ELSE now() END,
    attempts = j.attempts - 1,
    worker_ids = j.worker_ids - (jsonb_array_length(j.worker_ids) - 1),
    started_at = CASE WHEN j.attempts = 1 THEN NULL ELSE j.started_at END,
    last_attempted_at = CASE WHEN j.attempts = 1 THEN NULL ELSE j.last_attempted_at END
"""

# Hand claimed-but-unstarted jobs back (shutdown, or a prefetch the worker will not
# run): READY again, and the claim is undone so no attempt is spent.
RELEASE_MANY = f"""
WITH RECURSIVE released AS (
    UPDATE django_jobs_job AS j
    {_UNCLAIM}
    FROM unnest(%(job_id)s::bigint[], %(attempt)s::int[]) AS o(id, attempt)
    WHERE j.id = o.id AND j.state = 'RUNNING' AND j.attempts = o.attempt
    RETURNING j.id, j.state, j.dependents, j.task_path, {limits.SLOTS} AS slots
),
{cancel_after("released")}
SELECT released.id, released.state, released.slots FROM released
"""

# After a reconnect: RUNNING rows under this worker's id that it does not hold (a claim
# committed but its reply was lost with the connection) go back, no attempt spent.
RELEASE_ORPHANS = f"""
WITH RECURSIVE released AS (
    UPDATE django_jobs_job AS j
    {_UNCLAIM}
    WHERE j.worker_id = %(worker_id)s AND j.state = 'RUNNING'
      AND NOT (j.id = ANY(%(held)s::bigint[]))
    RETURNING j.id, j.state, j.dependents, j.task_path, {limits.SLOTS} AS slots
),
{cancel_after("released")}
SELECT released.id, released.slots FROM released
"""

# The progress a running job reported, fenced like an outcome: a late report never
# lands on a job that has finished or moved on to another attempt.
RECORD_PROGRESS = """
UPDATE django_jobs_job AS j
SET progress = o.progress || jsonb_build_object('attempt', o.attempt, 'updated_at', now())
FROM unnest(%(job_id)s::bigint[], %(attempt)s::int[], %(progress_json)s::jsonb[])
     AS o(id, attempt, progress)
WHERE j.id = o.id AND j.state = 'RUNNING' AND j.attempts = o.attempt
RETURNING j.id
"""


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to insert. ``args_json``/``kwargs_json`` are already-validated JSON text."""

    task_path: str
    queue_name: str
    priority: int
    backend: str
    args_json: str
    kwargs_json: str
    run_after: datetime | None
    max_attempts: int
    #: W3C trace context headers (JSON text) of the enqueue, continued by the worker.
    trace_context_json: str | None = None
    #: Where to POST the outcome once the job has finished (webhooks).
    callback_url: str | None = None
    #: registry.proof(task_path), or "" for a row that proves nothing.
    task_proof: str = ""
    #: Flow control (limits.py); all None for a job that uses none of it.
    unique_key: str | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    flow: str | None = None

    @property
    def uses_flow(self) -> bool:
        return self.unique_key is not None or self.flow is not None


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job a worker holds: the row as the claim left it (``attempts`` already bumped)."""

    id: int
    task_path: str
    queue_name: str
    priority: int
    backend: str
    args: list[Any]
    kwargs: dict[str, Any]
    run_after: datetime | None
    available_at: datetime
    enqueued_at: datetime
    started_at: datetime
    last_attempted_at: datetime
    attempts: int
    max_attempts: int
    worker_ids: list[str]
    errors: list[dict[str, Any]]
    trace_context: dict[str, str] | None
    task_proof: str = ""
    #: What the step receives from its parents before its own arguments ("", "value",
    #: "list"), and its parents in order (None for a job in no workflow).
    receives: str = ""
    parents: list[int] | None = None
    dependents: list[int] | None = None

    def as_row(self) -> dict[str, Any]:
        """The job's columns by name, as ``JobsBackend.result_from_row`` reads them."""
        return dict(zip(JOB_COLUMNS, _claimed_fields(self), strict=True))


_claimed_fields = attrgetter(*JOB_COLUMNS)
# Where each of ClaimedJob's fields sits in (plain columns..., *parsed JSON columns).
_PLAIN_COUNT = len(JOB_COLUMNS) - len(JSON_COLUMNS)
_FIELD_ORDER = itemgetter(
    *(
        _PLAIN_COUNT + JSON_COLUMNS.index(c)
        if c in JSON_COLUMNS
        else [p for p in JOB_COLUMNS if p not in JSON_COLUMNS].index(c)
        for c in JOB_COLUMNS
    )
)


def _claimed_job(row: tuple) -> ClaimedJob:
    """A claim's row: the plain columns, then the JSON ones as one array's text."""
    return ClaimedJob(*_FIELD_ORDER((*row[:-1], *json.loads(row[-1]))))


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a job: what fences a write to it."""

    job_id: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Success:
    job_id: int
    attempt: int
    return_json: str
    #: A hint: the job is a workflow step with dependents (ClaimedJob.dependents), so
    #: its success goes straight to COMPLETE_STEPS. complete() is right without it.
    has_dependents: bool = False


@dataclass(frozen=True, slots=True)
class Failure:
    job_id: int
    attempt: int
    error_json: str
    #: Seconds until the next attempt, or None when this was the last one.
    retry_in: float | None


@dataclass(frozen=True, slots=True)
class Cancelled:
    job_id: int
    attempt: int
    error_json: str


@dataclass(frozen=True, slots=True)
class Progressed:
    """The progress a running attempt reported (JSON: done, total, message)."""

    job_id: int
    attempt: int
    progress_json: str


@dataclass(frozen=True, slots=True)
class Snoozed:
    job_id: int
    attempt: int
    snooze_for: float
    #: The job's attempt budget after the snooze (see policy.max_attempts_after_snooze).
    max_attempts: int


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What the jobs of one task share in a bulk enqueue."""

    task_path: str
    queue_name: str
    priority: int
    backend: str
    run_after: datetime | None
    max_attempts: int
    #: Where to POST the outcome once a job has finished (webhooks).
    callback_url: str | None = None
    #: W3C trace context headers (JSON text) of the enqueue, continued by the worker.
    trace_context_json: str | None = None
    #: registry.proof(task_path), or "" for a row that proves nothing.
    task_proof: str = ""


NEW_JOB_FIELDS = tuple(f.name for f in fields(NewJob))
#: The columns of a job that uses no flow control: ENQUEUE takes only these.
_PLAIN_FIELDS = NEW_JOB_FIELDS[: NEW_JOB_FIELDS.index(_FLOW_COLUMNS[0])]
new_job_values = attrgetter(*NEW_JOB_FIELDS)
#: The parameters of ENQUEUE that a JobSpec gives (all but the arguments).
_SPEC_FIELDS = tuple(f for f in _PLAIN_FIELDS if f not in ("args_json", "kwargs_json"))
_plain_values = attrgetter(*_PLAIN_FIELDS)


def enqueue(cursor: Cursor, job: NewJob) -> tuple[int, datetime] | None:
    """Insert one job (and wake workers if it can run now); return its id and enqueued_at.

    None when the job's unique key is held by another job (nothing was inserted).
    """
    if not job.uses_flow:
        cursor.execute(ENQUEUE, dict(zip(_PLAIN_FIELDS, _plain_values(job), strict=True)))
    else:
        cursor.execute(ENQUEUE_FLOW, dict(zip(NEW_JOB_FIELDS, new_job_values(job), strict=True)))
    row = cursor.fetchone()
    return None if row is None else (row[0], row[1])


def plain_params(spec: "JobSpec") -> dict[str, Any]:
    """ENQUEUE's parameters for a job of ``spec`` but its arguments and proof.

    What a task's jobs share does not change from one call to the next: a caller that
    enqueues one job at a time builds this once per task and hands it to
    :func:`enqueue_plain` with each call's arguments.
    """
    return {name: getattr(spec, name) for name in _SPEC_FIELDS}


def enqueue_plain(
    cursor: Cursor, params: dict[str, Any], args_json: str, kwargs_json: str, task_proof: str
) -> tuple[int, datetime]:
    """:func:`enqueue` for a job with no flow control, from :func:`plain_params`' dict."""
    cursor.execute(
        ENQUEUE,
        {**params, "args_json": args_json, "kwargs_json": kwargs_json, "task_proof": task_proof},
    )
    row = cursor.fetchone()
    return row[0], row[1]


def enqueue_many(
    cursor: Cursor, jobs: Sequence[NewJob], *, now: datetime
) -> list[tuple[int, datetime] | None]:
    """Insert jobs with flow control in one statement; (id, enqueued_at) in input order.

    None for a job whose unique key another job holds, or an earlier one of the batch.
    (Batches with no flow control go through :func:`enqueue_batch`.)
    """
    rows = _inserted(jobs, execute_many(cursor, ENQUEUE_MANY_FLOW, jobs))
    # The wake-up is a hint, so the caller's clock is good enough to skip it for
    # jobs that are plainly in the future; the claim itself uses the database clock.
    runnable = sorted(
        {
            j.queue_name
            for j, row in zip(jobs, rows, strict=True)
            if row is not None and (j.run_after is None or j.run_after <= now)
        }
    )
    if runnable:
        cursor.execute(NOTIFY_QUEUES, {"queues": runnable})
    return rows


def _inserted(jobs: Sequence[NewJob], rows: list[Any]) -> list[tuple[int, datetime] | None]:
    """Line up the rows a bulk insert returned with its input (some keys were taken)."""
    returned = iter(rows)
    taken: set[tuple[str, str, str]] = set()
    result: list[tuple[int, datetime] | None] = []
    pending = next(returned, None)
    for job in jobs:
        key = (job.backend, job.task_path, job.unique_key) if job.unique_key else None
        if key is not None and key in taken:
            result.append(None)  # a duplicate within the batch: the first one holds it
            continue
        if pending is not None and tuple(pending[2:]) == (
            job.backend,
            job.task_path,
            job.unique_key,
        ):
            result.append((pending[0], pending[1]))
            pending = next(returned, None)
        else:
            result.append(None)
        if key is not None:
            taken.add(key)
    return result


def enqueue_batch(
    cursor: Cursor, specs: Sequence[JobSpec], calls_json: str, *, now: datetime
) -> tuple[list[int], datetime]:
    """Insert the calls of ``calls_json`` (see ENQUEUE_BATCH); return their ids in order
    and the enqueue time, and wake workers for the queues that got runnable jobs."""
    ((ids, enqueued_at),) = execute_many(
        cursor, ENQUEUE_BATCH, specs, params={"calls": calls_json}
    )
    # The wake-up is a hint, so the caller's clock is good enough to skip it for
    # jobs that are plainly in the future; the claim itself uses the database clock.
    runnable = sorted({s.queue_name for s in specs if s.run_after is None or s.run_after <= now})
    if runnable:
        cursor.execute(NOTIFY_QUEUES, {"queues": runnable})
    return ids, enqueued_at


def claim(
    cursor: Cursor, *, worker_id: str, backend: str, queues: Sequence[str] | None, limit: int
) -> list[ClaimedJob]:
    """Mark up to ``limit`` runnable jobs RUNNING for ``worker_id``, highest priority first.

    Jobs with limits are claimed only within them, and only by a process that declares
    limits or has found limited jobs waiting (``limiters.activation``); any other process
    runs the plain claim, unchanged.
    """
    if limit <= 0:
        return []
    params: dict[str, Any] = {"worker_id": worker_id, "backend": backend, "limit": limit}
    if queues is not None:
        params["queues"] = list(queues)
    activation = limiters.activation
    if not activation.active(cursor, backend):
        jobs = _claim_plain(cursor, params)
    elif activation.merge_due(backend):
        jobs = _claim_limited(cursor, params, limit)
    else:
        jobs = _claim_plain(cursor, params)
        if len(jobs) < limit:
            jobs += _claim_limited(cursor, params, limit - len(jobs))
    # RETURNING does not keep the sub-select's order.
    jobs.sort(key=lambda j: (-j.priority, j.available_at, j.id))
    return jobs


def _claim_plain(cursor: Cursor, params: dict[str, Any]) -> list[ClaimedJob]:
    cursor.execute(CLAIM if "queues" in params else CLAIM_ANY_QUEUE, params)
    return [_claimed_job(row) for row in cursor.fetchall()]


#: Most limited claim statements one claim() runs, while each parks jobs or meets new
#: keys (which frees the way for the next candidates) without filling ``limit``.
LIMITED_ROUNDS = 8


def _claim_limited(cursor: Cursor, params: dict[str, Any], limit: int) -> list[ClaimedJob]:
    statement = CLAIM_LIMITED if "queues" in params else CLAIM_LIMITED_ANY_QUEUE
    jobs: list[ClaimedJob] = []
    found = False
    for _ in range(LIMITED_ROUNDS):
        with limits.transaction(cursor):
            cursor.execute(limits.NO_JIT)
            cursor.execute(statement, {**params, "limit": limit - len(jobs)})
            rows = cursor.fetchall()
        progress = 0
        for row in rows:
            if row[0] == "claimed":
                jobs.append(_claimed_job(row[1:-2]))
            else:
                progress, started = row[-2], row[-1]
                found = found or bool(progress or started)
        if not progress or len(jobs) >= limit:
            break
    limiters.activation.merged(params["backend"], found=found)
    return jobs


def claim_in_test(
    cursor: Cursor,
    *,
    worker_id: str,
    backend: str,
    queues: Sequence[str] | None = None,
    ids: Sequence[int] | None = None,
    due_by: datetime | None = None,
    limit: int = 1,
) -> list[ClaimedJob]:
    """Claim as a worker does, also jobs due by ``due_by``, and only ``ids`` if given."""
    params = {
        "worker_id": worker_id,
        "backend": backend,
        "limit": limit,
        "queues": None if queues is None else list(queues),
        "ids": None if ids is None else list(ids),
        "due_by": due_by,
    }
    cursor.execute(CLAIM_IN_TEST, params)
    jobs = [_claimed_job(row) for row in cursor.fetchall()]
    jobs.sort(key=lambda j: (-j.priority, j.available_at, j.id))
    return jobs


def next_due_in(cursor: Cursor, *, backend: str, queues: Sequence[str] | None) -> float | None:
    """Seconds until the next READY job of ``backend`` is due, or None if there is none."""
    if queues is None:
        cursor.execute(NEXT_DUE_ANY_QUEUE, {"backend": backend})
    else:
        cursor.execute(NEXT_DUE, {"backend": backend, "queues": list(queues)})
    return cursor.fetchone()[0]


def complete(cursor: Cursor, successes: Iterable[Success]) -> dict[int, datetime]:
    """Record successes; return finished_at per job id actually recorded (fenced).

    One statement for the jobs in no workflow. What it leaves (workflow steps, and
    attempts the fence refuses) goes through COMPLETE_STEPS, which finishes each step
    and unblocks its dependents at once; so do the successes hinted to be steps
    (``has_dependents``), without a first try. A wrong hint costs a statement, never a
    step left BLOCKED.
    """
    batch = list(successes)
    plain = [success for success in batch if not success.has_dependents]
    done = {row[0]: row[1] for row in _ended(cursor, execute_many(cursor, COMPLETE_MANY, plain))}
    rest = [success for success in batch if success.job_id not in done]
    if rest:
        rows = _ended(cursor, execute_many(cursor, COMPLETE_STEPS, rest))
        done.update((row[0], row[1]) for row in rows)
    return done


def fail(cursor: Cursor, failures: Iterable[Failure]) -> dict[int, tuple[str, datetime | None]]:
    """Record failed attempts (retry or final); return (state, finished_at) per recorded id."""
    rows = _ended(cursor, execute_many(cursor, FAIL_MANY, list(failures)))
    return {row[0]: (row[1], row[2]) for row in rows}


def cancelled(cursor: Cursor, stopped: Iterable[Cancelled]) -> dict[int, datetime]:
    """Record attempts stopped by a cancel request; return finished_at per recorded id."""
    rows = _ended(cursor, execute_many(cursor, CANCEL_RUNNING_MANY, list(stopped)))
    return {row[0]: row[1] for row in rows}


def snooze(cursor: Cursor, snoozed: Iterable[Snoozed]) -> dict[int, str]:
    """Put jobs that asked to run later back to READY without counting an error.

    Return the new state per recorded id (CANCELLED for a job someone asked to cancel).
    """
    rows = _ended(cursor, execute_many(cursor, SNOOZE_MANY, list(snoozed)))
    return {row[0]: row[1] for row in rows}


def release(cursor: Cursor, jobs: Iterable[ClaimedJob]) -> set[int]:
    """Give claimed jobs that never started back to the queue without spending an attempt.

    Return the ids released (a job someone asked to cancel ends CANCELLED instead).
    """
    attempts = [Attempt(job.id, job.attempts) for job in jobs]
    return {row[0] for row in _ended(cursor, execute_many(cursor, RELEASE_MANY, attempts))}


def record_progress(cursor: Cursor, reports: Iterable[Progressed]) -> set[int]:
    """Store the progress of running attempts; return the ids stored (fenced)."""
    return {row[0] for row in execute_many(cursor, RECORD_PROGRESS, list(reports))}


def release_orphans(cursor: Cursor, *, worker_id: str, held: Iterable[int]) -> list[int]:
    """Release RUNNING jobs claimed under ``worker_id`` that the worker does not hold."""
    cursor.execute(RELEASE_ORPHANS, {"worker_id": worker_id, "held": list(held)})
    return [row[0] for row in _ended(cursor, cursor.fetchall())]


def _ended(cursor: Cursor, rows: list[Any]) -> list[Any]:
    """Give back the slots of the limited jobs among ``rows`` (their last column)."""
    slots = [row[-1] for row in rows if row[-1] is not None]
    if slots:
        limits.give_back(cursor, slots)
    return rows
