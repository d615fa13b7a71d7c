"""Read-only numbers about the queue, for the admin dashboard and the ``jobs`` command.

Nothing here writes, and nothing here reads the whole job table: with millions of
finished rows a full ``COUNT(*)`` takes seconds. Each query is shaped to use one of the
partial indexes (``models.Job.Meta.indexes``):

- READY rows through ``django_jobs_job_claim`` (partial on READY),
- RUNNING rows through ``django_jobs_job_running`` (partial on RUNNING),
- finished rows through ``django_jobs_job_finished`` (partial on the finished states,
  keyed by ``finished_at``), always with a ``finished_at`` range: recent windows only.

Even an index scan costs a visit per row, and the dashboard asks every 10 seconds. So
the counts are bounded: each is run exactly only when the planner expects at most
``EXACT_BELOW`` rows, and under a statement timeout; past either, the numbers are the
planner's estimates, and flagged as such (``Overview.ready_estimated``,
``finished_estimated``). Totals for all history are always the planner's estimate.
"""

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from django.core.exceptions import EmptyResultSet
from django.db import OperationalError, connections, transaction
from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce, Concat
from django.utils import timezone

from ..backend import jobs_database
from ..models import Job, Worker
from ..states import FINISHED, FINISHED_SQL, JobState
from . import flow

TABLE = Job._meta.db_table

# Jobs with no limit (the plain claim index); limited ones are counted by flow.py.
READY_BY_QUEUE = f"""
SELECT queue_name,
       count(*) FILTER (WHERE available_at <= now()),
       count(*) FILTER (WHERE available_at > now()),
       min(available_at) FILTER (WHERE available_at <= now())
FROM {TABLE} WHERE state = 'READY' AND flow IS NULL
GROUP BY queue_name
"""

RUNNING_BY_QUEUE = f"""
SELECT queue_name, count(*) FROM {TABLE} WHERE state = 'RUNNING' GROUP BY queue_name
"""

# One range scan of the finished index serves both the per-queue counts of the window
# and the per-bucket chart: group by (queue, state, bucket) and add up in Python.
FINISHED_SINCE = f"""
SELECT queue_name, state, date_trunc(%(unit)s, finished_at) AS bucket, count(*)
FROM {TABLE}
WHERE state IN {FINISHED_SQL} AND finished_at >= %(since)s
GROUP BY 1, 2, 3
"""

ESTIMATED_ROWS = "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass"

# What the bounded counts would read, for the planner to estimate (EXPLAIN only).
READY_ROWS = f"SELECT 1 FROM {TABLE} WHERE state = 'READY'"
FINISHED_ROWS = f"SELECT 1 FROM {TABLE} WHERE state IN {FINISHED_SQL} AND finished_at >= %(since)s"
# The same per queue, when only an estimate is affordable.
READY_IN_QUEUE = f"""
SELECT 1 FROM {TABLE}
WHERE state = 'READY' AND queue_name = %(queue)s AND available_at {{op}} now()
"""
FINISHED_IN_QUEUE = f"""
SELECT 1 FROM {TABLE}
WHERE state = %(state)s AND queue_name = %(queue)s AND finished_at >= %(since)s
"""

# The distinct queue names in the table, one index probe each (a "loose index scan" of
# django_jobs_job_queue_task), instead of a SELECT DISTINCT that reads every row.
QUEUE_NAMES = f"""
WITH RECURSIVE q(name) AS (
    (SELECT queue_name FROM {TABLE} ORDER BY queue_name LIMIT 1)
    UNION ALL
    SELECT (SELECT queue_name FROM {TABLE} WHERE queue_name > q.name
            ORDER BY queue_name LIMIT 1)
    FROM q WHERE q.name IS NOT NULL
)
SELECT name FROM q WHERE name IS NOT NULL LIMIT %(limit)s
"""

# Each distinct (queue, task) in the table with its newest job: one index probe per pair
# (a loose index scan of django_jobs_job_queue_task, by row comparison) and one more for
# the newest job, never a read of the jobs themselves.
TASKS_WITH_NEWEST_JOB = f"""
WITH RECURSIVE pair(queue_name, task_path) AS (
    (SELECT queue_name, task_path FROM {TABLE} ORDER BY queue_name, task_path LIMIT 1)
    UNION ALL
    SELECT nxt.queue_name, nxt.task_path FROM pair, LATERAL (
        SELECT queue_name, task_path FROM {TABLE}
        WHERE (queue_name, task_path) > (pair.queue_name, pair.task_path)
        ORDER BY queue_name, task_path LIMIT 1
    ) AS nxt
)
SELECT pair.task_path, newest.id, newest.enqueued_at, newest.state, newest.task_proof
FROM pair, LATERAL (
    SELECT id, enqueued_at, state, task_proof FROM {TABLE}
    WHERE queue_name = pair.queue_name AND task_path = pair.task_path
    ORDER BY id DESC LIMIT 1
) AS newest
LIMIT %(limit)s
"""

#: Count exactly when the planner expects at most this many rows; estimate above.
EXACT_BELOW = 100_000
#: An exact count that takes longer than this many milliseconds gives way to the estimate.
EXACT_TIMEOUT_MS = 500
#: queue_names() gives up past this many distinct queues.
MAX_QUEUES = 1000


def _db(using: str | None) -> str:
    return using or jobs_database()


def _cursor(using: str | None = None) -> Any:
    return connections[_db(using)].cursor()


def planned_rows(cur: Any, sql: str, params: Any = None) -> int:
    """The planner's estimate of the rows ``sql`` returns (EXPLAIN; nothing is read)."""
    cur.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
    plan = cur.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def run_bounded(
    using: str, sql: str, params: Any = None, *, timeout_ms: int, seqscan: bool = True
) -> list[tuple] | None:
    """Run a read under a statement timeout; its rows, or None if it took too long.

    ``seqscan=False`` tells the planner not to scan the table: it prices a bitmap scan
    of the READY or finished rows as if they were scattered over the whole table and
    may prefer a sequential scan, though recent rows sit together at the table's end.
    """
    connection = connections[using]
    try:
        # A savepoint (or a transaction in autocommit) scopes the settings, and rolls
        # them back with a cancelled statement.
        with transaction.atomic(using=using), connection.cursor() as cur:
            cur.execute(
                "SELECT current_setting('statement_timeout'), current_setting('enable_seqscan')"
            )
            previous_timeout, previous_seqscan = cur.fetchone()
            cur.execute(
                "SELECT set_config('statement_timeout', %s, true), "
                "set_config('enable_seqscan', %s, true)",
                [str(timeout_ms), "on" if seqscan else "off"],
            )
            cur.execute(sql, params)
            rows = cur.fetchall()
            cur.execute(
                "SELECT set_config('statement_timeout', %s, true), "
                "set_config('enable_seqscan', %s, true)",
                [previous_timeout, previous_seqscan],
            )
            return rows
    except OperationalError as exc:
        if isinstance(exc.__cause__, psycopg.errors.QueryCanceled):
            return None
        raise


def _bounded(using: str, sql: str, params: Any = None) -> list[tuple] | None:
    """A read of the partial indexes, exact unless it takes over EXACT_TIMEOUT_MS."""
    return run_bounded(using, sql, params, timeout_ms=EXACT_TIMEOUT_MS, seqscan=False)


def queue_names(using: str | None = None) -> list[str] | None:
    """The distinct queue names in the job table, sorted; None past MAX_QUEUES."""
    with _cursor(using) as cur:
        cur.execute(QUEUE_NAMES, {"limit": MAX_QUEUES + 1})
        names = [row[0] for row in cur.fetchall()]
    return None if len(names) > MAX_QUEUES else names


@dataclass(frozen=True, slots=True)
class NewestJob:
    """The newest job of a task (in one queue): what the start-up check looks at."""

    task_path: str
    job_id: int
    enqueued_at: datetime
    state: str
    task_proof: str


def newest_job_per_task(using: str | None = None, limit: int = MAX_QUEUES) -> list[NewestJob]:
    """The newest job of each task in each queue, at most ``limit`` of them."""
    with _cursor(using) as cur:
        cur.execute(TASKS_WITH_NEWEST_JOB, {"limit": limit})
        return [NewestJob(*row) for row in cur.fetchall()]


def by_tasks(queryset: QuerySet, paths: list[str]) -> QuerySet:
    """``queryset`` narrowed to jobs of the tasks ``paths``, in a shape an index serves.

    The index that serves task filters is (queue_name, task_path, id): naming every
    queue present (a few index probes) lets it find a rare task's jobs directly
    instead of walking the whole table.
    """
    queryset = queryset.filter(task_path__in=paths)
    names = queue_names(queryset.db)
    return queryset if names is None else queryset.filter(queue_name__in=names)


def estimated_total(using: str | None = None) -> int | None:
    """Return the planner's row estimate for the job table (None before its first ANALYZE)."""
    with _cursor(using) as cur:
        cur.execute(ESTIMATED_ROWS, [TABLE])
        row = cur.fetchone()
    # PostgreSQL 14+ reports -1 for a table never vacuumed or analysed.
    return int(row[0]) if row and row[0] >= 0 else None


def estimated_count(queryset: QuerySet) -> int:
    """Return the planner's estimate of how many rows ``queryset`` yields, without running it.

    A queryset that can match nothing (``.none()``, an id past bigint) has no SQL: 0.
    """
    try:
        sql, params = queryset.order_by().values("pk").query.sql_with_params()
    except EmptyResultSet:
        return 0
    with connections[queryset.db].cursor() as cur:
        return planned_rows(cur, sql, params)


@dataclass
class QueueStats:
    name: str
    runnable: int = 0
    delayed: int = 0
    running: int = 0
    #: READY and due, but held back by a limit (flow.py): not waiting for a worker.
    limited: int = 0
    oldest_runnable: datetime | None = None
    #: Finished in the window (``Overview.window``), by state.
    finished: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def oldest_runnable_age(self) -> float | None:
        if self.oldest_runnable is None:
            return None
        return max(0.0, (timezone.now() - self.oldest_runnable).total_seconds())

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.name,
            "ready": self.runnable,
            "delayed": self.delayed,
            "waiting_on_limit": self.limited,
            "running": self.running,
            "oldest_ready_age_seconds": self.oldest_runnable_age,
            "finished_in_window": {s: self.finished.get(s, 0) for s in FINISHED},
        }


@dataclass
class Bucket:
    start: datetime
    successful: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.successful + self.failed + self.cancelled


@dataclass
class Overview:
    now: datetime
    window: timedelta
    queues: list[QueueStats]
    #: None when too many jobs finished to chart them quickly.
    per_minute: list[Bucket] | None
    per_hour: list[Bucket] | None
    estimated_total: int | None
    #: The ready and delayed counts are the planner's estimates (too many rows to count).
    ready_estimated: bool = False
    #: The finished counts are the planner's estimates.
    finished_estimated: bool = False
    #: Every task and queue limit, and the busiest concurrency keys.
    limits: list[flow.LimiterStats] = field(default_factory=list)

    @property
    def totals(self) -> QueueStats:
        total = QueueStats("all")
        for q in self.queues:
            total.runnable += q.runnable
            total.limited += q.limited
            total.delayed += q.delayed
            total.running += q.running
            for state, n in q.finished.items():
                total.finished[state] += n
            if q.oldest_runnable and (
                total.oldest_runnable is None or q.oldest_runnable < total.oldest_runnable
            ):
                total.oldest_runnable = q.oldest_runnable
        return total

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "window_seconds": self.window.total_seconds(),
            "estimated_total_rows": self.estimated_total,
            "ready_estimated": self.ready_estimated,
            "finished_estimated": self.finished_estimated,
            "queues": [q.as_dict() for q in self.queues],
            "limits": [limit.as_dict() for limit in self.limits],
        }


def _buckets(rows: list[tuple], unit: str, start: datetime, count: int) -> list[Bucket]:
    step = timedelta(minutes=1) if unit == "minute" else timedelta(hours=1)
    first = start.replace(second=0, microsecond=0)
    if unit == "hour":
        first = first.replace(minute=0)
    buckets = {first + i * step: Bucket(first + i * step) for i in range(count)}
    for _queue, state, bucket, n in rows:
        b = buckets.get(bucket)
        if b is not None:
            setattr(b, state.lower(), getattr(b, state.lower()) + n)
    return list(buckets.values())


def overview(
    queues: list[str] | None = None, using: str | None = None, now: datetime | None = None
) -> Overview:
    """Per-queue counts, throughput buckets for the last hour and day, and the table size.

    ``queues`` lists queues to show even when they hold no jobs (the backend's QUEUES).
    Counts that would read more than EXACT_BELOW rows are estimates (see the module).
    """
    using = _db(using)
    now = now or timezone.now()
    day_ago = now - timedelta(hours=23)
    hour_ago = now - timedelta(minutes=59)
    day_since = day_ago.replace(minute=0, second=0, microsecond=0)
    hour_since = hour_ago.replace(second=0, microsecond=0)
    by_queue: dict[str, QueueStats] = {name: QueueStats(name) for name in queues or []}

    def queue(name: str) -> QueueStats:
        return by_queue.setdefault(name, QueueStats(name))

    with _cursor(using) as cur:
        ready_planned = planned_rows(cur, READY_ROWS)
        day_planned = planned_rows(cur, FINISHED_ROWS, {"since": day_since})
        hour_planned = planned_rows(cur, FINISHED_ROWS, {"since": hour_since})

    def exact(planned: int, sql: str, params: Any = None) -> list[tuple] | None:
        return _bounded(using, sql, params) if planned <= EXACT_BELOW else None

    ready = exact(ready_planned, READY_BY_QUEUE)
    running = _bounded(using, RUNNING_BY_QUEUE) or []  # as many as the workers' slots
    day_rows = exact(day_planned, FINISHED_SINCE, {"unit": "hour", "since": day_since})
    minute_rows = exact(hour_planned, FINISHED_SINCE, {"unit": "minute", "since": hour_since})

    for name, runnable, delayed, oldest in ready or []:
        q = queue(name)
        q.runnable, q.delayed, q.oldest_runnable = runnable, delayed, oldest
    for name, n in running:
        queue(name).running = n
    with _cursor(using) as cur:
        limits = flow.limiters(cur)
    # Limited jobs, split by what they wait for: exact, like the ready counts, or none.
    ranges = exact(ready_planned, flow.LIMITED_BY_RANGE)
    parked = exact(ready_planned, flow.PARKED_BY_QUEUE)
    for name, f in flow.by_queue(ranges, parked, limits).items():
        q = queue(name)
        q.runnable += f.runnable
        q.limited += f.waiting_on_limit
        q.delayed += f.delayed
        if f.oldest_runnable and (
            q.oldest_runnable is None or f.oldest_runnable < q.oldest_runnable
        ):
            q.oldest_runnable = f.oldest_runnable
    for name, state, _bucket, n in day_rows or []:
        queue(name).finished[state] += n
    if ready is None or day_rows is None:
        _estimate(using, by_queue, queue, ready is None, day_rows is None, day_since)
    return Overview(
        now=now,
        window=now - day_since,
        queues=sorted(by_queue.values(), key=lambda q: q.name),
        per_minute=None if minute_rows is None else _buckets(minute_rows, "minute", hour_ago, 60),
        per_hour=None if day_rows is None else _buckets(day_rows, "hour", day_ago, 24),
        estimated_total=estimated_total(using),
        ready_estimated=ready is None,
        finished_estimated=day_rows is None,
        limits=limits,
    )


def _estimate(
    using: str,
    by_queue: dict[str, QueueStats],
    queue: Any,
    ready: bool,
    finished: bool,
    since: datetime,
) -> None:
    """Fill in the planner's estimates per queue (an EXPLAIN each, no rows read)."""
    names = sorted(set(by_queue) | set(queue_names(using) or []))
    with _cursor(using) as cur:
        for name in names:
            q = queue(name)
            if ready:
                params = {"queue": name}
                q.runnable = planned_rows(cur, READY_IN_QUEUE.format(op="<="), params)
                q.delayed = planned_rows(cur, READY_IN_QUEUE.format(op=">"), params)
                q.oldest_runnable = None  # unknown: finding it would read the backlog
            if finished:
                for state in FINISHED:
                    params = {"queue": name, "state": state.value, "since": since}
                    q.finished[state] = planned_rows(cur, FINISHED_IN_QUEUE, params)


def running_jobs(limit: int = 25, using: str | None = None) -> list[Job]:
    """The longest-running jobs first (reads the partial index on RUNNING)."""
    return list(
        Job.objects.using(_db(using))
        .filter(state=JobState.RUNNING)
        .defer("args", "kwargs", "return_value", "errors", "worker_ids")
        .order_by("started_at")[:limit]
    )


def recent_failures(
    limit: int = 10, within: timedelta = timedelta(days=1), using: str | None = None
) -> list[Job]:
    """The last failed jobs, newest first; a range scan of the finished index, bounded."""
    since = timezone.now() - within
    return list(
        Job.objects.using(_db(using))
        .filter(state__in=list(FINISHED), finished_at__gte=since, state=JobState.FAILED)
        .defer("args", "kwargs", "return_value", "worker_ids")
        .order_by("-finished_at")[:limit]
    )


def running_now() -> Subquery:
    """Jobs a worker and its children hold now (a child's id is "<worker id>/<pid>").

    Reads the partial index on RUNNING rows, which holds only as many rows as there are
    busy slots."""
    per_worker = (
        Job.objects.filter(state=JobState.RUNNING)
        .filter(
            Q(worker_id=OuterRef("id"))
            | Q(worker_id__startswith=Concat(OuterRef("id"), Value("/")))
        )
        .annotate(worker=Value(1))
        .order_by()
        .values("worker")
        .annotate(n=Count("*"))
        .values("n")
    )
    return Coalesce(Subquery(per_worker, output_field=IntegerField()), Value(0))


def supervisors(queryset: QuerySet) -> QuerySet:
    """Only the ``runjobs`` processes, not their children's rows."""
    return queryset.exclude(id__contains="/")


def workers(using: str | None = None) -> QuerySet:
    """Every registered worker, newest first, with ``running_jobs`` (jobs held now)."""
    return (
        supervisors(Worker.objects.using(_db(using)))
        .annotate(running_jobs=running_now())
        .order_by("-started_at")
    )


BLOCKED_BY_QUEUE = f"""
SELECT queue_name, count(*) FROM {TABLE} WHERE state = 'BLOCKED' GROUP BY queue_name
"""
RUNNING_BY_BACKEND = f"""
SELECT backend, count(*) FROM {TABLE} WHERE state = 'RUNNING' GROUP BY backend
"""
# The worker table has a row per live worker and the recently dead: read it whole, but
# only the supervisors' rows. A child's row ("<supervisor id>/<pid>") is part of its
# supervisor, whose concurrency already counts the child's slots.
WORKERS_SEEN = """
SELECT backend, concurrency, extract(epoch FROM now() - last_heartbeat), lost_at IS NOT NULL
FROM django_jobs_worker
WHERE strpos(id, '/') = 0
"""


@dataclass
class Depths:
    """What waits and runs, per queue, for gauges (``Overview`` without the history)."""

    queues: list[QueueStats]
    #: Blocked jobs per queue (workflow steps waiting on their parents).
    blocked: dict[str, int]
    #: The ready counts are the planner's estimates (too many rows to count quickly).
    ready_estimated: bool
    #: Running jobs per backend alias: the busy slots.
    running_by_backend: dict[str, int]


def depths(queues: list[str] | None = None, using: str | None = None) -> Depths:
    """Ready, delayed, running and blocked jobs per queue, through the partial indexes.

    The same bounded reads as :func:`overview`: exact under EXACT_BELOW rows and
    EXACT_TIMEOUT_MS, else the planner's estimates (then the oldest ready job's age is
    unknown).
    """
    using = _db(using)
    by_queue: dict[str, QueueStats] = {name: QueueStats(name) for name in queues or []}

    def queue(name: str) -> QueueStats:
        return by_queue.setdefault(name, QueueStats(name))

    with _cursor(using) as cur:
        ready_planned = planned_rows(cur, READY_ROWS)
    ready = _bounded(using, READY_BY_QUEUE) if ready_planned <= EXACT_BELOW else None
    for name, runnable, delayed, oldest in ready or []:
        q = queue(name)
        q.runnable, q.delayed, q.oldest_runnable = runnable, delayed, oldest
    for name, n in _bounded(using, RUNNING_BY_QUEUE) or []:
        queue(name).running = n
    if ready is None:
        _estimate(using, by_queue, queue, True, False, timezone.now())
    return Depths(
        queues=sorted(by_queue.values(), key=lambda q: q.name),
        blocked=dict(_bounded(using, BLOCKED_BY_QUEUE) or []),
        ready_estimated=ready is None,
        running_by_backend=dict(_bounded(using, RUNNING_BY_BACKEND) or []),
    )


def workers_seen(using: str | None = None) -> list[tuple[str, int, float, bool]]:
    """(backend, slots, seconds since the last heartbeat, declared lost) per ``runjobs``
    process (its supervisor's row; the rows of its children are not counted again)."""
    with _cursor(using) as cur:
        cur.execute(WORKERS_SEEN)
        return [(b, c, float(age), lost) for b, c, age, lost in cur.fetchall()]
