"""Limits shared by every worker: rate limits, concurrency limits, concurrency keys.

The rows of ``django_jobs_limiter`` are the shared state (see ``models.Limiter``): a
task's or a queue's limits, and one row per concurrency key in use. Three rules keep
them exact without ever costing a job that uses no limit anything:

- **Limited jobs are out of the plain claim index.** A job with any limit has a
  ``flow`` (``limits.FLOW_LIMITED``), which keeps it in its own index, one range per
  (queue, task). The plain claim never steps over a backlog a limit holds back.
- **A claim takes from a limit only while it holds the limiter's row.** The limited
  claim (``claim_statement``) locks the rows of the limits it may take from with
  ``FOR UPDATE SKIP LOCKED`` (a row another claim holds is passed over, never waited
  for), reads their counts from the locked row (the newest version, whatever the
  statement's snapshot), and moves jobs and counts in the same statement. Two workers
  can never both see the last free slot.
- **What ends an attempt gives its slots back** (``give_back``): the success, failure
  (retry, final, rescue), snooze and release statements return, for each limited job
  they moved, the limiters it counts in, and one more statement counts those down,
  locking the rows in name order so two of them never deadlock. Jobs with no limit add a
  NULL column to those statements, and nothing else.

A job whose concurrency key is full when a claim reaches it is *parked* (``flow =
'parked'``): out of every claim index, so later claims never look at it again. The
statement that frees a slot of the key marks the key row ``wake`` (reading the parked
count from the locked row, so no wake-up is lost to a snapshot) and sends a NOTIFY; the
next claim takes the key's parked jobs in order. A claim therefore reads, per limit, only
what it can start, and each waiting job is passed over once, not once per claim.

Rates are counted per sub-window of the period (``limits.RATE_BUCKETS``): a claim counts
every sub-window that overlaps the last period, so at most ``count`` jobs start in any
period, by the database clock, however many workers claim.

Which processes claim this way, the rows' definitions and their upkeep (a recount by
the maintenance leader, in case something else moved a limited job without giving its
slot back) are ``limiters.py``'s.
"""

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from django.db import transaction as django_transaction

from ..limits import (
    FLOW_LIMITED,
    FLOW_PARKED,
    KEY_PREFIX,
    QUEUE_PREFIX,
    RATE_BUCKETS,
    TASK_PREFIX,
)
from . import NOTIFY_CHANNEL, Cursor

_K = len(KEY_PREFIX) + 1  # where the key starts in a key limiter's name (1-based)

# The sub-window ("bucket") of now() in a rate limiter's period, and the starts counted
# in the last period: every sub-window from B back (B sub-windows make one period, and
# the current one is partly gone, so B + 1 are read). Later sub-windows count too: a
# claim whose transaction began a moment before another's must still see its starts.
_BUCKET = f"floor(extract(epoch FROM now()) * {RATE_BUCKETS} / {{l}}.rate_period)::bigint"
_RATE_USED = f"""(
    SELECT coalesce(sum(w.value::int), 0) FROM jsonb_each_text({{l}}.starts) AS w
    WHERE w.key::bigint >= {_BUCKET} - {RATE_BUCKETS})"""

# The window after `started` more starts now: old sub-windows dropped, the current one
# counted up. Evaluated only on the rows of rate limits a claim took from.
_WINDOW_AFTER = f"""(
    SELECT coalesce(jsonb_object_agg(x.b, x.n), '{{{{}}}}'::jsonb) FROM (
        SELECT w.b, sum(w.n)::int AS n FROM (
            SELECT e.key::bigint AS b, e.value::int AS n FROM jsonb_each_text(l.starts) AS e
            UNION ALL SELECT {_BUCKET.format(l="l")}, d.started::int
        ) AS w
        WHERE w.b >= {_BUCKET.format(l="l")} - {RATE_BUCKETS}
        GROUP BY w.b
    ) AS x)"""

_ORDER = "priority DESC, available_at, id"

# The limited claim. It claims, in one statement and in priority order, from the plain
# claim index (jobs with no limit) and from the limited ranges whose limits have room,
# parks the candidates whose key is full, and counts what it started in the limiters.
# {returning} are the claimed rows' columns, {queue_filter} narrows to the worker's
# queues. The output: one row per job claimed ("claimed"), then one row ("progress")
# saying how many jobs were parked and key rows created (the caller then claims again at
# once: that cleared the way for the next candidates) and how many limited jobs started.
_CLAIM_LIMITED = f"""
WITH RECURSIVE
-- The (queue, task) ranges that hold limited READY jobs: one index probe per range.
-- (The backend leads the order and the comparison so that only the limited index, whose
-- first column it is, can serve them: never a walk of another index over history.)
gates(queue_name, task_path) AS (
    (SELECT queue_name, task_path FROM django_jobs_job
     WHERE state = 'READY' AND flow = '{FLOW_LIMITED}' AND backend = %(backend)s
       {{queue_filter}}
     ORDER BY backend, queue_name, task_path LIMIT 1)
    UNION ALL
    SELECT n.queue_name, n.task_path FROM gates AS g CROSS JOIN LATERAL (
        SELECT queue_name, task_path FROM django_jobs_job
        WHERE state = 'READY' AND flow = '{FLOW_LIMITED}' AND backend = %(backend)s
          {{queue_filter}}
          AND (backend, queue_name, task_path) > (%(backend)s, g.queue_name, g.task_path)
        ORDER BY backend, queue_name, task_path LIMIT 1
    ) AS n
),
-- Keys a freed slot woke up, and their parked jobs that may start now.
woken AS (
    SELECT k.id, k.name, k.running, k.concurrency FROM django_jobs_limiter AS k
    WHERE k.backend = %(backend)s AND k.wake
    ORDER BY k.name LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
pcand AS (
    SELECT c.id, c.priority, c.available_at, c.concurrency_key, c.concurrency_limit,
           c.queue_name, c.task_path, true AS was_parked
    FROM woken AS w CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.available_at, j.concurrency_key, j.concurrency_limit,
               j.queue_name, j.task_path
        FROM django_jobs_job AS j
        WHERE j.state = 'READY' AND j.flow = '{FLOW_PARKED}' AND j.backend = %(backend)s
          AND j.concurrency_key = substr(w.name, {_K}) AND j.available_at <= now()
          {{queue_filter_j}}
        ORDER BY j.{_ORDER.replace(", ", ", j.")}
        LIMIT greatest(coalesce(w.concurrency, 1) - w.running, 0)
        FOR UPDATE OF j SKIP LOCKED
    ) AS c
),
ranges AS (
    SELECT queue_name, task_path FROM gates
    UNION SELECT queue_name, task_path FROM pcand
),
-- The task and queue limiters of those ranges: locked, or passed over when another
-- claim holds them. `known` says which exist (without waiting for any).
wanted AS (
    SELECT '{QUEUE_PREFIX}' || queue_name AS name FROM ranges
    UNION SELECT '{TASK_PREFIX}' || task_path FROM ranges
),
known AS (
    SELECT w.name FROM wanted AS w
    WHERE EXISTS (
        SELECT 1 FROM django_jobs_limiter AS l
        WHERE l.backend = %(backend)s AND l.name = w.name
    )
),
-- One index probe per name (a join could read the whole table: keys are many).
lim AS (
    SELECT l.* FROM wanted AS w CROSS JOIN LATERAL (
        SELECT l.id, l.name, l.concurrency, l.running, l.rate_limit, l.rate_period, l.starts
        FROM django_jobs_limiter AS l
        WHERE l.backend = %(backend)s AND l.name = w.name
        FOR UPDATE SKIP LOCKED
    ) AS l
),
-- Room: how many more may start now (NULL: no such limit).
room AS (
    SELECT lim.name, least(
        lim.concurrency - lim.running,
        CASE WHEN lim.rate_limit IS NOT NULL
             THEN lim.rate_limit - {_RATE_USED.format(l="lim")} END
    ) AS room
    FROM lim
),
-- A range is open when every limiter it has is held by this claim and has room.
gate_room AS (
    SELECT r.queue_name, r.task_path,
           (SELECT min(room.room) FROM room WHERE room.name IN (r.queue_limiter, r.task_limiter))
               AS room,
           NOT EXISTS (
               SELECT 1 FROM known
               WHERE known.name IN (r.queue_limiter, r.task_limiter)
                 AND known.name NOT IN (SELECT name FROM lim)
           ) AS held
    FROM (
        SELECT queue_name, task_path, '{QUEUE_PREFIX}' || queue_name AS queue_limiter,
               '{TASK_PREFIX}' || task_path AS task_limiter
        FROM ranges
    ) AS r
),
cand AS (
    SELECT c.id, c.priority, c.available_at, c.concurrency_key, c.concurrency_limit,
           g.queue_name, g.task_path, false AS was_parked
    FROM gate_room AS g CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.available_at, j.concurrency_key, j.concurrency_limit
        FROM django_jobs_job AS j
        WHERE j.state = 'READY' AND j.flow = '{FLOW_LIMITED}' AND j.backend = %(backend)s
          AND j.queue_name = g.queue_name AND j.task_path = g.task_path
          AND j.available_at <= now()
        ORDER BY j.{_ORDER.replace(", ", ", j.")}
        LIMIT least(coalesce(g.room, %(limit)s), %(limit)s)
        FOR UPDATE OF j SKIP LOCKED
    ) AS c
    WHERE g.held AND (g.room IS NULL OR g.room > 0)
),
-- The key rows of the candidates (and the woken ones): locked, or passed over.
keyrows AS (
    SELECT k.* FROM (
        SELECT '{KEY_PREFIX}' || concurrency_key AS name FROM cand
        WHERE concurrency_key IS NOT NULL
        UNION SELECT name FROM woken
    ) AS n CROSS JOIN LATERAL (
        SELECT k.id, k.name, k.running FROM django_jobs_limiter AS k
        WHERE k.backend = %(backend)s AND k.name = n.name
        FOR UPDATE SKIP LOCKED
    ) AS k
),
-- A key met for the first time gets its row; its jobs are taken by the next claim.
newkeys AS (
    INSERT INTO django_jobs_limiter (backend, name, concurrency, running, parked, wake,
                                     starts, updated_at)
    SELECT DISTINCT ON (c.concurrency_key) %(backend)s, '{KEY_PREFIX}' || c.concurrency_key,
           c.concurrency_limit, 0, 0, false, '{{{{}}}}'::jsonb, now()
    FROM cand AS c
    LEFT JOIN LATERAL (
        SELECT 1 AS found FROM django_jobs_limiter AS k
        WHERE k.backend = %(backend)s AND k.name = '{KEY_PREFIX}' || c.concurrency_key
        LIMIT 1
    ) AS k ON true
    WHERE c.concurrency_key IS NOT NULL AND k.found IS NULL
    ORDER BY c.concurrency_key
    ON CONFLICT (backend, name) DO NOTHING
    RETURNING name
),
-- Each candidate ranked within its queue, its task and its key, in claim order: it may
-- start if it is within the room of each (a candidate held back by one limit still
-- counts in the others' ranks: this claim may start fewer than it could, never more).
ranked AS (
    SELECT x.*, k.held IS NOT NULL AS key_held, k.running AS key_running,
           row_number() OVER (PARTITION BY x.queue_name ORDER BY x.{_ORDER.replace(", ", ", x.")})
               AS rq,
           row_number() OVER (PARTITION BY x.task_path ORDER BY x.{_ORDER.replace(", ", ", x.")})
               AS rt,
           row_number() OVER (PARTITION BY x.concurrency_key
                              ORDER BY x.{_ORDER.replace(", ", ", x.")}) AS rk
    FROM (SELECT * FROM cand UNION ALL SELECT * FROM pcand) AS x
    -- Each lookup is of one row: as joins, the planner guesses them many times larger.
    LEFT JOIN LATERAL (
        SELECT true AS held, k.running FROM keyrows AS k
        WHERE k.name = '{KEY_PREFIX}' || x.concurrency_key LIMIT 1
    ) AS k ON true
),
decided AS (
    SELECT r.*,
           coalesce(g.held AND (g.room IS NULL OR g.room > 0), false)
           AND (q.room IS NULL OR r.rq <= q.room) AND (t.room IS NULL OR r.rt <= t.room)
           AND (r.concurrency_key IS NULL
                OR (r.key_held AND r.key_running + r.rk <= r.concurrency_limit)) AS go,
           r.concurrency_key IS NOT NULL AND NOT r.was_parked AND r.key_held
           AND r.key_running + r.rk > r.concurrency_limit AS park
    FROM ranked AS r
    LEFT JOIN LATERAL (
        SELECT g.held, g.room FROM gate_room AS g
        WHERE g.queue_name = r.queue_name AND g.task_path = r.task_path LIMIT 1
    ) AS g ON true
    LEFT JOIN LATERAL (
        SELECT room.room FROM room WHERE room.name = '{QUEUE_PREFIX}' || r.queue_name LIMIT 1
    ) AS q ON true
    LEFT JOIN LATERAL (
        SELECT room.room FROM room WHERE room.name = '{TASK_PREFIX}' || r.task_path LIMIT 1
    ) AS t ON true
),
-- Jobs with no limit, from the plain claim index, as the plain claim takes them
-- (jobs.CLAIM): priority level by priority level, so that jobs due later are never
-- walked.
plevels(priority) AS (
    (SELECT priority FROM django_jobs_job
     WHERE state = 'READY' AND flow IS NULL AND backend = %(backend)s
     ORDER BY priority DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT j.priority FROM django_jobs_job AS j
            WHERE j.state = 'READY' AND j.flow IS NULL AND j.backend = %(backend)s
              AND j.priority < plevels.priority
            ORDER BY j.priority DESC LIMIT 1)
    FROM plevels WHERE plevels.priority IS NOT NULL
),
plain AS (
    SELECT d.id, d.priority, d.available_at FROM plevels CROSS JOIN LATERAL (
        SELECT id, priority, available_at FROM django_jobs_job
        WHERE state = 'READY' AND flow IS NULL AND backend = %(backend)s
          AND priority = plevels.priority AND available_at <= now() {{queue_filter}}
        ORDER BY available_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS d
    WHERE plevels.priority IS NOT NULL
    LIMIT %(limit)s
),
pick AS (
    SELECT u.id FROM (
        SELECT id, priority, available_at FROM plain
        UNION ALL SELECT id, priority, available_at FROM decided WHERE go
    ) AS u
    ORDER BY u.{_ORDER.replace(", ", ", u.")}
    LIMIT %(limit)s
),
claimed AS (
    UPDATE django_jobs_job AS j
    SET state = 'RUNNING',
        flow = CASE WHEN j.flow IS NULL THEN NULL ELSE '{FLOW_LIMITED}' END,
        attempts = j.attempts + 1,
        worker_id = %(worker_id)s::text,
        worker_ids = j.worker_ids || jsonb_build_array(%(worker_id)s::text),
        started_at = COALESCE(j.started_at, now()),
        last_attempted_at = now()
    WHERE j.id = ANY(ARRAY(SELECT id FROM pick))
    RETURNING {{returning}}
),
parking AS (
    UPDATE django_jobs_job AS j SET flow = '{FLOW_PARKED}'
    WHERE j.id = ANY(ARRAY(SELECT id FROM decided WHERE park))
    RETURNING j.id
),
-- What this claim changes in each limiter it holds: starts, and parked jobs (+ parked
-- now, - taken from the parked). Woken keys are listed even when nothing moved, so
-- their wake flag is worked out again.
moves AS (
    SELECT d.*, d.id IN (SELECT id FROM pick) AS started
    FROM decided AS d WHERE d.go OR d.park
),
deltas AS (
    SELECT m.name, sum(m.started::int) AS started, sum(m.parked) AS parked,
           max(m.limit_) AS limit_
    FROM (
        SELECT '{QUEUE_PREFIX}' || queue_name AS name, 1 AS started, 0 AS parked,
               NULL::int AS limit_
        FROM moves WHERE started
        UNION ALL
        SELECT '{TASK_PREFIX}' || task_path, 1, 0, NULL FROM moves WHERE started
        UNION ALL
        SELECT '{KEY_PREFIX}' || concurrency_key, started::int,
               CASE WHEN park THEN 1 WHEN started AND was_parked THEN -1 ELSE 0 END,
               concurrency_limit
        FROM moves WHERE concurrency_key IS NOT NULL
        UNION ALL
        SELECT name, 0, 0, NULL FROM woken
    ) AS m
    GROUP BY m.name
),
counted AS (
    UPDATE django_jobs_limiter AS l
    SET running = l.running + d.started,
        parked = greatest(l.parked + d.parked, 0),
        concurrency = CASE WHEN l.name LIKE '{KEY_PREFIX}%%'
                           THEN coalesce(d.limit_, l.concurrency) ELSE l.concurrency END,
        wake = l.name LIKE '{KEY_PREFIX}%%' AND l.parked + d.parked > 0
               AND l.running + d.started < coalesce(d.limit_, l.concurrency, 1),
        starts = CASE WHEN l.rate_limit IS NULL OR d.started = 0 THEN l.starts
                      ELSE {_WINDOW_AFTER} END,
        updated_at = now()
    FROM deltas AS d
    -- By id through the primary key: a join could scan the table, and keys are many.
    WHERE l.id = ANY(ARRAY(SELECT id FROM lim UNION ALL SELECT id FROM keyrows))
      AND l.name = d.name
    RETURNING l.id
)
SELECT 'claimed', claimed.*, NULL::bigint, NULL::bigint FROM claimed
UNION ALL
SELECT 'progress', claimed.*,
       (SELECT count(*) FROM parking) + (SELECT count(*) FROM newkeys),
       (SELECT count(*) FROM moves WHERE started)
FROM (SELECT 1) AS one LEFT JOIN claimed ON false
"""


# The limited claim's cost estimates grow with the backlog, and once they pass
# `jit_above_cost` PostgreSQL compiles the plan to machine code: seconds (10 s measured
# here) for a statement that runs in milliseconds. Off, for the claim's transaction only
# (a session setting would leak through a transaction-mode pooler).
NO_JIT = "SELECT set_config('jit', 'off', true)"


@contextmanager
def transaction(cursor: Cursor) -> Iterator[None]:
    """A transaction (or a savepoint inside one) on ``cursor``'s connection, for a few
    statements that belong together: a Django cursor's (through Django, which then
    knows of it), or a psycopg cursor's."""
    database = getattr(cursor, "db", None)
    if database is not None:
        with django_transaction.atomic(using=database.alias):
            yield
    else:
        with cursor.connection.transaction():  # type: ignore[attr-defined]
            yield


def claim_statement(returning: str, queue_filter: bool) -> str:
    """The limited claim returning ``returning`` (columns of ``django_jobs_job AS j``)."""
    filters = {
        "queue_filter": "AND queue_name = ANY(%(queues)s::text[])" if queue_filter else "",
        "queue_filter_j": "AND j.queue_name = ANY(%(queues)s::text[])" if queue_filter else "",
    }
    return _CLAIM_LIMITED.format(returning=returning, **filters)


#: Appended to the RETURNING of every statement that ends an attempt: for a limited job,
#: its backend and the names of the limiters it counts in; NULL for any other job, so
#: jobs with no limit cost that statement one NULL column.
SLOTS = (
    f"CASE WHEN j.flow IS NOT NULL THEN ARRAY[j.backend, '{QUEUE_PREFIX}' || j.queue_name, "
    f"'{TASK_PREFIX}' || j.task_path, '{KEY_PREFIX}' || j.concurrency_key] END"
)

# Give back the slots of limited jobs that left RUNNING (their rows' SLOTS values,
# counted per limiter). The rows are locked in (backend, name) order, the order of the
# arrays, so two of these never wait for each other in a circle, and a limited claim
# never waits for them (it skips locked rows). A key row is woken when it has parked
# jobs and now room: reading `parked` from the locked row, not from a snapshot, is what
# keeps a wake-up from being lost to a claim parking a job at the same moment. Idle
# workers of the queues are woken too.
GIVE_BACK = f"""
WITH freed AS (
    SELECT * FROM unnest(%(backend)s::text[], %(name)s::text[], %(n)s::int[])
         AS f(backend, name, n)
),
held AS (
    SELECT l.id, f.n FROM freed AS f CROSS JOIN LATERAL (
        SELECT l.id FROM django_jobs_limiter AS l
        WHERE l.backend = f.backend AND l.name = f.name
        FOR UPDATE
    ) AS l
),
given_back AS (
    UPDATE django_jobs_limiter AS l
    SET running = greatest(l.running - h.n, 0),
        wake = l.name LIKE '{KEY_PREFIX}%%' AND l.parked > 0
               AND greatest(l.running - h.n, 0) < coalesce(l.concurrency, 1),
        updated_at = now()
    FROM held AS h
    WHERE l.id = ANY(ARRAY(SELECT id FROM held)) AND l.id = h.id
    RETURNING l.id
)
SELECT count(pg_notify('{NOTIFY_CHANNEL}', q)) FROM unnest(%(queues)s::text[]) AS q
"""


def give_back(cursor: Cursor, slots: Iterable[Sequence[str | None]]) -> None:
    """Give back the slots of limited jobs that left RUNNING (the ``SLOTS`` of each).

    Runs right after the statement that moved them: in the same transaction when the
    caller holds one (rescue, an atomic task), else just after its commit, so for a few
    milliseconds a slot may count a job that is gone: fewer jobs start, never more.
    """
    counts: dict[tuple[str, str], int] = {}
    for backend, *names in slots:
        for name in names:
            if name is not None:
                counts[(backend, name)] = counts.get((backend, name), 0) + 1
    if not counts:
        return
    keys = sorted(counts)
    cursor.execute(
        GIVE_BACK,
        {
            "backend": [b for b, _ in keys],
            "name": [n for _, n in keys],
            "n": [counts[k] for k in keys],
            "queues": sorted(
                {n[len(QUEUE_PREFIX) :] for _, n in keys if n.startswith(QUEUE_PREFIX)}
            ),
        },
    )
