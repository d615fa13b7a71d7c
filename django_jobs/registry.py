"""Which functions may run: the tasks declared in this process, and how to find the others.

A job row names its task by dotted path. A worker never imports or calls a path just
because a row names it: anyone who can write to the table could then make it import
any module (a script with side effects at import, say). It runs only functions that
went through ``@task``/``@job``, found in one of two ways:

- **Declared in this process.** Tasks land here when they are declared
  (``JobsBackend.validate_task`` runs for every Task bound to a jobs backend), and
  :func:`discover` imports every installed app's ``tasks`` module, plus the modules in
  ``OPTIONS["TASK_MODULES"]``, up front.
- **Declared where the job was enqueued.** Enqueue stores a *proof* with the row: an
  HMAC of the task's path under ``SECRET_KEY``, which only code holding the key can
  compute, and which our enqueue computes only for a Task object that passed
  validation. A worker that does not know the path imports the module the path names
  only when the proof verifies, and then runs the function only if importing declared a
  task at exactly that path. So a task may live in any module (a third-party app's
  ``jobs.py``, ``billing/services.py``) and no write to the table can make a worker
  import a module that was not declaring a task where the job was enqueued.

The proof is computed once per path and process (cached), and adds no statement and no
round trip to enqueue: it is one more column of the same INSERT. Rows written by
anything but our enqueue (no proof, or a wrong one), rows of renamed or removed tasks,
and rows signed with a key that is no longer in ``SECRET_KEY``/``SECRET_KEY_FALLBACKS``
are not run: they end FAILED with an :class:`UnknownTask` error that says which case it
is.
"""

import logging
import threading
from functools import lru_cache
from importlib import import_module

from django.conf import settings
from django.utils.crypto import constant_time_compare, salted_hmac
from django.utils.module_loading import autodiscover_modules

from .compat import Task

logger = logging.getLogger(__name__)

_tasks: dict[str, Task] = {}
_lock = threading.Lock()
_discovered: set[tuple[str, ...]] = set()
#: Paths a proof led to but no task was found at, with why: asked once per process.
_not_found: dict[str, str] = {}

_PROOF_SALT = "django_jobs.registry.declared-task"
#: Hex digits kept of the HMAC-SHA256: 128 bits, plenty for a MAC that is never brute
#: forced offline, and half the bytes per row.
PROOF_LENGTH = 32


def register(task: Task) -> None:
    """Remember ``task`` as the function to run for its path."""
    path = task.module_path
    existing = _tasks.get(path)
    # `.using()` makes copies that share the function; keep the declared one. A new
    # function object under the same path means the module was reloaded: take it.
    if existing is None or existing.func is not task.func:
        with _lock:
            _tasks[path] = task
            _not_found.pop(path, None)


def get(path: str) -> Task | None:
    """Return the task declared in this process for ``path``, or None. Never imports."""
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


def proof(path: str) -> str:
    """The proof that ``path`` was declared as a task where a job is enqueued."""
    return _proof(path, settings.SECRET_KEY)


@lru_cache(maxsize=4096)
def _proof(path: str, secret: str) -> str:
    return salted_hmac(_PROOF_SALT, path, secret, algorithm="sha256").hexdigest()[:PROOF_LENGTH]


def verify(path: str, stored: str) -> bool:
    """Whether ``stored`` is the proof for ``path`` under the current or a fallback key."""
    if not stored:
        return False
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return any(constant_time_compare(stored, _proof(path, key)) for key in keys)


def find(path: str, stored_proof: str = "") -> Task | None:
    """The task for ``path``: declared here, or imported on the strength of its proof."""
    try:
        return resolve(path, stored_proof)
    except UnknownTask:
        return None


def resolve(path: str, stored_proof: str = "") -> Task:
    """Return the task for ``path``, or raise UnknownTask saying why there is none.

    A path not declared in this process is looked for by importing its module, and
    only if ``stored_proof`` verifies (see the module's docstring).
    """
    task = _tasks.get(path)
    if task is not None:
        return task
    if not verify(path, stored_proof):
        reason = (
            "the job carries no proof that django_jobs enqueued it for a declared task "
            "(a row written some other way, or before proofs were stored)"
            if not stored_proof
            else "the job's proof does not match its task path: the row was not written by "
            "django_jobs's enqueue, or was signed with a SECRET_KEY this process lacks (share "
            "SECRET_KEY between web and worker processes, and keep a rotated key in "
            "SECRET_KEY_FALLBACKS until its jobs are done)"
        )
        raise UnknownTask(path, reason)
    reason = _not_found.get(path)
    if reason is None:
        task = _import_declared(path)
        if task is not None:
            return task
        reason = _not_found[path]
    raise UnknownTask(path, reason)


def _import_declared(path: str) -> Task | None:
    """Import the module ``path`` names (trusted: its proof verified); the task, if any."""
    # The module is the path without the function's name. Only if no such module exists,
    # shorter prefixes are tried: a qualname may hold a dot (a function in a class body).
    parts = path.split(".")
    problem = ""
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        try:
            import_module(module)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if module == missing or module.startswith(missing + "."):
                # This prefix is no module: try a shorter one, but report the first.
                problem = problem or f"module {module!r} cannot be imported: {exc}"
                continue
            problem = f"importing {module!r} failed: {type(exc).__name__}: {exc}"
            break
        except Exception as exc:  # the module's own code raised while importing
            problem = f"importing {module!r} failed: {type(exc).__name__}: {exc}"
            break
        task = _tasks.get(path)
        if task is not None:
            logger.info("Imported %s for its declared task %s", module, path)
            return task
        if cut == len(parts) - 1:
            problem = (
                f"module {module!r} imports, but declares no task {parts[-1]!r} (renamed, "
                "removed, or no longer decorated with @task/@job)"
            )
        break
    problem = problem or f"no module in {path!r} can be imported"
    with _lock:
        _not_found[path] = problem
    return None


class UnknownTask(LookupError):
    """A job names a task this process cannot find: it is never imported or called."""

    def __init__(self, path: str, reason: str = "") -> None:
        because = f": {reason}" if reason else ""
        super().__init__(
            f"{path!r} is not a task this worker can run, so it was not run{because}. Workers "
            "run only functions declared with @task or @job: those in the modules they import "
            "at start (each installed app's tasks.py, and OPTIONS['TASK_MODULES']), and those "
            "in the module a job's proof names. A job of a renamed or removed task cannot "
            "run; enqueue it again under the new name."
        )
        self.path = path
        self.reason = reason
