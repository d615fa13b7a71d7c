"""``manage.py jobs``: status, list, retry, cancel, run-now, prune; JSON and exit codes."""

import json
import re
import subprocess
import sys
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError
from django.utils import timezone

from django_jobs import chain
from django_jobs.console import operations
from django_jobs.models import Job
from testproject.example import tasks
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db


def jobs(*args: str) -> str:
    out = StringIO()
    call_command("jobs", *args, stdout=out)
    return out.getvalue()


def make(state: str, **fields) -> int:
    job_id = int(tasks.add.enqueue(1, 2).id)
    Job.objects.filter(pk=job_id).update(state=state, **fields)
    return job_id


def test_status_counts_per_queue():
    make("READY")
    make("READY", queue_name="emails")
    make("FAILED", finished_at=timezone.now())
    data = json.loads(jobs("status", "--json"))
    by_queue = {q["queue"]: q for q in data["queues"]}
    assert by_queue["default"]["ready"] == 1
    assert by_queue["emails"]["ready"] == 1
    assert by_queue["default"]["finished_in_window"]["FAILED"] == 1
    assert by_queue["slow"]["ready"] == 0  # configured queues show even when empty
    text = jobs("status")
    assert text.splitlines()[0].split()[:5] == ["queue", "ready", "delayed", "limited", "running"]


def test_list_filters_like_the_changelist():
    failed = make("FAILED")
    make("READY", queue_name="emails")
    rows = json.loads(jobs("list", "--state", "failed", "--json"))
    assert [r["id"] for r in rows] == [failed]
    rows = json.loads(jobs("--json", "list", "--queue", "emails", "--since", "1h", "--limit", "5"))
    assert [r["queue"] for r in rows] == ["emails"]
    assert json.loads(jobs("list", "--task", "nope.task", "--json")) == []


def test_retry_reports_and_exits_1_when_some_ids_are_skipped():
    failed, running = make("FAILED"), make("RUNNING")
    out = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("jobs", "retry", str(failed), str(running), "999999", stdout=out)
    assert raised.value.returncode == 1
    assert "1 job re-queued, 2 skipped" in out.getvalue()
    assert f"#{running}: still running" in out.getvalue()
    assert Job.objects.get(pk=failed).state == "READY"


def test_cancel_and_run_now_succeed_with_exit_0():
    ready = make("READY")
    later = make("READY", available_at=timezone.now() + timedelta(hours=1))
    assert json.loads(jobs("run-now", str(later), "--json"))["moved"] == [later]
    assert jobs("cancel", str(ready)).strip() == "1 job cancelled"


def test_prune_deletes_old_finished_jobs():
    make("SUCCESSFUL", finished_at=timezone.now() - timedelta(days=10))
    make("FAILED", finished_at=timezone.now() - timedelta(days=10))
    make("SUCCESSFUL", finished_at=timezone.now())
    assert json.loads(jobs("prune", "--older-than", "7d", "--state", "FAILED", "--json")) == {
        "deleted": 1
    }
    assert jobs("prune", "--older-than", "7d").strip() == "1 finished job deleted"
    assert Job.objects.count() == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["prune", "--older-than", "soon"],
        ["prune", "--older-than", "7d", "--state", "READY"],
        ["retry", "abc"],
        ["list", "--state", "lost"],
        [],
        # Values past what the database or the calendar can hold: usage errors, not
        # tracebacks (whose exit status 1 would read as "some ids were skipped").
        ["retry", "99999999999999999999"],
        ["list", "--since", "99999999999999d"],
        ["list", "--since", "2026-02-30"],
        ["list", "--limit", "99999999999999999999"],
        ["prune", "--older-than", "9" * 400],
    ],
)
def test_usage_errors_exit_2(argv):
    done = subprocess.run(
        [sys.executable, "manage.py", "jobs", *argv], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert "error:" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["retry", "99999999999999999999"], "job ids are at most 9223372036854775807"),
        (["list", "--since", "99999999999999d"], "at most 36500d (100 years)"),
        (["list", "--since", "2026-02-30"], "'2026-02-30' is not a valid date/time"),
        (["list", "--limit", "100001"], "must be at most 100000, got 100001"),
        (["prune", "--older-than", "9" * 400], "at most 36500d (100 years)"),
    ],
)
def test_usage_errors_say_what_was_wrong(argv, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        jobs(*argv)


def test_retry_of_more_ids_than_one_call_handles_reports_the_rest_and_exits_1():
    now = timezone.now()
    rows = Job.objects.bulk_create(
        Job(task_path="testproject.example.tasks.add", state="FAILED", finished_at=now)
        for _ in range(operations.MAX_IDS + 5)
    )
    ids = [str(j.pk) for j in rows]
    out = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("jobs", "retry", *ids, "--json", stdout=out)
    assert raised.value.returncode == 1
    assert "5 id(s) not considered (at most 10000 a call)" in str(raised.value)
    report = json.loads(out.getvalue())
    assert len(report["moved"]) == operations.MAX_IDS
    assert report["truncated"] == [int(i) for i in ids[-5:]]
    assert report["skipped"] == {}
    assert Job.objects.filter(state="READY").count() == operations.MAX_IDS
    text = StringIO()
    with pytest.raises(CommandError):
        call_command("jobs", "retry", *ids, stdout=text)
    assert f"5 id(s) past the first 10000 were not considered; run again with them: {ids[-5]}" in (
        text.getvalue()
    )


def test_a_database_failure_exits_3_not_1(monkeypatch):
    def broken(ids, using=None):
        raise OperationalError("connection refused")

    monkeypatch.setattr(operations, "retry", broken)
    with pytest.raises(CommandError, match="the database failed: OperationalError") as raised:
        jobs("retry", "1")
    assert raised.value.returncode == 3


def test_cancel_asks_a_running_job_to_stop_and_says_who():
    running = make("RUNNING", attempts=1, worker_id="w")
    done = make("SUCCESSFUL", finished_at=timezone.now())
    report = json.loads(jobs("cancel", str(running), "--json"))
    assert (report["moved"], report["stopping"]) == ([], [running])
    assert report["summary"] == "0 jobs cancelled, 1 running job asked to stop"
    assert Job.objects.get(pk=running).cancelled_by.endswith("(jobs command)")
    with pytest.raises(CommandError) as failed:
        jobs("cancel", str(done))
    assert failed.value.returncode == 1


def test_workflow_shows_cancels_and_retries_a_workflow():
    result = chain(tasks.add.s(1, 1), tasks.add.s(1)).enqueue()
    shown = json.loads(jobs("workflow", result.id, "--json"))
    assert (shown["status"], shown["steps"], shown["counts"]) == (
        "READY", 2, {"BLOCKED": 1, "READY": 1},
    )  # fmt: skip
    assert jobs("workflow", result.id).startswith(f"workflow {result.id} (add -> add): READY")
    assert jobs("workflow", result.id, "--cancel").strip() == "2 jobs cancelled"
    assert json.loads(jobs("workflow", result.id, "--json"))["status"] == "CANCELLED"
    assert jobs("workflow", result.id, "--retry-failed").strip() == "2 jobs re-queued"
    with pytest.raises(CommandError, match="no workflow 999999"):
        jobs("workflow", "999999")
