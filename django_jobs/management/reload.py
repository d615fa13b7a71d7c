"""``runjobs --reload``: restart the worker when Python files change, and stop it cleanly.

Django's autoreloader (``autoreload.run_with_reloader``) is made for ``runserver``: it
runs the command in a thread of a child process, and its parent kills that child when
it gets SIGTERM or Ctrl-C. A worker stopped like that never runs its clean stop: its
running jobs stay RUNNING until a rescue (which spends an attempt), its row stays
behind, and no stop summary is logged. In a thread it cannot even install its own
signal handlers. So ``--reload`` has its own small loop, built from Django's pieces:

- The parent re-executes the command with ``RUN_MAIN=true`` (as Django's does) in a
  process group of its own, and forwards each SIGTERM and SIGINT it gets to it. A
  Ctrl-C at a terminal goes to the terminal's process group, which holds the parent
  only, so the worker hears it once, through the parent; a second Ctrl-C is forwarded
  too, and is the worker's usual "stop now".
- The child runs the worker in its main thread, so the worker stops as a plain
  ``runjobs`` does, and Django's file watcher in a thread. A changed file stops the
  worker at once (running jobs go back to READY without spending an attempt), and the
  child exits with code 3, on which the parent starts a new one.
- A child whose parent is gone (killed with SIGKILL) stops too, instead of running on
  with nobody to stop it.
"""

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import Any, Protocol

from django.utils import autoreload

logger = logging.getLogger(__name__)

#: The exit code that asks for a restart (Django's autoreloader uses the same).
RESTART = 3
#: How often the child checks that its parent is still there (seconds).
PARENT_CHECK_EVERY = 1.0


class Stoppable(Protocol):
    def stop(self, abort: bool = False) -> None: ...


def run_with_reload(worker: Stoppable, run: Callable[[], None]) -> int:
    """Run ``run`` (the worker's loop) under the reloader; return the exit code."""
    if os.environ.get(autoreload.DJANGO_AUTORELOAD_ENV) == "true":
        return _child(worker, run)
    return _parent()


def _parent() -> int:
    """Start the worker in a child process, again after each change; forward signals."""
    env = {**os.environ, autoreload.DJANGO_AUTORELOAD_ENV: "true"}
    args = autoreload.get_child_arguments()
    child: subprocess.Popen | None = None
    stopping = False

    def forward(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            # close_fds=False as in Django's reloader: the child may inherit descriptors.
            child = subprocess.Popen(args, env=env, close_fds=False, process_group=0)  # noqa: S603
            if stopping:  # a signal came while no child was there to get it
                child.send_signal(signal.SIGTERM)
            code = child.wait()
            if code != RESTART or stopping:
                break
        if code == RESTART:
            return 0  # stopped while it restarted
        return 128 - code if code < 0 else code  # -N: killed by signal N, as a shell says
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _child(worker: Stoppable, run: Callable[[], None]) -> int:
    """Run the worker in this (main) thread, and watch files and the parent meanwhile."""
    autoreload.ensure_echo_on()
    reloader = autoreload.get_reloader()
    changed = threading.Event()
    done = threading.Event()

    def on_change(sender: Any, file_path: Any, **kwargs: Any) -> bool:
        if not changed.is_set():
            logger.info(
                "%s changed: stopping the worker to restart it; running jobs go back to the "
                "queue", file_path, extra={"action": "worker_reload"},
            )  # fmt: skip
            changed.set()
            worker.stop(abort=True)
        return True  # handled: Django's own reaction (sys.exit in the watcher) is not wanted

    parent = os.getppid()

    def watch_parent() -> None:
        while not done.wait(PARENT_CHECK_EVERY):
            if os.getppid() != parent:
                logger.warning("The runjobs --reload parent process is gone: stopping")
                worker.stop()
                return

    autoreload.file_changed.connect(on_change, dispatch_uid="django_jobs.reload")
    logger.info("Watching for file changes with %s", type(reloader).__name__)
    watcher = threading.Thread(
        target=reloader.run, args=(threading.main_thread(),), name="django_jobs-reload",
        daemon=True,
    )  # fmt: skip
    guard = threading.Thread(target=watch_parent, name="django_jobs-parent", daemon=True)
    watcher.start()
    guard.start()
    try:
        run()
    finally:
        done.set()
        reloader.stop()
        autoreload.file_changed.disconnect(dispatch_uid="django_jobs.reload")
    return RESTART if changed.is_set() else 0
