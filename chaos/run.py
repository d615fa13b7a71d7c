"""The chaos run's entry point: ``scripts/chaos [--short] [--seconds N] [--seed N]``.

Starts its own PostgreSQL cluster (and PgBouncer in transaction mode when ``pgbouncer`` is
on PATH), three workers (one inside a network namespace when namespaces are permitted,
one through PgBouncer), then for the run's duration enqueues jobs of every kind while
injecting faults: SIGKILL of children and of supervisors, SIGTERM, PostgreSQL and
PgBouncer restarts, and a partition. Then it lets the workers drain with no chaos, reads
the evidence (the job rows and the journal the tasks wrote) and prints the tally
(``checks.py``). Exit status 1 when a check fails, 2 when the run itself could not be set up.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.process.timings import children_of

from .cluster import Cluster, PgBouncer

ROOT = Path(__file__).resolve().parent.parent
WORKER_TIMEOUT = 4.0
FAST = {
    "JOBS_WORKER_TIMEOUT": str(WORKER_TIMEOUT),
    "JOBS_HEARTBEAT_INTERVAL": "1",
    "JOBS_MAINTENANCE_INTERVAL": "1",
    "JOBS_RETRY_BASE_DELAY": "0.05",
    "JOBS_POLL_INTERVAL": "0.5",
    "JOBS_LOG_LEVEL": "INFO",
    "DEBUG": "False",
}
GRACE = 2.0
PARTITION_SECONDS = 2.5 * WORKER_TIMEOUT  # long enough to be rescued, and to come back
#: Jobs sent just before a partition: still running when the rescue comes.
LONG_SECONDS = 2 * WORKER_TIMEOUT
EVENTS = ("kill_child", "kill_supervisor", "sigterm", "pg_restart", "pgbouncer_restart",
          "partition")  # fmt: skip


@dataclass
class Worker:
    """One ``runjobs``, restarted in place after a kill or a stop."""

    name: str
    env: dict[str, str]
    argv: list[str]
    log: Path
    host: Any = None  # a tests.process.netns.Host when it runs in a namespace
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        argv = [sys.executable, "manage.py", "runjobs", *self.argv]
        with self.log.open("a") as out:
            out.write(f"--- start {self.starts} at {time.time():.3f}\n")
            out.flush()
            kwargs: dict[str, Any] = {"cwd": ROOT, "env": self.env, "stdout": out, "stderr": out}
            self.popen = (
                self.host.popen(argv, **kwargs) if self.host else subprocess.Popen(argv, **kwargs)
            )
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = GRACE + 15) -> int | None:
        if not self.alive:
            return None
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
            return None


@dataclass
class Run:
    """What was done to the system, for the tally and the checks."""

    events: Counter = field(default_factory=Counter)
    skipped: dict[str, str] = field(default_factory=dict)
    #: Processes the run killed or stopped: executions there may be repeated.
    stopped_pids: set[int] = field(default_factory=set)
    enqueued: dict[int, str] = field(default_factory=dict)  # job id -> kind
    #: (kind, workflow id, expected return value)
    workflows: list[tuple[str, str, Any]] = field(default_factory=list)
    enqueue_errors: int = 0
    schedule_runs: dict[tuple[int, str], int | None] = field(default_factory=dict)
    schedule_conflicts: list[str] = field(default_factory=list)
    background: list[threading.Thread] = field(default_factory=list)


def _seconds(text: str) -> float:
    """``--seconds``: a finite number of seconds the run can wait out."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 1 <= value <= 86_400:
        raise argparse.ArgumentTypeError(
            f"{text!r} seconds: give 1 to 86400 (a day); the drain after it is bounded too"
        )
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="CI: about 25 s of chaos")
    parser.add_argument(
        "--seconds", type=_seconds, help="seconds of chaos, 1 to 86400 (default 180; 25 short)"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, journal)")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (25.0 if args.short else 180.0)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    print(f"chaos: {seconds:.0f} s of chaos, seed {seed}", flush=True)
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="django-jobs-chaos-"))
    tmp.chmod(0o755)  # the servers run as another user
    cluster = Cluster(tmp)
    bouncer = PgBouncer(tmp, cluster)
    workers: list[Worker] = []
    hosts: Any = contextlib.ExitStack()
    try:
        cluster.start()
        return _run(args, seconds, seed, tmp, cluster, bouncer, workers, hosts, began)
    finally:
        for w in workers:
            if w.alive:
                assert w.popen is not None
                w.popen.kill()
                w.popen.wait(10)
        hosts.close()
        bouncer.stop()
        cluster.stop()
        if args.keep:
            print(f"chaos: kept {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        print(f"chaos: {time.monotonic() - began:.1f} s in all", flush=True)


def _run(
    args: argparse.Namespace,
    seconds: float,
    seed: int,
    tmp: Path,
    cluster: Cluster,
    bouncer: PgBouncer,
    workers: list[Worker],
    hosts: contextlib.ExitStack,
    began: float,
) -> int:
    rng = random.Random(seed)
    journal = tmp / "journal.jsonl"
    os.environ.update(DJANGO_SETTINGS_MODULE="chaos.settings", DATABASE_URL=cluster.url())
    os.environ.pop("CHAOS_JOURNAL", None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from . import checks, traffic

    run = Run()
    base_env = {**os.environ, **FAST, "CHAOS_JOURNAL": str(journal)}
    common = ["--concurrency", "3", "--grace", str(GRACE)]

    # Worker 0 in a namespace of its own, to be partitioned; worker 2 through PgBouncer.
    ns_host = None
    sys.path.insert(0, str(ROOT))
    from tests.process import netns

    reason = netns.skip_reason()
    if reason is None:
        netns.sweep_stale()
        ns_host = hosts.enter_context(netns.Host("chaos-ns", ("127.0.0.1", cluster.port)))
    else:
        run.skipped["partition"] = reason
    workers.append(
        Worker(
            "w0-netns" if ns_host else "w0",
            {
                **base_env,
                "JOBS_TEST_HOST": "w0",
                "DATABASE_URL": ns_host.db_url(cluster.url()) if ns_host else cluster.url(),
            },
            common,
            tmp / "w0.log",
            host=ns_host,
        )
    )
    workers.append(Worker("w1", {**base_env, "JOBS_TEST_HOST": "w1"}, common, tmp / "w1.log"))
    if bouncer.available:
        bouncer.start()
        workers.append(
            Worker(
                "w2-pgbouncer",
                {
                    **base_env,
                    "JOBS_TEST_HOST": "w2",
                    "CHAOS_POOLED": "1",
                    "DATABASE_URL": cluster.url(port=bouncer.port),
                },
                [*common, "--no-listen"],
                tmp / "w2.log",
            )
        )
    else:
        run.skipped["pgbouncer_restart"] = "pgbouncer is not on PATH (apt-get install pgbouncer)"
        workers.append(Worker("w2", {**base_env, "JOBS_TEST_HOST": "w2"}, common, tmp / "w2.log"))
    for w in workers:
        w.start()
    traffic.create_schedules()
    print(f"chaos: set up in {time.monotonic() - began:.1f} s; workers "
          + ", ".join(f"{w.name} (pid {w.popen.pid if w.popen else '-'})" for w in workers),
          flush=True)  # fmt: skip

    # The plan: in a short run every available kind once, spread out (the partition first,
    # it lasts longest); in a long run, random kinds at random intervals.
    available = [e for e in EVENTS if e not in run.skipped]
    if args.short:
        rest = [e for e in available if e != "partition"]
        rng.shuffle(rest)
        kinds = (["partition"] if "partition" in available else []) + rest
        step = seconds / (len(kinds) + 1)
        plan = [(2.5 + i * step, kind) for i, kind in enumerate(kinds)]
    else:
        plan, at = [], 1.0
        while at < seconds - 2:
            plan.append((at, rng.choice(available)))
            at += rng.uniform(2.0, 6.0)
    from django_jobs.models import Worker as WorkerRow

    deadline = time.monotonic() + 30
    while WorkerRow.objects.count() < len(workers) and time.monotonic() < deadline:
        time.sleep(0.1)  # the chaos clock starts once every worker serves
    start = time.monotonic()
    partition_until: float | None = None
    long_sent = False
    next_enqueue = start
    next_snapshot = start
    while (now := time.monotonic() - start) < seconds or partition_until is not None:
        if partition_until is not None and time.monotonic() >= partition_until:
            assert ns_host is not None
            ns_host.restore()
            partition_until = None
            print(f"chaos: {now:5.1f} s partition healed", flush=True)
        if plan and plan[0][1] == "partition" and not long_sent and plan[0][0] - 1.5 <= now:
            traffic.enqueue_long(run, 3, LONG_SECONDS)
            long_sent = True
        while plan and plan[0][0] <= now:
            _, kind = plan.pop(0)
            done = _inject(kind, rng, run, workers, cluster, bouncer, ns_host, partition_until)
            if done and kind == "partition":
                partition_until = time.monotonic() + PARTITION_SECONDS
                long_sent = False
                kind += f" of w0 while it runs {_running_on(journal, 'w0')} job(s)"
            print(f"chaos: {now:5.1f} s {kind}{'' if done else ' (nothing to do)'}", flush=True)
        if time.monotonic() >= next_enqueue and now < seconds:
            traffic.enqueue_round(rng, run)
            next_enqueue = time.monotonic() + 0.4
        if time.monotonic() >= next_snapshot:
            traffic.snapshot_schedule_runs(run)
            next_snapshot = time.monotonic() + 2.0
        time.sleep(0.05)

    # The drain: every worker up, no chaos, no new work; bounded.
    for thread in run.background:
        thread.join(60)
    for w in workers:
        if not w.alive:
            w.start()
    traffic.disable_schedules(run)
    drain_limit = 25.0 if args.short else 90.0
    drain_began = time.monotonic()
    drained = traffic.wait_drained(drain_limit, run)
    traffic.snapshot_schedule_runs(run)
    print(
        f"chaos: drain {'done' if drained else 'NOT done'} in "
        f"{time.monotonic() - drain_began:.1f} s after the chaos",
        flush=True,
    )
    for w in workers:
        code = w.stop()
        if code not in (0, None):
            print(f"chaos: {w.name} exited with {code} on its final stop", flush=True)
    return checks.report(run, journal, workers, drained, time.monotonic() - began)


def _running_on(journal: Path, host: str) -> int:
    """How many executions on ``host`` journaled in the last 0.3 s (ticks come every 0.1)."""
    import json

    recent, now = set(), time.time()
    if journal.exists():
        for line in journal.read_text().splitlines()[-400:]:
            r = json.loads(line)
            if r["host"] == host and now - r["t"] < 0.3 and r["event"] != "end":
                recent.add((r["job"], r["pid"]))
    return len(recent)


def _inject(
    kind: str,
    rng: random.Random,
    run: Run,
    workers: list[Worker],
    cluster: Cluster,
    bouncer: PgBouncer,
    ns_host: Any,
    partition_until: float | None,
) -> bool:
    # A cut-off worker is left alone until its link is back.
    candidates = [w for w in workers if w.alive and (partition_until is None or w.host is None)]
    if kind == "kill_child":
        kids = [(w, k) for w in candidates for k in children_of(w.popen.pid)]  # type: ignore[union-attr]
        if not kids:
            return False
        _, kid = rng.choice(kids)
        run.stopped_pids.add(kid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(kid, signal.SIGKILL)
    elif kind in ("kill_supervisor", "sigterm"):
        if not candidates:
            return False
        w = rng.choice(candidates)
        assert w.popen is not None
        run.stopped_pids |= {w.popen.pid, *children_of(w.popen.pid)}
        if kind == "kill_supervisor":
            w.popen.kill()
            w.popen.wait(10)
        else:
            w.stop()
        w.start()
    elif kind == "pg_restart":
        # In a thread: the run goes on enqueueing into the outage, as a web site would.
        restart = threading.Thread(target=cluster.restart, args=("fast",), daemon=True)
        restart.start()
        run.background.append(restart)
    elif kind == "pgbouncer_restart":
        bouncer.restart()
    elif kind == "partition":
        if partition_until is not None or ns_host is None:
            return False
        ns_host.cut()
    run.events[kind] += 1
    return True


if __name__ == "__main__":
    sys.exit(main())
