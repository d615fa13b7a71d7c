"""The building blocks of a workflow, named as in Celery's canvas.

``add.s(2, 2)`` is a :class:`Signature`: a task and some arguments. ``chain``,
``group`` and ``chord`` combine signatures (and each other) into a workflow, and
``.enqueue()`` writes all of it at once, in the caller's transaction (``plan.py``):

    chain(add.s(2, 2), add.s(4), mul.s(10))      # mul(add(add(2, 2), 4), 10)
    group(add.s(i, i) for i in range(100))       # 100 jobs at once; [0, 2, 4, ...]
    chord(group(fetch.s(u) for u in urls), merge.s())   # merge([fetch(u) for u in urls])
    fetch.map(urls)                              # group(fetch.s(u) for u in urls)

A step after a step receives its return value as its first argument; a step after a
group receives the list of the group's return values, in the group's order. ``.si()``
makes a signature that receives nothing. Nothing here touches the database.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

from .. import registry
from ..compat import InvalidTask, Task, task_backends
from ..exceptions import InvalidWorkflow

if TYPE_CHECKING:
    from .results import WorkflowResult


class Canvas:
    """What chains, groups, chords and signatures share: ``|``, and enqueueing."""

    on_error: "Signature | None" = None

    def __or__(self, other: "Canvas") -> "Chain":
        """``a | b``: a chain of ``a`` then ``b`` (as in Celery)."""
        if not isinstance(other, Canvas):
            return NotImplemented
        left = self.members if isinstance(self, Chain) and self.on_error is None else (self,)
        right = other.members if isinstance(other, Chain) and other.on_error is None else (other,)
        return Chain(tuple(left) + tuple(right))

    def enqueue(self) -> "WorkflowResult":
        """Write the whole workflow in the caller's transaction; return its result handle."""
        # Late: task.py imports this module (for .s()), and enqueueing needs the backend,
        # which imports task.py.
        from .plan import enqueue

        return enqueue(self)

    async def aenqueue(self) -> "WorkflowResult":
        """Like :meth:`enqueue`, from async code."""
        return await sync_to_async(self.enqueue, thread_sensitive=True)()


@dataclass(frozen=True, eq=False)
class Signature(Canvas):
    """A task with (some of) its arguments, to run as one step of a workflow."""

    task: Task
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: True (``.si()``): the step does not receive its parents' return values.
    immutable: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.task, Task):
            raise InvalidTask(
                f"A signature needs a task (a function declared with @task or @job), got "
                f"{self.task!r}."
            )

    def using(
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: Any = None,
        max_attempts: int | None = None,
    ) -> "Signature":
        """A copy whose step has other options (as ``Task.using()``)."""
        options: dict[str, Any] = {
            "priority": priority,
            "queue_name": queue_name,
            "run_after": run_after,
        }
        if max_attempts is not None:
            options["max_attempts"] = max_attempts
        return replace(self, task=self.task.using(**options))

    def enqueue(self) -> "WorkflowResult":
        """Enqueue this one step as a workflow of one step."""
        return Canvas.enqueue(self)

    def __repr__(self) -> str:
        arguments = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        call = "si" if self.immutable else "s"
        return f"{self.task.name}.{call}({', '.join(arguments)})"


def _members(what: str, items: tuple[Any, ...]) -> tuple[Canvas, ...]:
    """Members given as arguments, or as one iterable (``group(x.s(i) for i in ...)``)."""
    if len(items) == 1 and not isinstance(items[0], Canvas) and isinstance(items[0], Iterable):
        items = tuple(items[0])
    for position, item in enumerate(items):
        if not isinstance(item, Canvas):
            raise InvalidWorkflow(
                f"{what}() member {position} is {item!r}, not a signature, chain, group or "
                "chord; write task.s(...) to make a step of a task."
            )
    return items


def _on_error(on_error: Any) -> "Signature | None":
    if on_error is not None and not isinstance(on_error, Signature):
        raise InvalidWorkflow(
            f"on_error must be a signature (report.s() or report.si()), got {on_error!r}."
        )
    return on_error


@dataclass(frozen=True, eq=False, init=False)
class _Members(Canvas):
    members: tuple[Canvas, ...]
    on_error: Signature | None = None
    #: What the constructor is called, for error messages.
    word = ""

    def __init__(self, members: Iterable[Canvas], on_error: Signature | None = None) -> None:
        object.__setattr__(self, "members", _members(self.word, tuple(members)))
        object.__setattr__(self, "on_error", _on_error(on_error))


class Chain(_Members):
    """Steps one after another; each receives the return value of the one before."""

    word = "chain"


class Group(_Members):
    """Steps side by side; what follows receives the list of their return values."""

    word = "group"


@dataclass(frozen=True, eq=False, init=False)
class Chord(Canvas):
    """A group (the header), then a body that receives the list of its return values."""

    header: Group
    body: Canvas
    on_error: Signature | None = None

    def __init__(self, header: Any, body: Canvas, on_error: Signature | None = None) -> None:
        if not isinstance(header, Group):
            header = Group(_members("chord header", (header,)))
        if not isinstance(body, Canvas):
            raise InvalidWorkflow(f"A chord's body must be a signature, got {body!r}.")
        object.__setattr__(self, "header", header)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "on_error", _on_error(on_error))


def chain(*members: Any, on_error: Signature | None = None) -> Chain:
    """Run ``members`` one after another, passing each return value to the next."""
    return Chain(_members("chain", members), on_error=on_error)


def group(*members: Any, on_error: Signature | None = None) -> Group:
    """Run ``members`` side by side; the result is the list of their return values."""
    return Group(_members("group", members), on_error=on_error)


def chord(header: Any, body: Canvas, on_error: Signature | None = None) -> Chord:
    """Run the ``header`` group, then ``body`` with the list of its return values."""
    return Chord(header, body, on_error=on_error)


def signature(
    task: Task | str,
    args: Iterable[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    immutable: bool = False,
) -> Signature:
    """A signature of ``task``, given as a task or as the dotted path of a declared one."""
    if isinstance(task, str):
        task = declared_task(task)
    return Signature(task, tuple(args), dict(kwargs or {}), immutable)


def declared_task(path: str) -> Task:
    """The task declared under ``path`` (importing the apps' task modules if needed)."""
    found = registry.get(path)
    if found is None:
        for backend in task_backends.all():
            options = getattr(backend, "jobs_options", None)  # a jobs backend's
            registry.discover(options.TASK_MODULES if options else ())
        found = registry.get(path)
    if found is None:
        raise InvalidTask(
            f"{path!r} is not a declared task: declare it with @task or @job in an installed "
            "app's tasks.py (or a module in OPTIONS['TASK_MODULES']), or pass the task itself."
        )
    return found
