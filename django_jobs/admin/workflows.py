"""WorkflowAdmin: the list of workflows, and each workflow's page.

A workflow's page shows its steps level by level (a step's level is one more than its
deepest parent's, so a chain is a column and a chord a wide row then one), with counts
per state, the running steps' progress, the failed step, the on_error job, and buttons
to cancel it or retry its failed part. Permissions are the job ones: ``view_job`` to
see, ``cancel_job`` and ``retry_job`` to act. Nothing here runs a query per step: a
workflow's steps are read once, in id order, through the partial index on workflow_id.
"""

from collections import Counter, defaultdict
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from django_jobs.backend import jobs_database
from django_jobs.console import operations
from django_jobs.context import Progress
from django_jobs.models import Job, Workflow
from django_jobs.states import FINISHED, JobState
from django_jobs.workflows.results import UNFINISHED, workflow_status

from .display import short_name, state_badge
from .readonly import ReadOnlyAdmin

#: Steps listed per level; the rest are counted, and listed in the job changelist.
STEPS_SHOWN = 60
#: Order in which a level lists its steps: what needs attention first.
_ATTENTION = {
    JobState.FAILED: 0,
    JobState.RUNNING: 1,
    JobState.CANCELLED: 2,
    JobState.READY: 3,
    JobState.BLOCKED: 4,
    JobState.SUCCESSFUL: 5,
}


def who(request: HttpRequest) -> str:
    """How the admin names the user behind a cancel, on the rows it cancels."""
    return f"{request.user.get_username()} (admin)"


def _progress(row: dict[str, Any]) -> Progress | None:
    progress = Progress.from_json(row["progress"])
    if progress is None or row["state"] != JobState.RUNNING:
        return None
    return progress if progress.attempt in (None, row["attempts"]) else None


def workflow_page(workflow: Workflow, using: str) -> dict[str, Any]:
    """What the workflow's page shows, from one read of its steps."""
    rows = list(
        Job.objects.using(using)
        .filter(workflow_id=workflow.pk)
        .order_by("id")
        .values("id", "task_path", "state", "parents", "progress", "attempts")
    )
    depth: dict[int, int] = {}
    levels: dict[int, list[dict[str, Any]]] = defaultdict(list)
    done = total = 0.0
    for row in rows:
        # Parents have smaller ids, so theirs are known; a pruned parent counts as level 0.
        level = 1 + max((depth.get(p, 0) for p in row["parents"] or ()), default=-1)
        depth[row["id"]] = level
        row["progress"] = _progress(row)
        if row["progress"] is not None and row["progress"].total:
            done += row["progress"].done
            total += row["progress"].total
        levels[level].append(row)
    counts = Counter(row["state"] for row in rows)
    shown = []
    for level in sorted(levels):
        steps = levels[level]
        ordered = sorted(steps, key=lambda r: (_ATTENTION.get(r["state"], 9), r["id"]))
        shown.append(
            {
                "number": level + 1,
                "count": len(steps),
                "counts": sorted(Counter(r["state"] for r in steps).items()),
                "steps": ordered[:STEPS_SHOWN],
                "hidden": max(0, len(steps) - STEPS_SHOWN),
                "tasks": sorted({short_name(r["task_path"]) for r in steps}),
            }
        )
    finished = sum(counts[state] for state in FINISHED)
    return {
        "status": workflow_status(
            counts, failed_step_id=workflow.failed_step_id, cancelled_by=workflow.cancelled_by
        ),
        "counts": sorted(counts.items()),
        "steps": len(rows),
        "finished": finished,
        "unfinished": sum(counts[state] for state in UNFINISHED),
        "pruned": max(0, workflow.step_count - len(rows)),
        "levels": shown,
        "progress_done": done,
        "progress_total": total,
        "progress_percent": round(100 * finished / len(rows)) if rows else 0,
        "retryable": counts[JobState.FAILED] + counts[JobState.CANCELLED],
    }


class WorkflowAdmin(ReadOnlyAdmin):
    list_display = ("id", "description", "outcome", "step_count", "created_at")
    list_display_links = ("id", "description")
    sortable_by = ("id",)
    ordering = ("-id",)
    list_per_page = 50
    show_full_result_count = False
    search_fields = ("=id",)
    search_help_text = "A workflow id."

    class Media:
        css = {"all": ["django_jobs/admin.css"]}

    # The job permissions govern workflows (the model has none of its own).
    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("django_jobs.view_job")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_jobs.cancel_job")

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_jobs.retry_job")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        open_steps = Job.objects.filter(
            workflow_id=OuterRef("pk"), state__in=[s.value for s in UNFINISHED]
        )
        # One probe of the partial index on open steps per row of the page.
        return (
            super()
            .get_queryset(request)
            .using(jobs_database())
            .annotate(has_open_steps=Exists(open_steps))
        )

    @admin.display(description="status")
    def outcome(self, workflow: Workflow) -> str:
        if workflow.failed_step_id is not None:
            return state_badge(JobState.FAILED)
        if workflow.cancelled_by:
            return state_badge(JobState.CANCELLED)
        if getattr(workflow, "has_open_steps", False):
            return format_html('<span class="jobs-badge jobs-badge-running">In progress</span>')
        # Successful, or a running step ended cancelled: only counting its steps would
        # tell, and its page does that.
        return format_html('<span class="jobs-badge jobs-badge-successful">Finished</span>')

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/cancel/",
                wrap(require_POST(self._action_view("cancel"))),
                name="django_jobs_workflow_cancel",
            ),
            path(
                "<path:object_id>/retry-failed/",
                wrap(require_POST(self._action_view("retry"))),
                name="django_jobs_workflow_retry",
            ),
            *super().get_urls(),
        ]

    def _action_view(self, name: str) -> Any:
        def view(request: HttpRequest, object_id: str) -> HttpResponse:
            if not getattr(self, f"has_{name}_permission")(request):
                raise PermissionDenied
            workflow = self.get_object(request, unquote(object_id))
            if workflow is None:
                raise Http404(f"No workflow with id {object_id!r}.")
            using = jobs_database()
            if name == "cancel":
                report = operations.cancel_workflows([workflow.pk], using, by=who(request))
            else:
                report = operations.retry_workflows([workflow.pk], using)
            self.message_user(request, f"Workflow {workflow.pk}: {report.summary()}")
            url = reverse("admin:django_jobs_workflow_change", args=[workflow.pk])
            return HttpResponseRedirect(url)

        view.__name__ = f"workflow_{name}_view"
        return view

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        workflow = self.get_object(request, unquote(object_id))
        if workflow is None:
            raise Http404(f"No workflow with id {object_id!r}.")
        page = workflow_page(workflow, jobs_database())
        context = {
            **self.admin_site.each_context(request),
            "title": f"Workflow {workflow.pk}",
            "subtitle": workflow.description,
            "opts": self.opts,
            "workflow": workflow,
            "page": page,
            "steps_url": reverse("admin:django_jobs_job_changelist") + f"?workflow={workflow.pk}",
            "can_cancel": self.has_cancel_permission(request) and page["unfinished"] > 0,
            "can_retry": self.has_retry_permission(request) and page["retryable"] > 0,
        }
        return TemplateResponse(request, "admin/django_jobs/workflow/detail.html", context)
