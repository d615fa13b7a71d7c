"""The child-process pool: recycling by job count and by memory, and autoscaling."""

import pytest

from django_jobs.models import Job
from testproject.example import tasks
from testproject.example.models import Execution

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
