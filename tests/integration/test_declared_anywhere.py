"""Tasks declared in any module: found through the proof their jobs carry, never by path alone.

``testproject.example.services.billing`` is not a ``tasks`` module and not in
TASK_MODULES, so a fresh worker has not imported it. The ``fresh_process`` fixture makes
this process look like one: the module and its tasks are forgotten for the test.
"""

import sys
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from django_jobs import checks, registry
from django_jobs.backend import get_backend
from django_jobs.compat import InvalidTask, TaskResultStatus
from django_jobs.models import Job
from django_jobs.task import MissingTask
from testproject.example.services import billing

from ..conftest import insert_raw, run_worker

MODULE = "testproject.example.services.billing"
TOTAL = f"{MODULE}.invoice_total"


@pytest.fixture
def forget(monkeypatch):
    """Call to forget the billing module and its tasks, as a process that never imported it.

    After any enqueue: enqueueing validates the task, which declares it again.
    """

    def forget() -> None:
        monkeypatch.delitem(sys.modules, MODULE, raising=False)
        for path in [p for p in registry.registered_paths() if p.startswith(MODULE + ".")]:
            monkeypatch.delitem(registry._tasks, path)
        monkeypatch.setattr(registry, "_not_found", {})

    return forget


def insert(task_path: str, proof: str) -> int:
    return insert_raw(task_path, args="[[1, 2]]", proof=proof)


def error_of(job_id: int) -> str:
    row = Job.objects.get(pk=job_id)
    assert row.state == "FAILED"
    assert row.errors[-1]["exception_class_path"] == "django_jobs.registry.UnknownTask"
    return row.errors[-1]["message"]


@pytest.mark.django_db(transaction=True)
def test_a_task_from_any_module_runs_in_a_worker_that_never_imported_it(forget):
    result = billing.invoice_total.enqueue([1, 2, 3])
    forget()
    assert MODULE not in sys.modules
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 6
    assert MODULE in sys.modules  # imported on the strength of the job's proof
    # Its own options came with it: max_attempts from @job, not OPTIONS' default of 1.
    assert Job.objects.get(pk=int(result.id)).max_attempts == 2


@pytest.mark.django_db(transaction=True)
def test_a_row_without_proof_never_imports_the_module(forget):
    forget()
    job_id = insert(TOTAL, proof="")
    run_worker()
    assert "carries no proof" in error_of(job_id)
    assert MODULE not in sys.modules


@pytest.mark.django_db(transaction=True)
def test_a_forged_proof_never_imports_the_module(forget):
    forget()
    job_id = insert(TOTAL, proof="0" * registry.PROOF_LENGTH)
    run_worker()
    message = error_of(job_id)
    assert "proof does not match" in message
    assert "SECRET_KEY" in message
    assert MODULE not in sys.modules


@pytest.mark.django_db(transaction=True)
def test_a_proof_for_another_path_proves_nothing(forget):
    forget()
    # Copying a valid proof onto another path (a module with side effects) is refused.
    job_id = insert("os.system", proof=registry.proof(TOTAL))
    run_worker()
    assert "proof does not match" in error_of(job_id)


@pytest.mark.django_db(transaction=True)
def test_a_rotated_secret_key_is_accepted_from_the_fallbacks(forget):
    forget()
    old_proof = registry._proof(TOTAL, "the-key-before-rotation")
    refused = insert(TOTAL, proof=old_proof)
    run_worker()
    assert "proof does not match" in error_of(refused)
    accepted = insert(TOTAL, proof=old_proof)
    with override_settings(SECRET_KEY_FALLBACKS=["the-key-before-rotation"]):
        run_worker()
    assert Job.objects.get(pk=accepted).state == "SUCCESSFUL"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"{MODULE}.old_total", "declares no task 'old_total'"),
        (
            "testproject.example.gone.invoice_total",
            "module 'testproject.example.gone' cannot be imported",
        ),
    ],
)
def test_renamed_and_removed_tasks_fail_saying_so(path, expected):
    job_id = insert(path, proof=registry.proof(path))
    run_worker()
    assert expected in error_of(job_id)


@pytest.mark.django_db
def test_get_result_in_a_process_that_never_imported_the_task_imports_it(forget):
    result_id = billing.send_invoice.enqueue(7).id
    forget()
    result = get_backend().get_result(result_id)
    assert not isinstance(result.task, MissingTask)
    assert result.task.module_path == f"{MODULE}.send_invoice"
    assert result.task.queue_name == "emails"
    assert result.status == TaskResultStatus.READY


@pytest.mark.django_db
def test_get_result_of_a_task_that_cannot_be_found_returns_the_real_row():
    path = "testproject.example.gone.invoice_total"
    job_id = insert(path, proof="")
    now = timezone.now()
    Job.objects.filter(pk=job_id).update(
        state="FAILED",
        attempts=1,
        started_at=now,
        last_attempted_at=now,
        finished_at=now,
        worker_ids=["w:1:a"],
        errors=[
            {
                "exception_class_path": "builtins.ValueError",
                "message": "bad invoice",
                "traceback": "Traceback ...\nValueError: bad invoice\n",
                "attempt": 1,
                "worker_id": "w:1:a",
            }
        ],
    )
    result = get_backend().get_result(str(job_id))
    assert result.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in result.errors] == ["builtins.ValueError"]
    assert result.worker_ids == ["w:1:a"]
    assert result.args == [[1, 2]]
    placeholder = result.task
    assert isinstance(placeholder, MissingTask)
    assert placeholder.module_path == path
    for attempt in (
        lambda: placeholder.enqueue(1),
        lambda: placeholder.call(1),
        lambda: placeholder.using(priority=3).enqueue(),
        lambda: placeholder.func(1),
    ):
        with pytest.raises(InvalidTask, match="cannot be"):
            attempt()
    assert registry.get(path) is None  # a placeholder is never a task a worker runs
    # A successful one shows its return value too.
    Job.objects.filter(pk=job_id).update(state="SUCCESSFUL", return_value={"total": 3})
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"total": 3}


@pytest.mark.django_db
def test_the_start_up_check_warns_about_recent_jobs_no_worker_can_find():
    findable = billing.invoice_total.enqueue([1])
    renamed = insert(f"{MODULE}.old_total", proof=registry.proof(f"{MODULE}.old_total"))
    old = insert("testproject.example.gone.task", proof="")
    # Finished long ago: history, not a problem to warn about.
    Job.objects.filter(pk=old).update(
        state="SUCCESSFUL", enqueued_at=timezone.now() - timedelta(days=3)
    )
    messages = checks.check_enqueued_tasks_can_be_found(databases=["default"])
    assert [m.id for m in messages] == ["django_jobs.W003"]
    assert f"{MODULE}.old_total" in messages[0].msg
    assert f"the newest, {renamed}," in messages[0].msg
    assert "declares no task 'old_total'" in messages[0].msg
    assert findable.id not in messages[0].msg
    # Without the jobs database in the list, Django's non-database runs skip it.
    assert checks.check_enqueued_tasks_can_be_found(databases=None) == []


@pytest.mark.django_db
def test_runjobs_runs_the_database_checks_at_start(capsys):
    insert(f"{MODULE}.old_total", proof=registry.proof(f"{MODULE}.old_total"))
    # --skip-checks False: call_command skips checks unless asked, as Django's own runs do.
    call_command("runjobs", "--burst", "--pool", "threads", "--no-listen", skip_checks=False)
    assert "django_jobs.W003" in capsys.readouterr().err
