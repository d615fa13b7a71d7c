"""The dashboard: queue depth, throughput charts, running jobs, failures and workers.

Served by ``JobAdmin.get_urls`` at ``admin/django_jobs/job/dashboard/`` behind the admin
login and the view permission on jobs. Every number comes from ``stats.py``, whose
queries read partial indexes and recent windows only, and count exactly only up to a
bound (past it they are the planner's estimates), so the page costs about the same with
five thousand or five million rows. ``?fragment=1`` returns just the numbers, which the
page's script fetches to refresh itself.
"""

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from django_jobs.backend import jobs_backends, jobs_database
from django_jobs.console import flow, stats

from .readonly import ReadOnlyAdmin
from .workers import is_stale


def context(model_admin: Any) -> dict[str, Any]:
    # Where the backends keep the job tables (OPTIONS["DATABASE"]), not "default".
    using = jobs_database()
    queues = sorted({q for b in jobs_backends() for q in b.queues})
    overview = stats.overview(queues=queues, using=using)
    now = timezone.now()
    workers = list(stats.workers(using=using))
    for w in workers:
        w.stale = is_stale(w, now)  # type: ignore[attr-defined]
    return {
        "overview": overview,
        "totals": overview.totals,
        "running_jobs": stats.running_jobs(using=using),
        "failures": stats.recent_failures(using=using),
        "workers": workers,
        "live_workers": sum(1 for w in workers if not w.stale),  # type: ignore[attr-defined]
        "now": now,
        "max_keys": flow.MAX_KEYS,
    }


def render(model_admin: Any, request: HttpRequest) -> HttpResponse:
    data = context(model_admin)
    if request.GET.get("fragment"):
        return TemplateResponse(request, "admin/django_jobs/_dashboard_fragment.html", data)
    return TemplateResponse(
        request,
        "admin/django_jobs/dashboard.html",
        {
            **model_admin.admin_site.each_context(request),
            **data,
            "title": "Jobs dashboard",
            "opts": model_admin.opts,
            "app_label": model_admin.opts.app_label,
            "refresh_seconds": 10,
            "media": model_admin.media,
        },
    )


class DashboardEntryAdmin(ReadOnlyAdmin):
    """Puts "Dashboard" in the admin index (see models.Dashboard); it only redirects."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("django_jobs.view_job")

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return HttpResponseRedirect(reverse("admin:django_jobs_job_dashboard"))
