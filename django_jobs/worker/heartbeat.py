"""The supervisor's heartbeat, on a thread and a connection of its own.

Off the supervisor's loop on purpose: that loop also runs the maintenance services,
the schedule tick and the settling of dead children, any of which may take seconds on a
busy database. A heartbeat held up behind them would age the worker's lease (``fence``)
and get healthy jobs stopped; here it is late only when the database itself is.
"""

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from ..protocol import workers as worker_protocol
from . import dbconn
from .fence import Fence

logger = logging.getLogger(__name__)


class Heartbeat:
    """Refresh a worker's row (and its children's) every ``interval`` seconds."""

    def __init__(
        self,
        *,
        database: str,
        worker_id: str,
        interval: float,
        fence: Fence,
        capacity: Callable[[], int],
        register: Callable[[psycopg.Cursor], None],
        on_beat: Callable[[], None],
    ) -> None:
        self.worker_id = worker_id
        self.interval = interval
        self.fence = fence
        self._capacity = capacity
        self._register = register
        self._on_beat = on_beat
        self._db = dbconn.QueueConnection(database, purpose="heartbeat", on_back=lambda: None)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="django_jobs-heartbeat", daemon=True
        )
        self._fenced_logged = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop beating (before the worker's row is removed, or a beat would re-add it)."""
        self._stop.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._db.close()

    def _run(self) -> None:
        next_beat = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, next_beat - time.monotonic())):
            next_beat = time.monotonic() + self.interval
            self.beat()
            if not self._db.up:
                # Try again soon: every second lost here is a second less before the fence.
                next_beat = min(next_beat, time.monotonic() + max(0.2, self._db.retry_in()))

    def beat(self) -> None:
        sent_at = time.monotonic()
        ok, alive = self._db.run(
            lambda cur: worker_protocol.heartbeat(
                cur, worker_id=self.worker_id, concurrency=self._capacity()
            )
        )
        if self._stop.is_set():
            return
        if ok and not alive:
            logger.warning("Worker %s had been declared lost; registering again", self.worker_id)
            sent_at = time.monotonic()
            ok, _ = self._db.run(self._register)
        if ok:
            self.fence.renew(sent_at)
            if self._fenced_logged:
                logger.warning(
                    "Worker %s: heartbeat confirmed again; claiming jobs again", self.worker_id,
                    extra={"action": "worker_unfenced"},
                )  # fmt: skip
                self._fenced_logged = False
            self._on_beat()
        elif not self.fence.may_claim() and not self._fenced_logged:
            self._fenced_logged = True
            logger.error(
                "Worker %s: %s; no new jobs until the database answers, and running ones "
                "are stopped before the rescue could start them elsewhere",
                self.worker_id, self.fence.describe(), extra={"action": "worker_fenced"},
            )  # fmt: skip
