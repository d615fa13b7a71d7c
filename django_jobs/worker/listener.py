"""LISTEN for "a job became runnable" on a dedicated connection, in a background thread.

Wake-ups are hints: the worker still polls, so a lost notification (a reconnect, a
pooler that drops LISTEN) costs at most one poll interval, never a job. The same
connection listens for "job N was asked to stop" (``CANCEL_CHANNEL``); a lost one of
those is found by the supervisor's check with its heartbeat.
"""

import logging
import random
import threading
from collections.abc import Callable, Collection

from ..protocol import NOTIFY_CHANNEL
from ..protocol.steps import CANCEL_CHANNEL
from . import dbconn

logger = logging.getLogger(__name__)


class Listener:
    def __init__(
        self,
        alias: str,
        queues: Collection[str] | None,
        on_wake: Callable[[], None],
        on_cancel: Callable[[int], None] | None = None,
    ) -> None:
        self.alias = alias
        self.queues = frozenset(queues) if queues is not None else None
        self.on_wake = on_wake
        self.on_cancel = on_cancel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="django_jobs-listener", daemon=True)
        #: Set once the first LISTEN is in place (tests and benchmarks wait on it).
        self.listening = threading.Event()
        self._pooler_checked = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _warn_pooled(self) -> None:
        # A session-mode pool keeps LISTEN working; transaction and statement mode (the
        # usual reason to run PgBouncer) lend the server connection to others between
        # statements, and its notifications never reach this worker.
        logger.warning(
            "The LISTEN connection (database %r) goes through a connection pooler. Behind "
            "PgBouncer in transaction or statement mode, LISTEN hears nothing and this "
            "worker finds new jobs only when it polls. Set OPTIONS['LISTEN_DATABASE'] to "
            "an alias that connects to PostgreSQL directly, or turn LISTEN off "
            "(OPTIONS['LISTEN'] = False, or runjobs --no-listen) to poll on purpose.",
            self.alias, extra={"action": "listen_through_pooler"},
        )  # fmt: skip

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                with dbconn.connect(self.alias, purpose="listener") as conn:
                    if not self._pooler_checked:
                        self._pooler_checked = True
                        if dbconn.through_pooler(conn):
                            self._warn_pooled()
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    if self.on_cancel is not None:
                        conn.execute(f"LISTEN {CANCEL_CHANNEL}")
                    self.listening.set()
                    delay = 0.5
                    # Jobs may have arrived while we were not listening.
                    self.on_wake()
                    while not self._stop.is_set():
                        # One generator per wait keeps the stop check responsive; psycopg
                        # buffers notifications that arrive between two waits.
                        for note in conn.notifies(timeout=1.0):
                            if note.channel == CANCEL_CHANNEL:
                                if self.on_cancel is not None and note.payload.isdigit():
                                    self.on_cancel(int(note.payload))
                            elif self.queues is None or note.payload in self.queues:
                                self.on_wake()
            except Exception as exc:  # the thread must outlive any one error
                logger.warning(
                    "LISTEN connection lost (%s); polling until it is back, retry in %.1f s",
                    exc, delay, extra={"action": "listener_reconnect"},
                )  # fmt: skip
                self._stop.wait(delay + random.random() * delay)  # noqa: S311
                delay = min(delay * 2, 30.0)
