"""The queue protocol on its own: claim locking, fencing, release, and the claim plan."""

import json

import pytest
from django.db import connection, connections

from django_jobs.models import Job
from django_jobs.protocol import jobs as protocol
from django_jobs.worker import dbconn
from testproject.example import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def claim(conn, worker_id: str, limit: int = 10) -> list[protocol.ClaimedJob]:
    with conn.cursor() as cur:
        return protocol.claim(
            cur, worker_id=worker_id, backend="default", queues=None, limit=limit
        )


def test_claim_skips_rows_locked_by_another_transaction(conn):
    tasks.add.enqueue_many([((n, n), {}) for n in range(4)])
    other = dbconn.connect("default", purpose="test-other")
    try:
        with other.transaction(), other.cursor() as cur:
            held = protocol.claim(cur, worker_id="holder", backend="default", queues=None, limit=2)
            # While `other` has not committed, its two rows stay locked and are skipped.
            mine = claim(conn, "me")
            assert len(held) == 2
            assert len(mine) == 2
            assert {j.id for j in held}.isdisjoint({j.id for j in mine})
    finally:
        other.close()


def test_a_stale_worker_cannot_overwrite_a_newer_attempt(conn):
    result = tasks.add.enqueue(1, 2)
    (first,) = claim(conn, "worker-a")
    assert first.attempts == 1
    # The job is rescued (as the rescuer will do for a lost worker) and claimed again.
    Job.objects.filter(pk=first.id).update(state="READY")
    (second,) = claim(conn, "worker-b")
    assert second.attempts == 2
    with conn.cursor() as cur:
        late = protocol.complete(cur, [protocol.Success(first.id, first.attempts, "111")])
        late_failure = protocol.fail(
            cur, [protocol.Failure(first.id, first.attempts, json.dumps({"x": 1}), None)]
        )
        current = protocol.complete(cur, [protocol.Success(second.id, second.attempts, "3")])
    assert late == {}
    assert late_failure == {}
    assert list(current) == [second.id]
    row = Job.objects.get(pk=int(result.id))
    assert (row.state, row.return_value, row.errors) == ("SUCCESSFUL", 3, [])
    assert row.worker_ids == ["worker-a", "worker-b"]


def test_release_gives_the_attempt_back(conn):
    result = tasks.add.enqueue(1, 2)
    (held,) = claim(conn, "worker-a")
    with conn.cursor() as cur:
        assert protocol.release(cur, [held]) == {held.id}
    row = Job.objects.get(pk=int(result.id))
    assert (row.state, row.attempts, row.worker_ids, row.started_at) == ("READY", 0, [], None)


def test_claim_uses_the_partial_index_with_a_large_history(conn):
    # 200,000 finished rows and a few runnable ones: the claim must not look at history.
    with connection.cursor() as cur:
        cur.execute(
            """
            INSERT INTO django_jobs_job (task_path, queue_name, priority, state, backend, args,
                kwargs, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors,
                finished_at, worker_id)
            SELECT 'testproject.example.tasks.add', 'default', 0, 'SUCCESSFUL', 'default', '[]',
                   '{}', now(), now(), 1, 1, '[]', '[]', now(), 'w'
            FROM generate_series(1, 200000)
            """
        )
        cur.execute("ANALYZE django_jobs_job")
    tasks.add.enqueue_many([((n, n), {}) for n in range(10)])
    with conn.cursor() as cur:
        # EXPLAIN without ANALYZE plans the claim without running it.
        cur.execute(
            "EXPLAIN (FORMAT JSON) " + protocol.CLAIM,
            {"backend": "default", "queues": ["default"], "limit": 10, "worker_id": "w"},
        )
        plan = json.dumps(cur.fetchone()[0])
    assert "django_jobs_job_claim" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_a_claim_does_not_walk_the_jobs_due_later(conn):
    # 50,000 jobs due tomorrow and nothing due now: an idle worker's claim must stop at
    # the first job due later, not read them all (it runs every poll of every worker).
    with connection.cursor() as cur:
        cur.execute(
            """
            INSERT INTO django_jobs_job (task_path, queue_name, priority, state, backend, args,
                kwargs, run_after, available_at, enqueued_at, attempts, max_attempts,
                worker_ids, errors)
            SELECT 'testproject.example.tasks.add', 'default', g % 3, 'READY', 'default', '[]',
                   '{}', now() + interval '1 day', now() + interval '1 day', now(), 0, 1,
                   '[]', '[]'
            FROM generate_series(1, 50000) AS g
            """
        )
        cur.execute("ANALYZE django_jobs_job")
    due = tasks.add.using(priority=1).enqueue(1, 1)
    with conn.cursor() as cur, conn.transaction(force_rollback=True):
        cur.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + protocol.CLAIM_ANY_QUEUE,
            {"backend": "default", "limit": 10, "worker_id": "w"},
        )
        plan = cur.fetchone()[0][0]
    # It claims the one due job, at the cost of a few index pages per priority level.
    assert plan["Plan"]["Actual Rows"] == 1
    touched = plan["Plan"]["Shared Hit Blocks"] + plan["Plan"]["Shared Read Blocks"]
    assert touched < 200, json.dumps(plan)
    assert Job.objects.get(pk=int(due.id)).state == "READY"  # rolled back


def test_worker_connections_give_up_on_a_silent_network_unless_options_say_otherwise(
    monkeypatch,
):
    # A partition must break a hung statement (and reconnect) within seconds, not after
    # the kernel's minutes of retransmissions; a project's own OPTIONS still win.
    conn = dbconn.connect("default", purpose="test")
    try:
        params = conn.info.get_parameters()
    finally:
        conn.close()
    assert params["tcp_user_timeout"] == "15000"
    assert (params["keepalives"], params["keepalives_idle"]) == ("1", "10")

    settings_dict = connections["default"].settings_dict
    monkeypatch.setitem(
        settings_dict, "OPTIONS", {**settings_dict.get("OPTIONS", {}), "tcp_user_timeout": 60_000}
    )
    conn = dbconn.connect("default", purpose="test")
    try:
        assert conn.info.get_parameters()["tcp_user_timeout"] == "60000"
    finally:
        conn.close()
