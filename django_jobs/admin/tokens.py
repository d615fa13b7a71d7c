"""ApiTokenAdmin: make, scope and revoke HTTP API tokens.

A token is shown once, on the page that follows its creation, and never again: only its
digest is stored. The page is rendered directly rather than through the messages
framework, whose default storage is a cookie (signed, not encrypted).
"""

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from django_jobs.api.auth import new_token
from django_jobs.models import ApiToken


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = (
            "name", "can_read", "can_enqueue", "can_cancel", "can_scrape_metrics", "tasks",
            "expires_at", "is_active",
        )  # fmt: skip

    def clean_tasks(self) -> list[str]:
        tasks = self.cleaned_data.get("tasks") or []
        if not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks):
            raise forms.ValidationError(
                'A JSON list of task paths, such as ["app.tasks.send", "app.reports.*"], '
                'or ["*"] for every task.'
            )
        return tasks


class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenForm
    list_display = (
        "name", "prefix", "scopes", "task_scope", "is_active", "expires_at", "last_used_at",
        "created_at", "created_by",
    )  # fmt: skip
    list_filter = ("is_active", "can_enqueue", "can_cancel")
    search_fields = ("name", "prefix")
    readonly_fields = ("prefix", "created_at", "created_by", "last_used_at")

    @admin.display(description="scopes")
    def scopes(self, token: ApiToken) -> str:
        flags = ("read", "enqueue", "cancel", "scrape_metrics")
        return ", ".join(f for f in flags if getattr(token, f"can_{f}")) or "-"

    @admin.display(description="tasks")
    def task_scope(self, token: ApiToken) -> str:
        return ", ".join(token.tasks) if token.tasks else "(none)"

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if not change:
            token, obj.prefix, obj.digest = new_token()
            obj.created_by = request.user.get_username()
            # Kept on the request only, for response_add to show once.
            request._django_jobs_new_token = token  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)

    def response_add(self, request: HttpRequest, obj: ApiToken, *args: Any) -> HttpResponse:
        token = getattr(request, "_django_jobs_new_token", None)
        if token is None or "_popup" in request.POST:
            return super().response_add(request, obj, *args)
        context = {
            **self.admin_site.each_context(request),
            "title": f"API token {obj.name}",
            "opts": self.opts,
            "token": token,
            "object": obj,
        }
        response = TemplateResponse(request, "admin/django_jobs/apitoken/created.html", context)
        # Nothing between here and the browser may keep the page.
        response["Cache-Control"] = "no-store"
        return response
