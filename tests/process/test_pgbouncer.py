"""Workers, a web process and the admin through a real PgBouncer in transaction mode.

PgBouncer 1.18 (Debian 12's) in ``pool_mode = transaction``: a client holds a server
connection for one transaction only, so session state, prepared statements and LISTEN
do not carry over. The two supported ways to run behind it are tried: ``--no-listen``
(polling), and LISTEN on a direct connection (``OPTIONS["LISTEN_DATABASE"]``). The
fixture (``pgbouncer.py``) skips these tests where PgBouncer is not installed.
"""

import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from itertools import pairwise
from typing import Any

import psycopg
import pytest
from django.db import connection

from django_jobs.models import Job, ScheduleRun
from django_jobs.protocol import NOTIFY_CHANNEL
from testproject.example import tasks
from testproject.example.models import Execution, LedgerEntry

from ..conftest import ROOT, WorkerProcess, wait_for
from .pgbouncer import PgBouncer
from .test_schedules import every_second_schedule
from .timings import FAST_RESCUE

pytestmark = pytest.mark.django_db(transaction=True)


#: A PgBouncer restart keeps workers from their database for a second or two: well
#: under WORKER_TIMEOUT, so no live worker's jobs are rescued (and run twice) for it.
OUTAGE_TIMING = {
    "JOBS_HEARTBEAT_INTERVAL": "1",
    "JOBS_WORKER_TIMEOUT": "10",
    "JOBS_MAINTENANCE_INTERVAL": "1",
    "JOBS_RETRY_BASE_DELAY": "0.1",
}

#: What a worker logs when something fails that is not a job's own error.
TROUBLE = (
    "Database unavailable",
    "LISTEN connection lost",
    "could be recorded",
    "could not record",
    "tick failed",
    "Maintenance:",
    "prepared statement",
)


def pooled_url(bouncer: PgBouncer, database_url: str) -> str:
    # What Django's docs ask of a transaction-pooled database (and what W002 looks for).
    return bouncer.url(database_url) + "?DISABLE_SERVER_SIDE_CURSORS=true"


def wait_showing(
    workers: list[WorkerProcess], predicate: Callable[[], Any], timeout: float, what: str
) -> None:
    """``wait_for``, and on a timeout the workers' logs as they are then."""
    try:
        wait_for(predicate, timeout=timeout, what=what, interval=0.1)
    except AssertionError as exc:
        logs = "\n".join(f"── worker {w.pid}:\n{w.output()[-5000:]}" for w in workers)
        raise AssertionError(f"{exc} (jobs: {states()})\n{logs}") from None


def states() -> Counter:
    return Counter(Job.objects.values_list("state", flat=True))


def listener_sessions() -> int:
    """LISTEN sessions PostgreSQL holds for workers on the test database."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'django_jobs listener' AND query LIKE 'LISTEN %%'"
        )
        return cur.fetchone()[0]


@pytest.mark.parametrize("listen", ["no-listen", "listen-direct"])
def test_workers_and_the_admin_behind_pgbouncer(listen, pgbouncer, start_worker, database_url):
    url = pooled_url(pgbouncer, database_url)
    env = {**FAST_RESCUE, "DATABASE_URL": url}
    if listen == "no-listen":
        args = ["--no-listen", "--poll-interval", "0.2"]
    else:
        # The LISTEN connection goes straight to PostgreSQL; all else through PgBouncer.
        args = []
        env["JOBS_LISTEN_DATABASE_URL"] = database_url

    # A supervisor killed in the middle of a job: another worker must rescue it.
    long = tasks.sleep_for.using(max_attempts=2).enqueue(2)
    doomed = start_worker("--queues", "slow", "--concurrency", "1", *args, env=env)
    wait_showing(
        [doomed],
        lambda: Job.objects.filter(pk=int(long.id), state="RUNNING").exists(),
        timeout=30,
        what="the long job to start",
    )
    doomed.signal(signal.SIGKILL)
    doomed.wait(timeout=10)

    tasks.record.enqueue_many([((f"pgb-{n}",), {}) for n in range(1000)])
    failing = tasks.always_fails.using(max_attempts=1).enqueue("fails behind PgBouncer")
    schedule = every_second_schedule(first_in=1)
    workers = [start_worker("--concurrency", "2", *args, env=env) for _ in range(2)]
    wait_showing(
        workers,
        lambda: (
            LedgerEntry.objects.count() == 1000
            and Job.objects.filter(pk=int(long.id), state="SUCCESSFUL").exists()
            and Job.objects.filter(pk=int(failing.id), state="FAILED").exists()
        ),
        timeout=60,
        what="the jobs to finish",
    )
    assert listener_sessions() == (2 if listen == "listen-direct" else 0)

    # A web process through PgBouncer: enqueue in transactions, the admin, an action.
    # NOTIFYs sent through PgBouncer (the enqueue's, the schedule's, the retry's) reach a
    # direct LISTEN such as the workers' with LISTEN_DATABASE.
    with psycopg.connect(database_url, autocommit=True) as direct:
        direct.execute(f"LISTEN {NOTIFY_CHANNEL}")
        web = subprocess.run(
            [sys.executable, "-m", "tests.process.web_client", failing.id],
            cwd=ROOT,
            env={**env, "DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        heard = [note.payload for note in direct.notifies(timeout=5, stop_after=1)]
    assert web.returncode == 0, web.stdout + web.stderr
    assert set(heard) == {"default"}, heard
    report = json.loads(web.stdout.splitlines()[-1])
    assert report["pooled"], "the web process did not go through PgBouncer"
    assert not Job.objects.filter(pk=report["rolled_back"]).exists()
    assert set(report["pages"].values()) == {200}, report["pages"]
    assert report["retry"] == 302
    wait_for(
        lambda: (
            Job.objects.filter(pk=report["committed"], state="SUCCESSFUL").exists()
            and Job.objects.filter(pk=int(failing.id), state="FAILED", attempts=2).exists()
        ),
        timeout=30,
        what="the committed job, and the failed one again after the admin's retry",
    )
    runs = ScheduleRun.objects.filter(schedule=schedule)
    wait_for(lambda: runs.count() >= 4, timeout=30, what="four fires of the schedule")

    clients = {c["application_name"] for c in pgbouncer.clients()}
    assert {"django_jobs worker", "django_jobs runner"} <= clients, clients
    assert "django_jobs listener" not in clients
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(timeout=30) == 0, worker.output()

    records = Job.objects.filter(task_path="testproject.example.tasks.record")
    assert Counter(records.values_list("state", "attempts")) == {("SUCCESSFUL", 1): 1000}
    row = Job.objects.get(pk=int(long.id))
    assert row.attempts == 2
    assert row.errors[0]["exception_class_path"] == "django_jobs.exceptions.WorkerLost"
    fire_times = list(runs.order_by("fire_at").values_list("fire_at", flat=True))
    assert all(b - a == timedelta(seconds=1) for a, b in pairwise(fire_times)), fire_times
    fired = Job.objects.filter(task_path="testproject.example.tasks.add", args=[40, 2])
    assert sorted(runs.values_list("job_id", flat=True)) == sorted(
        fired.values_list("id", flat=True)
    )
    # Nothing went wrong on the way: no lost connection, no failed round or record.
    for worker in workers:
        for sign in TROUBLE:
            assert sign not in worker.output(), worker.output()


def test_listen_through_pgbouncer_is_reported(pgbouncer, start_worker, database_url):
    worker = start_worker(env={"DATABASE_URL": pooled_url(pgbouncer, database_url)})
    wait_showing(
        [worker],
        lambda: "goes through a connection pooler" in worker.output(),
        timeout=30,
        what="the warning",
    )
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.output()


def test_prepared_statements_through_pgbouncer_are_reported_and_survived(
    pgbouncer, start_worker, database_url
):
    # psycopg prepares each statement on its first run (prepare_threshold=0); PgBouncer
    # 1.18 then hands the next transaction another server connection, where the name is
    # missing or taken. The tasks here touch no database; the workers' own statements do.
    url = pooled_url(pgbouncer, database_url) + "&prepare_threshold=0"
    tasks.add.enqueue_many([((n, n), {}) for n in range(300)])
    args = ("--burst", "--no-listen", "--poll-interval", "0.2", "--concurrency", "2")
    workers = [start_worker(*args, env={"DATABASE_URL": url}) for _ in range(2)]
    wait_showing(workers, lambda: states() == Counter({"SUCCESSFUL": 300}), 30, "all jobs")
    for worker in workers:
        assert worker.wait(timeout=30) == 0, worker.output()
    logs = "".join(worker.output() for worker in workers)
    assert "does not keep prepared statements: remove 'prepare_threshold'" in logs, logs


def test_an_idle_worker_claims_again_after_pgbouncer_restarts(
    pgbouncer, start_worker, database_url
):
    env = {**OUTAGE_TIMING, "DATABASE_URL": pooled_url(pgbouncer, database_url)}
    worker = start_worker("--no-listen", "--poll-interval", "0.2", "--concurrency", "1", env=env)
    first = tasks.add.enqueue(1, 1)
    wait_for(
        lambda: Job.objects.filter(pk=int(first.id), state="SUCCESSFUL").exists(),
        timeout=30,
        what="the first job",
    )
    # Idle, polling: its next claim fails while PgBouncer is away.
    pgbouncer.restart(signal.SIGTERM, down_for=1.0)
    after = tasks.add.enqueue(2, 2)
    wait_showing(
        [worker],
        lambda: Job.objects.filter(pk=int(after.id), state="SUCCESSFUL").exists(),
        timeout=20,
        what="a job enqueued after the restart to run",
    )
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.output()


def test_restarting_pgbouncer_during_a_drain_loses_and_doubles_nothing(
    pgbouncer, start_worker, database_url
):
    total = 2000
    tasks.chaos_step.enqueue_many([((2, f"drain-{n}"), {}) for n in range(total)])
    env = {**OUTAGE_TIMING, "DATABASE_URL": pooled_url(pgbouncer, database_url)}
    args = ("--no-listen", "--poll-interval", "0.2", "--concurrency", "2")
    workers = [start_worker(*args, env=env) for _ in range(2)]
    done = Job.objects.filter(state="SUCCESSFUL")
    restarts = []
    # A safe shutdown (SIGINT: PgBouncer waits for open transactions to end), then an
    # immediate one (SIGTERM: it closes every connection at once, transactions and all).
    for signum, after in ((signal.SIGINT, total // 4), (signal.SIGTERM, total // 2)):
        wait_for(
            lambda n=after: done.count() >= n,
            timeout=60,
            what=f"{after} jobs done (now {states()})",
            interval=0.1,
        )
        before = done.count()
        pgbouncer.restart(signum, down_for=1.0)
        restarts.append((signum.name, before))
    wait_showing(
        workers,
        lambda: done.count() == total,
        timeout=90,
        what="every job to succeed (a job stuck RUNNING under a live worker?)",
    )
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(timeout=30) == 0, worker.output()

    runs = Counter(Execution.objects.values_list("key", flat=True))
    assert len(runs) == total, "a job succeeded without running"
    twice = sorted(key for key, count in runs.items() if count > 1)
    retried = Job.objects.filter(attempts__gt=1)
    print(
        f"\n{total} jobs through PgBouncer, restarts at {restarts}: "
        f"{retried.count()} retried, {len(twice)} ran twice"
    )
    # No job ran more often than it was attempted, and a job ran twice only where
    # PgBouncer cut its attempt off: that attempt is recorded as failed with the
    # connection error (the task's own write may have committed just before).
    for key, attempts, errors in Job.objects.values_list("args__1", "attempts", "errors"):
        assert runs[key] <= attempts, (key, runs[key], attempts)
        if runs[key] > 1:
            kinds = {error["exception_class_path"] for error in errors}
            assert kinds == {"django.db.utils.OperationalError"}, errors
