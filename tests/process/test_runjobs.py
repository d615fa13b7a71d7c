"""`manage.py runjobs` as a real process: sharing work, stopping, waking up."""

import signal
import subprocess
import sys
import time

import pytest

from django_jobs.models import Job
from testproject.example import tasks
from testproject.example.models import LedgerEntry

from ..conftest import ROOT, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_three_workers_run_3000_jobs_each_exactly_once(start_worker):
    tasks.record.enqueue_many([((f"job-{n}",), {}) for n in range(3000)])
    workers = [start_worker("--burst", "--concurrency", "2", "-v", "0") for _ in range(3)]
    for worker in workers:
        assert worker.wait(timeout=90) == 0, worker.output()
    assert Job.objects.count() == 3000
    assert set(Job.objects.values_list("state", flat=True)) == {"SUCCESSFUL"}
    assert set(Job.objects.values_list("attempts", flat=True)) == {1}
    assert LedgerEntry.objects.count() == 3000
    # Every worker took a share (a lone process could also have passed the checks above).
    holders = set(Job.objects.values_list("worker_id", flat=True))
    assert len(holders) >= 2, holders


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_finishes_the_running_job_and_exits_0(start_worker, signum):
    result = tasks.sleep_for.enqueue(2)
    worker = start_worker()
    wait_for(
        lambda: Job.objects.filter(pk=int(result.id), state="RUNNING").exists(),
        timeout=20,
        what="the job to start",
    )
    worker.signal(signum)
    assert worker.wait(timeout=20) == 0, worker.output()
    result.refresh()
    assert result.status == "SUCCESSFUL", worker.output()
    assert result.return_value == 2
    assert not Job.objects.filter(state="RUNNING").exists()


def test_an_idle_worker_wakes_on_notify_not_on_poll(start_worker):
    # A poll every 60 s, and the other timers that wake the loop (heartbeat, maintenance)
    # every 30 s; only the schedule tick still wakes it every 5 s. A job that starts
    # within 0.5 s of its commit five times in a row was woken by its NOTIFY: a timer
    # would catch one such window in ten, all five about once in a hundred thousand.
    slow_timers = {
        "JOBS_HEARTBEAT_INTERVAL": "30",
        "JOBS_WORKER_TIMEOUT": "120",
        "JOBS_MAINTENANCE_INTERVAL": "30",
    }
    worker = start_worker("--poll-interval", "60", env=slow_timers)
    wait_for(lambda: "serving backend" in worker.output(), timeout=30, what="worker start")
    # A first job, not measured: it waits for a child to be ready, which on a loaded
    # machine can take longer than any fixed pause.
    warm_up = tasks.add.enqueue(0, 0)
    wait_for(
        lambda: Job.objects.filter(pk=int(warm_up.id), state="SUCCESSFUL").exists(),
        timeout=30,
        what="a child to be ready",
    )
    time.sleep(1.0)  # let it settle into its idle wait
    latencies = []
    for n in range(5):
        before = time.monotonic()
        result = tasks.add.enqueue(n, n)
        wait_for(
            lambda r=result: Job.objects.filter(pk=int(r.id), state="SUCCESSFUL").exists(),
            timeout=10,
            what="the notified job to finish",
            interval=0.005,
        )
        latencies.append(time.monotonic() - before)
        time.sleep(0.3)  # idle again before the next one
    assert max(latencies) < 0.5, latencies
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0


def test_a_job_in_the_future_is_not_woken_early(start_worker):
    from datetime import timedelta

    from django.utils import timezone

    worker = start_worker("--burst")
    assert worker.wait(timeout=30) == 0
    result = tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 1)
    worker = start_worker("--burst")
    assert worker.wait(timeout=30) == 0
    result.refresh()
    assert result.status == "READY"


def test_bad_arguments_are_reported(database_url):
    env = {"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "manage.py", "runjobs", "--queues", "nope,default", "--burst"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "--queues names 'nope'" in done.stderr
    done = subprocess.run(
        [sys.executable, "manage.py", "runjobs", "--concurrency", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "must be at least 1" in done.stderr
