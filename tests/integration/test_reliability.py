"""Retry policy, snooze, atomic tasks, rescue and leadership, against committed rows."""

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from django_jobs import signals
from django_jobs.compat import TaskResultStatus
from django_jobs.models import Job, Lease, Worker
from django_jobs.protocol import jobs as protocol
from django_jobs.protocol import workers
from django_jobs.services.leader import Leader
from django_jobs.services.pruner import Pruner
from django_jobs.services.rescuer import Rescuer
from django_jobs.worker import dbconn
from django_jobs.worker.supervisor import Supervisor as JobsWorker
from testproject.example import tasks
from testproject.example.models import LedgerEntry

from ..conftest import run_worker

pytestmark = pytest.mark.django_db(transaction=True)


def run_until_finished(result, rounds: int = 50):
    for _ in range(rounds):
        run_worker()
        result.refresh()
        if result.is_finished:
            return result
        time.sleep(0.02)
    raise AssertionError(f"job {result.id} still {result.status} after {rounds} rounds")


def test_retry_on_retries_listed_exceptions_only():
    retried = run_until_finished(tasks.fails_with.enqueue("ConnectionError"))
    assert retried.status == TaskResultStatus.FAILED
    assert retried.attempts == 3
    assert len(retried.errors) == 3
    not_listed = run_until_finished(tasks.fails_with.enqueue("ValueError"))
    assert not_listed.attempts == 1
    assert not_listed.errors[0].exception_class_path == "builtins.ValueError"


def test_snooze_runs_again_without_an_error_or_a_spent_attempt():
    result = run_until_finished(tasks.snooze_once.enqueue())
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 2
    assert result.errors == []
    row = Job.objects.get(pk=int(result.id))
    assert (row.attempts, row.max_attempts) == (2, 2)


def test_explicit_retry_counts_as_a_failed_attempt():
    result = run_until_finished(tasks.retry_explicitly.enqueue())
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 2
    assert [e.exception_class_path for e in result.errors] == ["django_jobs.exceptions.Retry"]


def test_atomic_task_commits_its_writes_with_its_success():
    result = tasks.atomic_write.enqueue("atomic-ok")
    worker = run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == "atomic-ok"
    assert LedgerEntry.objects.filter(key="atomic-ok").exists()
    assert worker.stats.succeeded == 1


def test_atomic_task_that_fails_leaves_no_writes():
    result = tasks.atomic_write.enqueue("atomic-fails", fail=True)
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert not LedgerEntry.objects.filter(key="atomic-fails").exists()


def test_atomic_task_superseded_mid_run_rolls_its_writes_back():
    result = tasks.atomic_superseded.enqueue("superseded")
    worker = run_worker()
    assert not LedgerEntry.objects.filter(key="superseded").exists()
    row = Job.objects.get(pk=int(result.id))
    # Still RUNNING for the (simulated) newer attempt, which owns the outcome now.
    assert (row.state, row.attempts) == ("RUNNING", 2)
    assert worker.stats.lost == 1


def register(worker_id: str, heartbeat_age: float, worker_timeout: float | None = None) -> None:
    Worker.objects.create(
        id=worker_id, host="h", pid=1, queues=[], concurrency=1, worker_timeout=worker_timeout
    )
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE django_jobs_worker SET last_heartbeat = now() - make_interval(secs => %s) "
            "WHERE id = %s",
            [heartbeat_age, worker_id],
        )


def claim_as(worker_id: str) -> protocol.ClaimedJob:
    with connection.cursor() as cur:
        (job,) = protocol.claim(cur, worker_id=worker_id, backend="default", queues=None, limit=1)
    return job


def test_rescue_retries_jobs_of_silent_workers_and_fences_their_late_results():
    alive = tasks.add.enqueue(1, 1)
    claim_as_alive = None
    register("alive", heartbeat_age=1)
    claim_as_alive = claim_as("alive")
    lost = tasks.add.using(max_attempts=2).enqueue(2, 2)
    register("gone", heartbeat_age=120)
    stale = claim_as("gone")
    last_chance = tasks.add.enqueue(3, 3)
    orphan = claim_as("never-registered")

    with connection.cursor() as cur:
        rescued = Rescuer(worker_timeout=30).run_once(cur)

    assert {job_id for job_id, _, _ in rescued} == {stale.id, orphan.id}
    assert Job.objects.get(pk=claim_as_alive.id).state == "RUNNING"
    row = Job.objects.get(pk=int(lost.id))
    assert row.state == "READY"
    assert row.errors[0]["exception_class_path"] == "django_jobs.exceptions.WorkerLost"
    assert "worker gone was lost" in row.errors[0]["message"]
    final = Job.objects.get(pk=int(last_chance.id))
    assert final.state == "FAILED"  # max_attempts 1: no attempt left
    assert final.finished_at is not None

    # The lost worker comes back and reports: its outcome belongs to an old attempt.
    with connection.cursor() as cur:
        assert protocol.complete(cur, [protocol.Success(stale.id, stale.attempts, "4")]) == {}
    assert Job.objects.get(pk=stale.id).state == "READY"
    assert alive.id


def test_each_worker_is_rescued_after_its_own_worker_timeout_not_the_leaders():
    # The worker fences itself by its own WORKER_TIMEOUT: a leader with a shorter one
    # must not rescue it earlier, and one with a longer one must not wait longer.
    patient = tasks.add.enqueue(1, 1)
    register("patient", heartbeat_age=10, worker_timeout=60)
    patient_job = claim_as("patient")
    hasty = tasks.add.using(max_attempts=2).enqueue(2, 2)
    register("hasty", heartbeat_age=10, worker_timeout=5)
    hasty_job = claim_as("hasty")

    with connection.cursor() as cur:
        rescued = Rescuer(worker_timeout=30).run_once(cur)

    assert {job_id for job_id, _, _ in rescued} == {hasty_job.id}
    assert Job.objects.get(pk=int(patient.id)).state == "RUNNING"
    assert Job.objects.get(pk=int(hasty.id)).state == "READY"
    assert patient_job.id == int(patient.id)
    lost = set(Worker.objects.filter(lost_at__isnull=False).values_list("id", flat=True))
    assert lost == {"hasty"}


def test_one_leader_at_a_time_and_takeover_after_expiry():
    first, second = dbconn.connect("default", purpose="a"), dbconn.connect("default", purpose="b")
    try:
        with first.cursor() as a, second.cursor() as b:
            assert workers.acquire_lease(a, name="maintenance", holder="w1", ttl=0.3)
            assert not workers.acquire_lease(b, name="maintenance", holder="w2", ttl=0.3)
            assert workers.acquire_lease(a, name="maintenance", holder="w1", ttl=0.3)
            time.sleep(0.4)
            assert workers.acquire_lease(b, name="maintenance", holder="w2", ttl=0.3)
            assert not workers.acquire_lease(a, name="maintenance", holder="w1", ttl=0.3)
        assert Lease.objects.get().holder == "w2"
    finally:
        first.close()
        second.close()


def test_worker_registers_heartbeats_and_leaves():
    seen = []

    def peek():
        seen.extend(Worker.objects.values_list("id", "last_heartbeat"))
        return tasks.add.func(1, 1)

    tasks.add.enqueue(1, 1)
    worker = run_worker()
    assert Worker.objects.filter(id=worker.worker_id).count() == 0  # deregistered at exit
    assert Lease.objects.count() == 0  # the lease was handed back
    assert timezone.now()


def test_the_maintenance_leader_prunes_finished_jobs_past_their_retention():
    def finished(state: str, days_ago: float) -> int:
        job_id = int(tasks.add.enqueue(1, 1).id)
        Job.objects.filter(pk=job_id).update(
            state=state, finished_at=timezone.now() - timedelta(days=days_ago)
        )
        return job_id

    old_success = finished("SUCCESSFUL", 8)
    recent_success = finished("SUCCESSFUL", 6)
    old_failure = finished("FAILED", 8)
    ancient_cancel = finished("CANCELLED", 400)
    ready = int(tasks.add.enqueue(2, 2).id)
    retention = {"SUCCESSFUL": 7 * 86400.0, "FAILED": 30 * 86400.0, "CANCELLED": None}

    with connection.cursor() as cur:
        deleted = Pruner(retention=retention).run_once(cur)

    assert deleted == 1
    kept = set(Job.objects.values_list("pk", flat=True))
    assert old_success not in kept
    assert {recent_success, old_failure, ancient_cancel, ready} <= kept


def test_the_worker_hands_its_backends_retention_to_maintenance(settings):
    settings.TASKS = {
        "default": {
            **settings.TASKS["default"],
            "OPTIONS": {"RETENTION": {"SUCCESSFUL": timedelta(days=2), "CANCELLED": None}},
        }
    }
    retention = JobsWorker(backend="default").leader.services[1].retention
    assert retention == {"SUCCESSFUL": 2 * 86400.0, "FAILED": 30 * 86400.0, "CANCELLED": None}


class _Broken:
    """A chore that fails every round, as a bad value or a bug in one service would."""

    def run_once(self, cursor) -> None:
        raise RuntimeError("broken on purpose")


class _Counting:
    def __init__(self) -> None:
        self.rounds = 0

    def run_once(self, cursor) -> int:
        self.rounds += 1
        return self.rounds


def test_a_failing_maintenance_chore_is_logged_and_stops_neither_the_others_nor_the_worker(
    caplog,
):
    failures = []

    def on_failed(sender, **kwargs):
        failures.append((kwargs["service"], type(kwargs["exception"]).__name__))

    counting = _Counting()
    leader = Leader("w1", interval=0.01, services=[_Broken(), counting])
    signals.maintenance_failed.connect(on_failed)
    conn = dbconn.connect("default", purpose="test")
    try:
        with conn.cursor() as cur:
            for _ in range(2):
                leader.tick(cur)  # raises nothing
            # The connection is still usable: the failed chore's work was rolled back.
            cur.execute("SELECT 1")
    finally:
        signals.maintenance_failed.disconnect(on_failed)
        conn.close()
    assert counting.rounds == 2  # the chore after the broken one ran every round
    assert failures == [("_Broken", "RuntimeError")] * 2
    logged = [r for r in caplog.records if "Maintenance: _Broken failed" in r.getMessage()]
    assert len(logged) == 2
    assert logged[0].exc_info is not None  # with its traceback
    assert "RuntimeError: broken on purpose" in logged[0].getMessage()


def tick_once(leader: Leader) -> None:
    """One maintenance round of ``leader`` on a connection of its own, as a worker's."""
    conn = dbconn.connect("default", purpose="test")
    try:
        with conn.cursor() as cur:
            leader.tick(cur)
    finally:
        conn.close()


def test_a_lease_statement_that_fails_does_not_stop_the_worker(caplog):
    # MAINTENANCE_INTERVAL is checked now; this one once passed and made every worker's
    # lease statement fail with "timestamp out of range", which killed the worker.
    counting = _Counting()
    leader = Leader("w1", interval=1e14, services=[counting])
    tick_once(leader)
    assert not leader.is_leader
    assert counting.rounds == 0
    assert any(
        "Maintenance: the maintenance lease failed" in r.getMessage() for r in caplog.records
    )


def test_a_pruner_with_a_retention_past_the_calendar_fails_alone():
    # What the checks now refuse: the cut-off date is off PostgreSQL's calendar.
    counting = _Counting()
    leader = Leader(
        "w1",
        interval=0.01,
        services=[Pruner(retention={"SUCCESSFUL": timedelta.max.total_seconds()}), counting],
    )
    tick_once(leader)
    assert counting.rounds == 1
