"""The admin registrations; the classes live in one module each."""

from django.contrib import admin

from django_jobs.models import Dashboard, Job, Schedule, Worker

from .dashboard import DashboardEntryAdmin
from .jobs import JobAdmin
from .schedules import ScheduleAdmin
from .workers import WorkerAdmin

admin.site.register(Job, JobAdmin)
admin.site.register(Dashboard, DashboardEntryAdmin)
admin.site.register(Worker, WorkerAdmin)
admin.site.register(Schedule, ScheduleAdmin)
