"""Optional integrations with the tools people already run, each turned on by a key of
``settings.DJANGO_JOBS`` and each needing its extra (``pip install django-pg-jobs[otel]``,
``[sentry]``):

- ``tracing``: OpenTelemetry spans for enqueues and job runs, the trace continued from
  the request that enqueued the job (``DJANGO_JOBS["TRACING"]``);
- ``sentry``: failed jobs reported to Sentry with the job's task, id, attempt and
  (redacted) arguments (``DJANGO_JOBS["SENTRY"]``).

Both hook in through ``django_jobs.instrumentation`` and our signals, never through
special code in the worker. When a key is off, its module is never imported.
"""

from collections.abc import Callable
from importlib import import_module

from django.core.exceptions import ImproperlyConfigured

from ..conf import JobsSettings

#: Setting key -> (module here, the package it needs, the extra that installs it).
INTEGRATIONS = {
    "TRACING": ("tracing", "opentelemetry", "otel"),
    "SENTRY": ("sentry", "sentry_sdk", "sentry"),
}


def missing_packages(settings: JobsSettings) -> list[tuple[str, str, str]]:
    """(setting key, package, extra) for each integration turned on but not installed."""
    missing = []
    for key, (_, package, extra) in INTEGRATIONS.items():
        if getattr(settings, key):
            try:
                import_module(package)
            except ImportError:
                missing.append((key, package, extra))
    return missing


def enable(settings: JobsSettings) -> None:
    """Turn on the integrations ``settings`` asks for (called from ``AppConfig.ready``).

    One whose package is missing is skipped here; the system check django_jobs.E021
    says so, with the command that installs it.
    """
    for key, (module, _, _) in INTEGRATIONS.items():
        if not getattr(settings, key):
            continue
        try:
            enable_one: Callable[[], None] = import_module(f"{__name__}.{module}").enable
        except (ImportError, ImproperlyConfigured):
            continue
        enable_one()
