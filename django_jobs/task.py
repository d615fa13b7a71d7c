"""``JobsTask``: Django's Task with this backend's extra options, and the ``@job`` decorator.

``@job`` is ``@django.tasks.task`` plus the extra options. Code that uses Django's own
``@task`` with a jobs backend gets a ``JobsTask`` too (it is the backend's
``task_class``), so the two styles give the same object.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .compat import (
    DEFAULT_TASK_BACKEND_ALIAS,
    DEFAULT_TASK_PRIORITY,
    DEFAULT_TASK_QUEUE_NAME,
    InvalidTask,
    Task,
    TaskResult,
)
from .workflows.canvas import Group, Signature


@dataclass(frozen=True, slots=True, kw_only=True)
class JobsTask(Task):
    #: Attempts before the job is FAILED for good; None takes OPTIONS["MAX_ATTEMPTS"].
    max_attempts: int | None = None
    #: Retry only these exception classes (others fail at once); None retries any.
    retry_on: tuple[type[BaseException], ...] | None = None
    #: Backoff for this task; None takes OPTIONS["RETRY_BASE_DELAY"] and friends.
    retry_base_delay: float | None = None
    retry_factor: float | None = None
    retry_max_delay: float | None = None
    #: Hard limit in seconds: the process running the job is killed. None: OPTIONS["TIMEOUT"].
    timeout: float | None = None
    #: Soft limit: SoftTimeLimitExceeded is raised in the task. None: OPTIONS["SOFT_TIMEOUT"].
    soft_timeout: float | None = None
    #: Run inside a transaction on the jobs database that also records the success:
    #: the task's writes and its SUCCESSFUL state commit together, or neither does.
    atomic: bool = False
    #: Seconds a running job has to stop by itself once someone cancels it, before the
    #: process running it is killed.
    cancel_grace: float = 10.0

    def __post_init__(self) -> None:
        # Django's @task passes our options through as given: accept one class, or a list.
        if isinstance(self.retry_on, type):
            object.__setattr__(self, "retry_on", (self.retry_on,))
        elif isinstance(self.retry_on, list):
            object.__setattr__(self, "retry_on", tuple(self.retry_on))
        _check_options(self)
        # Not super(): slots dataclasses are rebuilt classes, so the zero-argument form
        # cannot find its cell on Python < 3.14.
        Task.__post_init__(self)

    def using(
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: Any = None,
        backend: str | None = None,
        max_attempts: int | None = None,
    ) -> "JobsTask":
        """Return a copy with some defaults changed, including ``max_attempts``.

        The other options of ours (time limits, retry policy, atomic) belong to the
        task's code and are read from its declaration when the job runs.
        """
        task = Task.using(
            self, priority=priority, queue_name=queue_name, run_after=run_after, backend=backend
        )
        if max_attempts is not None:
            task = replace(task, max_attempts=max_attempts)
        return task

    # ── workflows (names and semantics from Celery's canvas) ──────────────────

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A workflow step of this task; it receives the previous step's value first."""
        return Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable step: it receives nothing from the steps before it."""
        return Signature(self, args, kwargs, immutable=True)

    def map(self, items: Iterable[Any]) -> Group:
        """A group with one step per item, each called with that item (one argument)."""
        return Group([Signature(self, (item,), {}) for item in items])

    def starmap(self, items: Iterable[Sequence[Any]]) -> Group:
        """A group with one step per item, each called with the item's values as arguments."""
        return Group([Signature(self, tuple(item), {}) for item in items])

    def enqueue_many(
        self, calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]]
    ) -> list[TaskResult]:
        """Enqueue one job per ``(args, kwargs)`` pair in a single statement.

        Needs a jobs backend. Like ``enqueue()``, the rows join the caller's transaction.
        """
        backend = self.get_backend()
        if not hasattr(backend, "enqueue_many"):
            raise InvalidTask(
                f"Backend {self.backend!r} has no bulk enqueue; use a JobsBackend or call "
                "enqueue() in a loop."
            )
        return backend.enqueue_many([(self, args, kwargs) for args, kwargs in calls])


def _check_options(task: JobsTask) -> None:
    where = f"for task {task.module_path!r}"

    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def seconds(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and value > 0

    if task.max_attempts is not None and not (whole(task.max_attempts) and task.max_attempts >= 1):
        raise InvalidTask(
            f"max_attempts must be a whole number >= 1 or None, got {task.max_attempts!r} {where}."
        )
    for name in ("retry_base_delay", "retry_max_delay", "timeout", "soft_timeout"):
        value = getattr(task, name)
        if value is not None and not seconds(value):
            raise InvalidTask(
                f"{name} must be None or a number of seconds > 0, got {value!r} {where}."
            )
    if task.retry_factor is not None and not (
        seconds(task.retry_factor) and task.retry_factor >= 1
    ):
        raise InvalidTask(
            f"retry_factor must be a number >= 1, got {task.retry_factor!r} {where}."
        )
    if task.timeout and task.soft_timeout and task.soft_timeout >= task.timeout:
        raise InvalidTask(
            f"soft_timeout ({task.soft_timeout}) must be shorter than timeout ({task.timeout}) "
            f"{where}, or the task is killed before it can clean up."
        )
    if task.retry_on is not None:
        classes = task.retry_on if isinstance(task.retry_on, tuple) else None
        if not classes or not all(
            isinstance(c, type) and issubclass(c, BaseException) for c in classes
        ):
            raise InvalidTask(
                f"retry_on must be a tuple of exception classes, got {task.retry_on!r} {where}."
            )
    if not isinstance(task.atomic, bool):
        raise InvalidTask(f"atomic must be True or False, got {task.atomic!r} {where}.")
    if not seconds(task.cancel_grace):
        raise InvalidTask(
            f"cancel_grace must be a number of seconds > 0, got {task.cancel_grace!r} {where}."
        )


def job(
    function: Callable[..., Any] | None = None,
    *,
    priority: int = DEFAULT_TASK_PRIORITY,
    queue_name: str = DEFAULT_TASK_QUEUE_NAME,
    backend: str = DEFAULT_TASK_BACKEND_ALIAS,
    takes_context: bool = False,
    max_attempts: int | None = None,
    retry_on: tuple[type[BaseException], ...] | type[BaseException] | None = None,
    retry_base_delay: float | None = None,
    retry_factor: float | None = None,
    retry_max_delay: float | None = None,
    timeout: float | None = None,
    soft_timeout: float | None = None,
    atomic: bool = False,
    cancel_grace: float = 10.0,
) -> Any:
    """Declare a task, like ``django.tasks.task``, with this backend's extra options."""
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    elif isinstance(retry_on, list):
        retry_on = tuple(retry_on)

    def wrapper(func: Callable[..., Any]) -> JobsTask:
        return JobsTask(
            func=func,
            priority=priority,
            queue_name=queue_name,
            backend=backend,
            takes_context=takes_context,
            max_attempts=max_attempts,
            retry_on=retry_on,
            retry_base_delay=retry_base_delay,
            retry_factor=retry_factor,
            retry_max_delay=retry_max_delay,
            timeout=timeout,
            soft_timeout=soft_timeout,
            atomic=atomic,
            cancel_grace=cancel_grace,
        )

    if function is not None:
        return wrapper(function)
    return wrapper
