"""``path("jobs-api/", include("django_jobs.api.urls"))`` mounts the HTTP API."""

from django.urls import path

from . import views

app_name = "django_jobs_api"

urlpatterns = [
    path("jobs/", views.jobs, name="jobs"),
    path("jobs/<str:job_id>/", views.job, name="job"),
    path("jobs/<str:job_id>/cancel/", views.cancel, name="cancel"),
    path("tasks/", views.tasks, name="tasks"),
    path("openapi.json", views.openapi, name="openapi"),
]
