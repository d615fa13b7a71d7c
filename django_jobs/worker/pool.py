"""Where claimed jobs run: threads in this process, or a pool of child processes.

Both pools take jobs with ``submit()`` (a claimed batch at once) and put an
``Outcome`` for each on the inbox they were given, and the progress jobs report as
``protocol.jobs.Progressed`` items; the worker loop never needs to know which one it
drives. ``cancel(job_id, grace)`` asks a job to stop: at once if it has not started,
else through its ``cancel_requested``, and the process pool kills its child when the
grace runs out (threads cannot be killed: ``--pool threads`` only asks).
``ProcessPool`` is the production pool (prefork, as Celery): a crash, a leak or a
hard time limit costs one child process, never the worker.
"""

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait

from django.db import connections

from .. import registry
from ..backend import JobsBackend
from ..codec import class_path, error_record
from ..exceptions import JobCancelled, TimeLimitExceeded, WorkerProcessDied
from ..policy import Policy
from ..protocol.jobs import ClaimedJob, Progressed
from .child import ChildConfig
from .child import main as child_main
from .control import Controls
from .outcomes import Outcome, OutcomeKind

logger = logging.getLogger(__name__)


class ThreadPool:
    """Run jobs on ``size`` threads of this process (tests, and ``--pool threads``)."""

    def __init__(
        self,
        size: int,
        run: Callable[[ClaimedJob, Controls], Outcome],
        inbox: queue.SimpleQueue,
    ) -> None:
        self.size = size
        self._run = run
        self._inbox = inbox
        self.controls = Controls(inbox.put)
        self._work: queue.SimpleQueue[ClaimedJob | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"django_jobs-run-{n}", daemon=True)
            for n in range(size)
        ]

    @property
    def capacity(self) -> int:
        return self.size

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, jobs: list[ClaimedJob]) -> None:
        for job in jobs:
            self._work.put(job)

    def note_demand(self, more_waiting: bool) -> None:
        pass

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

    def abort(self) -> None:
        """Threads cannot be killed: running jobs finish (documented for --pool threads)."""

    def cancel(self, job_id: int, grace: float) -> None:
        """Ask the job to stop; a queued one never starts. Threads are never killed."""
        self.controls.cancel(job_id)

    def flush_progress(self) -> float:
        """Send held-back progress that is due; return seconds until the next is."""
        return self.controls.flush_due()

    def stop(self, timeout: float = 5.0) -> None:
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _serve(self) -> None:
        try:
            while (job := self._work.get()) is not None:
                self._inbox.put(self._run(job, self.controls))
        finally:
            connections.close_all()


class _Child:
    def __init__(
        self, process: multiprocessing.Process, pipe: Connection, cancels: Connection
    ) -> None:
        self.process = process
        self.pipe = pipe
        #: One-way: the ids of the child's jobs someone cancelled.
        self.cancels = cancels
        self.ready = False
        self.retiring = False
        self.stopping = False
        #: job id -> [job, started (monotonic) or None while queued in the child, deadline].
        #: In dispatch order: the child runs them first in, first out, ``threads`` at once.
        self.assigned: dict[int, list] = {}
        self.idle_since = time.monotonic()
        self.spawned_at = time.monotonic()


class ProcessPool:
    """A supervisor's children: dispatch, watch, kill at hard limits, replace, scale."""

    #: Grow when jobs waited for a slot within this many seconds; shrink after this idle.
    SCALE_UP_AFTER = 1.0
    SCALE_DOWN_IDLE = 10.0
    #: Margin past a hard limit before killing, for the pipe's latency.
    KILL_MARGIN = 0.05
    #: Queue in each child only as many jobs beyond its threads as recent jobs would finish
    #: in this many seconds: short jobs then never wait for a round trip to the supervisor.
    CHILD_PREFETCH_WINDOW = 0.02
    CHILD_MAX_PREFETCH = 64

    def __init__(
        self,
        *,
        backend: JobsBackend,
        worker_id: str,
        processes: int,
        threads: int,
        inbox: queue.SimpleQueue,
        max_jobs_per_child: int | None = None,
        max_memory_kib: int | None = None,
        autoscale: tuple[int, int] | None = None,
    ) -> None:
        self.backend = backend
        self.worker_id = worker_id
        self.threads = threads
        self.target = processes if autoscale is None else autoscale[0]
        self.autoscale = autoscale
        self._inbox = inbox
        self._config = ChildConfig(
            backend=backend.alias,
            worker_id=worker_id,
            threads=threads,
            max_jobs=max_jobs_per_child,
            max_memory_kib=max_memory_kib,
        )
        # spawn, not fork: the supervisor has threads and open connections, and a forked
        # child would inherit both (a psycopg connection shared across fork corrupts).
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.RLock()
        self._children: list[_Child] = []
        self._pending: deque[ClaimedJob] = deque()
        self._stopping = False
        self._last_demand = 0.0
        self._last_scale = 0.0
        self._spawn_failures = 0
        self._next_spawn = 0.0
        self._avg_duration: float | None = None
        #: job id -> (monotonic deadline, grace): jobs asked to stop, killed past it.
        self._cancels: dict[int, tuple[float, float]] = {}
        self._reader = threading.Thread(target=self._watch, name="django_jobs-pool", daemon=True)

    # ── the worker's side ──────────────────────────────────────────────────

    @property
    def capacity(self) -> int:
        """Slots that can take a job now: ready children that are not on their way out."""
        with self._lock:
            return sum(
                self.threads for c in self._children if c.ready and not (c.retiring or c.stopping)
            )

    @property
    def size(self) -> int:
        with self._lock:
            return len([c for c in self._children if not c.stopping])

    def start(self) -> None:
        with self._lock:
            for _ in range(self.target):
                self._spawn()
        self._reader.start()

    def submit(self, jobs: list[ClaimedJob]) -> None:
        # The whole claim at once: one pipe message per child, not one per job.
        with self._lock:
            self._pending.extend(jobs)
            self._dispatch()

    def note_demand(self, more_waiting: bool) -> None:
        if more_waiting:
            self._last_demand = time.monotonic()

    def take_unstarted(self) -> list[ClaimedJob]:
        with self._lock:
            jobs = list(self._pending)
            self._pending.clear()
            return jobs

    def cancel(self, job_id: int, grace: float) -> None:
        """Ask the job to stop; kill its child if it still runs ``grace`` s later."""
        with self._lock:
            for job in self._pending:
                if job.id == job_id:
                    # Not handed to a child yet: it never starts.
                    self._pending.remove(job)
                    self._inbox.put(
                        _cancelled(job, self.worker_id, "it was cancelled before it started")
                    )
                    return
            for child in self._children:
                if job_id in child.assigned:
                    self._cancels[job_id] = (time.monotonic() + grace, grace)
                    with contextlib.suppress(OSError):
                        child.cancels.send(job_id)
                    return

    def flush_progress(self) -> float:
        """Children send their own held-back progress."""
        return 1.0

    def abort(self) -> None:
        """Kill every child now; their running jobs are released (no attempt spent)."""
        with self._lock:
            self._stopping = True
            for child in self._children:
                self._kill(child, released=list(child.assigned), reason="shutdown")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop children that are idle, then wait for them; kill what remains."""
        with self._lock:
            self._stopping = True
            for child in self._children:
                self._send_stop(child)
        deadline = time.monotonic() + timeout
        for child in list(self._children):
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                child.process.kill()
                child.process.join(5)
        if self._reader.is_alive():
            self._reader.join(timeout=2)

    # ── children ───────────────────────────────────────────────────────────

    def _spawn(self) -> None:
        parent_end, child_end = self._context.Pipe()
        cancels_in, cancels_out = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=child_main,
            args=(child_end, self._config, cancels_in),
            name="django_jobs-child",
            daemon=True,
        )
        process.start()
        child_end.close()
        cancels_in.close()
        self._children.append(_Child(process, parent_end, cancels_out))

    def _send_stop(self, child: _Child) -> None:
        if not child.stopping:
            child.stopping = True
            with contextlib.suppress(OSError):
                child.pipe.send(("stop",))

    def _depth(self) -> int:
        if self._avg_duration is None:
            return self.threads
        extra = int(self.CHILD_PREFETCH_WINDOW / max(self._avg_duration, 1e-5))
        return self.threads + min(self.CHILD_MAX_PREFETCH, extra)

    def _dispatch(self) -> None:
        depth = self._depth()
        for child in self._children:
            if not child.ready or child.retiring or child.stopping:
                continue
            batch = []
            while self._pending and len(child.assigned) < depth:
                job = self._pending.popleft()
                child.assigned[job.id] = [job, None, None]
                batch.append(job)
            if batch:
                # One message per child per round; a child that just died is reported by
                # its sentinel, with these jobs.
                with contextlib.suppress(OSError):
                    child.pipe.send(("run", [job.to_wire() for job in batch]))
            self._mark_started(child)
        if self._pending and not self._stopping:
            # A job waits for a slot: the pool is saturated.
            self._last_demand = time.monotonic()

    def _mark_started(self, child: _Child) -> None:
        """The first ``threads`` assigned jobs are the ones running: start their clocks."""
        now = time.monotonic()
        for position, entry in enumerate(child.assigned.values()):
            if position >= self.threads:
                return
            if entry[1] is None:
                entry[1] = now
                limit = self._policy(entry[0]).timeout
                entry[2] = now + limit + self.KILL_MARGIN if limit else None

    def _kill(self, child: _Child, *, released: list[int], reason: str) -> None:
        for job_id in released:
            job = child.assigned.pop(job_id)[0]
            self._inbox.put(Outcome(job, OutcomeKind.RELEASED))
        child.stopping = True
        if child.process.is_alive():
            logger.warning(
                "Killing child %s (%s)", child.process.pid, reason, extra={"action": "child_kill"}
            )
            child.process.kill()

    def _watch(self) -> None:
        while True:
            with self._lock:
                children = list(self._children)
                if self._stopping and not children:
                    return
            waitables: list = []
            for child in children:
                waitables.append(child.pipe)
                waitables.append(child.process.sentinel)
            try:
                ready = wait(waitables, timeout=0.1) if waitables else []
            except OSError:
                ready = []
            if not waitables:
                time.sleep(0.1)
            with self._lock:
                for child in children:
                    if child.pipe in ready:
                        self._read(child)
                    if child.process.sentinel in ready and not child.process.is_alive():
                        self._reap(child)
                self._enforce_time_limits()
                self._scale()
                self._dispatch()

    def _read(self, child: _Child) -> None:
        while True:
            try:
                if not child.pipe.poll():
                    return
                message = child.pipe.recv()
            except (EOFError, OSError):
                return
            kind = message[0]
            if kind == "progress":
                for job_id, attempt, progress_json in message[1]:
                    self._inbox.put(Progressed(job_id, attempt, progress_json))
            elif kind == "done":
                for job_id, wire in message[1]:
                    self._cancels.pop(job_id, None)
                    entry = child.assigned.pop(job_id, None)
                    if entry is None:
                        continue  # reported already (killed at a hard limit meanwhile)
                    outcome = Outcome.from_wire(entry[0], wire)
                    self._inbox.put(outcome)
                    if self._avg_duration is None:
                        self._avg_duration = outcome.duration
                    else:
                        self._avg_duration += 0.2 * (outcome.duration - self._avg_duration)
                self._mark_started(child)
                if not child.assigned:
                    child.idle_since = time.monotonic()
                    if child.retiring:
                        self._send_stop(child)
            elif kind == "returned":
                # A retiring child gives back what it had not started: first in line again.
                for job_id in reversed(message[1]):
                    entry = child.assigned.pop(job_id, None)
                    if entry is not None:
                        self._pending.appendleft(entry[0])
                if not child.assigned and child.retiring:
                    self._send_stop(child)
            elif kind == "ready":
                child.ready = True
                self._spawn_failures = 0
            elif kind == "retire":
                logger.info(
                    "Recycling child %s: it %s", child.process.pid, message[1],
                    extra={"action": "child_recycle"},
                )  # fmt: skip
                child.retiring = True
                if not child.assigned:
                    self._send_stop(child)

    def _reap(self, child: _Child) -> None:
        child.process.join()
        self._children.remove(child)
        child.pipe.close()
        child.cancels.close()
        for job_id in child.assigned:
            # A job asked to stop whose process died: the statement that records its end
            # makes it CANCELLED (it has a cancel request), whatever the outcome says.
            self._cancels.pop(job_id, None)
        code = child.process.exitcode
        if child.assigned:
            how = (
                f"signal {-code} ({signal.Signals(-code).name})"
                if code is not None and code < 0
                else f"code {code}"
            )
            for job, started, _ in child.assigned.values():
                if started is None:
                    # Queued in the child, never started: no attempt is spent.
                    self._inbox.put(Outcome(job, OutcomeKind.RELEASED))
                    continue
                message = (
                    f"worker process {child.process.pid} exited with {how} while running this job"
                )
                self._fail_killed(job, WorkerProcessDied, message, time.monotonic() - started)
            child.assigned.clear()
        elif not child.ready and not self._stopping:
            # Died before it could serve (settings or import error): do not spin.
            self._spawn_failures += 1
            wait_for = min(30.0, 0.5 * 2**self._spawn_failures)
            self._next_spawn = time.monotonic() + wait_for
            logger.error(
                "Child %s exited with code %s before it was ready; starting another in %.1f s",
                child.process.pid, code, wait_for, extra={"action": "child_start_failed"},
            )  # fmt: skip
        if not self._stopping:
            self._top_up()

    def _fail_killed(
        self, job: ClaimedJob, kind: type[Exception], message: str, duration: float
    ) -> None:
        """Report a job whose process died under it; its retry policy decides what next."""
        logger.error("Job %s %s: %s", job.id, job.task_path, message)
        error = error_record(
            None,
            attempt=job.attempts,
            worker_id=self.worker_id,
            exception_class=class_path(kind),
            message=message,
        )
        # It raised nothing: the policy retries it if attempts remain, whatever retry_on says.
        delay = self._policy(job).next_attempt_in(job.attempts, job.max_attempts)
        self._inbox.put(
            Outcome(job, OutcomeKind.FAILED, duration=duration, error=error, delay=delay)
        )

    def _policy(self, job: ClaimedJob) -> Policy:
        return Policy.for_task(registry.get(job.task_path), self.backend.jobs_options)

    def _top_up(self) -> None:
        live = [c for c in self._children if not c.stopping]
        missing = self.target - len(live)
        if missing > 0 and time.monotonic() >= self._next_spawn:
            for _ in range(missing):
                self._spawn()

    def _enforce_time_limits(self) -> None:
        now = time.monotonic()
        self._enforce_cancels(now)
        for child in self._children:
            late = [
                job_id
                for job_id, (_, _, deadline) in child.assigned.items()
                if deadline is not None and now > deadline
            ]
            if not late or not child.process.is_alive():
                continue
            for job_id in late:
                job, started, _ = child.assigned.pop(job_id)
                limit = self._policy(job).timeout
                message = (
                    f"the job ran past its hard time limit of {limit} s and worker process "
                    f"{child.process.pid} was killed"
                )
                self._fail_killed(job, TimeLimitExceeded, message, now - started)
            # Other jobs sharing the process did nothing wrong: they go back unharmed.
            self._kill(child, released=list(child.assigned), reason="hard time limit")

    def _enforce_cancels(self, now: float) -> None:
        """Kill the child of a job that was asked to stop and is still running past its grace."""
        for child in self._children:
            late = [
                job_id
                for job_id, entry in child.assigned.items()
                if entry[1] is not None
                and job_id in self._cancels
                and now > self._cancels[job_id][0]
            ]
            if not late or not child.process.is_alive():
                continue
            for job_id in late:
                job, started, _ = child.assigned.pop(job_id)
                _, grace = self._cancels.pop(job_id)
                how = (
                    f"it was cancelled and did not stop within its {grace:g} s grace, so "
                    f"worker process {child.process.pid} was killed"
                )
                self._inbox.put(_cancelled(job, self.worker_id, how, now - started))
            # Other jobs sharing the process did nothing wrong: they go back unharmed.
            self._kill(child, released=list(child.assigned), reason="cancel grace over")

    def _scale(self) -> None:
        if self._stopping:
            return
        if self.autoscale is None:
            self._top_up()
            return
        low, high = self.autoscale
        now = time.monotonic()
        live = [c for c in self._children if not c.stopping]
        busy = all(len(c.assigned) >= self.threads for c in live if c.ready)
        if (
            len(live) < high
            and busy
            and now - self._last_demand < self.SCALE_UP_AFTER
            and now - self._last_scale > self.SCALE_UP_AFTER
            and all(c.ready for c in live)
        ):
            self.target = len(live) + 1
            self._last_scale = now
            logger.info("Autoscale: growing to %d processes", self.target)
            self._spawn()
        elif len(live) > low and now - self._last_scale > self.SCALE_DOWN_IDLE:
            idle = [
                c for c in live if not c.assigned and now - c.idle_since > self.SCALE_DOWN_IDLE
            ]
            if idle:
                self.target = len(live) - 1
                self._last_scale = now
                logger.info("Autoscale: shrinking to %d processes", self.target)
                self._send_stop(idle[0])
        self._top_up()


def _cancelled(job: ClaimedJob, worker_id: str, how: str, duration: float = 0.0) -> Outcome:
    """The outcome of a job stopped by the pool after a cancel request."""
    logger.warning(
        "Job %s %s cancelled: %s", job.id, job.task_path, how,
        extra={"action": "job_cancelled", "job_id": job.id},
    )  # fmt: skip
    error = error_record(
        None,
        attempt=job.attempts,
        worker_id=worker_id,
        exception_class=class_path(JobCancelled),
        message=how,
    )
    return Outcome(job, OutcomeKind.CANCELLED, duration=duration, error=error)


def default_processes() -> int:
    return os.cpu_count() or 1
