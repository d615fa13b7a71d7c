"""Running jobs: an in-process worker against committed rows."""

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from django_jobs import control, signals
from django_jobs.compat import TaskResultStatus, task_finished, task_started
from django_jobs.models import Job
from testproject.example import tasks
from testproject.example.models import LedgerEntry

from ..conftest import insert_raw, run_worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_runs_a_job_and_fills_the_result():
    result = tasks.add.enqueue(2, 3)
    worker = run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.worker_ids == [worker.worker_id]
    assert result.errors == []
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at
    assert result.attempts == 1


def test_async_task_runs():
    result = tasks.async_add.enqueue(20, 22)
    run_worker()
    result.refresh()
    assert (result.status, result.return_value) == (TaskResultStatus.SUCCESSFUL, 42)


def test_priority_then_run_after_then_enqueue_order():
    now = timezone.now()
    low = tasks.record.using(priority=-5).enqueue("low")
    first_default = tasks.record.enqueue("default-1")
    second_default = tasks.record.enqueue("default-2")
    high = tasks.record.using(priority=10).enqueue("high")
    older = tasks.record.using(run_after=now - timedelta(minutes=5)).enqueue("older")
    later = tasks.record.using(run_after=now + timedelta(hours=1)).enqueue("later")
    run_worker(threads=1)
    order = list(LedgerEntry.objects.order_by("id").values_list("key", flat=True))
    assert order == ["high", "older", "default-1", "default-2", "low"]
    for result in (low, first_default, second_default, high, older):
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL
    later.refresh()
    assert later.status == TaskResultStatus.READY


def test_queues_restrict_what_a_worker_takes():
    email = tasks.add.using(queue_name="emails").enqueue(1, 1)
    default = tasks.add.enqueue(1, 1)
    run_worker(queues=["emails"])
    email.refresh()
    default.refresh()
    assert email.status == TaskResultStatus.SUCCESSFUL
    assert default.status == TaskResultStatus.READY


FAST_RETRY = {
    "default": {
        "BACKEND": "django_jobs.backend.JobsBackend",
        "QUEUES": ["default", "emails", "slow"],
        "OPTIONS": {"RETRY_BASE_DELAY": 0.01, "RETRY_MAX_DELAY": 0.02},
    }
}


@override_settings(TASKS=FAST_RETRY)
def test_failure_is_retried_then_failed_with_every_error_kept():
    result = tasks.always_fails.enqueue("boom")
    worker = run_worker()
    # burst mode stops when the retry is not due yet; run until the job is final.
    for _ in range(20):
        if Job.objects.get(pk=int(result.id)).state == "FAILED":
            break
        run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 3
    assert len(result.errors) == 3
    assert result.errors[0].exception_class_path == "builtins.RuntimeError"
    assert result.errors[0].exception_class is RuntimeError
    assert "boom" in result.errors[-1].traceback
    assert "always_fails" in result.errors[-1].traceback
    row = Job.objects.get(pk=int(result.id))
    assert [e["attempt"] for e in row.errors] == [1, 2, 3]
    assert row.errors[0]["worker_id"] == worker.worker_id
    assert row.errors[0]["message"] == "boom"
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value


@override_settings(TASKS=FAST_RETRY)
def test_context_attempt_counts_attempts():
    first = tasks.report_attempt.enqueue()
    run_worker()
    first.refresh()
    assert first.return_value == 1
    retried = tasks.flaky_reports_attempt.enqueue()
    for _ in range(20):
        run_worker()
        retried.refresh()
        if retried.is_finished:
            break
    assert retried.status == TaskResultStatus.SUCCESSFUL
    assert retried.return_value == 2
    assert retried.attempts == 2


def test_non_json_return_value_fails_clearly_without_retry():
    result = tasks.returns_a_set.enqueue()
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    row = Job.objects.get(pk=int(result.id))
    assert row.attempts == 1  # max_attempts is 3, but it is not retried
    assert row.errors[0]["exception_class_path"] == "builtins.TypeError"
    assert "return value of task" in row.errors[0]["message"]
    assert "not JSON-serialisable" in row.errors[0]["message"]


@pytest.mark.parametrize(
    "path",
    [
        "os.system",
        "subprocess.call",
        "testproject.example.tasks.plain_function",
        "no.such.module.func",
        "testproject.example.tasks.no_such_task",
        "",
        "builtins.eval",
    ],
)
def test_only_declared_tasks_run(path, tmp_path: Path):
    marker = tmp_path / "called"
    bad = insert_raw(path, args=f'["{marker}"]', max_attempts=3)
    good = tasks.add.enqueue(1, 1)
    run_worker()
    row = Job.objects.get(pk=bad)
    assert row.state == "FAILED"
    assert row.attempts == 1  # not retried: it can never run
    assert row.errors[0]["exception_class_path"] == "django_jobs.registry.UnknownTask"
    assert "is not a task this worker can run" in row.errors[0]["message"]
    assert not marker.exists()
    good.refresh()
    assert good.status == TaskResultStatus.SUCCESSFUL


def test_signals_carry_the_right_results():
    started, finished = [], []

    def on_started(sender, task_result, **kwargs):
        started.append((task_result.id, task_result.status, task_result.attempts))

    def on_finished(sender, task_result, **kwargs):
        finished.append((task_result.id, task_result.status, task_result.return_value))

    task_started.connect(on_started)
    task_finished.connect(on_finished)
    try:
        result = tasks.add.enqueue(3, 4)
        run_worker()
    finally:
        task_started.disconnect(on_started)
        task_finished.disconnect(on_finished)
    assert started == [(result.id, TaskResultStatus.RUNNING, 1)]
    assert finished == [(result.id, TaskResultStatus.SUCCESSFUL, 7)]


def test_many_jobs_with_threads_each_run_once():
    tasks.record.enqueue_many([((f"k{n}",), {}) for n in range(300)])
    worker = run_worker(threads=4)
    assert worker.stats.succeeded == 300
    assert LedgerEntry.objects.count() == 300
    assert set(Job.objects.values_list("state", flat=True)) == {"SUCCESSFUL"}
    assert set(Job.objects.values_list("attempts", flat=True)) == {1}


def test_burst_waits_for_a_retry_due_within_burst_wait_and_no_longer():
    result = tasks.flaky_reports_attempt.enqueue()
    run_worker(burst_wait=0)
    row = Job.objects.get(pk=int(result.id))
    assert (row.state, row.attempts) == ("READY", 1)  # exited with the retry pending
    run_worker(burst_wait=10)
    row.refresh_from_db()
    assert (row.state, row.attempts) == ("SUCCESSFUL", 2)


def test_task_finished_is_sent_only_when_a_job_is_final():
    # Django's receivers read task_finished as "done": a retry or a snooze is not done, and
    # is announced by job_retrying / job_snoozed instead.
    finished, retrying, snoozed = [], [], []

    def on_finished(sender, task_result, **kwargs):
        finished.append((task_result.id, task_result.status))

    def on_retrying(sender, task_result, **kwargs):
        retrying.append((task_result.id, task_result.status))

    def on_snoozed(sender, task_result, **kwargs):
        snoozed.append((task_result.id, task_result.status))

    task_finished.connect(on_finished)
    signals.job_retrying.connect(on_retrying)
    signals.job_snoozed.connect(on_snoozed)
    try:
        retried = tasks.flaky_reports_attempt.enqueue()  # fails once, succeeds next
        snooze = tasks.snooze_once.enqueue()  # snoozes once, succeeds next
        failed = tasks.fails_with.enqueue("ValueError")  # not retryable: FAILED at once
        run_worker(burst_wait=10)
    finally:
        task_finished.disconnect(on_finished)
        signals.job_retrying.disconnect(on_retrying)
        signals.job_snoozed.disconnect(on_snoozed)
    assert sorted(finished) == sorted(
        [
            (retried.id, TaskResultStatus.SUCCESSFUL),
            (snooze.id, TaskResultStatus.SUCCESSFUL),
            (failed.id, TaskResultStatus.FAILED),
        ]
    )
    assert retrying == [(retried.id, TaskResultStatus.READY)]
    assert snoozed == [(snooze.id, TaskResultStatus.READY)]


def test_task_finished_is_sent_for_a_running_job_that_was_cancelled():
    finished = []

    def on_finished(sender, task_result, **kwargs):
        finished.append((task_result.id, task_result.status))

    result = tasks.crunch.enqueue(400, 0.05)  # 20 s unless it stops when cancelled

    def cancel_once_running() -> None:
        try:
            wait_for(
                lambda: Job.objects.filter(pk=int(result.id), state="RUNNING").exists(),
                timeout=20,
                what="the job to start",
            )
            control.cancel(result.id)
        finally:
            connection.close()  # this thread's own; the test database is dropped at the end

    canceller = threading.Thread(target=cancel_once_running)
    task_finished.connect(on_finished)
    try:
        canceller.start()
        run_worker(listen=True)
    finally:
        task_finished.disconnect(on_finished)
        canceller.join(20)
    row = Job.objects.get(pk=int(result.id))
    assert row.state == "CANCELLED"
    # CANCELLED is final; Django's statuses have no CANCELLED, so it reads FAILED.
    assert finished == [(result.id, TaskResultStatus.FAILED)]


def test_a_task_finished_receiver_that_raises_changes_nothing():
    def broken(sender, task_result, **kwargs):
        raise RuntimeError("a broken receiver")

    task_finished.connect(broken)
    try:
        first, second = tasks.add.enqueue(1, 2), tasks.add.enqueue(3, 4)
        worker = run_worker()
    finally:
        task_finished.disconnect(broken)
    assert worker.stats.succeeded == 2
    for result in (first, second):
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL
