"""A real PgBouncer in transaction pooling mode, in front of the test database.

``PgBouncer`` starts the ``pgbouncer`` binary (Debian's package; ``.ci/run`` installs it)
from a config of its own on a free loopback port, can stop it (safe or immediate
shutdown, or SIGKILL) and start it again on the same port, and stops it at the end. The
``pgbouncer`` fixture skips the test, naming what is missing, where the binary is not
installed. Every wait is bounded.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

#: Debian installs it in /usr/sbin, which is not on every user's PATH.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer", path=SEARCH_PATH)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgBouncer:
    """One pgbouncer process at a time, always on the same port."""

    def __init__(self, binary: str, upstream_host: str, upstream_port: int, user: str) -> None:
        self.binary = binary
        self.user = user
        self.port = free_port()
        self.popen: subprocess.Popen | None = None
        self.starts = 0
        # pgbouncer refuses to run as root; it then needs a user to switch to (-u) who can
        # read its config and write its log, so the files live in a directory of their own
        # rather than in pytest's tmp_path (mode 0700, owned by root).
        self.run_as = None
        if os.geteuid() == 0:
            self.run_as = "postgres" if _user_exists("postgres") else "nobody"
        self.dir = Path(tempfile.mkdtemp(prefix="django-jobs-pgbouncer-"))
        self.log = self.dir / "pgbouncer.log"
        # auth_type trust still wants the user listed.
        (self.dir / "users.txt").write_text(f'"{user}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={upstream_host} port={upstream_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            # The admin console (database "pgbouncer"): SHOW CLIENTS, for the tests.
            f"admin_users = {user}\n"
            f"auth_file = {self.dir / 'users.txt'}\n"
            "pool_mode = transaction\n"
            # Enough server connections that workers never wait for one in these tests.
            "default_pool_size = 40\n"
            "max_client_conn = 400\n"
            f"logfile = {self.log}\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
            # psycopg sends none of these, but a libpq URL might.
            "ignore_startup_parameters = extra_float_digits,options\n"
        )
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def url(self, database_url: str) -> str:
        """``database_url`` with its host and port replaced by this PgBouncer's."""
        parts = urlsplit(database_url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        assert not self.running, "PgBouncer is already running"
        command = [self.binary, str(self.dir / "pgbouncer.ini")]
        if self.run_as is not None:
            command[1:1] = ["-u", self.run_as]
        self.popen = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"pgbouncer exited with {self.popen.returncode} at start; "
                    f"log:\n{self.log_text()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"pgbouncer not listening on {self.port} after {timeout} s; "
                        f"log:\n{self.log_text()}"
                    ) from None
                time.sleep(0.05)

    def stop(self, signum: int = signal.SIGINT, timeout: float = 15.0) -> None:
        """SIGINT: safe shutdown (waits for running transactions to end); SIGTERM:
        immediate shutdown; SIGKILL: a crash. Kills it if it outlives ``timeout``."""
        if not self.running:
            return
        assert self.popen is not None
        self.popen.send_signal(signum)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
            raise AssertionError(
                f"pgbouncer outlived signal {signum} by {timeout} s; log:\n{self.log_text()}"
            ) from None

    def restart(self, signum: int = signal.SIGINT, down_for: float = 0.0) -> None:
        """A real stop and a new process on the same port (not ``pgbouncer -R``, which
        hands its sockets over and keeps the connections)."""
        self.stop(signum)
        time.sleep(down_for)
        self.start()

    def clients(self) -> list[dict]:
        """PgBouncer's own list of its client connections (``SHOW CLIENTS``)."""
        # The admin console speaks the simple query protocol only: a client-side cursor.
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname="pgbouncer",
            autocommit=True, connect_timeout=5, cursor_factory=psycopg.ClientCursor,
        ) as conn:  # fmt: skip
            cur = conn.execute("SHOW CLIENTS")
            names = [column.name for column in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        try:
            if self.running:
                self.stop(signal.SIGTERM, timeout=10)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def pgbouncer(database_url: str) -> Iterator[PgBouncer]:
    """A PgBouncer in transaction mode in front of the test database's server, started."""
    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip(
            "PgBouncer is not installed: these tests need the `pgbouncer` binary "
            "(Debian: apt-get install pgbouncer; .ci/run installs it)"
        )
    parts = urlsplit(database_url)
    bouncer = PgBouncer(
        binary, parts.hostname or "127.0.0.1", parts.port or 5432, parts.username or "postgres"
    )
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.close()
