"""Several hosts, one database: a worker cut off by a network partition, and what follows.

Three ``runjobs`` workers run in three network namespaces (tests/process/netns.py), each
reaching PostgreSQL through its own link. One link is cut, silently, while its worker runs
jobs. The others must rescue those jobs after ``WORKER_TIMEOUT`` and run them to success;
once the link is back, the cut-off worker's late work must be refused (its atomic writes
rolled back: one committed row per job); and no two attempts of one job may ever run at the
same time, which the journal the task writes (start, a tick every 0.2 s, end, on the
shared filesystem) shows or refutes.
"""

import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.models import Count

from django_jobs.models import Job, Worker
from testproject.example import tasks
from testproject.example.models import Execution

from ..conftest import ROOT, wait_for
from . import netns
from .timings import FENCE_TIMINGS, WORKER_TIMEOUT

pytestmark = pytest.mark.django_db(transaction=True)

JOB_SECONDS = 7.0
JOBS = 4
#: How long the link stays down: past the rescue (about WORKER_TIMEOUT + a maintenance
#: round) and past the end of the cut-off attempts, so their outcomes arrive late.
CUT_SECONDS = 12.0


@pytest.fixture
def three_hosts(database_url: str) -> Iterator[list[netns.Host]]:
    reason = netns.skip_reason()
    if reason:
        pytest.skip(f"several hosts in network namespaces: {reason}")
    s = connection.settings_dict
    target = (s["HOST"] or "127.0.0.1", int(s["PORT"] or 5432))
    with netns.hosts(["host-a", "host-b", "host-c"], target) as made:
        yield made


def read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def attempts_of(records: list[dict[str, Any]]) -> dict[int, dict[int, dict[str, Any]]]:
    """job -> attempt -> {host, first, last, ended}: when each attempt really ran."""
    runs: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        run = runs[r["job"]].setdefault(
            r["attempt"], {"host": r["host"], "first": r["t"], "last": r["t"], "ended": False}
        )
        run["first"] = min(run["first"], r["t"])
        run["last"] = max(run["last"], r["t"])
        run["ended"] = run["ended"] or r["event"] == "end"
    return runs


def test_a_cut_off_worker_is_rescued_refused_and_never_overlaps(
    three_hosts: list[netns.Host],
    database_url: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    journal = tmp_path / "journal.jsonl"
    logs = {}
    pids = []
    for host in three_hosts:
        logs[host.label] = tmp_path / f"{host.label}.log"
        with logs[host.label].open("w") as out:
            worker = host.popen(
                [sys.executable, "manage.py", "runjobs", "--concurrency", "2"],
                cwd=ROOT,
                env={
                    **os.environ,
                    **FENCE_TIMINGS,
                    "DATABASE_URL": host.db_url(database_url),
                    "JOBS_TEST_HOST": host.label,
                },
                stdout=out,
                stderr=out,
            )
        pids.append(worker.pid)  # `ip netns exec` execs runjobs: the same process
    wait_for(
        lambda: Worker.objects.filter(pid__in=pids).count() == len(pids),
        timeout=30,
        what="three workers to register",
        interval=0.2,
    )
    ids = [int(tasks.partition_probe.enqueue(JOB_SECONDS, str(journal)).id) for _ in range(JOBS)]
    started = wait_for(
        lambda: (runs := attempts_of(read_journal(journal))) and len(runs) == JOBS and runs,
        timeout=15,
        what="every job to start",
    )
    by_host: dict[str, list[int]] = defaultdict(list)
    for job_id, runs in started.items():
        by_host[runs[1]["host"]].append(job_id)
    victim_label = max(by_host, key=lambda label: len(by_host[label]))
    victim = next(h for h in three_hosts if h.label == victim_label)
    cut_off = sorted(by_host[victim_label])
    time.sleep(0.5)  # the jobs are well under way, heartbeats sent since they started

    cut_at = time.time()
    victim.cut()
    rescued_at: dict[int, float] = {}

    def rescued() -> bool:
        # The rescue writes the WorkerLost error; the next claim raises attempts later.
        for job_id, errors in Job.objects.filter(pk__in=cut_off).values_list("pk", "errors"):
            if errors:
                rescued_at.setdefault(job_id, time.time())
        return len(rescued_at) == len(cut_off)

    wait_for(rescued, timeout=WORKER_TIMEOUT + 10, what="the cut-off jobs to be rescued")
    time.sleep(max(0.0, cut_at + CUT_SECONDS - time.time()))
    restored_at = time.time()
    victim.restore()
    wait_for(
        lambda: Job.objects.filter(pk__in=ids, state="SUCCESSFUL").count() == JOBS,
        timeout=JOB_SECONDS + 10,
        what="every job to succeed",
        interval=0.2,
    )
    victim_log = logs[victim_label]

    def victim_settled() -> bool:
        # Each cut-off attempt either ran to its end, and then its late outcome must have
        # reached the database (and been refused) after the link came back; or it was
        # stopped on its host, and its journal went quiet.
        runs, log = attempts_of(read_journal(journal)), victim_log.read_text()
        return all(
            f"Job {job_id} attempt 1 was taken over" in log
            if runs[job_id][1]["ended"]
            else time.time() - runs[job_id][1]["last"] > 1.0
            for job_id in cut_off
        )

    wait_for(
        victim_settled,
        timeout=20,
        what=f"the cut-off worker's late outcomes; its log:\n{victim_log.read_text()[-3000:]}",
        interval=0.2,
    )

    runs = attempts_of(read_journal(journal))
    rows = {job.pk: job for job in Job.objects.filter(pk__in=ids)}
    committed = {
        int(key.removeprefix("probe-")): n
        for key, n in Execution.objects.filter(key__startswith="probe-")
        .values_list("key")
        .annotate(n=Count("id"))
    }
    figures: dict[str, Any] = {"cut_off_jobs": cut_off, "victim": victim_label}
    for job_id in cut_off:
        job, attempts = rows[job_id], runs[job_id]
        first, last = attempts[1], attempts[max(attempts)]
        figures[f"job {job_id}"] = {
            "cut_to_rescue_s": round(rescued_at[job_id] - cut_at, 2),
            "cut_to_victim_stopped_s": round(first["last"] - cut_at, 2),
            "victim_attempt_ended": first["ended"],
            "cut_to_next_start_s": round(attempts[2]["first"] - cut_at, 2),
            "gap_between_attempts_s": round(attempts[2]["first"] - first["last"], 2),
            "restored_after_s": round(restored_at - cut_at, 2),
        }
        # Rescued, run again elsewhere, and that attempt is the one that counts.
        assert job.attempts >= 2, job.errors
        assert job.errors[0]["exception_class_path"] == "django_jobs.exceptions.WorkerLost"
        assert first["host"] == victim_label
        assert last["host"] != victim_label, attempts
        assert last["ended"], attempts
        assert job.return_value == last["host"]
        # Its late work: refused by the fenced completion, its atomic write rolled back.
        if first["ended"]:
            assert f"Job {job_id} attempt 1 was taken over by a newer attempt" in (
                victim_log.read_text()
            ), victim_log.read_text()[-3000:]
    assert committed == dict.fromkeys(ids, 1), committed
    print(json.dumps(figures, indent=2))
    for name, value in figures.items():
        record_property(name, value)

    # The central claim: attempt n's last sign of life comes before attempt n+1 starts.
    overlaps = []
    for job_id, attempts in runs.items():
        numbers = sorted(attempts)
        for a, b in pairwise(numbers):
            if attempts[a]["last"] >= attempts[b]["first"]:
                overlaps.append(
                    f"job {job_id}: attempt {a} on {attempts[a]['host']} ran until "
                    f"{attempts[a]['last'] - cut_at:+.2f} s, attempt {b} on "
                    f"{attempts[b]['host']} started at {attempts[b]['first'] - cut_at:+.2f} s "
                    "(seconds from the cut)"
                )
    assert not overlaps, "attempts overlapped:\n" + "\n".join(overlaps)
