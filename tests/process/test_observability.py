"""A real ``runjobs --metrics-port``: scraped and parsed, its webhooks received and
verified, and the trace its children continue, all from one worker run."""

import json
import signal
import socket
import time
import urllib.request

import pytest
from opentelemetry import trace
from prometheus_client.parser import text_string_to_metric_families

from django_jobs import cancel, job_info
from django_jobs.integrations import tracing
from django_jobs.metrics import gauges
from django_jobs.models import Job, WebhookDelivery, Worker
from django_jobs.webhooks import signing
from django_jobs.worker.child import TALLY_EVERY
from django_jobs.worker.runner import Runner
from testproject.example import tasks

from ..conftest import wait_for
from ..otel import exporter
from ..receiver import Receiver

SECRET = "test-only-webhook-secret-0123456789"
DEFAULT = {"backend": "default", "queue": "default"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(samples: dict, name: str, **labels: str) -> float | None:
    for found, number in samples.get(name, []):
        if all(found.get(k) == v for k, v in labels.items()):
            return number
    return None


@pytest.mark.timeout(90)
def test_a_worker_serves_metrics_delivers_webhooks_and_continues_traces(start_worker, tmp_path):
    receiver = Receiver().start()
    trace_file = tmp_path / "spans.jsonl"
    memory = exporter()
    tracing.enable()
    try:
        with trace.get_tracer("test").start_as_current_span("POST /orders") as request_span:
            traced = tasks.add.enqueue(40, 2)
        for n in range(20):
            tasks.add.enqueue(n, n)
        tasks.fails_with.enqueue("ValueError")
        tasks.fails_with.enqueue("ConnectionError")  # 3 attempts, 10-20 ms apart
        tasks.snooze_once.enqueue()
        hooked = tasks.add.using(callback_url=f"{receiver.url}/done").enqueue(1, 2)
    finally:
        tracing.disable()
    assert memory.get_finished_spans()

    port = free_port()
    worker = start_worker(
        "--concurrency", "2", "--metrics-port", str(port), "--metrics-address", "127.0.0.1",
        env={"JOBS_TRACING": "true", "JOBS_TRACE_FILE": str(trace_file)},
    )  # fmt: skip
    add = {**DEFAULT, "task": "testproject.example.tasks.add"}
    fails = {**DEFAULT, "task": "testproject.example.tasks.fails_with"}
    # Each child registers a row of its own ("<supervisor id>/<pid>"): the worker gauges
    # must count the one runjobs process and its 2 slots once they are all there.
    wait_for(
        lambda: Worker.objects.filter(id__contains="/").count() == 2, 30,
        "both children to register",
    )  # fmt: skip
    children_registered = time.monotonic()

    def counted() -> dict | None:
        try:
            samples = scrape(port)
        except OSError:
            return None
        # Children hand their counts over once a second: wait for the last of them.
        # The gauges are cached for a few seconds: also wait for a reading taken after
        # the children registered.
        done = (
            value(samples, "django_jobs_jobs_started_total", **add) == 22
            and value(samples, "django_jobs_jobs_failed_total", **fails) == 2
            and time.monotonic() > children_registered + gauges.TTL + 0.5
        )
        return samples if done else None

    samples = wait_for(counted, 45, "the worker's metrics to count every job", interval=0.3)
    assert value(samples, "django_jobs_jobs_succeeded_total", **add) == 22
    assert value(samples, "django_jobs_jobs_retried_total", **fails) == 2
    assert value(samples, "django_jobs_jobs_snoozed_total", **DEFAULT,
                 task="testproject.example.tasks.snooze_once") == 1  # fmt: skip
    assert value(samples, "django_jobs_job_run_seconds_count", **add) == 22
    assert value(samples, "django_jobs_job_run_seconds_bucket", **add, le="+Inf") == 22
    assert value(samples, "django_jobs_job_queue_wait_seconds_count", **add) == 22
    assert value(samples, "django_jobs_workers_alive", backend="default") == 1
    assert value(samples, "django_jobs_worker_slots", backend="default") == 2
    assert value(samples, "django_jobs_queue_ready_jobs", queue="default") is not None
    assert value(samples, "django_jobs_worker_info", backend="default") == 1
    assert value(samples, "process_cpu_seconds_total") is not None

    # The webhook: delivered by the real worker, signed with the project's secret.
    wait_for(lambda: receiver.received, 30, "the webhook")
    hit = receiver.received[0]
    assert signing.verify(SECRET, hit.headers, hit.body)
    assert json.loads(hit.body)["data"]["id"] == hooked.id
    assert wait_for(
        lambda: WebhookDelivery.objects.filter(state="SUCCESSFUL").exists(), 10, "the delivery"
    )

    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    receiver.stop()

    # The trace: the run span, written by a child process, continues the request's trace.
    spans = [json.loads(line) for line in trace_file.read_text().splitlines()]
    runs = [s for s in spans if s["attributes"].get("django_jobs.job_id") == int(traced.id)]
    assert len(runs) == 1, spans[:3]
    (run,) = runs
    assert run["trace_id"] == f"{request_span.get_span_context().trace_id:032x}"
    stored = Job.objects.get(pk=int(traced.id)).trace_context["traceparent"]
    assert run["parent_id"] == stored.split("-")[2]
    assert run["pid"] != worker.pid  # a child ran it


@pytest.mark.timeout(120)
def test_killed_crashed_and_cancelled_jobs_are_counted_once_as_they_ended(start_worker):
    """What a dead child could not count, the supervisor signals as it records it; a job
    cancelled while it runs counts as cancelled however it stopped, never as failed."""
    hung = tasks.hang.enqueue(60)  # killed at its 1 s hard limit, no attempt left
    crashed = tasks.crash_process.enqueue(3)  # its process dies twice: retried, then failed
    port = free_port()
    worker = start_worker(
        "--concurrency", "2", "--metrics-port", str(port), "--metrics-address", "127.0.0.1",
        env={"JOBS_RETRY_BASE_DELAY": "0.2"},
    )  # fmt: skip
    for job in (hung, crashed):
        wait_for(lambda job=job: job_info(job.id).state == "FAILED", 30, f"job {job.id}")

    cooperative = tasks.crunch.enqueue(2000, 0.01)  # stops at the next step after a cancel
    wait_for(lambda: job_info(cooperative.id).state == "RUNNING", 30, "the crunch to start")
    cancel(cooperative.id, by="ops")
    wait_for(lambda: job_info(cooperative.id).state == "CANCELLED", 15, "the crunch to stop")
    # The child that ran it may run the next job too, and be killed for it: a killed child
    # loses what it had not handed over yet (counts once a second, stats when idle). Let
    # it hand them over first: this test is about what is counted, not about that loss.
    time.sleep(TALLY_EVERY + Runner.STATS_EVERY + 0.2)
    stubborn = tasks.stubborn.enqueue(60)  # ignores the cancel: killed after its 1 s grace
    wait_for(lambda: job_info(stubborn.id).state == "RUNNING", 30, "the stubborn job to start")
    cancel(stubborn.id, by="ops")
    wait_for(lambda: job_info(stubborn.id).state == "CANCELLED", 15, "the stubborn job's kill")
    killed = Job.objects.get(pk=int(stubborn.id)).errors[-1]["message"]
    assert "did not stop within its 1 s grace" in killed  # the supervisor recorded it
    assert (
        Job.objects.get(pk=int(hung.id))
        .errors[-1]["exception_class_path"]
        .endswith("TimeLimitExceeded")
    )

    def labels(name: str) -> dict[str, str]:
        return {**DEFAULT, "task": f"testproject.example.tasks.{name}"}

    failed, retried, cancelled = (
        f"django_jobs_jobs_{kind}_total" for kind in ("failed", "retried", "cancelled")
    )
    expected = [
        (failed, "hang"), (failed, "crash_process"), (retried, "crash_process"),
        (cancelled, "crunch"), (cancelled, "stubborn"),
    ]  # fmt: skip

    def counted() -> dict | None:
        samples = scrape(port)
        # Children hand their counts over once a second; the supervisor counts what it
        # records just after its commit.
        done = all(value(samples, name, **labels(task)) == 1 for name, task in expected)
        return samples if done else None

    try:
        samples = wait_for(counted, 10, "every outcome to be counted", interval=0.3)
    except AssertionError:
        samples = scrape(port)  # the asserts below say which one is missing
    assert value(samples, failed, **labels("hang")) == 1
    assert value(samples, failed, **labels("crash_process")) == 1
    assert value(samples, retried, **labels("crash_process")) == 1
    assert value(samples, cancelled, **labels("crunch")) == 1
    assert value(samples, cancelled, **labels("stubborn")) == 1
    assert value(samples, failed, **labels("crunch")) is None
    assert value(samples, failed, **labels("stubborn")) is None
    assert value(samples, cancelled, **labels("hang")) is None
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()
    # The stop summary counts them too (the supervisor's share included).
    lines = worker.output().splitlines()
    (summary,) = [line for line in lines if "stopped after" in line and "succeeded" in line]
    assert "2 failed, 1 retried," in summary, summary
    assert summary.endswith(" 2 cancelled"), summary
