"""The Tasks framework's names, from the one place that chooses where they come from.

Every module of django_jobs imports ``Task``, ``TaskResult``, the signals and the rest
from here, never from ``django.tasks`` directly, so supporting another home for them
(the ``django_tasks`` backport on Django 5.2) changes this file and nothing else.
"""

import logging

from django.dispatch import Signal
from django.tasks import (
    DEFAULT_TASK_BACKEND_ALIAS,
    DEFAULT_TASK_QUEUE_NAME,
    Task,
    TaskContext,
    TaskResult,
    TaskResultStatus,
    task_backends,
)
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import DEFAULT_TASK_PRIORITY, TaskError
from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started

#: The logger of Django's own receivers of the task signals (django.tasks.signals).
_DJANGO_TASKS_LOGGER = logging.getLogger("django.tasks")


def signal_wanted(signal: Signal, level: int) -> bool:
    """Whether sending one of the task signals would do anything.

    Django connects one receiver to each task signal, which only logs (``django.tasks``,
    at ``level``). When it is alone and its log line would be dropped, building a
    TaskResult and sending the signal is wasted work on every job, so it is skipped; any
    other receiver (an app's, a monitoring library's) brings it back.
    """
    return len(signal.receivers) > 1 or _DJANGO_TASKS_LOGGER.isEnabledFor(level)


__all__ = [
    "DEFAULT_TASK_BACKEND_ALIAS",
    "DEFAULT_TASK_PRIORITY",
    "DEFAULT_TASK_QUEUE_NAME",
    "BaseTaskBackend",
    "InvalidTask",
    "InvalidTaskBackend",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "signal_wanted",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]
