"""Which functions may run: the tasks declared in this process, by dotted path.

A job row names its task by path. The worker never imports or calls a path it reads
from the table; it looks the path up here. Tasks land here when they are declared
(``JobsBackend.validate_task`` runs for every Task bound to a jobs backend), and
:func:`discover` declares the usual ones up front by importing every installed app's
``tasks`` module, plus the modules listed in ``OPTIONS["TASK_MODULES"]``.
"""

import logging
import threading
from importlib import import_module

from django.utils.module_loading import autodiscover_modules

from .compat import Task

logger = logging.getLogger(__name__)

_tasks: dict[str, Task] = {}
_lock = threading.Lock()
_discovered: set[tuple[str, ...]] = set()


def register(task: Task) -> None:
    """Remember ``task`` as the function to run for its path."""
    path = task.module_path
    existing = _tasks.get(path)
    # `.using()` makes copies that share the function; keep the declared one. A new
    # function object under the same path means the module was reloaded: take it.
    if existing is None or existing.func is not task.func:
        with _lock:
            _tasks[path] = task


def get(path: str) -> Task | None:
    """Return the declared task for ``path``, or None. Never imports anything."""
    return _tasks.get(path)


def registered_paths() -> list[str]:
    return sorted(_tasks)


def discover(extra_modules: tuple[str, ...] = ()) -> None:
    """Import installed apps' ``tasks`` modules and ``extra_modules`` (once per process)."""
    key = tuple(extra_modules)
    if key in _discovered:
        return
    autodiscover_modules("tasks")
    for name in extra_modules:
        import_module(name)
    _discovered.add(key)
    logger.debug("Discovered %d tasks: %s", len(_tasks), ", ".join(registered_paths()))


class UnknownTask(LookupError):
    """A job names a task that is not declared in this process."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path!r} is not a declared task in this worker, so it was not run. Workers run "
            "only functions declared with @task or @job in modules they import at start: "
            "each installed app's tasks.py, and the modules listed in "
            'TASKS[...]["OPTIONS"]["TASK_MODULES"]. If the task was renamed or removed, '
            "this job cannot run; otherwise add its module to TASK_MODULES."
        )
        self.path = path
