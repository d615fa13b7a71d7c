"""WebhookDeliveryAdmin: the webhook deliveries, where they go and how they went.

A delivery is a job (``models.WebhookDelivery`` is a proxy of ``Job`` for the delivery
task), so its page is the job's page; this list shows what matters for webhooks: the
target URL, the job it reports on, the answer or the last error, and the next attempt.
"""

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from django_jobs.backend import jobs_database
from django_jobs.console import operations
from django_jobs.models import WebhookDelivery

from .display import state_badge
from .pagination import EstimatedCountPaginator
from .readonly import ReadOnlyAdmin


class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = (
        "id", "status", "target", "event", "about", "attempts_display", "enqueued_at",
        "next_attempt", "outcome",
    )  # fmt: skip
    list_display_links = ("id",)
    list_filter = ("state",)
    search_fields = ("=id",)
    sortable_by = ("id",)
    ordering = ("-id",)
    list_per_page = 50
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    actions = ("retry_deliveries",)

    class Media:
        css = {"all": ["django_jobs/admin.css"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).using(jobs_database())

    def has_retry_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("django_jobs.retry_job")

    @admin.display(description="state")
    def status(self, delivery: WebhookDelivery) -> str:
        return state_badge(delivery.state)

    @admin.display(description="URL")
    def target(self, delivery: WebhookDelivery) -> str:
        return delivery.args[0] if delivery.args else "-"

    @admin.display(description="event")
    def event(self, delivery: WebhookDelivery) -> str:
        return _event(delivery).get("type", "-")

    @admin.display(description="job")
    def about(self, delivery: WebhookDelivery) -> str:
        data = _event(delivery).get("data") or {}
        if "id" not in data:
            return "-"
        url = reverse("admin:django_jobs_job_change", args=[data["id"]])
        return format_html('<a href="{}">#{} {}</a> {}', url, data["id"], data.get("task", ""),
                           data.get("state", ""))  # fmt: skip

    @admin.display(description="attempts")
    def attempts_display(self, delivery: WebhookDelivery) -> str:
        return f"{delivery.attempts} / {delivery.max_attempts}"

    @admin.display(description="next attempt")
    def next_attempt(self, delivery: WebhookDelivery) -> Any:
        return delivery.available_at if delivery.state == "READY" else "-"

    @admin.display(description="answer or last error")
    def outcome(self, delivery: WebhookDelivery) -> str:
        if delivery.state == "SUCCESSFUL" and isinstance(delivery.return_value, dict):
            return f"HTTP {delivery.return_value.get('status')}"
        if delivery.errors:
            return delivery.errors[-1].get("message", "")[:200]
        return "-"

    @admin.action(description="Retry the selected deliveries", permissions=["retry"])
    def retry_deliveries(self, request: HttpRequest, queryset: QuerySet) -> None:
        report = operations.retry(queryset.values_list("pk", flat=True), using=queryset.db)
        level = messages.SUCCESS if report.ok else messages.WARNING
        self.message_user(request, report.summary(), level)


def _event(delivery: WebhookDelivery) -> dict[str, Any]:
    if len(delivery.args) > 1 and isinstance(delivery.args[1], dict):
        return delivery.args[1]
    return {}
