"""Operator moves: retry, cancel, run now, prune. Each reports which jobs it moved."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from django_jobs.models import Job
from django_jobs.protocol import operator as protocol
from testproject.example import tasks

pytestmark = pytest.mark.django_db


def ids(*results) -> list[int]:
    return [int(r.id) for r in results]


def test_retry_moves_failed_and_cancelled_only():
    failed, cancelled, ready = (tasks.add.enqueue(1, 1) for _ in range(3))
    Job.objects.filter(pk=int(failed.id)).update(state="FAILED", attempts=1, max_attempts=1)
    Job.objects.filter(pk=int(cancelled.id)).update(state="CANCELLED")
    with connection.cursor() as cur:
        moved = protocol.retry_jobs(cur, ids(failed, cancelled, ready))
    assert sorted(moved) == sorted(ids(failed, cancelled))
    row = Job.objects.get(pk=int(failed.id))
    assert (row.state, row.max_attempts, row.finished_at) == ("READY", 2, None)


def test_cancel_ends_waiting_jobs_and_asks_running_ones_to_stop():
    ready, running, done = (tasks.add.enqueue(1, 1) for _ in range(3))
    Job.objects.filter(pk=int(running.id)).update(state="RUNNING", attempts=1)
    Job.objects.filter(pk=int(done.id)).update(state="SUCCESSFUL")
    with connection.cursor() as cur:
        moved = protocol.cancel_jobs(cur, ids(ready, running, done), by="ops")
    assert moved == {int(ready.id): "CANCELLED", int(running.id): "RUNNING"}
    row = Job.objects.get(pk=int(ready.id))
    assert (row.state, row.cancelled_by) == ("CANCELLED", "ops")
    # A running job stays RUNNING until its worker stops it; the request is on its row.
    row = Job.objects.get(pk=int(running.id))
    assert (row.state, row.cancelled_by) == ("RUNNING", "ops")
    assert row.cancel_requested_at is not None
    assert Job.objects.get(pk=int(done.id)).state == "SUCCESSFUL"


def test_run_now_moves_only_delayed_jobs():
    later = tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 1)
    due = tasks.add.enqueue(1, 1)
    with connection.cursor() as cur:
        moved = protocol.run_jobs_now(cur, ids(later, due))
    assert moved == ids(later)
    assert Job.objects.get(pk=int(later.id)).available_at <= timezone.now()


def test_prune_deletes_old_finished_jobs_in_batches():
    results = tasks.add.enqueue_many([((n, n), {}) for n in range(25)])
    old = ids(*results[:20])
    Job.objects.filter(pk__in=old).update(
        state="SUCCESSFUL", finished_at=timezone.now() - timedelta(days=10)
    )
    Job.objects.filter(pk=int(results[20].id)).update(
        state="FAILED", finished_at=timezone.now() - timedelta(hours=1)
    )
    with connection.cursor() as cur:
        deleted = protocol.prune(cur, older_than=86400, batch=7)
        with pytest.raises(ValueError, match="only finished jobs"):
            protocol.prune(cur, older_than=1, states=["READY"])
    assert deleted == 20
    assert Job.objects.count() == 5
