"""Unique jobs: enqueue nothing while a job with the same key counts, and say which one.

A job of a unique task carries a key (``unique_key``), and the partial unique index
``django_jobs_job_unique_key`` on (backend, task_path, unique_key) lets one row hold a key
at a time. The insert (``jobs.ENQUEUE_FLOW``) is ``ON CONFLICT DO NOTHING``: the index,
not a look-before-you-insert, decides who wins, and an insert that meets a key another
transaction is writing waits for that transaction, then sees its row. Never a race.

A row keeps its key through every state, so a retry can never collide with a newer job.
Whether the holder still *counts* is decided when a new job meets it (``HOLDERS``): a
job that waits or runs always does; a finished one only if its state is among the task's
``unique_states`` and it finished less than ``unique_for`` ago. A holder that no longer
counts gives its key up (``unique_key`` set to NULL, under the row's lock) and the new
job is inserted in its place. So nothing has to clear keys as time passes, and the
statements that finish jobs know nothing of uniqueness.

Everything runs on the caller's cursor, inside the caller's transaction.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from ..states import FINISHED_SQL
from . import NOTIFY_CHANNEL, Cursor
from . import jobs as job_protocol

# Whether a job `h` holding the key counts as a duplicate of the new one: while it waits
# or runs, always; once finished, if its state is among `counted` (the new job's
# unique_states, as 'A,B') and it finished less than `unique_for` seconds ago.
_COUNTS = f"""(
    {{t}}.state NOT IN {FINISHED_SQL}
    OR ({{unique_for}}::float8 IS NOT NULL
        AND {{t}}.state = ANY(string_to_array({{counted}}, ','))
        AND {{t}}.finished_at > now() - make_interval(secs => {{unique_for}}::float8))
)"""

# One unique job in one statement: insert it, or, when a committed job holds the key
# and counts, return that job. Nothing comes back when the key's holder was written by
# a transaction that committed while this one waited for it (this statement's snapshot
# predates it), or no longer counts: HOLDERS then settles it.
ENQUEUE_OR_HOLDER = f"""
WITH j AS ({job_protocol.INSERT_FLOW}),
inserted AS (
    SELECT j.id, j.enqueued_at,
           CASE WHEN j.available_at <= now() THEN pg_notify('{NOTIFY_CHANNEL}', j.queue_name)
           END AS woke
    FROM j
)
SELECT true, inserted.id, inserted.enqueued_at, {{nulls}} FROM inserted
UNION ALL
SELECT false, h.id, h.enqueued_at, {{columns}} FROM django_jobs_job AS h
WHERE NOT EXISTS (SELECT 1 FROM j)
  AND h.backend = %(backend)s AND h.task_path = %(task_path)s AND h.unique_key = %(unique_key)s
  AND {_COUNTS.format(t="h", unique_for="%(unique_for)s", counted="%(counted)s")}
"""

# For each key met: give it up if its holder no longer counts, and return the holder as
# this statement's snapshot shows it, with whether it counts. One that does not is not
# an answer, whoever gave its key up (here, or a concurrent enqueue): the caller then
# inserts again, and meets whichever job holds the key by then.
HOLDERS = f"""
WITH o AS (
    SELECT * FROM unnest(%(backend)s::text[], %(task_path)s::text[], %(unique_key)s::text[],
                         %(counted)s::text[], %(unique_for)s::float8[])
         AS o(backend, task_path, unique_key, counted, unique_for)
),
released AS (
    UPDATE django_jobs_job AS j SET unique_key = NULL
    FROM o
    WHERE j.backend = o.backend AND j.task_path = o.task_path AND j.unique_key = o.unique_key
      AND NOT {_COUNTS.format(t="j", unique_for="o.unique_for", counted="o.counted")}
    RETURNING j.id
)
SELECT NOT {_COUNTS.format(t="j", unique_for="o.unique_for", counted="o.counted")}
       OR j.id IN (SELECT id FROM released), {{columns}}
FROM django_jobs_job AS j
JOIN o ON j.backend = o.backend AND j.task_path = o.task_path AND j.unique_key = o.unique_key
"""

# JSON columns are read as text and parsed here: a Django cursor and a plain psycopg
# one would otherwise hand them back differently.
_JSON = frozenset({*job_protocol.JSON_COLUMNS, "return_value"})

#: Rounds of insert-then-look before giving up: each round either inserts, finds a
#: holder that counts, or frees an expired key; another round is needed only when a
#: concurrent transaction takes a freed key first.
MAX_ROUNDS = 5


@dataclass(frozen=True, slots=True)
class Rule:
    """Which jobs with a new job's key count as its duplicate."""

    #: The states that count (the active ones always do).
    counted: tuple[str, ...]
    #: Seconds a finished job counts; None: finished jobs never do.
    unique_for: float | None


class KeyContended(RuntimeError):
    """The key changed hands in every round (see MAX_ROUNDS)."""


def holders(
    cursor: Cursor,
    jobs: Sequence[job_protocol.NewJob],
    rules: Sequence[Rule],
    columns: Sequence[str],
) -> dict[tuple[str, str, str], tuple[bool, dict[str, Any]]]:
    """The row holding each job's key: (whether it does not count, so that the job is to
    be inserted again, and its ``columns``)."""
    cursor.execute(
        HOLDERS.format(columns=", ".join(_select("j", c) for c in columns)),
        {
            "backend": [j.backend for j in jobs],
            "task_path": [j.task_path for j in jobs],
            "unique_key": [j.unique_key for j in jobs],
            "counted": [",".join(r.counted) for r in rules],
            "unique_for": [r.unique_for for r in rules],
        },
    )
    found = {}
    for released, *values in cursor.fetchall():
        row = _row(columns, values)
        found[(row["backend"], row["task_path"], row["unique_key"])] = (released, row)
    return found


@lru_cache(maxsize=8)
def _enqueue_or_holder(columns: tuple[str, ...]) -> str:
    rest = [c for c in columns if c not in ("id", "enqueued_at")]
    return ENQUEUE_OR_HOLDER.format(
        nulls=", ".join("NULL" for _ in rest),
        columns=", ".join(_select("h", c) for c in rest),
    )


def _select(alias: str, column: str) -> str:
    return f"{alias}.{column}::text" if column in _JSON else f"{alias}.{column}"


def _row(columns: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    row = dict(zip(columns, values, strict=True))
    for c in _JSON.intersection(row):
        row[c] = None if row[c] is None else json.loads(row[c])
    return row


def enqueue_one(
    cursor: Cursor, job: job_protocol.NewJob, rule: Rule, columns: Sequence[str]
) -> tuple[int, datetime] | dict[str, Any] | None:
    """Insert one unique job: (id, enqueued_at); or the holder's ``columns`` when a
    committed job holds the key and counts; or None when HOLDERS must settle it."""
    params = dict(zip(job_protocol.NEW_JOB_FIELDS, job_protocol.new_job_values(job), strict=True))
    params.update(counted=",".join(rule.counted), unique_for=rule.unique_for)
    cursor.execute(_enqueue_or_holder(tuple(columns)), params)
    row = cursor.fetchone()
    if row is None:
        return None
    inserted, job_id, enqueued_at, *rest = row
    if inserted:
        return job_id, enqueued_at
    others = [c for c in columns if c not in ("id", "enqueued_at")]
    return {"id": job_id, "enqueued_at": enqueued_at, **_row(others, rest)}


def enqueue(
    cursor: Cursor,
    jobs: Sequence[job_protocol.NewJob],
    rules: Sequence[Rule | None],
    *,
    now: datetime,
    columns: Sequence[str],
) -> list[tuple[int, datetime] | dict[str, Any]]:
    """Insert ``jobs``, each unique per its rule; for each, (id, enqueued_at) if it was
    inserted, else the holder's ``columns`` (it is a duplicate of that job).

    ``columns`` must include backend, task_path and unique_key.
    """
    outcome: list[tuple[int, datetime] | dict[str, Any] | None] = [None] * len(jobs)
    pending = list(range(len(jobs)))
    for _ in range(MAX_ROUNDS):
        batch = [jobs[i] for i in pending]
        if len(batch) == 1:
            (i,) = pending
            inserted = [enqueue_one(cursor, jobs[i], rules[i] or Rule((), None), columns)]
            if isinstance(inserted[0], dict):
                outcome[i] = inserted[0]
                break
        else:
            inserted = job_protocol.enqueue_many(cursor, batch, now=now)
        taken = []
        for i, row in zip(pending, inserted, strict=True):
            if row is None:
                taken.append(i)
            else:
                outcome[i] = row
        if not taken:
            break
        distinct = {_key(jobs[i]): i for i in reversed(taken)}
        found = holders(
            cursor,
            [jobs[i] for i in distinct.values()],
            [rules[i] or Rule((), None) for i in distinct.values()],
            columns,
        )
        pending = []
        for i in taken:
            released, row = found.get(_key(jobs[i]), (True, {}))
            if released:
                pending.append(i)
            else:
                outcome[i] = row
        if not pending:
            break
    else:
        raise KeyContended(
            f"Could not enqueue {len(pending)} unique job(s), e.g. task "
            f"{jobs[pending[0]].task_path!r} with key {jobs[pending[0]].unique_key!r}: the "
            f"key was given up and taken by another transaction {MAX_ROUNDS} times in a row. "
            "Nothing of them was written; enqueue again."
        )
    return [o for o in outcome if o is not None]


def _key(job: job_protocol.NewJob) -> tuple[str, str, str]:
    return (job.backend, job.task_path, job.unique_key or "")
