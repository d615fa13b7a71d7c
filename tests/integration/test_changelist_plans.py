"""The job changelist and the dashboard read indexes, not the whole table.

A table of 20,000 finished jobs (generated in SQL) with a few rare ones: every filter
must find its page by reading a few hundred rows at most, whether the answer is many
rows, a few, or none. The planner is told not to scan the table (as it would choose on
a table this small, and never on millions of rows), and EXPLAIN ANALYZE counts the
rows each plan touches.
"""

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_jobs.console import stats
from django_jobs.models import Job

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:django_jobs_job_changelist")
ADD = "testproject.example.tasks.add"
RARE = "testproject.example.tasks.always_fails"
ROWS = 20_000


@pytest.fixture
def big_table():
    with connection.cursor() as cur:
        cur.execute(
            """
            INSERT INTO django_jobs_job (task_path, queue_name, priority, state, backend,
                available_at, enqueued_at, started_at, finished_at, attempts, max_attempts)
            SELECT %(add)s, 'default', 0, 'SUCCESSFUL', 'default', t, t, t, t, 1, 1
            FROM generate_series(1, %(rows)s) AS g,
                 LATERAL (SELECT now() - interval '3 hours' - g * interval '1 second') AS x(t)
            ORDER BY g DESC
            """,
            {"add": ADD, "rows": ROWS},
        )
        # A few rare ones among the oldest: a queue, a task, failures.
        cur.execute(
            """UPDATE django_jobs_job SET queue_name = 'slow', task_path = %s, state = 'FAILED'
            WHERE id IN (SELECT id FROM django_jobs_job ORDER BY id LIMIT 5)""",
            [RARE],
        )
        # What autovacuum does as the table grows: statistics, and BRIN summaries.
        cur.execute("ANALYZE django_jobs_job")
        cur.execute(
            """SELECT brin_summarize_new_values(i.indexrelid)
            FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            JOIN pg_am a ON a.oid = c.relam
            WHERE i.indrelid = 'django_jobs_job'::regclass AND a.amname = 'brin'"""
        )


def rows_read(sql: str, params) -> int:
    """Rows the plan of ``sql`` touches: returned or removed by a filter, in every scan."""
    with connection.cursor() as cur:
        cur.execute("SET LOCAL enable_seqscan = off")
        cur.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
        plan = cur.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan

    def walk(node) -> int:
        here = 0
        if "Scan" in node["Node Type"] and "Bitmap Index" not in node["Node Type"]:
            removed = node.get("Rows Removed by Filter", 0) + node.get(
                "Rows Removed by Index Recheck", 0
            )
            here = (node["Actual Rows"] + removed) * node["Actual Loops"]
        return here + sum(walk(child) for child in node.get("Plans", []))

    return walk(plan[0]["Plan"])


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, 50),
        ({"state__exact": "FAILED"}, 5),
        ({"state__exact": "BLOCKED"}, 0),
        ({"state__exact": "SUCCESSFUL"}, 50),
        ({"queue": "slow"}, 5),
        ({"queue": "nowhere"}, 0),
        ({"task": RARE}, 5),
        ({"q": "always_f"}, 5),
        ({"queue": "slow", "state__exact": "FAILED"}, 5),
        ({"flow": "limited"}, 0),
        ({"flow": "parked"}, 0),
        ({"enqueued": "1h"}, 0),
        ({"enqueued": "24h"}, 50),
        ({"finished": "1h"}, 0),
        ({"o": "3"}, 50),  # "sort by task": ignored, newest first
        ({"o": "-4"}, 50),  # "sort by queue": ignored
    ],
)
def test_each_filter_reads_a_page_not_the_table(admin_client, big_table, params, expected):
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(CHANGELIST, params)
    assert response.status_code == 200
    assert len(response.context["cl"].result_list) == expected
    reads = [
        q["sql"]
        for q in captured.captured_queries
        if "django_jobs_job" in q["sql"] and q["sql"].startswith("SELECT")
    ]
    assert reads
    # The captured SQL has its parameters inlined already.
    most = max(rows_read(sql, None) for sql in reads)
    print(f"{params}: at most {most} rows read by one query, {expected} shown")
    assert most <= 500, f"{params}: {most} of {ROWS} rows read"


def test_only_the_id_column_sorts(admin_client):
    Job.objects.create(task_path=ADD)
    response = admin_client.get(CHANGELIST)
    assert response.context["cl"].sortable_by == ("id",)
    html = response.content.decode()
    assert html.count('class="sortable') == 1


def test_lookups_other_than_the_filters_are_refused(admin_client):
    assert admin_client.get(CHANGELIST, {"priority": "5"}).status_code == 400
    assert admin_client.get(CHANGELIST, {"kwargs__contains": "{}"}).status_code == 400
    assert admin_client.get(CHANGELIST, {"queue": "default"}).status_code == 200


def test_an_unknown_state_finds_nothing_without_a_query(admin_client):
    Job.objects.create(task_path=ADD)
    response = admin_client.get(CHANGELIST, {"state__exact": "LOST"})
    assert response.status_code == 200
    assert response.context["cl"].result_count == 0


# ── the dashboard's counts are bounded ──────────────────────────────────────


def test_dashboard_estimates_what_would_take_too_long_to_count(admin_client, monkeypatch):
    now = timezone.now()
    Job.objects.create(task_path=ADD)
    Job.objects.create(task_path=ADD, state="FAILED", finished_at=now)
    with connection.cursor() as cur:
        cur.execute("ANALYZE django_jobs_job")
    monkeypatch.setattr(stats, "EXACT_BELOW", 0)  # as if there were millions
    response = admin_client.get(reverse("admin:django_jobs_job_dashboard"))
    overview = response.context["overview"]
    assert overview.ready_estimated
    assert overview.finished_estimated
    assert overview.per_minute is None
    assert overview.per_hour is None
    html = response.content.decode()
    assert "Too many jobs finished in the last hour to chart them quickly." in html
    assert "the planner's estimates" in html
    default = next(q for q in overview.queues if q.name == "default")
    assert default.oldest_runnable is None
    assert isinstance(default.runnable, int)


def test_an_exact_count_that_takes_too_long_gives_way(monkeypatch):
    monkeypatch.setattr(stats, "EXACT_TIMEOUT_MS", 50)
    assert stats._bounded("default", "SELECT pg_sleep(1)") is None
    assert stats._bounded("default", "SELECT 1") == [(1,)]
    with connection.cursor() as cur:  # the settings are the session's again
        cur.execute(
            "SELECT current_setting('statement_timeout'), current_setting('enable_seqscan')"
        )
        assert cur.fetchone() == ("0", "on")


def test_dashboard_counts_are_exact_below_the_threshold(admin_client):
    Job.objects.create(task_path=ADD, available_at=timezone.now() - timedelta(hours=1))
    Job.objects.create(task_path=ADD, available_at=timezone.now() + timedelta(hours=1))
    overview = admin_client.get(reverse("admin:django_jobs_job_dashboard")).context["overview"]
    assert not overview.ready_estimated
    assert not overview.finished_estimated
    assert (overview.totals.runnable, overview.totals.delayed) == (1, 1)
