"""The django.tasks enqueue contract: validation, transactions, signals, get_result."""

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from django_jobs import JobsTask, job
from django_jobs.backend import JobsBackend
from django_jobs.compat import (
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultStatus,
    default_task_backend,
    task_backends,
    task_enqueued,
)
from django_jobs.models import Job
from testproject.example import tasks

pytestmark = pytest.mark.django_db


def test_backend_advertises_and_is_the_configured_one():
    backend = default_task_backend
    assert isinstance(task_backends["default"], JobsBackend)
    assert backend.supports_defer
    assert backend.supports_async_task
    assert backend.supports_get_result
    assert backend.supports_priority


def test_djangos_task_decorator_gives_our_task_class():
    assert isinstance(tasks.add, JobsTask)
    assert isinstance(tasks.sleep_for, JobsTask)


def test_enqueue_writes_a_ready_row_and_returns_its_result():
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    assert result.args == [2, 3]
    assert result.kwargs == {}
    assert result.enqueued_at is not None
    assert result.started_at is None
    assert result.backend == "default"
    row = Job.objects.get(pk=int(result.id))
    assert row.task_path == "testproject.example.tasks.add"
    assert row.state == "READY"
    assert row.args == [2, 3]
    assert row.queue_name == "default"
    assert row.max_attempts == 1


def test_extra_options_reach_the_row():
    result = tasks.always_fails.enqueue()
    assert Job.objects.get(pk=int(result.id)).max_attempts == 3
    result = tasks.add.using(priority=7, queue_name="emails").enqueue(1, 1)
    row = Job.objects.get(pk=int(result.id))
    assert (row.priority, row.queue_name) == (7, "emails")
    result = tasks.add.using(max_attempts=4).enqueue(1, 1)
    assert Job.objects.get(pk=int(result.id)).max_attempts == 4


def test_rollback_leaves_no_job():
    def request() -> None:
        with transaction.atomic():
            tasks.add.enqueue(1, 2)
            assert Job.objects.count() == 1
            raise RuntimeError("request failed")

    with pytest.raises(RuntimeError):
        request()
    assert Job.objects.count() == 0


def test_enqueue_inside_on_commit_callback(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        transaction.on_commit(lambda: tasks.add.enqueue(4, 4))
        assert Job.objects.count() == 0
    assert Job.objects.get().args == [4, 4]


def test_unknown_queue_is_refused():
    with pytest.raises(InvalidTask, match="Queue 'nope' is not valid"):
        tasks.add.using(queue_name="nope")


@pytest.mark.parametrize("priority", [101, -101, 1.5])
def test_priority_out_of_range_is_refused(priority):
    with pytest.raises(InvalidTask, match="priority"):
        tasks.add.using(priority=priority)


def test_naive_run_after_is_refused():
    with pytest.raises(InvalidTask, match="aware"):
        tasks.add.using(run_after=timezone.now().replace(tzinfo=None))


def test_run_after_is_stored_and_reported():
    when = timezone.now() + timedelta(hours=1)
    result = tasks.add.using(run_after=when).enqueue(1, 2)
    row = Job.objects.get(pk=int(result.id))
    assert row.run_after == when
    assert row.available_at == when
    assert tasks.add.get_result(result.id).task.run_after == when


@pytest.mark.parametrize(
    ("args", "kwargs", "names"),
    [
        ((object(),), {}, "Argument 0 of task 'testproject.example.tasks.add'"),
        ((1, timezone.now()), {}, "Argument 1"),
        ((), {"a": 1, "b": {1, 2}}, "Keyword argument 'b'"),
        ((float("nan"), 1), {}, "Argument 0"),
        (("x\x00y", 1), {}, "NUL character"),
    ],
)
def test_non_json_arguments_fail_at_enqueue_and_name_the_argument(args, kwargs, names):
    with pytest.raises(TypeError, match=r"JSON|NUL") as info:
        tasks.add.enqueue(*args, **kwargs)
    assert names in str(info.value)
    assert Job.objects.count() == 0


def test_task_enqueued_signal_carries_the_result():
    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append((sender, task_result))

    task_enqueued.connect(receiver)
    try:
        result = tasks.add.enqueue(1, 1)
    finally:
        task_enqueued.disconnect(receiver)
    assert seen == [(JobsBackend, result)]
    assert seen[0][1].id == result.id


def test_aenqueue_and_aget_result():
    result = async_to_sync(tasks.add.aenqueue)(5, 6)
    assert Job.objects.filter(pk=int(result.id)).exists()
    fetched = async_to_sync(tasks.add.aget_result)(result.id)
    assert fetched.id == result.id
    assert fetched.status == TaskResultStatus.READY


def test_get_result_round_trip_and_refresh():
    result = tasks.add.enqueue(1, 2)
    fetched = default_task_backend.get_result(result.id)
    assert fetched.task.func is tasks.add.func
    assert fetched.args == [1, 2]
    assert fetched.status == TaskResultStatus.READY
    result.refresh()
    assert result.status == TaskResultStatus.READY


@pytest.mark.parametrize(
    "bad_id", ["999999", "abc", "", "-1", "0", "1.5", "99999999999999999999999", "1; DROP", None]
)
def test_get_result_of_unknown_or_malformed_id(bad_id):
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(bad_id)


def test_get_result_with_the_wrong_task_is_a_mismatch():
    from django_jobs.compat import TaskResultMismatch

    result = tasks.add.enqueue(1, 2)
    with pytest.raises(TaskResultMismatch):
        tasks.sleep_for.get_result(result.id)


def test_bulk_enqueue_is_one_statement_and_transactional(django_assert_max_num_queries):
    with django_assert_max_num_queries(2):
        results = tasks.add.enqueue_many([((n, n), {}) for n in range(500)])
    assert len(results) == 500
    assert [r.args for r in results[:2]] == [[0, 0], [1, 1]]
    ids = [int(r.id) for r in results]
    assert ids == sorted(ids)
    assert Job.objects.filter(state="READY").count() == 500
    with pytest.raises(TypeError, match="Argument 0"):
        tasks.add.enqueue_many([((1, 2), {}), ((object(), 2), {})])
    assert Job.objects.count() == 500


def test_job_decorator_validates_its_options():
    with pytest.raises(InvalidTask, match="max_attempts must be a whole number"):
        job(max_attempts=0)(tasks.add.func)


def test_options_are_checked():
    bad = {
        "default": {
            "BACKEND": "django_jobs.backend.JobsBackend",
            "OPTIONS": {"MAX_ATTEMPTS": -1, "DATABASE": "nowhere"},
        }
    }
    with override_settings(TASKS=bad):
        messages = task_backends["default"].check()
    assert [m.id for m in messages] == ["django_jobs.E001"]
    assert "MAX_ATTEMPTS must be a whole number >= 1, got -1" in messages[0].msg
    missing_db = {
        "default": {
            "BACKEND": "django_jobs.backend.JobsBackend",
            "OPTIONS": {"DATABASE": "nowhere"},
        }
    }
    with override_settings(TASKS=missing_db):
        messages = task_backends["default"].check()
    assert [m.id for m in messages] == ["django_jobs.E002"]


def test_constructing_a_backend_touches_no_database(django_assert_num_queries):
    # An alias that does not exist would raise at once if __init__ connected; bad options
    # would raise if __init__ parsed them. Both wait for first use (and the checks).
    with django_assert_num_queries(0):
        backend = JobsBackend("fresh", {"OPTIONS": {"DATABASE": "nowhere", "LISTEN": "x"}})
    assert backend.alias == "fresh"


def test_listen_through_a_pooler_is_flagged(monkeypatch):
    from django.db import connections

    # A second alias shaped as Django's docs set up transaction-mode pooling.
    pooled = {**connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS": True}
    monkeypatch.setitem(connections.settings, "pooled", pooled)
    backend = JobsBackend("pooled", {"OPTIONS": {"DATABASE": "pooled"}})
    assert [m.id for m in backend.check()] == ["django_jobs.W002"]
    direct = JobsBackend(
        "pooled", {"OPTIONS": {"DATABASE": "pooled", "LISTEN_DATABASE": "default"}}
    )
    assert direct.check() == []
    polling = JobsBackend("pooled", {"OPTIONS": {"DATABASE": "pooled", "LISTEN": False}})
    assert polling.check() == []
    wrong = JobsBackend("x", {"OPTIONS": {"LISTEN_DATABASE": "nowhere"}})
    assert [m.id for m in wrong.check()] == ["django_jobs.E004"]


def test_enqueue_is_one_statement_that_djangos_query_log_and_wrappers_see():
    # The INSERT binds its parameters server-side (backend.binding_cursor) but still goes
    # through Django's cursor wrapper: assertNumQueries, debug tools and APM see it.
    from django.test.utils import CaptureQueriesContext

    seen = []

    def wrapper(execute, sql, params, many, context):
        seen.append(params)
        return execute(sql, params, many, context)

    with CaptureQueriesContext(connection) as captured, connection.execute_wrapper(wrapper):
        result = tasks.add.enqueue(1, b=2)
    assert len(captured) == 1
    assert len(seen) == 1
    assert (seen[0]["args_json"], seen[0]["kwargs_json"]) == ("[1]", '{"b":2}')
    row = Job.objects.values("args", "kwargs").get(pk=result.id)
    assert (row["args"], row["kwargs"]) == ([1], {"b": 2})
    assert (result.args, result.kwargs) == ([1], {"b": 2})
    assert tasks.noop.enqueue().args == []


def test_each_enqueue_signs_with_the_secret_key_of_the_moment():
    # What a task's jobs share is kept per task; the proof is not (SECRET_KEY may change).
    from django_jobs import registry

    first = tasks.add.enqueue(1, 2)
    with override_settings(SECRET_KEY="another-key-for-this-test"):
        second = tasks.add.enqueue(1, 2)
    proofs = dict(Job.objects.filter(pk__in=[first.id, second.id]).values_list("id", "task_proof"))
    path = tasks.add.module_path
    assert proofs[int(first.id)] == registry.proof(path)
    assert proofs[int(second.id)] == registry._proof(path, "another-key-for-this-test")
    assert proofs[int(first.id)] != proofs[int(second.id)]
