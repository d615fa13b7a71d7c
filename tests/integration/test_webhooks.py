"""Webhooks: the delivery is enqueued with the outcome, then POSTed, signed, retried."""

import json
import time

import pytest
from django.db import connection

from django_jobs import tasks as own_tasks
from django_jobs.console import operations
from django_jobs.models import DELIVERY_TASK, Job, WebhookDelivery
from django_jobs.protocol import jobs as protocol
from django_jobs.webhooks import signing
from testproject.example import tasks

from ..conftest import run_worker
from ..maintenance import rescue_all
from ..receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "test-only-webhook-secret-0123456789"


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.stop()


def deliveries() -> list[Job]:
    return list(WebhookDelivery.objects.order_by("id"))


def test_the_delivery_task_is_declared_under_the_path_the_protocol_enqueues():
    assert own_tasks.deliver.module_path == DELIVERY_TASK


def test_a_finished_job_posts_its_outcome_signed(receiver):
    result = tasks.add.using(callback_url=f"{receiver.url}/hooks/jobs").enqueue(2, 3)
    run_worker()
    assert [r.path for r in receiver.received] == ["/hooks/jobs"]
    hit = receiver.received[0]
    assert signing.verify(SECRET, hit.headers, hit.body)
    assert not signing.verify(SECRET + "x", hit.headers, hit.body)
    assert not signing.verify(SECRET, hit.headers, hit.body + b" ")
    event = json.loads(hit.body)
    assert event["type"] == "job.finished"
    assert event["data"]["id"] == result.id
    assert event["data"]["state"] == "SUCCESSFUL"
    assert event["data"]["return_value"] == 5
    assert event["data"]["error"] is None
    (delivery,) = deliveries()
    assert delivery.state == "SUCCESSFUL"
    assert hit.headers["webhook-id"] == f"msg_{delivery.pk}"
    assert delivery.return_value["status"] == 200


def test_a_final_failure_posts_its_error_and_a_retry_posts_nothing(receiver):
    result = tasks.fails_with.using(callback_url=receiver.url).enqueue("ValueError")
    retried = tasks.fails_with.using(callback_url=receiver.url).enqueue("ConnectionError")
    run_worker()
    # fails_with retries ConnectionError (3 attempts, 10 ms apart): one POST at the end.
    deadline = time.monotonic() + 20
    while len(receiver.received) < 2 and time.monotonic() < deadline:
        run_worker()
        time.sleep(0.05)
    events = {e["data"]["id"]: e["data"] for e in (json.loads(r.body) for r in receiver.received)}
    assert set(events) == {result.id, retried.id}
    assert events[result.id]["state"] == "FAILED"
    assert events[result.id]["error"]["exception_class"] == "builtins.ValueError"
    assert events[retried.id]["attempts"] == 3


def test_the_delivery_is_enqueued_by_the_statement_that_records_the_outcome():
    result = tasks.add.using(callback_url="https://example.com/hook").enqueue(1, 1)
    with connection.cursor() as cur:
        (claimed,) = protocol.claim(cur, worker_id="w", backend="default", queues=None, limit=1)
        assert deliveries() == []
        protocol.complete(cur, [protocol.Success(claimed.id, claimed.attempts, "2")])
    (delivery,) = deliveries()
    url, event = delivery.args
    assert url == "https://example.com/hook"
    assert event["data"]["id"] == result.id
    assert (delivery.queue_name, delivery.backend) == ("default", "default")
    assert delivery.max_attempts == 16
    assert delivery.callback_url is None  # a delivery has no webhook of its own


def test_an_outcome_that_is_fenced_off_enqueues_no_delivery():
    tasks.add.using(callback_url="https://example.com/hook").enqueue(1, 1)
    with connection.cursor() as cur:
        (claimed,) = protocol.claim(cur, worker_id="w", backend="default", queues=None, limit=1)
        assert (
            protocol.complete(cur, [protocol.Success(claimed.id, claimed.attempts + 1, "2")]) == {}
        )
    assert deliveries() == []


def test_cancel_and_rescue_send_webhooks_too():
    cancelled = tasks.add.using(callback_url="https://example.com/c").enqueue(1, 1)
    lost = tasks.add.using(callback_url="https://example.com/r").enqueue(1, 1)
    assert operations.cancel([int(cancelled.id)]).moved == [int(cancelled.id)]
    with connection.cursor() as cur:
        protocol.claim(cur, worker_id="gone:1:x", backend="default", queues=None, limit=5)
    rescue_all()
    events = {d.args[1]["data"]["id"]: d.args[1] for d in deliveries()}
    assert events[cancelled.id]["type"] == "job.cancelled"
    assert events[cancelled.id]["data"]["state"] == "CANCELLED"
    assert events[lost.id]["data"]["state"] == "FAILED"
    assert events[lost.id]["data"]["error"]["exception_class"].endswith("WorkerLost")


def test_a_server_error_is_retried_and_a_refusal_is_not(receiver, settings):
    receiver.statuses = [503]
    tasks.add.using(callback_url=receiver.url).enqueue(1, 1)
    run_worker()
    (delivery,) = deliveries()
    assert delivery.state == "READY"  # waits for its backoff
    assert "answered 503" in delivery.errors[0]["message"]
    Job.objects.filter(pk=delivery.pk).update(available_at=delivery.enqueued_at)
    run_worker()
    delivery.refresh_from_db()
    assert delivery.state == "SUCCESSFUL"
    assert len(receiver.received) == 2
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1

    receiver.statuses = [410]
    tasks.add.using(callback_url=receiver.url).enqueue(1, 1)
    run_worker()
    refused = deliveries()[-1]
    assert refused.state == "FAILED"
    assert refused.attempts == 1
    assert "refuses this message" in refused.errors[0]["message"]


def test_a_redirect_is_not_followed(receiver):
    receiver.statuses = [302]
    tasks.add.using(callback_url=receiver.url).enqueue(1, 1)
    run_worker()
    (delivery,) = deliveries()
    assert delivery.state == "READY"
    assert len(receiver.received) == 1


def test_rotation_signs_with_every_secret(receiver, settings):
    settings.DJANGO_JOBS = {
        **settings.DJANGO_JOBS,
        "WEBHOOK_SECRET": ["new-secret-0123456789abcdef", SECRET],
    }
    tasks.add.using(callback_url=receiver.url).enqueue(1, 1)
    run_worker()
    hit = receiver.received[0]
    assert signing.verify("new-secret-0123456789abcdef", hit.headers, hit.body)
    assert signing.verify(SECRET, hit.headers, hit.body)
