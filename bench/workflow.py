"""W1: a chord of 10,000 no-op members and a callback: enqueue time, then completion time.

The enqueue is the public API inside ``transaction.atomic()`` (planning, checking every
step, and the statements), counted in statements. Completion is one
``runjobs --burst --concurrency 2``: the members drain like S1's jobs, each batch of
completions also counting down the callback's row, and the batch that finishes the last
member makes the callback READY and wakes the worker. Times come from the rows
(database clock): the members' drain, the wait between the last member and the
callback's start, and the whole from commit to the callback's end.
"""

import json
import time
from typing import Any

from bench import db
from bench.context import Context
from bench.drain import PROCESSES
from bench.report import print_table
from bench.workerproc import WorkerProcess

_CONTROL = {"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"}


def run_w1(ctx: Context) -> dict[str, Any]:
    """W1: enqueue a 10,000-member chord in one transaction, then drain it."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from django_jobs import chord, group
    from testproject.example import tasks

    members = ctx.sizes.w1_members
    db.reset_jobs()
    header = group(tasks.noop.si() for _ in range(members))
    with CaptureQueriesContext(connection) as queries:
        began = time.perf_counter()
        with transaction.atomic():
            result = chord(header, tasks.count_results.s()).enqueue()
        enqueue_s = time.perf_counter() - began
    # BEGIN and COMMIT are the transaction's; the rest are the workflow's statements.
    statements = [
        q["sql"] for q in queries.captured_queries if q["sql"].split()[0] not in _CONTROL
    ]
    ctx.check(
        "W1: the chord is written with at most 3 statements",
        len(statements) <= 3,
        f"{len(statements)} statements: " + "; ".join(s[:60] for s in statements),
    )
    db.analyze()
    log = ctx.log_dir / "W1_chord.log"
    with WorkerProcess(["--burst", *PROCESSES], log) as worker:
        code = worker.wait(ctx.sizes.drain_timeout_s)
        tail = worker.log_tail()
    ctx.check("W1: runjobs --burst exited 0", code == 0, f"exit {code}; log:\n{tail}")
    callback_id = int(result.results[-1].id)
    (
        done,
        once,
        first_start,
        last_member_end,
        callback_state,
        callback_start,
        callback_end,
        callback_value,
        callback_attempts,
        created,
    ) = db.fetchone(
        """
        SELECT count(*) FILTER (WHERE m.state = 'SUCCESSFUL'),
               count(*) FILTER (WHERE m.attempts = 1),
               min(m.started_at), max(m.finished_at),
               c.state, c.started_at, c.finished_at, c.return_value, c.attempts, w.created_at
        FROM django_jobs_job AS m, django_jobs_job AS c, django_jobs_workflow AS w
        WHERE m.workflow_id = %(workflow)s AND m.id <> %(callback)s
          AND c.id = %(callback)s AND w.id = %(workflow)s
        GROUP BY c.state, c.started_at, c.finished_at, c.return_value, c.attempts, w.created_at
        """,
        {"workflow": int(result.id), "callback": callback_id},
    )
    ctx.check(
        "W1: every member done exactly once",
        done == members and once == members,
        f"{done} successful, {once} in one attempt, of {members}",
    )
    if isinstance(callback_value, str):  # Django's cursor reads jsonb as text
        callback_value = json.loads(callback_value)
    ctx.check(
        "W1: the callback ran once and got every result",
        callback_state == "SUCCESSFUL" and callback_attempts == 1 and callback_value == members,
        f"{callback_state}, attempts {callback_attempts}, value {callback_value}",
    )
    drain_s = (last_member_end - first_start).total_seconds() if last_member_end else None
    figures = {
        "members": members,
        "enqueue_s": round(enqueue_s, 3),
        "enqueue_steps_per_s": round((members + 1) / enqueue_s),
        "enqueue_statements": len(statements),
        "members_drain_s": None if drain_s is None else round(drain_s, 3),
        "members_per_s_draining": round(members / drain_s) if drain_s else None,
        "callback_wait_ms": None
        if callback_start is None
        else round((callback_start - last_member_end).total_seconds() * 1000, 1),
        "commit_to_callback_end_s": None
        if callback_end is None
        else round((callback_end - created).total_seconds(), 3),
        "exit_code": code,
    }
    print_table(
        "W1 chord: enqueue and completion",
        [
            "members",
            "enqueue s",
            "steps/s",
            "statements",
            "members drain s",
            "members/s",
            "last member -> callback ms",
            "commit -> callback end s",
        ],
        [
            [
                members,
                figures["enqueue_s"],
                figures["enqueue_steps_per_s"],
                figures["enqueue_statements"],
                figures["members_drain_s"],
                figures["members_per_s_draining"],
                figures["callback_wait_ms"],
                figures["commit_to_callback_end_s"],
            ]
        ],
    )
    db.reset_jobs()
    return figures
