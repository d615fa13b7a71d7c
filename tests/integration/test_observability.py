"""Signals, metrics, traces and Sentry reports with an in-process worker against real rows."""

import json
from collections import defaultdict

import pytest
import sentry_sdk
from django.db import connection
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from django_jobs import metrics, signals
from django_jobs.console import operations
from django_jobs.integrations import sentry as jobs_sentry
from django_jobs.integrations import tracing
from django_jobs.metrics import gauges
from django_jobs.metrics.exposition import JobsCollector
from django_jobs.models import Job
from django_jobs.protocol import workers as worker_protocol
from django_jobs.tally import Tally
from testproject.example import tasks

from ..conftest import run_worker
from ..maintenance import rescue_all
from ..otel import exporter

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def received():
    """Every signal of ours, as (signal name, kwargs) in the order sent."""
    got: list[tuple[str, dict]] = []
    names = ("job_retrying", "job_snoozed", "job_rescued", "job_cancelled", "worker_started",
             "worker_stopped", "worker_lost")  # fmt: skip
    receivers = {}
    for name in names:

        def receiver(sender, name=name, **kwargs):
            kwargs.pop("signal")
            got.append((name, kwargs))

        receivers[name] = receiver
        getattr(signals, name).connect(receiver)
    yield got
    for name, receiver in receivers.items():
        getattr(signals, name).disconnect(receiver)


def test_our_signals_fire_with_their_arguments(received):
    tasks.fails_with.enqueue("ConnectionError")  # retried twice, then FAILED
    tasks.snooze_once.enqueue()
    cancelled = tasks.add.enqueue(1, 1)
    operations.cancel([int(cancelled.id)])
    worker = run_worker()
    for _ in range(20):  # the retries wait 10-20 ms each
        if not Job.objects.filter(state="READY").exists():
            break
        run_worker()
    kinds = defaultdict(list)
    for name, kwargs in received:
        kinds[name].append(kwargs)
    assert [k["error"]["exception_class_path"] for k in kinds["job_retrying"]] == [
        "builtins.ConnectionError", "builtins.ConnectionError"
    ]  # fmt: skip
    assert all(k["delay"] > 0 for k in kinds["job_retrying"])
    assert kinds["job_snoozed"][0]["task_result"].task.module_path.endswith("snooze_once")
    assert kinds["job_cancelled"] == [
        {"job_id": int(cancelled.id), "task_path": "testproject.example.tasks.add",
         "queue_name": "default", "backend": "default"}
    ]  # fmt: skip
    started = kinds["worker_started"][0]
    assert started["worker_id"] == worker.worker_id or started["worker_id"]
    assert kinds["worker_stopped"][0]["stats"]["claimed"] >= 1


def test_the_leader_announces_lost_workers_and_rescued_jobs_once(received):
    job = tasks.add.enqueue(1, 1)
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO django_jobs_worker (id, backend, host, pid, queues, concurrency, "
            "version, started_at, last_heartbeat) VALUES ('dead:1:a', 'default', 'dead', 1, "
            "'[]', 1, '', now() - interval '1 hour', now() - interval '1 hour')"
        )
        cur.execute(
            "UPDATE django_jobs_job SET state = 'RUNNING', attempts = 1, worker_id = 'dead:1:a' "
            "WHERE id = %s",
            [int(job.id)],
        )
    rescue_all()
    rescue_all()
    lost = [k for name, k in received if name == "worker_lost"]
    rescued = [k for name, k in received if name == "job_rescued"]
    assert [w["worker_id"] for w in lost] == ["dead:1:a"]
    assert rescued == [
        {"job_id": int(job.id), "task_path": "testproject.example.tasks.add",
         "queue_name": "default", "backend": "default", "attempt": 1,
         "lost_worker_id": "dead:1:a", "state": "FAILED"}
    ]  # fmt: skip


def test_a_receiver_that_raises_changes_nothing(caplog):
    def broken(sender, **kwargs):
        raise RuntimeError("monitoring is down")

    signals.job_cancelled.connect(broken)
    try:
        job = tasks.add.enqueue(1, 1)
        assert operations.cancel([int(job.id)]).moved == [int(job.id)]
    finally:
        signals.job_cancelled.disconnect(broken)
    assert "monitoring is down" in caplog.text


def scrape(collector: JobsCollector) -> dict[str, dict]:
    """name -> {labels tuple: value} from the text exposition of ``collector``."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(collector)
    samples: dict[str, dict] = defaultdict(dict)
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_count_what_the_worker_did():
    from django_jobs.tally import TALLY

    TALLY.clear()
    gauges.forget()
    metrics.enable()
    try:
        for n in range(3):
            tasks.add.enqueue(n, n)
        tasks.fails_with.enqueue("ValueError")
        tasks.sleep_for.using(run_after=None).enqueue(0)
        run_worker()
        tasks.add.enqueue(9, 9)  # waits: a gauge
        samples = scrape(JobsCollector(TALLY))
    finally:
        metrics.disable()
    add = (("backend", "default"), ("queue", "default"), ("task", "testproject.example.tasks.add"))
    assert samples["django_jobs_jobs_enqueued_total"][add] == 4
    assert samples["django_jobs_jobs_started_total"][add] == 3
    assert samples["django_jobs_jobs_succeeded_total"][add] == 3
    fails = (("backend", "default"), ("queue", "default"),
             ("task", "testproject.example.tasks.fails_with"))  # fmt: skip
    assert samples["django_jobs_jobs_failed_total"][fails] == 1
    assert samples["django_jobs_job_run_seconds_count"][add] == 3
    assert samples["django_jobs_job_queue_wait_seconds_count"][add] == 3
    inf = (*add[:1], ("le", "+Inf"), *add[1:])
    assert samples["django_jobs_job_run_seconds_bucket"][tuple(sorted(inf))] == 3
    assert samples["django_jobs_queue_ready_jobs"][(("queue", "default"),)] == 1
    assert samples["django_jobs_queue_ready_jobs"][(("queue", "emails"),)] == 0
    assert samples["django_jobs_queue_oldest_ready_age_seconds"][(("queue", "default"),)] >= 0
    assert samples["django_jobs_queue_counts_estimated"][()] == 0
    assert samples["django_jobs_gauges_up"][()] == 1


def test_worker_gauges_count_each_runjobs_process_once():
    # One runjobs --concurrency 2: the supervisor's row (its slots) and a row per child.
    with connection.cursor() as cur:
        for worker_id, concurrency in (("h:1:a", 2), ("h:1:a/2", 1), ("h:1:a/3", 1)):
            worker_protocol.register_worker(
                cur, worker_id=worker_id, backend="default", host="h", pid=1, queues=None,
                concurrency=concurrency, version="test",
            )  # fmt: skip
    gauges.forget()
    try:
        reading = gauges.read()
    finally:
        gauges.forget()
    assert reading.workers["default"] == (1, 2, 0)


def test_a_tally_merges_what_a_child_took():
    child, parent = Tally(), Tally()
    child.add("jobs_started", ("default", "q", "t"))
    child.observe("job_run_seconds", ("default", "q", "t"), 0.02)
    parent.merge(child.take())
    assert child.take() is None
    child.add("jobs_started", ("default", "q", "t"), 2)
    parent.merge(child.take())
    counts, histograms = parent.snapshot()
    assert counts[("jobs_started", ("default", "q", "t"))] == 3
    row = histograms[("job_run_seconds", ("default", "q", "t"))]
    assert sum(row[:-1]) == 1
    assert row[-1] == pytest.approx(0.02)


def test_a_request_trace_continues_into_its_job():
    memory = exporter()
    memory.clear()
    tracing.enable()
    try:
        with trace.get_tracer("test").start_as_current_span("GET /signup") as request_span:
            job = tasks.add.enqueue(2, 2)
        failing = tasks.fails_with.enqueue("ValueError")
        run_worker()
    finally:
        tracing.disable()
    spans = {s.name: s for s in memory.get_finished_spans()}
    enqueue = spans["enqueue testproject.example.tasks.add"]
    run = spans["run testproject.example.tasks.add"]
    trace_id = request_span.get_span_context().trace_id
    assert enqueue.context.trace_id == run.context.trace_id == trace_id
    assert enqueue.parent.span_id == request_span.get_span_context().span_id
    assert run.parent.span_id == enqueue.context.span_id
    assert enqueue.kind == SpanKind.PRODUCER
    assert run.kind == SpanKind.CONSUMER
    assert run.attributes["django_jobs.job_id"] == int(job.id)
    assert run.attributes["django_jobs.attempt"] == 1
    assert run.attributes["django_jobs.outcome"] == "succeeded"
    assert run.attributes["messaging.destination.name"] == "default"
    stored = Job.objects.get(pk=int(job.id)).trace_context
    assert stored["traceparent"].split("-")[1] == f"{trace_id:032x}"
    failed = spans["run testproject.example.tasks.fails_with"]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["django_jobs.outcome"] == "failed"
    assert failed.events[0].name == "exception"
    assert Job.objects.get(pk=int(failing.id)).trace_context["traceparent"]


class RecordingTransport(sentry_sdk.transport.Transport):
    def __init__(self, options=None):
        super().__init__(options)
        self.events: list[dict] = []

    def capture_envelope(self, envelope):
        for item in envelope.items:
            if item.type == "event":
                self.events.append(json.loads(item.payload.get_bytes()))


@pytest.fixture
def sentry_events():
    transport = RecordingTransport()
    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=transport,
                    default_integrations=False)  # fmt: skip
    jobs_sentry.enable()
    yield transport.events
    jobs_sentry.disable()
    sentry_sdk.init()  # no DSN: off again


def test_failed_jobs_are_reported_to_sentry_with_the_job(sentry_events, settings):
    job = tasks.fails_with.enqueue("ValueError")
    retried = tasks.fails_with.enqueue("ConnectionError")  # retries not reported by default
    # A secret among the arguments (the call then fails with a TypeError: fine here).
    Job.objects.filter(pk=int(job.id)).update(kwargs={"password": "hunter2"})
    run_worker()
    by_job: dict[str, list[dict]] = {}
    for reported in sentry_events:
        by_job.setdefault(reported["tags"]["django_jobs.job_id"], []).append(reported)
    assert len(by_job[job.id]) == 1
    # The retried job is reported only when its last attempt fails (if the burst worker
    # got that far), never for an attempt that will be retried.
    assert [e["tags"]["django_jobs.attempt"] for e in by_job.get(retried.id, [])] in ([], ["3"])
    event = by_job[job.id][0]
    assert event["exception"]["values"][-1]["type"] == "TypeError"
    assert event["tags"]["django_jobs.task"] == "testproject.example.tasks.fails_with"
    assert event["tags"]["django_jobs.job_id"] == job.id
    assert event["tags"]["django_jobs.attempt"] == "1"
    context = event["contexts"]["django_jobs job"]
    assert context["kwargs"] == {"password": "********"}
    assert context["args"] == ["ValueError"]

    sentry_events.clear()
    settings.DJANGO_JOBS = {**settings.DJANGO_JOBS, "SENTRY_REPORT_RETRIES": True}
    tasks.fails_with.enqueue("ConnectionError")
    run_worker()
    retries = [e for e in sentry_events if e["tags"]["django_jobs.will_retry"] == "true"]
    assert retries, sentry_events


def test_a_job_lost_with_its_worker_is_reported(sentry_events):
    job = tasks.add.enqueue(1, 1)
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE django_jobs_job SET state = 'RUNNING', attempts = 1, worker_id = 'gone' "
            "WHERE id = %s",
            [int(job.id)],
        )
    rescue_all()
    (event,) = sentry_events
    assert "its worker gone was lost" in event["message"]
    assert event["tags"]["django_jobs.job_id"] == job.id


def test_the_grafana_dashboard_uses_only_names_a_scrape_has():
    import re
    from pathlib import Path

    from prometheus_client import CollectorRegistry, generate_latest

    from django_jobs.tally import TALLY

    dashboard = (Path(__file__).parents[2] / "docs/howto/grafana-dashboard.json").read_text()
    used = set(re.findall(r"django_jobs_[a-z_]+", dashboard))
    assert len(used) > 15
    registry = CollectorRegistry()
    registry.register(JobsCollector(TALLY))
    exposed = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        exposed.update(family.name + s for s in suffixes.get(family.type, ("",)))
    assert used <= exposed, sorted(used - exposed)
