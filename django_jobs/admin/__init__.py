"""The admin registrations; the classes live in one module each."""

from django.contrib import admin

from django_jobs.models import (
    ApiToken,
    Dashboard,
    Job,
    Schedule,
    WebhookDelivery,
    Worker,
    Workflow,
)

from .dashboard import DashboardEntryAdmin
from .jobs import JobAdmin
from .schedules import ScheduleAdmin
from .tokens import ApiTokenAdmin
from .webhooks import WebhookDeliveryAdmin
from .workers import WorkerAdmin
from .workflows import WorkflowAdmin

admin.site.register(Job, JobAdmin)
admin.site.register(Dashboard, DashboardEntryAdmin)
admin.site.register(Worker, WorkerAdmin)
admin.site.register(Schedule, ScheduleAdmin)
admin.site.register(WebhookDelivery, WebhookDeliveryAdmin)
admin.site.register(ApiToken, ApiTokenAdmin)
admin.site.register(Workflow, WorkflowAdmin)
