"""What the admin, the dashboard and ``jobs status`` say about limits."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from django_jobs.console import stats
from django_jobs.limits import RATE_BUCKETS, rate_next_start, rate_used
from django_jobs.models import Job
from django_jobs.protocol import jobs as protocol
from testproject.example import flow_tasks, tasks

pytestmark = pytest.mark.django_db

DASHBOARD = reverse("admin:django_jobs_job_dashboard")
CHANGELIST = reverse("admin:django_jobs_job_changelist")
RATE = "task:testproject.example.flow_tasks.rate_limited"


@pytest.fixture
def held_back():
    """Ten rate-limited jobs started and fifteen waiting; a key running one, two parked."""
    flow_tasks.rate_limited.enqueue_many([((n,), {}) for n in range(25)])
    for n in range(3):
        flow_tasks.per_account.enqueue(1, n)
    tasks.add.enqueue(1, 1)
    with connection.cursor() as cur:
        claimed = protocol.claim(cur, worker_id="w", backend="default", queues=None, limit=50)
    assert len(claimed) == 12  # ten under the rate, one of the key, the plain one
    tasks.add.enqueue(2, 2)  # waits for a worker, not for a limit


def test_the_overview_tells_waiting_on_a_limit_from_waiting_for_a_worker(held_back):
    default = {q.name: q for q in stats.overview().queues}["default"]
    assert (default.runnable, default.limited, default.running) == (1, 17, 12)
    limits = {limit.name: limit for limit in stats.overview().limits}
    rate = limits[RATE]
    assert (rate.started, rate.room, rate.waiting, rate.full) == (10, 0, 15, True)
    assert 0 < rate.next_start_in <= 1.1
    key = limits["key:acct-1"]
    assert (key.running, key.concurrency, key.room, key.waiting) == (1, 1, 0, 2)


def test_the_dashboard_counts_and_lists_limits(admin_client, held_back):
    html = admin_client.get(DASHBOARD).content.decode()
    assert 'data-count="limited"' in html
    assert f'data-limiter="{RATE}"' in html
    assert 'data-limiter="key:acct-1"' in html
    assert "?queue=default&amp;flow=limited" in html


def test_the_changelist_filters_jobs_held_back(admin_client, held_back):
    response = admin_client.get(CHANGELIST, {"flow": "parked"})
    assert len(response.context["cl"].result_list) == 2
    response = admin_client.get(CHANGELIST, {"flow": "limited"})
    assert len(response.context["cl"].result_list) == 17
    parked = Job.objects.filter(flow="parked").first()
    page = admin_client.get(reverse("admin:django_jobs_job_change", args=[parked.pk]))
    assert "Waiting for a slot of key &#x27;acct-1&#x27; (1 of 1 running)" in page.content.decode()


def test_jobs_status_shows_limits(held_back):
    out = StringIO()
    call_command("jobs", "status", stdout=out)
    text = out.getvalue()
    assert "limited" in text.splitlines()[0]
    assert RATE in text
    assert "10/s" in text
    out = StringIO()
    call_command("jobs", "status", "--json", stdout=out)
    data = json.loads(out.getvalue())
    default = next(q for q in data["queues"] if q["queue"] == "default")
    assert default["waiting_on_limit"] == 17
    rate = next(limit for limit in data["limits"] if limit["limiter"] == RATE)
    assert (rate["rate_limit"], rate["started_in_period"], rate["room"]) == ("10/s", 10, 0)


def test_the_rate_shown_is_the_rate_the_claim_counts():
    period = 1.0
    width = period / RATE_BUCKETS
    now = 1_000_000.0
    current = int(now / width)
    starts = {str(current): 3, str(current - RATE_BUCKETS): 4, str(current - RATE_BUCKETS - 1): 9}
    assert rate_used(starts, period, now) == 7  # the oldest sub-window no longer counts
    assert rate_next_start(8, starts, period, now) is None  # room for one more
    # Full at 7: the sub-window of the four stops counting one sub-window from now.
    wait = rate_next_start(7, starts, period, now)
    assert wait == pytest.approx(width - (now - current * width), abs=1e-6)
