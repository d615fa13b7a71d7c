"""OpenTelemetry: a span for each enqueue and each job run, in the enqueuer's trace.

The enqueue span's context is injected (W3C ``traceparent``/``tracestate``, with the
globally configured propagator) into the job's ``trace_context`` column, and the worker
extracts it to start the run span as its child: a request's trace shows the jobs it
enqueued, however much later and wherever they ran. What the task does (queries, HTTP
calls, if instrumented) is traced under the run span.

Uses ``opentelemetry-api`` only. Without an SDK configured by the project, spans are
no-ops; configure the SDK (exporter, resource) in every process that enqueues or runs
jobs, as for any OpenTelemetry application.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from django.core.exceptions import ImproperlyConfigured

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised by the extras test
    raise ImproperlyConfigured(
        "DJANGO_JOBS['TRACING'] needs the opentelemetry-api package: "
        "pip install 'django-pg-jobs[otel]'."
    ) from exc

from .. import __version__, instrumentation

#: The instrumentation scope spans are reported under.
SCOPE = "django_jobs"
#: messaging.system: there is no registered value for a PostgreSQL job queue.
SYSTEM = "django_jobs"


def _tracer() -> trace.Tracer:
    # Looked up per use: the project may set its tracer provider after we were enabled.
    return trace.get_tracer(SCOPE, __version__)


@contextmanager
def trace_enqueue(call: instrumentation.Enqueue) -> Iterator[None]:
    """A PRODUCER span around the insert; its context is what the job row stores."""
    attributes = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.destination.name": call.queue_name,
        "django_jobs.task": call.task_path,
        "django_jobs.backend": call.backend,
    }
    if call.count > 1:
        attributes["messaging.batch.message_count"] = call.count
    with _tracer().start_as_current_span(
        f"enqueue {call.task_path}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        call.trace_context = carrier or None
        yield
        if len(call.job_ids) == 1:
            span.set_attribute("messaging.message.id", str(call.job_ids[0]))
            span.set_attribute("django_jobs.job_id", call.job_ids[0])


@contextmanager
def trace_run(run: instrumentation.JobRun) -> Iterator[None]:
    """A CONSUMER span around one attempt, child of the enqueue span stored on the job."""
    job = run.job
    parent = propagate.extract(job.trace_context) if job.trace_context else None
    with _tracer().start_as_current_span(
        f"run {job.task_path}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue_name,
            "messaging.message.id": str(job.id),
            "django_jobs.job_id": job.id,
            "django_jobs.task": job.task_path,
            "django_jobs.backend": job.backend,
            "django_jobs.attempt": job.attempts,
            "django_jobs.max_attempts": job.max_attempts,
        },
        # The executor catches the task's exception; it is recorded below, with the outcome.
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield
        span.set_attribute("django_jobs.outcome", run.outcome or "unknown")
        if run.exception is not None:
            span.record_exception(run.exception)
        if run.outcome in ("failed", "retrying"):
            error = run.error or {}
            span.set_status(
                Status(StatusCode.ERROR, f"{error.get('exception_class_path')}: "
                       f"{error.get('message', '')}"[:500])
            )  # fmt: skip


def enable() -> None:
    """Trace enqueues and job runs in this process from now on (idempotent)."""
    instrumentation.add_enqueue_wrapper(trace_enqueue)
    instrumentation.add_run_wrapper(trace_run)


def disable() -> None:
    """Stop tracing (tests)."""
    for wrappers, wrapper in (
        (instrumentation.enqueue_wrappers, trace_enqueue),
        (instrumentation.run_wrappers, trace_run),
    ):
        if wrapper in wrappers:
            wrappers.remove(wrapper)
