"""The admin's workflow pages, progress bars and cancel buttons."""

import json

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_jobs import chord, group
from django_jobs.models import Job
from django_jobs.protocol import jobs as protocol
from testproject.example import tasks

from .test_admin import messages_of, staff

pytestmark = pytest.mark.django_db


def a_failed_chord(members: int = 4):
    result = chord(
        group(tasks.add.s(i, i) for i in range(members)),
        tasks.total.s(),
        on_error=tasks.report_failure.s(),
    ).enqueue()
    first, second = (int(r.id) for r in result.results[:2])
    with connection.cursor() as cur:
        claimed = {
            j.id: j
            for j in protocol.claim(cur, worker_id="w", backend="default", queues=None, limit=2)
        }
        protocol.complete(cur, [protocol.Success(first, claimed[first].attempts, "0")])
        error = json.dumps({"exception_class_path": "builtins.ValueError", "message": "bad"})
        protocol.fail(cur, [protocol.Failure(second, claimed[second].attempts, error, None)])
    return result


def page(client, workflow_id) -> str:
    response = client.get(reverse("admin:django_jobs_workflow_change", args=[workflow_id]))
    assert response.status_code == 200
    return response.content.decode()


def test_the_workflow_page_shows_levels_counts_and_what_failed(admin_client):
    result = a_failed_chord()
    failed = result.results[1].id
    html = page(admin_client, result.id)
    assert "Workflow " + result.id in html
    assert "Level 1: 4 steps of add" in html
    assert "Level 2: 1 step of total" in html
    assert f'href="/admin/django_jobs/job/{failed}/change/">step {failed}</a>' in html
    assert "report_failure: ran as" in html
    assert "3 of 5 finished" in html  # a success, a failure, and the callback cancelled
    assert "Retry failed steps" in html
    assert "Cancel workflow" in html
    # Any step links to its workflow, and the steps are a filter of the job list.
    step_page = admin_client.get(reverse("admin:django_jobs_job_change", args=[failed]))
    assert f"Workflow {result.id}</a>" in step_page.content.decode()
    steps = admin_client.get(
        reverse("admin:django_jobs_job_changelist") + f"?workflow={result.id}"
    )
    assert len(steps.context["cl"].result_list) == 5


def test_the_workflow_page_reads_the_steps_once_whatever_their_number(admin_client):
    small, big = (
        chord(group(tasks.add.s(i, i) for i in range(n)), tasks.total.s()).enqueue()
        for n in (3, 300)
    )
    counts = []
    for result in (small, big):
        with CaptureQueriesContext(connection) as queries:
            html = page(admin_client, result.id)
        counts.append(len(queries))
    assert counts[0] == counts[1]
    assert "and 240 more" in html  # 300 members, 60 listed


def test_workflow_buttons_need_the_job_permissions(client):
    result = a_failed_chord()
    client.force_login(staff("view_job"))
    html = page(client, result.id)
    assert "Retry failed steps" not in html
    assert "Cancel workflow" not in html
    for name in ("cancel", "retry"):
        url = reverse(f"admin:django_jobs_workflow_{name}", args=[result.id])
        assert client.post(url).status_code == 403
    assert client.get(reverse("admin:django_jobs_workflow_changelist")).status_code == 200
    client.force_login(User.objects.create_user("no-jobs", password="pw", is_staff=True))
    assert client.get(reverse("admin:django_jobs_workflow_changelist")).status_code == 403


def test_retry_and_cancel_a_workflow_from_its_page(client):
    result = a_failed_chord()
    client.force_login(staff("view_job", "retry_job", "cancel_job"))
    url = reverse("admin:django_jobs_workflow_retry", args=[result.id])
    response = client.post(url, follow=True)
    assert messages_of(response) == [f"Workflow {result.id}: 2 jobs re-queued"]
    states = dict(Job.objects.filter(workflow_id=int(result.id)).values_list("id", "state"))
    assert states[int(result.results[1].id)] == "READY"
    assert states[int(result.results[-1].id)] == "BLOCKED"
    response = client.post(
        reverse("admin:django_jobs_workflow_cancel", args=[result.id]), follow=True
    )
    assert messages_of(response) == [f"Workflow {result.id}: 4 jobs cancelled"]
    assert Job.objects.get(pk=int(result.results[-1].id)).cancelled_by == "op (admin)"
    changelist = client.get(reverse("admin:django_jobs_workflow_changelist")).content.decode()
    assert "jobs-badge-cancelled" in changelist


def test_a_running_job_shows_its_progress_and_can_be_asked_to_stop(admin_client):
    job = Job.objects.get(pk=int(tasks.add.enqueue(1, 1).id))
    Job.objects.filter(pk=job.pk).update(
        state="RUNNING", attempts=1, worker_id="w",
        progress={"done": 3, "total": 10, "message": "third", "attempt": 1},
    )  # fmt: skip
    changelist = admin_client.get(reverse("admin:django_jobs_job_changelist")).content.decode()
    assert '<progress class="jobs-progress" value="3" max="10" title="third">' in changelist
    detail = admin_client.get(reverse("admin:django_jobs_job_change", args=[job.pk]))
    assert "Ask to stop" in detail.content.decode()
    response = admin_client.post(
        reverse("admin:django_jobs_job_cancel", args=[job.pk]), follow=True
    )
    assert messages_of(response) == ["0 jobs cancelled, 1 running job asked to stop"]
    job.refresh_from_db()
    assert (job.state, job.cancelled_by) == ("RUNNING", "admin (admin)")
