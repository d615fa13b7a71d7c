"""``manage.py runjobs`` as a subprocess whose every wait is bounded.

The worker runs in its own session (process group), so whatever happens in the
benchmark (an exception, Ctrl-C, a timeout) the ``with`` block ends by killing the
whole group: no supervisor or child outlives the scenario that started it.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from bench.db import ROOT


class WorkerProcess:
    """Start ``runjobs`` with ``args``; its output goes to ``log_path``."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = ["manage.py", "runjobs", "-v", "0", *args]
        self.log_path = log_path
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> "WorkerProcess":
        env = {**os.environ, "DEBUG": "False", **self.env}
        env.setdefault("JOBS_LOG_LEVEL", "WARNING")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.started_at = time.time()
        self.process = subprocess.Popen(
            [sys.executable, *self.args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait(self, timeout: float) -> int:
        """Wait for the worker to exit on its own (``--burst``); TimeoutError with its log."""
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"runjobs did not finish within {timeout:.0f} s; log tail:\n{self.log_tail()}"
            ) from None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful: running jobs finish, unstarted ones are released) and wait."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def ensure_running(self) -> None:
        """Raise (with the log's tail) if the worker has exited: waits on it are pointless."""
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(
                f"runjobs exited early with status {code}; log tail:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            # Also after a clean exit: a child that lost its supervisor would still be
            # in the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
