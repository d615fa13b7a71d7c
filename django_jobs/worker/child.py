"""A child process of ``runjobs``: runs the jobs its supervisor hands it, nothing else.

It has no queue connection of its own. It receives jobs over a pipe, runs each with
the executor (on its main thread, or on ``threads`` threads), and sends back what
happened. It ignores SIGINT/SIGTERM: the supervisor decides when it stops, and kills
it at a hard time limit. It dies with its supervisor (PR_SET_PDEATHSIG on Linux, and
an EOF on the pipe everywhere), so no orphan keeps running jobs that get rescued.

A second, one-way pipe brings the ids of its jobs someone cancelled. A thread reads it
(the main thread is busy running a job), so a job sees ``cancel_requested`` at once;
the same thread sends progress the throttle held back (``control.py``). Progress goes
to the supervisor as ``("progress", [(job_id, attempt, json), ...])`` messages.
"""

import ctypes
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

#: A single-threaded child reports finished jobs at least this often (seconds).
REPORT_EVERY = 0.002


@dataclass(frozen=True)
class ChildConfig:
    backend: str
    worker_id: str
    threads: int
    max_jobs: int | None
    max_memory_kib: int | None


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


def _serve_control(cancels: Connection, controls: Any) -> None:
    """Note cancel requests as they come; send held-back progress when it is due."""
    wait = controls.IDLE_WAIT
    while True:
        try:
            if cancels.poll(wait):
                controls.cancel(cancels.recv())
        except (EOFError, OSError):
            return  # the supervisor is gone
        wait = controls.flush_due()


def main(pipe: Connection, config: ChildConfig, cancels: Connection) -> None:
    """Entry point of a child (spawned, so it starts clean: no inherited connections)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    import django

    django.setup()

    # Only now: these read settings and the app registry, which a spawned process has
    # once django.setup() has run (this module itself is imported before that).
    from django.db import connections

    from .. import registry
    from ..backend import get_backend
    from ..protocol.jobs import ClaimedJob
    from .control import Controls
    from .executor import execute

    backend = get_backend(config.backend)
    registry.discover(backend.jobs_options.TASK_MODULES)
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        with send_lock:
            pipe.send(message)

    controls = Controls(lambda p: send(("progress", [(p.job_id, p.attempt, p.progress_json)])))
    threading.Thread(
        target=_serve_control, args=(cancels, controls), name="django_jobs-control", daemon=True
    ).start()

    def run_one(job: Any) -> Any:
        control = controls.start(job)
        try:
            return execute(job, backend, config.worker_id, control)
        finally:
            controls.finish(control)

    jobs_done = 0
    retiring = False

    def after_job() -> None:
        # Recycling: ask the supervisor for a replacement once a limit is passed; it stops
        # dispatching here and sends "stop" when this child's jobs are done.
        nonlocal jobs_done, retiring
        jobs_done += 1
        if retiring:
            return
        reason = None
        if config.max_jobs and jobs_done >= config.max_jobs:
            reason = f"ran {jobs_done} jobs (--max-jobs-per-child {config.max_jobs})"
        elif config.max_memory_kib and (rss := rss_kib()) and rss > config.max_memory_kib:
            reason = f"uses {rss} KiB (--max-memory-per-child {config.max_memory_kib} KiB)"
        if reason:
            retiring = True
            send(("retire", reason))

    def run(job: Any) -> None:
        if retiring:
            # Past a recycling limit: hand queued jobs back for another child to run.
            send(("returned", [job.id]))
            return
        outcome = run_one(job)
        send(("done", [(job.id, outcome.to_wire())]))
        after_job()

    def run_batch(jobs: list) -> None:
        # One thread: run in order, and report in small batches (at most a few ms late)
        # so a burst of short jobs costs a handful of pipe messages, not one each.
        finished: list = []
        last_send = time.monotonic()
        for position, job in enumerate(jobs):
            if retiring:
                if finished:
                    send(("done", finished))
                send(("returned", [queued.id for queued in jobs[position:]]))
                return
            outcome = run_one(job)
            finished.append((job.id, outcome.to_wire()))
            if time.monotonic() - last_send > REPORT_EVERY or job is jobs[-1]:
                send(("done", finished))
                finished = []
                last_send = time.monotonic()
            after_job()

    send(("ready", os.getpid()))
    work: queue.SimpleQueue = queue.SimpleQueue()
    threads = []
    if config.threads > 1:

        def serve() -> None:
            try:
                while (job := work.get()) is not None:
                    run(job)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=serve, daemon=True) for _ in range(config.threads)]
        for thread in threads:
            thread.start()
    try:
        while True:
            try:
                message = pipe.recv()
            except (EOFError, OSError):
                return  # the supervisor is gone
            if message[0] == "stop":
                return
            if message[0] == "run":
                jobs = [ClaimedJob(*fields) for fields in message[1]]
                if threads:
                    for job in jobs:
                        work.put(job)
                else:
                    run_batch(jobs)
    except (BrokenPipeError, EOFError):
        return
    finally:
        for _ in threads:
            work.put(None)
        for thread in threads:
            thread.join()
        connections.close_all()
