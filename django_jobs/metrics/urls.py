"""``path("metrics", include("django_jobs.metrics.urls"))`` mounts the metrics view."""

from django.urls import path

from . import views

urlpatterns = [path("", views.metrics, name="django_jobs_metrics")]
