"""Recording what happened to a batch of jobs, and telling ``task_finished`` receivers.

The worker buffers outcomes for a few milliseconds and hands them here: one fenced
statement per kind of outcome (success, failure, snooze, release), then one
``task_finished`` signal per job whose outcome the database accepted.
"""

import json
from typing import Any

import psycopg
from django.tasks import TaskResultStatus
from django.tasks.base import TaskError
from django.tasks.signals import task_finished
from django.utils import timezone

from . import protocol, registry
from .backend import JobsBackend, encode_json
from .executor import FAILED, RELEASED, SNOOZED, SUCCEEDED, Outcome
from .sql import JOB_COLUMNS


def record(cur: psycopg.Cursor, outcomes: list[Outcome]) -> tuple[dict, dict, set, set]:
    """Record a batch: return (succeeded, failed, snoozed, released) as the database took them.

    Every statement is fenced by the attempt, so a job rescued (and maybe re-claimed)
    since its outcome was produced is in none of the four: its outcome was discarded.
    """
    by_kind: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_kind.setdefault(outcome.kind, []).append(outcome)
    done = protocol.complete(
        cur,
        [
            protocol.Success(o.job.id, o.job.attempts, o.return_json)
            for o in by_kind.get(SUCCEEDED, ())
        ],
    )
    failed = protocol.fail(
        cur,
        [
            protocol.Failure(o.job.id, o.job.attempts, encode_json(o.error, "error"), o.delay)
            for o in by_kind.get(FAILED, ())
        ],
    )
    snoozed = protocol.snooze(
        cur,
        [
            protocol.Snoozed(o.job.id, o.job.attempts, o.delay or 0.0)
            for o in by_kind.get(SNOOZED, ())
        ],
    )
    released = protocol.release(cur, [o.job for o in by_kind.get(RELEASED, ())])
    return done, failed, snoozed, released


def send_finished(backend: JobsBackend, outcome: Outcome, status: str, finished_at: Any) -> None:
    """Send ``task_finished`` for a recorded outcome, with the TaskResult as stored."""
    result = outcome.task_result
    if result is None:
        # The job ran in a child process: rebuild its result here for the signal.
        if registry.get(outcome.job.task_path) is None:
            return
        row = {name: getattr(outcome.job, name) for name in JOB_COLUMNS}
        result = backend.result_from_row(row)
    object.__setattr__(result, "status", status)
    if finished_at is None and status == TaskResultStatus.SUCCESSFUL:
        finished_at = timezone.now()  # an atomic task recorded it in its own transaction
    object.__setattr__(result, "finished_at", finished_at)
    if outcome.succeeded and outcome.return_json is not None:
        object.__setattr__(result, "_return_value", json.loads(outcome.return_json))
    elif outcome.error is not None:
        result.errors.append(
            TaskError(
                exception_class_path=outcome.error["exception_class_path"],
                traceback=outcome.error["traceback"],
            )
        )
    task_finished.send(type(backend), task_result=result)
