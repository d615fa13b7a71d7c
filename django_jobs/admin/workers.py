"""WorkerAdmin: who is serving, since when, how recently heard from, and what it runs."""

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from django_jobs.backend import get_backend, jobs_database
from django_jobs.compat import InvalidTaskBackend
from django_jobs.conf import JobsOptions
from django_jobs.console import stats
from django_jobs.models import Worker

from .readonly import ReadOnlyAdmin


def worker_timeout(alias: str) -> float:
    """The backend's WORKER_TIMEOUT: a worker silent this long is lost."""
    try:
        return get_backend(alias).jobs_options.WORKER_TIMEOUT
    except InvalidTaskBackend:  # a worker row of a backend no longer configured
        return JobsOptions.WORKER_TIMEOUT


def is_stale(worker: Worker, now: Any = None) -> bool:
    now = now or timezone.now()
    return worker.last_heartbeat < now - timedelta(seconds=worker_timeout(worker.backend))


class WorkerAdmin(ReadOnlyAdmin):
    # Read-only: a row is a live worker's registration; deleting it would declare the
    # worker lost while it still runs its jobs.
    list_display = (
        "host",
        "pid",
        "queue_list",
        "concurrency",
        "started_at",
        "last_heartbeat",
        "heartbeat_age",
        "running",
        "health",
        "backend",
        "version",
    )
    list_filter = ("backend", "host")
    search_fields = ("id", "host")
    ordering = ("-started_at",)

    class Media:
        css = {"all": ["django_jobs/admin.css"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = stats.supervisors(super().get_queryset(request).using(jobs_database()))
        return queryset.annotate(running_jobs=stats.running_now())

    @admin.display(description="queues")
    def queue_list(self, worker: Worker) -> str:
        return ", ".join(worker.queues) if worker.queues else "(all)"

    @admin.display(description="heartbeat age")
    def heartbeat_age(self, worker: Worker) -> str:
        seconds = (timezone.now() - worker.last_heartbeat).total_seconds()
        return f"{max(seconds, 0):.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"

    @admin.display(description="running now", ordering="running_jobs")
    def running(self, worker: Worker) -> int:
        return getattr(worker, "running_jobs", 0)

    @admin.display(description="health")
    def health(self, worker: Worker) -> str:
        if is_stale(worker):
            return format_html(
                '<span class="jobs-badge jobs-badge-failed" title="No heartbeat for longer '
                'than WORKER_TIMEOUT ({} s): its jobs will be rescued">stale</span>',
                f"{worker_timeout(worker.backend):g}",
            )
        return mark_safe('<span class="jobs-badge jobs-badge-successful">alive</span>')
