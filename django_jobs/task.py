"""``JobsTask``: Django's Task with this backend's extra options, and the ``@job`` decorator.

``@job`` is ``@django.tasks.task`` plus the extra options. Code that uses Django's own
``@task`` with a jobs backend gets a ``JobsTask`` too (it is the backend's
``task_class``), so the two styles give the same object.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from django.tasks import DEFAULT_TASK_BACKEND_ALIAS, DEFAULT_TASK_QUEUE_NAME, Task, TaskResult
from django.tasks.base import DEFAULT_TASK_PRIORITY
from django.tasks.exceptions import InvalidTask


@dataclass(frozen=True, slots=True, kw_only=True)
class JobsTask(Task):
    #: Attempts before the job is FAILED for good; None takes OPTIONS["MAX_ATTEMPTS"].
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None and (
            not isinstance(self.max_attempts, int)
            or isinstance(self.max_attempts, bool)
            or self.max_attempts < 1
        ):
            raise InvalidTask(
                f"max_attempts must be a whole number >= 1 or None, got {self.max_attempts!r} "
                f"for task {self.module_path!r}."
            )
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
        """Return a copy with some defaults changed, including this backend's options."""
        task = Task.using(
            self, priority=priority, queue_name=queue_name, run_after=run_after, backend=backend
        )
        if max_attempts is not None:
            task = replace(task, max_attempts=max_attempts)
        return task

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


def job(
    function: Callable[..., Any] | None = None,
    *,
    priority: int = DEFAULT_TASK_PRIORITY,
    queue_name: str = DEFAULT_TASK_QUEUE_NAME,
    backend: str = DEFAULT_TASK_BACKEND_ALIAS,
    takes_context: bool = False,
    max_attempts: int | None = None,
) -> Any:
    """Declare a task, like ``django.tasks.task``, with this backend's extra options."""

    def wrapper(func: Callable[..., Any]) -> JobsTask:
        return JobsTask(
            func=func,
            priority=priority,
            queue_name=queue_name,
            backend=backend,
            takes_context=takes_context,
            max_attempts=max_attempts,
        )

    if function is not None:
        return wrapper(function)
    return wrapper
