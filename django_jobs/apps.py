from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "django_jobs"
    label = "django_jobs"
    verbose_name = "Jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .conf import jobs_settings

        settings = jobs_settings()
        # Each integration is imported only when its setting is on: a project that uses
        # none of them loads none of their packages.
        if settings.METRICS:
            from . import metrics

            metrics.enable()
        if settings.TRACING or settings.SENTRY:
            from . import integrations

            integrations.enable(settings)
