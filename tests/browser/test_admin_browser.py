"""The operations console in a real browser: log in, read the dashboard, retry a job."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from django_jobs.models import Job, Worker
from testproject.example import tasks
from tests.conftest import run_worker

from .conftest import screenshot

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def login(page, live_server, username: str, password: str = "pw") -> None:  # noqa: S107
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")


def superuser() -> str:
    User.objects.create_superuser("boss", "boss@example.com", "pw")
    return "boss"


def viewer() -> str:
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_job", "view_worker"]))
    return "viewer"


def failed_job() -> int:
    job_id = int(tasks.add.enqueue(20, 22).id)
    now = timezone.now()
    Job.objects.filter(pk=job_id).update(
        state="FAILED",
        attempts=1,
        started_at=now,
        last_attempted_at=now,
        finished_at=now,
        worker_ids=["web-1:4242:ab12cd"],
        errors=[
            {
                "exception_class_path": "builtins.ConnectionError",
                "message": "database at 10.0.0.5 went away",
                "traceback": 'Traceback (most recent call last):\n  File "tasks.py", line 14, '
                "in add\n    return remote.add(a, b)\nConnectionError: database at 10.0.0.5 "
                "went away\n",
                "worker_id": "web-1:4242:ab12cd",
                "attempt": 1,
                "failed_at": now.isoformat(),
            }
        ],
    )
    return job_id


FAILURES = [
    ("builtins.ConnectionError", "smtp.example.com:587 refused the connection"),
    ("builtins.TimeoutError", "the payment gateway did not answer within 30 s"),
    ("builtins.ValueError", "invoice 4411 has no lines"),
]


def busy_queue() -> None:
    """A believable last hour: successes spread over it, a few failures, work in flight."""
    now = timezone.now()
    results = tasks.add.enqueue_many([((n, n), {}) for n in range(180)])
    for n, result in enumerate(results):
        finished = now - timedelta(minutes=(n * 7) % 58, seconds=n % 50)
        state = "FAILED" if n % 23 == 0 else "SUCCESSFUL" if n < 160 else "READY"
        fields = {"state": state}
        if state != "READY":
            fields |= {
                "attempts": 1,
                "started_at": finished - timedelta(seconds=2),
                "last_attempted_at": finished - timedelta(seconds=2),
                "finished_at": finished,
                "worker_ids": ["web-1:4242:ab12cd"],
            }
        if state == "FAILED":
            # As the worker records a failure, so the dashboard shows what it shows live.
            kind, message = FAILURES[n % len(FAILURES)]
            fields["errors"] = [
                {
                    "exception_class_path": kind,
                    "message": message,
                    "traceback": f"Traceback (most recent call last):\n  ...\n{kind}: {message}\n",
                    "worker_id": "web-1:4242:ab12cd",
                    "attempt": 1,
                    "started_at": (finished - timedelta(seconds=2)).isoformat(),
                    "failed_at": finished.isoformat(),
                }
            ]
        Job.objects.filter(pk=int(result.id)).update(**fields)
    for q in ("emails", "slow"):
        for _ in range(3):
            tasks.add.using(queue_name=q).enqueue(1, 1)
    Worker.objects.create(id="web-1:4242:ab12cd", host="web-1", pid=4242, concurrency=8)
    running = Job.objects.filter(state="READY", queue_name="default").order_by("id")[:2]
    Job.objects.filter(pk__in=[j.pk for j in running]).update(
        state="RUNNING",
        attempts=1,
        started_at=now,
        last_attempted_at=now,
        worker_id="web-1:4242:ab12cd",
    )


def cell(page, queue: str, column: str) -> str:
    row = "tfoot tr" if queue == "" else f'tbody tr[data-queue="{queue}"]'
    return page.inner_text(f'#jobs-queues {row} td[data-count="{column}"]').strip()


def test_dashboard_numbers_match_the_table(page, live_server):
    busy_queue()
    login(page, live_server, superuser())
    page.click("text=Jobs")  # the app in the sidebar/index
    page.click("a:has-text('Dashboard')")
    page.wait_for_selector("#jobs-queues")
    for queue in ("default", "emails", "slow"):
        jobs = Job.objects.filter(queue_name=queue)
        ready = jobs.filter(state="READY", available_at__lte=timezone.now()).count()
        assert cell(page, queue, "ready") == str(ready)
        assert cell(page, queue, "running") == str(jobs.filter(state="RUNNING").count())
        assert cell(page, queue, "failed") == str(jobs.filter(state="FAILED").count())
        assert cell(page, queue, "successful") == str(jobs.filter(state="SUCCESSFUL").count())
    assert cell(page, "", "ready") == str(Job.objects.filter(state="READY").count())
    assert page.locator("svg.jobs-chart rect").count() > 20
    assert "1 live" in page.inner_text("#jobs-dashboard")
    failures = page.inner_text("#jobs-failures")
    assert "builtins.ConnectionError: smtp.example.com:587 refused the connection" in failures
    screenshot(page, "dashboard")


def test_retry_a_failed_job_and_watch_it_succeed(page, live_server):
    job_id = failed_job()
    login(page, live_server, superuser())
    page.goto(f"{live_server.url}/admin/django_jobs/job/{job_id}/change/")
    page.wait_for_selector(".jobs-attempts")
    assert "database at 10.0.0.5 went away" in page.inner_text(".jobs-attempts")
    page.click("summary:has-text('Traceback')")
    screenshot(page, "job-detail-failed")

    page.goto(f"{live_server.url}/admin/django_jobs/job/?state__exact=FAILED")
    page.check(f'input[name="_selected_action"][value="{job_id}"]')
    page.select_option("select[name=action]", "retry_jobs")
    page.click("button[name=index]")
    assert "1 job re-queued" in page.inner_text(".messagelist")
    assert Job.objects.get(pk=job_id).state == "READY"

    run_worker()
    page.goto(f"{live_server.url}/admin/django_jobs/job/{job_id}/change/")
    assert page.inner_text(".field-status .readonly").strip() == "Successful"
    assert "42" in page.inner_text(".field-return_value_json")
    screenshot(page, "job-detail")


def test_a_view_only_user_cannot_retry(page, live_server):
    job_id = failed_job()
    login(page, live_server, viewer())
    page.goto(f"{live_server.url}/admin/django_jobs/job/")
    options = page.locator("select[name=action] option").all_inner_texts()
    assert not any("Retry" in text for text in options)
    page.goto(f"{live_server.url}/admin/django_jobs/job/{job_id}/change/")
    page.wait_for_selector(".field-status")
    assert page.locator(".jobs-action-retry").count() == 0
    # Posting anyway, with a valid CSRF token from the page, is refused.
    token = page.locator("input[name=csrfmiddlewaretoken]").first.get_attribute("value")
    response = page.request.post(
        f"{live_server.url}/admin/django_jobs/job/{job_id}/retry/",
        form={"csrfmiddlewaretoken": token},
        headers={"Referer": page.url},
    )
    assert response.status == 403
    assert Job.objects.get(pk=job_id).state == "FAILED"
