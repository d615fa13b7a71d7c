"""When workflow steps fail, are cancelled or retried, and when several finish at once.

The statements are driven directly (protocol functions on real connections) where the
interleaving of transactions matters, and through an in-process worker otherwise.
"""

import json
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from django_jobs import cancel, chain, chord, get_workflow, group, job_info
from django_jobs.conf import DEFAULT_RETENTION
from django_jobs.control import Cancellation
from django_jobs.models import Job, Workflow
from django_jobs.protocol import jobs as protocol
from django_jobs.protocol import operator, workflows
from django_jobs.services.pruner import Pruner
from testproject.example import tasks
from testproject.example.models import Execution

from ..conftest import run_worker, wait_for, waits_for_commit

pytestmark = pytest.mark.django_db(transaction=True)


def claim_all(conn, worker_id: str = "w") -> dict[int, protocol.ClaimedJob]:
    with conn.cursor() as cur:
        claimed = protocol.claim(
            cur, worker_id=worker_id, backend="default", queues=None, limit=100_000
        )
    return {job.id: job for job in claimed}


def row(result_or_id) -> Job:
    pk = int(getattr(result_or_id, "id", result_or_id))
    return Job.objects.get(pk=pk)


def drain(result, rounds: int = 50) -> None:
    """Run an in-process worker until nothing is left to run (retries wait a little)."""
    for _ in range(rounds):
        run_worker()
        result.refresh()
        if result.is_finished and not Job.objects.filter(state__in=["READY", "RUNNING"]).exists():
            return
        time.sleep(0.02)
    raise AssertionError(f"workflow {result.id} still {result.status} after {rounds} rounds")


def failure(job: protocol.ClaimedJob, message: str = "boom") -> protocol.Failure:
    error = {"exception_class_path": "builtins.ValueError", "message": message, "traceback": ""}
    return protocol.Failure(job.id, job.attempts, json.dumps(error), None)


def test_a_failed_member_cancels_the_callback_and_runs_on_error_once():
    result = chord(
        group(tasks.fails_on.s(i, 3) for i in range(6)),
        tasks.total.s(),
        on_error=tasks.report_failure.s("pager"),
    ).enqueue()
    drain(result)
    failed = result.results[3]
    callback = row(result.results[-1])
    assert result.status == "FAILED"
    assert result.failed_step_id == failed.id
    assert (failed.status, failed.attempts) == ("FAILED", 2)  # retried first, as allowed
    assert callback.state == "CANCELLED"
    assert callback.cancelled_by == f"step {failed.id} (testproject.example.tasks.fails_on) failed"
    # The other members ran: a failure does not stop its siblings.
    assert [r.status for r in result.results[:6]].count("SUCCESSFUL") == 5
    handler = row(result.on_error_id)
    assert handler.state == "SUCCESSFUL"
    assert (handler.args[0], handler.args[2]) == (failed.id, "pager")
    assert handler.args[1]["exception_class_path"] == "builtins.ValueError"
    assert handler.workflow_id is None  # a plain job, not a step
    assert Execution.objects.filter(key__startswith="on_error:").count() == 1
    assert result.is_finished
    with pytest.raises(ValueError, match="failed"):
        _ = result.return_value


def test_steps_failing_together_or_concurrently_run_on_error_once(conn):
    result = chord(
        group(tasks.add.s(i, i) for i in range(4)),
        tasks.total.s(),
        on_error=tasks.report_failure.si("x", {"exception_class_path": "x"}),
    ).enqueue()
    members = claim_all(conn)
    first, second, third, fourth = (members[int(r.id)] for r in result.results[:4])
    # Two failures in one statement.
    with conn.cursor() as cur:
        protocol.fail(cur, [failure(first), failure(second)])

    # Two more in two transactions at once: the second waits for the first's locks.
    def fail_fourth() -> None:
        with conn.cursor() as cur:
            protocol.fail(cur, [failure(fourth)])

    waits_for_commit(lambda cur: protocol.fail(cur, [failure(third)]), fail_fourth)
    handlers = Job.objects.filter(task_path="testproject.example.tasks.report_failure")
    assert handlers.count() == 1
    assert get_workflow(result.id).failed_step_id == str(first.id)
    assert row(result.results[-1]).state == "CANCELLED"


def test_the_last_of_concurrent_finishers_unblocks_the_callback_once(conn):
    result = chord(group(tasks.add.s(i, i) for i in range(2)), tasks.total.s()).enqueue()
    members = claim_all(conn)
    a, b = (members[int(r.id)] for r in result.results[:2])
    callback_id = int(result.results[-1].id)

    def complete_b() -> None:
        with conn.cursor() as cur:
            protocol.complete(cur, [protocol.Success(b.id, b.attempts, "2")])

    # b's completion waits for a's transaction (which holds the callback's row), then
    # reads the callback as a left it.
    waits_for_commit(
        lambda cur: protocol.complete(cur, [protocol.Success(a.id, a.attempts, "0")]),
        complete_b,
    )
    callback = row(callback_id)
    assert (callback.state, callback.pending_parents) == ("READY", 0)


def test_a_retry_racing_a_parents_completion_counts_it_once(conn):
    # Step a succeeds late, while the workflow is retried after b failed: c must end up
    # READY once both are done, whichever transaction wins.
    result = chord(group(tasks.add.s(1, 1), tasks.add.s(2, 2)), tasks.total.s()).enqueue()
    members = claim_all(conn)
    a, b = (members[int(r.id)] for r in result.results[:2])
    with conn.cursor() as cur:
        protocol.fail(cur, [failure(b)])
    assert row(result.results[-1]).state == "CANCELLED"

    def complete_a() -> None:
        with conn.cursor() as cur:
            protocol.complete(cur, [protocol.Success(a.id, a.attempts, "2")])

    # The retry locks every step first: a's completion waits, then finds c BLOCKED again.
    waits_for_commit(lambda cur: workflows.retry_steps(cur, [int(result.id)], grant=1), complete_a)
    callback = row(result.results[-1])
    assert (callback.state, callback.pending_parents) == ("BLOCKED", 1)  # waits for b only
    assert row(b.id).state == "READY"
    (again,) = claim_all(conn).values()
    with conn.cursor() as cur:
        protocol.complete(cur, [protocol.Success(again.id, again.attempts, "4")])
    assert row(result.results[-1]).state == "READY"


def test_retry_failed_runs_the_failed_part_again():
    result = chain(
        tasks.add.s(1, 1),
        group(tasks.fails_until_retried.si("retried"), tasks.add.si(3, 3)),
        tasks.collect.s(),
        on_error=tasks.report_failure.s(),
    ).enqueue()
    drain(result)
    assert result.status == "FAILED"
    assert row(result.results[-1]).state == "CANCELLED"
    moved = result.retry_failed()
    assert sorted(moved) == sorted(int(r.id) for r in (result.results[1], result.results[-1]))
    result.refresh()
    assert result.status == "RUNNING"
    assert row(result.results[-1]).state == "BLOCKED"
    drain(result)
    assert (result.status, result.return_value) == ("SUCCESSFUL", ["retried", 6])
    assert Execution.objects.filter(key__startswith="on_error:").count() == 1


def test_cancelling_a_step_cancels_the_steps_waiting_after_it_only():
    result = group(
        chain(tasks.add.s(1, 1), tasks.add.s(1)), chain(tasks.add.s(2, 2), tasks.add.s(2))
    ).enqueue()
    first, after_first, _, after_second = result.results
    answer = cancel(first.id, by="alice")
    assert (answer.outcome, str(answer)) == ("cancelled", f"Job {first.id} cancelled.")
    assert (row(first).state, row(first).cancelled_by) == ("CANCELLED", "alice")
    assert (
        row(after_first).cancelled_by
        == f"step {first.id} (testproject.example.tasks.add) was cancelled"
    )
    assert row(after_second).state == "BLOCKED"  # the other branch is not touched
    run_worker()
    result.refresh()
    assert result.status == "CANCELLED"
    assert row(after_second).state == "SUCCESSFUL"


def test_cancel_answers_for_running_finished_and_missing_jobs():
    running, done = tasks.add.enqueue(1, 1), tasks.add.enqueue(2, 2)
    Job.objects.filter(pk=int(running.id)).update(state="RUNNING", attempts=1, worker_id="w")
    Job.objects.filter(pk=int(done.id)).update(state="SUCCESSFUL")
    asked = cancel(running.id)
    assert (asked.outcome, asked.state) == (Cancellation.STOPPING, "RUNNING")
    info = job_info(running.id)
    assert (info.state, info.cancelled_by) == ("RUNNING", "django_jobs.cancel()")
    assert info.cancel_requested_at is not None
    assert cancel(done.id).outcome == Cancellation.FINISHED
    assert (
        str(cancel(done.id))
        == f"Job {done.id} had already finished (SUCCESSFUL); nothing changed."
    )
    for missing in ("987654321", "nope"):
        assert cancel(missing).outcome == Cancellation.NOT_FOUND
    assert row(done).state == "SUCCESSFUL"


def test_a_cancel_request_makes_any_end_of_the_attempt_cancelled(conn):
    failing, snoozing, releasing = (tasks.add.enqueue(1, 1) for _ in range(3))
    claimed = claim_all(conn)
    for result in (failing, snoozing, releasing):
        cancel(result.id, by="ops")
    with conn.cursor() as cur:
        retried = protocol.Failure(int(failing.id), 1, json.dumps({"message": "x"}), 5.0)
        assert protocol.fail(cur, [retried])[int(failing.id)][0] == "CANCELLED"
        snoozed = protocol.Snoozed(int(snoozing.id), 1, 60.0, 2)
        assert protocol.snooze(cur, [snoozed]) == {int(snoozing.id): "CANCELLED"}
        protocol.release(cur, [claimed[int(releasing.id)]])
    assert {row(r).state for r in (failing, snoozing, releasing)} == {"CANCELLED"}


def test_cancelling_a_workflow_stops_every_unfinished_step():
    result = chain(tasks.add.s(1, 1), tasks.add.s(1), tasks.add.s(1)).enqueue()
    first = result.results[0]
    Job.objects.filter(pk=int(first.id)).update(state="RUNNING", attempts=1, worker_id="w")
    moved = result.cancel(by="bob")
    assert moved[int(first.id)] == "RUNNING"  # asked to stop
    assert sorted(v for k, v in moved.items() if k != int(first.id)) == ["CANCELLED"] * 2
    result.refresh()
    assert (result.status, result.cancelled_by) == ("CANCELLED", "bob")
    assert job_info(first.id).cancel_requested_at is not None


def test_steps_that_others_still_need_are_neither_deleted_nor_pruned(conn):
    result = chain(tasks.add.s(1, 1), tasks.add.s(1)).enqueue()
    first, second = result.results
    (claimed,) = claim_all(conn).values()
    with conn.cursor() as cur:
        protocol.complete(cur, [protocol.Success(claimed.id, claimed.attempts, "2")])
        Job.objects.filter(pk=int(first.id)).update(finished_at="2000-01-01T00:00:00Z")
        # The second step is READY and will read the first one's result.
        assert operator.delete_jobs(cur, [int(first.id), int(second.id)]) == []
        assert operator.prune(cur, older_than=3600) == 0
    run_worker()
    with connection.cursor() as cur:
        assert operator.prune(cur, older_than=3600) == 1  # not needed any more
    wait_for(lambda: row(second).state == "SUCCESSFUL", 5, "the second step")


def test_the_demo_workflows_run_as_the_docs_say():
    from testproject.example import workflows

    ids = workflows.enqueue_all()
    assert cancel(ids["long job"], by="the test").outcome == Cancellation.CANCELLED
    report, arithmetic, failing = (
        get_workflow(ids[name])
        for name in ("report workflow", "arithmetic workflow", "failing workflow")
    )
    drain(failing)
    for result in (report, arithmetic, failing):
        result.refresh()
    assert report.return_value == {"pages": 20, "words": sum(100 + n % 17 for n in range(1, 21))}
    assert arithmetic.return_value == 80
    assert failing.status == "FAILED"
    assert Execution.objects.filter(key__startswith="on_error:").count() == 1


def test_maintenance_deletes_old_workflows_whose_steps_are_all_gone():
    old = timezone.now() - timedelta(days=40)
    emptied, alive = (chain(tasks.add.s(1, 1), tasks.add.s(1)).enqueue() for _ in range(2))
    Job.objects.filter(workflow_id=int(emptied.id)).delete()
    Workflow.objects.update(created_at=old)
    with connection.cursor() as cur:
        Pruner(retention=dict(DEFAULT_RETENTION)).run_once(cur)
    assert list(Workflow.objects.values_list("pk", flat=True)) == [int(alive.id)]


def test_a_step_that_finishes_before_its_cancel_arrives_leaves_the_workflow_going(conn):
    result = chain(tasks.add.s(1, 1), tasks.add.s(1)).enqueue()
    (first,) = claim_all(conn).values()
    assert cancel(str(first.id), by="late").outcome == Cancellation.STOPPING
    assert get_workflow(result.id).cancelled_by == ""  # only asked, nothing ended yet
    with conn.cursor() as cur:  # it returned before the worker could tell it
        protocol.complete(cur, [protocol.Success(first.id, first.attempts, "2", True)])
    run_worker()
    result.refresh()
    assert (result.status, result.return_value) == ("SUCCESSFUL", 3)
