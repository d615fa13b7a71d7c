"""Shared fixtures: the test database's URL, in-process and subprocess workers, waits."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.db import connection

from django_jobs.protocol import jobs as protocol
from django_jobs.protocol import limiters
from django_jobs.worker import dbconn
from django_jobs.worker.supervisor import Supervisor

ROOT = Path(__file__).resolve().parent.parent


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def insert_raw(task_path: str, args: str = "[]", *, proof: str = "", max_attempts: int = 1) -> int:
    """Write a job row as anything with table access could: any path, any proof."""
    with connection.cursor() as cursor:
        job_id, _ = protocol.enqueue(
            cursor,
            protocol.NewJob(
                task_path=task_path,
                queue_name="default",
                priority=0,
                backend="default",
                args_json=args,
                kwargs_json="{}",
                run_after=None,
                max_attempts=max_attempts,
                task_proof=proof,
            ),
        )
    return job_id


def run_worker(**options: Any) -> Supervisor:
    """Run an in-process worker until nothing is runnable; return it for its stats."""
    options.setdefault("burst", True)
    options.setdefault("listen", False)
    worker = Supervisor(**options)
    worker.run()
    return worker


@pytest.fixture(autouse=True)
def _fresh_limits() -> Iterator[None]:
    """Each test reads the declarations afresh: the limits its tasks declare, or none."""
    limiters.activation.forget()
    yield
    limiters.activation.forget()


@pytest.fixture
def conn() -> Iterator[Any]:
    """A second, autocommit connection, as a worker has."""
    c = dbconn.connect("default", purpose="test")
    yield c
    c.close()


def waits_for_commit(hold: Callable[[Any], None], then: Callable[[], None]) -> None:
    """Run ``hold`` in a transaction on a new connection, then ``then`` in a thread while
    that transaction is still open; check ``then`` waited for its commit, and finished."""
    other = dbconn.connect("default", purpose="test-other")
    finished = threading.Event()

    def run() -> None:
        then()
        finished.set()

    try:
        with other.transaction():
            with other.cursor() as cur:
                hold(cur)
            waiter = threading.Thread(target=run)
            waiter.start()
            time.sleep(0.3)
            assert not finished.is_set(), "it did not wait for the open transaction"
        waiter.join(10)
        assert finished.is_set(), "it did not finish after the commit"
    finally:
        other.close()


@pytest.fixture
def database_url(transactional_db: None) -> str:
    """URL of the test database, for worker subprocesses (the data must be committed)."""
    s = connection.settings_dict
    auth = quote(s["USER"] or "", safe="")
    if s["PASSWORD"]:
        auth += ":" + quote(s["PASSWORD"], safe="")
    host = quote(s["HOST"] or "", safe="")
    port = f":{s['PORT']}" if s["PORT"] else ""
    return f"postgres://{auth}@{host}{port}/{s['NAME']}"


class WorkerProcess:
    def __init__(self, popen: subprocess.Popen, log: Path) -> None:
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.pid} still running after {timeout} s; log:\n{self.output()}"
            ) from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_worker(database_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``manage.py runjobs`` subprocesses against the test database."""
    started: list[WorkerProcess] = []

    def start(
        *args: str, env: dict[str, str] | None = None, session: bool = False
    ) -> WorkerProcess:
        """``session``: in a session (and process group) of its own, as a command typed
        at a terminal is, so that a test can signal its whole process group."""
        log = tmp_path / f"worker-{len(started)}.log"
        with log.open("w") as out:
            popen = subprocess.Popen(
                [sys.executable, "manage.py", "runjobs", *args],
                cwd=ROOT,
                env={**os.environ, "DATABASE_URL": database_url, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=session,
            )
        process = WorkerProcess(popen, log)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.popen.poll() is None:
            process.popen.send_signal(signal.SIGKILL)
        process.popen.wait(10)
