"""Workflows, cancellation and progress with real ``manage.py runjobs`` processes."""

import signal
import socket
import time

import pytest

from django_jobs import cancel, chain, chord, group, job_info
from django_jobs.models import Job
from testproject.example import tasks
from testproject.example.models import Execution

from ..conftest import wait_for
from .timings import FAST_RESCUE

pytestmark = pytest.mark.django_db(transaction=True)


def finished(*results) -> bool:
    for result in results:
        result.refresh()
    return (
        all(r.is_finished for r in results)
        and not Job.objects.filter(state__in=["READY", "RUNNING", "BLOCKED"]).exists()
    )


def doomed_prefix(worker) -> str:
    """The start of the worker ids a ``runjobs`` process claims under (host:pid:)."""
    return f"{socket.gethostname()}:{worker.pid}:"


def test_a_chain_a_chord_of_1000_and_a_failing_member(start_worker):
    chained = chain(tasks.add.s(2, 2), tasks.add.s(4), tasks.mul.s(10)).enqueue()
    big = chord(group(tasks.mul.s(i, 3) for i in range(1000)), tasks.collect.s()).enqueue()
    failing = chord(
        group(tasks.fails_on.s(i, 5) for i in range(10)),
        tasks.total.s(),
        on_error=tasks.report_failure.s("pager"),
    ).enqueue()
    worker = start_worker("--concurrency", "2")
    wait_for(lambda: finished(chained, big, failing), 90, "the three workflows")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.output()

    assert (chained.status, chained.return_value) == ("SUCCESSFUL", 80)
    assert big.status == "SUCCESSFUL"
    assert big.return_value == [3 * i for i in range(1000)]
    callback = Job.objects.get(pk=int(failing.results[-1].id))
    bad = failing.results[5]
    assert failing.status == "FAILED"
    assert callback.state == "CANCELLED"
    assert callback.cancelled_by == f"step {bad.id} (testproject.example.tasks.fails_on) failed"
    handlers = Job.objects.filter(task_path="testproject.example.tasks.report_failure")
    assert [(h.state, h.args[0], h.args[2]) for h in handlers] == [("SUCCESSFUL", bad.id, "pager")]
    assert Execution.objects.filter(key__startswith="on_error:").count() == 1


def test_a_worker_killed_during_the_members_still_runs_the_callback_once(start_worker):
    members = 300
    result = chord(
        group(tasks.slow_square.s(i, 20) for i in range(members)),
        tasks.record_callback.s("the callback"),
    ).enqueue()
    # Two workers share the members; one is killed among them, the other rescues its jobs.
    doomed = start_worker("--concurrency", "2", env=FAST_RESCUE)
    survivor = start_worker("--concurrency", "2", env=FAST_RESCUE)
    steps = Job.objects.filter(workflow_id=int(result.id))
    wait_for(
        lambda: (
            steps.filter(state="SUCCESSFUL", worker_id__startswith=doomed_prefix(doomed)).count()
            >= 20
        ),
        60,
        "the doomed worker to finish some members",
    )
    doomed.signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    assert steps.get(pk=int(result.results[-1].id)).state == "BLOCKED"
    wait_for(lambda: finished(result), 90, "the rescued members and the callback")
    survivor.signal(signal.SIGTERM)
    assert survivor.wait(timeout=30) == 0, survivor.output()
    assert result.return_value == members
    assert Execution.objects.filter(key="the callback").count() == 1
    assert steps.get(pk=int(result.results[-1].id)).attempts == 1
    rescued = [r for r in result.results[:-1] if r.attempts > 1]
    assert rescued, "no member was rescued: the kill came too late to test anything"


def test_cancel_a_cooperative_and_an_uncooperative_job_and_watch_progress(start_worker):
    cooperative = tasks.crunch.enqueue(2000, 0.01)  # 20 s unless it stops early
    stubborn = tasks.stubborn.enqueue(60)  # cancel_grace=1: killed a second after
    worker = start_worker("--concurrency", "2")

    # Progress, read from this process while the job runs in a child of the worker.
    first = wait_for(
        lambda: (info := job_info(cooperative.id)).progress and info.progress.done > 0 and info,
        30,
        "the first progress report",
    )
    assert first.state == "RUNNING"
    assert first.progress.total == 2000
    assert first.progress.message.startswith("step ")
    later = wait_for(
        lambda: (p := job_info(cooperative.id).progress).done > first.progress.done and p,
        10,
        "progress to move on",
    )
    # At most one write per second per job (a job that reports every 10 ms).
    assert (later.updated_at - first.progress.updated_at).total_seconds() >= 0.9

    asked = time.monotonic()
    assert cancel(cooperative.id, by="ops").outcome == "stopping"
    wait_for(
        lambda: job_info(cooperative.id).state == "CANCELLED", 10, "the cooperative job to stop"
    )
    took = time.monotonic() - asked
    assert took < 4, f"{took:.1f} s: it should stop well within its 5 s grace"
    row = Job.objects.get(pk=int(cooperative.id))
    assert (row.cancelled_by, row.attempts, row.return_value) == ("ops", 1, None)
    assert row.errors[-1]["exception_class_path"] == "django_jobs.exceptions.JobCancelled"
    assert row.errors[-1]["message"] == "it stopped after a cancel request"
    assert row.progress["done"] > 0  # its last report is kept

    wait_for(lambda: job_info(stubborn.id).state == "RUNNING", 30, "the stubborn job to start")
    asked = time.monotonic()
    cancel(stubborn.id, by="ops")
    wait_for(lambda: job_info(stubborn.id).state == "CANCELLED", 15, "the stubborn job's kill")
    took = time.monotonic() - asked
    assert 0.9 < took < 8, f"killed after {took:.1f} s; its grace is 1 s"
    row = Job.objects.get(pk=int(stubborn.id))
    assert "did not stop within its 1 s grace" in row.errors[-1]["message"]
    assert row.attempts == 1  # not retried

    # The worker goes on serving after killing a child.
    after = tasks.add.enqueue(20, 22)
    wait_for(lambda: job_info(after.id).state == "SUCCESSFUL", 30, "a job after the kill")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.output()
    assert "cancelled" in worker.output()
