"""A TCP proxy in front of Redis that can lose the reply to a chosen command.

`lose_next_reply(b"EVALSHA")` arms it: the next request containing that marker is forwarded, so
Redis runs it, but its reply is thrown away and the client's connection is cut. A client with
retries (as `lumen.storage.connect` builds) then sends the same command again on a new
connection: exactly the resend a lost reply causes in production.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class LossyProxy:
    """Forwards 127.0.0.1:`port` to a Redis port; loses one armed reply at a time."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._sockets: list[socket.socket] = []
        self.lost = 0  # replies thrown away so far
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_next_reply(self, marker: bytes = b"EVALSHA") -> None:
        with self._lock:
            self._marker = marker

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                _close(s)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target_port))
            with self._lock:
                self._sockets += [client, upstream]
            doomed = threading.Event()  # set when this connection's next reply is to be lost
            threading.Thread(
                target=self._requests, args=(client, upstream, doomed), daemon=True
            ).start()
            threading.Thread(
                target=self._replies, args=(upstream, client, doomed), daemon=True
            ).start()

    def _requests(self, src: socket.socket, dst: socket.socket, doomed: threading.Event) -> None:
        def arm(data: bytes) -> bool:
            with self._lock:
                if self._marker is not None and self._marker in data:
                    self._marker = None
                    doomed.set()
            return True

        _pump(src, dst, arm)

    def _replies(self, src: socket.socket, dst: socket.socket, doomed: threading.Event) -> None:
        def deliver(_: bytes) -> bool:
            if doomed.is_set():  # Redis has run the command; its answer never arrives
                with self._lock:
                    self.lost += 1
                return False
            return True

        _pump(src, dst, deliver)


def _pump(src: socket.socket, dst: socket.socket, forward: Callable[[bytes], bool]) -> None:
    """Copy `src` to `dst` while `forward(chunk)` says so; then close both."""
    try:
        while data := src.recv(65536):
            if not forward(data):
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _close(src)
        _close(dst)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()
