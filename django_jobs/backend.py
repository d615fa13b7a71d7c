"""``JobsBackend``: the django.tasks contract on top of the queue protocol.

This is the one place that translates between job rows and ``TaskResult``. It
enqueues through the caller's connection (so jobs commit or roll back with the
caller's transaction) and reads results from any process. It never runs jobs.
"""

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from typing import Any

from django.core import checks
from django.db import connections, router, transaction
from django.utils import timezone

from . import limits, policy, registry
from .codec import encode_arguments, preview
from .compat import (
    DEFAULT_TASK_BACKEND_ALIAS,
    BaseTaskBackend,
    InvalidTask,
    InvalidTaskBackend,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
    task_enqueued,
)
from .conf import JobsOptions, validate
from .protocol import jobs, unique
from .states import to_task_status
from .task import JobsTask


@dataclass(frozen=True, slots=True, kw_only=True)
class JobResult(TaskResult):
    """The TaskResult ``enqueue()`` returns, which says whether it enqueued anything."""

    #: True when the task is unique and a job with the same key already counted: nothing
    #: was enqueued, and this is that job's result (see ``was_duplicate``).
    duplicate: bool = False


def was_duplicate(result: TaskResult) -> bool:
    """Whether ``enqueue()`` returned an existing job's result instead of enqueueing one."""
    return bool(getattr(result, "duplicate", False))


class JobsBackend(BaseTaskBackend):
    """Store jobs in PostgreSQL; ``manage.py runjobs`` runs them."""

    task_class = JobsTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    # __init__ stays the base class's: Django builds backends lazily, per thread, and
    # sometimes twice at start-up, so constructing one must not touch the database.

    @cached_property
    def jobs_options(self) -> JobsOptions:
        return JobsOptions.from_dict(self.options)

    @property
    def database(self) -> str:
        return self.jobs_options.DATABASE

    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        # Every Task bound to this backend passes here when it is created, which makes
        # this the place to learn which functions are tasks (see registry.py).
        registry.register(task)

    def _new_job(
        self,
        task: Task,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        validated: bool = False,
    ) -> Any:
        if not validated:
            self.validate_task(task)
        return self.new_job(task, args, kwargs)

    def new_job(self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> jobs.NewJob:
        """The row to insert for ``task(*args, **kwargs)``; raise TypeError for non-JSON.

        A unique task's key and a concurrency key are worked out here, from the
        arguments; a key function that fails, or a key that cannot be one, raises
        TypeError or ValueError naming the task, and nothing is written.
        """
        args_json, kwargs_json = encode_arguments(task, args, kwargs)
        unique_key = concurrency_key = concurrency_limit = flow = None
        if getattr(task, "is_unique", False):
            unique_key = (
                _key_of(task, "unique_key", args, kwargs)
                if task.unique_key is not None
                else _arguments_digest(args_json, kwargs_json)
            )
        if getattr(task, "concurrency_key", None) is not None:
            concurrency_key = _key_of(task, "concurrency_key", args, kwargs)
            concurrency_limit = task.concurrency_limit or 1
        if (
            concurrency_key is not None
            or getattr(task, "is_limited", False)
            or task.queue_name in self.jobs_options.QUEUE_LIMITS
        ):
            flow = limits.FLOW_LIMITED
        return jobs.NewJob(
            task_path=task.module_path,
            queue_name=task.queue_name,
            priority=task.priority,
            backend=self.alias,
            args_json=args_json,
            kwargs_json=kwargs_json,
            run_after=task.run_after,
            max_attempts=policy.default_max_attempts(task, self.jobs_options),
            unique_key=unique_key,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
            flow=flow,
        )

    def enqueue(self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> TaskResult:
        new_job = self._new_job(task, args, kwargs)
        with connections[self.database].cursor() as cursor:
            inserted = self.insert(cursor, task, new_job)
        if isinstance(inserted, dict):
            return self.duplicate_of(inserted)
        return self.enqueued(task, *inserted, new_job)

    def insert(
        self, cursor: Any, task: Task, new_job: jobs.NewJob
    ) -> tuple[int, Any] | dict[str, Any]:
        """Write ``new_job`` on ``cursor``: (id, enqueued_at), or for a unique task whose
        key another job holds, that job's row (nothing was written)."""
        if new_job.unique_key is None:
            inserted = jobs.enqueue(cursor, new_job)
            assert inserted is not None  # only a unique key can be taken
            return inserted
        (outcome,) = unique.enqueue(
            cursor, [new_job], [_rule(task)], now=timezone.now(), columns=_HOLDER_FIELDS
        )
        return outcome

    def enqueue_many(
        self, calls: Sequence[tuple[Task, Sequence[Any], Mapping[str, Any]]]
    ) -> list[TaskResult]:
        """Insert one job per ``(task, args, kwargs)`` with a single statement."""
        # A batch usually repeats one task: validate each distinct one once.
        validated: set[int] = set()
        new_jobs = []
        for task, args, kwargs in calls:
            if id(task) not in validated:
                self.validate_task(task)
                validated.add(id(task))
            new_jobs.append(self._new_job(task, args, kwargs, validated=True))
        if not any(j.unique_key is not None for j in new_jobs):
            with connections[self.database].cursor() as cursor:
                rows: list[Any] = jobs.enqueue_many(cursor, new_jobs, now=timezone.now())
        else:
            # One savepoint: a batch is written whole or not at all.
            rules = [
                _rule(task) if j.unique_key else None
                for (task, _, _), j in zip(calls, new_jobs, strict=True)
            ]
            with (
                transaction.atomic(using=self.database),
                connections[self.database].cursor() as cursor,
            ):
                rows = unique.enqueue(
                    cursor, new_jobs, rules, now=timezone.now(), columns=_HOLDER_FIELDS
                )
        return [
            self.duplicate_of(row) if isinstance(row, dict) else self.enqueued(task, *row, new_job)
            for (task, _, _), row, new_job in zip(calls, rows, new_jobs, strict=True)
        ]

    def duplicate_of(self, row: Mapping[str, Any]) -> JobResult:
        """The result of the job a unique enqueue found in its place (no signal is sent)."""
        result = self.result_from_row(row, result_class=JobResult)
        object.__setattr__(result, "duplicate", True)
        return result

    def enqueued(
        self, task: Task, job_id: int, enqueued_at: Any, new_job: jobs.NewJob
    ) -> TaskResult:
        """The TaskResult of a job just written; sends ``task_enqueued`` for it."""
        result = JobResult(
            task=task,
            id=str(job_id),
            status=TaskResultStatus.READY,
            enqueued_at=enqueued_at,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=json.loads(new_job.args_json),
            kwargs=json.loads(new_job.kwargs_json),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        # Imported here, not at the top: Django may build a backend while the app registry
        # is still loading (a library's AppConfig.ready(), a models module that declares
        # tasks), and importing models then would fail. Reading a result needs them.
        from .models import Job, parse_job_id

        job_id = parse_job_id(result_id)
        if job_id is None:
            raise TaskResultDoesNotExist(result_id)
        row = (
            Job.objects.using(self.database)
            .filter(pk=job_id, backend=self.alias)
            .values(*_RESULT_FIELDS)
            .first()
        )
        if row is None:
            raise TaskResultDoesNotExist(result_id)
        return self.result_from_row(row)

    def result_from_row(
        self, row: Mapping[str, Any], result_class: type[TaskResult] = TaskResult
    ) -> TaskResult:
        """Build the TaskResult for a job row (a dict, or a ClaimedJob's fields)."""
        task = self.task_for(row["task_path"], row)
        result = result_class(
            task=task,
            id=str(row["id"]),
            status=to_task_status(row.get("state", "RUNNING")),
            enqueued_at=row["enqueued_at"],
            started_at=row["started_at"],
            finished_at=row.get("finished_at"),
            last_attempted_at=row["last_attempted_at"],
            args=row["args"],
            kwargs=row["kwargs"],
            backend=row["backend"],
            errors=[
                TaskError(exception_class_path=e["exception_class_path"], traceback=e["traceback"])
                for e in row["errors"]
            ],
            worker_ids=list(row["worker_ids"]),
        )
        if result.status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", row.get("return_value"))
        return result

    def task_for(self, path: str, row: Mapping[str, Any]) -> Task:
        """Return the declared task for ``path`` with the row's queue, priority and run_after."""
        task = registry.get(path)
        if task is None:
            registry.discover(self.jobs_options.TASK_MODULES)
            task = registry.get(path)
        if task is None:
            raise TaskResultDoesNotExist(
                f"Job {row['id']} exists, but its task {path!r} is not declared in this "
                "process, so no TaskResult can be built for it."
            )
        return _bound_task(
            task, row["priority"], row["queue_name"], row["backend"], row["run_after"]
        )

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        messages = [
            checks.Error(
                f"TASKS[{self.alias!r}]['OPTIONS']: {problem}.",
                hint="Fix the value in settings.TASKS; the defaults are listed in the "
                "django_jobs reference.",
                id="django_jobs.E001",
            )
            for problem in validate(self.options)
        ]
        if messages:
            return messages
        if self.database not in connections:
            messages.append(
                checks.Error(
                    f"TASKS[{self.alias!r}]['OPTIONS']['DATABASE'] is {self.database!r}, "
                    "which is not in settings.DATABASES.",
                    hint=f"Use one of: {', '.join(connections)}.",
                    id="django_jobs.E002",
                )
            )
        elif connections[self.database].vendor != "postgresql":
            messages.append(
                checks.Error(
                    f"The jobs database {self.database!r} uses the "
                    f"{connections[self.database].vendor!r} engine; django_jobs needs "
                    "PostgreSQL (13 or newer).",
                    hint="Point OPTIONS['DATABASE'] at a PostgreSQL database alias.",
                    id="django_jobs.E003",
                )
            )
        return messages or [*self._check_listen(), *self._check_queue_limits()]

    def _check_queue_limits(self) -> list[checks.CheckMessage]:
        # A misspelt queue name in QUEUE_LIMITS limits nothing, silently.
        unknown = sorted(set(self.jobs_options.QUEUE_LIMITS) - set(self.queues))
        if not unknown or not self.queues:
            return []
        return [
            checks.Warning(
                f"TASKS[{self.alias!r}]['OPTIONS']['QUEUE_LIMITS'] limits "
                f"{', '.join(map(repr, unknown))}, not in this backend's QUEUES "
                f"({', '.join(map(repr, sorted(self.queues)))}): no task can use "
                f"{'it' if len(unknown) == 1 else 'them'}, so the limit never applies.",
                hint="Correct the queue name, or add the queue to QUEUES.",
                id="django_jobs.W003",
            )
        ]

    def _check_listen(self) -> list[checks.CheckMessage]:
        options = self.jobs_options
        where = f"TASKS[{self.alias!r}]['OPTIONS']"
        if options.LISTEN_DATABASE is not None and options.LISTEN_DATABASE not in connections:
            return [
                checks.Error(
                    f"{where}['LISTEN_DATABASE'] is {options.LISTEN_DATABASE!r}, which is not "
                    "in settings.DATABASES.",
                    hint="Name a database alias that connects to PostgreSQL directly "
                    "(not through PgBouncer), or remove the option.",
                    id="django_jobs.E004",
                )
            ]
        # Django's documentation has transaction-pooling users set this; LISTEN through
        # such a pooler silently never hears a thing, so the workers fall back to polling.
        pooled = connections.settings[self.database].get("DISABLE_SERVER_SIDE_CURSORS")
        if options.LISTEN and options.LISTEN_DATABASE is None and pooled:
            return [
                checks.Warning(
                    f"The jobs database {self.database!r} has DISABLE_SERVER_SIDE_CURSORS, "
                    "which suggests a transaction-mode pooler such as PgBouncer; LISTEN does "
                    "not work through one, so idle workers would only notice new jobs when "
                    "they poll.",
                    hint=f"Set {where}['LISTEN_DATABASE'] to an alias that connects to "
                    f"PostgreSQL directly, or {where}['LISTEN'] = False to poll on purpose "
                    "(latency then is up to POLL_INTERVAL).",
                    id="django_jobs.W002",
                )
            ]
        return []


#: The columns a TaskResult is built from: what a worker holds of a claimed job, and the
#: state, return value and end a stored row adds.
_RESULT_FIELDS = (*jobs.JOB_COLUMNS, "state", "return_value", "finished_at")
#: What a unique enqueue reads of the job holding the key.
_HOLDER_FIELDS = (*_RESULT_FIELDS, "unique_key")


def _rule(task: Task) -> unique.Rule:
    return unique.Rule(counted=task.counted_states, unique_for=task.unique_seconds)


def _arguments_digest(args_json: str, kwargs_json: str) -> str:
    """The key of a unique task that names none: its arguments, in a canonical form."""
    canonical = json.dumps(
        [json.loads(args_json), json.loads(kwargs_json)],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return "args:" + hashlib.sha256(canonical.encode()).hexdigest()


def _key_of(task: Task, option: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """``task``'s ``option`` (a str, or a function of the arguments) as a checked key."""
    spec: str | Callable[..., Any] = getattr(task, option)
    what = f"{option} of task {task.module_path!r}"
    if not callable(spec):
        return limits.check_key(spec, what)
    try:
        value = spec(*args, **kwargs)
    except Exception as exc:
        raise ValueError(
            f"{what} raised {type(exc).__name__}: {exc} for args {preview(list(args))} and "
            f"kwargs {preview(dict(kwargs))}; nothing was enqueued."
        ) from exc
    return limits.check_key(value, f"{what} (returned for args {preview(list(args))})")


@lru_cache(maxsize=4096)
def _bound_task(task: Task, priority: int, queue_name: str, backend: str, run_after: Any) -> Task:
    # Cached because building a Task re-runs validation, and a worker does this per job.
    if (task.priority, task.queue_name, task.backend, task.run_after) == (
        priority,
        queue_name,
        backend,
        run_after,
    ):
        return task
    try:
        return replace(
            task, priority=priority, queue_name=queue_name, backend=backend, run_after=run_after
        )
    except (InvalidTask, InvalidTaskBackend):
        # The configuration changed since the job was enqueued (a queue was removed,
        # say). The row stays the truth; the declared task stands in for reporting.
        return task


def get_backend(alias: str = DEFAULT_TASK_BACKEND_ALIAS) -> JobsBackend:
    """Return ``TASKS[alias]``, which must be a jobs backend.

    Raise InvalidTaskBackend saying what is there instead: the one lookup the worker,
    the schedules, the admin and the commands share.
    """
    backend = task_backends[alias]
    if not isinstance(backend, JobsBackend):
        raise InvalidTaskBackend(
            f"TASKS[{alias!r}] uses {type(backend).__module__}.{type(backend).__qualname__}, "
            "not django_jobs.backend.JobsBackend; only a jobs backend stores jobs that "
            "runjobs can run."
        )
    return backend


def jobs_backends() -> list[JobsBackend]:
    """The configured jobs backends (the ``TASKS`` entries of JobsBackend)."""
    return [b for b in task_backends.all() if isinstance(b, JobsBackend)]


def jobs_database() -> str:
    """The database alias that holds the job tables, for callers that name no backend.

    The backends' ``OPTIONS["DATABASE"]`` when they agree on one alias; when they use
    several, the database router's choice for the Job model decides.
    """
    aliases = {b.database for b in jobs_backends()}
    if len(aliases) == 1:
        return aliases.pop()
    from .models import Job  # see get_result() for why models are imported late

    return router.db_for_write(Job)
