"""django_jobs.testing: run_jobs(), immediate() and the assertions, against the real table."""

from datetime import timedelta
from unittest import mock

import pytest
from django.test import override_settings
from django.utils import timezone

import django_jobs
from django_jobs.compat import Task, TaskResultStatus, task_finished, task_started
from django_jobs.models import Job
from django_jobs.testing import (
    assert_enqueued,
    assert_not_enqueued,
    enqueued_jobs,
    immediate,
    run_jobs,
    runner,
)
from testproject.example import tasks
from testproject.example.models import LedgerEntry

pytestmark = pytest.mark.django_db


def test_run_jobs_runs_due_jobs_and_the_jobs_they_enqueue():
    parent = tasks.fan_out.enqueue(3)
    results = run_jobs()
    assert [r.task.module_path for r in results] == [
        "testproject.example.tasks.fan_out",
        *["testproject.example.tasks.add"] * 3,
    ]
    assert results[0].id == parent.id
    assert {r.status for r in results} == {TaskResultStatus.SUCCESSFUL}
    assert [r.return_value for r in results[1:]] == [0, 2, 4]
    assert run_jobs() == []  # nothing left


def test_a_retry_waits_for_its_delay_unless_until_reaches_it():
    result = tasks.flaky_reports_attempt.enqueue()
    (first,) = run_jobs()
    assert (first.status, first.attempts) == (TaskResultStatus.READY, 1)
    assert first.errors[0].exception_class_path == "builtins.ConnectionError"
    (second,) = run_jobs(until=timedelta(minutes=1))
    assert (second.id, second.status, second.return_value) == (result.id, "SUCCESSFUL", 2)


def test_retry_on_and_the_last_attempt_end_in_failed():
    result = tasks.fails_with.enqueue("ValueError")  # retry_on=(ConnectionError,)
    (failed,) = run_jobs(until=timedelta(hours=1))
    assert (failed.status, failed.attempts) == (TaskResultStatus.FAILED, 1)
    assert failed.id == result.id
    tasks.always_fails.enqueue()  # max_attempts=3, retries anything
    (final,) = run_jobs(until=timedelta(hours=1))
    assert (final.status, final.attempts, len(final.errors)) == ("FAILED", 3, 3)


def test_snooze_and_explicit_retry_behave_as_in_the_worker():
    snoozed = tasks.snooze_once.enqueue()  # Snooze(0): due again at once
    retried = tasks.retry_explicitly.enqueue()  # Retry(after=0)
    results = {r.id: r for r in run_jobs()}
    assert results[snoozed.id].return_value == 2
    assert results[snoozed.id].errors == []  # a snooze is no error
    assert Job.objects.get(pk=int(snoozed.id)).max_attempts == 2  # the attempt given back
    assert results[retried.id].return_value == 2
    assert len(results[retried.id].errors) == 1


def test_run_after_waits_unless_until_reaches_it():
    later = tasks.add.using(run_after=timezone.now() + timedelta(minutes=10)).enqueue(1, 1)
    assert run_jobs() == []
    assert run_jobs(until=timezone.now() + timedelta(minutes=5)) == []
    (result,) = run_jobs(until=timedelta(minutes=11))
    assert (result.id, result.status) == (later.id, TaskResultStatus.SUCCESSFUL)


def test_queues_and_max_jobs_bound_a_run():
    tasks.add.enqueue(1, 1)
    email = tasks.send_welcome_email.enqueue("x@example.com")
    assert [r.id for r in run_jobs(queues=["emails"])] == [email.id]
    for n in range(3):
        tasks.add.enqueue(n, n)
    assert len(run_jobs(max_jobs=2)) == 2
    assert len(run_jobs()) == 2


def test_a_job_that_enqueues_itself_for_ever_is_stopped(monkeypatch):
    monkeypatch.setattr(runner, "SAFETY_LIMIT", 5)
    tasks.enqueue_myself.enqueue()
    with pytest.raises(runner.TooManyJobs, match="enqueue itself"):
        run_jobs()
    assert len(run_jobs(max_jobs=3)) == 3  # with a bound of one's own, no error


def test_soft_time_limits_and_atomic_tasks_work_as_in_the_worker():
    soft = tasks.overrun_soft_limit.enqueue(3)
    kept = tasks.atomic_write.enqueue("kept")
    undone = tasks.atomic_write.enqueue("undone", fail=True)
    results = {r.id: r for r in run_jobs()}
    assert results[soft.id].return_value == "cleaned up after the soft limit"
    assert results[kept.id].status == TaskResultStatus.SUCCESSFUL
    assert results[undone.id].status == TaskResultStatus.FAILED
    assert list(LedgerEntry.objects.values_list("key", flat=True)) == ["kept"]


def test_signals_are_sent_as_by_the_worker():
    seen = []

    def on_started(sender, task_result, **kwargs):
        seen.append(("started", task_result.status))

    def on_finished(sender, task_result, **kwargs):
        seen.append(("finished", task_result.status, task_result.return_value))

    task_started.connect(on_started)
    task_finished.connect(on_finished)
    try:
        tasks.add.enqueue(2, 2)
        run_jobs()
    finally:
        task_started.disconnect(on_started)
        task_finished.disconnect(on_finished)
    assert seen == [("started", "RUNNING"), ("finished", "SUCCESSFUL", 4)]


def test_immediate_runs_each_job_before_enqueue_returns():
    with immediate():
        result = tasks.fan_out.enqueue(2)
        later = tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 1)
        failing = tasks.flaky_reports_attempt.enqueue()
    assert result.status == TaskResultStatus.SUCCESSFUL  # the returned result, updated
    assert result.return_value == 2
    assert Job.objects.filter(state="SUCCESSFUL").count() == 3  # fan_out and its two adds
    assert later.status == TaskResultStatus.READY  # not due yet
    assert (failing.status, failing.attempts) == (TaskResultStatus.READY, 1)  # retry pending
    tasks.add.enqueue(5, 5)  # outside the block: enqueued only
    assert Job.objects.filter(state="READY").count() == 3


def test_immediate_is_a_decorator_and_stops_a_job_that_enqueues_itself(monkeypatch):
    monkeypatch.setattr(runner, "SAFETY_LIMIT", 5)

    @immediate()
    def sign_up() -> None:
        tasks.enqueue_myself.enqueue()

    with pytest.raises(runner.TooManyJobs):
        sign_up()


def test_assertions_match_arguments_as_stored_and_say_what_is_there():
    tasks.add.enqueue(1, 2)
    tasks.add.enqueue(1, 2)
    tasks.send_welcome_email.enqueue("a@example.com")
    assert len(assert_enqueued(tasks.add, args=(1, 2), count=2)) == 2
    assert_enqueued("testproject.example.tasks.add", args=[mock.ANY, 2])
    assert_enqueued(tasks.send_welcome_email, kwargs={}, queue_name="emails")
    assert_not_enqueued(tasks.add, args=[2, 1])
    assert_not_enqueued(tasks.noop)
    with pytest.raises(AssertionError) as failure:
        assert_enqueued(tasks.add, args=[3, 4])
    message = str(failure.value)
    assert "Expected at least 1 job of testproject.example.tasks.add with args=[3, 4]" in message
    assert "Jobs of that task (2):" in message
    assert "args=[1, 2]" in message
    assert "testproject.example.tasks.send_welcome_email (1)" in message
    with pytest.raises(AssertionError, match="Expected 1 job of"):
        assert_enqueued(tasks.add, count=1)
    with pytest.raises(AssertionError, match="Expected no job, found 3"):
        assert_not_enqueued()
    run_jobs()
    # Enqueued means in the table, whatever has happened to the job since.
    assert [r.status for r in enqueued_jobs(tasks.add)] == ["SUCCESSFUL", "SUCCESSFUL"]


@pytest.mark.django_db(transaction=True)
def test_run_jobs_outside_a_transaction_too():
    tasks.fan_out.enqueue(2)
    assert len(run_jobs()) == 3


def noop_plain() -> None:
    """A plain Django Task (not a JobsTask), as a project declares with Django's backends."""


# As a decorator would: the module attribute is the Task (Django 6.0 has no defaults).
noop_plain = Task(
    func=noop_plain, priority=0, backend="default", queue_name="default", run_after=None
)


@pytest.mark.parametrize(
    "backend", ["DummyBackend", "ImmediateBackend"], ids=["dummy", "immediate"]
)
def test_enqueue_many_works_on_djangos_own_backends(backend):
    module = "django_tasks" if django_jobs.compat.USES_BACKPORT else "django.tasks"
    path = f"{module}.backends.{backend.lower().removesuffix('backend')}.{backend}"
    with override_settings(TASKS={"default": {"BACKEND": path}}):
        # A @job task declared on our backend, and a plain Task of Django's own.
        results = tasks.always_fails.enqueue_many([((f"no {n}",), {}) for n in range(2)])
        assert not isinstance(noop_plain, django_jobs.JobsTask)
        more = django_jobs.enqueue_many(noop_plain, [((), {}), ((), {})])
    assert len(results) == len(more) == 2
    assert not Job.objects.exists()  # Django's backend took them, not the table
