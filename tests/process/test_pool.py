"""The child-process pool: recycling, autoscaling, the asyncio pool's limits and cancels."""

import signal
import time
from datetime import timedelta

import pytest

from django_jobs import cancel, job_info
from django_jobs.models import Job
from testproject.example import tasks
from testproject.example.models import Execution

from ..conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_children_are_replaced_after_max_jobs(start_worker):
    tasks.chaos_step.enqueue_many([((1, f"recycle-{n}"), {}) for n in range(20)])
    worker = start_worker("--burst", "--concurrency", "1", "--max-jobs-per-child", "5")
    assert worker.wait(timeout=90) == 0, worker.output()
    assert set(Job.objects.values_list("state", flat=True)) == {"SUCCESSFUL"}
    pids = set(Execution.objects.values_list("pid", flat=True))
    # 20 jobs, 5 per child: a child hands back what it had queued past its limit.
    assert len(pids) == 4, pids
    assert "Recycling child" in worker.output()


def test_a_leaking_child_is_replaced_after_passing_max_memory(start_worker):
    results = [tasks.hoard_memory.enqueue(120) for _ in range(3)]
    worker = start_worker("--burst", "--concurrency", "1", "--max-memory-per-child", "100M")
    assert worker.wait(timeout=90) == 0, worker.output()
    pids = []
    for result in results:
        result.refresh()
        assert result.status == "SUCCESSFUL"
        pids.append(result.return_value)
    # Each job pushes its child past 100 MiB, so each runs in a fresh one.
    assert len(set(pids)) == 3, pids


def test_autoscale_grows_the_pool_while_jobs_wait(start_worker):
    tasks.chaos_step.enqueue_many([((400, f"scale-{n}"), {}) for n in range(30)])
    worker = start_worker("--burst", "--autoscale", "1,3")
    assert worker.wait(timeout=120) == 0, worker.output()
    assert set(Job.objects.values_list("state", flat=True)) == {"SUCCESSFUL"}
    assert len(set(Execution.objects.values_list("pid", flat=True))) >= 2
    assert "Autoscale: growing" in worker.output()


def overlap(ids: list[int]) -> int:
    """The most of these jobs running at one instant, from their own rows' times."""
    events = []
    for started, finished in Job.objects.filter(pk__in=ids).values_list(
        "started_at", "finished_at"
    ):
        events += [(started, 1), (finished, -1)]
    running = most = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        most = max(most, running)
    return most


def test_the_asyncio_pool_runs_many_waiting_jobs_at_once_in_one_child(start_worker):
    results = tasks.async_sleep.enqueue_many([((0.3,), {})] * 300)
    worker = start_worker("--burst", "--pool", "asyncio", "--concurrency", "100")
    assert worker.wait(timeout=90) == 0, worker.output()
    rows = Job.objects.filter(pk__in=[int(r.id) for r in results])
    assert set(rows.values_list("state", "attempts")) == {("SUCCESSFUL", 1)}
    assert len(set(rows.values_list("worker_id", flat=True))) == 1  # one child did it all
    # One at a time this is 90 s; the pool had up to 100 of them waiting together.
    assert overlap([int(r.id) for r in results]) >= 50


def test_the_asyncio_pool_keeps_soft_and_hard_time_limits(start_worker):
    soft = tasks.async_overrun_soft_limit.enqueue(10)
    blocked = tasks.async_block_the_loop.enqueue(60)
    bystanders = tasks.async_sleep.enqueue_many([((2,), {})] * 5)
    worker = start_worker("--burst", "--pool", "asyncio", "--concurrency", "10")
    assert worker.wait(timeout=90) == 0, worker.output()
    soft.refresh()
    assert (soft.status, soft.return_value) == ("SUCCESSFUL", "cleaned up after the soft limit")
    blocked.refresh()
    assert blocked.status == "FAILED"
    assert blocked.errors[0].exception_class_path == "django_jobs.exceptions.TimeLimitExceeded"
    row = Job.objects.get(pk=int(blocked.id))
    assert row.finished_at - row.started_at < timedelta(seconds=15)
    # Jobs that shared the killed child did nothing wrong: they went back and ran again
    # without spending an attempt.
    for result in bystanders:
        result.refresh()
        assert (result.status, result.errors) == ("SUCCESSFUL", [])
        assert Job.objects.get(pk=int(result.id)).attempts == 1


def test_a_cancelled_coroutine_is_stopped_without_killing_its_child(start_worker):
    stubborn = tasks.async_ignore_cancel.enqueue(60)
    bystanders = tasks.async_sleep.enqueue_many([((4,), {})] * 3)
    worker = start_worker("--pool", "asyncio", "--concurrency", "10")
    wait_for(lambda: job_info(stubborn.id).state == "RUNNING", 30, "the job to start")
    wait_for(
        lambda: all(job_info(r.id).state == "RUNNING" for r in bystanders),
        30,
        "the bystanders to start",
    )
    asked = time.monotonic()
    assert cancel(stubborn.id, by="ops").outcome == "stopping"
    wait_for(lambda: job_info(stubborn.id).state == "CANCELLED", 15, "the coroutine's cancel")
    took = time.monotonic() - asked
    assert 1.0 < took < 5, f"stopped after {took:.1f} s; its grace is 1.5 s"
    row = Job.objects.get(pk=int(stubborn.id))
    assert row.errors[-1]["exception_class_path"] == "django_jobs.exceptions.JobCancelled"
    assert "its coroutine was cancelled" in row.errors[-1]["message"]
    # The child was not killed: the jobs sharing its loop finish in their first attempt.
    for result in bystanders:
        wait_for(lambda r=result: job_info(r.id).state == "SUCCESSFUL", 30, "a bystander")
        assert Job.objects.get(pk=int(result.id)).attempts == 1
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.output()
    assert "Killing child" not in worker.output()


def test_a_child_that_dies_gives_back_the_jobs_it_had_claimed(start_worker):
    before = tasks.noop.enqueue_many([((), {})] * 200)
    crash = tasks.crash_process.using(max_attempts=1).enqueue(5)
    after = tasks.noop.enqueue_many([((), {})] * 200)
    worker = start_worker("--burst", "--concurrency", "1")
    assert worker.wait(timeout=90) == 0, worker.output()
    crash.refresh()
    assert crash.status == "FAILED"
    assert crash.errors[0].exception_class_path == "django_jobs.exceptions.WorkerProcessDied"
    # The child claims short jobs in batches: those it held when it died went back
    # (no attempt spent, no error) and a new child ran them once.
    noops = Job.objects.filter(pk__in=[int(r.id) for r in [*before, *after]])
    assert {(r.state, r.attempts, len(r.errors)) for r in noops} == {("SUCCESSFUL", 1, 0)}
    # And some were indeed given back: the crash's own child had claimed past it.
    assert "it had not started: back in the queue" in worker.output()


def test_children_stay_alive_under_their_supervisors_heartbeat(start_worker):
    fast = {
        "JOBS_HEARTBEAT_INTERVAL": "0.5",
        "JOBS_WORKER_TIMEOUT": "2",
        "JOBS_MAINTENANCE_INTERVAL": "0.5",
    }
    result = tasks.sleep_for.enqueue(5)
    worker = start_worker("--burst", "--concurrency", "1", env=fast)
    assert worker.wait(timeout=60) == 0, worker.output()
    # 5 s running in a child, with a 2 s worker timeout: never rescued.
    row = Job.objects.get(pk=int(result.id))
    assert (row.state, row.attempts, row.errors) == ("SUCCESSFUL", 1, [])
    assert "/" in row.worker_id  # a child's own worker id, "<supervisor>/<pid>"
