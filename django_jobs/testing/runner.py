"""Run jobs inside a test: ``run_jobs()`` and ``immediate()``.

Each job runs with the worker's executor (the same task lookup, ``TaskContext``,
signals, soft time limit, ``Retry``/``Snooze`` handling and retry policy) and its
outcome is recorded with the worker's fenced statements, one job at a time, on the
test's own database connection, so inside the test's transaction.
"""

import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from django.db import connections
from django.utils import timezone

from ..backend import JobsBackend, get_backend
from ..compat import DEFAULT_TASK_BACKEND_ALIAS, TaskResult, task_enqueued
from ..models import Job
from ..protocol import jobs as protocol
from ..states import JobState
from ..worker.executor import execute
from ..worker.outcomes import OutcomeKind, record, send_finished

#: run_jobs() without max_jobs stops with an error past this many runs: a task that
#: enqueues itself, or snoozes forever, would otherwise never let the test end.
SAFETY_LIMIT = 10_000


def worker_id() -> str:
    """The id jobs run by the test helpers carry in ``worker_ids``."""
    return f"test:{socket.gethostname()}:{os.getpid()}"


class TooManyJobs(AssertionError):
    """run_jobs() or immediate() ran SAFETY_LIMIT jobs and more were due."""


def run_jobs(
    *,
    backend: str = DEFAULT_TASK_BACKEND_ALIAS,
    queues: Sequence[str] | None = None,
    max_jobs: int | None = None,
    until: datetime | timedelta | None = None,
) -> list[TaskResult]:
    """Run due jobs, and the jobs they enqueue, until none is left; return their results.

    ``until`` also runs jobs due up to then (a datetime, or a timedelta from now): retries
    and snoozes waiting for their delay, jobs with ``run_after``. ``max_jobs`` stops after
    that many runs (an attempt is a run). The results are one per job, in the order each
    first ran, as the jobs stand at the end.
    """
    results, _ = _run(get_backend(backend), queues=queues, max_jobs=max_jobs, until=until)
    return results


def _run(
    jobs_backend: JobsBackend,
    *,
    queues: Sequence[str] | None = None,
    ids: Sequence[int] | None = None,
    max_jobs: int | None = None,
    until: datetime | timedelta | None = None,
) -> tuple[list[TaskResult], int]:
    """Run jobs as run_jobs() says; return their results and the number of runs."""
    if max_jobs is not None and (not isinstance(max_jobs, int) or max_jobs < 0):
        raise ValueError(f"max_jobs must be a whole number >= 0 or None, got {max_jobs!r}")
    due_by = _due_by(until)
    limit = SAFETY_LIMIT if max_jobs is None else max_jobs
    ran: dict[int, None] = {}
    runs = 0
    while runs < limit:
        with connections[jobs_backend.database].cursor() as cursor:
            claimed = protocol.claim_in_test(
                cursor,
                worker_id=worker_id(),
                backend=jobs_backend.alias,
                queues=queues,
                ids=ids,
                due_by=due_by,
            )
        if not claimed:
            break
        _run_one(jobs_backend, claimed[0])
        ran[claimed[0].id] = None
        runs += 1
    else:
        if max_jobs is None and _anything_due(jobs_backend, queues, ids, due_by):
            raise TooManyJobs(
                f"{SAFETY_LIMIT} jobs ran and more are due: does a task enqueue itself, or "
                "snooze every time? Pass max_jobs= to stop at a number of your choosing."
            )
    return [jobs_backend.get_result(str(job_id)) for job_id in ran], runs


def _run_one(jobs_backend: JobsBackend, job: protocol.ClaimedJob) -> None:
    """Run a claimed job, record its outcome as the worker would, and signal it."""
    outcome = execute(job, jobs_backend, worker_id(), manage_connections=False)
    if outcome.kind != OutcomeKind.RECORDED:  # an atomic task recorded its own success
        with connections[jobs_backend.database].cursor() as cursor:
            record(cursor, [outcome])
    if outcome.kind in (OutcomeKind.RELEASED, OutcomeKind.LOST):
        return  # the worker signals neither: the attempt did not end here
    state, finished_at = (
        Job.objects.using(jobs_backend.database).values_list("state", "finished_at").get(pk=job.id)
    )
    send_finished(jobs_backend, outcome, state, finished_at)


def _due_by(until: datetime | timedelta | None) -> datetime | None:
    if until is None or isinstance(until, datetime):
        return until
    if isinstance(until, timedelta):
        return timezone.now() + until
    raise TypeError(f"until must be a datetime, a timedelta or None, got {until!r}")


def _anything_due(
    jobs_backend: JobsBackend,
    queues: Sequence[str] | None,
    ids: Sequence[int] | None,
    due_by: datetime | None,
) -> bool:
    jobs = Job.objects.using(jobs_backend.database).filter(
        backend=jobs_backend.alias,
        state=JobState.READY,
        available_at__lte=max(due_by or timezone.now(), timezone.now()),
    )
    if queues is not None:
        jobs = jobs.filter(queue_name__in=queues)
    if ids is not None:
        jobs = jobs.filter(pk__in=ids)
    return jobs.exists()


@contextmanager
def immediate(
    *,
    backend: str | None = None,
    until: datetime | timedelta | None = None,
    max_jobs: int | None = None,
) -> Iterator[None]:
    """Run each job as soon as it is enqueued, inside the block (also a decorator).

    The job runs before ``enqueue()`` returns, in the caller's transaction, and the
    returned ``TaskResult`` shows how it ended. Jobs that a job enqueues run right after
    it, still before that first ``enqueue()`` returns. A job not due yet (``run_after``,
    or a retry's delay) waits, unless ``until`` reaches it. ``backend`` limits this to
    one jobs backend alias (default: all of them). More than ``max_jobs`` runs (default:
    SAFETY_LIMIT, then TooManyJobs is raised) leave the rest enqueued.
    """
    state: dict[str, Any] = {
        "pending": [],
        "running": False,
        "left": SAFETY_LIMIT if max_jobs is None else max_jobs,
    }

    def on_enqueued(sender: Any, task_result: TaskResult, **kwargs: Any) -> None:
        if not (isinstance(sender, type) and issubclass(sender, JobsBackend)):
            return
        if backend is not None and task_result.backend != backend:
            return
        state["pending"].append(task_result)
        if state["running"]:
            return  # enqueued by a running job: it runs after that one, in the loop below
        state["running"] = True
        try:
            while state["pending"]:
                result = state["pending"].pop(0)
                if state["left"] <= 0:
                    state["pending"].clear()
                    if max_jobs is None:
                        raise TooManyJobs(
                            f"immediate() ran {SAFETY_LIMIT} jobs: does a task enqueue "
                            "itself? Pass max_jobs= to stop at a number of your choosing."
                        )
                    return
                ran, runs = _run(
                    get_backend(result.backend),
                    ids=[int(result.id)],
                    until=until,
                    max_jobs=state["left"],
                )
                state["left"] -= runs
                if ran:
                    result.refresh()
        finally:
            state["running"] = False

    uid = f"django_jobs.testing.immediate:{id(state)}"
    task_enqueued.connect(on_enqueued, dispatch_uid=uid, weak=False)
    try:
        yield
    finally:
        task_enqueued.disconnect(dispatch_uid=uid)
