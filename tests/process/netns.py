"""Several "hosts" on one machine: network namespaces that reach PostgreSQL, and cutting them off.

A :class:`Host` is a network namespace joined to the root namespace by a veth pair, each pair
on a private /24 of its own. PostgreSQL listens on 127.0.0.1 only, which no namespace can
reach, so a relay (``tcpproxy.TcpProxy``, threads in this process, bound to the veth's root-side
address) relays each connection to the server. A process started with :meth:`Host.popen`
reaches the database at ``host.db_url(url)``, through its own link: :meth:`Host.cut` takes
that link down (its root-side end, by default), so packets are dropped without a reset
(what a pulled cable or a lost route looks like), and :meth:`Host.restore` brings it back.

Everything is named after this process's pid, so parallel runs do not collide, and removed
on exit, also after a failure; namespaces left by a run that was killed outright are swept
when the next one starts. Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and ``ip``;
:func:`skip_reason` says why not when they are missing.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tests.process.tcpproxy import TcpProxy

PREFIX = "djjobs"
#: Every ``ip`` call and every wait here is bounded.
IP_TIMEOUT = 10.0
_counter = iter(range(1_000_000))
_lock = threading.Lock()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT)
    if check and done.returncode:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def skip_reason() -> str | None:
    """Why namespaces cannot be made here, or None if they can (tried, not guessed)."""
    if shutil.which("ip") is None:
        return "needs `ip` (iproute2) to make network namespaces"
    if os.geteuid() != 0:
        return "needs root to make network namespaces (ip netns add)"
    name = f"{PREFIX}-probe-{os.getpid()}"
    try:
        done = _ip("netns", "add", name, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run `ip netns add`: {exc}"
    if done.returncode:
        return f"network namespaces are not permitted here: {done.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def sweep_stale() -> None:
    """Delete namespaces left by runs whose process is gone (killed before cleaning up)."""
    listing = _ip("netns", "list", check=False).stdout
    for name in re.findall(rf"^({PREFIX}-(\d+)-\d+)", listing, flags=re.MULTILINE):
        full, pid = name
        if not Path(f"/proc/{pid}").exists():
            _ip("netns", "del", full, check=False)


def _taken_subnets() -> set[str]:
    out = _ip("-4", "-o", "addr", "show", check=False).stdout
    return {".".join(a.split(".")[:3]) for a in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)", out)}


def _free_subnet() -> str:
    # 10.200-249.x.0/24: private, and checked against every address on the machine, so two
    # runs side by side (or a real network in 10/8) never share a /24.
    taken = _taken_subnets()
    rng = random.Random(os.getpid() ^ next(_counter) << 16)
    for _ in range(500):
        subnet = f"10.{rng.randint(200, 249)}.{rng.randint(0, 255)}"
        if subnet not in taken:
            return subnet
    raise RuntimeError("no free /24 in 10.200.0.0-10.249.255.0")


class Host:
    """One network namespace, its veth link to the root namespace, and a forwarder to
    PostgreSQL on the link's root-side address. Use as a context manager, or call
    :meth:`close` (idempotent)."""

    def __init__(self, label: str, db_target: tuple[str, int]) -> None:
        self.label = label
        n = next(_counter)
        self.name = f"{PREFIX}-{os.getpid()}-{n}"
        # Interface names are at most 15 characters.
        self.veth_root = f"djr{os.getpid() % 10**7}x{n}"[:15]
        self.veth_ns = f"djn{os.getpid() % 10**7}x{n}"[:15]
        self.forwarder: TcpProxy | None = None
        self._processes: list[subprocess.Popen[Any]] = []
        with _lock:  # two hosts made at once must not pick the same /24
            subnet = _free_subnet()
            self.root_addr, self.ns_addr = f"{subnet}.1", f"{subnet}.2"
            try:
                self._create()
                self.forwarder = TcpProxy(*db_target, listen_host=self.root_addr)
            except BaseException:
                self.close()
                raise

    def _create(self) -> None:
        _ip("netns", "add", self.name)
        _ip("link", "add", self.veth_root, "type", "veth", "peer", "name", self.veth_ns)
        _ip("link", "set", self.veth_ns, "netns", self.name)
        _ip("addr", "add", f"{self.root_addr}/24", "dev", self.veth_root)
        _ip("link", "set", self.veth_root, "up")
        _ip("-n", self.name, "addr", "add", f"{self.ns_addr}/24", "dev", self.veth_ns)
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("-n", self.name, "link", "set", self.veth_ns, "up")

    def db_url(self, url: str) -> str:
        """``url`` (a postgres:// URL) with its host and port replaced by the forwarder's."""
        assert self.forwarder is not None
        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@" if auth else ""
        netloc += f"{self.root_addr}:{self.forwarder.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the namespace; it is killed when the host is closed."""
        process = subprocess.Popen(self.command(argv), **kwargs)
        self._processes.append(process)
        return process

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout)

    def cut(self, side: str = "root") -> None:
        """Cut the namespace off: its packets are dropped, no reset is sent either way.

        By default the root-side end of the pair goes down. The namespace sees its carrier
        go, but its own interface and route stay, so it keeps sending into the void: the
        connections it has stop hearing back and new ones hang in their SYN, as across a
        real partition. ``side="namespace"`` downs the namespace's end instead, which also
        removes its route: connections in flight hang the same, but new ones fail at once
        with "network unreachable", as on a host whose own interface died.
        """
        if side == "namespace":
            _ip("-n", self.name, "link", "set", self.veth_ns, "down")
        else:
            _ip("link", "set", self.veth_root, "down")

    def restore(self, timeout: float = 10.0) -> None:
        """Bring the link back, and wait (at most ``timeout`` s) until the namespace reaches
        the forwarder again: a veth's carrier takes a moment to come back up."""
        _ip("link", "set", self.veth_root, "up")
        _ip("-n", self.name, "link", "set", self.veth_ns, "up")
        deadline = time.monotonic() + timeout
        while not reachable(self, timeout=1.0):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} does not reach {self.root_addr} after restore")
            time.sleep(0.1)

    def close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(IP_TIMEOUT)
        if self.forwarder is not None:
            self.forwarder.close()
        # Deleting the namespace destroys its end of the pair, and with it the pair.
        _ip("netns", "del", self.name, check=False)
        _ip("link", "del", self.veth_root, check=False)

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def hosts(labels: Sequence[str], db_target: tuple[str, int]) -> Iterator[list[Host]]:
    """Make one :class:`Host` per label; close all of them on exit, whatever happened."""
    sweep_stale()
    made: list[Host] = []
    try:
        for label in labels:
            made.append(Host(label, db_target))
        yield made
    finally:
        for host in made:
            host.close()


def reachable(host: Host, timeout: float = 5.0) -> bool:
    """Whether a TCP connection from inside the namespace reaches the forwarder."""
    assert host.forwarder is not None
    probe = (
        "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), "
        f"timeout={timeout}).close()"
    )
    done = host.run(
        [sys.executable, "-c", probe, host.root_addr, str(host.forwarder.port)],
        timeout=timeout + 10,
    )
    return done.returncode == 0


__all__ = ["Host", "hosts", "reachable", "skip_reason", "sweep_stale"]
