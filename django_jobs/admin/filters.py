"""The job changelist's filters: choices from configuration, never from a scan of the table.

Each filter narrows the queryset in a shape one of the job table's indexes serves
(see ``models.Job.Meta.indexes``), so filtering stays fast at millions of rows.
"""

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from django_jobs import registry
from django_jobs.backend import jobs_backends
from django_jobs.console import stats
from django_jobs.limits import FLOW_LIMITED, FLOW_PARKED
from django_jobs.states import FINISHED, JobState

from .display import short_name

_FINISHED = [s.value for s in FINISHED]


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state__exact"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # Every state has an index: READY and RUNNING their own, FAILED, CANCELLED and
        # BLOCKED django_jobs_job_rare_state; SUCCESSFUL rows are most of the table.
        return [(s.value, s.label) for s in JobState]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if not self.value():
            return queryset
        if self.value() not in JobState.values:
            return queryset.none()  # no job has it (and no scan to find that out)
        return queryset.filter(state=self.value())


class FlowFilter(admin.SimpleListFilter):
    """READY jobs under a limit: each choice is one or two of the partial indexes on them."""

    title = "limits"
    parameter_name = "flow"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("limited", "Ready, under a limit"),
            ("parked", "Waiting for a slot of its key"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "limited":
            return queryset.filter(
                Q(state=JobState.READY, flow=FLOW_LIMITED)
                | Q(state=JobState.READY, flow=FLOW_PARKED)
            )
        if self.value() == "parked":
            return queryset.filter(state=JobState.READY, flow=FLOW_PARKED)
        return queryset if not self.value() else queryset.none()


class QueueFilter(admin.SimpleListFilter):
    title = "queue"
    parameter_name = "queue"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # The backends' QUEUES setting: a DISTINCT over millions of rows would be a scan.
        names = {q for b in jobs_backends() for q in b.queues}
        if self.value():
            names.add(self.value())
        return [(q, q) for q in sorted(names)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(queue_name=self.value()) if self.value() else queryset


class TaskFilter(admin.SimpleListFilter):
    title = "task"
    parameter_name = "task"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # The tasks declared in this process (the same registry the worker runs from).
        for backend in jobs_backends():
            registry.discover(backend.jobs_options.TASK_MODULES)
        paths = set(registry.registered_paths())
        if self.value():
            paths.add(self.value())
        return [(p, short_name(p)) for p in sorted(paths)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return stats.by_tasks(queryset, [self.value()]) if self.value() else queryset


_RANGES = {
    "1h": ("Last hour", timedelta(hours=1)),
    "24h": ("Last 24 hours", timedelta(days=1)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
}


class _SinceFilter(admin.SimpleListFilter):
    field = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in _RANGES.items()]

    def since(self) -> Any:
        return timezone.now() - _RANGES[self.value()][1] if self.value() in _RANGES else None


class FinishedFilter(_SinceFilter):
    title = "finished"
    parameter_name = "finished"

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.since() is None:
            return queryset
        # The state condition is implied by finished_at being set, but spelled out so the
        # planner can use the partial index on finished_at (a range scan, not a full one).
        return queryset.filter(state__in=_FINISHED, finished_at__gte=self.since())


class EnqueuedFilter(_SinceFilter):
    title = "enqueued"
    parameter_name = "enqueued"

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        # Recent windows are the head of the primary key's order when jobs came in; the
        # BRIN index on enqueued_at answers at once when none did.
        return queryset.filter(enqueued_at__gte=self.since()) if self.since() else queryset


class WorkflowFilter(admin.SimpleListFilter):
    """The steps of one workflow (``?workflow=ID``, linked from its page); not in the sidebar."""

    title = "workflow"
    parameter_name = "workflow"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # The one in use, so the sidebar says what is filtered; none to pick from.
        value = self.value()
        return [(value, f"#{value}")] if value else []

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if not value:
            return queryset
        if not value.isdigit():
            return queryset.none()
        # The partial index on workflow_id, newest first.
        return queryset.filter(workflow_id=int(value))
