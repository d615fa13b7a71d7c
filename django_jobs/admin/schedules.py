"""ScheduleAdmin: create, edit, preview and operate periodic schedules.

The task is chosen from the declared tasks (never typed as an import path), the
arguments are checked against its signature, and the next five fire times are shown
for the expression and time zone, live while editing (``schedule_preview.js`` calls
:meth:`ScheduleAdmin.preview_view`). Schedules declared in settings are read-only
here except for their on/off switch. Arguments shown read-only (schedules from
settings, staff who may only view) have their secrets hidden, as on a job's page.
"Run now" and enable/disable go through ``schedules/firing.py``; broken schedules
(``last_error``) are flagged in the changelist.

Registered in ``django_jobs.admin``.
"""

from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, JsonResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from django_jobs import registry
from django_jobs.backend import get_backend, jobs_backends, jobs_database
from django_jobs.codec import call_problem
from django_jobs.models import MAX_CATCHUP, Schedule, ScheduleSource
from django_jobs.schedules import cron, firing
from django_jobs.schedules.timing import Timing, timing_problems

from .redaction import pretty_json

UPCOMING = 5
UNITS = (("1", "seconds"), ("60", "minutes"), ("3600", "hours"))


def _task_choices(current: str | None) -> list[tuple[str, str]]:
    for backend in jobs_backends():
        registry.discover(backend.jobs_options.TASK_MODULES)
    paths = registry.registered_paths()
    choices = [("", "---------")] + [(p, p) for p in paths]
    if current and current not in paths:
        choices.append((current, f"{current} (not declared any more)"))
    return choices


def _fmt(moment: datetime, tz: str) -> str:
    local = moment.astimezone(cron.zone(tz))
    return f"{local:%a %Y-%m-%d %H:%M:%S} {local.tzname()} (UTC{local:%z})"


def preview(
    cron_text: str, interval_seconds: int | None, tz: str, start_at: Any = None, end_at: Any = None
) -> dict[str, Any]:
    """The next fire times for a timing, or the problem with it, for the page and the JSON."""
    problems = timing_problems(cron_text, interval_seconds, tz)
    if problems:
        return {"times": [], "explain": "", "error": " ".join(problems.values())}
    timing = Timing(cron_text, interval_seconds, tz, start_at, end_at)
    times = timing.upcoming(firing.database_now(), UPCOMING)
    explain = cron.explain(cron_text) if cron_text else f"Every {interval_seconds} s"
    return {"times": [_fmt(t, tz) for t in times], "explain": explain, "error": ""}


# ── forms ───────────────────────────────────────────────────────────────────


class ScheduleForm(forms.ModelForm):
    task_path = forms.ChoiceField(label="Task", help_text="A declared task (@task or @job).")
    every = forms.IntegerField(
        required=False, min_value=1, help_text="Or run at a fixed interval instead of cron."
    )
    every_unit = forms.ChoiceField(choices=UNITS, initial="60", required=False, label="Unit")
    args = forms.JSONField(required=False, initial=list, help_text='A JSON list: [1, "a"].')
    kwargs = forms.JSONField(required=False, initial=dict, help_text='A JSON object: {"a": 1}.')
    max_catchup = forms.IntegerField(
        label="Max catch-up",
        min_value=1,
        max_value=MAX_CATCHUP,
        initial=10,
        help_text=f"With 'run each missed run': at most this many, the newest "
        f"(1 to {MAX_CATCHUP}).",
    )

    class Meta:
        model = Schedule
        fields = [
            "name",
            "task_path",
            "args",
            "kwargs",
            "enabled",
            "cron",
            "timezone",
            "start_at",
            "end_at",
            "backend",
            "queue_name",
            "priority",
            "misfire_policy",
            "max_catchup",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["task_path"].choices = _task_choices(self.instance.task_path)
        aliases = [b.alias for b in jobs_backends()] or ["default"]
        self.fields["backend"] = forms.ChoiceField(
            choices=[(a, a) for a in aliases], initial=aliases[0], label="Backend"
        )
        seconds = self.instance.interval_seconds
        if seconds and not self.is_bound:
            unit = next(u for u, _ in reversed(UNITS) if seconds % int(u) == 0)
            self.initial["every"] = seconds // int(unit)
            self.initial["every_unit"] = unit

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        every = data.get("every")
        interval = every * int(data.get("every_unit") or 1) if every else None
        data["interval_seconds"] = self.instance.interval_seconds = interval
        cron_text = (data.get("cron") or "").strip()
        data["cron"] = cron_text
        for field, message in timing_problems(
            cron_text, interval, data.get("timezone") or ""
        ).items():
            self.add_error({"interval_seconds": "every"}.get(field, field), message)
        args = data.get("args")
        kwargs = data.get("kwargs")
        data["args"] = [] if args is None else args
        data["kwargs"] = {} if kwargs is None else kwargs
        if not isinstance(data["args"], list):
            self.add_error("args", "Enter a JSON list, such as [1, 2].")
        if not isinstance(data["kwargs"], dict):
            self.add_error("kwargs", 'Enter a JSON object, such as {"user_id": 1}.')
        start, end = data.get("start_at"), data.get("end_at")
        if start and end and end <= start:
            self.add_error("end_at", "The end must be after the start.")
        task = registry.get(data.get("task_path") or "")
        if task is None and data.get("task_path"):
            self.add_error("task_path", "This task is not declared any more; pick another.")
        if task is not None and not self.has_error("args") and not self.has_error("kwargs"):
            problem = call_problem(task, data["args"], data["kwargs"])
            if problem:
                self.add_error("args", problem)
            else:
                self._check_queue(task, data)
        return data

    def _check_queue(self, task: Any, data: dict[str, Any]) -> None:
        try:
            task.using(
                queue_name=data.get("queue_name") or "default",
                priority=data.get("priority") or 0,
                backend=data.get("backend") or "default",
            )
        except Exception as exc:  # InvalidTask: an unknown queue, a priority out of range
            self.add_error("queue_name", str(exc))

    def save(self, commit: bool = True) -> Schedule:
        self.instance.interval_seconds = self.cleaned_data.get("interval_seconds")
        return super().save(commit)


class DeclaredScheduleForm(forms.ModelForm):
    """Schedules from settings: only the on/off switch belongs to the admin."""

    class Meta:
        model = Schedule
        fields = ["enabled"]


# ── admin ───────────────────────────────────────────────────────────────────


class BrokenFilter(admin.SimpleListFilter):
    title = "health"
    parameter_name = "health"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("broken", "broken"), ("ok", "healthy")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "broken":
            return queryset.exclude(last_error="")
        if self.value() == "ok":
            return queryset.filter(last_error="")
        return queryset


_TIMING = ("cron", "every", "every_unit", "timezone", "start_at", "end_at", "upcoming")
_STATE = ("source", "next_run_at", "last_run_at", "last_job_link", "last_error")


class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = (
        "name",
        "status",
        "task_path",
        "timing",
        "enabled",
        "next_run_at",
        "last_run",
        "source",
    )
    list_filter = ("enabled", BrokenFilter, "source", "misfire_policy")
    search_fields = ("name", "task_path")
    actions = ("run_now", "enable", "disable")
    readonly_fields = ("upcoming", *_STATE)

    class Media:
        js = ("django_jobs/schedule_preview.js",)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Where the backends keep their tables (OPTIONS["DATABASE"]), as the scheduler.
        return super().get_queryset(request).using(jobs_database())

    def _declared(self, obj: Schedule | None) -> bool:
        return obj is not None and obj.source != ScheduleSource.ADMIN

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs):
        if self._declared(obj):
            kwargs["form"] = DeclaredScheduleForm
        return super().get_form(request, obj, change, **kwargs)

    def _redacted(self, request: HttpRequest, obj: Schedule | None) -> bool:
        """Show the arguments read-only with secrets hidden, rather than as editable JSON.

        Staff who may change an admin schedule see and edit the real values (they could
        overwrite them anyway, and a masked value must not be saved back over the real
        one). Everyone else, and every schedule declared in settings, sees them redacted.
        """
        if obj is None:
            return False  # the add form: there is nothing to hide yet
        return self._declared(obj) or not self.has_change_permission(request, obj)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> list:
        if self._redacted(request, obj):
            what = ("name", "task_path", "args_redacted", "kwargs_redacted", "enabled")
        else:
            what = ("name", "task_path", "args", "kwargs", "enabled")
        if self._declared(obj):
            timing = ("timing", "timezone", "start_at", "end_at", "upcoming")
        else:
            timing = _TIMING
        return [
            (None, {"fields": what}),
            ("When", {"fields": timing}),
            ("Jobs", {"fields": ("backend", "queue_name", "priority")}),
            ("Missed runs", {"fields": ("misfire_policy", "max_catchup")}),
            ("State", {"fields": _STATE}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if self._declared(obj):
            names = [f for _, opts in self.get_fieldsets(request, obj) for f in opts["fields"]]
            return [n for n in names if n != "enabled"]
        return list(self.readonly_fields)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Settings would write a deleted declaration back at the next worker start.
        if obj is not None and obj.source == ScheduleSource.CODE:
            return False
        return super().has_delete_permission(request, obj)

    def has_run_now_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_jobs.run_schedule_now")

    def save_model(self, request: HttpRequest, obj: Schedule, form: Any, change: bool) -> None:
        timing_fields = {"cron", "every", "every_unit", "timezone", "start_at", "end_at"}
        restart = (
            not change
            or bool(timing_fields & set(form.changed_data))
            or ("enabled" in form.changed_data and obj.enabled)
        )
        if restart:
            database = get_backend(obj.backend).database
            now = firing.database_now(database)
            obj.next_run_at = Timing.of(obj).first_after(now)
        if change and form.changed_data and obj.source == ScheduleSource.ADMIN:
            obj.last_error = ""  # the operator changed it: judge it afresh at its next fire
        obj.save(using=obj._state.db or jobs_database())

    # ── columns ──────────────────────────────────────────────────────────────

    @admin.display(description="status")
    def status(self, obj: Schedule) -> str:
        if obj.last_error:
            return format_html(
                '<span class="jobs-schedule-broken" title="{}" style="color: var(--error-fg)">'
                "⚠ broken</span>",
                obj.last_error,
            )
        if not obj.enabled:
            return "off"
        if obj.next_run_at is None:
            return "ended"
        return "ok"

    @admin.display(description="when")
    def timing(self, obj: Schedule) -> str:
        if obj.cron:
            words = cron.explain(obj.cron)
            text = f"{obj.cron} ({words})" if words else obj.cron
        else:
            text = f"every {obj.interval_seconds} s"
        return text if obj.timezone == "UTC" else f"{text}, {obj.timezone}"

    @admin.display(description="args")
    def args_redacted(self, obj: Schedule) -> str:
        return pretty_json(obj.args)

    @admin.display(description="kwargs")
    def kwargs_redacted(self, obj: Schedule) -> str:
        return pretty_json(obj.kwargs)

    @admin.display(description="last run")
    def last_run(self, obj: Schedule) -> str:
        if obj.last_run_at is None:
            return "never"
        return format_html("{}<br>{}", _when(obj.last_run_at), self.last_job_link(obj))

    @admin.display(description="last job")
    def last_job_link(self, obj: Schedule) -> str:
        if not obj.last_job_id:
            return "-"
        try:
            url = reverse("admin:django_jobs_job_change", args=[obj.last_job_id])
        except NoReverseMatch:
            return f"job {obj.last_job_id}"
        return format_html('<a href="{}">job {}</a>', url, obj.last_job_id)

    @admin.display(description="next fire times")
    def upcoming(self, obj: Schedule) -> str:
        try:
            url = reverse("admin:django_jobs_schedule_preview")
        except NoReverseMatch:
            url = ""
        data = {"times": [], "explain": "", "error": ""}
        if obj.cron or obj.interval_seconds:
            data = preview(obj.cron, obj.interval_seconds, obj.timezone, obj.start_at, obj.end_at)
        items = format_html_join("", "<li>{}</li>", ((t,) for t in data["times"]))
        return format_html(
            '<div id="jobs-schedule-upcoming" data-url="{}">'
            '<p class="jobs-explain">{}</p><p class="jobs-error errornote" {}>{}</p>'
            "<ol>{}</ol></div>",
            url,
            data["explain"],
            "" if data["error"] else "hidden",
            data["error"],
            items,
        )

    # ── actions ──────────────────────────────────────────────────────────────

    @admin.action(description="Run selected schedules now", permissions=["run_now"])
    def run_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        for schedule in queryset:
            try:
                fired = firing.run_now(schedule.pk)
            except firing.ScheduleError as exc:
                self.message_user(request, f"{schedule.name}: not run: {exc}", messages.ERROR)
            else:
                self.message_user(
                    request, f"{schedule.name}: job {fired.job_id} enqueued.", messages.SUCCESS
                )

    @admin.action(description="Enable selected schedules", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._switch(request, queryset, True)

    @admin.action(description="Disable selected schedules", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._switch(request, queryset, False)

    def _switch(self, request: HttpRequest, queryset: QuerySet, enabled: bool) -> None:
        names = []
        refused = False
        verb = "enabled" if enabled else "disabled"
        for schedule in queryset:
            if schedule.enabled != enabled:
                try:
                    firing.set_enabled(schedule.pk, enabled)
                except firing.ScheduleError as exc:
                    refused = True
                    self.message_user(
                        request, f"{schedule.name}: not {verb}: {exc}", messages.ERROR
                    )
                else:
                    names.append(schedule.name)
        if names:
            self.message_user(request, f"{len(names)} schedule(s) {verb}: {', '.join(names)}.")
        elif not refused:
            self.message_user(request, f"Nothing to do: already {verb}.", messages.WARNING)

    # ── the live preview ─────────────────────────────────────────────────────

    def get_urls(self) -> list:
        return [
            path(
                "preview/",
                self.admin_site.admin_view(self.preview_view),
                name="django_jobs_schedule_preview",
            ),
            *super().get_urls(),
        ]

    def preview_view(self, request: HttpRequest) -> JsonResponse:
        """Next fire times for ?cron= or ?every=&unit=, ?timezone=, and the window
        ?start_at=&end_at= (ISO, or the form's ``start_at_0`` date and ``start_at_1``
        time), as JSON."""
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied

        def bad(error: str) -> JsonResponse:
            return JsonResponse({"times": [], "explain": "", "error": error}, status=400)

        cron_text = request.GET.get("cron", "").strip()
        every_text = request.GET.get("every", "").strip()
        interval = None
        if every_text:
            try:
                unit = int(request.GET.get("unit") or 1)
                interval = int(every_text) * (unit if unit in (1, 60, 3600) else 1)
            except ValueError:
                return bad(f"The interval must be a whole number, got {every_text!r}.")
        try:
            start_at = _moment(request.GET, "start_at")
            end_at = _moment(request.GET, "end_at")
        except forms.ValidationError as exc:
            return bad(" ".join(exc.messages))
        if start_at and end_at and end_at <= start_at:
            return bad("The end must be after the start.")
        timezone_name = request.GET.get("timezone", "UTC").strip()
        data = preview(cron_text, interval, timezone_name, start_at, end_at)
        return JsonResponse(data, status=400 if data["error"] else 200)


def _moment(query: Any, name: str) -> datetime | None:
    """``?name=`` as ISO, or the admin widget's ``?name_0=`` date and ``?name_1=`` time,
    as an aware datetime in the current time zone (as the form reads it); None if empty."""
    label = name.replace("_", " ").capitalize()
    parts = [query.get(f"{name}_0", "").strip(), query.get(f"{name}_1", "").strip()]
    try:
        if any(parts):
            return forms.SplitDateTimeField(required=False).clean(parts)
        text = query.get(name, "").strip()
        return forms.DateTimeField(required=False).clean(text) if text else None
    except forms.ValidationError as exc:
        raise forms.ValidationError(f"{label}: {' '.join(exc.messages)}") from None


def _when(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S")
