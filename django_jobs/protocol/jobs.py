"""A job's life under a worker: enqueue, claim, and the fenced outcomes of an attempt.

``attempts`` is bumped by the claim and is the fencing token of everything after it:
an outcome is written only ``WHERE state = 'RUNNING' AND attempts = <the claimed
attempt>``, so a worker that comes back after its job was rescued (and maybe claimed
again) cannot overwrite the newer attempt. Each function returns what the database
took; what is missing was refused by the fence.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import Any

from . import NOTIFY_CHANNEL, Cursor, execute_many, limiters, limits

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

# The row a job starts as; {columns} and {values} add flow control's columns, {conflict}
# what a taken unique key does.
_INSERT_ONE = """
INSERT INTO django_jobs_job (
    task_path, queue_name, priority, state, backend, args, kwargs,
    run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors{columns}
)
VALUES (
    %(task_path)s, %(queue_name)s, %(priority)s, 'READY', %(backend)s,
    %(args_json)s::jsonb, %(kwargs_json)s::jsonb, %(run_after)s::timestamptz,
    COALESCE(%(run_after)s::timestamptz, now()), now(), 0, %(max_attempts)s, '[]', '[]'{values}
)
{conflict}RETURNING id, enqueued_at, available_at, queue_name
"""
_INSERT_MANY = """
INSERT INTO django_jobs_job (
    task_path, queue_name, priority, state, backend, args, kwargs,
    run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors{columns}
)
SELECT t.task_path, t.queue_name, t.priority, 'READY', t.backend, t.args, t.kwargs,
       t.run_after, COALESCE(t.run_after, now()), now(), 0, t.max_attempts, '[]', '[]'{t_values}
FROM unnest(
    %(task_path)s::text[], %(queue_name)s::text[], %(priority)s::smallint[],
    %(backend)s::text[], %(args_json)s::jsonb[], %(kwargs_json)s::jsonb[],
    %(run_after)s::timestamptz[], %(max_attempts)s::int[]{arrays}
) WITH ORDINALITY AS t(task_path, queue_name, priority, backend, args, kwargs,
                      run_after, max_attempts{names}, n)
ORDER BY t.n
{conflict}RETURNING id, enqueued_at{returning}
"""
# The same INSERT ... SELECT, and in the same statement (so in the caller's transaction)
# one NOTIFY when the job may run at once. Postgres delivers it only on commit, and
# folds duplicates within a transaction, so a request that enqueues 100 jobs wakes
# workers once.
_WAKE = f"""
SELECT j.id, j.enqueued_at,
       CASE WHEN j.available_at <= now() THEN pg_notify('{NOTIFY_CHANNEL}', j.queue_name) END
FROM j
"""
_PLAIN = {"columns": "", "values": "", "conflict": ""}

ENQUEUE = f"WITH j AS ({_INSERT_ONE.format(**_PLAIN)}){_WAKE}"

# Bulk enqueue: one statement for any number of jobs (arrays unnested server-side),
# then one NOTIFY per distinct queue that got a runnable job.
ENQUEUE_MANY = _INSERT_MANY.format(t_values="", arrays="", names="", returning="", **_PLAIN)

# Enqueue with flow control: the same row, plus its unique key, concurrency key and flow
# (limits.py). A unique key another row holds inserts nothing (and returns nothing): the
# unique index decides, and a holder still being written by another transaction is
# waited for. What to answer then is protocol/unique.py's.
_FLOW_COLUMNS = ("unique_key", "concurrency_key", "concurrency_limit", "flow")
_FLOW = {
    "columns": "".join(f", {c}" for c in _FLOW_COLUMNS),
    "conflict": "ON CONFLICT (backend, task_path, unique_key) WHERE unique_key IS NOT NULL "
    "DO NOTHING\n",
}
INSERT_FLOW = _INSERT_ONE.format(values="".join(f", %({c})s" for c in _FLOW_COLUMNS), **_FLOW)
ENQUEUE_FLOW = f"WITH j AS ({INSERT_FLOW}){_WAKE}"

# Bulk enqueue with flow control. RETURNING keeps the input order (the rows are
# inserted in `n` order), minus the rows whose unique key was taken, and says which
# came back.
ENQUEUE_MANY_FLOW = _INSERT_MANY.format(
    t_values="".join(f", t.{c}" for c in _FLOW_COLUMNS),
    arrays=", %(unique_key)s::text[], %(concurrency_key)s::text[], "
    "%(concurrency_limit)s::int[], %(flow)s::text[]",
    names="".join(f", {c}" for c in _FLOW_COLUMNS),
    returning=", backend, task_path, unique_key",
    **_FLOW,
)

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
CLAIM = _CLAIM.format(queue_filter="AND flow IS NULL AND queue_name = ANY(%(queues)s::text[])")
CLAIM_ANY_QUEUE = _CLAIM.format(queue_filter="AND flow IS NULL")

# The claim of a process that declares limits, or finds limited jobs waiting: the plain
# claim's jobs and the limited ones in one priority order, within the limits
# (protocol/limits.py). `flow IS NULL` above keeps the plain claim off limited jobs.
CLAIM_LIMITED = limits.claim_statement(_RETURNING, queue_filter=True)
CLAIM_LIMITED_ANY_QUEUE = limits.claim_statement(_RETURNING, queue_filter=False)

# Every statement that ends an attempt also returns, for limited jobs, the limiters they
# counted in (limits.SLOTS), which the functions below give back (limits.give_back).

# Fenced success: only the attempt that claimed the job may finish it. A row that was
# rescued (and maybe re-claimed) since then no longer matches and is left alone.
COMPLETE_MANY = f"""
UPDATE django_jobs_job AS j
SET state = 'SUCCESSFUL', finished_at = now(), return_value = o.return_value
FROM unnest(%(job_id)s::bigint[], %(attempt)s::int[], %(return_json)s::jsonb[])
     AS o(id, attempt, return_value)
WHERE j.id = o.id AND j.state = 'RUNNING' AND j.attempts = o.attempt
RETURNING j.id, j.finished_at, {limits.SLOTS}
"""
# Fenced failure. `retry_in` (seconds) NULL means the attempt was the last one: FAILED.
# Otherwise the job goes back to READY, due after the backoff. The decision is the
# policy's (policy.py); this statement only carries it out.
FAIL_MANY = f"""
UPDATE django_jobs_job AS j
SET state = CASE WHEN o.retry_in IS NULL THEN 'FAILED' ELSE 'READY' END,
    finished_at = CASE WHEN o.retry_in IS NULL THEN now() END,
    available_at = CASE WHEN o.retry_in IS NULL THEN j.available_at
                        ELSE now() + make_interval(secs => o.retry_in) END,
    errors = j.errors || jsonb_build_array(o.error || jsonb_build_object('failed_at', now()))
FROM unnest(%(job_id)s::bigint[], %(attempt)s::int[], %(error_json)s::jsonb[],
            %(retry_in)s::float8[]) AS o(id, attempt, error, retry_in)
WHERE j.id = o.id AND j.state = 'RUNNING' AND j.attempts = o.attempt
RETURNING j.id, j.state, j.finished_at, {limits.SLOTS}
"""
# Snooze: the job asked to run later. The attempt is not an error: the policy gives it
# back to the budget (the new max_attempts), and it stays in the history (worker_ids).
SNOOZE_MANY = f"""
UPDATE django_jobs_job AS j
SET state = 'READY',
    max_attempts = o.max_attempts,
    available_at = now() + make_interval(secs => o.snooze_for)
FROM unnest(%(job_id)s::bigint[], %(attempt)s::int[], %(snooze_for)s::float8[],
            %(max_attempts)s::int[]) AS o(id, attempt, snooze_for, max_attempts)
WHERE j.id = o.id AND j.state = 'RUNNING' AND j.attempts = o.attempt
RETURNING j.id, {limits.SLOTS}
"""
# Undo a claim: back to READY, and the attempt, its worker entry and its times go too.
_UNCLAIM = """
SET state = 'READY',
    attempts = j.attempts - 1,
    worker_ids = j.worker_ids - (jsonb_array_length(j.worker_ids) - 1),
    started_at = CASE WHEN j.attempts = 1 THEN NULL ELSE j.started_at END,
    last_attempted_at = CASE WHEN j.attempts = 1 THEN NULL ELSE j.last_attempted_at END
"""

# Hand claimed-but-unstarted jobs back (shutdown, or a prefetch the worker will not
# run): READY again, and the claim is undone so no attempt is spent.
RELEASE_MANY = f"""
UPDATE django_jobs_job AS j
{_UNCLAIM}
FROM unnest(%(job_id)s::bigint[], %(attempt)s::int[]) AS o(id, attempt)
WHERE j.id = o.id AND j.state = 'RUNNING' AND j.attempts = o.attempt
RETURNING j.id, {limits.SLOTS}
"""
# After a reconnect: RUNNING rows under this worker's id that it does not hold (a claim
# committed but its reply was lost with the connection) go back, no attempt spent.
RELEASE_ORPHANS = f"""
UPDATE django_jobs_job AS j
{_UNCLAIM}
WHERE j.worker_id = %(worker_id)s AND j.state = 'RUNNING'
  AND NOT (j.id = ANY(%(held)s::bigint[]))
RETURNING j.id, {limits.SLOTS}
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

    def to_wire(self) -> tuple:
        """A plain tuple for a pipe: pickling a slots dataclass is several times slower."""
        return _claimed_fields(self)

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


@dataclass(frozen=True, slots=True)
class Failure:
    job_id: int
    attempt: int
    error_json: str
    #: Seconds until the next attempt, or None when this was the last one.
    retry_in: float | None


@dataclass(frozen=True, slots=True)
class Snoozed:
    job_id: int
    attempt: int
    snooze_for: float
    #: The job's attempt budget after the snooze (see policy.max_attempts_after_snooze).
    max_attempts: int


NEW_JOB_FIELDS = tuple(f.name for f in fields(NewJob))
#: The columns of a job that uses no flow control: the plain statements take only these.
_PLAIN_FIELDS = NEW_JOB_FIELDS[: NEW_JOB_FIELDS.index("unique_key")]
new_job_values = attrgetter(*NEW_JOB_FIELDS)
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


def enqueue_many(
    cursor: Cursor, jobs: Sequence[NewJob], *, now: datetime
) -> list[tuple[int, datetime] | None]:
    """Insert many jobs in one statement; return (id, enqueued_at) in input order.

    None for a job whose unique key another job holds, or an earlier one of the batch.
    """
    if not any(j.uses_flow for j in jobs):
        arrays = {name: [getattr(j, name) for j in jobs] for name in _PLAIN_FIELDS}
        cursor.execute(ENQUEUE_MANY, arrays)
        rows: list[tuple[int, datetime] | None] = [(r[0], r[1]) for r in cursor.fetchall()]
    else:
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


def complete(cursor: Cursor, successes: Iterable[Success]) -> dict[int, datetime]:
    """Record successes; return finished_at per job id actually recorded (fenced)."""
    rows = _ended(cursor, execute_many(cursor, COMPLETE_MANY, list(successes)))
    return {row[0]: row[1] for row in rows}


def fail(cursor: Cursor, failures: Iterable[Failure]) -> dict[int, tuple[str, datetime | None]]:
    """Record failed attempts (retry or final); return (state, finished_at) per recorded id."""
    rows = _ended(cursor, execute_many(cursor, FAIL_MANY, list(failures)))
    return {row[0]: (row[1], row[2]) for row in rows}


def snooze(cursor: Cursor, snoozed: Iterable[Snoozed]) -> set[int]:
    """Put jobs that asked to run later back to READY without counting an error."""
    return {row[0] for row in _ended(cursor, execute_many(cursor, SNOOZE_MANY, list(snoozed)))}


def release(cursor: Cursor, jobs: Iterable[ClaimedJob]) -> set[int]:
    """Give claimed jobs that never started back to the queue without spending an attempt."""
    attempts = [Attempt(job.id, job.attempts) for job in jobs]
    return {row[0] for row in _ended(cursor, execute_many(cursor, RELEASE_MANY, attempts))}


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
