"""Background jobs for Django, stored in PostgreSQL, run by ``manage.py runjobs``.

This module imports nothing from Django at import time, so listing the app in
``INSTALLED_APPS`` or naming the backend in ``TASKS`` stays cheap; the public
names below are loaded on first use.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["JobsTask", "enqueue_many", "job"]

if TYPE_CHECKING:
    from .task import JobsTask, enqueue_many, job


def __getattr__(name: str) -> Any:
    if name in {"job", "JobsTask", "enqueue_many"}:
        from . import task

        return getattr(task, name)
    raise AttributeError(f"module 'django_jobs' has no attribute {name!r}")
