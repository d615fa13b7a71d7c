"""What the chaos run enqueues, and how it watches schedules and the drain.

Everything here goes through the controller's own Django connection, straight to the
cluster. While the server restarts an enqueue fails (and, being transactional, leaves no
job); the round is counted as refused and the next one reconnects.
"""

from __future__ import annotations

import random
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import DatabaseError, connection
from django.utils import timezone

from django_jobs import chain, chord, group
from django_jobs.models import Job, Schedule, ScheduleRun
from django_jobs.schedules import firing
from django_jobs.states import FINISHED

from . import tasks

if TYPE_CHECKING:
    from .run import Run

SCHEDULES = {
    # misfire "all": every fire time gets its job even across an outage, so a gap in the
    # fire times would be a lost run, and two jobs for one would be a double fire.
    "chaos-every-second": {"task_path": "chaos.tasks.every_second", "interval_seconds": 1},
    "chaos-every-minute": {"task_path": "chaos.tasks.every_minute", "cron": "* * * * *"},
}
UNIQUE_KEYS = ("u1", "u2", "u3")


def create_schedules() -> None:
    for name, fields in SCHEDULES.items():
        Schedule.objects.create(
            name=name,
            misfire_policy="all",
            max_catchup=1000,
            next_run_at=timezone.now() + timedelta(seconds=1),
            **fields,
        )


def disable_schedules(run: Run) -> None:
    for attempt in range(20):
        try:
            for schedule in Schedule.objects.filter(name__in=SCHEDULES):
                firing.set_enabled(schedule.pk, False)
            return
        except DatabaseError:
            connection.close()
            time.sleep(0.5 + attempt * 0.1)


def _one(rng: random.Random, run: Run) -> None:
    short = round(rng.uniform(0.05, 0.5), 2)
    choice = rng.choices(
        ["plain", "atomic", "retried", "snoozed", "times_out", "workflow", "rated", "capped",
         "unique_key"],
        weights=[3, 3, 2, 2, 0.4, 1, 2, 2, 1],
    )[0]  # fmt: skip
    if choice == "workflow":
        shape = rng.choice(["chain", "group", "chord"])
        n = rng.randint(2, 4)
        if shape == "chain":
            canvas = chain(tasks.step_add.s(0, 1), *(tasks.step_add.s(1) for _ in range(n - 1)))
            expected: object = n
        elif shape == "group":
            canvas = group(tasks.step_add.s(i, i) for i in range(n))
            expected = [2 * i for i in range(n)]
        else:
            canvas = chord(group(tasks.step_add.s(i, 1) for i in range(n)), tasks.step_total.s())
            expected = sum(i + 1 for i in range(n))
        result = canvas.enqueue()
        run.workflows.append((shape, result.id, expected))
        for step in result.results:
            run.enqueued[int(step.id)] = f"workflow:{shape}"
        return
    task = getattr(tasks, choice)
    if choice == "times_out":
        result = task.enqueue(3.0)
    elif choice == "rated":
        result = task.enqueue(rng.randint(0, 1000))
    elif choice == "capped":
        result = task.enqueue(rng.randint(0, 1000), 2 * short)
    elif choice == "unique_key":
        result = task.enqueue(rng.choice(UNIQUE_KEYS), short)
    else:
        result = task.enqueue(short)
    run.enqueued[int(result.id)] = choice


def enqueue_round(rng: random.Random, run: Run, per_round: int = 3) -> None:
    """Enqueue a few jobs; while the database is away, count the round as refused."""
    try:
        for _ in range(per_round):
            _one(rng, run)
    except DatabaseError:
        run.enqueue_errors += 1
        connection.close()


def enqueue_long(run: Run, count: int, seconds: float) -> None:
    """Long atomic jobs, so that a partition finds the cut-off worker in the middle of one
    (short jobs end before the rescue, and could not show two attempts overlapping)."""
    try:
        for _ in range(count):
            run.enqueued[int(tasks.atomic.enqueue(seconds).id)] = "atomic"
    except DatabaseError:
        run.enqueue_errors += 1
        connection.close()


def snapshot_schedule_runs(run: Run) -> None:
    """Keep every (schedule, fire time) -> job seen: the firing code keeps only the last
    100 runs per schedule, which a long run outgrows, so the run reads them as they come."""
    try:
        rows = list(
            ScheduleRun.objects.filter(manual=False).values_list(
                "schedule_id", "fire_at", "job_id"
            )
        )
    except DatabaseError:
        connection.close()
        return
    for schedule_id, fire_at, job_id in rows:
        key = (schedule_id, fire_at.isoformat())
        seen = run.schedule_runs.setdefault(key, job_id)
        if seen is not None and job_id is not None and seen != job_id:
            run.schedule_conflicts.append(f"{key}: job {seen} and job {job_id}")


def wait_drained(limit: float, run: Run) -> bool:
    """Wait (at most ``limit`` s) until no job is left unfinished."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if not Job.objects.exclude(state__in=FINISHED).exists():
                return True
        except DatabaseError:
            connection.close()
        snapshot_schedule_runs(run)
        time.sleep(0.5)
    return False
