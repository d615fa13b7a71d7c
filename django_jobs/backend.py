"""``JobsBackend``: the django.tasks contract on top of the queue protocol.

This is the one place that translates between job rows and ``TaskResult``. It
enqueues through the caller's connection (so jobs commit or roll back with the
caller's transaction) and reads results from any process. It never runs jobs.
"""

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from functools import cached_property, lru_cache
from typing import Any

from django.core import checks
from django.db import connections, router
from django.utils import timezone

from . import instrumentation, policy, registry
from .codec import encode_arguments, encode_calls
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
    signal_wanted,
    task_backends,
    task_enqueued,
)
from .conf import JobsOptions, validate
from .protocol import jobs
from .states import to_task_status
from .task import JobsTask, MissingTask


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

    @cached_property
    def _validated(self) -> dict[int, Task]:
        # Task objects this backend has validated, by id (the object is kept, so its id
        # cannot be reused). Django's checks read the function's signature, which costs
        # more than the rest of an enqueue; a task object does not change once made.
        return {}

    def _validate_once(self, task: Task) -> None:
        if self._validated.get(id(task)) is not task:
            self.validate_task(task)
            if len(self._validated) > 10_000:  # tasks rebuilt again and again
                self._validated.clear()
            self._validated[id(task)] = task

    def new_job(self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> jobs.NewJob:
        """The row to insert for ``task(*args, **kwargs)``; raise TypeError for non-JSON."""
        args_json, kwargs_json = encode_arguments(task, args, kwargs)
        return jobs.NewJob(
            task_path=task.module_path,
            queue_name=task.queue_name,
            priority=task.priority,
            backend=self.alias,
            args_json=args_json,
            kwargs_json=kwargs_json,
            run_after=task.run_after,
            max_attempts=policy.default_max_attempts(task, self.jobs_options),
            callback_url=getattr(task, "callback_url", None),
            # Lets a worker that does not know the task import its module (registry.py).
            task_proof=registry.proof(task.module_path),
        )

    def enqueue(self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> TaskResult:
        self._validate_once(task)
        new_job = self.new_job(task, args, kwargs)
        if not instrumentation.enqueue_wrappers:
            with connections[self.database].cursor() as cursor:
                job_id, enqueued_at = jobs.enqueue(cursor, new_job)
            return self.enqueued(task, job_id, enqueued_at, args, kwargs)
        # Inside the integrations' wrappers (a tracing span), storing the trace context
        # they give with the job.
        call = self._enqueue_call(task, 1)
        with instrumentation.enqueueing(call), connections[self.database].cursor() as cursor:
            if call.trace_context:
                new_job = replace(new_job, trace_context_json=json.dumps(call.trace_context))
            job_id, enqueued_at = jobs.enqueue(cursor, new_job)
            call.job_ids = [job_id]
        return self.enqueued(task, job_id, enqueued_at, args, kwargs)

    def _enqueue_call(self, task: Task, count: int) -> instrumentation.Enqueue:
        return instrumentation.Enqueue(
            task_path=task.module_path,
            queue_name=task.queue_name,
            backend=self.alias,
            count=count,
        )

    def enqueue_many(
        self, calls: Sequence[tuple[Task, Sequence[Any], Mapping[str, Any]]]
    ) -> "EnqueuedResults":
        """Insert one job per ``(task, args, kwargs)`` with a single statement.

        The arguments of the whole batch travel as one JSON document, and the
        TaskResults are built when they are read (``task_enqueued`` is still sent for
        each job when anyone listens), so a batch costs a few microseconds per job.
        """
        specs: list[jobs.JobSpec] = []
        spec_numbers: dict[jobs.JobSpec, int] = {}
        by_task: dict[int, int] = {}
        numbered = []
        for task, args, kwargs in calls:
            number = by_task.get(id(task))
            if number is None:
                # A batch usually repeats one task: validate each distinct one once.
                self._validate_once(task)
                spec = jobs.JobSpec(
                    task_path=task.module_path,
                    queue_name=task.queue_name,
                    priority=task.priority,
                    backend=self.alias,
                    run_after=task.run_after,
                    max_attempts=policy.default_max_attempts(task, self.jobs_options),
                    callback_url=getattr(task, "callback_url", None),
                    task_proof=registry.proof(task.module_path),
                )
                number = spec_numbers.setdefault(spec, len(specs))
                if number == len(specs):
                    specs.append(spec)
                by_task[id(task)] = number
            numbered.append((task, args, kwargs, number))
        if not numbered:
            return EnqueuedResults(self, [], [], None)
        calls_json = encode_calls(numbered)
        if instrumentation.enqueue_wrappers and len(specs) == 1:
            # One task (the usual bulk call): one span for the batch, and its trace
            # context stored with each job.
            call = self._enqueue_call(numbered[0][0], len(numbered))
            with instrumentation.enqueueing(call):
                if call.trace_context:
                    context = json.dumps(call.trace_context)
                    specs = [replace(spec, trace_context_json=context) for spec in specs]
                ids, enqueued_at = self._insert_batch(specs, calls_json)
                call.job_ids = ids
        else:
            ids, enqueued_at = self._insert_batch(specs, calls_json)
        results = EnqueuedResults(self, numbered, ids, enqueued_at)
        if signal_wanted(task_enqueued, logging.DEBUG):
            for result in results:
                task_enqueued.send(type(self), task_result=result)
        return results

    def _insert_batch(self, specs: list[jobs.JobSpec], calls_json: str) -> tuple[list[int], Any]:
        with connections[self.database].cursor() as cursor:
            return jobs.enqueue_batch(cursor, specs, calls_json, now=timezone.now())

    def enqueued(
        self,
        task: Task,
        job_id: int,
        enqueued_at: Any,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        signal: bool = True,
    ) -> TaskResult:
        """The TaskResult of a job just written; sends ``task_enqueued`` for it."""
        result = TaskResult(
            task=task,
            id=str(job_id),
            status=TaskResultStatus.READY,
            enqueued_at=enqueued_at,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        if signal and signal_wanted(task_enqueued, logging.DEBUG):
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
            .values(*RESULT_FIELDS)
            .first()
        )
        if row is None:
            raise TaskResultDoesNotExist(result_id)
        return self.result_from_row(row)

    def result_from_row(self, row: Mapping[str, Any]) -> TaskResult:
        """Build the TaskResult for a job row (a dict, or a ClaimedJob's fields)."""
        task = self.task_for(row["task_path"], row)
        result = TaskResult(
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
        """Return the task for ``path`` with the row's queue, priority and run_after.

        A task this process cannot find (renamed, removed, or in a module whose job
        carries no valid proof) is a ``MissingTask``: the job's result can still be read.
        """
        proof = row.get("task_proof", "")
        task = registry.find(path, proof)
        if task is None:
            registry.discover(self.jobs_options.TASK_MODULES)
            task = registry.find(path, proof)
        if task is None:
            task = MissingTask.for_path(path, backend=self.alias)
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
        return messages or self._check_listen()

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


class EnqueuedResults(Sequence[TaskResult]):
    """The TaskResults of a bulk enqueue, in the order of the calls, built when read."""

    def __init__(
        self,
        backend: JobsBackend,
        calls: list[tuple[Task, Sequence[Any], Mapping[str, Any], int]],
        ids: list[int],
        enqueued_at: Any,
    ) -> None:
        self._backend = backend
        self._calls = calls
        self._ids = ids
        self._enqueued_at = enqueued_at
        self._results: list[TaskResult | None] = [None] * len(ids)

    def __len__(self) -> int:
        return len(self._ids)

    def _result(self, index: int) -> TaskResult:
        result = self._results[index]
        if result is None:
            task, args, kwargs, _ = self._calls[index]
            result = self._results[index] = self._backend.enqueued(
                task, self._ids[index], self._enqueued_at, args, kwargs, signal=False
            )
        return result

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self._result(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._result(index)

    def __iter__(self) -> Iterator[TaskResult]:
        return (self._result(i) for i in range(len(self)))

    def __repr__(self) -> str:
        return f"<EnqueuedResults: {len(self)} job(s)>"


#: The columns a TaskResult is built from: what a worker holds of a claimed job, and the
#: state, return value and end a stored row adds.
RESULT_FIELDS = (*jobs.JOB_COLUMNS, "state", "return_value", "finished_at")


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
