"""System checks, and where each one lives. Every id is documented in the backend reference.

Each backend checks its own ``OPTIONS`` (``JobsBackend.check`` in backend.py):
django_jobs.E001 a bad OPTIONS value (QUEUE_LIMITS included), E002 an unknown DATABASE
alias, E003 a database that is not PostgreSQL, E004 an unknown LISTEN_DATABASE alias,
W002 LISTEN through what looks like a transaction-mode pooler, W004 QUEUE_LIMITS for a
queue the backend does not have.

Here: W001 another app's ``runjobs`` command shadows ours; W003 (a database check, run
by ``runjobs`` at start, ``migrate`` and ``check --database``) a task with recent jobs
that this process cannot find.

``settings.DJANGO_JOBS`` (here): E020 a bad key or value, E021 an integration turned on
whose package is not installed, W020 an ``API_TASKS`` entry that names no declared task.

Schedules declared in ``OPTIONS["SCHEDULES"]`` (here): E010 malformed declaration,
E011 bad cron expression or interval, E012 unknown time zone, E013 task not declared,
E014 arguments not JSON or not fitting the task's signature, E015 other bad value.
"""

from datetime import timedelta
from fnmatch import fnmatchcase
from importlib import import_module
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.management import get_commands
from django.db import DatabaseError
from django.utils import timezone
from django.utils.timesince import timesince

from . import registry
from .backend import JobsBackend, jobs_backends
from .codec import call_problem
from .compat import task_backends
from .conf import jobs_settings, settings_problems
from .console import stats
from .integrations import missing_packages
from .schedules import declared

#: A task whose newest job is this recent (or still waiting) must be findable (W003).
RECENT = timedelta(days=1)


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


@checks.register()
def check_jobs_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    raw = getattr(settings, "DJANGO_JOBS", None) or {}
    messages: list[checks.CheckMessage] = [
        checks.Error(
            f"settings.DJANGO_JOBS: {message}.",
            hint="See the settings reference in the django_jobs docs.",
            id="django_jobs.E020",
        )
        for _, message in settings_problems(raw)
    ]
    if messages:
        return messages
    current = jobs_settings()
    wanted = list(missing_packages(current))
    if current.METRICS:
        try:
            import_module("prometheus_client")
        except ImportError:
            wanted.append(("METRICS", "prometheus_client", "prometheus"))
    for key, package, extra in wanted:
        messages.append(
            checks.Error(
                f"settings.DJANGO_JOBS[{key!r}] is on, but {package!r} is not installed.",
                hint=f"pip install 'django-pg-jobs[{extra}]', or turn {key} off.",
                id="django_jobs.E021",
            )
        )
    if current.API_TASKS:
        for backend in task_backends.all():
            if isinstance(backend, JobsBackend):
                registry.discover(backend.jobs_options.TASK_MODULES)
        paths = registry.registered_paths()
        for entry in current.API_TASKS:
            if not any(fnmatchcase(path, entry) for path in paths):
                messages.append(
                    checks.Warning(
                        f"settings.DJANGO_JOBS['API_TASKS'] has {entry!r}, which matches no "
                        "declared task, so nothing can be enqueued with it over HTTP.",
                        hint="Name a task declared with @task or @job in an installed app's "
                        "tasks.py or a TASK_MODULES module (a dotted path, or 'module.*').",
                        id="django_jobs.W020",
                    )
                )
    return messages


@checks.register(checks.Tags.database)
def check_enqueued_tasks_can_be_found(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Warn about tasks with recent or waiting jobs that this process cannot find."""
    messages: list[checks.CheckMessage] = []
    seen: set[tuple[str, str]] = set()
    for backend in jobs_backends():
        if not databases or backend.database not in databases:
            continue
        registry.discover(backend.jobs_options.TASK_MODULES)
        try:
            newest = stats.newest_job_per_task(using=backend.database)
        except DatabaseError:
            continue  # no job table yet (before the first migrate): nothing to find
        since = timezone.now() - RECENT
        for job in sorted(newest, key=lambda j: -j.job_id):
            key = (backend.database, job.task_path)
            if key in seen or (job.state != "READY" and job.enqueued_at < since):
                continue
            seen.add(key)
            try:
                registry.resolve(job.task_path, job.task_proof)
            except registry.UnknownTask as exc:
                messages.append(_unfindable(job, exc.reason))
    return messages


def _unfindable(job: stats.NewestJob, reason: str) -> checks.CheckMessage:
    return checks.Warning(
        f"Task {job.task_path!r} cannot be found in this process, and it has recent jobs "
        f"(the newest, {job.job_id}, was enqueued {timesince(job.enqueued_at)} ago and is "
        f"{job.state}): {reason}. Workers fail such jobs with UnknownTask.",
        hint="If the task was renamed or removed, keep the old name declared until its "
        "jobs are done, or cancel them. If its module is only imported where jobs are "
        "enqueued, check that web and worker processes share SECRET_KEY, or list the "
        "module in OPTIONS['TASK_MODULES'].",
        id="django_jobs.W003",
    )
