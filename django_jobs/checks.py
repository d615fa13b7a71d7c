"""System checks, and where each one lives. Every id is documented in the backend reference.

Each backend checks its own ``OPTIONS`` (``JobsBackend.check`` in backend.py):
django_jobs.E001 a bad OPTIONS value (QUEUE_LIMITS included), E002 an unknown DATABASE
alias, E003 a database that is not PostgreSQL, E004 an unknown LISTEN_DATABASE alias,
W002 LISTEN through what looks like a transaction-mode pooler, W003 QUEUE_LIMITS for a
queue the backend does not have.

Here: W001 another app's ``runjobs`` command shadows ours.

Schedules declared in ``OPTIONS["SCHEDULES"]`` (here): E010 malformed declaration,
E011 bad cron expression or interval, E012 unknown time zone, E013 task not declared,
E014 arguments not JSON or not fitting the task's signature, E015 other bad value.
"""

from typing import Any

from django.apps import apps
from django.core import checks
from django.core.management import get_commands

from . import registry
from .backend import JobsBackend
from .codec import call_problem
from .compat import task_backends
from .schedules import declared


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


@checks.register()
def check_declared_schedules(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    for alias in task_backends:
        try:
            backend = task_backends[alias]
        except Exception:  # noqa: S112 - a backend that cannot load is Django's check to report
            continue
        raw = backend.options.get("SCHEDULES") if isinstance(backend, JobsBackend) else None
        if not isinstance(raw, dict) or not raw:
            continue  # Absent, or not a dict (E001 says so).
        where = f"TASKS[{alias!r}]['OPTIONS']['SCHEDULES']"
        found = declared.read(raw)
        problems = list(found.problems)
        if found.valid:
            # Only now import the task modules: the checks of options come first.
            registry.discover(tuple(backend.options.get("TASK_MODULES", ())))
        for d in found.valid:
            task = registry.get(d.task_path)
            if task is None:
                problems.append(
                    declared.Problem(
                        d.name,
                        "E013",
                        f"task {d.task_path!r} is not a declared task (declare it with @task "
                        "or @job in an installed app's tasks.py or a TASK_MODULES module).",
                    )
                )
                continue
            problem = call_problem(task, d.args, d.kwargs)
            if problem:
                problems.append(declared.Problem(d.name, "E014", problem))
        for p in problems:
            subject = f"{where}[{p.name!r}]" if p.name is not None else where
            messages.append(
                checks.Error(
                    f"{subject}: {p.message}",
                    hint=f"Keys: {', '.join(declared.KEYS)}. See the periodic jobs "
                    "how-to in the django_jobs docs.",
                    id=f"django_jobs.{p.check_id}",
                )
            )
    return messages
