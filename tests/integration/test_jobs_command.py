"""``manage.py jobs``: status, list, retry, cancel, run-now, prune; JSON and exit codes."""

import json
import subprocess
import sys
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

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
    assert text.splitlines()[0].split()[:4] == ["queue", "ready", "delayed", "running"]


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
    ],
)
def test_usage_errors_exit_2(argv):
    done = subprocess.run(
        [sys.executable, "manage.py", "jobs", *argv], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert "error:" in done.stderr
