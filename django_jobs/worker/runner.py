"""One process's job loop: claim for free slots → run → record, on its own connection.

A runner lives in each child process of ``runjobs`` (and, with ``--pool threads``, in
a thread of the supervisor). It claims jobs sized to its free slots, runs them (inline
on its own thread when it has one slot, else on ``threads`` threads), and records the
outcomes in batches through an ``OutcomeRecorder``: the supervisor never touches a job
on the way. It tells the supervisor what it runs through shared memory (``slots.py``),
so the supervisor can still kill it at a hard time limit and report the right job if
it dies; and it talks to the supervisor over a small control channel: wake-ups and stop
requests in, readiness, recycling and counters out.

Every claim is made under the runner's own worker id, so after its connection comes
back, or after it died, exactly the jobs it held can be found and released.
"""

import asyncio
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Protocol

from django.db import connections

from .. import registry
from ..backend import JobsBackend
from ..policy import Policy
from ..protocol import jobs as protocol
from ..protocol.jobs import ClaimedJob, Progressed
from .control import Controls
from .dbconn import QueueConnection
from .executor import aexecute, execute, runs_on_event_loop, stopped_by_cancel
from .fence import Fence, exit_fenced
from .outcomes import Outcome, OutcomeKind, OutcomeRecorder, WorkerStats
from .slots import Slots

logger = logging.getLogger(__name__)


def receive_from(inbox: queue.SimpleQueue, timeout: float) -> list[tuple]:
    """The messages in ``inbox``, waiting up to ``timeout`` for the first one."""
    messages = []
    try:
        messages.append(inbox.get(timeout=timeout) if timeout > 0 else inbox.get_nowait())
        while True:
            messages.append(inbox.get_nowait())
    except queue.Empty:
        return messages


class Control(Protocol):
    """The runner's line to its supervisor (a pipe for a child, a queue for a thread)."""

    def receive(self, timeout: float) -> list[tuple]:
        """Messages that arrived, waiting up to ``timeout`` for the first one."""
        ...

    def send(self, message: tuple) -> None: ...


class Runner:
    """Claim, run and record jobs of one backend until told to stop (or idle, in burst)."""

    #: Claim beyond free slots only as many jobs as recent ones would finish in this many
    #: seconds: short jobs get batched claims; long ones are never hoarded while another
    #: worker sits idle.
    PREFETCH_WINDOW = 0.05
    MAX_PREFETCH = 200
    #: Counters go to the supervisor this often (seconds).
    STATS_EVERY = 1.0
    #: An inline runner reads its control channel between jobs at least this often.
    CONTROL_EVERY = 0.005

    def __init__(
        self,
        *,
        backend: JobsBackend,
        worker_id: str,
        queues: Sequence[str] | None,
        threads: int,
        control: Control,
        slots: Slots | None = None,
        burst: bool = False,
        burst_wait: float = 0.0,
        poll_interval: float = 1.0,
        max_jobs: int | None = None,
        max_memory_kib: int | None = None,
        memory_kib: Callable[[], int | None] | None = None,
        grace: float = 30.0,
        event_loop: bool = False,
        fence: Fence | None = None,
    ) -> None:
        self.backend = backend
        #: The worker's heartbeat lease: no claim when it is old, no start past it.
        self.fence = fence
        self.worker_id = worker_id
        self.queues = list(queues) if queues else None
        self.threads = threads
        self.control = control
        self.slots = slots
        self.burst = burst
        #: In burst mode, seconds ahead to look for jobs about to be due before exiting.
        self.burst_wait = burst_wait
        self.poll_interval = poll_interval
        self.max_jobs = max_jobs
        self.max_memory_kib = max_memory_kib
        self._memory_kib = memory_kib
        self.grace = grace
        self.stats = WorkerStats()
        self.db = QueueConnection(backend.database, purpose="runner", on_back=self._db_back)
        #: Jobs claimed and not yet settled, by id: what this runner really holds.
        self.held: dict[int, ClaimedJob] = {}
        #: Jobs claimed whose outcome is not known yet (running, or waiting for a thread).
        self.running = 0
        self.outcomes = OutcomeRecorder(
            backend, worker_id, self.db, self.stats, lambda job_id: self.held.pop(job_id, None)
        )
        #: Cancel requests for the jobs held here, and the progress of those running.
        self.controls = Controls(self._report_progress)
        self.stopping = False
        #: Past a recycling limit: no more claims; exit once what is held is done.
        self.retiring: str | None = None
        self._reconcile = False
        self._avg_duration: float | None = None
        self._claimed_total = 0
        self._ran_total = 0
        self._saturated_at = 0.0
        self._idle_since: float | None = time.monotonic()
        self._next_stats = time.monotonic() + self.STATS_EVERY
        self._next_control = 0.0
        self._announced_idle = False
        self._pool: _ThreadSlots | _LoopSlots | None = None
        if event_loop:
            self._pool = _LoopSlots(self)
            self.controls.on_cancel = self._pool.cancel_soon
        elif threads > 1:
            self._pool = _ThreadSlots(self)

    # ── the loop ─────────────────────────────────────────────────────────────

    def run(self) -> None:
        """Serve until stopped; every claimed job is finished or released on the way out."""
        if self._pool is not None:
            self._pool.start()
        try:
            self._loop()
        finally:
            self._finish()

    def _loop(self) -> None:
        while not self.stopping:
            self._handle(self.control.receive(0))
            if self.stopping:
                return
            self._maintain()
            jobs = self._claim()
            if jobs:
                self._idle_since = None
                self._announced_idle = False
                if self._pool is None:
                    self._run_inline(jobs)
                else:
                    self._pool.submit(jobs)
                continue
            if self.running:
                # Threads are busy: wait for an outcome (or a flush, or a message).
                self._pool.collect(min(self.outcomes.time_to_flush(0.05), 0.05))
                continue
            self.outcomes.flush(force=True, busy=False)
            if self.retiring and not self.held:
                return
            if self._idle_since is None:
                self._idle_since = time.monotonic()
            if (
                self.burst
                and self.db.up
                and not self.held
                and not self._fenced()
                and not self._due_soon()
            ):
                return
            if not self._announced_idle and self.db.up and not self.stopping:
                # Tell the supervisor we wait for work, then look once more: a job that
                # came between the last claim and this message is found now; one that
                # comes after it gets us a wake-up.
                self._announced_idle = True
                self.control.send(("idle",))
                continue
            # Idle: wait for a wake-up (a NOTIFY the supervisor heard) or the next poll,
            # jittered so that workers started together do not poll in step.
            jitter = 0.9 + 0.2 * random.random()  # noqa: S311
            wait = self.poll_interval * jitter
            if self.held or not self.db.up or self._fenced():
                # Outcomes still to record, the database away, or claims paused until
                # the next heartbeat gets through.
                wait = min(wait, 0.2)
            self._handle(self.control.receive(min(wait, self._time_to_stats())))

    def _due_soon(self) -> bool:
        """Burst mode: whether a job becomes due within ``burst_wait`` (a retry, say)."""
        if self.burst_wait <= 0:
            return False
        ok, due_in = self.db.run(
            lambda cur: protocol.next_due_in(cur, backend=self.backend.alias, queues=self.queues)
        )
        if not ok:
            return True  # the database is away: decide once it is back
        if due_in is not None and due_in <= self.burst_wait:
            return True
        if due_in is not None:
            logger.info(
                "Burst: nothing due within %g s (the next job is due in %.0f s)",
                self.burst_wait, due_in, extra={"action": "burst_done"},
            )  # fmt: skip
        return False

    def _maintain(self) -> None:
        """Between jobs: recording, reconciling after an outage, counters for the supervisor."""
        if self._pool is not None:
            self._pool.collect(0)
        self.outcomes.flush(busy=self.running > 0)
        if self._reconcile:
            ok, orphans = self.db.run(
                lambda cur: protocol.release_orphans(
                    cur, worker_id=self.worker_id, held=list(self.held)
                )
            )
            if ok:
                self._reconcile = False
                if orphans:
                    logger.warning(
                        "Released %d job(s) claimed while the connection was failing: %s",
                        len(orphans), orphans, extra={"action": "orphans_released"},
                    )  # fmt: skip
        if time.monotonic() >= self._next_stats:
            self._send_stats()

    def _time_to_stats(self) -> float:
        return max(0.0, self._next_stats - time.monotonic())

    def _send_stats(self) -> None:
        now = time.monotonic()
        self._next_stats = now + self.STATS_EVERY
        self.control.send(
            (
                "stats",
                {
                    **asdict(self.stats),
                    "held": len(self.held),
                    "saturated": now - self._saturated_at < self.STATS_EVERY * 1.5,
                    "idle_for": 0.0 if self._idle_since is None else now - self._idle_since,
                },
            )
        )

    def _handle(self, messages: list[tuple]) -> None:
        for message in messages:
            kind = message[0]
            if kind == "stop":
                self.stopping = True
            elif kind == "cancel":
                self.controls.cancel(message[1])
            elif kind == "wake":
                # The supervisor wakes an idle child once; if this wake-up finds nothing
                # (another worker was first), the runner says again that it waits.
                self._announced_idle = False

    # ── claiming ─────────────────────────────────────────────────────────────

    def _fenced(self) -> bool:
        """The worker's heartbeat is late: claim nothing until it gets through."""
        return self.fence is not None and not self.fence.may_claim()

    def _capacity(self) -> int:
        """How many jobs to claim now: free slots, plus a prefetch for short jobs."""
        # Not gated on the connection being up: while the database is away the claim
        # returns nothing at no cost until the connection's next retry, and it is what
        # tries again. An idle runner (no outcomes to write) whose claim failed would
        # otherwise never reconnect: it would never claim again, and never release the
        # jobs a claim committed without its reply reaching us.
        if self.stopping or self.retiring or self._fenced():
            return 0
        in_flight = self.running
        extra = 0
        if self._avg_duration is not None and not isinstance(self._pool, _LoopSlots):
            extra = min(
                self.MAX_PREFETCH, int(self.PREFETCH_WINDOW / max(self._avg_duration, 1e-5))
            )
        if in_flight > self.threads + extra // 2:
            return 0  # refill at half the prefetch, so slots never wait on a round trip
        limit = self.threads + extra - in_flight
        if self.max_jobs is not None:
            limit = min(limit, self.max_jobs - self._claimed_total)
        return max(0, limit)

    def _claim(self) -> list[ClaimedJob]:
        limit = self._capacity()
        if limit <= 0:
            return []
        ok, claimed = self.db.run(
            lambda cur: protocol.claim(
                cur,
                worker_id=self.worker_id,
                backend=self.backend.alias,
                queues=self.queues,
                limit=limit,
            )
        )
        if not ok or not claimed:
            return []
        if len(claimed) == limit:
            self._saturated_at = time.monotonic()
        self.stats.claimed += len(claimed)
        self._claimed_total += len(claimed)
        self.running += len(claimed)
        for job in claimed:
            self.held[job.id] = job
        return claimed

    # ── running ──────────────────────────────────────────────────────────────

    def _run_inline(self, jobs: list[ClaimedJob]) -> None:
        """Run a claimed batch in order on this thread, watching for a stop between jobs."""
        for position, job in enumerate(jobs):
            if self.stopping or self.retiring:
                self.release(jobs[position:])
                return
            self.finished(self.run_one(job, slot=0))
            now = time.monotonic()
            if now >= self._next_control:
                self._next_control = now + self.CONTROL_EVERY
                self._handle(self.control.receive(0))
                self.outcomes.flush(busy=True)
                if now >= self._next_stats:
                    self._send_stats()

    def run_one(self, job: ClaimedJob, slot: int) -> Outcome:
        """Run one job in ``slot``, telling the supervisor through the slot's memory."""
        self.check_fence(job)
        control = self.controls.start(job)
        try:
            if self.slots is None:
                return execute(job, self.backend, self.worker_id, control)
            timeout = Policy.for_task(
                registry.find(job.task_path, job.task_proof), self.backend.jobs_options
            ).timeout
            self.slots.start(slot, job.id, job.attempts, timeout)
            try:
                return execute(job, self.backend, self.worker_id, control)
            finally:
                self.slots.clear(slot)
        finally:
            self.controls.finish(control)

    def check_fence(self, job: ClaimedJob) -> None:
        """Never start a job past the fence (a claim whose reply the partition held up):
        the rescue may already have given it to another worker."""
        if self.fence is not None and self.fence.expired():
            exit_fenced(self.fence, f"was about to start job {job.id}")

    def _report_progress(self, progressed: Progressed) -> None:
        """A running job's progress, due now: the supervisor writes it (any thread)."""
        self.control.send(("progress", [progressed]))

    def finished(self, outcome: Outcome) -> None:
        self.running -= 1
        if outcome.kind != OutcomeKind.RELEASED:
            self._ran_total += 1
        self.outcomes.add(outcome)
        if outcome.kind in (OutcomeKind.SUCCEEDED, OutcomeKind.RECORDED, OutcomeKind.FAILED):
            # An exponentially weighted average of run time steers the prefetch.
            if self._avg_duration is None:
                self._avg_duration = outcome.duration
            else:
                self._avg_duration += 0.2 * (outcome.duration - self._avg_duration)
        self._check_recycling()

    def release(self, jobs: list[ClaimedJob]) -> None:
        """Give back jobs claimed and not started: no attempt spent (a job someone asked
        to cancel ends CANCELLED instead)."""
        for job in jobs:
            self.running -= 1
            self.outcomes.add(Outcome(job, OutcomeKind.RELEASED))
        self.controls.forget(job.id for job in jobs)

    def _check_recycling(self) -> None:
        if self.retiring:
            return
        if self.max_jobs and self._ran_total >= self.max_jobs:
            self.retiring = f"ran {self._ran_total} jobs (--max-jobs-per-child {self.max_jobs})"
        elif self.max_memory_kib and self._memory_kib:
            rss = self._memory_kib()
            if rss and rss > self.max_memory_kib:
                self.retiring = (
                    f"uses {rss} KiB (--max-memory-per-child {self.max_memory_kib} KiB)"
                )
        if self.retiring:
            self.control.send(("retire", self.retiring))

    # ── stopping ─────────────────────────────────────────────────────────────

    def _finish(self) -> None:
        """Release what never started, wait for what runs, record everything."""
        if self._pool is not None:
            self.release(self._pool.take_unstarted())
            self._pool.stop(self.grace)
        # Outcomes are worth a little patience: without them the jobs would be re-run.
        deadline = time.monotonic() + 10
        while self.outcomes and time.monotonic() < deadline:
            self.outcomes.flush(force=True, busy=False)
            if self.outcomes:
                time.sleep(0.2)
        self._send_stats()

    def _db_back(self) -> None:
        # A claim may have committed without its reply reaching us.
        self._reconcile = True


class _Executor:
    """Runs a runner's jobs off its own thread; the outcomes come back through a queue."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()

    def collect(self, timeout: float) -> None:
        """Hand finished outcomes to the runner, waiting up to ``timeout`` for the first."""
        try:
            outcome = self._done.get(timeout=timeout) if timeout > 0 else self._done.get_nowait()
        except queue.Empty:
            return
        while True:
            self.runner.finished(outcome)
            try:
                outcome = self._done.get_nowait()
            except queue.Empty:
                return


class _ThreadSlots(_Executor):
    """``threads`` threads of this process that run the runner's jobs."""

    def __init__(self, runner: Runner) -> None:
        super().__init__(runner)
        self._work: queue.SimpleQueue[ClaimedJob | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(
                target=self._serve, args=(n,), name=f"django_jobs-run-{n}", daemon=True
            )
            for n in range(runner.threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, jobs: list[ClaimedJob]) -> None:
        for job in jobs:
            self._work.put(job)

    def take_unstarted(self) -> list[ClaimedJob]:
        jobs = []
        while True:
            try:
                job = self._work.get_nowait()
            except queue.Empty:
                return jobs
            if job is not None:
                jobs.append(job)

    def stop(self, timeout: float) -> None:
        """Let running jobs end, up to ``timeout``; threads cannot be killed, so a job
        still running then is left RUNNING for the rescue (documented for threads)."""
        for _ in self._threads:
            self._work.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.collect(0)

    def _serve(self, slot: int) -> None:
        try:
            while (job := self._work.get()) is not None:
                self._done.put(self.runner.run_one(job, slot))
        finally:
            connections.close_all()


class _LoopSlots(_Executor):
    """An event loop (on a thread of this process) running up to ``threads`` jobs at once.

    ``async def`` tasks are awaited on the loop, so one process runs hundreds of them
    while they wait on I/O; anything else (a sync or atomic task) runs on a thread of
    the loop's default executor. Each running job holds one of the runner's slots.
    """

    #: A cancelled coroutine that has not ended by itself is cancelled on the loop at this
    #: fraction of its cancel grace: before the supervisor would kill the whole child.
    CANCEL_AT = 0.8

    def __init__(self, runner: Runner) -> None:
        super().__init__(runner)
        self._loop = asyncio.new_event_loop()
        self._free = list(range(runner.threads))
        self._tasks: set[asyncio.Task] = set()
        #: Jobs awaited on the loop now: their asyncio task and cancel grace.
        self._awaited: dict[int, tuple[asyncio.Task | None, float]] = {}
        #: Jobs whose coroutine was cancelled because they were (see cancel_soon).
        self._stopped_for_cancel: set[int] = set()
        self._thread = threading.Thread(
            target=self._serve, name="django_jobs-event-loop", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def submit(self, jobs: list[ClaimedJob]) -> None:
        for job in jobs:
            self._loop.call_soon_threadsafe(self._begin, job)

    def take_unstarted(self) -> list[ClaimedJob]:
        return []  # every job submitted starts at once (claims never exceed the slots)

    def stop(self, timeout: float) -> None:
        """Let running jobs end, up to ``timeout``; the rest are cancelled and go back."""
        asyncio.run_coroutine_threadsafe(self._finish(timeout), self._loop).result(timeout + 10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self.collect(0)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()
            connections.close_all()

    def _begin(self, job: ClaimedJob) -> None:
        task = self._loop.create_task(self._run(job, self._free.pop()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: ClaimedJob, slot: int) -> None:
        runner = self.runner
        started = time.perf_counter()
        try:
            if runs_on_event_loop(job):
                runner.check_fence(job)
                policy = Policy.for_task(
                    registry.find(job.task_path, job.task_proof), runner.backend.jobs_options
                )
                if runner.slots is not None:
                    runner.slots.start(slot, job.id, job.attempts, policy.timeout)
                control = runner.controls.start(job)
                self._awaited[job.id] = (asyncio.current_task(), policy.cancel_grace)
                try:
                    outcome = await aexecute(job, runner.backend, runner.worker_id, control)
                finally:
                    del self._awaited[job.id]
                    runner.controls.finish(control)
                    if runner.slots is not None:
                        runner.slots.clear(slot)
            else:
                outcome = await asyncio.to_thread(runner.run_one, job, slot)
        except asyncio.CancelledError:
            if job.id in self._stopped_for_cancel:
                self._stopped_for_cancel.discard(job.id)
                outcome = stopped_by_cancel(
                    job,
                    runner.worker_id,
                    time.perf_counter() - started,
                    "it did not stop by itself after it was cancelled, so its coroutine was "
                    "cancelled",
                )
            else:
                outcome = Outcome(job, OutcomeKind.RELEASED)  # stopped at shutdown: it goes back
        finally:
            self._free.append(slot)
        self._done.put(outcome)

    def cancel_soon(self, job_id: int) -> None:
        """A cancel request for ``job_id`` (any thread): if its coroutine does not end by
        itself within most of its cancel grace, cancel it on the loop, so that the child
        and the other jobs on its loop are not killed for it."""
        self._loop.call_soon_threadsafe(self._arm_cancel, job_id)

    def _arm_cancel(self, job_id: int) -> None:
        awaited = self._awaited.get(job_id)
        if awaited is None:
            return  # not awaited on the loop (a thread's, or not started): the executor sees it
        task, grace = awaited
        self._loop.call_later(grace * self.CANCEL_AT, self._cancel_task, job_id, task)

    def _cancel_task(self, job_id: int, task: asyncio.Task) -> None:
        if not task.done() and self._awaited.get(job_id, (None,))[0] is task:
            self._stopped_for_cancel.add(job_id)
            task.cancel()

    async def _finish(self, timeout: float) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
