"""The ``runjobs`` process: supervise the runners, keep the worker alive, host the services.

One ``Supervisor`` per ``runjobs`` process. It registers the worker, has its heartbeat
sent (``heartbeat.py``, which also keeps its children's rows fresh and renews the lease
they fence themselves by: ``fence.py``), LISTENs and wakes idle
runners, runs the schedule tick and the maintenance leader, starts and watches the
pool (``pool.py``), and stops gracefully on SIGTERM/SIGINT. It is off the per-job path:
runners claim, run and record their own jobs (``runner.py``). When a child dies, the
supervisor records what the child could not (``pool.ChildGone``): the job it was
running fails with WorkerProcessDied or TimeLimitExceeded, the ones it held go back.

Two more things pass through it. Cancel requests for the jobs its runners hold, heard
on the listener's connection (or, as a safety net, read with each heartbeat): it tells
the runner holding the job, and has the pool kill the child if the job still runs when
the task's ``cancel_grace`` is over. And the progress running jobs report, which it
writes (a runner busy with a long job on its only thread could not).
It owns one connection and never writes SQL itself.
"""

import atexit
import logging
import os
import queue
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from .. import __version__, registry, signals
from ..backend import get_backend
from ..codec import class_path, encode_json, error_record
from ..exceptions import JobCancelled, TimeLimitExceeded, WorkerLost, WorkerProcessDied
from ..policy import Policy
from ..protocol import jobs as job_protocol
from ..protocol import workers as worker_protocol
from ..services.leader import Leader
from ..services.limits import LimitKeeper
from ..services.pruner import Pruner
from ..services.rescuer import Rescuer, failed_attempt
from ..services.scheduler import Scheduler
from ..states import JobState
from . import dbconn
from .fence import Fence
from .heartbeat import Heartbeat
from .listener import Listener
from .outcomes import STAT_NAMES, WorkerStats, announce_recorded
from .pool import ChildGone, InProcessPool, ProcessPool

logger = logging.getLogger(__name__)

#: The stop summary's count of each state a failure the supervisor records can reach.
_STAT_OF_STATE = {
    JobState.FAILED: "failed",
    JobState.READY: "retried",
    JobState.CANCELLED: "cancelled",
}

# Put on the event queue to wake the loop (a signal).
_WAKE = ("wake",)
# Put on the event queue after each heartbeat the database confirmed.
_BEAT = ("beat",)


class Supervisor:
    """Run jobs of one backend until stopped (or, in burst mode, until idle)."""

    def __init__(
        self,
        *,
        backend: str = "default",
        queues: Sequence[str] | None = None,
        processes: int | None = None,
        threads: int = 1,
        burst: bool = False,
        poll_interval: float | None = None,
        listen: bool | None = None,
        grace: float = 30.0,
        max_jobs_per_child: int | None = None,
        max_memory_kib: int | None = None,
        autoscale: tuple[int, int] | None = None,
        worker_id: str | None = None,
        log_verbosity: int | None = None,
        event_loop: bool = False,
        child_setup: Sequence[str] = (),
        burst_wait: float = 0.0,
    ) -> None:
        jobs_backend = get_backend(backend)
        self.backend = jobs_backend
        options = jobs_backend.jobs_options
        self.options = options
        self.queues = list(queues) if queues else None
        self.burst = burst
        #: In burst mode, seconds ahead to look for jobs about to be due before exiting.
        self.burst_wait = burst_wait
        self.grace = grace
        poll_interval = poll_interval if poll_interval is not None else options.POLL_INTERVAL
        self.poll_interval = poll_interval
        self.listen = options.LISTEN if listen is None else listen
        self.worker_id = worker_id or (
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        )
        self.started_at = time.monotonic()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self.fence = Fence(
            heartbeat_interval=options.HEARTBEAT_INTERVAL, worker_timeout=options.WORKER_TIMEOUT
        )
        self.pool: ProcessPool | InProcessPool
        if processes is None:
            self.pool = InProcessPool(
                backend=jobs_backend,
                worker_id=self.worker_id,
                threads=threads,
                queues=self.queues,
                events=self._events,
                burst=burst,
                burst_wait=burst_wait,
                poll_interval=poll_interval,
                grace=grace,
                fence=self.fence,
            )
        else:
            self.pool = ProcessPool(
                backend=jobs_backend,
                supervisor_id=self.worker_id,
                processes=processes,
                threads=threads,
                queues=self.queues,
                events=self._events,
                burst=burst,
                poll_interval=poll_interval,
                grace=grace,
                max_jobs_per_child=max_jobs_per_child,
                max_memory_kib=max_memory_kib,
                autoscale=autoscale,
                log_verbosity=log_verbosity,
                event_loop=event_loop,
                child_setup=tuple(child_setup),
                burst_wait=burst_wait,
                fence=self.fence,
            )
        self.leader = Leader(
            self.worker_id,
            interval=options.MAINTENANCE_INTERVAL,
            services=[
                Rescuer(worker_timeout=options.WORKER_TIMEOUT),
                Pruner(retention=options.RETENTION),
                LimitKeeper(),
            ],
        )
        self.scheduler = Scheduler(jobs_backend, self.worker_id)
        self._queue_db = dbconn.QueueConnection(
            jobs_backend.database, purpose="worker", on_back=lambda: None
        )
        self.heartbeat = Heartbeat(
            database=jobs_backend.database,
            worker_id=self.worker_id,
            interval=options.HEARTBEAT_INTERVAL,
            fence=self.fence,
            capacity=lambda: self.pool.capacity,
            register=self._register_row,
            on_beat=lambda: self._events.put(_BEAT),
        )
        #: Children gone whose jobs still have to be recorded (the database was away).
        self._gone: list[ChildGone] = []
        #: Outcomes recorded here for jobs whose child died (for the stop summary).
        self._settled = {"failed": 0, "retried": 0, "cancelled": 0}
        #: Cancel requests handed to the pool: (job id, attempt), and a reason to look.
        self._cancelling: set[tuple[int, int]] = set()
        self._cancel_heard = False
        #: The latest progress each running job reported, not written yet.
        self._progress: dict[int, job_protocol.Progressed] = {}
        self._stopping = False
        self._aborting = False
        self._run_done = threading.Event()
        self.listener: Listener | None = None

    @property
    def stats(self) -> WorkerStats:
        """What the runners did, summed (children that are gone included), and what this
        process recorded for children that died running a job."""
        totals = self.pool.totals()
        for name, count in self._settled.items():
            totals[name] += count
        return WorkerStats(**totals, started_at=self.started_at)

    # ── lifecycle ────────────────────────────────────────────────────────────

    def run(self) -> None:
        """Serve until stopped; every claimed job is finished or released on the way out."""
        registry.discover(self.options.TASK_MODULES)
        previous_handlers = self._install_signal_handlers()
        # When the interpreter exits under us (the autoreloader's restart), stop first:
        # running jobs go back to the queue instead of waiting for a rescue.
        atexit.register(self._stop_at_exit)
        try:
            # First, while this process has no other thread and no connection: the pool
            # may then fork its children, which start at once instead of in a second.
            self.pool.start()
            self._register()
            self.heartbeat.start()
            if self.listen:
                listen_db = self.options.LISTEN_DATABASE or self.backend.database
                self.listener = Listener(listen_db, self.queues, self.pool.wake, self.cancel)
                self.listener.start()
            # One round of the services before any runner claims: schedules that are due
            # are fired and the jobs of lost workers rescued first (burst mode counts on it).
            self._timers()
            self.pool.release()
            paths = registry.registered_paths()
            logger.info(
                "Worker %s serving backend %r, queues %s, %s, %d declared task(s)",
                self.worker_id, self.backend.alias, ", ".join(self.queues or ["(all)"]),
                self.pool.describe(), len(paths), extra={"action": "worker_started"},
            )  # fmt: skip
            signals.send(
                signals.worker_started, Supervisor, worker_id=self.worker_id,
                backend=self.backend.alias, queues=self.queues, concurrency=self.pool.capacity,
            )  # fmt: skip
            logger.debug("Declared tasks: %s", ", ".join(paths) or "(none)")
            self._loop()
        finally:
            self._shutdown()
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            atexit.unregister(self._stop_at_exit)
            self._run_done.set()

    def _stop_at_exit(self) -> None:
        if not self._run_done.is_set():
            self.stop(abort=True)
            self._run_done.wait(15)

    def cancel(self, job_id: int) -> None:
        """Someone asked to cancel job ``job_id``; it may be ours (safe from any thread)."""
        self._events.put(("cancel", job_id))

    def stop(self, abort: bool = False) -> None:
        """Stop claiming and finish what is running (safe from any thread)."""
        self._stopping = True
        self._aborting = self._aborting or abort
        self._events.put(_WAKE)

    def _install_signal_handlers(self) -> dict[int, Any]:
        """Make SIGTERM and SIGINT stop gracefully; return the handlers they replaced."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handle(signum: int, frame: object) -> None:
            name = signal.Signals(signum).name
            running = self.pool.running
            if self._stopping:
                logger.warning(
                    "Got %s again: stopping now; %d held job(s) go back to the queue",
                    name, running,
                )  # fmt: skip
                self._aborting = True
            else:
                logger.info(
                    "Got %s: no new jobs; waiting up to %.0f s for %d held job(s)",
                    name, self.grace, running,
                )  # fmt: skip
                self._stopping = True
            # A queue put from inside a signal handler could deadlock on the queue's own
            # lock; a short-lived thread does it safely.
            threading.Thread(target=self._events.put, args=(_WAKE,), daemon=True).start()

        return {
            signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)
        }

    def _register_row(self, cur: psycopg.Cursor) -> None:
        worker_protocol.register_worker(
            cur,
            worker_id=self.worker_id,
            backend=self.backend.alias,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            concurrency=self.pool.capacity,
            version=__version__,
            worker_timeout=self.options.WORKER_TIMEOUT,
        )

    def _register(self) -> None:
        while not self._stopping:
            sent_at = time.monotonic()
            ok, _ = self._db(self._register_row)
            if ok:
                self.fence.renew(sent_at)
                return
            time.sleep(min(1.0, self._queue_db.retry_in()))

    # ── the loop ─────────────────────────────────────────────────────────────

    def _loop(self) -> None:
        while not self._stopping:
            self._timers()
            self._record_gone()
            if self.burst and self.pool.finished() and not self._gone:
                return
            self._wait(self._time_to_timers())

    def _wait(self, timeout: float) -> None:
        """Handle events (children gone, a wake-up) that arrive within ``timeout``."""
        try:
            event = self._events.get(timeout=max(0.0, min(timeout, 0.5)))
        except queue.Empty:
            return
        while True:
            if isinstance(event, ChildGone):
                self._gone.append(event)
            elif event[0] == "progress":
                for item in event[1]:
                    self._progress[item.job_id] = item
            elif event[0] == "cancel":
                self._cancel_heard = True
            elif event[0] == "beat" and self.pool.running:
                # The safety net for a cancel notification that never reached us.
                self._cancel_heard = True
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
        self._write_progress()
        if self._cancel_heard:
            self._cancel_heard = False
            self._pass_on_cancels()
        self._record_gone()

    # ── cancel requests and progress ────────────────────────────────────────

    def _pass_on_cancels(self) -> None:
        """Hand each new cancel request for a job our runners run to the pool."""
        worker_ids = self.pool.worker_ids()
        if not worker_ids:
            return
        ok, asked = self._db(
            lambda cur: worker_protocol.cancel_requests(cur, worker_ids=worker_ids)
        )
        if not ok:
            self._cancel_heard = True  # try again once the database is back
            return
        current = {(job.id, job.attempts) for job in asked}
        self._cancelling &= current
        for job in asked:
            if (job.id, job.attempts) in self._cancelling:
                continue
            task = registry.find(job.task_path, job.task_proof)
            grace = Policy.for_task(task, self.options).cancel_grace
            if self.pool.cancel(job.id, job.attempts, job.worker_id, grace):
                self._cancelling.add((job.id, job.attempts))
                logger.info(
                    "Job %s was cancelled; asking it to stop (killed after %g s)", job.id,
                    grace, extra={"action": "job_cancel_requested", "job_id": job.id},
                )  # fmt: skip

    def _write_progress(self) -> None:
        self.pool.flush_progress()
        if not self._progress:
            return
        reports = list(self._progress.values())
        ok, _ = self._db(lambda cur: job_protocol.record_progress(cur, reports))
        if ok:
            # Only what was written: a newer report may have come in meanwhile.
            for report in reports:
                if self._progress.get(report.job_id) is report:
                    del self._progress[report.job_id]

    def _timers(self) -> None:
        if self.leader.due():
            self._db(self.leader.tick)
        if self.scheduler.due():
            self._db(self.scheduler.tick)

    def _time_to_timers(self) -> float:
        now = time.monotonic()
        return max(0.0, min(self.leader.next_run, self.scheduler.next_run) - now)

    # ── children that are gone ──────────────────────────────────────────────

    def _record_gone(self) -> None:
        """Record what dead children could not; keep the rest while the database is away."""
        while self._gone:
            ok, _ = self._db(lambda cur: self._settle(cur, self._gone[0]))
            if not ok:
                return
            self._gone.pop(0)

    def _settle(self, cur: psycopg.Cursor, gone: ChildGone) -> None:
        """Fail the job a child died running, give back the rest it held, forget it.

        A clean exit (code 0) leaves nothing to do but the row: a job still RUNNING
        under its id is one whose outcome it could not record, which the rescue handles.
        """
        if gone.exitcode != 0 or gone.shutdown:
            with cur.connection.transaction():
                slot_attempts = {r.job_id: r.attempt for r in gone.running}
                failures = []
                stopped = []
                for job in worker_protocol.lock_running_jobs(cur, ids=list(slot_attempts)):
                    if job.worker_id != gone.worker_id or job.attempts != slot_attempts[job.id]:
                        continue  # not that attempt any more
                    if gone.shutdown or (gone.killed_for and job.id not in gone.killed_for):
                        continue  # did nothing wrong: it goes back below
                    if job.id in gone.cancelled:
                        stopped.append(self._stopped(job, gone))
                    else:
                        failures.append(self._failure(job, gone))
                failed = job_protocol.fail(cur, failures)
                ended = job_protocol.cancelled(cur, stopped)
                released = job_protocol.release_orphans(cur, worker_id=gone.worker_id, held=[])
            # Once committed, as for any other outcome: task_finished if final.
            for f in failures:
                if f.job_id in failed:
                    self._settled[_STAT_OF_STATE[failed[f.job_id][0]]] += 1
                    announce_recorded(
                        self.backend, f.job_id, failed[f.job_id][0], f.error_json, f.retry_in
                    )
            for s in stopped:
                if s.job_id in ended:
                    self._settled["cancelled"] += 1
                    announce_recorded(
                        self.backend, s.job_id, JobState.CANCELLED, s.error_json, None
                    )
            if released and not gone.shutdown:
                logger.info(
                    "Child %s ended (%s) holding %d job(s) it had not started: back in the "
                    "queue", gone.pid, gone.how, len(released),
                    extra={"action": "child_jobs_released"},
                )  # fmt: skip
        worker_protocol.deregister_worker(cur, worker_id=gone.worker_id)

    def _failure(self, job: worker_protocol.LostJob, gone: ChildGone) -> job_protocol.Failure:
        if job.id in gone.fenced:
            kind = WorkerLost
            message = (
                f"worker process {gone.pid} was stopped because its worker could not "
                f"confirm a heartbeat for {self.fence.fence_after:g} s (WORKER_TIMEOUT "
                f"{self.fence.worker_timeout:g} s), so that a rescue could not run this "
                "job twice at the same time"
            )
        elif job.id in gone.overran:
            limit = self._policy_timeout(job)
            kind: type[Exception] = TimeLimitExceeded
            message = (
                f"the job ran past its hard time limit of {limit} s and worker process "
                f"{gone.pid} was killed"
            )
        else:
            kind = WorkerProcessDied
            message = f"worker process {gone.pid} exited with {gone.how} while running this job"
        logger.error("Job %s %s: %s", job.id, job.task_path, message)
        return failed_attempt(job, class_path(kind), message, self.backend.jobs_options)

    def _stopped(self, job: worker_protocol.LostJob, gone: ChildGone) -> job_protocol.Cancelled:
        policy = Policy.for_task(registry.find(job.task_path, job.task_proof), self.options)
        message = (
            f"it did not stop within its {policy.cancel_grace:g} s grace after it was "
            f"cancelled, so worker process {gone.pid} was killed"
        )
        logger.warning("Job %s %s: %s", job.id, job.task_path, message)
        record = error_record(
            None,
            attempt=job.attempts,
            worker_id=job.worker_id,
            exception_class=class_path(JobCancelled),
            message=message,
        )
        return job_protocol.Cancelled(job.id, job.attempts, encode_json(record, "error"))

    def _policy_timeout(self, job: worker_protocol.LostJob) -> float | None:
        return Policy.for_task(registry.find(job.task_path, job.task_proof), self.options).timeout

    # ── stopping ─────────────────────────────────────────────────────────────

    def _shutdown(self) -> None:
        try:
            self._drain()
        finally:
            self._close()

    def _drain(self) -> None:
        """Let the runners finish what runs (up to the grace), then stop them hard."""
        self.pool.stop()
        deadline = time.monotonic() + self.grace
        timers = True
        while self.pool.alive and not self._aborting and time.monotonic() < deadline:
            if timers:
                try:
                    self._timers()
                except Exception:
                    # Maybe what stopped the loop: the children must still be waited for
                    # (or stopped), or they would run on unwatched after we exit.
                    logger.exception("Maintenance or schedules failed while stopping; going on")
                    timers = False
            self._wait(min(0.2, max(0.0, deadline - time.monotonic())))
        if self.pool.alive:
            held = self.pool.running
            if self._aborting:
                logger.warning("Stopping now: %d held job(s) go back to the queue", held)
            else:
                logger.warning(
                    "Grace period of %.0f s is over: %d held job(s) go back to the queue",
                    self.grace, held,
                )  # fmt: skip
            self.pool.abort()
            abort_deadline = time.monotonic() + 10
            while self.pool.alive and time.monotonic() < abort_deadline:
                self._wait(0.2)
        self.pool.join(5)
        self._wait(0)
        # What dead children held is worth a little patience: else it waits for a rescue.
        record_deadline = time.monotonic() + 10
        while self._gone and time.monotonic() < record_deadline:
            self._record_gone()
            if self._gone:
                time.sleep(0.2)

    def _close(self) -> None:
        if self.listener:
            self.listener.stop()
        self.heartbeat.stop()
        self._db(self.leader.resign)
        self._db(lambda cur: worker_protocol.deregister_worker(cur, worker_id=self.worker_id))
        self._queue_db.close()
        elapsed = time.monotonic() - self.started_at
        s = self.stats
        logger.info(
            "Worker %s stopped after %.1f s: %d succeeded, %d failed, %d retried, %d snoozed, "
            "%d released, %d lost to a newer attempt, %d cancelled",
            self.worker_id, elapsed, s.succeeded, s.failed, s.retried, s.snoozed, s.released,
            s.lost, s.cancelled, extra={"action": "worker_stopped"},
        )  # fmt: skip
        counts = {name: getattr(s, name) for name in STAT_NAMES}
        signals.send(
            signals.worker_stopped, Supervisor,
            worker_id=self.worker_id, backend=self.backend.alias, stats=counts,
        )  # fmt: skip

    # ── database access that survives an outage ─────────────────────────────

    def _db(self, work: Callable[[psycopg.Cursor], Any]) -> tuple[bool, Any]:
        """Run ``work`` on the queue connection; (False, None) while the database is away."""
        return self._queue_db.run(work)
