"""The dashboard, `jobs` and the admin read the job tables where the backend keeps them.

A second alias, ``jobs``, points at the same test database, and the backend is told to
use it (``OPTIONS["DATABASE"]``): every read of the job tables must go through it.
"""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connections
from django.db.utils import load_backend
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_jobs.backend import jobs_database
from django_jobs.console import operations
from django_jobs.models import Job

pytestmark = pytest.mark.django_db(transaction=True)

TASKS = {
    "default": {
        "BACKEND": "django_jobs.backend.JobsBackend",
        "QUEUES": ["default", "emails", "slow"],
        "OPTIONS": {"DATABASE": "jobs"},
    }
}


@pytest.fixture
def jobs_alias():
    """A connection under the alias ``jobs`` to the test database.

    Made by hand rather than added to DATABASES: Django's test case forbids aliases it
    was not told about, and allows connections it does not know.
    """
    settings_dict = {**connections["default"].settings_dict}
    wrapper = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, alias="jobs")
    connections._connections.jobs = wrapper
    try:
        with override_settings(TASKS=TASKS):
            yield wrapper
    finally:
        wrapper.close()
        delattr(connections._connections, "jobs")


def job_table_queries(captured) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if "django_jobs_" in q["sql"]]


def test_stats_default_to_the_backends_database(jobs_alias):
    assert jobs_database() == "jobs"


def test_dashboard_reads_the_backends_database(jobs_alias, admin_client):
    Job.objects.create(task_path="testproject.example.tasks.add", state="FAILED",
                       finished_at=timezone.now())  # fmt: skip
    with (
        CaptureQueriesContext(connections["default"]) as default,
        CaptureQueriesContext(jobs_alias) as jobs,
    ):
        response = admin_client.get(reverse("admin:django_jobs_job_dashboard"))
        lists = [
            admin_client.get(reverse(f"admin:django_jobs_{model}_changelist"))
            for model in ("job", "worker", "schedule")
        ]
    assert [r.status_code for r in (response, *lists)] == [200] * 4
    assert response.context["totals"].finished["FAILED"] == 1
    assert job_table_queries(default) == []
    assert job_table_queries(jobs)


def test_jobs_command_reads_and_writes_the_backends_database(jobs_alias):
    failed = Job.objects.create(task_path="testproject.example.tasks.add", state="FAILED",
                                finished_at=timezone.now())  # fmt: skip
    with (
        CaptureQueriesContext(connections["default"]) as default,
        CaptureQueriesContext(jobs_alias) as jobs,
    ):
        out = StringIO()
        call_command("jobs", "status", "--json", stdout=out)
        call_command("jobs", "list", "--json", stdout=out)
        report = operations.retry([failed.pk])
    assert report.moved == [failed.pk]
    assert json.loads(out.getvalue().split("\n[")[0])["queues"]
    assert job_table_queries(default) == []
    assert job_table_queries(jobs)
