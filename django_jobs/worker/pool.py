"""Where runners live: child processes the supervisor watches, or one thread in-process.

``ProcessPool`` is the production pool (prefork, as Celery): each child runs a runner
that claims and records its own jobs, so a crash, a leak or a hard time limit costs one
child, never the worker, and the supervisor is off the per-job path. The pool's watch
thread reads the children's messages (ready, retire, counters), reaps dead children,
kills a child whose job passed its hard time limit (read from the child's slots), keeps
the pool at its size, and autoscales. What needs the database after a child is gone
(fail the job it was running, give back the ones it held) is put on the supervisor's
event queue as a :class:`ChildGone`, because the supervisor owns the connection.

``InProcessPool`` runs one runner on a thread of the supervisor (``--pool threads``,
and the tests): no hard time limits, since threads cannot be killed.
"""

import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from django.db import connections

from ..backend import JobsBackend
from ..tally import TALLY
from .child import ChildConfig, PipeControl, child_worker_id
from .child import main as child_main
from .fence import Fence, exit_fenced
from .outcomes import STAT_NAMES
from .runner import Runner, receive_from
from .slots import Running, Slots

logger = logging.getLogger(__name__)

#: Counters a runner reports, summed over the pool for the stop summary.
COUNTERS = STAT_NAMES


@dataclass(frozen=True)
class ChildGone:
    """A child process ended; what the supervisor must still record for it."""

    worker_id: str
    pid: int
    #: The exit code (negative: killed by that signal), as multiprocessing reports it.
    exitcode: int | None
    #: What its slots held when it died: running jobs, by attempt.
    running: list[Running]
    #: Jobs it was killed for (past their hard time limit); the others did nothing wrong.
    overran: frozenset[int] = frozenset()
    #: Killed because the worker is stopping: its jobs go back, no attempt spent.
    shutdown: bool = False
    #: Jobs it was killed for because they did not stop within their cancel grace.
    cancelled: frozenset[int] = frozenset()
    #: Jobs it was killed for because the worker's heartbeat lease ran out (fence.py).
    fenced: frozenset[int] = frozenset()

    @property
    def killed_for(self) -> frozenset[int]:
        """The jobs it was killed for; the others it held did nothing wrong."""
        return self.overran | self.cancelled | self.fenced

    @property
    def how(self) -> str:
        code = self.exitcode
        if code is not None and code < 0:
            return f"signal {-code} ({signal.Signals(-code).name})"
        return f"code {code}"


@dataclass
class _Child:
    process: Any
    pipe: Connection
    slots: Slots
    control: PipeControl
    worker_id: str = ""
    ready: bool = False
    retiring: bool = False
    stopping: bool = False
    killed_for: set[int] = field(default_factory=set)
    #: Jobs killed for not stopping within their cancel grace (part of killed_for).
    killed_for_cancel: set[int] = field(default_factory=set)
    #: Jobs killed at the fence: the heartbeat lease ran out (part of killed_for).
    killed_for_fence: set[int] = field(default_factory=set)
    #: Cancel requests sent to it: job id -> (attempt, when to kill it if still running).
    cancels: dict[int, tuple[int, float]] = field(default_factory=dict)
    killed_at_shutdown: bool = False
    #: The child said it waits for work; it gets one wake-up, then none until it says so
    #: again, so its pipe cannot fill while it runs a long job.
    idle: bool = False
    woken_at: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    idle_for: float = 0.0
    saturated: bool = False
    spawned_at: float = field(default_factory=time.monotonic)


class ProcessPool:
    """A supervisor's children: spawn, watch, kill at hard limits, replace, scale."""

    #: Grow when a child's claims came back full within this many seconds; shrink a child
    #: idle this long.
    SCALE_UP_AFTER = 1.0
    SCALE_DOWN_IDLE = 10.0
    #: Margin past a hard limit before killing.
    KILL_MARGIN = 0.05
    #: How often the watch thread looks at the slots' deadlines.
    WATCH_EVERY = 0.05

    def __init__(
        self,
        *,
        backend: JobsBackend,
        supervisor_id: str,
        processes: int,
        threads: int,
        queues: Sequence[str] | None,
        events: queue.SimpleQueue,
        burst: bool = False,
        poll_interval: float = 1.0,
        grace: float = 30.0,
        max_jobs_per_child: int | None = None,
        max_memory_kib: int | None = None,
        autoscale: tuple[int, int] | None = None,
        log_verbosity: int | None = None,
        event_loop: bool = False,
        child_setup: tuple[str, ...] = (),
        burst_wait: float = 0.0,
        fence: Fence,
    ) -> None:
        self.backend = backend
        self.threads = threads
        #: Renewed by the supervisor's heartbeat; a pool of its own would fence itself.
        self.fence = fence
        self.target = processes if autoscale is None else autoscale[0]
        self.autoscale = autoscale
        self.burst = burst
        self._events = events
        self._config = ChildConfig(
            backend=backend.alias,
            supervisor_id=supervisor_id,
            queues=tuple(queues) if queues else None,
            threads=threads,
            burst=burst,
            poll_interval=poll_interval,
            grace=grace,
            max_jobs=max_jobs_per_child,
            max_memory_kib=max_memory_kib,
            log_verbosity=log_verbosity,
            event_loop=event_loop,
            setup=child_setup,
            burst_wait=burst_wait,
            # A spawned child reads settings afresh; a test (or anything that renamed a
            # database at run time, as the test runner does) needs it on the same ones.
            database_names={alias: connections.settings[alias]["NAME"] for alias in connections},
        )
        self.event_loop = event_loop
        # spawn, not fork, once the supervisor has threads and open connections: a forked
        # child would inherit both (a psycopg connection shared across fork corrupts, a
        # lock held by another thread never comes free). See start() for the first ones.
        self._context = multiprocessing.get_context("spawn")
        #: Children may claim (the supervisor has done its first round).
        self._released = False
        self._lock = threading.RLock()
        self._children: list[_Child] = []
        #: Counters of children that are gone, for the stop summary.
        self._gone_totals = dict.fromkeys(COUNTERS, 0)
        self._stopping = False
        self._last_scale = 0.0
        self._spawn_failures = 0
        self._next_spawn = 0.0
        self._watcher = threading.Thread(target=self._watch, name="django_jobs-pool", daemon=True)
        #: When a job last became runnable (a NOTIFY): a child that says it is idle after
        #: that, without having been woken since, is woken at once (see _read).
        self._notified_at = 0.0

    # ── the supervisor's side ───────────────────────────────────────────────

    @property
    def capacity(self) -> int:
        """Job slots of the live children (processes x threads)."""
        with self._lock:
            return sum(self.threads for c in self._children if not c.stopping)

    @property
    def alive(self) -> int:
        with self._lock:
            return len(self._children)

    @property
    def running(self) -> int:
        """Jobs held by the children, as they last said."""
        with self._lock:
            return sum(c.stats.get("held", 0) for c in self._children)

    def describe(self) -> str:
        size = (
            f"autoscale {self.autoscale[0]}-{self.autoscale[1]}"
            if self.autoscale
            else str(self.target)
        )
        per_child = "job(s) on an event loop" if self.event_loop else "thread(s)"
        return f"{size} process(es) x {self.threads} {per_child}"

    def start(self) -> None:
        """Start the children, by fork while this process is single-threaded.

        A spawned child boots a new interpreter and Django (most of a second); a forked
        one has both at once. Forking is safe only before the supervisor (or a library,
        such as an error tracker with a background thread) has started a thread, and
        with no connection open, so it is done only then, on Linux; the children started
        later (replacements, autoscaling) are spawned.
        """
        first = self._context
        if sys.platform.startswith("linux") and threading.active_count() == 1:
            connections.close_all()
            first = multiprocessing.get_context("fork")
        with self._lock:
            for _ in range(self.target):
                self._spawn(first)
        self._watcher.start()

    def release(self) -> None:
        """Let the children claim (after the supervisor's first round of services)."""
        with self._lock:
            self._released = True
            for child in self._children:
                if child.ready:
                    child.control.send(("go",))

    def wake(self) -> None:
        """A job may be runnable: wake the children that wait for one (any thread)."""
        with self._lock:
            self._notified_at = time.monotonic()
            for child in self._children:
                if child.idle and not child.stopping:
                    self._wake(child)

    def _wake(self, child: _Child) -> None:
        child.idle = False
        child.woken_at = time.monotonic()
        child.control.send(("wake",))

    def worker_ids(self) -> list[str]:
        """The worker ids the children claim under (those that said they are ready)."""
        with self._lock:
            return [c.worker_id for c in self._children if c.worker_id]

    def cancel(self, job_id: int, attempt: int, worker_id: str, grace: float) -> bool:
        """Ask the child holding ``job_id`` to stop it; kill the child if the job still
        runs ``grace`` seconds later. False if no child of ours has that id."""
        with self._lock:
            for child in self._children:
                if child.worker_id == worker_id and child.process.is_alive():
                    if job_id not in child.cancels:
                        child.cancels[job_id] = (attempt, time.monotonic() + grace)
                        child.control.send(("cancel", job_id))
                    return True
        return False

    def flush_progress(self) -> None:
        """Nothing to do: each child sends its own held progress when it is due."""

    def stop(self) -> None:
        """Ask every child to finish what runs, give back what waits, and exit."""
        with self._lock:
            self._stopping = True
            for child in self._children:
                self._send_stop(child)

    def abort(self) -> None:
        """Kill every child now; the jobs they hold go back (no attempt spent)."""
        with self._lock:
            self._stopping = True
            for child in self._children:
                child.killed_at_shutdown = True
                if child.process.is_alive():
                    child.process.kill()

    def finished(self) -> bool:
        """Every child is gone and none will be started again (stopping, or in burst mode
        every child found nothing left to do)."""
        with self._lock:
            return not self._children and (self._stopping or (self.burst and self.target <= 0))

    def totals(self) -> dict[str, int]:
        with self._lock:
            totals = dict(self._gone_totals)
            for child in self._children:
                for name in COUNTERS:
                    totals[name] += child.stats.get(name, 0)
            return totals

    def join(self, timeout: float) -> None:
        self._watcher.join(timeout)

    # ── children ───────────────────────────────────────────────────────────

    def _spawn(self, context: Any = None) -> None:
        context = context or self._context
        parent_end, child_end = context.Pipe()
        slots = Slots(self.threads)
        process = context.Process(
            target=child_main,
            args=(child_end, self._config, slots, self.fence),
            name="django_jobs-child",
            daemon=True,
        )
        process.start()
        child_end.close()
        self._children.append(_Child(process, parent_end, slots, PipeControl(parent_end)))

    def _send_stop(self, child: _Child) -> None:
        if not child.stopping:
            child.stopping = True
            child.control.send(("stop",))

    def _watch(self) -> None:
        while True:
            with self._lock:
                children = list(self._children)
                if self._stopping and not children:
                    return
            waitables: list = []
            for child in children:
                waitables += [child.pipe, child.process.sentinel]
            try:
                ready = wait(waitables, timeout=self.WATCH_EVERY) if waitables else []
            except OSError:
                ready = []
            if not waitables:
                time.sleep(self.WATCH_EVERY)
            with self._lock:
                for child in children:
                    if child.pipe in ready:
                        self._read(child)
                    if child.process.sentinel in ready and not child.process.is_alive():
                        self._read(child)  # its last counters
                        self._reap(child)
                self._enforce_fence()
                self._enforce_time_limits()
                self._scale()

    def _read(self, child: _Child) -> None:
        while True:
            try:
                if not child.pipe.poll():
                    return
                message = child.pipe.recv()
            except (EOFError, OSError):
                return
            kind = message[0]
            if kind == "idle":
                child.idle = True
                # A job that became runnable while this message was on its way would
                # otherwise wait for the child's next poll.
                if self._notified_at > child.woken_at and not child.stopping:
                    self._wake(child)
            elif kind == "progress":
                self._events.put(message)
            elif kind == "tally":
                # A child's metric counts since its last report (metrics are on): the
                # supervisor serves the totals of every process it ran.
                TALLY.merge(message[1])
            elif kind == "stats":
                child.stats = message[1]
                child.idle_for = message[1].get("idle_for", 0.0)
                child.saturated = message[1].get("saturated", False)
            elif kind == "ready":
                child.ready = True
                child.worker_id = message[2]
                self._spawn_failures = 0
                if self._released:
                    child.control.send(("go",))
            elif kind == "retire":
                logger.info(
                    "Recycling child %s: it %s", child.process.pid, message[1],
                    extra={"action": "child_recycle"},
                )  # fmt: skip
                child.retiring = True
                # A replacement now, so the pool keeps its size while this one finishes.
                if not self._stopping:
                    self._spawn()

    def _reap(self, child: _Child) -> None:
        child.process.join()
        self._children.remove(child)
        child.pipe.close()
        for name in COUNTERS:
            self._gone_totals[name] += child.stats.get(name, 0)
        code = child.process.exitcode
        if not child.worker_id:
            child.worker_id = child_worker_id(self._config.supervisor_id, child.process.pid)
        running = child.slots.running()
        if not child.ready and not self._stopping:
            # Died before it could serve (settings or import error): do not spin.
            self._spawn_failures += 1
            wait_for = min(30.0, 0.5 * 2**self._spawn_failures)
            self._next_spawn = time.monotonic() + wait_for
            logger.error(
                "Child %s exited with code %s before it was ready; starting another in %.1f s",
                child.process.pid, code, wait_for, extra={"action": "child_start_failed"},
            )  # fmt: skip
        self._events.put(
            ChildGone(
                worker_id=child.worker_id,
                pid=child.process.pid,
                exitcode=code,
                running=running,
                overran=frozenset(
                    child.killed_for - child.killed_for_cancel - child.killed_for_fence
                ),
                shutdown=child.killed_at_shutdown,
                cancelled=frozenset(child.killed_for_cancel),
                fenced=frozenset(child.killed_for_fence),
            )
        )
        if self.burst and code == 0 and not child.retiring and not child.stopping:
            # It found nothing to do: that is how burst mode ends, one child at a time.
            self.target -= 1
        if not self._stopping and not child.stopping:
            self._top_up()

    def _top_up(self) -> None:
        live = [c for c in self._children if not (c.stopping or c.retiring)]
        missing = self.target - len(live)
        if missing > 0 and time.monotonic() >= self._next_spawn and not self._stopping:
            for _ in range(missing):
                self._spawn()

    def _enforce_fence(self) -> None:
        """Kill every child running a job once the heartbeat lease has run out: the
        rescue may come at any moment after it, and must not find the job still running
        here. Children that run nothing stay; they claim again after a heartbeat."""
        if not self.fence.expired():
            return
        for child in self._children:
            if child.killed_for or not child.process.is_alive():
                continue
            running = [r.job_id for r in child.slots.running()]
            if running:
                child.killed_for.update(running)
                child.killed_for_fence.update(running)
                logger.error(
                    "Killing child %s running job(s) %s: %s", child.process.pid,
                    ", ".join(map(str, running)), self.fence.describe(),
                    extra={"action": "child_fenced"},
                )  # fmt: skip
                child.process.kill()

    def _enforce_time_limits(self) -> None:
        """Kill a child running a job past its hard time limit, or past the grace of a
        cancel request (the job was asked to stop and did not)."""
        now = time.monotonic()
        for child in self._children:
            if child.killed_for or not child.process.is_alive():
                continue
            running = child.slots.running()
            late = [
                r.job_id for r in running if r.deadline and now > r.deadline + self.KILL_MARGIN
            ]
            stubborn = []
            for r in running:
                asked = child.cancels.get(r.job_id)
                if asked is not None and asked[0] == r.attempt and now > asked[1]:
                    stubborn.append(r.job_id)
            if late or stubborn:
                child.killed_for.update(late, stubborn)
                child.killed_for_cancel.update(stubborn)
                why = []
                if late:
                    why.append(f"hard time limit of job {', '.join(map(str, late))}")
                if stubborn:
                    why.append(
                        f"job {', '.join(map(str, stubborn))} cancelled and still running "
                        "after its cancel grace"
                    )
                logger.warning(
                    "Killing child %s (%s)", child.process.pid, "; ".join(why),
                    extra={"action": "child_kill"},
                )  # fmt: skip
                child.process.kill()
            elif child.cancels:
                # Requests for jobs that ended (or never started) are done with.
                live = {r.job_id for r in running}
                for job_id, (_, kill_at) in list(child.cancels.items()):
                    if job_id not in live and now > kill_at:
                        del child.cancels[job_id]

    def _scale(self) -> None:
        if self._stopping:
            return
        if self.autoscale is None:
            self._top_up()
            return
        low, high = self.autoscale
        now = time.monotonic()
        live = [c for c in self._children if not (c.stopping or c.retiring)]
        if (
            len(live) < high
            and any(c.saturated for c in live)
            and all(c.ready for c in live)
            and now - self._last_scale > self.SCALE_UP_AFTER
        ):
            self.target = len(live) + 1
            self._last_scale = now
            logger.info("Autoscale: growing to %d processes", self.target)
            self._spawn()
        elif len(live) > low and now - self._last_scale > self.SCALE_DOWN_IDLE:
            idle = [c for c in live if c.ready and c.idle_for > self.SCALE_DOWN_IDLE]
            if idle:
                self.target = len(live) - 1
                self._last_scale = now
                logger.info("Autoscale: shrinking to %d processes", self.target)
                self._send_stop(idle[0])
        self._top_up()


class QueueControl:
    """The control channel of a runner on a thread of the supervisor's process."""

    def __init__(self, events: queue.SimpleQueue) -> None:
        self._inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._events = events
        self.stats: dict[str, Any] = {}

    def put(self, message: tuple) -> None:
        self._inbox.put(message)

    def receive(self, timeout: float) -> list[tuple]:
        return receive_from(self._inbox, timeout)

    def send(self, message: tuple) -> None:
        if message[0] == "stats":
            self.stats = message[1]
        elif message[0] == "progress":
            self._events.put(message)


class InProcessPool:
    """One runner on a thread of this process (``--pool threads``, tests)."""

    def __init__(
        self,
        *,
        backend: JobsBackend,
        worker_id: str,
        threads: int,
        queues: Sequence[str] | None,
        events: queue.SimpleQueue,
        burst: bool = False,
        burst_wait: float = 0.0,
        poll_interval: float = 1.0,
        grace: float = 30.0,
        fence: Fence | None = None,
    ) -> None:
        self.threads = threads
        self.target = 1
        self.fence = fence
        self.autoscale = None
        self.burst = burst
        self._control = QueueControl(events)
        self.runner = Runner(
            backend=backend,
            worker_id=worker_id,
            queues=queues,
            threads=threads,
            control=self._control,
            burst=burst,
            burst_wait=burst_wait,
            poll_interval=poll_interval,
            grace=grace,
            fence=fence,
        )
        self._thread = threading.Thread(target=self._run, name="django_jobs-runner", daemon=True)

    @property
    def capacity(self) -> int:
        return self.threads

    @property
    def alive(self) -> int:
        return int(self._thread.is_alive())

    @property
    def running(self) -> int:
        return self.runner.running

    def describe(self) -> str:
        return f"{self.threads} thread(s) in-process"

    def start(self) -> None:
        """Nothing to start before release(): the runner claims as soon as it runs."""

    def release(self) -> None:
        self._thread.start()
        if self.fence is not None:
            threading.Thread(target=self._guard, name="django_jobs-fence", daemon=True).start()

    def _guard(self) -> None:
        """Threads cannot be killed: past the fence with jobs held, the process goes."""
        assert self.fence is not None
        while self._thread.is_alive():
            if self.runner.running and self.fence.expired():
                exit_fenced(self.fence, f"holds {self.runner.running} job(s) on its threads")
            time.sleep(ProcessPool.WATCH_EVERY)

    def wake(self) -> None:
        self._control.put(("wake",))

    def worker_ids(self) -> list[str]:
        return [self.runner.worker_id]

    def cancel(self, job_id: int, attempt: int, worker_id: str, grace: float) -> bool:
        """Ask the job to stop; a thread cannot be killed, so that is all (documented)."""
        if worker_id != self.runner.worker_id:
            return False
        self.runner.controls.cancel(job_id)
        return True

    def flush_progress(self) -> None:
        """Send the progress the throttle held back, once due (the runner's thread may be
        busy with a long job)."""
        self.runner.controls.flush_due()

    def stop(self) -> None:
        self._control.put(("stop",))

    def abort(self) -> None:
        """Threads cannot be killed: running jobs finish (documented for --pool threads)."""
        self._control.put(("stop",))

    def finished(self) -> bool:
        return not self._thread.is_alive()

    def totals(self) -> dict[str, int]:
        stats = self.runner.stats
        return {name: getattr(stats, name) for name in COUNTERS}

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self.runner.run()
        finally:
            self.runner.db.close()
            connections.close_all()


def default_processes() -> int:
    return os.cpu_count() or 1
