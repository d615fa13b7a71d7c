"""How a job's columns read in the admin: the list's columns and the job page's fields.

A mixin of ``JobAdmin``, kept apart from its views and actions; every value here is
computed from the row alone (no query), so the changelist stays one query per page.
"""

from django.contrib import admin
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from django_jobs.models import Job
from django_jobs.states import JobState

from .display import (
    attempts_of,
    current_progress,
    format_duration,
    progress_bar,
    seconds_between,
    short_name,
    state_badge,
    time_column,
)
from .redaction import pretty_json


class JobFields:
    @admin.display(description="status")
    def status(self, job: Job) -> str:
        return state_badge(job.state)

    @admin.display(description="task")
    def task(self, job: Job) -> str:
        return format_html('<span title="{}">{}</span>', job.task_path, short_name(job.task_path))

    @admin.display(description="attempts")
    def attempts_display(self, job: Job) -> str:
        return f"{job.attempts}/{job.max_attempts}"

    @admin.display(description="progress")
    def progress_display(self, job: Job) -> str:
        return progress_bar(current_progress(job))

    @admin.display(description="workflow")
    def workflow_link(self, job: Job) -> str:
        if job.workflow_id is None:
            return "-"
        url = reverse("admin:django_jobs_workflow_change", args=[job.workflow_id])
        return format_html('<a href="{}">Workflow {}</a>', url, job.workflow_id)

    @admin.display(description="receives")
    def receives_display(self, job: Job) -> str:
        return job.get_receives_display() if job.receives else "nothing from the steps before it"

    @admin.display(description="waits for")
    def parents_display(self, job: Job) -> str:
        parents = job.parents or []
        if not parents:
            return "-"
        shown = parents[:20]
        links = format_html_join(
            ", ",
            '<a href="{}">#{}</a>',
            ((reverse("admin:django_jobs_job_change", args=[p]), p) for p in shown),
        )
        more = f" and {len(parents) - len(shown)} more" if len(parents) > len(shown) else ""
        return format_html("{}{}", links, more)

    # Times: one format everywhere on the job admin (display.TIME_FORMAT), with seconds.
    enqueued = time_column("enqueued_at", "enqueued at")
    run_after_time = time_column("run_after", "run after")
    available = time_column("available_at", "next attempt from")
    started = time_column("started_at", "first started at")
    last_attempted = time_column("last_attempted_at", "last attempt started at")
    finished = time_column("finished_at", "finished at")

    # The last attempt, from the worker's claim to its recorded end, by the database clock:
    # the task function's own time (the worker's log line) plus a wait in the worker's
    # queue and the batching of outcomes. Each duration the admin shows is measured so.
    @admin.display(description="last attempt took")
    def duration(self, job: Job) -> str:
        end = job.finished_at or (timezone.now() if job.state == JobState.RUNNING else None)
        return format_duration(seconds_between(job.last_attempted_at, end))

    @admin.display(description="enqueued to finished")
    def latency(self, job: Job) -> str:
        return format_duration(seconds_between(job.enqueued_at, job.finished_at))

    @admin.display(description="args")
    def args_json(self, job: Job) -> str:
        return pretty_json(job.args)

    @admin.display(description="kwargs")
    def kwargs_json(self, job: Job) -> str:
        return pretty_json(job.kwargs)

    @admin.display(description="return value")
    def return_value_json(self, job: Job) -> str:
        if job.state != JobState.SUCCESSFUL:
            return "-"
        return pretty_json(job.return_value)

    @admin.display(description="history")
    def attempts_table(self, job: Job) -> str:
        return render_to_string(
            "admin/django_jobs/job/_attempts.html", {"attempts": attempts_of(job), "job": job}
        )
