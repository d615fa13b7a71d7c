"""Background jobs for Django, stored in PostgreSQL, run by ``manage.py runjobs``.

This module imports nothing from Django at import time, so listing the app in
``INSTALLED_APPS`` or naming the backend in ``TASKS`` stays cheap; the public
names below are loaded on first use.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["JobsTask", "job", "was_duplicate"]

if TYPE_CHECKING:
    from .backend import was_duplicate
    from .task import JobsTask, job


def __getattr__(name: str) -> Any:
    if name in {"job", "JobsTask"}:
        from . import task

        return getattr(task, name)
    if name == "was_duplicate":
        from . import backend

        return backend.was_duplicate
    raise AttributeError(f"module 'django_jobs' has no attribute {name!r}")
