"""Background jobs for Django, stored in PostgreSQL, run by ``manage.py runjobs``.

This module imports nothing from Django at import time, so listing the app in
``INSTALLED_APPS`` or naming the backend in ``TASKS`` stays cheap; the public
names below are loaded on first use.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_PUBLIC = {
    "job": "task",
    "JobsTask": "task",
    "enqueue_many": "task",
    "chain": "workflows.canvas",
    "group": "workflows.canvas",
    "chord": "workflows.canvas",
    "signature": "workflows.canvas",
    "get_workflow": "workflows.results",
    "WorkflowResult": "workflows.results",
    "WorkflowStatus": "workflows.results",
    "cancel": "control",
    "job_info": "control",
    "set_progress": "context",
    "cancel_requested": "context",
    "was_duplicate": "backend",
}

__all__ = [
    "JobsTask",
    "WorkflowResult",
    "WorkflowStatus",
    "cancel",
    "cancel_requested",
    "chain",
    "chord",
    "enqueue_many",
    "get_workflow",
    "group",
    "job",
    "job_info",
    "set_progress",
    "signature",
    "was_duplicate",
]

if TYPE_CHECKING:
    from .backend import was_duplicate
    from .context import cancel_requested, set_progress
    from .control import cancel, job_info
    from .task import JobsTask, enqueue_many, job
    from .workflows.canvas import chain, chord, group, signature
    from .workflows.results import WorkflowResult, WorkflowStatus, get_workflow


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'django_jobs' has no attribute {name!r}")
