"""Look at the jobs a test enqueued: ``enqueued_jobs()`` and the two assertions.

They read the job table of the jobs backends' database, whatever state the jobs are
in: in a test, the table holds what that test enqueued (and ran). Arguments compare as
they are stored, so tuples equal lists, and ``unittest.mock.ANY`` matches anything.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from ..backend import RESULT_FIELDS, get_backend, jobs_database
from ..compat import Task, TaskResult
from ..models import Job

#: Jobs listed in a failure message, at most.
SHOWN = 10


def enqueued_jobs(
    task: Task | str | None = None,
    *,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    queue_name: str | None = None,
    backend: str | None = None,
) -> list[TaskResult]:
    """The jobs in the table, oldest first, of ``task`` (a Task or its dotted path) if given.

    ``args`` and ``kwargs``, if given (not None), must equal the job's; ``queue_name``
    and ``backend`` (a TASKS alias) narrow the list further.
    """
    rows = Job.objects.using(jobs_database()).order_by("id")
    if task is not None:
        rows = rows.filter(task_path=_path(task))
    if queue_name is not None:
        rows = rows.filter(queue_name=queue_name)
    if backend is not None:
        rows = rows.filter(backend=backend)
    results = [get_backend(row["backend"]).result_from_row(row) for row in _values(rows)]
    return [r for r in results if _matches(r, args, kwargs)]


def assert_enqueued(
    task: Task | str,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    count: int | None = None,
    queue_name: str | None = None,
    backend: str | None = None,
) -> list[TaskResult]:
    """Assert that jobs of ``task`` (with these arguments) were enqueued; return them.

    ``count`` asks for exactly that many; by default at least one.
    """
    found = enqueued_jobs(task, args=args, kwargs=kwargs, queue_name=queue_name, backend=backend)
    if (count is None and found) or len(found) == count:
        return found
    wanted = "at least 1 job" if count is None else f"{count} job{'s' if count != 1 else ''}"
    raise AssertionError(
        f"Expected {wanted} of {_path(task)}{_describe(args, kwargs, queue_name)}, "
        f"found {len(found)}.\n{_inventory(task)}"
    )


def assert_not_enqueued(
    task: Task | str | None = None,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    queue_name: str | None = None,
    backend: str | None = None,
) -> None:
    """Assert that no job of ``task`` (with these arguments) is in the table; no job at all
    when ``task`` is None."""
    found = enqueued_jobs(task, args=args, kwargs=kwargs, queue_name=queue_name, backend=backend)
    if found:
        what = "no job" if task is None else f"no job of {_path(task)}"
        raise AssertionError(
            f"Expected {what}{_describe(args, kwargs, queue_name)}, found {len(found)}:\n"
            + "\n".join(_line(r) for r in found[:SHOWN])
        )


def _path(task: Task | str) -> str:
    return task if isinstance(task, str) else task.module_path


def _values(rows: Any) -> list[dict[str, Any]]:
    return list(rows.values(*RESULT_FIELDS))


def _stored(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples as lists), leaving other objects be."""
    if isinstance(value, list | tuple):
        return [_stored(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _stored(v) for k, v in value.items()}
    return value


def _matches(result: TaskResult, args: Any, kwargs: Any) -> bool:
    if args is not None and _stored(args) != result.args:
        return False
    return kwargs is None or _stored(kwargs) == result.kwargs


def _describe(args: Any, kwargs: Any, queue_name: str | None) -> str:
    parts = []
    if args is not None:
        parts.append(f"args={_stored(args)!r}")
    if kwargs is not None:
        parts.append(f"kwargs={_stored(kwargs)!r}")
    if queue_name is not None:
        parts.append(f"queue_name={queue_name!r}")
    return f" with {', '.join(parts)}" if parts else ""


def _line(result: TaskResult) -> str:
    return (
        f"  job {result.id} {result.task.module_path} args={result.args!r} "
        f"kwargs={result.kwargs!r} queue={result.task.queue_name!r} {result.status}"
    )


def _inventory(task: Task | str) -> str:
    """What the table does hold: the task's jobs, then how many of each other task."""
    same = enqueued_jobs(task)
    lines = [f"Jobs of that task ({len(same)}):"] if same else ["No job of that task."]
    lines += [_line(r) for r in same[:SHOWN]]
    if len(same) > SHOWN:
        lines.append(f"  ... and {len(same) - SHOWN} more")
    others: dict[str, int] = {}
    for path in (
        Job.objects.using(jobs_database())
        .exclude(task_path=_path(task))
        .values_list("task_path", flat=True)
    ):
        others[path] = others.get(path, 0) + 1
    if others:
        lines.append(
            "Other tasks' jobs: "
            + ", ".join(f"{path} ({n})" for path, n in sorted(others.items()))
        )
    return "\n".join(lines)
