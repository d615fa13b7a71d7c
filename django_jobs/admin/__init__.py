"""The admin registrations; the classes live in one module each."""

from django.contrib import admin

from django_jobs.models import Dashboard, Job, Schedule, Worker, Workflow

from .dashboard import DashboardEntryAdmin
from .jobs import JobAdmin
from .schedules import ScheduleAdmin
from .workers import WorkerAdmin
from .workflows import WorkflowAdmin

admin.site.register(Job, JobAdmin)
admin.site.register(Dashboard, DashboardEntryAdmin)
admin.site.register(Worker, WorkerAdmin)
admin.site.register(Schedule, ScheduleAdmin)
admin.site.register(Workflow, WorkflowAdmin)
