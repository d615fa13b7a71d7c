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
from typing import Any

from ..states import FINISHED_SQL
from . import Cursor
from . import jobs as job_protocol

# For each key met: give it up if its holder no longer counts, and return the holder as
# it is (the statement's snapshot shows it before the release). `counted` is the new
# job's states that count, as 'A,B'; `unique_for` NULL means finished jobs never count.
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
      AND j.state IN {FINISHED_SQL}
      AND NOT (o.unique_for IS NOT NULL AND j.state = ANY(string_to_array(o.counted, ','))
               AND j.finished_at > now() - make_interval(secs => o.unique_for))
    RETURNING j.id
)
SELECT j.id IN (SELECT id FROM released), {{columns}}
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
    """The row holding each job's key: (whether it just gave the key up, its ``columns``)."""
    cursor.execute(
        HOLDERS.format(
            columns=", ".join(f"j.{c}::text" if c in _JSON else f"j.{c}" for c in columns)
        ),
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
        row = dict(zip(columns, values, strict=True))
        for c in _JSON.intersection(row):
            row[c] = None if row[c] is None else json.loads(row[c])
        found[(row["backend"], row["task_path"], row["unique_key"])] = (released, row)
    return found


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
            inserted = [job_protocol.enqueue(cursor, batch[0])]
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
