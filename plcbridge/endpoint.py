"""The /metrics, /healthz and /readyz HTTP endpoint (and the routes the daemon adds: the
station page and its JSON API), bounded so that it cannot stall the write loop.

Why not http.server's ThreadingHTTPServer: it starts one thread per connection and sets no
socket timeout. Every thread start, and every Python-level step of every handler, needs the
GIL that the 10 ms write loop needs too; 100 half-open connections opened and then closed
stalled the write loop 220 ms, and a client that connects and never sends a request kept a
thread forever. Whoever can reach the metrics port must not be able to do that.

So the work this endpoint can cause is bounded by construction:

* A fixed pool of worker threads is started once, in start(); no thread is ever created
  per connection. The accept thread only accepts and enqueues (no parsing, no logging).
* Accepted connections wait in a bounded queue. When it is full a new connection is closed
  at once and counted (`connections_refused`); nothing is queued without limit.
* Each connection gets `request_timeout_s` in total, counted from accept, to deliver its
  request head (so a client that sends nothing, or drips one byte a second, is dropped on
  time, and connections that expired while queued cost a worker almost nothing), and
  `write_timeout_s` in total to take the response (a client that never reads).
* One request per connection (Connection: close), GET or HEAD only, a head of 8 KiB at most.
* The endpoint's threads run below the write loop and the producers (`SIDE_WORK_NICENESS`).
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import threading
import time
from http import HTTPStatus
from typing import Callable, Protocol

from prometheus_client import CONTENT_TYPE_LATEST

from plcbridge.logs import get_logger, log_event
from plcbridge.threads import SIDE_WORK_NICENESS, lower_this_thread

log = get_logger("http")

_MAX_HEAD = 8192
_LISTEN_BACKLOG = 64
_FIRST_READ_GRACE_S = 0.01  # a queued request whose deadline passed may still be read if already here


class _Exposes(Protocol):
    def exposition(self) -> bytes: ...


# A route: the request target (path and query) -> (status, body, content type). A route's
# key is a path, or a prefix ending in "/" (the longest one wins). Routes run on the
# endpoint's worker threads, below the write loop; each is bounded by what it serves.
Route = Callable[[str], tuple[int, bytes, str]]


class _Timeout(Exception):
    pass


class HealthServer:
    """Serves /metrics, /healthz and /readyz from a fixed pool of threads.

    `HealthServer(metrics, host, port, live, ready)` binds at once (`port` is the bound port,
    useful with port 0); `start()` starts the threads and returns self; `stop()` closes the
    listener and every connection, and returns promptly even with clients connected.

    Counters (plain ints, only ever increasing, for export as Prometheus counters):
      connections_accepted every connection accepted, refused ones included
      requests_served      responses sent in full (any status code)
      connections_refused  connections closed unserved because the queue was full
      requests_timed_out   connections dropped because the request head did not arrive
                           within request_timeout_s of accept (idle, slowloris)
      responses_timed_out  connections dropped because the client did not take the
                           response within write_timeout_s
    """

    def __init__(self, metrics: _Exposes, host: str, port: int, live: Callable[[], bool], ready: Callable[[], bool], *,
                 why_not_ready: Callable[[], list[str]] | None = None, routes: dict[str, Route] | None = None,
                 workers: int = 2, queue_size: int = 16, request_timeout_s: float = 2.0, write_timeout_s: float = 2.0) -> None:
        self.metrics = metrics
        self.live = live
        self.ready = ready
        self.why_not_ready = why_not_ready or (lambda: [])
        self.routes = dict(routes or {})
        self.workers = workers
        self.request_timeout_s = request_timeout_s
        self.write_timeout_s = write_timeout_s
        self.connections_accepted = 0
        self.requests_served = 0
        self.connections_refused = 0
        self.requests_timed_out = 0
        self.responses_timed_out = 0
        self._count_lock = threading.Lock()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=_LISTEN_BACKLOG)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._queue: queue.Queue[tuple[socket.socket, float] | None] = queue.Queue(maxsize=queue_size)
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._active: set[socket.socket] = set()  # connections a worker is reading or writing
        self._active_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> "HealthServer":
        self._threads = [threading.Thread(target=self._accept_loop, name="health-accept", daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"health-worker-{i}", daemon=True) for i in range(self.workers)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake_w.send(b"x")
        accept = self._threads[0] if self._threads else None
        if accept is not None:
            accept.join(timeout=0.5)
        self._listener.close()
        # Unblock workers that wait on a client: shutdown() wakes a blocked recv/send at once.
        with self._active_lock:
            for conn in self._active:
                _quietly(conn.shutdown, socket.SHUT_RDWR)
        # Close what still waits in the queue, then one sentinel per worker.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].close()
        for _ in range(self.workers):
            try:
                self._queue.put_nowait(None)
            except queue.Full:  # cannot happen once the accept thread is gone; never block here
                break
        deadline = time.monotonic() + 0.5
        for t in self._threads[1:]:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        self._wake_r.close()
        self._wake_w.close()

    # --- accept thread: accept, stamp, enqueue or close. Nothing else. ---

    def _accept_loop(self) -> None:
        lower_this_thread(SIDE_WORK_NICENESS)
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                sel.select()
                while not self._stopping.is_set():
                    try:
                        conn, _ = self._listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:  # out of file descriptors, say: back off instead of spinning
                        self._stopping.wait(0.05)
                        break
                    self.connections_accepted += 1  # this thread is the only writer of both
                    try:
                        self._queue.put_nowait((conn, time.monotonic()))
                    except queue.Full:
                        self.connections_refused += 1
                        conn.close()

    # --- workers ---

    def _work(self) -> None:
        lower_this_thread(SIDE_WORK_NICENESS)
        while True:
            item = self._queue.get()
            if item is None:
                return
            conn, accepted_at = item
            with self._active_lock:
                if self._stopping.is_set():
                    conn.close()
                    continue
                self._active.add(conn)
            try:
                self._serve(conn, accepted_at)
            except Exception as e:  # noqa: BLE001 - a worker must outlive any one request
                log_event(log, "http_handler_failed", logging.WARNING, error=f"{type(e).__name__}: {e}",
                          rate_key="handler", exc_info=True)
            finally:
                with self._active_lock:
                    self._active.discard(conn)
                conn.close()

    def _serve(self, conn: socket.socket, accepted_at: float) -> None:
        try:
            head = self._read_head(conn, accepted_at + self.request_timeout_s)
        except _Timeout:
            self._count("requests_timed_out")
            return
        except OSError:  # reset by the client, or shut down by stop()
            return
        if head is None:  # closed before a full request head
            return
        code, body, ctype, head_only = self._respond(head)
        reason = HTTPStatus(code).phrase
        extra = "Allow: GET, HEAD\r\n" if code == 405 else ""
        data = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"{extra}Connection: close\r\n\r\n").encode("latin-1")
        if not head_only:
            data += body
        try:
            conn.settimeout(self.write_timeout_s)
            conn.sendall(data)  # the timeout bounds the whole sendall, not each send
        except TimeoutError:
            self._count("responses_timed_out")
            return
        except OSError:
            return
        self._count("requests_served")

    @staticmethod
    def _read_head(conn: socket.socket, deadline: float) -> bytes | None:
        """The request head, read until a blank line; None if the client closed first."""
        buf = b""
        first = True
        while b"\n\r\n" not in buf and b"\n\n" not in buf:
            if len(buf) > _MAX_HEAD:
                return buf  # answered 431 by _respond
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not first:
                raise _Timeout
            conn.settimeout(max(remaining, _FIRST_READ_GRACE_S))
            first = False
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                raise _Timeout from None
            if not chunk:
                return None
            buf += chunk
        return buf

    def _respond(self, head: bytes) -> tuple[int, bytes, str, bool]:
        """(status, body, content type, head only) for one request head."""
        text = "text/plain"
        if len(head) > _MAX_HEAD:
            return 431, b"request head too large\n", text, False
        parts = head.split(b"\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, b"bad request\n", text, False
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return 405, b"method not allowed\n", text, False
        head_only = method == "HEAD"
        path = target.split("?", 1)[0]
        try:
            if path == "/metrics":
                return 200, self.metrics.exposition(), CONTENT_TYPE_LATEST, head_only
            if path == "/healthz":
                return (200, b"ok\n", text, head_only) if self.live() else (503, b"not ok\n", text, head_only)
            if path == "/readyz":
                if self.ready():
                    return 200, b"ok\n", text, head_only
                reasons = self.why_not_ready()
                return 503, ("not ready: " + "; ".join(reasons or ["not ok"]) + "\n").encode(), text, head_only
            route = self._route(path)
            if route is not None:
                code, body, ctype = route(target)
                return code, body, ctype, head_only
        except Exception as e:  # noqa: BLE001 - report it to the scraper, keep serving
            log_event(log, "http_handler_failed", logging.WARNING, path=path, error=f"{type(e).__name__}: {e}",
                      rate_key=path, exc_info=True)
            return 500, b"internal error\n", text, head_only
        return 404, b"not found\n", text, head_only

    def _route(self, path: str) -> Route | None:
        if path in self.routes:
            return self.routes[path]
        prefixes = [k for k in self.routes if k.endswith("/") and path.startswith(k)]
        return self.routes[max(prefixes, key=len)] if prefixes else None

    def _count(self, name: str) -> None:
        with self._count_lock:
            setattr(self, name, getattr(self, name) + 1)


def _quietly(fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except OSError:
        pass
