"""System checks of the app itself (each backend checks its own OPTIONS in backend.py).

Ids: django_jobs.E001 bad OPTIONS value, E002 unknown DATABASE alias, E003 not
PostgreSQL (backend.py); W001 another app's ``runjobs`` command shadows ours (here).
"""

from typing import Any

from django.apps import apps
from django.core import checks
from django.core.management import get_commands


@checks.register()
def check_runjobs_not_shadowed(
    app_configs: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    # django-extensions also ships a `runjobs` command; Django resolves a command name
    # to the app listed first in INSTALLED_APPS.
    owner = get_commands().get("runjobs")
    if owner in (None, "django_jobs"):
        return []
    position = {config.name: n for n, config in enumerate(apps.get_app_configs())}
    return [
        checks.Warning(
            f"`manage.py runjobs` runs the command from {owner!r}, not django_jobs's worker, "
            f"because {owner!r} comes before 'django_jobs' in INSTALLED_APPS "
            f"(positions {position.get(owner)} and {position.get('django_jobs')}).",
            hint="List 'django_jobs' before it in INSTALLED_APPS, or start the worker with "
            "`manage.py jobs_worker`, which is the same command under a name nobody else uses.",
            id="django_jobs.W001",
        )
    ]
