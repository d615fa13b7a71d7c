"""``JobsTask``: Django's Task with this backend's extra options, and the ``@job`` decorator.

``@job`` is ``@django.tasks.task`` plus the extra options. Code that uses Django's own
``@task`` with a jobs backend gets a ``JobsTask`` too (it is the backend's
``task_class``), so the two styles give the same object.
"""

import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import lru_cache
from typing import Any, NoReturn
from urllib.parse import urlsplit

from . import limits
from .compat import (
    DEFAULT_TASK_BACKEND_ALIAS,
    DEFAULT_TASK_PRIORITY,
    DEFAULT_TASK_QUEUE_NAME,
    InvalidTask,
    Task,
    TaskResult,
)
from .conf import duration_problem
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
    #: POST the outcome here once a job has finished (a webhook, signed; see the docs).
    callback_url: str | None = None
    #: Seconds a running job has to stop by itself once someone cancels it, before the
    #: process running it is killed.
    cancel_grace: float = 10.0
    #: Enqueue nothing while a job with the same key waits or runs (see limits.py): the
    #: key is ``unique_key`` (a str, or a function of the arguments), else the arguments.
    unique: bool = False
    #: A finished job still counts as a duplicate for this long (a timedelta or seconds).
    unique_for: timedelta | float | None = None
    #: The states that count; READY, BLOCKED and RUNNING always do. None: those and
    #: SUCCESSFUL (within ``unique_for``).
    unique_states: tuple[str, ...] | None = None
    unique_key: str | Callable[..., str] | None = None
    #: At most this many starts per period across all workers: "100/m", "5/s", "1000/h".
    rate_limit: str | None = None
    #: At most ``concurrency_limit`` jobs with the same key RUNNING at once, cluster-wide.
    #: A str, or a function of the job's arguments returning one. Without it,
    #: ``concurrency_limit`` applies to the task as a whole.
    concurrency_key: str | Callable[..., str] | None = None
    concurrency_limit: int | None = None

    def __post_init__(self) -> None:
        # Django's @task passes our options through as given: accept one class, or a list.
        if isinstance(self.retry_on, type):
            object.__setattr__(self, "retry_on", (self.retry_on,))
        elif isinstance(self.retry_on, list):
            object.__setattr__(self, "retry_on", tuple(self.retry_on))
        if isinstance(self.unique_states, list | set | frozenset):
            object.__setattr__(self, "unique_states", tuple(self.unique_states))
        _check_options(self)
        _check_flow_options(self)
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
        callback_url: str | None = None,
        unique_key: str | None = None,
    ) -> "JobsTask":
        """Return a copy with some defaults changed, including ``max_attempts`` and
        ``callback_url``.

        ``unique_key`` makes the jobs of the copy unique under that key (with the task's
        ``unique_for`` and ``unique_states``). The other options of ours (time limits,
        retry policy, atomic, limits) belong to the task's code and are read from its
        declaration.
        """
        if isinstance(run_after, timedelta):
            # Django's own check fails on it with an AttributeError that names nothing.
            raise InvalidTask(
                f"run_after must be an aware datetime, got the timedelta {run_after!r} for "
                f"task {self.module_path!r}; for a delay, pass timezone.now() + the delay."
            )
        task = Task.using(
            self, priority=priority, queue_name=queue_name, run_after=run_after, backend=backend
        )
        changes: dict[str, Any] = {}
        if max_attempts is not None:
            changes["max_attempts"] = max_attempts
        if unique_key is not None:
            limits.check_key(unique_key, f"unique_key for task {self.module_path!r}")
            changes["unique_key"] = unique_key
            changes["unique"] = True
        if callback_url is not None:
            changes["callback_url"] = callback_url
        return replace(task, **changes) if changes else task

    @property
    def is_unique(self) -> bool:
        return self.unique or self.unique_for is not None or self.unique_key is not None

    @property
    def unique_seconds(self) -> float | None:
        """``unique_for`` in seconds, or None: finished jobs do not count."""
        value = self.unique_for
        return value.total_seconds() if isinstance(value, timedelta) else value

    @property
    def counted_states(self) -> tuple[str, ...]:
        """The states in which a job of this task holds its unique key."""
        states = self.unique_states or limits.DEFAULT_UNIQUE_STATES
        return tuple(str(s) for s in states)

    @property
    def is_limited(self) -> bool:
        """Whether a task-wide limit applies (a rate, or a limit without a key)."""
        return self.rate_limit is not None or (
            self.concurrency_limit is not None and self.concurrency_key is None
        )

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
    ) -> Sequence[TaskResult]:
        """Enqueue one job per ``(args, kwargs)`` pair; see :func:`enqueue_many`."""
        return enqueue_many(self, calls)


def enqueue_many(
    task: Task, calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]]
) -> Sequence[TaskResult]:
    """Enqueue one job of ``task`` per ``(args, kwargs)`` pair; return their results in order.

    On a jobs backend, all rows are written by a single statement in the caller's
    transaction. On any other backend (Django's ``ImmediateBackend`` or ``DummyBackend``
    in tests, say) each pair is one ``enqueue()``, so the same code runs there too. Unlike
    ``JobsTask.enqueue_many``, this also takes a plain Django ``Task``.
    """
    backend = task.get_backend()
    pairs = [(args, kwargs) for args, kwargs in calls]
    bulk = getattr(backend, "enqueue_many", None)
    if bulk is not None:
        return bulk([(task, args, kwargs) for args, kwargs in pairs])
    return [backend.enqueue(task, args, kwargs) for args, kwargs in pairs]


@dataclass(frozen=True, slots=True, kw_only=True)
class MissingTask(JobsTask):
    """Stands in for a task this process cannot find, so that its jobs' results can be read.

    ``get_result()`` of a job whose task was renamed, removed, or declared in a module
    this process cannot import returns the job's real status, errors and return value
    with one of these as its ``task``. Its ``module_path`` is the stored path; calling or
    enqueueing it raises ``InvalidTask``.
    """

    def __post_init__(self) -> None:
        # Not validated by a backend: that would declare it as a task (registry.py), and
        # a worker must never find it.
        pass

    @classmethod
    def for_path(cls, path: str, *, backend: str) -> "MissingTask":
        """The placeholder for ``path`` (the same function object for the same path)."""
        return cls(
            func=_missing_function(path),
            backend=backend,
            priority=DEFAULT_TASK_PRIORITY,
            queue_name=DEFAULT_TASK_QUEUE_NAME,
            run_after=None,
        )

    def _refuse(self) -> NoReturn:
        raise InvalidTask(
            f"Task {self.module_path!r} cannot be found in this process (renamed, removed, "
            "or in a module that is not imported here); this placeholder only carries the "
            "results of its existing jobs, and cannot be called or enqueued. Import the task "
            "from its module instead."
        )

    def enqueue(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse()

    async def aenqueue(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse()

    def enqueue_many(self, calls: Any) -> NoReturn:
        self._refuse()

    def call(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse()

    async def acall(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse()


def _refuse_call(*args: Any, **kwargs: Any) -> NoReturn:
    raise InvalidTask("This task cannot be found in this process; it cannot be called.")


@lru_cache(maxsize=1024)
def _missing_function(path: str) -> Callable[..., Any]:
    # A function whose module and qualname are the stored path, so that the placeholder's
    # module_path (and its TaskResult's) reads as the job's task.
    module, _, qualname = path.rpartition(".")
    func = types.FunctionType(_refuse_call.__code__, _refuse_call.__globals__, qualname)
    func.__module__ = module
    func.__qualname__ = qualname
    return func


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
        if value is not None and (problem := duration_problem(name, value)):
            raise InvalidTask(
                f"{problem.removesuffix('.')} {where}. Give a shorter one, or None for the "
                "backend's default."
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
    if task.callback_url is not None:
        problem = callback_url_problem(task.callback_url)
        if problem:
            raise InvalidTask(f"callback_url {problem} {where}.")
    if not seconds(task.cancel_grace):
        raise InvalidTask(
            f"cancel_grace must be a number of seconds > 0, got {task.cancel_grace!r} {where}."
        )
    if problem := duration_problem("cancel_grace", task.cancel_grace):
        raise InvalidTask(f"{problem.removesuffix('.')} {where}. Give a shorter grace.")


#: Longest callback URL stored (the column's size).
MAX_CALLBACK_URL = 2000


def callback_url_problem(url: Any) -> str | None:
    """Why ``url`` cannot be a webhook's callback URL, or None."""
    if not isinstance(url, str):
        return f"must be a URL string, got {type(url).__name__}"
    if len(url) > MAX_CALLBACK_URL:
        return f"is {len(url)} characters long; at most {MAX_CALLBACK_URL} are stored"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an absolute http:// or https:// URL, got {url!r}"
    return None


def _check_flow_options(task: JobsTask) -> None:
    where = f"for task {task.module_path!r}"
    if not isinstance(task.unique, bool):
        raise InvalidTask(f"unique must be True or False, got {task.unique!r} {where}.")
    span = task.unique_for
    if span is not None and not (
        (isinstance(span, timedelta) and span > timedelta(0))
        or (isinstance(span, int | float) and not isinstance(span, bool) and span > 0)
    ):
        raise InvalidTask(
            f"unique_for must be a timedelta or a number of seconds > 0, got "
            f"{task.unique_for!r} {where}."
        )
    if span is not None and (problem := duration_problem("unique_for", span)):
        raise InvalidTask(
            f"{problem.removesuffix('.')} {where}: enqueue looks that far back for a "
            "finished duplicate. Give a shorter span."
        )
    if task.unique_states is not None:
        problem = limits.unique_states_problem(task.unique_states)
        if problem:
            raise InvalidTask(f"unique_states {problem} {where}.")
    for name in ("unique_key", "concurrency_key"):
        value = getattr(task, name)
        if value is None or callable(value):
            continue
        try:
            limits.check_key(value, name)
        except (TypeError, ValueError) as exc:
            raise InvalidTask(f"{exc} ({where}; a str, or a function returning one)") from None
    if task.rate_limit is not None:
        try:
            limits.parse_rate(task.rate_limit)
        except ValueError as exc:
            raise InvalidTask(f"rate_limit {where}: {exc}.") from None
    limit = task.concurrency_limit
    if limit is not None and not (limits.whole(limit) and 1 <= limit <= limits.MAX_CONCURRENCY):
        raise InvalidTask(
            f"concurrency_limit must be a whole number from 1 to {limits.MAX_CONCURRENCY:,}, "
            f"got {limit!r} {where}."
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
    callback_url: str | None = None,
    cancel_grace: float = 10.0,
    unique: bool = False,
    unique_for: timedelta | float | None = None,
    unique_states: Iterable[str] | None = None,
    unique_key: str | Callable[..., str] | None = None,
    rate_limit: str | None = None,
    concurrency_key: str | Callable[..., str] | None = None,
    concurrency_limit: int | None = None,
) -> Any:
    """Declare a task, like ``django.tasks.task``, with this backend's extra options."""
    if unique_states is not None and not isinstance(unique_states, str):
        unique_states = tuple(unique_states)
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
            # Django 6.0's Task has no default for it (5.2's backport and 6.1 do).
            run_after=None,
            takes_context=takes_context,
            max_attempts=max_attempts,
            retry_on=retry_on,
            retry_base_delay=retry_base_delay,
            retry_factor=retry_factor,
            retry_max_delay=retry_max_delay,
            timeout=timeout,
            soft_timeout=soft_timeout,
            atomic=atomic,
            callback_url=callback_url,
            cancel_grace=cancel_grace,
            unique=unique,
            unique_for=unique_for,
            unique_states=unique_states,
            unique_key=unique_key,
            rate_limit=rate_limit,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
        )

    if function is not None:
        return wrapper(function)
    return wrapper
