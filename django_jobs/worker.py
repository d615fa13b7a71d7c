"""One worker process's loop: wait (notify | poll) → claim what it can run → run → record.

The worker owns one psycopg connection for the queue protocol and never writes SQL
itself. Jobs run in a pool of threads (``ThreadPool``); the pool is the seam where a
process pool plugs in. Outcomes are buffered for a few milliseconds and recorded in
one fenced statement per kind, which is what lets one process run thousands of
short jobs per second.
"""

import json
import logging
import os
import queue
import random
import secrets
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.db import connections
from django.tasks import TaskResultStatus, task_backends
from django.tasks.base import TaskError
from django.tasks.signals import task_finished

from . import dbconn, protocol, registry
from .backend import JobsBackend, encode_json
from .executor import Outcome, execute
from .listener import Listener
from .protocol import ClaimedJob

logger = logging.getLogger("django_jobs.worker")

# Sentinel put on the inbox to wake the loop (a notification, a signal).
_WAKE = object()


class ThreadPool:
    """Run claimed jobs on ``size`` threads; finished outcomes go to ``inbox``."""

    def __init__(
        self, size: int, run: Callable[[ClaimedJob], Outcome], inbox: queue.SimpleQueue
    ) -> None:
        self.size = size
        self._run = run
        self._inbox = inbox
        self._work: queue.SimpleQueue[ClaimedJob | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"django_jobs-run-{n}", daemon=True)
            for n in range(size)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, job: ClaimedJob) -> None:
        self._work.put(job)

    def take_unstarted(self) -> list[ClaimedJob]:
        """Remove and return the jobs no thread has picked up yet."""
        jobs = []
        while True:
            try:
                job = self._work.get_nowait()
            except queue.Empty:
                return jobs
            if job is not None:
                jobs.append(job)

    def stop(self, timeout: float = 5.0) -> None:
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _serve(self) -> None:
        try:
            while (job := self._work.get()) is not None:
                self._inbox.put(self._run(job))
        finally:
            connections.close_all()


@dataclass
class WorkerStats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    released: int = 0
    lost: int = 0
    started_at: float = field(default_factory=time.monotonic)


class Worker:
    """Claim and run jobs of one backend until stopped (or, in burst mode, until idle)."""

    #: Flush buffered outcomes once the oldest has waited this long (seconds) ...
    FLUSH_AFTER = 0.005
    #: ... or once this many are buffered.
    FLUSH_BATCH = 200
    #: Claim beyond free threads only as many jobs as recent ones would finish in this
    #: many seconds. Short jobs get batched claims; long jobs are never hoarded while
    #: another worker sits idle.
    PREFETCH_WINDOW = 0.05
    MAX_PREFETCH = 200

    def __init__(
        self,
        *,
        backend: str = "default",
        queues: Sequence[str] | None = None,
        concurrency: int = 1,
        burst: bool = False,
        poll_interval: float | None = None,
        listen: bool | None = None,
        worker_id: str | None = None,
    ) -> None:
        jobs_backend = task_backends[backend]
        if not isinstance(jobs_backend, JobsBackend):
            raise ValueError(
                f"TASKS[{backend!r}] uses {type(jobs_backend).__module__}."
                f"{type(jobs_backend).__qualname__}, not django_jobs.backend.JobsBackend; "
                "runjobs can only run jobs stored by a jobs backend."
            )
        self.backend = jobs_backend
        options = jobs_backend.jobs_options
        self.queues = list(queues) if queues else None
        self.concurrency = concurrency
        self.burst = burst
        self.poll_interval = poll_interval if poll_interval is not None else options.POLL_INTERVAL
        self.listen = options.LISTEN if listen is None else listen
        self.worker_id = worker_id or (
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        )
        self.stats = WorkerStats()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._pool = ThreadPool(concurrency, self._execute, self._inbox)
        self._conn: psycopg.Connection | None = None
        self._in_flight = 0
        self._buffer: deque[tuple[float, Outcome]] = deque()
        self._avg_duration: float | None = None
        self._stopping = False
        self._wake_pending = False
        self.listener: Listener | None = None

    # ── lifecycle ────────────────────────────────────────────────────────────

    def run(self) -> None:
        """Serve until stopped; every claimed job is finished or released on the way out."""
        registry.discover(self.backend.jobs_options.TASK_MODULES)
        previous_handlers = self._install_signal_handlers()
        if self.listen:
            self.listener = Listener(self.backend.database, self.queues, self.wake)
            self.listener.start()
        self._pool.start()
        logger.info(
            "Worker %s serving backend %r, queues %s, %d thread(s), tasks: %s",
            self.worker_id, self.backend.alias, ", ".join(self.queues or ["(all)"]),
            self.concurrency, ", ".join(registry.registered_paths()) or "(none)",
            extra={"action": "worker_started"},
        )  # fmt: skip
        try:
            self._loop()
        finally:
            self._shutdown()
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)

    def stop(self) -> None:
        """Ask the loop to stop claiming and finish what it has (safe from any thread)."""
        self._stopping = True
        self.wake()

    def wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            self._inbox.put(_WAKE)

    def _install_signal_handlers(self) -> dict[int, Any]:
        """Make SIGTERM and SIGINT stop gracefully; return the handlers they replaced."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handle(signum: int, frame: object) -> None:
            name = signal.Signals(signum).name
            if self._stopping:
                logger.warning(
                    "Got %s again; still waiting for %d running job(s) to finish",
                    name, self._in_flight,
                )  # fmt: skip
                return
            logger.info("Got %s: finishing running jobs, then exiting", name)
            self._stopping = True
            # A queue put from inside a signal handler could deadlock on the queue's own
            # lock; a short-lived thread does it safely.
            threading.Thread(target=self._inbox.put, args=(_WAKE,), daemon=True).start()

        return {
            signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)
        }

    def _shutdown(self) -> None:
        unstarted = self._pool.take_unstarted()
        self._in_flight -= len(unstarted)
        if unstarted:
            self._with_db(lambda cur: protocol.release(cur, unstarted), give_up=True)
            self.stats.released += len(unstarted)
        while self._in_flight > 0:
            self._collect(timeout=1.0)
        self._flush(force=True)
        self._pool.stop()
        if self.listener:
            self.listener.stop()
        if self._conn is not None:
            self._conn.close()
        elapsed = time.monotonic() - self.stats.started_at
        logger.info(
            "Worker %s stopped after %.1f s: %d succeeded, %d failed, %d retried, "
            "%d released, %d lost to a newer attempt",
            self.worker_id, elapsed, self.stats.succeeded, self.stats.failed,
            self.stats.retried, self.stats.released, self.stats.lost,
            extra={"action": "worker_stopped"},
        )  # fmt: skip

    # ── the loop ─────────────────────────────────────────────────────────────

    def _loop(self) -> None:
        while not self._stopping:
            self._flush()
            claimed = self._claim()
            if self._stopping:
                break
            if self._in_flight == 0 and not claimed:
                if self.burst:
                    return
                # Idle: sleep until a notification, or the next poll (jittered so that
                # many workers started together do not poll in step).
                self._wait(self.poll_interval * (0.9 + 0.2 * random.random()))  # noqa: S311
            elif not claimed:
                # Busy: wake for the next outcome, or when buffered ones are due.
                self._wait(self._time_to_flush())

    def _wait(self, timeout: float) -> None:
        self._collect(timeout=timeout)

    def _collect(self, timeout: float) -> None:
        """Move finished outcomes from the inbox to the buffer, waiting up to ``timeout``."""
        try:
            item = self._inbox.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return
        while True:
            if item is _WAKE:
                self._wake_pending = False
            else:
                self._finished(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _finished(self, outcome: Outcome) -> None:
        self._in_flight -= 1
        self._buffer.append((time.monotonic(), outcome))
        # An exponentially weighted average of run time steers the prefetch.
        if self._avg_duration is None:
            self._avg_duration = outcome.duration
        else:
            self._avg_duration += 0.2 * (outcome.duration - self._avg_duration)

    def _time_to_flush(self) -> float:
        if not self._buffer:
            return self.poll_interval
        return max(0.0, self._buffer[0][0] + self.FLUSH_AFTER - time.monotonic())

    def _claim_size(self) -> int:
        extra = 0
        if self._avg_duration is not None:
            expected = max(self._avg_duration, 1e-5)
            extra = min(self.MAX_PREFETCH, int(self.PREFETCH_WINDOW / expected))
        # Refill at half the prefetch, so the threads never wait on a claim round trip
        # while one claim still serves a whole batch.
        if self._in_flight > self.concurrency + extra // 2 - (1 if extra == 0 else 0):
            return 0
        return self.concurrency + extra - self._in_flight

    def _claim(self) -> list[ClaimedJob]:
        limit = self._claim_size()
        if limit <= 0:
            return []
        claimed = self._with_db(
            lambda cur: protocol.claim(
                cur,
                worker_id=self.worker_id,
                backend=self.backend.alias,
                queues=self.queues,
                limit=limit,
            )
        )
        if not claimed:
            return []
        self.stats.claimed += len(claimed)
        self._in_flight += len(claimed)
        for job in claimed:
            self._pool.submit(job)
        return claimed

    def _execute(self, job: ClaimedJob) -> Outcome:
        return execute(job, self.backend, self.worker_id)

    # ── recording outcomes ──────────────────────────────────────────────────

    def _flush(self, force: bool = False) -> None:
        if not self._buffer:
            return
        if not force and (
            len(self._buffer) < self.FLUSH_BATCH
            and self._in_flight > 0
            and self._time_to_flush() > 0
        ):
            return
        outcomes = [outcome for _, outcome in self._buffer]
        successes = [
            protocol.Success(o.job.id, o.job.attempts, o.return_json)
            for o in outcomes
            if o.succeeded
        ]
        failures = [
            protocol.Failure(o.job.id, o.job.attempts, encode_json(o.error, "error"), o.retry_in)
            for o in outcomes
            if not o.succeeded
        ]

        def record(cur: psycopg.Cursor) -> tuple[dict, dict]:
            return protocol.complete(cur, successes), protocol.fail(cur, failures)

        recorded = self._with_db(record, give_up=force)
        if recorded is None:
            return  # The database is away; keep the buffer and try again later.
        self._buffer.clear()
        done, failed = recorded
        for outcome in outcomes:
            self._report(outcome, done, failed)

    def _report(self, outcome: Outcome, done: dict, failed: dict) -> None:
        job_id = outcome.job.id
        result = outcome.task_result
        if job_id in done:
            self.stats.succeeded += 1
            status, finished_at = TaskResultStatus.SUCCESSFUL, done[job_id]
        elif job_id in failed:
            state, finished_at = failed[job_id]
            if state == "READY":
                self.stats.retried += 1
                status = TaskResultStatus.READY
            else:
                self.stats.failed += 1
                status = TaskResultStatus.FAILED
        else:
            self.stats.lost += 1
            logger.warning(
                "Job %s attempt %d finished, but the job was taken over by a newer "
                "attempt meanwhile; this late outcome was discarded",
                job_id, outcome.job.attempts, extra={"action": "job_lost_lease"},
            )  # fmt: skip
            return
        if result is None:
            return
        object.__setattr__(result, "status", status)
        object.__setattr__(result, "finished_at", finished_at)
        if outcome.succeeded:
            object.__setattr__(result, "_return_value", json.loads(outcome.return_json))
        else:
            result.errors.append(
                TaskError(
                    exception_class_path=outcome.error["exception_class_path"],
                    traceback=outcome.error["traceback"],
                )
            )
        task_finished.send(type(self.backend), task_result=result)

    # ── database access with outage handling ────────────────────────────────

    def _with_db(self, work: Callable[[psycopg.Cursor], Any], give_up: bool = False) -> Any:
        """Run ``work`` on the worker's connection; on a lost connection, back off and retry."""
        delay = 0.5
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = dbconn.connect(self.backend.database, purpose="worker")
                # Autocommit: each protocol statement is its own short transaction, and
                # the statements of one flush need no atomicity between them (each is
                # fenced on its own).
                with self._conn.cursor() as cur:
                    return work(cur)
            except psycopg.OperationalError as exc:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                if self._stopping and give_up:
                    logger.error("Database unavailable during shutdown: %s", exc)
                    return None
                logger.warning(
                    "Database unavailable (%s); retrying in %.1f s", exc, delay,
                    extra={"action": "db_unavailable"},
                )  # fmt: skip
                time.sleep(delay + random.random() * delay)  # noqa: S311
                delay = min(delay * 2, 30.0)
