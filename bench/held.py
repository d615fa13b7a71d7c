"""S6: a long transaction elsewhere in the database must not make the queue fall behind.

A REPEATABLE READ transaction that has read the job table holds back the xmin
horizon: no dead row version created after it started can be cleaned up, so every
claim has to step over more and more dead index entries. With a steady load at half
of S1's measured rate and one ``runjobs --concurrency 2``, the READY backlog is
sampled every second before, during and after such a transaction is held open.
"No backlog growth": at the end of the hold the backlog is at most ``FEW_SECONDS``
of offered load.
"""

import threading
import time
from typing import Any

from bench import db
from bench.context import Context
from bench.report import print_table
from bench.workerproc import WorkerProcess

#: "No backlog growth" allows a backlog of this many seconds of offered load.
FEW_SECONDS = 5.0
#: The producer enqueues a batch every this many seconds (open loop: it never waits).
TICK = 0.01
#: A producer that fell behind catches up in batches of at most this many jobs.
MAX_BATCH = 1_000


class _Loop(threading.Thread):
    """A daemon thread that loops until ``stop()`` and keeps what it raised in ``error``."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


class Producer(_Loop):
    """Offers ``rate`` jobs/s with ``enqueue_many`` every ``TICK`` on its own connection."""

    def __init__(self, rate: float) -> None:
        super().__init__("bench-s6-producer")
        self.rate = rate
        self.produced = 0
        self.elapsed = 0.0

    def run(self) -> None:
        from django.db import connection, transaction

        from testproject.example import tasks

        try:
            began = time.perf_counter()
            tick = 0
            while not self._halt.is_set():
                owed = int((time.perf_counter() - began) * self.rate) - self.produced
                due = min(MAX_BATCH, owed)
                if due > 0:
                    with transaction.atomic():
                        tasks.noop.enqueue_many([((), {})] * due)
                    self.produced += due
                tick += 1
                pause = began + tick * TICK - time.perf_counter()
                if pause > 0:
                    self._halt.wait(pause)
            self.elapsed = time.perf_counter() - began
        except BaseException as exc:
            self.error = exc
        finally:
            connection.close()


class BacklogSampler(_Loop):
    """Every second: READY jobs that are due (the backlog), and the table's dead rows."""

    def __init__(self, ctx: Context) -> None:
        super().__init__("bench-s6-sampler")
        self.ctx = ctx
        self.samples: list[tuple[float, int, int]] = []
        self.phase_of: list[str] = []
        self.phase = "before"

    def run(self) -> None:
        try:
            with self.ctx.connect() as conn:
                while not self._halt.is_set():
                    backlog = conn.execute(
                        "SELECT count(*) FROM django_jobs_job"
                        " WHERE state = 'READY' AND available_at <= now()"
                    ).fetchone()[0]
                    dead = conn.execute(
                        "SELECT n_dead_tup FROM pg_stat_user_tables"
                        " WHERE relname = 'django_jobs_job'"
                    ).fetchone()[0]
                    self.samples.append((time.time(), backlog, dead))
                    self.phase_of.append(self.phase)
                    self._halt.wait(1.0)
        except BaseException as exc:
            self.error = exc


def _finished_between(low: int, start: float, end: float) -> int:
    return db.fetchone(
        "SELECT count(*) FROM django_jobs_job WHERE id >= %s AND state = 'SUCCESSFUL'"
        " AND finished_at >= to_timestamp(%s) AND finished_at < to_timestamp(%s)",
        [low, start, end],
    )[0]


def _check_nothing_lost(ctx: Context, low: int, expected: int, drained: bool) -> None:
    """Every job done exactly once; if the drain-out was cut short, the rest is READY
    with no attempt spent (handed back by the worker's graceful stop), none RUNNING.
    """
    high = db.fetchone("SELECT max(id) FROM django_jobs_job")[0]
    stats = db.job_stats(low, high)
    if drained:
        problems = db.exactly_once_problems(stats, expected)
        ctx.check("S6: every job done exactly once", not problems, "; ".join(problems))
        return
    running, ready_attempted = db.fetchone(
        "SELECT count(*) FILTER (WHERE state = 'RUNNING'),"
        " count(*) FILTER (WHERE state = 'READY' AND attempts <> 0)"
        " FROM django_jobs_job WHERE id >= %s",
        [low],
    )
    ok = (
        stats["rows"] == expected
        and stats["successful"] + stats["ready_or_running"] == expected
        and stats["successful_not_one_attempt"] == 0
        and running == 0
        and ready_attempted == 0
    )
    ctx.check(
        "S6: no job lost or run twice (drain-out cut short: the rest is READY, unattempted)",
        ok,
        f"{stats}; running={running}; ready with attempts={ready_attempted}",
    )


def run_s6(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    rate, measured = ctx.drain_rate(default=1_000.0)
    if not measured:
        ctx.note("S6: S1 did not run; offering half of an assumed 1,000 jobs/s")
    offered = rate / 2
    db.reset_jobs()
    marks: dict[str, float] = {}
    with WorkerProcess(["--concurrency", "2"], ctx.log_dir / "S6.log") as worker:
        low = db.warm_up(worker.ensure_running)
        sampler = BacklogSampler(ctx)
        producer = Producer(offered)
        holder = ctx.connect()
        try:
            sampler.start()
            marks["start"] = time.time()
            producer.start()
            time.sleep(sizes.s6_before)
            holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT id FROM django_jobs_job LIMIT 1").fetchall()
            marks["hold_start"] = time.time()
            sampler.phase = "hold"
            time.sleep(sizes.s6_hold)
            holder.execute("COMMIT")
            marks["hold_end"] = time.time()
            sampler.phase = "after"
            time.sleep(sizes.s6_after)
        finally:
            producer.stop()
            marks["end"] = time.time()
            sampler.phase = "drain-out"
            holder.close()
        # Let the worker finish what is left (bounded: a backlog left by the hold could
        # take long), then stop it; SIGTERM hands unstarted jobs back to the queue.
        began = time.monotonic()
        drained = False
        while time.monotonic() - began < sizes.s6_drain_out:
            left = db.fetchone(
                "SELECT count(*) FROM django_jobs_job WHERE state IN ('READY', 'RUNNING')"
            )[0]
            if not left:
                drained = True
                break
            worker.ensure_running()
            time.sleep(0.2)
        drain_out_s = time.monotonic() - began
        sampler.stop()
        exit_code = worker.stop()
    for thread in (producer, sampler):
        if thread.error is not None:
            raise thread.error
    _check_nothing_lost(ctx, low, producer.produced + 1, drained)

    def achieved(start: str, end: str) -> float:
        return _finished_between(low, marks[start], marks[end]) / (marks[end] - marks[start])

    during = [
        b for (_, b, _), p in zip(sampler.samples, sampler.phase_of, strict=True) if p == "hold"
    ]
    before = [
        b for (_, b, _), p in zip(sampler.samples, sampler.phase_of, strict=True) if p == "before"
    ]
    end_of_hold = during[-1] if during else None
    allowed = FEW_SECONDS * offered
    ok = end_of_hold is not None and end_of_hold <= allowed
    result = {
        "s1_rate_used": round(rate),
        "s1_rate_measured": measured,
        "offered_target_jobs_per_s": round(offered),
        "offered_jobs_per_s": round(producer.produced / producer.elapsed)
        if producer.elapsed
        else None,
        "produced": producer.produced,
        "hold_s": sizes.s6_hold,
        "achieved_before_jobs_per_s": round(achieved("start", "hold_start")),
        "achieved_during_jobs_per_s": round(achieved("hold_start", "hold_end")),
        "achieved_after_jobs_per_s": round(achieved("hold_end", "end")),
        "backlog_before_max": max(before, default=None),
        "backlog_at_hold_start": during[0] if during else None,
        "backlog_at_hold_end": end_of_hold,
        "backlog_max": max(during, default=None),
        "backlog_allowed": round(allowed),
        "no_backlog_growth": ok,
        "verdict": f"backlog {end_of_hold} at end (allowed {allowed:,.0f})",
        "samples": [
            {"t": round(t - marks["start"], 2), "backlog": b, "dead_rows": d, "phase": p}
            for (t, b, d), p in zip(sampler.samples, sampler.phase_of, strict=True)
        ],
        "drained_after": drained,
        "drain_out_s": round(drain_out_s, 1),
        "worker_exit": exit_code,
    }
    db.reset_jobs()
    print_table(
        f"S6 held REPEATABLE READ transaction ({sizes.s6_hold:.0f} s) under load",
        [
            "offered/s",
            "achieved before",
            "during",
            "after",
            "backlog max",
            "backlog end of hold",
            "allowed",
            "no growth",
        ],
        [
            [
                result["offered_jobs_per_s"],
                result["achieved_before_jobs_per_s"],
                result["achieved_during_jobs_per_s"],
                result["achieved_after_jobs_per_s"],
                result["backlog_max"],
                end_of_hold,
                result["backlog_allowed"],
                ok,
            ]
        ],
    )
    return result
