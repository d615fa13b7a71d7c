"""``JobsBackend``: the django.tasks contract on top of the queue protocol.

This is the one place that translates between job rows and ``TaskResult``. It
enqueues through the caller's connection (so jobs commit or roll back with the
caller's transaction) and reads results from any process. It never runs jobs.
"""

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from typing import Any

from django.core import checks
from django.db import connections, router, transaction
from django.db.backends.postgresql.base import TIMESTAMPTZ_OID, ServerBindingCursor
from django.db.backends.postgresql.psycopg_any import register_tzloader
from django.utils import timezone
from psycopg.pq import Format

from . import instrumentation, limits, policy, registry
from .codec import encode_arguments, encode_calls, preview
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
from .protocol import jobs, unique
from .states import to_task_status
from .task import JobsTask, MissingTask


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

    def uses_flow(self, task: Task) -> bool:
        """Whether jobs of ``task`` carry flow control: a unique key, or a limit."""
        return (
            getattr(task, "is_unique", False)
            or getattr(task, "concurrency_key", None) is not None
            or getattr(task, "is_limited", False)
            or task.queue_name in self.jobs_options.QUEUE_LIMITS
        )

    def new_job(self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> jobs.NewJob:
        """The row to insert for ``task(*args, **kwargs)``; raise TypeError for non-JSON.

        A unique task's key and a concurrency key are worked out here, from the
        arguments; a key function that fails, or a key that cannot be one, raises
        TypeError or ValueError naming the task, and nothing is written.
        """
        args_json, kwargs_json = encode_arguments(task, args, kwargs)
        unique_key = concurrency_key = concurrency_limit = flow = None
        if self.uses_flow(task):
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
            callback_url=getattr(task, "callback_url", None),
            # Lets a worker that does not know the task import its module (registry.py).
            task_proof=registry.proof(task.module_path),
            unique_key=unique_key,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
            flow=flow,
        )

    @cached_property
    def _plain(self) -> dict[int, tuple[Task, dict[str, Any] | None]]:
        # For each task enqueued one job at a time (the object is kept, so its id cannot
        # be reused): ENQUEUE's parameters that do not depend on the call, or None for a
        # task with flow control, which takes the general way.
        return {}

    def _plain_params(self, task: Task) -> dict[str, Any] | None:
        entry = self._plain.get(id(task))
        if entry is None or entry[0] is not task:
            self._validate_once(task)
            params = None if self.uses_flow(task) else jobs.plain_params(self._spec(task))
            if len(self._plain) > 10_000:  # tasks rebuilt again and again
                self._plain.clear()
            entry = self._plain[id(task)] = (task, params)
        return entry[1]

    def _spec(self, task: Task) -> jobs.JobSpec:
        """What every job of ``task`` shares (all of the row but its arguments)."""
        return jobs.JobSpec(
            task_path=task.module_path,
            queue_name=task.queue_name,
            priority=task.priority,
            backend=self.alias,
            run_after=task.run_after,
            max_attempts=policy.default_max_attempts(task, self.jobs_options),
            callback_url=getattr(task, "callback_url", None),
            task_proof=registry.proof(task.module_path),
        )

    def enqueue(self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> TaskResult:
        params = self._plain_params(task)
        if params is None or instrumentation.enqueue_wrappers:
            return self._enqueue(task, args, kwargs)
        # The usual job (no flow control, no tracing): what the task's jobs share was
        # worked out at its first enqueue; each call adds its arguments and the proof
        # (read again each time: tests change SECRET_KEY).
        args_json, kwargs_json = encode_arguments(task, args, kwargs)
        path = params["task_path"]
        with binding_cursor(connections[self.database]) as cursor:
            job_id, enqueued_at = jobs.enqueue_plain(
                cursor, params, args_json, kwargs_json, registry.proof(path)
            )
        return self.enqueued(task, job_id, enqueued_at, args, kwargs)

    def _enqueue(self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> TaskResult:
        self._validate_once(task)
        new_job = self.new_job(task, args, kwargs)
        if not instrumentation.enqueue_wrappers:
            with connections[self.database].cursor() as cursor:
                inserted = self.insert(cursor, task, new_job)
        else:
            # Inside the integrations' wrappers (a tracing span), storing the trace
            # context they give with the job.
            call = self._enqueue_call(task, 1)
            with (
                instrumentation.enqueueing(call),
                connections[self.database].cursor() as cursor,
            ):
                if call.trace_context:
                    trace = json.dumps(call.trace_context)
                    new_job = replace(new_job, trace_context_json=trace)
                inserted = self.insert(cursor, task, new_job)
                if not isinstance(inserted, dict):
                    call.job_ids = [inserted[0]]
        if isinstance(inserted, dict):
            return self.duplicate_of(inserted)
        return self.enqueued(task, *inserted, args, kwargs)

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

    def duplicate_of(self, row: Mapping[str, Any]) -> "JobResult":
        """The result of the job a unique enqueue found in its place (no signal is sent)."""
        result = self.result_from_row(row, result_class=JobResult)
        object.__setattr__(result, "duplicate", True)
        return result

    def _enqueue_call(self, task: Task, count: int) -> instrumentation.Enqueue:
        return instrumentation.Enqueue(
            task_path=task.module_path,
            queue_name=task.queue_name,
            backend=self.alias,
            count=count,
        )

    def enqueue_many(
        self, calls: Sequence[tuple[Task, Sequence[Any], Mapping[str, Any]]]
    ) -> Sequence[TaskResult]:
        """Insert one job per ``(task, args, kwargs)`` with a single statement.

        The arguments of the whole batch travel as one JSON document, and the
        TaskResults are built when they are read (``task_enqueued`` is still sent for
        each job when anyone listens), so a batch costs a few microseconds per job.
        A batch with flow control (a unique task, a limit) goes row by row through one
        statement instead, and is written whole or not at all.
        """
        flow: dict[int, bool] = {}
        for task, _, _ in calls:
            if id(task) not in flow:
                flow[id(task)] = self.uses_flow(task)
        if any(flow.values()):
            return self._enqueue_many_flow(calls)
        specs: list[jobs.JobSpec] = []
        spec_numbers: dict[jobs.JobSpec, int] = {}
        by_task: dict[int, int] = {}
        numbered = []
        for task, args, kwargs in calls:
            number = by_task.get(id(task))
            if number is None:
                # A batch usually repeats one task: validate each distinct one once.
                self._validate_once(task)
                spec = self._spec(task)
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

    def _enqueue_many_flow(
        self, calls: Sequence[tuple[Task, Sequence[Any], Mapping[str, Any]]]
    ) -> list[TaskResult]:
        new_jobs = []
        for task, args, kwargs in calls:
            self._validate_once(task)
            new_jobs.append(self.new_job(task, args, kwargs))
        rules = [
            _rule(task) if j.unique_key else None
            for (task, _, _), j in zip(calls, new_jobs, strict=True)
        ]
        # One savepoint: a batch is written whole or not at all.
        with transaction.atomic(using=self.database), connections[self.database].cursor() as cur:
            if any(rules):
                rows: list[Any] = unique.enqueue(
                    cur, new_jobs, rules, now=timezone.now(), columns=_HOLDER_FIELDS
                )
            else:
                rows = jobs.enqueue_many(cur, new_jobs, now=timezone.now())
        return [
            self.duplicate_of(row)
            if isinstance(row, dict)
            else self.enqueued(task, *row, args, kwargs)
            for (task, args, kwargs), row in zip(calls, rows, strict=True)
        ]

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
        result = JobResult(
            task=task,
            id=str(job_id),
            status=TaskResultStatus.READY,
            enqueued_at=enqueued_at,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            # TaskResult copies them into JSON's types itself (normalize_json).
            args=args,
            kwargs=kwargs,
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
                id="django_jobs.W004",
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

    def __add__(self, other: Any) -> list[TaskResult]:
        # Code written for the list enqueue_many() once returned (results + more).
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return [*self, *other]

    def __radd__(self, other: Any) -> list[TaskResult]:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return [*other, *self]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EnqueuedResults | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compared by content, like a list

    def __repr__(self) -> str:
        return f"<EnqueuedResults: {len(self)} job(s)>"


#: The columns a TaskResult is built from: what a worker holds of a claimed job, and the
#: state, return value and end a stored row adds.
RESULT_FIELDS = (*jobs.JOB_COLUMNS, "state", "return_value", "finished_at")
#: What a unique enqueue reads of the job holding the key.
_HOLDER_FIELDS = (*RESULT_FIELDS, "unique_key")


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


def binding_cursor(connection: Any) -> Any:
    """A cursor on ``connection`` (the caller's, so in the caller's transaction) that
    binds parameters server-side.

    Django's psycopg cursors bind client-side unless ``OPTIONS["server_side_binding"]``
    is set: psycopg then quotes each parameter into the statement's text in Python,
    which for ENQUEUE's eleven parameters came to about a tenth of what an ``enqueue()``
    in ``atomic()`` runs in this process (docs/performance.md, S2). Used for ENQUEUE
    only, a statement whose parameters all carry casts. This is the cursor Django's
    ``connection.cursor()`` makes, step for step (health check, error translation, the
    time zone of the loaded datetimes, the wrapper that runs execute wrappers and logs
    queries under DEBUG), with the cursor class Django uses for that option. Nothing is
    prepared (Django's ``prepare_threshold`` stays), so poolers in transaction mode work
    as before. A connection not open yet takes ``connection.cursor()``.
    """
    raw = connection.connection
    if raw is None or connection.vendor != "postgresql":
        return connection.cursor()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw = connection.connection
        cursor = ServerBindingCursor(raw)
        zone = connection.timezone
        if zone != raw.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT).timezone:
            register_tzloader(zone, cursor)
        connection.validate_thread_sharing()
        if connection.queries_logged:
            return connection.make_debug_cursor(cursor)
        return connection.make_cursor(cursor)


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
