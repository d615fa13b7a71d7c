from django.contrib import admin
from django.urls import include, path

from testproject.example import views

urlpatterns = [
    path("", views.home, name="home"),
    path("admin/", admin.site.urls),
    path("jobs-api/", include("django_jobs.api.urls")),
    path("metrics", include("django_jobs.metrics.urls")),
    path("accounts/", include("testproject.accounts.urls")),
]
