"""The admin as an operations console: lists, the job page, guarded actions, the dashboard."""

import html
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from django_jobs.admin.pagination import EstimatedCountPaginator
from django_jobs.console import flow, stats
from django_jobs.models import Job, Worker
from testproject.example import tasks

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:django_jobs_job_changelist"


def job(state: str = "READY", **fields) -> Job:
    """A job row in ``state`` (tests set states directly; the admin never does)."""
    result = tasks.add.enqueue(1, 2)
    now = timezone.now()
    defaults = {
        "FAILED": {"attempts": 1, "finished_at": now, "started_at": now},
        "SUCCESSFUL": {"attempts": 1, "finished_at": now, "started_at": now},
        "CANCELLED": {"finished_at": now},
        "RUNNING": {"attempts": 1, "started_at": now, "worker_id": "w1"},
    }.get(state, {})
    Job.objects.filter(pk=int(result.id)).update(state=state, **{**defaults, **fields})
    return Job.objects.get(pk=int(result.id))


def staff(*perms: str) -> User:
    user = User.objects.create_user("op", password="pw", is_staff=True)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return User.objects.get(pk=user.pk)  # fresh permission cache


@pytest.fixture
def viewer(client):
    client.force_login(staff("view_job", "view_worker"))
    return client


@pytest.fixture
def operator(client):
    client.force_login(
        staff("view_job", "retry_job", "cancel_job", "run_job_now", "delete_job", "view_worker")
    )
    return client


def post_action(client, action: str, *jobs: Job, **extra):
    return client.post(
        reverse(CHANGELIST),
        {"action": action, "index": 0, "_selected_action": [j.pk for j in jobs], **extra},
        follow=True,
    )


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# ── changelist ─────────────────────────────────────────────────────────────


def test_changelist_shows_badges_and_an_exact_count_on_a_small_table(admin_client):
    job("FAILED")
    job("SUCCESSFUL")
    response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="jobs-badge jobs-badge-failed"' in html
    assert "2 jobs" in html
    assert "about" not in html.split('class="paginator"')[1]


def test_filters_and_search_use_settings_and_the_registry(admin_client):
    failed = job("FAILED")
    job("READY")
    response = admin_client.get(reverse(CHANGELIST), {"state__exact": "FAILED", "finished": "1h"})
    assert [j.pk for j in response.context["cl"].result_list] == [failed.pk]
    # Queue choices come from TASKS["default"]["QUEUES"], tasks from the registry.
    html = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "?queue=slow" in html
    assert "?task=testproject.example.tasks.add" in html
    by_id = admin_client.get(reverse(CHANGELIST), {"q": str(failed.pk)})
    assert [j.pk for j in by_id.context["cl"].result_list] == [failed.pk]
    by_task = admin_client.get(reverse(CHANGELIST), {"q": "add"})
    assert len(by_task.context["cl"].result_list) == 2
    assert admin_client.get(reverse(CHANGELIST), {"q": "nothing"}).context["cl"].result_count == 0


def test_paginator_uses_the_planner_estimate_when_many_rows_are_expected(monkeypatch):
    for _ in range(3):
        job("SUCCESSFUL")
    exact = EstimatedCountPaginator(Job.objects.order_by("-id"), 2)
    assert (exact.count, exact.is_estimate) == (3, False)
    monkeypatch.setattr(EstimatedCountPaginator, "exact_below", 0)
    estimated = EstimatedCountPaginator(Job.objects.order_by("-id"), 2)
    assert estimated.count == stats.estimated_count(Job.objects.all())
    assert estimated.is_estimate


# ── actions, permissions ─────────────────────────────────────────────────────


def test_retry_action_reports_what_moved_and_why_the_rest_did_not(operator):
    failed, cancelled, running = job("FAILED"), job("CANCELLED"), job("RUNNING")
    response = post_action(operator, "retry_jobs", failed, cancelled, running)
    assert messages_of(response) == ["2 jobs re-queued, 1 skipped: still running"]
    states = dict(Job.objects.values_list("pk", "state"))
    assert states == {failed.pk: "READY", cancelled.pk: "READY", running.pk: "RUNNING"}


def test_cancel_and_run_now_actions(operator):
    ready, running = job("READY"), job("RUNNING")
    response = post_action(operator, "cancel_jobs", ready, running)
    assert messages_of(response) == ["1 job cancelled, 1 running job asked to stop"]
    running.refresh_from_db()
    assert (running.state, running.cancelled_by) == ("RUNNING", "op (admin)")
    assert Job.objects.get(pk=ready.pk).cancelled_by == "op (admin)"
    later = job("READY", available_at=timezone.now() + timedelta(hours=1))
    due = job("READY")
    response = post_action(operator, "run_jobs_now", later, due)
    assert messages_of(response) == ["1 job set to run now, 1 skipped: already due"]
    assert Job.objects.get(pk=later.pk).available_at <= timezone.now()


def test_delete_action_asks_first_and_keeps_running_jobs(operator):
    done, running = job("SUCCESSFUL"), job("RUNNING")
    choices = operator.get(reverse(CHANGELIST)).context["action_form"].fields["action"].choices
    assert [name for name, _ in choices if name] == [
        "retry_jobs",
        "cancel_jobs",
        "run_jobs_now",
        "delete_jobs",
    ]
    confirm = post_action(operator, "delete_jobs", done, running)
    assert b"1 running job will be kept" in confirm.content
    assert Job.objects.count() == 2
    response = post_action(operator, "delete_jobs", done, running, confirm="yes")
    assert messages_of(response) == ["1 job deleted, 1 skipped: still running"]
    assert list(Job.objects.values_list("pk", flat=True)) == [running.pk]


def hidden_fields(response) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for name, value in re.findall(
        r'<input type="hidden" name="(\w+)" value="([^"]*)"', response.content.decode()
    ):
        fields.setdefault(name, []).append(html.unescape(value))
    return fields


def test_deleting_more_jobs_than_one_form_may_post_fields(operator):
    now = timezone.now()
    Job.objects.bulk_create(
        Job(task_path="testproject.example.tasks.add", state="SUCCESSFUL", finished_at=now)
        for _ in range(1500)
    )
    newest = Job.objects.order_by("-id").first()
    # "Select all 1500" in the list: one checked row and select_across.
    confirm = operator.post(
        reverse(CHANGELIST),
        {"action": "delete_jobs", "index": 0, "select_across": 1, "_selected_action": newest.pk},
    )
    assert b"Delete 1500 jobs?" in confirm.content
    fields = hidden_fields(confirm)
    response = operator.post(reverse(CHANGELIST), fields, follow=True)
    assert response.status_code == 200  # was 400: over DATA_UPLOAD_MAX_NUMBER_FIELDS
    assert len(fields["_selected_action"]) == 1  # not one field per job
    assert messages_of(response) == ["1500 jobs deleted"]
    assert not Job.objects.exists()


def test_a_delete_confirmation_is_the_askers_and_cannot_be_altered(operator, django_user_model):
    done = job("SUCCESSFUL")
    fields = hidden_fields(post_action(operator, "delete_jobs", done))
    for token in (fields["selection"][0][:-2] + "xx", "", "[1, 2]"):
        response = operator.post(reverse(CHANGELIST), {**fields, "selection": token}, follow=True)
        [message] = messages_of(response)
        assert message.startswith("Nothing was deleted: this confirmation is not valid any more")
    other = django_user_model.objects.create_superuser("other", password="pw")
    operator.force_login(other)
    response = operator.post(reverse(CHANGELIST), fields, follow=True)
    assert messages_of(response)[0].startswith("Nothing was deleted")
    assert Job.objects.filter(pk=done.pk).exists()


def test_a_view_only_user_sees_but_cannot_act(viewer):
    failed = job("FAILED")
    page = viewer.get(reverse(CHANGELIST))
    assert page.status_code == 200
    assert "retry_jobs" not in page.content.decode()
    assert post_action(viewer, "retry_jobs", failed).status_code == 403
    detail = viewer.get(reverse("admin:django_jobs_job_change", args=[failed.pk]))
    assert detail.status_code == 200
    assert "jobs-action-retry" not in detail.content.decode()
    assert viewer.post(reverse("admin:django_jobs_job_retry", args=[failed.pk])).status_code == 403
    assert Job.objects.get(pk=failed.pk).state == "FAILED"


def test_each_action_needs_its_own_permission(client):
    client.force_login(staff("view_job", "cancel_job"))
    failed, ready = job("FAILED"), job("READY")
    assert post_action(client, "retry_jobs", failed).status_code == 403
    assert client.post(reverse("admin:django_jobs_job_retry", args=[failed.pk])).status_code == 403
    response = client.post(reverse("admin:django_jobs_job_cancel", args=[ready.pk]), follow=True)
    assert messages_of(response) == ["1 job cancelled"]


# ── the job's page ───────────────────────────────────────────────────────────


def test_job_page_shows_pretty_redacted_json_and_every_attempt(admin_client):
    result = tasks.add.enqueue(1, 2)
    Job.objects.filter(pk=int(result.id)).update(
        state="FAILED",
        attempts=2,
        max_attempts=2,
        kwargs={"user": {"api_token": "abc123", "name": "ann"}, "password": "hunter2"},
        worker_ids=["host:1:aa", "host:2:bb"],
        errors=[
            {
                "exception_class_path": "builtins.ValueError",
                "message": "first",
                "attempt": 1,
                "traceback": "Traceback: first",
                "worker_id": "host:1:aa",
                "failed_at": "2026-01-01",
            },
            {
                "exception_class_path": "builtins.KeyError",
                "message": "second",
                "attempt": 2,
                "traceback": "Traceback: second",
                "worker_id": "host:2:bb",
                "failed_at": "2026-01-02",
            },
        ],
        finished_at=timezone.now(),
    )
    html = admin_client.get(reverse("admin:django_jobs_job_change", args=[result.id])).content
    html = html.decode()
    assert "hunter2" not in html
    assert "abc123" not in html
    assert "&quot;name&quot;: &quot;ann&quot;" in html
    assert "Traceback: first" in html
    assert "Traceback: second" in html
    assert "host:1:aa" in html
    assert "builtins.KeyError" in html
    assert 'class="button jobs-action-retry"' in html


def test_redaction_follows_the_setting(admin_client, settings):
    settings.DJANGO_JOBS = {"ADMIN_REDACT": ""}
    result = tasks.add.using().enqueue(1, 2)
    Job.objects.filter(pk=int(result.id)).update(kwargs={"password": "hunter2"})
    html = admin_client.get(reverse("admin:django_jobs_job_change", args=[result.id])).content
    assert b"hunter2" in html


def test_job_page_buttons_post_through_the_protocol(operator):
    failed = job("FAILED")
    url = reverse("admin:django_jobs_job_retry", args=[failed.pk])
    assert operator.get(url).status_code == 405
    response = operator.post(url, follow=True)
    assert messages_of(response) == ["1 job re-queued"]
    assert Job.objects.get(pk=failed.pk).state == "READY"
    # A running job has no delete button, and its delete page is refused.
    running = job("RUNNING")
    page = operator.get(reverse("admin:django_jobs_job_change", args=[running.pk])).content
    assert b"jobs-delete-link" not in page
    assert (
        operator.get(reverse("admin:django_jobs_job_delete", args=[running.pk])).status_code == 403
    )


# ── workers and dashboard ────────────────────────────────────────────────────


def test_worker_list_flags_stale_workers_and_counts_running_jobs(admin_client):
    now = timezone.now()
    Worker.objects.create(id="w1", host="alpha", pid=1, concurrency=4, last_heartbeat=now)
    Worker.objects.create(
        id="w2", host="beta", pid=2, concurrency=1, last_heartbeat=now - timedelta(minutes=5)
    )
    job("RUNNING", worker_id="w1")
    job("RUNNING", worker_id="w1")
    response = admin_client.get(reverse("admin:django_jobs_worker_changelist"))
    rows = {w.id: w for w in response.context["cl"].result_list}
    assert rows["w1"].running_jobs == 2
    assert rows["w2"].running_jobs == 0
    html = response.content.decode()
    assert html.count(">stale<") == 1
    assert html.count(">alive<") == 1


def test_dashboard_numbers(admin_client):
    job("READY")
    job("READY", available_at=timezone.now() + timedelta(hours=1))
    job("RUNNING")
    job("FAILED")
    job("SUCCESSFUL")
    job("SUCCESSFUL")
    response = admin_client.get(reverse("admin:django_jobs_job_dashboard"))
    assert response.status_code == 200
    totals = response.context["totals"]
    assert (totals.runnable, totals.delayed, totals.running) == (1, 1, 1)
    assert (totals.finished["SUCCESSFUL"], totals.finished["FAILED"]) == (2, 1)
    assert sum(b.successful for b in response.context["overview"].per_minute) == 2
    html = response.content.decode()
    assert html.count('<svg class="jobs-chart"') == 2
    assert "django_jobs/dashboard.js" in html
    assert "<script>" not in html
    fragment = admin_client.get(reverse("admin:django_jobs_job_dashboard"), {"fragment": 1})
    assert b"<html" not in fragment.content
    assert b'id="jobs-queues"' in fragment.content


def test_dashboard_needs_the_view_permission(client):
    client.force_login(staff())
    assert client.get(reverse("admin:django_jobs_job_dashboard")).status_code == 403
    client.logout()
    assert client.get(reverse("admin:django_jobs_job_dashboard")).status_code == 302


def test_the_admin_index_lists_the_dashboard_for_those_who_may_view_jobs(admin_client, client):
    entry = reverse("admin:django_jobs_dashboard_changelist")
    assert entry.encode() in admin_client.get(reverse("admin:index")).content
    assert (
        entry.encode() in admin_client.get(reverse("admin:app_list", args=["django_jobs"])).content
    )
    response = admin_client.get(entry)
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:django_jobs_job_dashboard")

    client.force_login(staff())  # staff without any job permission
    assert entry.encode() not in client.get(reverse("admin:index")).content
    assert client.get(entry).status_code == 403


def test_dashboard_queries_read_indexes_not_the_whole_table():
    for _ in range(3):
        job("SUCCESSFUL")
    since = timezone.now() - timedelta(hours=1)
    with connection.cursor() as cur:
        cur.execute("ANALYZE django_jobs_job")
        # A tiny table is cheapest to scan; make the planner show the plan it uses at scale.
        cur.execute("SET LOCAL enable_seqscan = off")
        for query, params in (
            (stats.READY_BY_QUEUE, None),
            (flow.LIMITED_BY_RANGE, None),
            (flow.PARKED_BY_QUEUE, None),
            (stats.RUNNING_BY_QUEUE, None),
            (stats.FINISHED_SINCE, {"unit": "minute", "since": since}),
        ):
            cur.execute(f"EXPLAIN {query}", params)
            plan = "\n".join(row[0] for row in cur.fetchall())
            assert "Seq Scan" not in plan, plan


# ── odd input gets a page, not a 500 ─────────────────────────────────────────


@pytest.mark.parametrize("term", ["²", "٣", "99999999999999999999", "#99999999999999999999"])
def test_search_for_odd_numbers_finds_nothing_instead_of_failing(admin_client, term):
    job("FAILED")
    response = admin_client.get(reverse(CHANGELIST), {"q": term})
    assert response.status_code == 200
    assert response.context["cl"].result_count == 0


def test_estimated_count_of_an_empty_query_is_zero():
    assert stats.estimated_count(Job.objects.none()) == 0
    assert stats.estimated_count(Job.objects.filter(pk=99999999999999999999)) == 0
    assert EstimatedCountPaginator(Job.objects.none().order_by("-id"), 10).count == 0


@pytest.mark.parametrize("operation", ["retry", "cancel", "run_now"])
def test_an_operation_on_a_job_id_that_is_not_a_number_is_404(admin_client, operation):
    for object_id in ("abc", "99999999999999999999"):
        url = reverse(f"admin:django_jobs_job_{operation}", args=[object_id])
        assert admin_client.post(url).status_code == 404


@pytest.mark.django_db(transaction=True)
def test_job_page_gives_every_attempt_its_times_in_one_format(admin_client):
    from django_jobs.testing import run_jobs

    # Three failed attempts (retry_base_delay=0.01), recorded as the worker records them.
    result = tasks.fails_with.enqueue("ConnectionError")
    run_jobs(until=timedelta(minutes=1))
    page = admin_client.get(reverse("admin:django_jobs_job_change", args=[result.id]))
    text = page.content.decode()
    table = text[text.index("jobs-attempts") :]
    rows = re.findall(
        r"<td>(\d) of 3</td>\s*<td>failed</td>\s*<td>[^<]*</td>(.*?)</tr>", table, re.S
    )
    assert [n for n, _ in rows] == ["3", "2", "1"]
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    for _, cells in rows:
        started, ended, took = re.findall(r"<td>([^<]*)</td>", cells)[:3]
        assert re.fullmatch(stamp, started), cells  # attempt 2 too, not "-"
        assert re.fullmatch(stamp, ended), cells
        assert took.endswith(("ms", " s")), cells
    # The fields above the table use the same format, and no other.
    assert re.search(rf"<div class=\"readonly\">{stamp}</div>", text)
    assert not re.search(r"\d{1,2}, \d{4}, \d{1,2}:\d\d", text)  # "Dec. 2, 2026, 12:50 p.m."
    assert "Last attempt took" in text
    assert "Enqueued to finished" in text
