"""The API's endpoints. Each answers JSON; each error says what was wrong and what to do.

Nothing is written before the whole request is checked: the body's size and JSON, the
task (declared, listed in ``DJANGO_JOBS["API_TASKS"]``, in the caller's scope), the
arguments against the function's signature, the options against the backend.
"""

import inspect
import json
from collections.abc import Callable
from fnmatch import fnmatchcase
from functools import wraps
from pathlib import Path
from typing import Any

from django.db import transaction
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt

from .. import policy, registry
from ..backend import JobsBackend, jobs_backends, jobs_database
from ..codec import call_problem
from ..compat import InvalidTask, Task
from ..conf import jobs_settings
from ..console import operations, stats
from ..models import Job, parse_job_id
from ..states import JobState
from ..task import callback_url_problem
from . import serialize
from .auth import Caller, authenticate
from .errors import ApiError, error_response

OPENAPI = Path(__file__).with_name("openapi.json")
#: Jobs per page of GET /jobs/, by default and at most.
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
ENQUEUE_FIELDS = ("task", "args", "kwargs", "queue", "priority", "run_after", "callback_url")

View = Callable[..., HttpResponse]


def endpoint(methods: tuple[str, ...]) -> Callable[[View], View]:
    """JSON errors, the allowed methods, and the caller (authenticated) for the view."""

    def decorate(view: View) -> View:
        @csrf_exempt  # tokens need none; sessions are checked in authenticate()
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                return error_response(
                    405,
                    "method_not_allowed",
                    f"{request.method} is not allowed here; use {' or '.join(methods)}.",
                    Allow=", ".join(methods),
                )
            try:
                caller = authenticate(request)
                return view(request, caller, *args, **kwargs)
            except ApiError as error:
                return error.response()

        return wrapper

    return decorate


# ── jobs ──────────────────────────────────────────────────────────────────────────


@endpoint(("GET", "POST"))
def jobs(request: HttpRequest, caller: Caller) -> HttpResponse:
    if request.method == "POST":
        return _enqueue(request, caller)
    return _list(request, caller)


@endpoint(("GET",))
def job(request: HttpRequest, caller: Caller, job_id: str) -> HttpResponse:
    caller.require("read")
    return JsonResponse(serialize.detail(_visible_job(caller, job_id)))


@endpoint(("POST",))
def cancel(request: HttpRequest, caller: Caller, job_id: str) -> HttpResponse:
    caller.require("cancel")
    found = _visible_job(caller, job_id)
    by = f"API: {caller.name}"
    report = operations.cancel([found.pk], using=found._state.db, by=by)
    if found.pk not in report.moved and found.pk not in report.stopping:
        reason = report.skipped.get(found.pk, "not cancellable")
        raise ApiError(
            409,
            "not_cancellable",
            f"Job {found.pk} was not cancelled: {reason}. A job that has finished has "
            "nothing left to cancel.",
        )
    found.refresh_from_db()
    # 202: a running job was asked to stop; it ends CANCELLED when its worker stops it.
    status = 202 if found.pk in report.stopping else 200
    return JsonResponse(serialize.detail(found), status=status)


def _visible_job(caller: Caller, job_id: str) -> Job:
    pk = parse_job_id(job_id)
    found = Job.objects.using(jobs_database()).filter(pk=pk).first() if pk else None
    # A job of a task outside the token's scope is "not found": its existence is not
    # the token's business.
    if found is None or not caller.covers(found.task_path):
        raise ApiError(404, "job_not_found", f"No job {job_id!r} that this {caller.name} may see.")
    return found


def _list(request: HttpRequest, caller: Caller) -> HttpResponse:
    caller.require("read")
    params = request.GET
    unknown = sorted(set(params) - {"state", "task", "queue", "limit", "before"})
    if unknown:
        raise ApiError(
            400,
            "unknown_parameter",
            f"Unknown query parameter(s) {', '.join(unknown)}; use state, task, queue, "
            "limit and before.",
        )
    queryset = Job.objects.using(jobs_database()).only(*serialize.SUMMARY_FIELDS)
    state = params.get("state")
    if state is not None:
        if state not in JobState.values:
            raise ApiError(
                400,
                "invalid_state",
                f"state={state!r} is not a job state; use one of {', '.join(JobState.values)}.",
            )
        queryset = queryset.filter(state=state)
    if params.get("queue"):
        queryset = queryset.filter(queue_name=params["queue"])
    tasks = _listable_tasks(caller, params.get("task"))
    if tasks is not None:
        # In the shape the (queue, task, id) index serves, not a walk of the whole table.
        queryset = stats.by_tasks(queryset, tasks) if tasks else queryset.none()
    limit = _whole(params.get("limit"), "limit", PAGE_SIZE, 1, MAX_PAGE_SIZE)
    before = params.get("before")
    if before is not None:
        pk = parse_job_id(before)
        if pk is None:
            raise ApiError(400, "invalid_parameter", f"before={before!r} is not a job id.")
        queryset = queryset.filter(pk__lt=pk)
    page = list(queryset.order_by("-pk")[:limit])
    body: dict[str, Any] = {"jobs": [serialize.summary(j) for j in page], "next": None}
    if len(page) == limit:
        query = params.copy()
        query["before"] = str(page[-1].pk)
        body["next"] = f"{reverse('django_jobs_api:jobs')}?{query.urlencode()}"
    return JsonResponse(body)


def _listable_tasks(caller: Caller, task: str | None) -> list[str] | None:
    """The task paths to filter on (None: no filter)."""
    if task is not None:
        return [task] if caller.covers(task) else []
    if caller.all_tasks:
        return None
    # A token scoped to some tasks sees the jobs of the declared tasks it covers.
    _discover()
    return [p for p in registry.registered_paths() if caller.covers(p)]


def _whole(text: str | None, name: str, default: int, low: int, high: int) -> int:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(
            400, "invalid_parameter", f"{name} must be a whole number {low}-{high}, got {text!r}."
        )
    return value


# ── enqueue ───────────────────────────────────────────────────────────────────────


def _discover() -> None:
    for backend in jobs_backends():
        registry.discover(backend.jobs_options.TASK_MODULES)


def allowed_over_http(path: str) -> bool:
    """Whether ``DJANGO_JOBS["API_TASKS"]`` lists ``path`` (exactly, or ``module.*``)."""
    return any(fnmatchcase(path, entry) for entry in jobs_settings().API_TASKS)


def _read_json(request: HttpRequest) -> dict[str, Any]:
    content_type = request.content_type or ""
    if content_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Send the body as JSON with 'Content-Type: application/json', not "
            f"{content_type or 'no content type'!r}.",
        )
    limit = jobs_settings().API_MAX_BODY_BYTES
    declared = request.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    raw = request.read(limit + 1)
    if len(raw) > limit:
        raise _too_large(len(raw), limit)
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise ApiError(
            400, "invalid_body", f"The body must be a JSON object, got {type(body).__name__}."
        )
    return body


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"The body is {size} bytes; at most {limit} are accepted "
        "(DJANGO_JOBS['API_MAX_BODY_BYTES']). Pass ids, not documents, as arguments.",
    )


def _enqueue(request: HttpRequest, caller: Caller) -> HttpResponse:
    caller.require("enqueue")
    body = _read_json(request)
    unknown = sorted(set(body) - set(ENQUEUE_FIELDS))
    if unknown:
        raise ApiError(
            400,
            "unknown_field",
            f"Unknown field(s) {', '.join(map(repr, unknown))}; the fields are "
            f"{', '.join(ENQUEUE_FIELDS)}.",
        )
    path = body.get("task")
    if not isinstance(path, str) or not path:
        raise ApiError(400, "missing_task", "'task' must be the dotted path of a task.")
    if not allowed_over_http(path):
        raise ApiError(
            403,
            "task_not_allowed",
            f"Task {path!r} cannot be enqueued over HTTP: it is not in DJANGO_JOBS['API_TASKS'].",
        )
    if not caller.covers(path):
        raise ApiError(
            403, "task_out_of_scope", f"The {caller.name} may not act on task {path!r}."
        )
    _discover()
    task = registry.get(path)
    if task is None:
        raise ApiError(
            400,
            "unknown_task",
            f"{path!r} is listed in DJANGO_JOBS['API_TASKS'] but is not a declared task "
            "(declare it with @task or @job in an installed app's tasks.py).",
        )
    args, kwargs = body.get("args", []), body.get("kwargs", {})
    problem = call_problem(task, args, kwargs)
    if problem:
        raise ApiError(400, "invalid_arguments", problem)
    bound = _with_options(task, body)
    backend = bound.get_backend()
    if not isinstance(backend, JobsBackend):
        raise ApiError(
            400,
            "unsupported_backend",
            f"Task {path!r} uses the backend {bound.backend!r}, which is not a django_jobs "
            "backend; only those store jobs the API can read back.",
        )
    with transaction.atomic(using=backend.database):
        result = bound.enqueue(*args, **kwargs)
    created = Job.objects.using(backend.database).get(pk=int(result.id))
    response = JsonResponse(serialize.detail(created), status=201)
    response["Location"] = reverse("django_jobs_api:job", args=[created.pk])
    return response


def _with_options(task: Task, body: dict[str, Any]) -> Task:
    """The task with the body's queue, priority, run_after and callback_url."""
    options: dict[str, Any] = {}
    if "queue" in body:
        options["queue_name"] = body["queue"]
    if "priority" in body:
        priority = body["priority"]
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ApiError(
                400, "invalid_priority", f"priority must be a whole number, got {priority!r}."
            )
        options["priority"] = priority
    if body.get("run_after") is not None:
        when = parse_datetime(str(body["run_after"]))
        if when is None or when.tzinfo is None:
            raise ApiError(
                400,
                "invalid_run_after",
                f"run_after must be an ISO 8601 time with a time zone, such as "
                f"'2030-01-01T09:00:00Z', got {body['run_after']!r}.",
            )
        options["run_after"] = when
    url = body.get("callback_url")
    if url is not None:
        problem = callback_url_problem(url)
        if problem:
            raise ApiError(400, "invalid_callback_url", f"callback_url {problem}.")
        allowed = jobs_settings().WEBHOOK_ALLOWED_URLS
        if not any(url.startswith(prefix) for prefix in allowed):
            raise ApiError(
                403,
                "callback_not_allowed",
                f"callback_url {url!r} does not start with one of "
                f"DJANGO_JOBS['WEBHOOK_ALLOWED_URLS'] ({', '.join(allowed) or 'none set'}): "
                "the worker POSTs only to receivers the project lists.",
            )
        options["callback_url"] = url
    if not options:
        return task
    try:
        return task.using(**options)
    except (InvalidTask, TypeError, ValueError) as exc:
        # Django's own message names the value and what is allowed (queue, priority).
        raise ApiError(400, "invalid_option", str(exc)) from None


# ── tasks, description ────────────────────────────────────────────────────────────


@endpoint(("GET",))
def tasks(request: HttpRequest, caller: Caller) -> HttpResponse:
    """The tasks the caller may act on, with their parameters (for a caller that may
    read or enqueue jobs)."""
    caller.require("read", "enqueue", action="list the tasks")
    _discover()
    listed = []
    for path in registry.registered_paths():
        if not (allowed_over_http(path) and caller.covers(path)):
            continue
        task = registry.get(path)
        listed.append(
            {
                "task": path,
                "queue": task.queue_name,
                "priority": task.priority,
                "max_attempts": _max_attempts(task),
                "parameters": _parameters(task),
                "doc": inspect.getdoc(task.func) or "",
            }
        )
    return JsonResponse({"tasks": listed})


def _max_attempts(task: Task) -> int | None:
    """The attempts its jobs get: the task's own, or else its backend's MAX_ATTEMPTS."""
    backend = task.get_backend()
    if isinstance(backend, JobsBackend):
        return policy.default_max_attempts(task, backend.jobs_options)
    return getattr(task, "max_attempts", None)


def _parameters(task: Task) -> list[dict[str, Any]]:
    try:
        signature = inspect.signature(task.func)
    except (TypeError, ValueError):
        return []
    found = list(signature.parameters.values())[1 if task.takes_context else 0 :]
    return [
        {
            "name": p.name,
            "kind": p.kind.name.lower(),
            "required": p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD),
            "annotation": None if p.annotation is p.empty else _annotation(p.annotation),
        }
        for p in found
    ]


def _annotation(value: Any) -> str:
    return value if isinstance(value, str) else getattr(value, "__name__", repr(value))


def openapi(request: HttpRequest) -> HttpResponse:
    """The OpenAPI description (no authentication: it describes, it reveals nothing)."""
    return FileResponse(OPENAPI.open("rb"), content_type="application/json")
