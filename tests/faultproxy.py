"""A small threaded TCP proxy that injects network faults between a client and an S3 server.

``with FaultProxy(("127.0.0.1", port)) as proxy:`` listens on a free loopback port
(``proxy.url``) and forwards every connection to the upstream address. The test picks the
fault; by default it hits the next ``count`` *connections* the proxy accepts (boto3 keeps
connections alive, so a fresh client's first request opens a new one). With ``match=b"..."`` it
instead hits the next ``count`` *requests* whose bytes contain ``match`` (``b"PUT /bucket/key"``),
on new or pooled connections alike.

* :meth:`passthrough` forwards everything (the default);
* :meth:`delay` sleeps before forwarding each chunk, in both directions;
* :meth:`reset_next` answers with a TCP RST (SO_LINGER 0) once the request arrives;
* :meth:`drop_next` reads the request and closes without answering;
* :meth:`drop_response_next` lets the server act on the request but throws its answer away;
* :meth:`blackhole` accepts connections and never answers;
* :meth:`cut_upstream_after` resets connections once N bytes went upstream (mid-upload);
* :meth:`slowdown_next` answers matching requests with S3's ``503 SlowDown`` (throttling).

Every loop is bounded by a short poll timeout and the proxy's stop event; leaving the ``with``
block closes every socket and joins every thread.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Literal

__all__ = ["FaultProxy"]

Fault = Literal["pass", "delay", "reset", "drop", "drop_response", "blackhole", "cut", "slowdown"]
_SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_SLOWDOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
    + f"Content-Length: {len(_SLOWDOWN_BODY)}\r\n".encode()
    + b"Connection: close\r\n\r\n"
    + _SLOWDOWN_BODY
)

_CHUNK = 64 * 1024
_POLL = 0.05


@dataclass
class _Plan:
    """A fault, and how many more connections (or matching requests) it applies to."""

    fault: Fault = "pass"
    remaining: int | None = None  # None: every one
    delay: float = 0.0
    cut_after: int = 0
    match: bytes | None = None


_PASS = _Plan()


class FaultProxy:
    """Forward ``127.0.0.1:<free port>`` to ``upstream``, injecting the faults a test asks for."""

    def __init__(self, upstream: tuple[str, int], *, join_timeout: float = 5.0) -> None:
        self.upstream = upstream
        self.join_timeout = join_timeout
        self._plan = _PASS
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self.port = 0
        self.accepted = 0  # connections accepted so far
        self.faulted = 0  # connections or requests a fault was applied to
        self.cuts = 0  # connections cut by cut_upstream_after
        self.bytes_up = 0  # bytes forwarded client -> server

    # -- control -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the endpoint to give the client."""
        return f"http://127.0.0.1:{self.port}"

    def _set(self, plan: _Plan) -> None:
        with self._lock:
            self._plan = plan

    def passthrough(self) -> None:
        """Forward everything unchanged."""
        self._set(_PASS)

    def delay(self, seconds: float, count: int | None = None) -> None:
        """Sleep ``seconds`` before forwarding each chunk (on the next ``count`` connections)."""
        self._set(_Plan("delay", remaining=count, delay=seconds))

    def reset_next(self, count: int, match: bytes | None = None) -> None:
        """Reset (RST) the next ``count`` connections, or requests containing ``match``."""
        self._set(_Plan("reset", remaining=count, match=match))

    def drop_next(self, count: int, match: bytes | None = None) -> None:
        """Close the next ``count`` connections (or matching requests) without an answer."""
        self._set(_Plan("drop", remaining=count, match=match))

    def drop_response_next(self, count: int, match: bytes | None = None) -> None:
        """Forward the next ``count`` requests (or matching ones) but discard the answers."""
        self._set(_Plan("drop_response", remaining=count, match=match))

    def blackhole(self) -> None:
        """Accept every connection and read from it, but never answer."""
        self._set(_Plan("blackhole"))

    def slowdown_next(self, count: int, match: bytes) -> None:
        """Answer the next ``count`` requests containing ``match`` with ``503 SlowDown``
        (without forwarding them), as S3 does when a prefix is over its request rate."""
        self._set(_Plan("slowdown", count, match=match))

    def cut_upstream_after(self, nbytes: int, count: int | None = None) -> None:
        """Reset connections once ``nbytes`` went upstream on them (the next ``count``, or all)."""
        self._set(_Plan("cut", remaining=count, cut_after=nbytes))

    def wait_bytes_up(self, nbytes: int, timeout: float) -> bool:
        """Block until ``nbytes`` in all went client -> server; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.bytes_up < nbytes:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False
                self._changed.wait(min(left, _POLL))
            return True

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        """Bind a free port on 127.0.0.1 and start accepting."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(_POLL)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._spawn(self._accept_loop, "faultproxy-accept")
        return self

    def stop(self) -> None:
        """Close every socket and join every thread."""
        self._stop.set()
        with self._lock:
            self._changed.notify_all()
            sockets = list(self._sockets)
            if self._listener is not None:
                sockets.append(self._listener)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()
        deadline = time.monotonic() + self.join_timeout
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"fault proxy threads did not stop: {alive}")

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------
    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            if self._stop.is_set():
                s.close()
                raise OSError("proxy stopped")
            self._sockets.add(s)

    def _close(self, s: socket.socket, *, reset: bool = False) -> None:
        with self._lock:
            self._sockets.discard(s)
        with contextlib.suppress(OSError):
            if reset:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

    def _consume(self, data: bytes | None) -> _Plan:
        """The fault for a new connection (``data`` None) or for a request chunk; counts it."""
        with self._lock:
            plan = self._plan
            if data is None:
                self.accepted += 1
            if plan.fault == "pass" or (plan.match is None) != (data is None):
                return _PASS
            if plan.match is not None and data is not None and plan.match not in data:
                return _PASS
            if plan.remaining is not None:
                if plan.remaining <= 0:
                    return _PASS
                plan.remaining -= 1
            self.faulted += 1
            return replace(plan, remaining=None)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                self._track(conn)
            except OSError:
                return
            self._spawn(self._handle, f"faultproxy-conn-{self.accepted}", conn, self._consume(None))

    def _recv_some(self, conn: socket.socket) -> bytes:
        """The next bytes the client sends, or b'' on close or stop."""
        conn.settimeout(_POLL)
        while not self._stop.is_set():
            try:
                return conn.recv(_CHUNK)
            except TimeoutError:
                continue
            except OSError:
                return b""
        return b""

    def _handle(self, conn: socket.socket, plan: _Plan) -> None:
        if plan.fault in ("reset", "drop"):
            self._recv_some(conn)  # let the request arrive, then fail it
            self._close(conn, reset=plan.fault == "reset")
        elif plan.fault == "blackhole":
            while self._recv_some(conn):
                pass
            self._close(conn)
        else:
            self._forward(conn, plan)

    def _forward(self, conn: socket.socket, plan: _Plan) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=2.0)
        except OSError:  # the server is down: the client sees its connection reset
            self._close(conn, reset=True)
            return
        try:
            self._track(upstream)
        except OSError:
            self._close(conn)
            return
        conn.settimeout(None)
        upstream.settimeout(None)
        sel = selectors.DefaultSelector()
        sel.register(conn, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, conn)
        sent_up = 0
        drop_answer = plan.fault == "drop_response"
        reset = False
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(_POLL):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst: socket.socket = key.data
                    data = src.recv(_CHUNK)
                    if not data:
                        return
                    if plan.delay and self._stop.wait(plan.delay):
                        return
                    if src is conn:
                        hit = self._consume(data)
                        if hit.fault == "slowdown":
                            conn.sendall(_SLOWDOWN)
                            return
                        if hit.fault in ("reset", "drop"):
                            reset = hit.fault == "reset"
                            return
                        drop_answer = drop_answer or hit.fault == "drop_response"
                        if plan.fault == "cut" and sent_up + len(data) >= plan.cut_after:
                            data = data[: max(0, plan.cut_after - sent_up)]
                            if data:
                                dst.sendall(data)
                            self._count_up(len(data))
                            with self._lock:
                                self.cuts += 1
                            reset = True
                            return
                        sent_up += len(data)
                        self._count_up(len(data))
                    elif drop_answer:
                        interim, final = _split_interim(data)
                        if interim:  # "100 Continue" goes through, or no body would follow
                            dst.sendall(interim)
                        if final:  # the server answered; the client never hears of it
                            return
                        continue
                    dst.sendall(data)
        except (OSError, ValueError):  # ValueError: a socket stop() closed under select
            reset = True
        finally:
            sel.close()
            self._close(upstream, reset=reset)
            self._close(conn, reset=reset)

    def _count_up(self, n: int) -> None:
        with self._changed:
            self.bytes_up += n
            self._changed.notify_all()


def _split_interim(data: bytes) -> tuple[bytes, bytes]:
    """Split leading ``HTTP/1.x 1xx`` interim responses off a chunk of server output."""
    end = 0
    while data.startswith((b"HTTP/1.1 1", b"HTTP/1.0 1"), end):
        stop = data.find(b"\r\n\r\n", end)
        if stop < 0:
            break
        end = stop + 4
    return data[:end], data[end:]
