"""A child process of ``runjobs``: a runner with its own connection, watched by its supervisor.

The child claims, runs and records its own jobs (``runner.py``) under a worker id of
its own, ``<supervisor id>/<pid>``, whose row the supervisor's heartbeat keeps fresh.
It writes what each slot runs into shared memory (``slots.py``) so the supervisor can
kill it at a hard time limit and report the right job if it dies. It ignores
SIGINT/SIGTERM: the supervisor decides when it stops (a "stop" message: finish what
runs, give back what waits), and kills it when the grace is over. It dies with its
supervisor (PR_SET_PDEATHSIG on Linux, and an EOF on the pipe everywhere), so no
orphan keeps running jobs that get rescued.
"""

import contextlib
import ctypes
import os
import queue
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import django
from django.apps import apps
from django.db import connections
from django.utils.module_loading import import_string

from .. import __version__, registry
from ..backend import get_backend
from ..protocol import workers
from ..tally import TALLY
from . import logs
from .control import Controls
from .fence import Fence
from .runner import Runner, receive_from
from .slots import Slots

#: With metrics on, a child hands its counts to the supervisor this often (seconds).
TALLY_EVERY = 1.0


@dataclass(frozen=True)
class ChildConfig:
    backend: str
    supervisor_id: str
    queues: tuple[str, ...] | None
    threads: int
    burst: bool
    poll_interval: float
    grace: float
    max_jobs: int | None
    max_memory_kib: int | None
    #: runjobs' -v, for the same logging as the supervisor's (None: leave it to LOGGING).
    log_verbosity: int | None = None
    #: Database alias -> NAME as the supervisor has them (see ProcessPool).
    database_names: dict[str, str] = field(default_factory=dict)
    #: With burst, seconds ahead to wait for jobs about to become due before exiting.
    burst_wait: float = 0.0
    #: Run jobs on an event loop, ``threads`` at once (``--pool asyncio``).
    event_loop: bool = False
    #: Dotted paths of functions to call once Django is set up (``runjobs
    #: --metrics-port`` turns metrics on here with ``django_jobs.metrics.enable``).
    setup: tuple[str, ...] = ()


def child_worker_id(supervisor_id: str, pid: int) -> str:
    """A child's worker id: its supervisor's, so that one heartbeat covers both."""
    return f"{supervisor_id}/{pid}"


class PipeControl:
    """The runner's control channel over the supervisor's pipe."""

    def __init__(self, pipe: Connection) -> None:
        self.pipe = pipe
        self._lock = threading.Lock()

    def receive(self, timeout: float) -> list[tuple]:
        messages: list[tuple] = []
        try:
            if self.pipe.poll(timeout):
                messages.append(self.pipe.recv())
                while self.pipe.poll():
                    messages.append(self.pipe.recv())
        except (EOFError, OSError):
            messages.append(("stop",))  # the supervisor is gone
        return messages

    def send(self, message: tuple) -> None:
        # OSError: the supervisor is gone; PR_SET_PDEATHSIG ends us.
        with self._lock, contextlib.suppress(OSError):
            self.pipe.send(message)


class ChildControl(PipeControl):
    """The child's end of the pipe, read by a thread of its own.

    A cancel request must reach a job while the runner's only thread is busy running
    it, so the thread hands cancel requests to the runner's ``Controls`` at once; other
    messages wait in an inbox for the runner's next look. The same thread sends the
    progress values the throttle held back once they are due.
    """

    def __init__(self, pipe: Connection) -> None:
        super().__init__(pipe)
        self._inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        #: The runner's cancel requests and progress, once there is a runner.
        self.controls: Controls | None = None
        threading.Thread(target=self._read, name="django_jobs-control", daemon=True).start()

    def receive(self, timeout: float) -> list[tuple]:
        return receive_from(self._inbox, timeout)

    def _read(self) -> None:
        while True:
            controls = self.controls
            wait = controls.flush_due() if controls is not None else Controls.IDLE_WAIT
            try:
                if not self.pipe.poll(wait):
                    continue
                message = self.pipe.recv()
            except (EOFError, OSError):
                self._inbox.put(("stop",))  # the supervisor is gone
                return
            if message[0] == "cancel" and controls is not None:
                controls.cancel(message[1])
            else:
                self._inbox.put(message)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def rss_kib() -> int | None:
    """Current resident memory of this process in KiB (Linux), or None where unknown."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def main(pipe: Connection, config: ChildConfig, slots: Slots, fence: Fence) -> None:
    """Entry point of a child (spawned, so it starts clean: no inherited connections)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    if not apps.ready:
        django.setup()  # spawned; a forked child has its supervisor's setup already
        for alias, name in config.database_names.items():
            if alias in connections.settings:
                connections.settings[alias]["NAME"] = name
        connections.close_all()  # in case an app's ready() connected to the old name
    if config.log_verbosity is not None:
        logs.configure(config.log_verbosity)
    backend = get_backend(config.backend)
    registry.discover(backend.jobs_options.TASK_MODULES)
    for path in config.setup:
        import_string(path)()
    worker_id = child_worker_id(config.supervisor_id, os.getpid())
    control = ChildControl(pipe)
    counting = _hand_over_counts(control) if TALLY.enabled else None
    runner = Runner(
        backend=backend,
        worker_id=worker_id,
        queues=config.queues,
        threads=config.threads,
        control=control,
        slots=slots,
        burst=config.burst,
        burst_wait=config.burst_wait,
        poll_interval=config.poll_interval,
        max_jobs=config.max_jobs,
        max_memory_kib=config.max_memory_kib,
        memory_kib=rss_kib,
        grace=config.grace,
        event_loop=config.event_loop,
        fence=fence,
    )
    control.controls = runner.controls

    def register(cur: object) -> None:
        workers.register_worker(
            cur,
            worker_id=worker_id,
            backend=backend.alias,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=config.queues,
            concurrency=config.threads,
            version=__version__,
            worker_timeout=backend.jobs_options.WORKER_TIMEOUT,
        )

    # The row must exist before the first claim, or the rescue would see its jobs as
    # belonging to no live worker. While the database is away, keep trying.
    while not runner.db.run(register)[0]:
        if any(m[0] == "stop" for m in control.receive(min(1.0, runner.db.retry_in()))):
            return
    control.send(("ready", os.getpid(), worker_id))
    # Claim only once the supervisor has done its first round (due schedules fired, lost
    # workers' jobs rescued), so that a burst worker does not find the queue empty early.
    while True:
        messages = control.receive(1.0)
        if any(m[0] == "stop" for m in messages):
            runner.stopping = True
            break
        if any(m[0] == "go" for m in messages):
            break
    try:
        runner.run()
    finally:
        if counting is not None:
            counting.set()
            _send_counts(control)  # what the last jobs added
        runner.db.run(lambda cur: workers.deregister_worker(cur, worker_id=worker_id))
        runner.db.close()
        connections.close_all()


def _send_counts(control: ChildControl) -> None:
    taken = TALLY.take()
    if taken is not None:
        control.send(("tally", taken))


def _hand_over_counts(control: ChildControl) -> threading.Event:
    """Send this child's metric counts to the supervisor about once a second, on a timer
    (not per job: a burst of short jobs costs one message a second, and a long job's
    start is counted while it runs). Set the returned event to stop."""
    stopped = threading.Event()

    def loop() -> None:
        while not stopped.wait(TALLY_EVERY):
            _send_counts(control)

    threading.Thread(target=loop, name="django_jobs-tally", daemon=True).start()
    return stopped
