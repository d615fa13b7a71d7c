"""Schedules fired by real ``runjobs`` processes: one job per fire time, however many workers."""

import signal
import time
from collections import Counter
from datetime import timedelta
from itertools import pairwise

import pytest
from django.utils import timezone

from django_jobs.models import Job, Schedule, ScheduleRun

from ..conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

#: Fire times to wait for; at one a second, about this many seconds.
FIRE_TIMES = 15


def every_second_schedule(first_in: float) -> Schedule:
    """A schedule of ``add(40, 2)`` every second from ``first_in`` seconds on."""
    return Schedule.objects.create(
        name="every-second",
        task_path="testproject.example.tasks.add",
        args=[40, 2],
        interval_seconds=1,
        # Each fire time gets its job even when a tick comes late: a gap would show.
        misfire_policy="all",
        max_catchup=100,
        next_run_at=timezone.now() + timedelta(seconds=first_in),
    )


def test_three_workers_fire_a_one_second_schedule_exactly_once_per_fire_time(start_worker):
    schedule = every_second_schedule(first_in=2)
    workers = [start_worker("--concurrency", "1") for _ in range(3)]
    runs = ScheduleRun.objects.filter(schedule=schedule)
    wait_for(runs.exists, timeout=60, what="the first fire")
    first_seen = time.monotonic()
    wait_for(lambda: runs.count() >= FIRE_TIMES, timeout=60, what=f"{FIRE_TIMES} fires")
    # At one fire a second, the workers keep pace: FIRE_TIMES fires take about as many
    # seconds (a tick can come late, and catch up under the 'all' policy, not skip).
    assert time.monotonic() - first_seen < FIRE_TIMES + 5
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(timeout=30) == 0, worker.output()

    runs = list(ScheduleRun.objects.filter(schedule=schedule).order_by("fire_at"))
    fire_times = [run.fire_at for run in runs]
    assert len(runs) >= 2
    span = fire_times[-1] - fire_times[0]
    expected = int(span / timedelta(seconds=1)) + 1
    jobs = Job.objects.filter(task_path="testproject.example.tasks.add", args=[40, 2])
    job_ids = sorted(jobs.values_list("id", flat=True))
    per_worker = [w.output().count("Schedule 'every-second' fired") for w in workers]
    print(
        f"\n3 workers: {expected} fire times expected from "
        f"{fire_times[0]:%H:%M:%S} to {fire_times[-1]:%H:%M:%S}, {len(runs)} runs recorded, "
        f"{len(job_ids)} jobs enqueued; fired per worker: {per_worker}"
    )
    assert len(set(fire_times)) == len(fire_times) == expected  # no duplicate, no gap
    assert all(b - a == timedelta(seconds=1) for a, b in pairwise(fire_times))
    assert sorted(run.job_id for run in runs) == job_ids  # one job per fire time
    assert sum(per_worker) == len(job_ids)
    assert expected >= FIRE_TIMES
    assert Counter(jobs.values_list("state", flat=True))["SUCCESSFUL"] >= len(job_ids) - 3
