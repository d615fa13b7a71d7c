"""The queue protocol: every SQL statement that writes the job tables, and nothing else.

One module per subject, each with its statements as named constants (and a comment
that gives the reason: lock scope, fencing, what the planner needs) followed by one
thin function per statement:

- ``jobs``: a job's life under a worker: enqueue, claim, complete, fail, snooze, release,
  progress;
- ``steps``: what ending a job does to the workflow steps after it (SQL fragments the
  statements of ``jobs`` and ``operator`` share);
- ``workflows``: writing a workflow and its steps at once; cancelling, retrying one;
- ``workers``: registration, heartbeats, leases, and the rescue of lost workers' jobs;
- ``operator``: an operator's moves: retry, cancel, run now, delete, prune;
- ``schedules``: firing and keeping periodic schedules;
- ``unique``: which job holds a unique key, and giving up a key that no longer counts;
- ``limits``: the limited claim, and giving slots back when an attempt ends;
- ``limiters``: the limiters' definitions, which processes claim with limits, upkeep.

The functions run on the cursor they are given (the caller's Django cursor for
enqueue, so the job commits or rolls back with the caller's transaction; the worker's
own connection for the rest) and neither open transactions nor commit: the caller owns
that choice. (One exception: the limited claim wraps its statement in a transaction of
its own, a savepoint inside the caller's, to turn JIT off for it; see limits.py.)
Nothing outside this package changes a job's state.

States are SQL literals, never parameters, so the planner can match the partial
indexes (``WHERE state = 'READY'``) even in prepared plans, and every time comes from
the database clock (``now()``), so hosts whose clocks disagree still agree on what is due.
Parameters use psycopg's ``%(name)s`` style, which Django's cursor passes through.
"""

from collections.abc import Sequence
from dataclasses import fields
from typing import Any, Protocol

#: Channel carrying "a job became runnable in queue <payload>".
NOTIFY_CHANNEL = "django_jobs"


class Cursor(Protocol):
    """The part of a DB-API cursor we use: Django's CursorWrapper and psycopg's both fit."""

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


def execute_many(
    cursor: Cursor, statement: str, items: Sequence[Any], params: dict[str, Any] | None = None
) -> list[Any]:
    r"""Run a set-based ``statement`` over ``items`` (dataclasses of one kind); return its rows.

    Each field of the items becomes an array parameter of the same name, which the
    statement ``unnest``\s server-side: a batch of any size is one statement and one
    round trip. ``params`` are the scalar parameters.
    """
    if not items:
        return []
    arrays = {f.name: [getattr(item, f.name) for item in items] for f in fields(items[0])}
    cursor.execute(statement, {**(params or {}), **arrays})
    return cursor.fetchall()
