"""Self-fencing: a worker cut off from the database stops its jobs before they are rescued.

The worker under test reaches PostgreSQL through a relay (``tcpproxy``) that the test
holds, as a partition would: no error, no reset, statements that never return. Another
worker, connected directly, leads maintenance and rescues. What is asserted comes from
the rows and from a file each attempt writes its start and a tick every 0.1 s to.
``test_partition.py`` does the same with network namespaces, as between hosts.
"""

import itertools
import json
import time
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection

from django_jobs.models import Job
from testproject.example import tasks
from testproject.example.models import LedgerEntry

from ..conftest import wait_for
from .tcpproxy import TcpProxy, proxy_to
from .timings import FENCE_TIMINGS

pytestmark = pytest.mark.django_db(transaction=True)


def attempts_by_job(log: Path) -> dict[int, dict[int, tuple[float, float]]]:
    """{job: {attempt: (first record, last record)}} from the attempts' log file."""
    spans: dict[int, dict[int, tuple[float, float]]] = {}
    if not log.exists():
        return spans
    for line in log.read_text().splitlines():
        record = json.loads(line)
        job = spans.setdefault(record["job"], {})
        first, _ = job.get(record["attempt"], (record["t"], record["t"]))
        job[record["attempt"]] = (first, record["t"])
    return spans


def assert_no_overlap(spans: dict[int, dict[int, tuple[float, float]]]) -> list[float]:
    """No attempt of a job started before the previous one's last sign of life; the gaps."""
    gaps = []
    for job, attempts in spans.items():
        ordered = [attempts[n] for n in sorted(attempts)]
        for (_, last), (start, _) in itertools.pairwise(ordered):
            assert start > last, (
                f"job {job}: an attempt started at {start:.2f} while the previous one was "
                f"still running at {last:.2f}"
            )
            gaps.append(start - last)
    return gaps


def worker_sessions() -> int:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        return cur.fetchone()[0]


def through(database_url: str, port: int) -> str:
    parts = urlsplit(database_url)
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = f"{netloc[0]}@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{port}"))


def relayed(database_url: str) -> AbstractContextManager[TcpProxy]:
    db = urlsplit(database_url)
    return proxy_to(db.hostname or "127.0.0.1", db.port or 5432)


def start_behind(
    proxy: TcpProxy, start_worker, database_url: str, log: Path, seconds: float, *args: str
):
    """A worker reaching the database through ``proxy``, running the first attempt of a
    ``seconds``-long job that logs to ``log``: (the worker, the job's result)."""
    worker = start_worker(
        *args, env={**FENCE_TIMINGS, "DATABASE_URL": through(database_url, proxy.port)}
    )
    result = tasks.timed_attempt.enqueue(seconds=seconds, log_path=str(log))
    wait_for(lambda: 1 in attempts_by_job(log).get(int(result.id), {}), 30, "the first attempt")
    return worker, result


def test_a_worker_cut_off_stops_its_job_before_the_rescue_runs_it_again(
    start_worker, database_url, tmp_path
):
    log = tmp_path / "attempts.jsonl"
    with relayed(database_url) as proxy:
        cut_off, result = start_behind(
            proxy, start_worker, database_url, log, 6, "--concurrency", "1", "-v", "2"
        )
        proxy.hold()
        cut_at = time.time()
        rescuer = start_worker("--concurrency", "1", env=FENCE_TIMINGS)
        wait_for(
            lambda: 2 in attempts_by_job(log).get(int(result.id), {}), 30, "the rescued attempt"
        )
        second_started = attempts_by_job(log)[int(result.id)][2][0]
        first_last_seen = attempts_by_job(log)[int(result.id)][1][1]
        # Heal once the rescued attempt runs: the cut-off worker's late outcome for the
        # first attempt (a failure at its fence) must now be refused.
        time.sleep(1)
        proxy.release()

        job = Job.objects.get(pk=result.id)
        wait_for(
            lambda: Job.objects.get(pk=result.id).state == "SUCCESSFUL", 40, "the job to succeed"
        )
        job.refresh_from_db()
        gaps = assert_no_overlap(attempts_by_job(log))

        assert job.attempts == 2
        # The first attempt's transaction never committed; the second's did.
        assert list(LedgerEntry.objects.values_list("key", "job_attempt")) == [
            (f"timed-{result.id}", 2)
        ]
        stopped_after = first_last_seen - cut_at
        # It had at most a heartbeat interval of lease left at the cut, and stops 1 s
        # before WORKER_TIMEOUT: well before the rescue could come.
        assert stopped_after < 3.5, f"the cut-off job ran on {stopped_after:.1f} s after the cut"
        assert second_started - cut_at >= 3.0

        # Back on the network, the cut-off worker carries on: it claims and runs jobs.
        rescuer.signal(15)
        rescuer.wait(20)
        again = tasks.add.enqueue(2, 3)
        wait_for(
            lambda: Job.objects.get(pk=again.id).state == "SUCCESSFUL",
            30,
            "a new job on the healed worker",
        )
        cut_off.signal(15)
        assert cut_off.wait(20) == 0
        output = cut_off.output()
        assert "Killing child" in output, output
        assert "no heartbeat confirmed" in output, output
        print(
            f"\nfencing: cut-off job's last tick {stopped_after:.2f} s after the cut; the "
            f"rescued attempt started {second_started - cut_at:.2f} s after it; gap between "
            f"attempts {min(gaps):.2f} s"
        )


def test_with_the_threads_pool_a_cut_off_worker_exits_at_its_fence(
    start_worker, database_url, tmp_path
):
    """A thread cannot be killed: the process goes, with status 75, before the rescue."""
    log = tmp_path / "attempts.jsonl"
    with relayed(database_url) as proxy:
        cut_off, result = start_behind(
            proxy, start_worker, database_url, log, 20, "--pool", "threads"
        )
        proxy.hold()
        cut_at = time.time()
        assert cut_off.wait(10) == 75
        exited_after = time.time() - cut_at
        last_tick = attempts_by_job(log)[int(result.id)][1][1]
        assert last_tick - cut_at < 3.5
        assert "Stopping process" in cut_off.output()
    # Nobody rescued it yet (no other worker): it is still RUNNING, for the next leader.
    assert Job.objects.get(pk=result.id).state == "RUNNING"
    wait_for(lambda: not worker_sessions(), 10, "the relayed sessions to end")
    print(f"\nthreads pool: exited {exited_after:.2f} s after the cut")
