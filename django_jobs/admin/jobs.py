"""JobAdmin: the job table as an operations console.

Rows are never edited by hand. Retry, cancel and run-now go through the queue protocol
(via ``operations.py``), each behind its own permission, from the changelist (actions on
a selection) and from a job's page (buttons). The changelist stays fast on millions of
rows: no exact total count, large JSON columns deferred, filter choices that come from
settings and the task registry instead of ``SELECT DISTINCT`` over the table.
"""

from itertools import accumulate
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core import signing
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from django_jobs import registry
from django_jobs.backend import jobs_database
from django_jobs.console import operations, stats
from django_jobs.models import MAX_JOB_ID, Job
from django_jobs.states import JobState

from . import dashboard
from .display import limits_status
from .fields import JobFields
from .filters import (
    EnqueuedFilter,
    FinishedFilter,
    FlowFilter,
    QueueFilter,
    StateFilter,
    TaskFilter,
    WorkflowFilter,
)
from .pagination import EstimatedCountPaginator
from .readonly import ReadOnlyAdmin
from .workflows import who

#: Seconds a delete confirmation page stays valid.
DELETE_CONFIRMATION_MAX_AGE = 3600
_DEFERRED = ("args", "kwargs", "return_value", "errors", "worker_ids", "parents", "dependents")


class JobChangeList(ChangeList):
    """The changelist, sorted only by the columns in ``sortable_by`` whatever ?o= says."""

    def get_ordering_field(self, field_name: str) -> Any:
        if self.sortable_by is not None and field_name not in self.sortable_by:
            return None
        return super().get_ordering_field(field_name)


# ── the admin ───────────────────────────────────────────────────────────────────

#: The job page's times and durations (JobAdmin's display methods of those names).
TIMING = (
    "enqueued",
    "run_after_time",
    "available",
    "started",
    "last_attempted",
    "finished",
    "duration",
    "latency",
)

# action name -> (permission suffix, operations function, label); the buttons and the
# changelist actions are the same operations.
OPERATIONS = {
    "retry": ("retry", operations.retry, "Retry"),
    "cancel": ("cancel", operations.cancel, "Cancel"),
    "run_now": ("run_now", operations.run_now, "Run now"),
}


class JobAdmin(JobFields, ReadOnlyAdmin):
    list_display = (
        "id",
        "status",
        "progress_display",
        "task",
        "queue_name",
        "priority",
        "attempts_display",
        "enqueued",
        "started",
        "finished",
        "duration",
        "worker_id",
    )
    list_display_links = ("id", "task")
    # Only orders an index serves: sorting millions of rows by task or queue is a full
    # scan and a sort. JobChangeList also ignores ?o= for the other columns.
    sortable_by = ("id",)
    list_filter = (
        StateFilter,
        QueueFilter,
        TaskFilter,
        FlowFilter,
        FinishedFilter,
        EnqueuedFilter,
        WorkflowFilter,
    )
    search_fields = ("=id", "task_path")
    search_help_text = "A job id, or part of a task's name (declared tasks only)."
    ordering = ("-id",)
    list_per_page = 50
    # The exact total is a full scan on a big table; the paginator estimates instead.
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    actions = ("retry_jobs", "cancel_jobs", "run_jobs_now", "delete_jobs")
    change_form_template = "admin/django_jobs/job/change_form.html"
    fieldsets = (
        (None, {"fields": ("status", "task_path", "queue_name", "priority", "backend")}),
        ("Timing", {"fields": TIMING}),
        ("Call", {"fields": ("args_json", "kwargs_json", "return_value_json")}),
        ("Attempts", {"fields": ("attempts_display", "worker_id", "attempts_table")}),
    )
    workflow_fieldset = (
        "Workflow",
        {"fields": ("workflow_link", "receives_display", "parents_display", "pending_parents")},
    )
    running_fieldset = (
        "Progress and cancellation",
        {"fields": ("progress_display", "cancel_requested_at", "cancelled_by")},
    )

    class Media:
        css = {"all": ["django_jobs/admin.css"]}

    # ── permissions ─────────────────────────────────────────────────────────

    # Rows are never edited by hand; deleting finished or waiting ones is allowed.
    deletable = True

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A running job's row belongs to its worker until the attempt ends.
        if obj is not None and obj.state == JobState.RUNNING:
            return False
        return super().has_delete_permission(request, obj)

    def has_retry_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("django_jobs.retry_job")

    def has_cancel_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("django_jobs.cancel_job")

    def has_run_now_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("django_jobs.run_job_now")

    # ── the changelist ──────────────────────────────────────────────────────

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # The backends' database (OPTIONS["DATABASE"]), like the dashboard's numbers.
        qs = super().get_queryset(request).using(jobs_database())
        # The JSON columns can be large; the list shows none of them.
        if getattr(request, "resolver_match", None) and request.resolver_match.url_name == (
            "django_jobs_job_changelist"
        ):
            qs = qs.defer(*_DEFERRED)
        return qs

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return JobChangeList

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        # Only the list filters, which all have an index behind them: Django would allow
        # any field lookup in the URL (?priority=5, ?kwargs__contains=...), each a scan.
        return lookup in {f.parameter_name for f in self.list_filter}

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        # Both lookups hit an index or a short list: the primary key, or the exact paths
        # of declared tasks whose name contains the term (no LIKE '%…%' over the table).
        term = search_term.strip().lstrip("#")
        if not term:
            return queryset, False
        # isascii(): "²" and other Unicode digits pass isdigit() but are no job id.
        if term.isascii() and term.isdigit():
            job_id = int(term)
            if job_id > MAX_JOB_ID:  # past bigint: no such job (and no query to run)
                return queryset.none(), False
            return queryset.filter(pk=job_id), False
        needle = term.lower()
        paths = [p for p in registry.registered_paths() if needle in p.lower()]
        return stats.by_tasks(queryset, [*paths, term]), False

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        # Django 6.1 says where the actions show (the changelist or a change form); earlier
        # versions have changelist actions only, and no such parameter.
        where = {} if action_location is None else {"action_location": action_location}
        actions = super().get_actions(request, **where)
        # Django's own delete_selected renders every selected row on its confirmation page
        # (millions with "select all") and would delete running jobs; ours does neither.
        actions.pop("delete_selected", None)
        return actions

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        # An action the user may not run is refused outright (Django would only say
        # "no action selected"), so a crafted POST cannot pass for a harmless one.
        if request.method == "POST" and "index" in request.POST:
            for name in request.POST.getlist("action"):
                func = getattr(self, name, None)
                allowed = getattr(func, "allowed_permissions", None)
                if (
                    name in self.actions
                    and allowed
                    and not all(getattr(self, f"has_{p}_permission")(request) for p in allowed)
                ):
                    raise PermissionDenied
        extra_context = {**(extra_context or {}), "dashboard_url": self._dashboard_url()}
        return super().changelist_view(request, extra_context)

    # ── the job's page ──────────────────────────────────────────────────────

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = list(self.fieldsets)
        if obj is not None and obj.workflow_id is not None:
            fieldsets.insert(1, self.workflow_fieldset)
        if obj is not None and (obj.progress or obj.cancelled_by or obj.cancel_requested_at):
            fieldsets.insert(1, self.running_fieldset)
        if obj is not None and (obj.flow or obj.unique_key):
            fields = ("limits_status", "unique_key", "concurrency_key", "concurrency_limit")
            fieldsets.insert(1, ("Limits", {"fields": fields}))
        return fieldsets

    @admin.display(description="limits")
    def limits_status(self, job: Job) -> str:
        return limits_status(job)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [
            *(f.name for f in Job._meta.fields),
            "status",
            *TIMING,
            "attempts_display",
            "args_json",
            "kwargs_json",
            "return_value_json",
            "attempts_table",
            "progress_display",
            "workflow_link",
            "receives_display",
            "parents_display",
            "limits_status",
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        job = self.get_object(request, unquote(object_id))
        buttons = []
        workflow_url = None
        if job is not None:
            buttons = self._buttons(request, job)
            if job.workflow_id is not None:
                workflow_url = reverse("admin:django_jobs_workflow_change", args=[job.workflow_id])
        extra_context = {
            **(extra_context or {}),
            "job_buttons": buttons,
            "workflow_url": workflow_url,
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def _buttons(self, request: HttpRequest, job: Job) -> list[dict[str, str]]:
        """The operations this user may run on this job in its current state."""
        applicable = {
            "retry": job.state in (JobState.FAILED, JobState.CANCELLED),
            "cancel": job.state in (JobState.READY, JobState.BLOCKED, JobState.RUNNING),
            "run_now": job.state == JobState.READY and job.available_at > timezone.now(),
        }
        buttons = []
        for name, (perm, _, label) in OPERATIONS.items():
            if applicable[name] and getattr(self, f"has_{perm}_permission")(request, job):
                url = reverse(f"admin:django_jobs_job_{name}", args=[job.pk])
                if name == "cancel" and job.state == JobState.RUNNING:
                    label = "Ask to stop" if job.cancel_requested_at is None else "Ask again"
                buttons.append({"name": name, "label": label, "url": url})
        return buttons

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        urls = [
            path("dashboard/", wrap(self.dashboard_view), name="django_jobs_job_dashboard"),
            *(
                path(
                    f"<path:object_id>/{name.replace('_', '-')}/",
                    wrap(require_POST(self._operation_view(name))),
                    name=f"django_jobs_job_{name}",
                )
                for name in OPERATIONS
            ),
        ]
        return urls + super().get_urls()

    def _operation_view(self, name: str) -> Any:
        perm, operation, _ = OPERATIONS[name]

        def view(request: HttpRequest, object_id: str) -> HttpResponse:
            if not getattr(self, f"has_{perm}_permission")(request):
                raise PermissionDenied
            # get_object() answers None for an id that is no number ("abc") or past bigint.
            job = self.get_object(request, unquote(object_id))
            if job is None:
                raise Http404(f"No job with id {object_id!r}.")
            extra = {"by": who(request)} if name == "cancel" else {}
            self._report(request, operation([job.pk], **extra))
            return HttpResponseRedirect(reverse("admin:django_jobs_job_change", args=[job.pk]))

        view.__name__ = f"{name}_view"
        return view

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return dashboard.render(self, request)

    def _dashboard_url(self) -> str:
        return reverse("admin:django_jobs_job_dashboard", current_app=self.admin_site.name)

    # ── actions ─────────────────────────────────────────────────────────────

    def _selected_ids(self, queryset: QuerySet) -> list[int]:
        # "Select all" may mean millions of rows: take ids only, and a bounded number.
        return list(
            queryset.order_by("-pk").values_list("pk", flat=True)[: operations.MAX_IDS + 1]
        )

    def _report(self, request: HttpRequest, report: operations.Report) -> None:
        level = messages.SUCCESS if report.ok and not report.truncated else messages.WARNING
        self.message_user(request, report.summary(), level)

    @admin.action(permissions=["retry"], description="Retry selected failed or cancelled jobs")
    def retry_jobs(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._report(request, operations.retry(self._selected_ids(queryset), queryset.db))

    @admin.action(
        permissions=["cancel"], description="Cancel selected jobs (running ones are asked to stop)"
    )
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet) -> None:
        ids = self._selected_ids(queryset)
        self._report(request, operations.cancel(ids, queryset.db, by=who(request)))

    @admin.action(permissions=["run_now"], description="Run selected delayed jobs now")
    def run_jobs_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._report(request, operations.run_now(self._selected_ids(queryset), queryset.db))

    @admin.action(permissions=["delete"], description="Delete selected jobs")
    def delete_jobs(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        if request.POST.get("confirm") == "yes":
            if "selection" in request.POST:
                ids = self._confirmed_selection(request)
                if ids is None:
                    self.message_user(
                        request,
                        "Nothing was deleted: this confirmation is not valid any more (it "
                        f"expires after {DELETE_CONFIRMATION_MAX_AGE // 60} minutes, and "
                        "belongs to the user who asked). Select the jobs and choose the "
                        "action again.",
                        messages.ERROR,
                    )
                    return None
            else:
                ids = self._selected_ids(queryset)
            self._report(request, operations.delete(ids, queryset.db))
            return None
        ids = self._selected_ids(queryset)
        if not ids:
            self.message_user(request, "No jobs match the selection any more.", messages.WARNING)
            return None
        states = (
            Job.objects.using(queryset.db)
            .filter(pk__in=ids)
            .values_list("state", flat=True)
            .order_by()
        )
        counts: dict[str, int] = {}
        for state in states:
            counts[state] = counts.get(state, 0) + 1
        return TemplateResponse(
            request,
            "admin/django_jobs/job/delete_jobs_confirmation.html",
            {
                **self.admin_site.each_context(request),
                "title": "Delete jobs?",
                "opts": self.opts,
                # The selection goes back signed, in one field: one hidden field per id
                # would pass DATA_UPLOAD_MAX_NUMBER_FIELDS (1,000) and fail with a 400.
                "selection": self._sign_selection(request, ids),
                # Django runs an action only with at least one row selected.
                "first_id": ids[0],
                "counts": sorted(counts.items()),
                "running": counts.get(JobState.RUNNING, 0),
                "total": min(len(ids), operations.MAX_IDS),
            },
        )

    def _selection_salt(self, request: HttpRequest) -> str:
        return f"django_jobs.delete_jobs:{request.user.pk}"

    def _sign_selection(self, request: HttpRequest, ids: list[int]) -> str:
        # Differences between neighbours: runs of ids compress to almost nothing.
        deltas = [b - a for a, b in zip([0, *ids], ids, strict=False)]
        return signing.dumps(deltas, salt=self._selection_salt(request), compress=True)

    def _confirmed_selection(self, request: HttpRequest) -> list[int] | None:
        """The ids signed into the confirmation page, or None if its token is not valid."""
        try:
            deltas = signing.loads(
                request.POST["selection"],
                salt=self._selection_salt(request),
                max_age=DELETE_CONFIRMATION_MAX_AGE,
            )
        except signing.BadSignature:  # altered, another user's, or expired
            return None
        if not isinstance(deltas, list) or not all(type(d) is int for d in deltas):
            return None
        return list(accumulate(deltas))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        operations.delete(self._selected_ids(queryset), queryset.db)

    def delete_model(self, request: HttpRequest, obj: Job) -> None:
        report = operations.delete([obj.pk], obj._state.db)
        if not report.ok:
            raise PermissionDenied(report.summary())
