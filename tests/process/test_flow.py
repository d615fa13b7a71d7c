"""Limits across real workers: rates and keys hold however many claim at once."""

import itertools
import signal
import time
from collections import defaultdict
from datetime import timedelta

import pytest

from django_jobs.models import Job, Limiter
from testproject.example import flow_tasks, tasks
from testproject.example.models import Execution

from ..conftest import wait_for
from .timings import FAST_RESCUE

pytestmark = pytest.mark.django_db(transaction=True)

#: The rate test's window: long enough for three periods of the 10/s limit.
WINDOW = 3.0


def test_four_workers_start_at_most_ten_a_second_and_hold_up_nothing_else(start_worker):
    flow_tasks.rate_limited.enqueue_many([((n,), {}) for n in range(80)])
    workers = [
        start_worker("--concurrency", "1", "-v", "0", env={"JOBS_POLL_INTERVAL": "0.2"})
        for _ in range(4)
    ]
    first = wait_for(
        lambda: Job.objects.filter(started_at__isnull=False).order_by("started_at").first(),
        timeout=60,
        what="the first rate-limited job to start",
    ).started_at
    time.sleep(1.0)
    # Jobs with no limit, enqueued behind a limited backlog of the same queue.
    plain = [tasks.add.enqueue(n, n) for n in range(10)]
    time.sleep(max(0.0, WINDOW - 1.0))
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(timeout=30) == 0, worker.output()

    limited = Job.objects.filter(task_path=flow_tasks.rate_limited.module_path)
    starts = sorted(
        limited.filter(last_attempted_at__isnull=False).values_list("last_attempted_at", flat=True)
    )
    # Whichever second one looks at, it holds at most ten starts.
    for n, start in enumerate(starts):
        in_a_second = sum(1 for s in starts[n:] if s < start + timedelta(seconds=1))
        assert in_a_second <= 10, (start, in_a_second, starts)
    span = (starts[-1] - first).total_seconds()
    assert len(starts) >= 15, starts  # it did run at about its rate
    assert len(starts) <= 10 * span + 10
    assert set(limited.values_list("attempts", flat=True)) <= {0, 1}  # waiting costs none
    assert limited.filter(state="READY", attempts=0).count() == 80 - len(starts)
    # Four workers shared the limit.
    assert len(set(limited.exclude(worker_id="").values_list("worker_id", flat=True))) >= 2
    for result in plain:
        row = Job.objects.get(pk=int(result.id))
        assert row.state == "SUCCESSFUL"
        assert (row.started_at - row.enqueued_at).total_seconds() < 1.5, row


def test_a_key_with_a_limit_of_one_never_runs_two_at_once(start_worker, database_url):
    for n in range(200):
        flow_tasks.per_account.enqueue(n % 5, n, milliseconds=5)
    # Each job writes its span: a connection kept between jobs keeps that write short.
    env = {"DATABASE_URL": f"{database_url}?conn_max_age=60"}
    workers = [start_worker("--burst", "--concurrency", "1", "-v", "0", env=env) for _ in range(4)]
    for worker in workers:
        assert worker.wait(timeout=120) == 0, worker.output()
    assert set(Job.objects.values_list("state", "attempts")) == {("SUCCESSFUL", 1)}
    runs = defaultdict(list)
    for key, started, finished in Execution.objects.values_list("key", "started", "finished"):
        runs[key].append((started, finished))
    assert {key: len(spans) for key, spans in runs.items()} == {f"acct-{n}": 40 for n in range(5)}
    for key, spans in runs.items():
        spans.sort()
        for (_, end), (begin, _) in itertools.pairwise(spans):
            assert begin >= end, f"{key}: a run began at {begin} before {end}"
    assert set(
        Limiter.objects.filter(name__startswith="key:").values_list("running", "parked")
    ) == {(0, 0)}
    # More than one key ran at a time: the limit is per key, not a global lock.
    every = sorted(span for spans in runs.values() for span in spans)
    assert any(b < a_end for (_, a_end), (b, _) in itertools.pairwise(every))


def test_a_killed_worker_s_slot_is_freed_by_rescue(start_worker):
    held = flow_tasks.per_account.enqueue(9, 1, milliseconds=60_000)
    waiting = flow_tasks.per_account.enqueue(9, 2)
    doomed = start_worker("--concurrency", "1", env=FAST_RESCUE)
    wait_for(
        lambda: Job.objects.filter(pk=int(held.id), state="RUNNING").exists(),
        timeout=30,
        what="the job holding the key's slot to start",
    )
    doomed.signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    assert Job.objects.get(pk=int(waiting.id)).state == "READY"
    rescuer = start_worker("--concurrency", "1", env=FAST_RESCUE)
    wait_for(
        lambda: Job.objects.filter(pk=int(waiting.id), state="SUCCESSFUL").exists(),
        timeout=60,
        what="the waiting job to start once rescue freed the slot",
    )
    rescued = Job.objects.get(pk=int(held.id))
    assert rescued.state == "FAILED"
    assert rescued.errors[-1]["exception_class_path"] == "django_jobs.exceptions.WorkerLost"
    wait_for(
        lambda: Limiter.objects.filter(name="key:acct-9", running=0).exists(),
        timeout=10,
        what="the key's count to come down",
    )
    rescuer.signal(signal.SIGTERM)
    assert rescuer.wait(timeout=30) == 0, rescuer.output()
