"""Rate limits, concurrency limits and concurrency keys, as the claim and the exits see them.

Time is the database's: a test moves a rate window by shifting the sub-window numbers
stored in the limiter row, never by waiting.
"""

import json
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from django_jobs.limits import FLOW_LIMITED, FLOW_PARKED, RATE_BUCKETS
from django_jobs.models import Job, Limiter
from django_jobs.protocol import jobs as protocol
from django_jobs.protocol import limiters
from django_jobs.services.limits import LimitKeeper
from django_jobs.services.rescuer import Rescuer
from django_jobs.worker import dbconn
from testproject.example import flow_tasks, tasks

pytestmark = pytest.mark.django_db

ERROR = json.dumps({"exception_class_path": "builtins.OSError", "traceback": ""})


def claim(limit: int = 50, worker: str = "w", cursor=None, queues=None):
    if cursor is not None:
        return protocol.claim(
            cursor, worker_id=worker, backend="default", queues=queues, limit=limit
        )
    with connection.cursor() as cur:
        return protocol.claim(cur, worker_id=worker, backend="default", queues=queues, limit=limit)


def names(jobs) -> Counter:
    return Counter(j.task_path.rsplit(".", 1)[1] for j in jobs)


def limiter(name: str) -> Limiter:
    return Limiter.objects.get(backend="default", name=name)


def a_period_passes(name: str) -> None:
    """Move a rate limiter's counted starts one whole period (and a sub-window) back."""
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE django_jobs_limiter SET starts = coalesce((SELECT jsonb_object_agg("
            "(key::bigint - %s)::text, value) FROM jsonb_each(starts)), '{}') WHERE name = %s",
            [RATE_BUCKETS + 1, name],
        )


def complete(jobs) -> None:
    with connection.cursor() as cur:
        protocol.complete(cur, [protocol.Success(j.id, j.attempts, "null") for j in jobs])


RATE = "task:testproject.example.flow_tasks.rate_limited"


# ── rate limits ─────────────────────────────────────────────────────────────


def test_a_rate_limit_starts_at_most_its_count_per_period_and_the_rest_wait_ready():
    flow_tasks.rate_limited.enqueue_many([((n,), {}) for n in range(25)])
    first = claim()
    assert names(first) == {"rate_limited": 10}
    assert claim() == []  # the period's ten have started
    waiting = Job.objects.filter(state="READY")
    assert waiting.count() == 15
    assert set(waiting.values_list("attempts", "flow")) == {(0, FLOW_LIMITED)}
    assert sum(limiter(RATE).starts.values()) == 10

    a_period_passes(RATE)
    assert names(claim()) == {"rate_limited": 10}
    a_period_passes(RATE)
    assert names(claim(limit=3)) == {"rate_limited": 3}
    assert names(claim()) == {"rate_limited": 2}


def test_every_start_of_the_last_period_counts_to_the_last_sub_window():
    flow_tasks.rate_limited.enqueue_many([((n,), {}) for n in range(20)])
    assert len(claim(limit=4)) == 4
    # The four move back by a whole period less one sub-window: still inside it.
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE django_jobs_limiter SET starts = (SELECT jsonb_object_agg("
            "(key::bigint - %s)::text, value) FROM jsonb_each(starts)) WHERE name = %s",
            [RATE_BUCKETS, RATE],
        )
    assert len(claim()) == 6
    assert claim() == []


def test_a_limited_backlog_holds_up_no_other_job_of_its_queue():
    flow_tasks.rate_limited.using(priority=50).enqueue_many([((n,), {}) for n in range(200)])
    plain = tasks.add.enqueue_many([((n, n), {}) for n in range(5)])
    assert names(claim(limit=30)) == {"rate_limited": 10, "add": 5}
    more = [tasks.add.enqueue(9, 9) for _ in range(3)]
    assert names(claim(limit=30)) == {"add": 3}
    running = {str(i) for i in Job.objects.filter(state="RUNNING").values_list("id", flat=True)}
    assert {r.id for r in plain + more} <= running


def test_priority_order_holds_across_limited_and_plain_jobs():
    tasks.add.using(priority=-5).enqueue(1, 1)
    flow_tasks.rate_limited.using(priority=5).enqueue(1)
    tasks.add.using(priority=0).enqueue(2, 2)
    claimed = claim(limit=2)
    assert [(j.priority, j.task_path.rsplit(".", 1)[1]) for j in claimed] == [
        (5, "rate_limited"),
        (0, "add"),
    ]


# ── concurrency keys ────────────────────────────────────────────────────────


def test_a_full_key_parks_its_jobs_and_a_freed_slot_starts_the_next_one():
    for n in range(12):
        flow_tasks.per_account.enqueue(n % 3, n)
    first = claim()
    assert sorted(j.args[0] for j in first) == [0, 1, 2]
    assert Counter(Job.objects.filter(state="READY").values_list("flow", flat=True)) == {
        FLOW_PARKED: 9
    }
    key0 = limiter("key:acct-0")
    assert (key0.running, key0.parked, key0.wake) == (1, 3, False)
    assert claim() == []  # nothing more may start, and nothing is looked at again

    complete([j for j in first if j.args[0] == 0])
    assert limiter("key:acct-0").wake
    (nxt,) = claim()
    assert (nxt.args, nxt.kwargs) == ([0, 3], {})  # the oldest parked job of the key
    key0 = limiter("key:acct-0")
    assert (key0.running, key0.parked, key0.wake) == (1, 2, False)
    assert Job.objects.get(pk=nxt.id).flow == FLOW_LIMITED


def test_a_failed_or_snoozed_attempt_frees_its_slot_and_goes_back_in_line():
    for n in range(3):
        flow_tasks.per_account.enqueue(7, n)
    (running,) = claim()
    with connection.cursor() as cur:
        protocol.fail(cur, [protocol.Failure(running.id, 1, ERROR, 0.0)])
    retried = Job.objects.get(pk=running.id)
    assert (retried.state, retried.flow) == ("READY", FLOW_LIMITED)
    assert limiter("key:acct-7").running == 0
    (nxt,) = claim()  # a parked job or the retry: one at a time either way
    assert limiter("key:acct-7").running == 1
    with connection.cursor() as cur:
        protocol.snooze(cur, [protocol.Snoozed(nxt.id, nxt.attempts, 0.0, 2)])
    assert limiter("key:acct-7").running == 0
    assert len(claim()) == 1


@pytest.mark.django_db(transaction=True)
def test_a_rescued_job_frees_its_slot():
    flow_tasks.per_account.enqueue(3, 1)
    flow_tasks.per_account.enqueue(3, 2)
    (lost,) = claim(worker="gone-worker")  # no worker row: its jobs are lost
    assert limiter("key:acct-3").running == 1
    conn = dbconn.connect("default", purpose="test")
    try:
        with conn.cursor() as cur:
            ((job_id, state, _),) = Rescuer(worker_timeout=30).run_once(cur)
    finally:
        conn.close()
    assert (job_id, state) == (lost.id, "FAILED")  # per_account allows one attempt
    key = limiter("key:acct-3")
    assert (key.running, key.parked, key.wake) == (0, 1, True)
    (nxt,) = claim()
    assert nxt.args == [3, 2]


def test_a_task_wide_concurrency_limit():
    flow_tasks.two_at_a_time.enqueue_many([((n,), {}) for n in range(5)])
    first = claim()
    assert len(first) == 2
    assert claim() == []
    assert not Job.objects.filter(flow=FLOW_PARKED).exists()  # no key: nothing to park
    complete(first[:1])
    assert len(claim()) == 1
    task = limiter("task:testproject.example.flow_tasks.two_at_a_time")
    assert (task.concurrency, task.running) == (2, 2)


@override_settings(
    TASKS={
        "default": {
            "BACKEND": "django_jobs.backend.JobsBackend",
            "QUEUES": ["default", "emails", "slow"],
            "OPTIONS": {"QUEUE_LIMITS": {"emails": {"concurrency": 2, "rate_limit": "3/h"}}},
        }
    }
)
def test_queue_limits_apply_to_every_task_of_the_queue():
    limiters.activation.forget()
    for n in range(4):
        tasks.add.using(queue_name="emails").enqueue(n, n)
        tasks.send_welcome_email.enqueue(f"{n}@example.com")
        tasks.add.enqueue(n, n)
    rows = Job.objects.filter(queue_name="emails")
    assert set(rows.values_list("flow", flat=True)) == {FLOW_LIMITED}
    claimed = claim(limit=20)
    assert Counter(j.queue_name for j in claimed) == {"emails": 2, "default": 4}
    complete([j for j in claimed if j.queue_name == "emails"])
    assert Counter(j.queue_name for j in claim(limit=20)) == {"emails": 1}  # 3/h
    queue = limiter("queue:emails")
    assert (queue.concurrency, queue.rate_limit, queue.rate_period) == (2, 3, 3600.0)


# ── a claim never waits, and never takes a slot twice ───────────────────────


@pytest.mark.django_db(transaction=True)
def test_a_claim_passes_over_a_limit_another_claim_holds_and_takes_the_rest():
    flow_tasks.rate_limited.enqueue_many([((n,), {}) for n in range(5)])
    tasks.add.enqueue(1, 1)
    claim(limit=1)  # writes the definitions
    flow_tasks.rate_limited.enqueue(99)
    other = dbconn.connect("default", purpose="test")
    mine = dbconn.connect("default", purpose="test")
    try:
        # Were the claim to wait for the lock, it would fail here instead of hanging.
        mine.execute("SET statement_timeout = '10s'")
        with other.transaction(), other.cursor() as held:
            held.execute("SELECT 1 FROM django_jobs_limiter WHERE name = %s FOR UPDATE", [RATE])
            with mine.cursor() as cur:
                assert names(claim(cursor=cur)) == {"add": 1}
        with mine.cursor() as cur:
            assert names(claim(cursor=cur)) == {"rate_limited": 5}
    finally:
        other.close()
        mine.close()


# ── what it costs a job with no limit ───────────────────────────────────────


class Recording:
    """A cursor that notes each statement it runs."""

    def __init__(self, cursor) -> None:
        self.cursor = cursor
        self.statements: list[str] = []

    def execute(self, query, params=None):
        self.statements.append(query)
        return self.cursor.execute(query, params)

    def fetchone(self):
        return self.cursor.fetchone()

    def fetchall(self):
        return self.cursor.fetchall()


def test_a_process_that_declares_no_limit_claims_and_finishes_as_before(monkeypatch):
    monkeypatch.setattr(limiters, "activation", limiters.Activation(lambda b: ([], [], False)))
    tasks.add.enqueue(1, 1)
    with connection.cursor() as cur:
        rec = Recording(cur)
        (job,) = protocol.claim(rec, worker_id="w", backend="default", queues=None, limit=5)
        protocol.complete(rec, [protocol.Success(job.id, job.attempts, "2")])
    # Once per process: limits no longer declared are deleted. Once per RECHECK: a look
    # for limited jobs waiting anyway. Then the plain claim and the plain success.
    assert rec.statements == [
        limiters.DELETE_UNDECLARED,
        limiters.LIMITED_WORK_EXISTS,
        protocol.CLAIM_ANY_QUEUE,
        protocol.COMPLETE_MANY,
    ]
    with connection.cursor() as cur:
        rec = Recording(cur)
        protocol.claim(rec, worker_id="w", backend="default", queues=None, limit=5)
    assert rec.statements == [protocol.CLAIM_ANY_QUEUE]


def test_a_job_with_no_limit_has_no_entry_in_the_flow_indexes():
    tasks.add.enqueue(1, 1)
    row = Job.objects.get()
    assert (row.unique_key, row.concurrency_key, row.concurrency_limit, row.flow) == (
        None,
        None,
        None,
        None,
    )


def test_a_process_that_declares_none_still_claims_limited_jobs_it_finds():
    flow_tasks.rate_limited.enqueue(1)
    limiters.activation.forget()
    claim(limit=1)  # a declaring process wrote the definitions
    flow_tasks.rate_limited.enqueue(2)
    bare = limiters.Activation(lambda b: ([], [], False))
    with connection.cursor() as cur:
        assert bare.active(cur, "default")  # limited jobs wait
    Job.objects.filter(flow__isnull=False).delete()
    with connection.cursor() as cur:
        assert bare.active(cur, "default")  # checked again only after RECHECK seconds
        bare._found.clear()
        assert not bare.active(cur, "default")


# ── upkeep ──────────────────────────────────────────────────────────────────


def test_the_keeper_recounts_limiters_that_are_off_and_forgets_idle_keys(caplog):
    for n in range(3):
        flow_tasks.per_account.enqueue(5, n)
    (running,) = claim()
    Limiter.objects.filter(name="key:acct-5").update(running=4, parked=0, wake=False)
    Limiter.objects.create(backend="default", name="key:idle", concurrency=1)
    Limiter.objects.filter(name="key:idle").update(updated_at=timezone.now() - timedelta(hours=2))
    with connection.cursor() as cur:
        fixed = LimitKeeper().run_once(cur)
    assert [(f.name, f.running_was, f.running, f.parked_was, f.parked) for f in fixed] == [
        ("key:acct-5", 4, 1, 0, 2)
    ]
    assert "counted 4 running and 0 parked jobs; there are 1 and 2" in caplog.text
    assert not Limiter.objects.filter(name="key:idle").exists()
    complete([running])
    assert limiter("key:acct-5").wake
    assert len(claim()) == 1


def test_bad_concurrency_keys_fail_the_enqueue_and_write_nothing():
    with pytest.raises(ValueError, match=r"concurrency_key of task '.*per_account' raised"):
        flow_tasks.per_account.enqueue()
    with pytest.raises(TypeError, match=r"must be a str, got NoneType"):
        flow_tasks.keyed_by.enqueue(None)
    assert not Job.objects.exists()


# ── the plan: what a limited claim reads ────────────────────────────────────


def plan_reads(plan: dict) -> dict[str, int]:
    """Rows each index or table is read for, summed over the plan (returned or filtered)."""
    reads: Counter = Counter()

    def walk(node: dict) -> None:
        if ("Scan" in node["Node Type"] and "Relation Name" in node) or "Index Name" in node:
            where = node.get("Index Name") or f"{node['Node Type']} {node.get('Relation Name')}"
            removed = node.get("Rows Removed by Filter", 0)
            reads[where] += (node["Actual Rows"] + removed) * node["Actual Loops"]
        for child in node.get("Plans", []):
            walk(child)

    walk(plan)
    return reads


def test_a_limited_claim_reads_what_it_can_start_whatever_waits_behind_limits():
    with connection.cursor() as cur:
        # History, a backlog behind an exhausted rate, a backlog parked behind a full
        # key, many idle keys, and a few jobs with no limit.
        cur.execute(
            """
            INSERT INTO django_jobs_job (task_path, queue_name, priority, state, backend,
                args, kwargs, available_at, enqueued_at, attempts, max_attempts,
                worker_ids, errors, finished_at, worker_id)
            SELECT 'testproject.example.tasks.add', 'default', 0, 'SUCCESSFUL', 'default',
                   '[]', '{}', now(), now(), 1, 1, '[]', '[]', now(), 'w'
            FROM generate_series(1, 50000)
            """
        )
        cur.execute(
            """
            INSERT INTO django_jobs_job (task_path, queue_name, priority, state, backend,
                args, kwargs, available_at, enqueued_at, attempts, max_attempts,
                worker_ids, errors, flow, concurrency_key, concurrency_limit)
            SELECT t.path, 'default', 0, 'READY', 'default', '[1, 1]', '{}',
                   now() - interval '1 minute', now(), 0, 1, '[]', '[]', t.flow, t.key, t.lim
            FROM generate_series(1, 3000),
                 (VALUES ('testproject.example.flow_tasks.rate_limited', 'limited', NULL, NULL),
                         ('testproject.example.flow_tasks.per_account', 'parked', 'acct-1', 1))
                 AS t(path, flow, key, lim)
            """
        )
        cur.execute(
            "INSERT INTO django_jobs_limiter (backend, name, concurrency, running, parked, "
            "wake, starts, rate_text, updated_at) SELECT 'default', 'key:x-' || n, 1, 0, 0, "
            "false, '{}', '', now() FROM generate_series(1, 5000) AS n"
        )
    tasks.add.enqueue_many([((n, n), {}) for n in range(20)])
    claim(limit=1)  # writes the definitions; the rate's first start
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE django_jobs_limiter SET starts = jsonb_build_object("
            "floor(extract(epoch FROM now()) * %s)::bigint::text, 10) WHERE name = %s",
            [RATE_BUCKETS, RATE],
        )
        cur.execute(
            "INSERT INTO django_jobs_limiter (backend, name, concurrency, running, parked, "
            "wake, starts, rate_text, updated_at) VALUES ('default', 'key:acct-1', 1, 1, 3000, "
            "false, '{}', '', now())"
        )
        cur.execute("ANALYZE django_jobs_job")
        cur.execute("ANALYZE django_jobs_limiter")
        first = explain_limited_claim(cur)
        # The key's job finishes: the next claim takes one parked job, reading one.
        cur.execute(
            "UPDATE django_jobs_limiter SET running = 0, wake = true WHERE name = 'key:acct-1'"
        )
        woken = explain_limited_claim(cur)
    for plan, parked in ((first, 0), (woken, 1)):
        reads = plan_reads(plan[0]["Plan"])
        assert "Seq Scan" not in json.dumps(plan), reads
        assert sum(reads.values()) < 500, reads  # 19 plain jobs, and index probes
        assert reads["django_jobs_job_claim"] <= 25, reads
        assert reads["django_jobs_job_limited"] <= 2, reads  # the exhausted rate: not read
        assert reads["django_jobs_job_parked"] == parked, reads


def explain_limited_claim(cur) -> list:
    cur.execute("SAVEPOINT plan")
    cur.execute(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + protocol.CLAIM_LIMITED,
        {"worker_id": "w", "backend": "default", "limit": 50, "queues": ["default"]},
    )
    plan = cur.fetchone()[0]
    cur.execute("ROLLBACK TO SAVEPOINT plan")
    return json.loads(plan) if isinstance(plan, str) else plan
