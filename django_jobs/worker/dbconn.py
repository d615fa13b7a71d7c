"""The worker's own psycopg connections, built from a Django database alias.

The queue protocol keeps one long-lived connection whatever the project's
``CONN_MAX_AGE`` (reconnecting per job costs several times the work itself); task
code keeps Django's usual per-thread connection handling.
"""

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import psycopg
from django.db import connections

logger = logging.getLogger(__name__)


def connect(alias: str, *, purpose: str, prepare: bool = True) -> psycopg.Connection:
    """Open an autocommit connection to database ``alias`` with Django's settings for it.

    It prepares statements as the alias's ``OPTIONS["prepare_threshold"]`` says (Django:
    never, by default), unless ``prepare`` is false.
    """
    params = connections[alias].get_connection_params()
    # Django's adapter context and cursor class are for its ORM; we speak plain psycopg.
    params.pop("context", None)
    params.pop("cursor_factory", None)
    # A silently dropped network must not hang the worker's loop on connect, nor keep a
    # statement waiting for minutes of TCP retransmissions once the network is back:
    # unacknowledged data for 15 s (or a peer that stops answering keepalives) breaks
    # the connection, and QueueConnection reconnects. OPTIONS in DATABASES override these.
    params.setdefault("connect_timeout", 10)
    params.setdefault("tcp_user_timeout", 15_000)
    params.setdefault("keepalives", 1)
    params.setdefault("keepalives_idle", 10)
    params.setdefault("keepalives_interval", 5)
    params.setdefault("keepalives_count", 3)
    if not prepare:
        params["prepare_threshold"] = None
    # A name that shows up in pg_stat_activity (and in PgBouncer's SHOW CLIENTS): sent
    # when the connection opens, so a pooler knows it from the start.
    params["application_name"] = f"django_jobs {purpose}"
    conn = psycopg.connect(**params, autocommit=True)
    # UTC like Django. Run once per connection, so never worth preparing.
    conn.execute("SET TIME ZONE 'UTC'", prepare=False)
    return conn


def through_pooler(conn: psycopg.Connection) -> bool:
    """Whether ``conn`` reaches PostgreSQL through a pooler such as PgBouncer.

    PostgreSQL tells a client its server process id when the connection opens; a
    pooler answers with an id of its own, and the query then runs in whichever server
    process the pooler lent. Directly (through any TCP proxy too) the two ids agree.
    """
    row = conn.execute("SELECT pg_backend_pid()", prepare=False).fetchone()
    return row is not None and row[0] != conn.info.backend_pid


class QueueConnection:
    """One long-lived connection that rides out outages instead of raising.

    ``run(work)`` returns ``(True, value)``, or ``(False, None)`` while the database is
    away. It never blocks on an outage: the caller's loop goes on collecting outcomes
    and enforcing time limits, and the next call is tried after a growing, jittered
    delay. ``on_back`` is called once the database answers again.
    """

    #: Capped well under WORKER_TIMEOUT, so a short outage never gets a live worker's
    #: jobs rescued (and run twice) just because it was backing off.
    MAX_DELAY = 4.0

    def __init__(
        self,
        alias: str,
        *,
        purpose: str,
        on_back: Callable[[], None],
        max_delay: float | None = None,
    ) -> None:
        self.alias = alias
        self.max_delay = self.MAX_DELAY if max_delay is None else max_delay
        self.purpose = purpose
        self.on_back = on_back
        self.retry_at = 0.0
        self.down_since: float | None = None
        self._delay = 0.5
        self._conn: psycopg.Connection | None = None
        #: Set once a prepared statement went missing: a pooler in between does not keep
        #: them, so this connection stops preparing (see ``_pooled_statement``).
        self._never_prepare = False

    @property
    def up(self) -> bool:
        return self.down_since is None

    def retry_in(self) -> float:
        """Seconds until the next attempt to reach the database (0: now)."""
        return max(0.0, self.retry_at - time.monotonic())

    def run(self, work: Callable[[psycopg.Cursor], Any]) -> tuple[bool, Any]:
        now = time.monotonic()
        if now < self.retry_at:
            return False, None
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(
                    self.alias, purpose=self.purpose, prepare=not self._never_prepare
                )
            # Autocommit: each protocol statement is its own short transaction; the
            # statements of one flush need no atomicity between them (each is fenced).
            with self._conn.cursor() as cur:
                value = work(cur)
        except (
            psycopg.errors.InvalidSqlStatementName,
            psycopg.errors.DuplicatePreparedStatement,
        ) as exc:
            self._pooled_statement(exc)
            return False, None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.close()
            if self.down_since is None:
                self.down_since = now
            self.retry_at = now + self._delay * (0.5 + random.random())  # noqa: S311
            logger.warning(
                "Database unavailable (%s); retrying in %.1f s",
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                self.retry_at - now, extra={"action": "db_unavailable"},
            )  # fmt: skip
            self._delay = min(self._delay * 2, self.max_delay)
            return False, None
        if self.down_since is not None:
            logger.warning(
                "Database is back after %.1f s", now - self.down_since,
                extra={"action": "db_back"},
            )  # fmt: skip
            self.down_since = None
            self._delay = 0.5
            self.on_back()
        return True, value

    def _pooled_statement(self, exc: psycopg.Error) -> None:
        """A statement psycopg prepared (``prepare_threshold`` in the alias's OPTIONS) is
        missing, or its name taken, on the server connection this one got: a pooler in
        transaction mode (PgBouncer before 1.21) lent it another. The failed statement
        did not run; try again at once on a connection that prepares nothing."""
        if not self._never_prepare:
            logger.error(
                "Database %r: %s. A connection pooler in transaction mode (PgBouncer "
                "before 1.21, or without max_prepared_statements) does not keep prepared "
                "statements: remove 'prepare_threshold' from DATABASES[%r]['OPTIONS'] (or "
                "set it to None), or the queries of tasks fail the same way. This "
                "worker's own connection stops preparing statements.",
                self.alias, str(exc).strip().splitlines()[0], self.alias,
                extra={"action": "prepared_statement_lost"},
            )  # fmt: skip
        first = not self._never_prepare
        self._never_prepare = True
        self.close()
        # At once the first time; should it come back on a connection that prepares
        # nothing, it is something else: wait as for an outage rather than spin.
        self.retry_at = 0.0 if first else time.monotonic() + self.max_delay

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
