"""What a new project sees: runjobs' own output, and --burst with a retry due soon."""

import re

import pytest
from django.core.management import call_command

from django_jobs.models import Job
from testproject.example import tasks
from testproject.example.models import LedgerEntry

pytestmark = pytest.mark.django_db(transaction=True)

#: Our format: "2026-12-02 12:50:08,123 INFO django_jobs.worker.executor [4127] Job ..."
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ django_jobs[.\w]* \[(\d+)\] ")


def test_a_project_without_logging_gets_readable_output_and_burst_waits_for_a_retry(
    start_worker,
):
    added = tasks.add.enqueue(1, 2)
    # Fails on its first attempt; the retry is due 0.5 to 1 s later.
    flaky = tasks.flaky_reports_attempt.enqueue()
    worker = start_worker(
        "--burst",
        "--concurrency",
        "1",
        env={"DJANGO_SETTINGS_MODULE": "testproject.settings_plain"},
    )
    assert worker.wait(timeout=60) == 0, worker.output()
    output = worker.output()
    flaky_row = Job.objects.get(pk=int(flaky.id))
    assert (flaky_row.state, flaky_row.attempts) == ("SUCCESSFUL", 2), output
    assert Job.objects.get(pk=int(added.id)).state == "SUCCESSFUL"
    # Django's unformatted "Task id=… state=…" lines are not between ours, ...
    assert "Task id=" not in output, output
    # ... and the children's lines (the job outcomes) look like the supervisor's.
    pids = {m.group(1) for line in output.splitlines() if (m := LINE.match(line))}
    job_lines = [line for line in output.splitlines() if f"Job {added.id} " in line]
    assert job_lines, output
    assert all(LINE.match(line) for line in job_lines), output
    assert str(worker.pid) in pids, output
    assert len(pids) >= 2, output  # the supervisor's lines and a child's


def test_runjobs_started_in_a_test_runs_its_children_on_the_test_database():
    # The child processes are spawned: they read settings afresh, and would connect to
    # the database named there instead of the test runner's test_… database.
    tasks.record.enqueue("written-by-a-child")
    call_command("runjobs", "--burst", "--concurrency", "1", "--no-listen", "-v", "0")
    job = Job.objects.get()
    assert job.state == "SUCCESSFUL", job.errors
    assert LedgerEntry.objects.filter(key="written-by-a-child").exists()
