"""Measuring helpers with no Django in them: /proc readings, PostgreSQL counters, statistics.

Everything here reads, nothing writes. CPU figures come from ``/proc/<pid>/stat``
(Linux); where a process is not visible (another user's, another host's, macOS) the
helpers return ``None`` and the report says "n/a" instead of guessing.
"""

import contextlib
import math
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC = Path("/proc")


# ── statistics ──────────────────────────────────────────────────────────────


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (``pct`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def latency_summary(ms: Sequence[float]) -> dict[str, Any]:
    """p50/p95/p99/max (and the sample count) of latencies in milliseconds."""
    return {
        "samples": len(ms),
        "p50_ms": _round(percentile(ms, 50), 3),
        "p95_ms": _round(percentile(ms, 95), 3),
        "p99_ms": _round(percentile(ms, 99), 3),
        "max_ms": _round(max(ms), 3) if ms else None,
        "mean_ms": _round(statistics.fmean(ms), 3) if ms else None,
    }


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# ── /proc: CPU and memory of processes ──────────────────────────────────────


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    comm: str
    #: Seconds of CPU this process used itself (utime + stime).
    cpu: float
    #: Seconds of CPU of its children that it has waited for (cutime + cstime).
    children_cpu: float


def read_stat(pid: int) -> ProcStat | None:
    """Parse ``/proc/<pid>/stat``; None if the process is gone or unreadable."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may itself contain spaces or parentheses.
    left, right = raw.index("("), raw.rindex(")")
    fields = raw[right + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, so fields[11].
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return ProcStat(
        pid=pid,
        ppid=int(fields[1]),
        comm=raw[left + 1 : right],
        cpu=(utime + stime) / _TICKS,
        children_cpu=(cutime + cstime) / _TICKS,
    )


def all_pids() -> list[int]:
    try:
        return [int(p.name) for p in _PROC.iterdir() if p.name.isdigit()]
    except OSError:
        return []


def cmdline(pid: int) -> str:
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def find_postmaster(conn: psycopg.Connection) -> int | None:
    """Pid of the postmaster serving ``conn``, if it runs on this host and is visible."""
    backend = read_stat(conn.info.backend_pid)
    if backend is None or backend.comm != "postgres":
        return None
    postmaster = read_stat(backend.ppid)
    return postmaster.pid if postmaster is not None and postmaster.comm == "postgres" else None


def postgres_cpu_seconds(postmaster: int | None) -> float | None:
    """CPU seconds used so far by the PostgreSQL server whose postmaster is ``postmaster``.

    Sums utime+stime of the postmaster and its live children (backends, background
    processes), plus the postmaster's cutime+cstime: backends that exited (a worker's
    connection closes when it stops) were reaped by the postmaster, so their whole CPU
    time lands there. A before/after difference therefore counts backends that came and
    went in between. Other databases' sessions on the same server are included. None
    when the server is not visible (another host, another user's processes).
    """
    if postmaster is None:
        return None
    root = read_stat(postmaster)
    if root is None:
        return None
    total = root.cpu + root.children_cpu
    for pid in all_pids():
        stat = read_stat(pid)
        if stat is not None and stat.ppid == postmaster:
            total += stat.cpu
    return total


def rusage_children_cpu() -> float:
    """CPU seconds (user + system) of this process's reaped children, recursively.

    A child's figure includes its own children only once it has waited for them, so
    after ``wait()`` on a ``runjobs`` supervisor that joined its pool this covers the
    whole worker tree. ``ProcessTreeSampler`` cross-checks it.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_kib(pid: int) -> tuple[int | None, int | None]:
    """(VmRSS, VmHWM) of a process in KiB from ``/proc/<pid>/status``; None if unknown."""
    rss = hwm = None
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return rss, hwm


def descendants(root: int) -> list[int]:
    """Pids of every live descendant of ``root`` (one scan of /proc)."""
    parents: dict[int, list[int]] = {}
    for pid in all_pids():
        stat = read_stat(pid)
        if stat is not None:
            parents.setdefault(stat.ppid, []).append(pid)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class TreeSample:
    t: float
    #: pid → VmRSS KiB, for the supervisor and each job-running child.
    supervisor_kib: int | None
    children_kib: dict[int, int]


@dataclass
class ProcessTreeSampler:
    """Samples RSS and CPU of a worker process tree every ``interval`` seconds (a thread).

    The supervisor is ``root``; its job-running children are the descendants whose
    command line shows multiprocessing's spawn entry point, or is the supervisor's own
    (forked) (helpers such as the resource tracker are counted for CPU but not reported
    as children). The last CPU
    reading of each pid is kept, so the sum approximates the tree's CPU even for
    children that exit before the end.
    """

    root: int
    interval: float = 0.25
    samples: list[TreeSample] = field(default_factory=list)
    last_cpu: dict[int, float] = field(default_factory=dict)
    peak_hwm_kib: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _kinds: dict[int, str] = field(default_factory=dict)

    def start(self) -> "ProcessTreeSampler":
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def sample_now(self) -> TreeSample:
        pids = [self.root, *descendants(self.root)]
        children: dict[int, int] = {}
        supervisor = None
        for pid in pids:
            stat = read_stat(pid)
            if stat is None:
                continue
            self.last_cpu[pid] = stat.cpu
            rss, hwm = rss_kib(pid)
            if hwm is not None:
                self.peak_hwm_kib[pid] = max(hwm, self.peak_hwm_kib.get(pid, 0))
            if pid == self.root:
                supervisor = rss
                continue
            kind = self._kinds.get(pid)
            if kind is None:
                # A spawned child shows multiprocessing's entry point; a forked one (the
                # first children, see ProcessPool.start) shows its supervisor's command.
                command = cmdline(pid)
                forked = command == cmdline(self.root)
                kind = "child" if "spawn_main" in command or forked else "helper"
                if "resource_tracker" in cmdline(pid):
                    kind = "helper"
                self._kinds[pid] = kind
            if kind == "child" and rss is not None:
                children[pid] = rss
        sample = TreeSample(time.time(), supervisor, children)
        if supervisor is not None:
            self.samples.append(sample)
        return sample

    def tree_cpu(self) -> float:
        return sum(self.last_cpu.values())

    def child_pids(self) -> list[int]:
        return sorted(pid for pid, kind in self._kinds.items() if kind == "child")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_now()
            self._stop.wait(self.interval)


# ── PostgreSQL counters ─────────────────────────────────────────────────────


@dataclass(frozen=True)
class PgCounters:
    """Server counters read at one instant: differences give per-job costs."""

    wal_lsn: str
    xact_commit: int
    xact_rollback: int
    #: Sum of pg_stat_statements.calls for this database, None without the extension.
    statement_calls: int | None
    #: Milliseconds this database's backends spent running statements (PostgreSQL 14+'s
    #: pg_stat_database.active_time): unlike the server's CPU, other databases on a
    #: shared server do not count. None before PostgreSQL 14.
    active_ms: float | None = None


def statements_available(conn: psycopg.Connection) -> bool:
    """True if pg_stat_statements is loaded and installed in this database.

    It needs ``shared_preload_libraries`` (a server restart), which the benchmark never
    does; without it the report counts transactions (``xact_commit``) instead.
    """
    preload = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
    if "pg_stat_statements" not in preload:
        return False
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT 1 FROM pg_stat_statements LIMIT 1")
    except psycopg.Error:
        return False
    return True


def pg_counters(conn: psycopg.Connection, *, with_statements: bool) -> PgCounters:
    """WAL position, this database's commit/rollback counts and statement calls.

    ``pg_stat_database`` is fed by backends at transaction end (at most once a second
    per backend, and always when a backend exits), so read it after the worker has
    stopped; ``pg_stat_clear_snapshot`` makes the read fresh. The WAL position is
    server-wide: writes to other databases on the same server count too.
    """
    # One transaction per reading, so the reading itself adds one commit at most.
    with conn.transaction():
        conn.execute("SELECT pg_stat_clear_snapshot()")
        active = "active_time" if conn.info.server_version >= 140000 else "NULL::float8"
        lsn, commits, rollbacks, active_ms = conn.execute(
            f"SELECT pg_current_wal_lsn()::text, xact_commit, xact_rollback, {active} "
            "FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        calls = None
        if with_statements:
            calls = conn.execute(
                "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone()[0]
    return PgCounters(lsn, commits, rollbacks, calls, active_ms)


def wal_bytes(conn: psycopg.Connection, before: PgCounters, after: PgCounters) -> int:
    return int(
        conn.execute(
            "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", [after.wal_lsn, before.wal_lsn]
        ).fetchone()[0]
    )


def flush_pending_stats(seconds: float = 1.1) -> None:
    """Give live backends time to report their transaction counts (PGSTAT interval)."""
    time.sleep(seconds)


# ── machine and server description ──────────────────────────────────────────

PG_SETTINGS = (
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "wal_level",
    "max_wal_size",
    "full_page_writes",
    "checkpoint_timeout",
    "max_connections",
    "work_mem",
    "shared_preload_libraries",
)


def machine_info(conn: psycopg.Connection) -> dict[str, Any]:
    """CPU, RAM, OS and PostgreSQL version and settings: what decides the figures."""
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram_kib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_kib = int(line.split()[1])
    settings = dict(
        conn.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)",
            [list(PG_SETTINGS)],
        ).fetchall()
    )
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(ram_kib / 1024 / 1024, 1) if ram_kib else None,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "psycopg": psycopg.__version__,
        "libpq": psycopg.pq.version(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "postgresql": conn.execute("SELECT version()").fetchone()[0],
        "postgresql_settings": settings,
        "postgres_server_visible": find_postmaster(conn) is not None,
    }
