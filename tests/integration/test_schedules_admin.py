"""The schedule admin: form validation, next fire times (page and JSON), actions."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from django_jobs.models import Job, Schedule, ScheduleRun

pytestmark = pytest.mark.django_db

ADD = "testproject.example.tasks.add"
ADD_URL = reverse("admin:django_jobs_schedule_add")
LIST_URL = reverse("admin:django_jobs_schedule_changelist")
PREVIEW_URL = reverse("admin:django_jobs_schedule_preview")


def form_data(**overrides):
    data = {
        "name": "nightly",
        "task_path": ADD,
        "args": "[1, 2]",
        "kwargs": "{}",
        "enabled": "on",
        "cron": "30 2 * * *",
        "every": "",
        "every_unit": "60",
        "timezone": "Europe/Berlin",
        "backend": "default",
        "queue_name": "default",
        "priority": "0",
        "misfire_policy": "once",
        "max_catchup": "10",
    }
    data.update(overrides)
    return data


def errors_of(response) -> dict[str, list[str]]:
    assert response.status_code == 200, "expected the form again, with errors"
    form = response.context["adminform"].form
    return {k: [str(e) for e in v] for k, v in form.errors.items()}


def test_add_a_cron_schedule(admin_client):
    response = admin_client.post(ADD_URL, form_data())
    assert response.status_code == 302, errors_of(response)
    schedule = Schedule.objects.get(name="nightly")
    assert (schedule.cron, schedule.interval_seconds, schedule.source) == (
        "30 2 * * *",
        None,
        "admin",
    )
    assert schedule.next_run_at > timezone.now()
    local = schedule.next_run_at.astimezone(timezone.get_fixed_timezone(0))
    assert local.minute == 30


def test_add_an_interval_schedule(admin_client):
    response = admin_client.post(ADD_URL, form_data(cron="", every="15", every_unit="60"))
    assert response.status_code == 302, errors_of(response)
    schedule = Schedule.objects.get(name="nightly")
    assert (schedule.cron, schedule.interval_seconds) == ("", 900)
    assert timedelta(minutes=14) < schedule.next_run_at - timezone.now() <= timedelta(minutes=15)


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"cron": "61 2 * * *"}, "cron", "bad minute"),
        ({"cron": "@often"}, "cron", "Unknown cron nickname"),
        ({"cron": "", "every": ""}, "cron", "Give a cron expression or an interval"),
        ({"every": "5"}, "cron", "not both"),
        ({"timezone": "Mars/Olympus"}, "timezone", "Unknown time zone 'Mars/Olympus'"),
        ({"args": "[1, 2"}, "args", "Enter a valid JSON"),
        ({"args": '{"a": 1}'}, "args", "Enter a JSON list"),
        ({"kwargs": "[]"}, "kwargs", "Enter a JSON object"),
        ({"args": "[1, 2, 3]"}, "args", "do not fit"),
        ({"args": "[]", "kwargs": '{"c": 1}'}, "args", "do not fit"),
        ({"task_path": "os.system"}, "task_path", "Select a valid choice"),
        ({"queue_name": "nowhere"}, "queue_name", "nowhere"),
        ({"priority": "500"}, "__all__", "Priority must be between -100 and 100"),
    ],
)
def test_bad_input_gets_a_clear_error(admin_client, overrides, field, fragment):
    response = admin_client.post(ADD_URL, form_data(**overrides))
    errors = errors_of(response)
    assert any(fragment in message for message in errors.get(field, [])), errors
    assert not Schedule.objects.exists()


def test_the_change_page_shows_the_next_five_fire_times(admin_client):
    admin_client.post(ADD_URL, form_data())
    schedule = Schedule.objects.get()
    page = admin_client.get(reverse("admin:django_jobs_schedule_change", args=[schedule.pk]))
    html = page.content.decode()
    assert html.count("02:30:00 CE") == 5
    assert f'data-url="{PREVIEW_URL}"' in html
    assert "django_jobs/schedule_preview.js" in html
    assert "<script>" not in html.split("jobs-schedule-upcoming")[1].split("</div>")[0]


def test_preview_json_across_spring_forward(admin_client):
    response = admin_client.get(PREVIEW_URL, {"cron": "30 2 * * *", "timezone": "Europe/Berlin"})
    assert response.status_code == 200
    data = response.json()
    assert len(data["times"]) == 5
    assert data["explain"] == "At 02:30 every day"
    assert data["error"] == ""
    every = admin_client.get(PREVIEW_URL, {"every": "2", "unit": "3600", "timezone": "UTC"})
    assert every.json()["explain"] == "Every 7200 s"


def test_preview_json_explains_bad_input(admin_client):
    response = admin_client.get(PREVIEW_URL, {"cron": "* * *", "timezone": "Nowhere/X"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "five fields" in error
    assert "Unknown time zone" in error


def test_preview_needs_permission(client):
    User.objects.create_user("staff", password="pw", is_staff=True)
    client.login(username="staff", password="pw")
    assert client.get(PREVIEW_URL, {"cron": "@daily"}).status_code == 403


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def make(**fields) -> Schedule:
    fields.setdefault("name", "often")
    fields.setdefault("task_path", ADD)
    fields.setdefault("args", [1, 2])
    fields.setdefault("interval_seconds", 60)
    fields.setdefault("next_run_at", timezone.now() + timedelta(minutes=1))
    return Schedule.objects.create(**fields)


def test_run_now_action(admin_client):
    schedule = make()
    response = admin_client.post(
        LIST_URL, {"action": "run_now", "_selected_action": [schedule.pk]}, follow=True
    )
    job = Job.objects.get()
    assert (job.task_path, job.args) == (ADD, [1, 2])
    assert ScheduleRun.objects.get().manual
    assert messages_of(response) == [f"often: job {job.id} enqueued."]
    schedule.refresh_from_db()
    assert schedule.last_job_id == job.id
    listing = admin_client.get(LIST_URL).content.decode()
    assert reverse("admin:django_jobs_job_change", args=[job.id]) in listing


def test_run_now_of_a_broken_schedule_reports_the_problem(admin_client):
    schedule = make(task_path="gone.task")
    response = admin_client.post(
        LIST_URL, {"action": "run_now", "_selected_action": [schedule.pk]}, follow=True
    )
    [message] = messages_of(response)
    assert message.startswith("often: not run: Task 'gone.task' is not declared")
    assert not Job.objects.exists()


def test_run_now_needs_its_permission(client):
    schedule = make()
    user = User.objects.create_user("ops", password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_schedule", "change_schedule"])
    )
    client.login(username="ops", password="pw")
    page = client.get(LIST_URL).content.decode()
    assert 'value="run_now"' not in page
    client.post(LIST_URL, {"action": "run_now", "_selected_action": [schedule.pk]})
    assert not Job.objects.exists()
    user.user_permissions.add(Permission.objects.get(codename="run_schedule_now"))
    user = User.objects.get(pk=user.pk)  # drop the permission cache
    client.force_login(user)
    client.post(LIST_URL, {"action": "run_now", "_selected_action": [schedule.pk]})
    assert Job.objects.count() == 1


def test_enable_and_disable_actions(admin_client):
    schedule = make(enabled=False, next_run_at=timezone.now() - timedelta(days=2))
    response = admin_client.post(
        LIST_URL, {"action": "enable", "_selected_action": [schedule.pk]}, follow=True
    )
    assert messages_of(response) == ["1 schedule(s) enabled: often."]
    schedule.refresh_from_db()
    assert schedule.enabled
    assert schedule.next_run_at > timezone.now()  # missed runs while off are not owed
    admin_client.post(LIST_URL, {"action": "disable", "_selected_action": [schedule.pk]})
    schedule.refresh_from_db()
    assert not schedule.enabled


def test_broken_schedules_are_flagged_in_the_changelist(admin_client):
    make(name="fine")
    make(name="sick", last_error="Task 'x' is not declared in this process")
    page = admin_client.get(LIST_URL).content.decode()
    assert page.count("jobs-schedule-broken") == 1
    broken_only = admin_client.get(LIST_URL, {"health": "broken"}).content.decode()
    assert "sick" in broken_only
    assert ">fine<" not in broken_only


def test_settings_schedules_are_read_only_but_for_enabled(admin_client):
    schedule = make(name="declared", source="code", cron="@daily", interval_seconds=None)
    url = reverse("admin:django_jobs_schedule_change", args=[schedule.pk])
    page = admin_client.get(url)
    form = page.context["adminform"].form
    assert list(form.fields) == ["enabled"]
    response = admin_client.post(url, {"enabled": "", "name": "renamed", "cron": "@hourly"})
    assert response.status_code == 302
    schedule.refresh_from_db()
    assert (schedule.name, schedule.cron, schedule.enabled) == ("declared", "@daily", False)
    assert 'value="Delete"' not in page.content.decode()
    delete = reverse("admin:django_jobs_schedule_delete", args=[schedule.pk])
    assert admin_client.get(delete).status_code == 403


def test_bulk_delete_refuses_schedules_still_declared_in_settings(admin_client):
    declared = make(name="declared", source="code")
    mine = make(name="mine")
    leftover = make(name="leftover", source="removed")

    def delete(*schedules):
        pks = [s.pk for s in schedules]
        data = {"action": "delete_selected", "_selected_action": pks, "post": "yes"}
        return admin_client.post(LIST_URL, data)

    delete(declared, mine)
    assert Schedule.objects.count() == 3  # Django refuses the whole selection
    delete(mine, leftover)
    assert list(Schedule.objects.values_list("name", flat=True)) == ["declared"]


# ── secrets in a schedule's arguments ───────────────────────────────────────

SECRETS = {
    "password": "hunter2",
    "nested": {"API_KEY": "k-123", "list": [{"dsn": "postgres://u:pw@db/x"}]},
    "Authorization": "Bearer abc",
    "user_id": 7,
}
HIDDEN = ("hunter2", "k-123", "postgres://u:pw@db/x", "Bearer abc")


def test_view_only_staff_see_a_schedules_arguments_redacted(client):
    schedule = make(name="with-secrets", args=[], kwargs=SECRETS)
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_schedule"))
    client.force_login(user)
    page = client.get(reverse("admin:django_jobs_schedule_change", args=[schedule.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    for secret in HIDDEN:
        assert secret not in html
    assert "********" in html
    assert "&quot;user_id&quot;: 7" in html


def test_settings_schedules_show_their_arguments_redacted(admin_client):
    schedule = make(
        name="declared", source="code", cron="@daily", interval_seconds=None, kwargs=SECRETS
    )
    html = admin_client.get(
        reverse("admin:django_jobs_schedule_change", args=[schedule.pk])
    ).content.decode()
    for secret in HIDDEN:
        assert secret not in html
    assert "********" in html


def test_staff_who_may_change_a_schedule_edit_the_real_values_and_keep_them(admin_client):
    admin_client.post(ADD_URL, form_data(args="[]", kwargs='{"a": 1, "b": "hunter2"}'))
    schedule = Schedule.objects.get()
    url = reverse("admin:django_jobs_schedule_change", args=[schedule.pk])
    form = admin_client.get(url).context["adminform"].form
    assert "kwargs" in form.fields  # editable, with the real value
    assert "hunter2" in form["kwargs"].value()
    data = form_data(args="[]", kwargs=form["kwargs"].value(), priority="5")
    assert admin_client.post(url, data).status_code == 302
    schedule.refresh_from_db()
    assert (schedule.kwargs, schedule.priority) == ({"a": 1, "b": "hunter2"}, 5)


# ── intervals too long to store ─────────────────────────────────────────────


@pytest.mark.parametrize(
    ("every", "unit"), [("1000000", "3600"), ("1000000000000", "60"), ("10" * 40, "1")]
)
def test_an_interval_longer_than_ten_years_is_a_form_error(admin_client, every, unit):
    response = admin_client.post(ADD_URL, form_data(cron="", every=every, every_unit=unit))
    errors = errors_of(response)
    assert any("at most 315,360,000 seconds (10 years)" in m for m in errors["every"]), errors
    assert not Schedule.objects.exists()


def test_preview_of_an_interval_longer_than_ten_years_is_400(admin_client):
    response = admin_client.get(PREVIEW_URL, {"every": "99999999999", "unit": "3600"})
    assert response.status_code == 400
    assert "at most 315,360,000 seconds" in response.json()["error"]


def test_max_catchup_above_1000_is_a_form_error(admin_client):
    response = admin_client.post(ADD_URL, form_data(misfire_policy="all", max_catchup="1001"))
    assert errors_of(response) == {
        "max_catchup": ["Ensure this value is less than or equal to 1000."]
    }
    assert not Schedule.objects.exists()


# ── broken rows and gone backends in the actions; the preview's window ─────


def test_enabling_a_schedule_whose_timing_is_broken_reports_it(admin_client):
    schedule = make(
        enabled=False, cron="@daily", interval_seconds=None, timezone="Nowhere/Special"
    )
    fine = make(name="fine", enabled=False)
    response = admin_client.post(
        LIST_URL, {"action": "enable", "_selected_action": [schedule.pk, fine.pk]}, follow=True
    )
    assert response.status_code == 200
    [refused, done] = messages_of(response)
    assert refused.startswith("often: not enabled: Its timing cannot be read: Unknown time zone")
    assert done == "1 schedule(s) enabled: fine."
    schedule.refresh_from_db()
    assert not schedule.enabled


def test_run_now_and_enable_of_a_schedule_whose_backend_is_gone_report_it(admin_client):
    schedule = make(backend="removed", enabled=False)
    for action in ("run_now", "enable"):
        response = admin_client.post(
            LIST_URL, {"action": action, "_selected_action": [schedule.pk]}, follow=True
        )
        assert response.status_code == 200
        [message] = messages_of(response)
        assert "Its backend 'removed' is not in settings.TASKS any more" in message
    assert not Job.objects.exists()
    Schedule.objects.filter(pk=schedule.pk).update(enabled=True)
    response = admin_client.post(
        LIST_URL, {"action": "disable", "_selected_action": [schedule.pk]}, follow=True
    )
    assert messages_of(response) == ["1 schedule(s) disabled: often."]  # off always works


@pytest.mark.parametrize(
    "window",
    [
        {"start_at": "2030-01-01T00:00", "end_at": "2030-01-01T02:30"},
        {
            "start_at_0": "2030-01-01",
            "start_at_1": "00:00",
            "end_at_0": "2030-01-01",
            "end_at_1": "02:30",
        },
    ],
    ids=["iso", "split-widget"],
)
def test_preview_honours_the_start_and_end(admin_client, window):
    response = admin_client.get(
        PREVIEW_URL, {"every": "1", "unit": "3600", "timezone": "UTC", **window}
    )
    assert response.status_code == 200, response.json()
    assert response.json()["times"] == [
        "Tue 2030-01-01 00:00:00 UTC (UTC+0000)",
        "Tue 2030-01-01 01:00:00 UTC (UTC+0000)",
        "Tue 2030-01-01 02:00:00 UTC (UTC+0000)",
    ]


def test_preview_explains_a_bad_window(admin_client):
    bad_date = admin_client.get(PREVIEW_URL, {"cron": "@daily", "start_at_0": "soon"})
    assert bad_date.status_code == 400
    assert bad_date.json()["error"].startswith("Start at: Enter a valid date")
    backwards = admin_client.get(
        PREVIEW_URL,
        {"cron": "@daily", "start_at": "2030-01-02T00:00", "end_at": "2030-01-01T00:00"},
    )
    assert backwards.status_code == 400
    assert backwards.json()["error"] == "The end must be after the start."
