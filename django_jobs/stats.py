"""Read-only numbers about the queue, for the admin dashboard and the ``jobs`` command.

Nothing here writes, and nothing here reads the whole job table: with millions of
finished rows a full ``COUNT(*)`` takes seconds. Each query is shaped to use one of the
partial indexes (``models.Job.Meta.indexes``):

- READY rows through ``django_jobs_job_claim`` (partial on READY),
- RUNNING rows through ``django_jobs_job_running`` (partial on RUNNING),
- finished rows through ``django_jobs_job_finished`` (partial on the finished states,
  keyed by ``finished_at``), always with a ``finished_at`` range: recent windows only.

Totals for all history are the planner's estimate, and labelled as such.
"""

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connections, router
from django.db.models import QuerySet
from django.utils import timezone

from .models import Job, Worker
from .states import JobState

TABLE = Job._meta.db_table

# The finished states as SQL literals, spelled exactly as in the partial index's predicate
# so the planner can prove the index applies.
_FINISHED_SQL = "('SUCCESSFUL', 'FAILED', 'CANCELLED')"

READY_BY_QUEUE = f"""
SELECT queue_name,
       count(*) FILTER (WHERE available_at <= now()),
       count(*) FILTER (WHERE available_at > now()),
       min(available_at) FILTER (WHERE available_at <= now())
FROM {TABLE} WHERE state = 'READY'
GROUP BY queue_name
"""

RUNNING_BY_QUEUE = f"""
SELECT queue_name, count(*) FROM {TABLE} WHERE state = 'RUNNING' GROUP BY queue_name
"""

RUNNING_BY_WORKER = f"""
SELECT worker_id, count(*) FROM {TABLE} WHERE state = 'RUNNING' GROUP BY worker_id
"""

# One range scan of the finished index serves both the per-queue counts of the window
# and the per-bucket chart: group by (queue, state, bucket) and add up in Python.
FINISHED_SINCE = f"""
SELECT queue_name, state, date_trunc(%(unit)s, finished_at) AS bucket, count(*)
FROM {TABLE}
WHERE state IN {_FINISHED_SQL} AND finished_at >= %(since)s
GROUP BY 1, 2, 3
"""

ESTIMATED_ROWS = "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass"


def jobs_backends() -> list[Any]:
    """The configured django_jobs backends (``TASKS`` entries of JobsBackend)."""
    from django.tasks import task_backends

    from .backend import JobsBackend

    return [b for b in task_backends.all() if isinstance(b, JobsBackend)]


def jobs_database() -> str:
    """The database alias that holds the job tables, for callers that name no backend.

    The backends' ``OPTIONS["DATABASE"]`` when they agree on one alias; when they use
    several, the database router's choice for the Job model decides.
    """
    aliases = {b.database for b in jobs_backends()}
    if len(aliases) == 1:
        return aliases.pop()
    return router.db_for_write(Job)


def _db(using: str | None) -> str:
    return using or jobs_database()


def _cursor(using: str | None = None) -> Any:
    return connections[_db(using)].cursor()


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
        cur.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cur.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


@dataclass
class QueueStats:
    name: str
    runnable: int = 0
    delayed: int = 0
    running: int = 0
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
            "running": self.running,
            "oldest_ready_age_seconds": self.oldest_runnable_age,
            "finished_in_window": {s: self.finished.get(s, 0) for s in _FINISHED_ORDER},
        }


_FINISHED_ORDER = (JobState.SUCCESSFUL, JobState.FAILED, JobState.CANCELLED)


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
    per_minute: list[Bucket]
    per_hour: list[Bucket]
    estimated_total: int | None

    @property
    def totals(self) -> QueueStats:
        total = QueueStats("all")
        for q in self.queues:
            total.runnable += q.runnable
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
            "queues": [q.as_dict() for q in self.queues],
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
    """
    using = _db(using)
    now = now or timezone.now()
    day_ago = now - timedelta(hours=23)
    hour_ago = now - timedelta(minutes=59)
    by_queue: dict[str, QueueStats] = {name: QueueStats(name) for name in queues or []}

    def queue(name: str) -> QueueStats:
        return by_queue.setdefault(name, QueueStats(name))

    with _cursor(using) as cur:
        cur.execute(READY_BY_QUEUE)
        for name, runnable, delayed, oldest in cur.fetchall():
            q = queue(name)
            q.runnable, q.delayed, q.oldest_runnable = runnable, delayed, oldest
        cur.execute(RUNNING_BY_QUEUE)
        for name, running in cur.fetchall():
            queue(name).running = running
        cur.execute(
            FINISHED_SINCE,
            {"unit": "hour", "since": day_ago.replace(minute=0, second=0, microsecond=0)},
        )
        day_rows = cur.fetchall()
        cur.execute(
            FINISHED_SINCE, {"unit": "minute", "since": hour_ago.replace(second=0, microsecond=0)}
        )
        minute_rows = cur.fetchall()
    for name, state, _bucket, n in day_rows:
        queue(name).finished[state] += n
    return Overview(
        now=now,
        window=now - day_ago.replace(minute=0, second=0, microsecond=0),
        queues=sorted(by_queue.values(), key=lambda q: q.name),
        per_minute=_buckets(minute_rows, "minute", hour_ago, 60),
        per_hour=_buckets(day_rows, "hour", day_ago, 24),
        estimated_total=estimated_total(using),
    )


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
        .filter(state__in=list(_FINISHED_ORDER), finished_at__gte=since, state=JobState.FAILED)
        .defer("args", "kwargs", "return_value", "worker_ids")
        .order_by("-finished_at")[:limit]
    )


def running_by_worker(using: str | None = None) -> dict[str, int]:
    with _cursor(using) as cur:
        cur.execute(RUNNING_BY_WORKER)
        return dict(cur.fetchall())


def workers(using: str | None = None) -> list[Worker]:
    """Every registered worker, newest first, with ``running`` (jobs held now) set."""
    running = running_by_worker(using)
    rows = list(Worker.objects.using(_db(using)).order_by("-started_at"))
    for w in rows:
        w.running = running.get(w.id, 0)  # type: ignore[attr-defined]
    return rows
