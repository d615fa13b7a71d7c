"""What every scenario shares: the sizes of this run, the results so far and the checks.

Sizes are the only difference between ``--quick`` (CI: does it complete, is every job
done exactly once) and the full run (the figures the issue's targets are judged on).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench import measure


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does. ``Sizes.for_mode`` picks quick or full."""

    quick: bool
    #: Runs of the S1 drain and of the R2 batch-50 reference; the report takes medians.
    repeats: int
    #: Jobs created 5,000 per statement (enqueue_many) before a drain is timed.
    seed_batch: int = 5_000
    r1_seconds: int = 5
    r2_jobs: int = 50_000
    #: The one-job-per-transaction loop runs this long instead of draining everything.
    r2_single_seconds: float = 5.0
    r4_samples: int = 1_000
    s1_jobs: int = 100_000
    s2_jobs: int = 100_000
    s2_threads: int = 4
    s3_jobs: int = 1_000_000
    s3_batch: int = 5_000
    s4_samples: int = 1_000
    s4_poll_samples: int = 60
    s4_poll_interval: float = 0.2
    s4_open_rate: float = 50.0
    s4_open_seconds: float = 60.0
    s5_history: int = 1_000_000
    s5_future: int = 1_000_000
    s6_before: float = 5.0
    s6_hold: float = 120.0
    s6_after: float = 5.0
    #: Then the worker may finish the rest for at most this long before it is stopped.
    s6_drain_out: float = 30.0
    #: Members of W1's chord (the issue's figure; cheap enough for the quick run too).
    w1_members: int = 10_000
    #: F1: rate-limited no-op jobs (the task allows 100 a second).
    f1_jobs: int = 1_500
    #: F2: no-op jobs spread over this many concurrency keys, one running per key.
    f2_jobs: int = 20_000
    f2_keys: int = 100
    rss_checkpoint: int = 10_000
    rss_jobs: int = 1_000_000
    #: The RSS drain is cut to what S1's rate drains in this many seconds, so a slow
    #: worker cannot push the run past its time budget (the report says so when it does).
    rss_budget_s: float = 90.0
    #: Upper bound for any single drain (a worker that hangs fails the run, not CI's clock).
    drain_timeout_s: float = 900.0

    @classmethod
    def for_mode(cls, quick: bool) -> "Sizes":
        if not quick:
            return cls(quick=False, repeats=3)
        return cls(
            quick=True,
            repeats=1,
            r1_seconds=1,
            r2_jobs=5_000,
            r2_single_seconds=1.0,
            r4_samples=200,
            s1_jobs=10_000,
            s2_jobs=5_000,
            s3_jobs=100_000,
            s4_samples=100,
            s4_poll_samples=10,
            s4_open_seconds=10.0,
            s5_history=200_000,
            s5_future=50_000,
            s6_before=2.0,
            s6_hold=15.0,
            s6_after=2.0,
            s6_drain_out=20.0,
            f1_jobs=150,
            f2_jobs=1_000,
            f2_keys=20,
            rss_jobs=100_000,
            rss_budget_s=5.0,
            drain_timeout_s=120.0,
        )


@dataclass
class Check:
    """A correctness check: a failed one makes the run exit non-zero."""

    name: str
    ok: bool
    detail: str


@dataclass
class Context:
    sizes: Sizes
    #: Keyword arguments for psycopg.connect, from Django's settings for the database.
    conn_params: dict[str, Any]
    log_dir: Path
    results: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    statements_available: bool = False
    #: The server's postmaster pid when it runs here (PostgreSQL CPU figures), else None.
    postmaster_pid: int | None = None

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Record a correctness check (printed at once when it fails)."""
        self.checks.append(Check(name, bool(ok), detail))
        if not ok:
            print(f"  CHECK FAILED: {name}: {detail}", flush=True)
        return bool(ok)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def connect(self, **kwargs: Any) -> psycopg.Connection:
        """A new autocommit psycopg connection to the benchmark database."""
        conn = psycopg.connect(**self.conn_params, autocommit=True, **kwargs)
        conn.execute("SET TIME ZONE 'UTC'")
        return conn

    def counters(self, conn: psycopg.Connection) -> measure.PgCounters:
        return measure.pg_counters(conn, with_statements=self.statements_available)

    def drain_rate(self, default: float) -> tuple[float, bool]:
        """S1's median drain rate (jobs/s) if S1 ran, else ``default``; and which it was."""
        rate = self.results.get("S1", {}).get("median_jobs_per_s_draining")
        return (float(rate), True) if rate else (default, False)
