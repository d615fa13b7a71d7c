"""Quick figures for the core: drain rate of one `runjobs --burst` and idle wake-up latency.

Run: scripts/bench (or `python bench/quick.py --jobs 10000 --latency-samples 100`).
Uses the database in DATABASE_URL (the embedded one otherwise) and empties the job
table first. The full benchmark suite with raw-SQL references comes with the
performance work; this script keeps the two headline numbers honest meanwhile.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from django_jobs.models import Job  # noqa: E402
from testproject.example import tasks  # noqa: E402


def worker(*args: str) -> subprocess.Popen:
    env = {**os.environ, "JOBS_LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
        [sys.executable, "manage.py", "runjobs", "-v", "0", *args], cwd=ROOT, env=env
    )


def drain(jobs: int, concurrency: int) -> dict:
    Job.objects.all().delete()
    for start in range(0, jobs, 5000):
        with transaction.atomic():
            tasks.noop.enqueue_many([((), {})] * min(5000, jobs - start))
    with connection.cursor() as cur:
        cur.execute("ANALYZE django_jobs_job")
    began = time.perf_counter()
    process = worker("--burst", "--concurrency", str(concurrency))
    process.wait(timeout=600)
    wall = time.perf_counter() - began
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at)) "
            "FROM django_jobs_job WHERE state = 'SUCCESSFUL'"
        )
        done, busy = cur.fetchone()
    assert done == jobs, f"only {done} of {jobs} jobs succeeded"
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "jobs_per_s_while_draining": round(done / float(busy)),
        "jobs_per_s_including_start": round(done / wall),
    }


def latency(samples: int) -> dict:
    Job.objects.all().delete()
    process = worker("--poll-interval", "60")
    try:
        time.sleep(3)  # start-up and the first LISTEN
        delays = []
        for _ in range(samples):
            with transaction.atomic():
                result = tasks.noop.enqueue()
                # Taken before COMMIT, so the figure is an upper bound that includes the
                # commit itself (after it, the worker may already have started the job).
                committed = timezone.now()
            deadline = time.monotonic() + 10
            while True:
                started = (
                    Job.objects.filter(pk=int(result.id))
                    .values_list("started_at", flat=True)
                    .first()
                )
                if started is not None:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("a job did not start within 10 s: is LISTEN working?")
                time.sleep(0.0005)
            delays.append((started - committed).total_seconds() * 1000)
            time.sleep(0.02)
    finally:
        process.terminate()
        process.wait(timeout=30)
    delays.sort()
    return {
        "samples": samples,
        "p50_ms": round(statistics.median(delays), 2),
        "p95_ms": round(delays[int(len(delays) * 0.95) - 1], 2),
        "max_ms": round(delays[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--latency-samples", type=int, default=100)
    args = parser.parse_args()
    report = {
        "drain": drain(args.jobs, args.concurrency),
        "latency": latency(args.latency_samples),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
