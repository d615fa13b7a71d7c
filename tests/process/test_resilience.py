"""What happens to jobs when processes die, overrun, are stopped, or lose the database."""

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from django_jobs.models import Job, Worker
from testproject.example import tasks
from testproject.example.models import Execution

from ..conftest import wait_for
from .timings import FAST_RESCUE, children_of

pytestmark = pytest.mark.django_db(transaction=True)


def states() -> Counter:
    return Counter(Job.objects.values_list("state", flat=True))


def test_crash_hard_limit_and_soft_limit_each_end_in_their_state(start_worker):
    crash = tasks.crash_process.enqueue(3)
    hang = tasks.hang.enqueue(60)
    soft = tasks.overrun_soft_limit.enqueue(10)
    after = tasks.add.enqueue(20, 22)
    worker = start_worker("--burst", "--concurrency", "2", env={"JOBS_RETRY_BASE_DELAY": "0.05"})
    assert worker.wait(timeout=60) == 0, worker.output()
    for result in (crash, hang, soft, after):
        result.refresh()
    assert crash.status == "FAILED"
    assert crash.attempts == 2  # retried once, as its max_attempts allows
    crash_row = Job.objects.get(pk=int(crash.id))
    assert "exited with code 3 while running this job" in crash_row.errors[0]["message"]
    assert crash.errors[0].exception_class_path == "django_jobs.exceptions.WorkerProcessDied"
    assert hang.status == "FAILED"
    assert hang.errors[0].exception_class_path == "django_jobs.exceptions.TimeLimitExceeded"
    hang_row = Job.objects.get(pk=int(hang.id))
    assert hang_row.finished_at - hang_row.started_at < timedelta(seconds=10)
    assert soft.status == "SUCCESSFUL"
    assert soft.return_value == "cleaned up after the soft limit"
    assert after.status == "SUCCESSFUL"
    assert after.return_value == 42


def test_sigterm_with_grace_releases_a_long_job_without_spending_an_attempt(start_worker):
    result = tasks.sleep_for.enqueue(60)
    worker = start_worker("--grace", "1", "--concurrency", "1")
    wait_for(
        lambda: Job.objects.filter(pk=int(result.id), state="RUNNING").exists(),
        timeout=30,
        what="the job to start",
    )
    time.sleep(0.3)
    began = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.output()
    assert time.monotonic() - began < 10
    row = Job.objects.get(pk=int(result.id))
    assert (row.state, row.attempts, row.errors, row.worker_ids) == ("READY", 0, [], [])


def test_a_second_signal_stops_at_once(start_worker):
    result = tasks.sleep_for.enqueue(60)
    worker = start_worker("--concurrency", "1")  # default grace: 30 s
    wait_for(
        lambda: Job.objects.filter(pk=int(result.id), state="RUNNING").exists(),
        timeout=30,
        what="the job to start",
    )
    began = time.monotonic()
    worker.signal(signal.SIGINT)
    time.sleep(0.5)
    worker.signal(signal.SIGINT)
    assert worker.wait(timeout=20) == 0, worker.output()
    assert time.monotonic() - began < 10
    assert Job.objects.get(pk=int(result.id)).state == "READY"


def test_supervisor_sigkill_is_rescued_by_another_worker(start_worker):
    result = tasks.sleep_for.using(max_attempts=2).enqueue(1)
    doomed = start_worker("--concurrency", "1", env=FAST_RESCUE)
    wait_for(
        lambda: Job.objects.filter(pk=int(result.id), state="RUNNING").exists(),
        timeout=30,
        what="the job to start",
    )
    doomed.signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    killed_at = time.monotonic()
    rescuer = start_worker("--concurrency", "1", env=FAST_RESCUE)
    wait_for(
        lambda: Job.objects.filter(pk=int(result.id), state="SUCCESSFUL").exists(),
        timeout=60,
        what="the rescued job to run again",
    )
    rescued_after = time.monotonic() - killed_at
    row = Job.objects.get(pk=int(result.id))
    assert row.attempts == 2
    assert row.errors[0]["exception_class_path"] == "django_jobs.exceptions.WorkerLost"
    assert rescued_after < 30
    rescuer.signal(signal.SIGTERM)
    assert rescuer.wait(timeout=20) == 0


def test_chaos_kills_lose_nothing_and_only_killed_work_runs_twice(start_worker):
    rng = random.Random(1234)
    # 1,000 jobs of 10-60 ms: work for the five kills' 10 s and a little after; the long
    # chaos run (scripts/chaos) covers more kinds of jobs and faults.
    tasks.chaos_step.enqueue_many([((rng.randint(10, 60), f"chaos-{n}"), {}) for n in range(1000)])
    args = ("--concurrency", "2")
    workers = [start_worker(*args, env=FAST_RESCUE) for _ in range(2)]
    deadline = time.monotonic() + 150
    kills = 0
    while kills < 5 and time.monotonic() < deadline:
        time.sleep(rng.uniform(1.5, 3.0))
        live = [w for w in workers if w.popen.poll() is None]
        victim = rng.choice(live)
        kids = children_of(victim.pid)
        if kills % 2 == 0 and kids:
            os.kill(rng.choice(kids), signal.SIGKILL)  # one child: the supervisor replaces it
        else:
            victim.signal(signal.SIGKILL)  # the whole worker: another must rescue its jobs
            victim.wait(timeout=10)
            workers.append(start_worker(*args, env=FAST_RESCUE))
        kills += 1
    wait_for(
        lambda: states() == Counter({"SUCCESSFUL": 1000}),
        timeout=max(10.0, deadline - time.monotonic()),
        what=f"every job to succeed (now {states()})",
        interval=0.5,
    )
    runs = Counter(Execution.objects.values_list("key", flat=True))
    assert len(runs) == 1000
    twice = [key for key, count in runs.items() if count > 1]
    killed_kinds = {
        "django_jobs.exceptions.WorkerLost",
        "django_jobs.exceptions.WorkerProcessDied",
    }
    for row in Job.objects.filter(args__1__in=twice):
        # A second run is either a new attempt after the kill (WorkerLost or
        # WorkerProcessDied recorded), or a run the killed child finished but had not
        # recorded yet: its claim was released, the attempt given back, no error written
        # (docs/explanation/guarantees.md, "what is not promised").
        assert {e["exception_class_path"] for e in row.errors} <= killed_kinds, row.errors
    for worker in workers:
        if worker.popen.poll() is None:
            worker.signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0, worker.output()


@pytest.mark.skipif(
    shutil.which("pg_ctlcluster") is None or os.geteuid() != 0,
    reason="needs the machine's PostgreSQL cluster and the right to restart it",
)
def test_database_restart_loses_no_job(start_worker):
    settings = connection.settings_dict
    if settings["HOST"] not in ("127.0.0.1", "localhost") or str(settings["PORT"]) != "5432":
        pytest.skip("the test database is not the machine's cluster on port 5432")
    # Jobs that touch the database fail while it is down; their retries must succeed.
    tasks.chaos_step.enqueue_many([((5, f"restart-{n}"), {}) for n in range(1000)])
    workers = [start_worker("--concurrency", "2", env=FAST_RESCUE) for _ in range(2)]
    wait_for(
        lambda: Job.objects.filter(state="SUCCESSFUL").count() > 100,
        timeout=60,
        what="the workers to get going",
    )
    connection.close()
    version = os.listdir("/etc/postgresql")[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        timeout=60,
    )
    wait_for(
        lambda: states() == Counter({"SUCCESSFUL": 1000}),
        timeout=120,
        what="every job to succeed after the restart",
        interval=0.5,
    )
    for worker in workers:
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.output()
        assert "Database is back" in worker.output()


def test_a_worker_whose_maintenance_chore_raises_keeps_running_jobs(start_worker):
    # The rescue raises every round (the module patches it in the worker's process); the
    # pruner after it must still delete history, and jobs must still run.
    old = tasks.add.enqueue(1, 1)
    Job.objects.filter(pk=int(old.id)).update(
        state="SUCCESSFUL", finished_at=timezone.now() - timedelta(days=30)
    )
    before = tasks.add.enqueue(2, 3)
    worker = start_worker(
        "--concurrency",
        "1",
        env={
            **FAST_RESCUE,
            "JOBS_TASK_MODULES": "testproject.example.broken_maintenance",
        },
    )
    wait_for(
        lambda: worker.output().count("Maintenance: Rescuer failed") >= 3,
        timeout=20,
        what="three failed maintenance rounds",
    )
    after = tasks.add.enqueue(4, 5)
    for result in (before, after):
        wait_for(
            lambda r=result: Job.objects.filter(pk=int(r.id), state="SUCCESSFUL").exists(),
            timeout=15,
            what=f"job {result.id} to run",
        )
    assert not Job.objects.filter(pk=int(old.id)).exists()  # the pruner still ran
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.output()
    log = worker.output()
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: the rescue is broken on purpose" in log
    assert "stopped after" in log


def test_a_duration_past_the_calendar_is_refused_before_the_worker_starts(start_worker):
    # It once passed the checks, then made every worker's lease statement fail with
    # "timestamp out of range", and the worker exited.
    worker = start_worker(
        "--concurrency", "1", env={"JOBS_MAINTENANCE_INTERVAL": "100000000000000"}
    )
    assert worker.wait(timeout=30) != 0
    log = worker.output()
    assert "MAINTENANCE_INTERVAL is 1e+14 s, longer than the 1 day" in log, log
    assert "timestamp out of range" not in log


def test_runjobs_reload_stops_on_ctrl_c_as_cleanly_as_runjobs(start_worker):
    # As a terminal's Ctrl-C does: SIGINT to the whole process group of `runjobs --reload`.
    # (SIGTERM to the group is the end of the next test.)
    signum = signal.SIGINT
    result = tasks.sleep_for.enqueue(60)
    worker = start_worker("--reload", "--grace", "1", "--concurrency", "1", session=True)
    reloaded: list[int] = []  # the worker the reloader runs, in a process group of its own
    try:
        wait_for(
            lambda: Job.objects.filter(pk=int(result.id), state="RUNNING").exists(),
            timeout=30,
            what="the job to start",
        )
        reloaded = children_of(worker.pid)
        assert Worker.objects.exists()
        time.sleep(0.3)
        os.killpg(worker.pid, signum)
        assert worker.wait(timeout=20) == 0, worker.output()
    finally:
        for pid in children_of(worker.pid) + reloaded:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    row = Job.objects.get(pk=int(result.id))
    # Released within the grace, no attempt spent; not left RUNNING for a rescue.
    assert (row.state, row.attempts, row.errors, row.worker_ids) == ("READY", 0, [], [])
    assert not Worker.objects.exists()  # the worker's row (and its child's) removed
    log = worker.output()
    assert "stopped after" in log, log
    assert log.count("Got SIG") == 1, log  # heard once, not once per process


def test_runjobs_reload_restarts_on_a_change_and_gives_the_running_job_back(start_worker):
    result = tasks.sleep_for.enqueue(60)
    worker = start_worker("--reload", "--grace", "1", "--concurrency", "1", session=True)
    try:
        first = wait_for(
            lambda: (
                Job.objects.filter(pk=int(result.id), state="RUNNING")
                .values_list("worker_ids", flat=True)
                .first()
            ),
            timeout=30,
            what="the job to start",
        )
        time.sleep(1.5)  # the file watcher's first look at the files, once a second
        now = time.time()
        os.utime(tasks.__file__, (now, now))  # "edit" a module: same content, new mtime
        wait_for(
            lambda: (
                Job.objects.filter(pk=int(result.id), state="RUNNING")
                .exclude(worker_ids=first)
                .exists()
            ),
            timeout=30,
            what="the restarted worker to run the job again",
        )
        row = Job.objects.get(pk=int(result.id))
        assert row.attempts == 1  # given back without spending the first attempt
        # Now SIGTERM to the process group, as a process manager may send it.
        os.killpg(worker.pid, signal.SIGTERM)
        assert worker.wait(timeout=20) == 0, worker.output()
    finally:
        for pid in children_of(worker.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    log = worker.output()
    assert "changed: stopping the worker to restart it" in log, log
    assert log.count("stopped after") == 2, log  # the first worker, then the second
    assert log.count("Got SIGTERM") == 1, log  # heard once, not once per process
    row = Job.objects.get(pk=int(result.id))
    assert (row.state, row.attempts, row.errors, row.worker_ids) == ("READY", 0, [], [])
    assert not Worker.objects.exists()


def test_task_finished_is_sent_for_a_job_whose_process_died_or_was_killed(start_worker):
    # Django's own receiver of task_finished logs each finished task ("Task id=...
    # state=FAILED"): the worker's log shows what a receiver saw, in the process that
    # recorded it. Sentry's report of these deaths hangs on the same signal.
    crash = tasks.crash_process.enqueue(3)  # dies twice: retried, then FAILED
    hang = tasks.hang.enqueue(60)  # killed at its 1 s hard limit: FAILED
    worker = start_worker("--burst", "--concurrency", "2", env={"JOBS_RETRY_BASE_DELAY": "0.05"})
    assert worker.wait(timeout=60) == 0, worker.output()
    log = worker.output()
    for result, path in ((crash, "crash_process"), (hang, "hang")):
        line = f"Task id={result.id} path=testproject.example.tasks.{path} state=FAILED"
        assert log.count(line) == 1, log
    assert "state=READY" not in log  # the retry is not "finished"


def test_an_unexpected_loop_error_stops_the_worker_cleanly_and_exits_1(start_worker, tmp_path):
    # The loop raises while the job runs: the worker stops as on SIGTERM (the job gets
    # its grace, then goes back to the queue), removes its row and exits with 1.
    cue = tmp_path / "break-the-loop"
    result = tasks.sleep_for.enqueue(60)
    worker = start_worker(
        "--concurrency",
        "1",
        "--grace",
        "1",
        env={
            "JOBS_TASK_MODULES": "testproject.example.broken_loop",
            "JOBS_BREAK_LOOP_WHEN": str(cue),
        },
    )
    wait_for(
        lambda: Job.objects.filter(pk=int(result.id), state="RUNNING").exists(),
        timeout=30,
        what="the job to start",
    )
    cue.touch()
    assert worker.wait(timeout=20) == 1, worker.output()  # a process manager restarts it
    log = worker.output()
    assert "RuntimeError: the supervisor's loop is broken on purpose" in log
    assert "Grace period of 1 s is over" in log
    assert "stopped after" in log
    row = Job.objects.get(pk=int(result.id))
    assert (row.state, row.attempts, row.errors) == ("READY", 0, [])
    assert not Worker.objects.exists()
