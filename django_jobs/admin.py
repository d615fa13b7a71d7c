"""A read-only view of the job table. Jobs are changed only through the queue protocol."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import Job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "task_path",
        "state",
        "queue_name",
        "priority",
        "attempts_display",
        "enqueued_at",
        "started_at",
        "finished_at",
        "worker_id",
    )
    list_filter = ("state", "queue_name")
    search_fields = ("=id", "task_path")
    ordering = ("-id",)
    # The changelist's total count is a full scan on a big table; skip it.
    show_full_result_count = False
    list_per_page = 50

    @admin.display(description="attempts")
    def attempts_display(self, job: Job) -> str:
        return f"{job.attempts}/{job.max_attempts}"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in Job._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
