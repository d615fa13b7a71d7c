"""The Tasks framework's names, from the one place that chooses where they come from.

Django 6.0 and later ship the framework as ``django.tasks``; Django 5.2 gets it from the
``django-tasks`` backport, imported as ``django_tasks``. Every module of django_jobs
imports ``Task``, ``TaskResult``, the signals and the rest from here, never from either
package directly, so nothing else knows which one is in use.

The rule: on Django 6.0 and later, ``django.tasks`` is used even when the backport is also
installed (libraries such as Wagtail's search declare their tasks with the backport's
``@task``). Those declarations still run on our backend: the backport's ``@task`` builds
the backend's ``task_class``, which is our ``JobsTask``, so the task, its results, its
signals and its exceptions are Django's own, exactly as with Django's built-in backends.
What the backport's user can notice on Django 6: receivers connected to
``django_tasks.signals`` hear nothing from us (connect to ``django.tasks.signals``), and
``except django_tasks.exceptions.InvalidTaskError`` does not catch Django's
``InvalidTask`` (catch ``django.tasks.exceptions`` classes).

The differences between the two that matter to us, all absorbed here:

- module paths (``django.tasks.*`` and ``django_tasks.*``);
- exception names: ``InvalidTask``/``InvalidTaskBackend`` in Django,
  ``InvalidTaskError``/``InvalidTaskBackendError`` in the backport;
- the backport registers its system checks and its signal receivers (logging, and the
  reset of backends when ``TASKS`` changes in tests) only when ``django_tasks`` is in
  ``INSTALLED_APPS``; importing them here does it either way, as ``import django.tasks``
  does on Django 6;
- where ``normalize_json`` (what a ``TaskResult`` does to arguments) lives;
- the logger the framework logs each task's start and end under (``LOGGER_NAME``).

``TaskContext``, ``TaskResult`` (with ``errors`` and ``worker_ids``), the backend base
class and its feature flags, ``task_class`` and async support are the same in both.
"""

import logging

import django
from django.core.exceptions import ImproperlyConfigured
from django.dispatch import Signal

#: True on Django 5.2, where the framework comes from the django-tasks backport.
USES_BACKPORT = django.VERSION < (6, 0)

if USES_BACKPORT:
    try:
        from django_tasks import default_task_backend, task, task_backends
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImproperlyConfigured(
            f"django_jobs needs Django's Tasks framework. Django {django.get_version()} "
            "does not include it (Django 6.0 does): install the backport with "
            "`pip install django-tasks`, or upgrade Django."
        ) from exc
    from django_tasks import checks as _checks  # noqa: F401  (registers the backend checks)
    from django_tasks.backends.base import BaseTaskBackend

    # The backport's package exports fewer names than django.tasks does.
    from django_tasks.base import (
        DEFAULT_TASK_BACKEND_ALIAS,
        DEFAULT_TASK_PRIORITY,
        DEFAULT_TASK_QUEUE_NAME,
        Task,
        TaskContext,
        TaskError,
        TaskResult,
        TaskResultStatus,
    )
    from django_tasks.exceptions import InvalidTaskBackendError as InvalidTaskBackend
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json

    LOGGER_NAME = "django_tasks"
else:
    from django.tasks import (
        DEFAULT_TASK_BACKEND_ALIAS,
        DEFAULT_TASK_QUEUE_NAME,
        Task,
        TaskContext,
        TaskResult,
        TaskResultStatus,
        default_task_backend,
        task,
        task_backends,
    )
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import DEFAULT_TASK_PRIORITY, TaskError
    from django.tasks.exceptions import (
        InvalidTask,
        InvalidTaskBackend,
        TaskResultDoesNotExist,
        TaskResultMismatch,
    )
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json

    LOGGER_NAME = "django.tasks"

#: The logger of the framework's own receivers of the task signals.
_FRAMEWORK_LOGGER = logging.getLogger(LOGGER_NAME)


def signal_wanted(signal: Signal, level: int) -> bool:
    """Whether sending one of the task signals would do anything.

    The framework connects one receiver to each task signal, which only logs (under
    ``LOGGER_NAME``, at ``level``). When it is alone and its log line would be dropped,
    building a TaskResult and sending the signal is wasted work on every job, so it is
    skipped; any other receiver (an app's, a monitoring library's) brings it back.
    """
    return len(signal.receivers) > 1 or _FRAMEWORK_LOGGER.isEnabledFor(level)


__all__ = [
    "DEFAULT_TASK_BACKEND_ALIAS",
    "DEFAULT_TASK_PRIORITY",
    "DEFAULT_TASK_QUEUE_NAME",
    "LOGGER_NAME",
    "USES_BACKPORT",
    "BaseTaskBackend",
    "InvalidTask",
    "InvalidTaskBackend",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultMismatch",
    "TaskResultStatus",
    "default_task_backend",
    "normalize_json",
    "signal_wanted",
    "task",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]
