"""The HTTP API through Django's test client against the real database: every answer is
checked against the OpenAPI description, and every refusal writes nothing."""

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone
from jsonschema import Draft202012Validator

from django_jobs.api.auth import digest
from django_jobs.models import ApiToken, Job
from testproject.example import tasks

pytestmark = pytest.mark.django_db

SPEC = json.loads((Path(__file__).parents[2] / "django_jobs/api/openapi.json").read_text())
BASE = "/jobs-api"


def conforms(body: dict, schema: str) -> None:
    """``body`` is what the OpenAPI description says ``schema`` is."""
    validator = Draft202012Validator({**SPEC, "$ref": f"#/components/schemas/{schema}"})
    errors = [e.message for e in validator.iter_errors(body)]
    assert not errors, errors


def make_token(name: str = "svc", tasks_scope: list | None = None, **flags: bool) -> str:
    token = f"djj_test-{name}-0123456789abcdefghijklmnop"
    ApiToken.objects.create(
        name=name,
        prefix=token[:10],
        digest=digest(token),
        tasks=["*"] if tasks_scope is None else tasks_scope,
        **{"can_read": True, "can_enqueue": True, "can_cancel": True, **flags},
    )
    return token


def call(method: str, path: str, token: str | None = None, body: object = None, **extra):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    client = extra.pop("client", None) or Client()
    data = json.dumps(body) if body is not None and not isinstance(body, str | bytes) else body
    kwargs = {"content_type": extra.pop("content_type", "application/json")}
    if data is not None:
        kwargs["data"] = data
    response = getattr(client, method)(BASE + path, **kwargs, **headers, **extra)
    return response, response.json() if response.content else None


def error_code(body: dict, schema_check: bool = True) -> str:
    if schema_check:
        conforms(body, "Error")
    return body["error"]["code"]


def test_the_metrics_view_names_the_scope_a_token_lacks():
    token = make_token("no-metrics")
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "missing_scope"
    assert error["message"] == (
        "The token 'no-metrics' may not scrape the metrics: it lacks the scope "
        "'can_scrape_metrics'. Turn on 'Can scrape metrics' for it in the admin (API "
        "tokens), or use a token that has it."
    )
    ApiToken.objects.filter(name="no-metrics").update(can_scrape_metrics=True)
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    assert b"django_jobs_gauges_up" in response.content


def test_enqueue_read_and_list_with_a_token():
    token = make_token()
    response, body = call("post", "/jobs/", token, {"task": "testproject.example.tasks.add",
                                                    "args": [2, 3]})  # fmt: skip
    assert response.status_code == 201, body
    conforms(body, "Job")
    assert body["state"] == "READY"
    assert body["args"] == [2, 3]
    assert response["Location"] == f"{BASE}/jobs/{body['id']}/"
    assert Job.objects.get(pk=int(body["id"])).task_path == "testproject.example.tasks.add"

    response, detail = call("get", f"/jobs/{body['id']}/", token)
    assert response.status_code == 200
    conforms(detail, "Job")

    for n in range(3):
        tasks.add.enqueue(n, n)
    response, page = call("get", "/jobs/?limit=2&task=testproject.example.tasks.add", token)
    assert response.status_code == 200
    conforms(page, "JobPage")
    assert len(page["jobs"]) == 2
    assert page["next"]
    _, rest = call("get", page["next"].removeprefix(BASE), token)
    assert len(rest["jobs"]) == 2
    ids = [int(j["id"]) for j in page["jobs"] + rest["jobs"]]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 4


def test_detail_hides_secrets_and_tracebacks():
    token = make_token()
    job = tasks.add.enqueue(1, 2)
    Job.objects.filter(pk=int(job.id)).update(
        kwargs={"api_key": "s3cret", "user": 1},
        errors=[{"exception_class_path": "x.E", "message": "m", "traceback": "T", "attempt": 1}],
    )
    _, body = call("get", f"/jobs/{job.id}/", token)
    assert body["kwargs"] == {"api_key": "********", "user": 1}
    assert "traceback" not in json.dumps(body["errors"])


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"task": "testproject.example.tasks.always_fails"}, 403, "task_not_allowed"),
        ({"task": "testproject.example.tasks.add", "args": [1]}, 400, "invalid_arguments"),
        ('{"task": "testproject.example.tasks.add", "args": [1, NaN]}', 400, "invalid_arguments"),
        ({"task": "testproject.example.tasks.add", "kwargs": {"c": 1}}, 400, "invalid_arguments"),
        ({"task": "testproject.example.tasks.add", "args": "1,2"}, 400, "invalid_arguments"),
        ({"task": "testproject.example.tasks.add", "nope": 1}, 400, "unknown_field"),
        ({"args": [1, 2]}, 400, "missing_task"),
        ({"task": "testproject.example.tasks.add", "args": [1, 2], "queue": "nope"}, 400,
         "invalid_option"),
        ({"task": "testproject.example.tasks.add", "args": [1, 2], "priority": 500}, 400,
         "invalid_option"),
        ({"task": "testproject.example.tasks.add", "args": [1, 2], "run_after": "tomorrow"},
         400, "invalid_run_after"),
        ({"task": "testproject.example.tasks.add", "args": [1, 2],
          "callback_url": "http://10.0.0.1/x"}, 403, "callback_not_allowed"),
        ({"task": "testproject.example.tasks.add", "args": [1, 2], "callback_url": "ftp://x"},
         400, "invalid_callback_url"),
        ([1, 2], 400, "invalid_body"),
        ("{not json", 400, "invalid_json"),
    ],
)  # fmt: skip
def test_bad_enqueues_say_why_and_write_nothing(body, status, code):
    token = make_token()
    response, answer = call("post", "/jobs/", token, body)
    assert response.status_code == status, answer
    assert error_code(answer) == code
    assert answer["error"]["message"]
    assert Job.objects.count() == 0


def test_an_allowed_task_that_is_not_declared(settings):
    settings.DJANGO_JOBS = {**settings.DJANGO_JOBS, "API_TASKS": ["gone.tasks.*"]}
    response, body = call("post", "/jobs/", make_token(), {"task": "gone.tasks.old"})
    assert (response.status_code, error_code(body)) == (400, "unknown_task")


def test_size_and_media_type_limits(settings):
    settings.DJANGO_JOBS = {**settings.DJANGO_JOBS, "API_MAX_BODY_BYTES": 100}
    token = make_token()
    big = {"task": "testproject.example.tasks.add", "args": ["x" * 200, 1]}
    response, body = call("post", "/jobs/", token, big)
    assert (response.status_code, error_code(body)) == (413, "body_too_large")
    response, body = call("post", "/jobs/", token, "task=x", content_type="text/plain")
    assert (response.status_code, error_code(body)) == (415, "unsupported_media_type")
    assert Job.objects.count() == 0


def test_authentication_and_scopes():
    job = tasks.add.enqueue(1, 1)
    response, body = call("get", f"/jobs/{job.id}/")
    assert (response.status_code, error_code(body)) == (401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")
    response, body = call("get", f"/jobs/{job.id}/", "djj_wrong")
    assert (response.status_code, error_code(body)) == (401, "invalid_token")
    response, body = call("get", "/jobs/", extra_auth := None, HTTP_AUTHORIZATION="Basic x")
    assert (response.status_code, error_code(body)) == (401, "bad_authorization")
    assert extra_auth is None

    reader = make_token("reader", can_enqueue=False, can_cancel=False)
    response, body = call("post", "/jobs/", reader, {"task": "testproject.example.tasks.add"})
    assert (response.status_code, error_code(body)) == (403, "missing_scope")
    response, body = call("post", f"/jobs/{job.id}/cancel/", reader)
    assert (response.status_code, error_code(body)) == (403, "missing_scope")

    expired = make_token("old")
    ApiToken.objects.filter(name="old").update(expires_at=timezone.now() - timedelta(1))
    response, body = call("get", "/jobs/", expired)
    assert (response.status_code, error_code(body)) == (401, "invalid_token")
    ApiToken.objects.filter(name="old").update(expires_at=None, is_active=False)
    assert call("get", "/jobs/", expired)[0].status_code == 401


def test_a_token_scoped_to_tasks_sees_and_touches_only_those():
    mine = tasks.sleep_for.enqueue(0)
    foreign = tasks.add.enqueue(1, 1)
    token = make_token("scoped", tasks_scope=["testproject.example.tasks.sleep_for"])
    assert call("get", f"/jobs/{mine.id}/", token)[0].status_code == 200
    response, body = call("get", f"/jobs/{foreign.id}/", token)
    assert (response.status_code, error_code(body)) == (404, "job_not_found")
    response, body = call("post", f"/jobs/{foreign.id}/cancel/", token)
    assert (response.status_code, error_code(body)) == (404, "job_not_found")
    assert Job.objects.get(pk=int(foreign.id)).state == "READY"
    _, page = call("get", "/jobs/", token)
    assert [j["id"] for j in page["jobs"]] == [mine.id]
    response, body = call("post", "/jobs/", token, {"task": "testproject.example.tasks.add",
                                                    "args": [1, 2]})  # fmt: skip
    assert (response.status_code, error_code(body)) == (403, "task_out_of_scope")
    _, listed = call("get", "/tasks/", token)
    conforms(listed, "TaskList")
    assert [t["task"] for t in listed["tasks"]] == ["testproject.example.tasks.sleep_for"]
    assert listed["tasks"][0]["parameters"][0]["name"] == "seconds"


def test_cancel_ends_a_waiting_job_and_asks_a_running_one_to_stop():
    token = make_token()
    waiting, running, finished = (tasks.add.enqueue(n, n) for n in range(3))
    Job.objects.filter(pk=int(running.id)).update(state="RUNNING")
    Job.objects.filter(pk=int(finished.id)).update(state="SUCCESSFUL", finished_at=timezone.now())
    response, body = call("post", f"/jobs/{waiting.id}/cancel/", token)
    assert response.status_code == 200
    conforms(body, "Job")
    assert body["state"] == "CANCELLED"
    assert body["cancelled_by"].startswith("API: token")
    response, body = call("post", f"/jobs/{running.id}/cancel/", token)
    assert response.status_code == 202
    conforms(body, "Job")
    assert body["state"] == "RUNNING"
    assert body["cancel_requested_at"] is not None
    response, body = call("post", f"/jobs/{finished.id}/cancel/", token)
    assert (response.status_code, error_code(body)) == (409, "not_cancellable")
    assert "already finished" in body["error"]["message"]
    response, body = call("post", "/jobs/99999999/cancel/", token)
    assert response.status_code == 404
    response, body = call("get", "/jobs/abc/", token)
    assert response.status_code == 404
    response, body = call("delete", f"/jobs/{waiting.id}/", token)
    assert (response.status_code, error_code(body)) == (405, "method_not_allowed")


def documented(method: str, path: str, status: int) -> bool:
    """Whether the OpenAPI description lists ``status`` for the operation."""
    return str(status) in SPEC["paths"][path][method]["responses"]


def test_the_tasks_list_gives_the_effective_max_attempts_and_needs_a_scope():
    token = make_token()
    response, listed = call("get", "/tasks/", token)
    conforms(listed, "TaskList")
    by_path = {t["task"]: t for t in listed["tasks"]}
    # add sets no max_attempts: its jobs get the backend's MAX_ATTEMPTS, as listed.
    job = Job.objects.get(pk=int(tasks.add.enqueue(1, 1).id))
    assert by_path["testproject.example.tasks.add"]["max_attempts"] == job.max_attempts
    assert isinstance(job.max_attempts, int)

    # Neither read nor enqueue (a token for cancels only): no catalogue of tasks.
    canceller = make_token("canceller", can_read=False, can_enqueue=False)
    response, body = call("get", "/tasks/", canceller)
    assert (response.status_code, error_code(body)) == (403, "missing_scope")
    assert body["error"]["message"].startswith(
        "The token 'canceller' may not list the tasks: it lacks the scope 'can_read' or "
        "'can_enqueue'."
    )
    assert documented("get", "/tasks/", 403)
    # An enqueue-only token may still list what it can enqueue.
    enqueuer = make_token("enqueuer", can_read=False, can_cancel=False)
    assert call("get", "/tasks/", enqueuer)[0].status_code == 200

    response, body = call("post", "/tasks/", token, {})
    assert (response.status_code, error_code(body)) == (405, "method_not_allowed")
    assert response["Allow"] == "GET"
    assert documented("get", "/tasks/", 405)
    response, body = call("delete", f"/jobs/{job.pk}/", token)
    assert (response.status_code, error_code(body)) == (405, "method_not_allowed")
    assert documented("get", "/jobs/{job_id}/", 405)


def test_list_filters_are_checked():
    token = make_token()
    for query, code in (
        ("state=DONE", "invalid_state"),
        ("limit=0", "invalid_parameter"),
        ("before=x", "invalid_parameter"),
        ("sort=id", "unknown_parameter"),
    ):
        response, body = call("get", f"/jobs/?{query}", token)
        assert (response.status_code, error_code(body)) == (400, code), query
    tasks.add.enqueue(1, 1)
    _, page = call("get", "/jobs/?state=READY&queue=default", token)
    assert len(page["jobs"]) == 1
    _, page = call("get", "/jobs/?state=FAILED", token)
    assert page == {"jobs": [], "next": None}


def test_a_session_needs_permissions_and_csrf():
    user = User.objects.create_user("ops", password="pw", is_staff=True)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response, body = call("get", "/jobs/", client=client)
    assert (response.status_code, error_code(body)) == (403, "missing_permission")
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_job", "add_job", "cancel_job"])
    )
    assert call("get", "/jobs/", client=client)[0].status_code == 200
    enqueue = {"task": "testproject.example.tasks.add", "args": [1, 2]}
    response, body = call("post", "/jobs/", body=enqueue, client=client)
    assert (response.status_code, error_code(body)) == (403, "csrf_failed")
    assert Job.objects.count() == 0
    client.get("/admin/")  # its logout form sets the CSRF cookie
    csrf = client.cookies["csrftoken"].value
    response, body = call("post", "/jobs/", body=enqueue, client=client, HTTP_X_CSRFTOKEN=csrf)
    assert response.status_code == 201, body


def test_the_description_is_served_and_valid():
    from openapi_spec_validator import validate

    response = Client().get(f"{BASE}/openapi.json")
    assert response.status_code == 200
    validate(json.loads(b"".join(response.streaming_content)))


def test_the_admin_shows_a_new_token_once_and_stores_its_digest():
    admin = User.objects.create_superuser("root", password="pw")
    client = Client()
    client.force_login(admin)
    response = client.post(
        "/admin/django_jobs/apitoken/add/",
        {"name": "billing", "can_read": "on", "can_enqueue": "on",
         "tasks": '["testproject.example.tasks.add"]', "is_active": "on"},
    )  # fmt: skip
    assert response.status_code == 200, response.content[:500]
    page = response.content.decode()
    token = page.split('id="django-jobs-new-token"', 1)[1].split(">", 1)[1].split("<", 1)[0]
    assert token.startswith("djj_")
    assert len(token) > 40
    stored = ApiToken.objects.get(name="billing")
    assert stored.digest == digest(token)
    assert token not in str(stored.__dict__)
    assert stored.created_by == "root"
    assert "no-store" in response["Cache-Control"]
    assert (
        token
        not in client.get(f"/admin/django_jobs/apitoken/{stored.pk}/change/").content.decode()
    )
    response, _ = call("post", "/jobs/", token, {"task": "testproject.example.tasks.add",
                                                 "args": [1, 2]})  # fmt: skip
    assert response.status_code == 201
    stored.refresh_from_db()
    assert stored.last_used_at is not None
