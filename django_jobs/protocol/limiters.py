"""The limiter rows' life outside the claim: what the declarations say, whether a process
claims through the limited claim, and the maintenance leader's upkeep.

``limits.py`` is the claim and the give-back, which keep the rows' counts between them;
this module writes the definitions a process declares (a task's or a queue's limits)
when it first claims, decides per process whether the limited claim is needed at all,
and recounts the rows from the jobs for the leader, in case something else left them
off.
"""

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import registry
from ..compat import InvalidTaskBackend, task_backends
from ..limits import (
    FLOW_LIMITED,
    FLOW_PARKED,
    KEY_PREFIX,
    QUEUE_PREFIX,
    TASK_PREFIX,
    RateLimit,
    parse_rate,
)
from . import Cursor

_K = len(KEY_PREFIX) + 1  # where the key starts in a key limiter's name (1-based)


# ── definitions: what the declarations say ──────────────────────────────────


@dataclass(frozen=True, slots=True)
class Definition:
    """A task's or a queue's limits as declared (a key's limit travels with its jobs)."""

    name: str
    rate_limit: int | None
    rate_period: float | None
    rate_text: str
    concurrency: int | None


# Write the declared limits; keep a row's counts, and its window unless the period
# changed (the sub-window numbers then mean other times). Only rows that differ are
# written, so a worker's start costs no write when nothing changed.
UPSERT_DEFINITIONS = """
INSERT INTO django_jobs_limiter (backend, name, rate_limit, rate_period, rate_text,
                                 concurrency, running, parked, wake, starts, updated_at)
SELECT %(backend)s, d.name, d.rate_limit, d.rate_period, d.rate_text, d.concurrency,
       0, 0, false, '{}'::jsonb, now()
FROM unnest(%(name)s::text[], %(rate_limit)s::int[], %(rate_period)s::float8[],
            %(rate_text)s::text[], %(concurrency)s::int[])
     AS d(name, rate_limit, rate_period, rate_text, concurrency)
ON CONFLICT (backend, name) DO UPDATE
SET rate_limit = EXCLUDED.rate_limit, rate_period = EXCLUDED.rate_period,
    rate_text = EXCLUDED.rate_text, concurrency = EXCLUDED.concurrency,
    starts = CASE WHEN django_jobs_limiter.rate_period IS NOT DISTINCT FROM EXCLUDED.rate_period
                  THEN django_jobs_limiter.starts ELSE '{}'::jsonb END,
    updated_at = now()
WHERE (django_jobs_limiter.rate_limit, django_jobs_limiter.rate_period,
       django_jobs_limiter.rate_text, django_jobs_limiter.concurrency)
      IS DISTINCT FROM (EXCLUDED.rate_limit, EXCLUDED.rate_period, EXCLUDED.rate_text,
                        EXCLUDED.concurrency)
"""

# Limits no longer declared: a task declared here without one, a queue not in
# QUEUE_LIMITS. Rows of tasks this process does not know are left to the processes
# that declare them. Jobs running under a deleted row just give back nothing.
DELETE_UNDECLARED = f"""
DELETE FROM django_jobs_limiter
WHERE backend = %(backend)s
  AND (name = ANY(%(unlimited_tasks)s::text[])
       OR (name LIKE '{QUEUE_PREFIX}%%' AND NOT (name = ANY(%(queues)s::text[]))))
"""

# Whether limited jobs wait in this backend though nothing here declares a limit (a
# limit removed since they were enqueued, or declared only where they were enqueued):
# then this process claims through the limited claim too, so they are not stranded.
LIMITED_WORK_EXISTS = f"""
SELECT EXISTS (
    SELECT 1 FROM django_jobs_job
    WHERE state = 'READY' AND flow = '{FLOW_LIMITED}' AND backend = %(backend)s
) OR EXISTS (SELECT 1 FROM django_jobs_limiter WHERE backend = %(backend)s AND wake)
"""


def declared(backend: str) -> tuple[list[Definition], list[str], bool]:
    """(limits declared for ``backend``, tasks declared without one, any key declared).

    From the tasks declared in this process and the backend's ``QUEUE_LIMITS``.
    """
    definitions: list[Definition] = []
    unlimited: list[str] = []
    keyed = False
    for path in registry.registered_paths():
        task = registry.get(path)
        if task is None or task.backend != backend:
            continue
        rate = getattr(task, "rate_limit", None)
        concurrency = getattr(task, "concurrency_limit", None)
        if getattr(task, "concurrency_key", None) is not None:
            keyed = True
            concurrency = None  # the key's limit, carried by each job
        if rate is None and concurrency is None:
            unlimited.append(TASK_PREFIX + path)
            continue
        definitions.append(_definition(TASK_PREFIX + path, rate, concurrency))
    for queue, limit in sorted(_queue_limits(backend).items()):
        definitions.append(_definition(QUEUE_PREFIX + queue, limit.rate, limit.concurrency))
    return definitions, unlimited, keyed


def _definition(name: str, rate: str | RateLimit | None, concurrency: int | None) -> Definition:
    parsed = parse_rate(rate) if rate is not None else None
    return Definition(
        name=name,
        rate_limit=parsed.count if parsed else None,
        rate_period=parsed.period if parsed else None,
        rate_text=parsed.text if parsed else "",
        concurrency=concurrency,
    )


def _queue_limits(backend: str) -> dict[str, Any]:
    try:
        options = getattr(task_backends[backend], "jobs_options", None)
    except InvalidTaskBackend:
        return {}
    return dict(getattr(options, "QUEUE_LIMITS", None) or {})


def sync_definitions(
    cursor: Cursor, *, backend: str, definitions: Iterable[Definition], unlimited: Iterable[str]
) -> None:
    """Write the declared limits of ``backend`` and delete the ones no longer declared."""
    rows = list(definitions)
    if rows:
        cursor.execute(
            UPSERT_DEFINITIONS,
            {
                "backend": backend,
                "name": [d.name for d in rows],
                "rate_limit": [d.rate_limit for d in rows],
                "rate_period": [d.rate_period for d in rows],
                "rate_text": [d.rate_text for d in rows],
                "concurrency": [d.concurrency for d in rows],
            },
        )
    queues = [d.name for d in rows if d.name.startswith(QUEUE_PREFIX)]
    cursor.execute(
        DELETE_UNDECLARED,
        {"backend": backend, "unlimited_tasks": list(unlimited), "queues": queues},
    )


class Activation:
    """Whether, and how often, a process claims through the limited claim, per backend.

    A process that declares a limit (or a concurrency key) for a backend writes its
    definitions on its first claim and uses the limited claim from then on. One that
    declares none uses the plain claim, which is exactly what it was before limits
    existed, and looks every ``RECHECK`` seconds whether limited jobs wait anyway.

    The limited claim costs more than the plain one, so a process that has it does not
    run it for every claim: after a limited claim that started no limited job, the next
    ``MERGE_EVERY`` seconds of claims are plain ones, each followed by a limited claim
    only if it found fewer jobs than it wanted. A busy worker thus looks at its limits
    ten times a second and an idle one at once, and jobs with no limit pay for it about
    once per ``MERGE_EVERY``.
    """

    RECHECK = 10.0
    MERGE_EVERY = 0.1

    def __init__(
        self, declarations: Callable[[str], tuple[list[Definition], list[str], bool]] = declared
    ) -> None:
        self._declarations = declarations
        self._declared: dict[str, bool] = {}
        self._found: dict[str, tuple[float, bool]] = {}
        self._merge_after: dict[str, float] = {}

    def merge_due(self, backend: str) -> bool:
        """Whether the next claim should be a limited one outright."""
        return time.monotonic() >= self._merge_after.get(backend, 0.0)

    def merged(self, backend: str, *, found: bool) -> None:
        """Note a limited claim, and whether it started or parked limited jobs."""
        self._merge_after[backend] = time.monotonic() + (0.0 if found else self.MERGE_EVERY)

    def active(self, cursor: Cursor, backend: str) -> bool:
        declared_here = self._declared.get(backend)
        if declared_here is None:
            definitions, unlimited, keyed = self._declarations(backend)
            sync_definitions(cursor, backend=backend, definitions=definitions, unlimited=unlimited)
            declared_here = self._declared[backend] = bool(definitions) or keyed
        if declared_here:
            return True
        checked_at, found = self._found.get(backend, (float("-inf"), False))
        if time.monotonic() - checked_at >= self.RECHECK:
            cursor.execute(LIMITED_WORK_EXISTS, {"backend": backend})
            found = bool(cursor.fetchone()[0])
            self._found[backend] = (time.monotonic(), found)
        return found

    def forget(self) -> None:
        """Read the declarations again at the next claim (tests; a reloaded process)."""
        self._declared.clear()
        self._found.clear()
        self._merge_after.clear()


#: The process's activation, shared by every claim it makes.
activation = Activation()


# ── upkeep (the maintenance leader) ─────────────────────────────────────────

_LIMITERS_OF_RUNNING = f"""
SELECT j.backend, n.name, count(*) AS n
FROM django_jobs_job AS j CROSS JOIN LATERAL (
    VALUES ('{QUEUE_PREFIX}' || j.queue_name), ('{TASK_PREFIX}' || j.task_path),
           ('{KEY_PREFIX}' || j.concurrency_key)
) AS n(name)
WHERE j.state = 'RUNNING' AND j.flow IS NOT NULL AND n.name IS NOT NULL
GROUP BY 1, 2
"""

# The rows to check: those that count something, and those that running limited jobs
# count in. Locked, skipping rows a claim or an exit holds (they are checked next time).
LOCK_COUNTED = f"""
SELECT l.id FROM django_jobs_limiter AS l
WHERE l.running <> 0 OR l.parked <> 0 OR l.wake
   OR (l.backend, l.name) IN (SELECT r.backend, r.name FROM ({_LIMITERS_OF_RUNNING}) AS r)
ORDER BY l.id
LIMIT %(limit)s
FOR UPDATE OF l SKIP LOCKED
"""

# Recount the locked rows from the jobs, in a statement that starts after the locks were
# taken: every claim and exit that counted in them before has committed and is seen;
# those waiting for the locks have not, and their jobs are seen as they were, which is
# what their counts still say. Returns the rows that were off, with both counts.
RECOUNT = f"""
WITH target AS (
    SELECT l.id, l.backend, l.name, l.running, l.parked, l.wake, l.concurrency
    FROM django_jobs_limiter AS l WHERE l.id = ANY(%(ids)s::bigint[])
),
run_counts AS ({_LIMITERS_OF_RUNNING}),
actual AS (
    SELECT t.id, coalesce(r.n, 0)::int AS running,
           CASE WHEN t.name LIKE '{KEY_PREFIX}%%' THEN (
               SELECT count(*) FROM django_jobs_job AS j
               WHERE j.state = 'READY' AND j.flow = '{FLOW_PARKED}' AND j.backend = t.backend
                 AND j.concurrency_key = substr(t.name, {_K})
           ) ELSE 0 END::int AS parked
    FROM target AS t
    LEFT JOIN run_counts AS r ON r.backend = t.backend AND r.name = t.name
),
should AS (
    SELECT a.*, t.name LIKE '{KEY_PREFIX}%%' AND a.parked > 0
                AND a.running < coalesce(t.concurrency, 1) AS wake
    FROM actual AS a JOIN target AS t USING (id)
),
fixed AS (
    UPDATE django_jobs_limiter AS l
    SET running = s.running, parked = s.parked, wake = s.wake, updated_at = now()
    FROM should AS s
    WHERE l.id = ANY(%(ids)s::bigint[]) AND l.id = s.id
      AND (l.running, l.parked, l.wake) IS DISTINCT FROM
                          (s.running, s.parked, s.wake)
    RETURNING l.id
)
SELECT t.backend, t.name, t.running, s.running, t.parked, s.parked
FROM target AS t JOIN should AS s USING (id)
WHERE t.id IN (SELECT id FROM fixed)
"""

# Key rows nobody has used for a while: a claim that meets the key again makes a new
# one. A row that counts anything, or has parked jobs, is kept.
PRUNE_IDLE_KEYS = f"""
DELETE FROM django_jobs_limiter
WHERE id IN (
    SELECT k.id FROM django_jobs_limiter AS k
    WHERE k.name LIKE '{KEY_PREFIX}%%' AND k.running = 0 AND k.parked = 0 AND NOT k.wake
      AND k.updated_at < now() - make_interval(secs => %(idle)s)
      AND NOT EXISTS (
          SELECT 1 FROM django_jobs_job AS j
          WHERE j.state = 'READY' AND j.flow = '{FLOW_PARKED}' AND j.backend = k.backend
            AND j.concurrency_key = substr(k.name, {_K})
      )
    ORDER BY k.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
"""


@dataclass(frozen=True, slots=True)
class Recount:
    """A limiter whose counts were off, and what they are now."""

    backend: str
    name: str
    running_was: int
    running: int
    parked_was: int
    parked: int


def lock_counted(cursor: Cursor, *, limit: int) -> list[int]:
    """Lock limiter rows that count something (call in a transaction, then ``recount``)."""
    cursor.execute(LOCK_COUNTED, {"limit": limit})
    return [row[0] for row in cursor.fetchall()]


def recount(cursor: Cursor, ids: Sequence[int]) -> list[Recount]:
    """Set the locked rows' counts from the jobs; return the rows that were off."""
    if not ids:
        return []
    cursor.execute(RECOUNT, {"ids": list(ids)})
    return [Recount(*row) for row in cursor.fetchall()]


def prune_idle_keys(cursor: Cursor, *, idle: float, limit: int) -> int:
    """Delete key rows unused for ``idle`` seconds; return how many."""
    cursor.execute(PRUNE_IDLE_KEYS, {"idle": idle, "limit": limit})
    return cursor.rowcount
