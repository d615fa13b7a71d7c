"""The admin registrations; the classes live in jobs.py, workers.py and dashboard.py."""

from django.contrib import admin

from django_jobs.models import Dashboard, Job, Worker

from .dashboard import DashboardEntryAdmin
from .jobs import JobAdmin
from .workers import WorkerAdmin

admin.site.register(Job, JobAdmin)
admin.site.register(Dashboard, DashboardEntryAdmin)
admin.site.register(Worker, WorkerAdmin)

# The Schedule admin registers itself on import.
from django_jobs import schedules_admin  # noqa: E402, F401
