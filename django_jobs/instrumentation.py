"""Two places where an integration may wrap our own code: around an enqueue, and around
one run of a job. Signals cannot do this: a tracing span must be current *while* the
job's function runs, so that what the function does is traced under it.

Both lists are empty unless an integration is turned on (``DJANGO_JOBS["TRACING"]``,
``DJANGO_JOBS["SENTRY"]``): then the backend and the executor pay one truth test per
job, and nothing else. A wrapper is a function that takes the :class:`Enqueue` or
:class:`JobRun` and returns a context manager; wrappers nest in the order added.
"""

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

EnqueueWrapper = Callable[["Enqueue"], AbstractContextManager[Any]]
RunWrapper = Callable[["JobRun"], AbstractContextManager[Any]]

enqueue_wrappers: list[EnqueueWrapper] = []
run_wrappers: list[RunWrapper] = []


@dataclass(slots=True)
class Enqueue:
    """One enqueue call (one job, or a bulk batch) as the wrappers see it."""

    task_path: str
    queue_name: str
    backend: str
    count: int
    #: Set by a wrapper on entry: text headers stored with each job of the call (the
    #: W3C ``traceparent`` and friends) and handed to the run wrappers in the worker.
    trace_context: dict[str, str] | None = None
    #: Set by the backend once the rows are written.
    job_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class JobRun:
    """One attempt of one job in the process that runs it, as the wrappers see it."""

    #: The claimed row (``protocol.jobs.ClaimedJob``): id, task path, queue, attempts,
    #: available_at, last_attempted_at, trace_context...
    job: Any
    #: The TaskResult sent with ``task_started``; None for a task this worker does not know.
    task_result: Any = None
    #: Set before the wrappers exit: "succeeded", "failed", "retrying" or "snoozed".
    outcome: str | None = None
    #: What the function raised, if it raised.
    exception: BaseException | None = None
    #: The error record stored for a failed attempt (``codec.error_record``).
    error: dict[str, Any] | None = None
    #: Seconds the function ran.
    duration: float = 0.0


def add_enqueue_wrapper(wrapper: EnqueueWrapper) -> None:
    if wrapper not in enqueue_wrappers:
        enqueue_wrappers.append(wrapper)


def add_run_wrapper(wrapper: RunWrapper) -> None:
    if wrapper not in run_wrappers:
        run_wrappers.append(wrapper)


@contextmanager
def _nested(
    wrappers: list[Callable[[Any], AbstractContextManager[Any]]], subject: Any
) -> Iterator:
    # A broken integration must not change what happens to a job: a wrapper that fails
    # to enter is skipped, one that fails on exit is logged; both say which one it was.
    entered = []
    for wrapper in list(wrappers):
        try:
            manager = wrapper(subject)
            manager.__enter__()
        except Exception:
            logger.exception("Instrumentation %r failed on entry; skipped", wrapper)
            continue
        entered.append(manager)
    try:
        yield subject
    except BaseException as exc:
        _exit(entered, exc)
        raise
    _exit(entered, None)


def _exit(entered: list[AbstractContextManager[Any]], exc: BaseException | None) -> None:
    # The wrappers see the exception, but never swallow it (their answer is ignored).
    info = (type(exc), exc, exc.__traceback__) if exc is not None else (None, None, None)
    for manager in reversed(entered):
        try:
            manager.__exit__(*info)
        except Exception as raised:
            if raised is not exc:  # a generator-based wrapper re-raises what it was given
                logger.exception("Instrumentation %r failed on exit", manager)


def enqueueing(call: Enqueue) -> AbstractContextManager[Enqueue]:
    """Enter every enqueue wrapper around the insert of ``call``."""
    return _nested(enqueue_wrappers, call)


def running(run: JobRun) -> AbstractContextManager[JobRun]:
    """Enter every run wrapper around one attempt."""
    return _nested(run_wrappers, run)
