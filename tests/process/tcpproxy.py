"""A TCP relay in front of PostgreSQL that a test can cut off without closing anything.

``hold()`` stops every byte, and every close, in both directions, on the connections
open now and on new ones: to the processes behind it, the database has gone silent, as
in a network partition (no error, no reset; statements just never return). ``release()``
lets what was held through, as a healed network delivers retransmitted data.
"""

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress


class TcpProxy:
    """Relay 127.0.0.1:<port> to ``target``; cut and heal it at will."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._open = threading.Event()
        self._open.set()
        self._closed = threading.Event()
        self._server = socket.create_server((listen_host, 0))
        self._server.settimeout(0.2)
        self.host, self.port = self._server.getsockname()[:2]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    @property
    def held(self) -> bool:
        return not self._open.is_set()

    def close(self) -> None:
        self._closed.set()
        self._open.set()
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                # shutdown first: close() alone leaves the connection up while another
                # thread still blocks in recv() on it.
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # While held, a new connection is accepted by the kernel (as a SYN may be by a
            # half-open route) but goes nowhere until released.
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        with self._lock:
            self._sockets.append(client)
        self._wait_open()
        if self._closed.is_set():
            return
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets.append(upstream)
            if self._closed.is_set():
                upstream.close()
                return
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _wait_open(self) -> None:
        while not self._open.wait(0.2):
            if self._closed.is_set():
                return

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                self._wait_open()
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._wait_open()
            for sock in (source, sink):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def proxy_to(host: str, port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(host, port)
    try:
        yield proxy
    finally:
        proxy.close()
