"""The bounded /metrics + health endpoint: routes, boundedness under idle and slow clients,
prompt stop, and no write-loop stall from a connection flood. Real sockets, 127.0.0.1 only."""

from __future__ import annotations

import http.client
import select
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from plcbridge.endpoint import HealthServer

HOST = "127.0.0.1"


class FakeMetrics:
    def __init__(self, body: bytes = b"# fake\nplcbridge_up 1\n") -> None:
        self.body = body
        self.fail = False

    def exposition(self) -> bytes:
        if self.fail:
            raise RuntimeError("registry broke")
        return self.body


@contextmanager
def serving(metrics: Any = None, live: Any = lambda: True, ready: Any = lambda: True, **kw: Any) -> Iterator[HealthServer]:
    server = HealthServer(metrics or FakeMetrics(), HOST, 0, live, ready, **kw).start()
    try:
        yield server
    finally:
        server.stop()


def get(port: int, path: str, method: str = "GET", timeout: float = 2.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_eventually(port: int, path: str, within_s: float) -> tuple[int, bytes, float]:
    """Retry while the server refuses (queue full); (status, body, seconds taken)."""
    t0 = time.monotonic()
    while True:
        try:
            status, _, body = get(port, path)
            return status, body, time.monotonic() - t0
        except (ConnectionError, http.client.RemoteDisconnected, TimeoutError):
            if time.monotonic() - t0 > within_s:
                raise
            time.sleep(0.05)


def open_idle(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection((HOST, port), timeout=5) for _ in range(n)]


def closed_by_peer(sock: socket.socket, wait_s: float = 0.0) -> bool:
    """True if the server closed this connection (EOF or reset) within wait_s."""
    r, _, _ = select.select([sock], [], [], wait_s)
    if not r:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True


def wait_closed(sock: socket.socket, limit_s: float) -> float | None:
    """Seconds until the server closed sock, or None if still open after limit_s."""
    t0 = time.monotonic()
    return time.monotonic() - t0 if closed_by_peer(sock, limit_s) else None


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


# --- routes ---

def test_routes_status_codes_and_bodies(capfd: Any) -> None:
    metrics = FakeMetrics()
    state = {"live": True, "ready": False}
    with serving(metrics, live=lambda: state["live"], ready=lambda: state["ready"]) as server:
        status, headers, body = get(server.port, "/metrics")
        assert (status, body) == (200, metrics.body)
        assert headers["content-type"] == CONTENT_TYPE_LATEST
        assert headers["connection"] == "close"

        assert get(server.port, "/healthz")[::2] == (200, b"ok\n")
        assert get(server.port, "/healthz?verbose=1")[::2] == (200, b"ok\n")
        assert get(server.port, "/readyz")[::2] == (503, b"not ready: not ok\n")  # no reasons given
        state.update(live=False, ready=True)
        assert get(server.port, "/healthz")[::2] == (503, b"not ok\n")
        assert get(server.port, "/readyz")[::2] == (200, b"ok\n")

        assert get(server.port, "/")[0] == 404
        assert get(server.port, "/metricsx")[0] == 404
        assert get(server.port, "/metrics", method="POST")[0] == 405
        status, headers, body = get(server.port, "/metrics", method="HEAD")
        assert (status, body, headers["content-length"]) == (200, b"", str(len(metrics.body)))

        metrics.fail = True  # a broken exposition is a 500, and the workers survive it
        assert get(server.port, "/metrics")[0] == 500
        metrics.fail = False
        assert get(server.port, "/metrics")[0] == 200
    assert server.requests_served == server.connections_accepted == 12  # read after stop(), which joins the workers
    assert (server.connections_refused, server.requests_timed_out, server.responses_timed_out) == (0, 0, 0)
    out, err = capfd.readouterr()
    assert "GET" not in out + err  # no access log lines


def test_bad_request_line_is_400() -> None:
    with serving() as server:
        with socket.create_connection((HOST, server.port), timeout=2) as s:
            s.sendall(b"garbage\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 400 ")


# --- boundedness ---

def test_idle_flood_is_bounded_refused_and_recovers() -> None:
    workers, queue_size, n = 2, 16, 200
    baseline = threading.active_count()
    with serving(workers=workers, queue_size=queue_size, request_timeout_s=2.0) as server:
        idle = open_idle(server.port, n)
        try:
            assert threading.active_count() - baseline <= workers + 1 + 1  # + accept thread + slack
            t0 = time.monotonic()
            while server.connections_accepted < n and time.monotonic() - t0 < 5:
                time.sleep(0.01)
            assert server.connections_accepted == n
            # At most workers + queue_size are held at any time: every other accepted connection
            # was closed by the server, at once (refused) or at its deadline (timed out).
            # (Which of the two depends on how fast the kernel hands them over: a full listen
            # backlog delays some by a SYN-ACK retransmit, past the first ones' deadline.)
            limit = n - workers - queue_size - 1  # - 1: the last accept may not be enqueued/refused yet
            assert server.connections_refused > 0
            assert server.connections_refused + server.requests_timed_out >= limit
            time.sleep(0.2)
            assert sum(closed_by_peer(s) for s in idle) >= limit
            # A real scrape gets through once the held idle ones hit their 2 s deadline.
            status, body, took = get_eventually(server.port, "/healthz", within_s=5.0)
            assert (status, body) == (200, b"ok\n")
            assert took < 5.0
            assert server.requests_timed_out >= 1
            assert threading.active_count() - baseline <= workers + 1 + 1
        finally:
            close_all(idle)
        idle = open_idle(server.port, 10)  # held by workers and queue while we stop
        time.sleep(0.1)
        t0 = time.monotonic()
        server.stop()
        assert time.monotonic() - t0 < 1.0
    try:
        assert all(closed_by_peer(s, 1.0) for s in idle)
    finally:
        close_all(idle)


def test_stop_is_prompt_with_clients_held_by_workers() -> None:
    before = set(threading.enumerate())
    with serving(request_timeout_s=30.0, write_timeout_s=30.0) as server:
        idle = open_idle(server.port, 5)
        try:
            time.sleep(0.2)  # two are in the workers' recv, three in the queue
            assert [t for t in threading.enumerate() if t not in before and t.name.startswith("health-")]
            t0 = time.monotonic()
            server.stop()
            assert time.monotonic() - t0 < 1.0
            started = [t for t in threading.enumerate() if t not in before and t.name.startswith("health-")]
            assert not started, started  # its accept thread and workers have ended
            assert all(closed_by_peer(s, 1.0) for s in idle)
        finally:
            close_all(idle)


def test_slowloris_partial_request_is_dropped_after_the_timeout() -> None:
    timeout = 0.5
    with serving(request_timeout_s=timeout) as server:
        with socket.create_connection((HOST, server.port), timeout=5) as s:
            s.sendall(b"GET /metr")
            took = wait_closed(s, 3 * timeout)
        assert took is not None and took >= 0.8 * timeout
        assert server.requests_timed_out == 1
        assert get(server.port, "/healthz")[0] == 200  # and the worker is free again


def test_drip_feeding_client_cannot_extend_its_deadline() -> None:
    """One byte every 0.1 s keeps every single recv short: only a total deadline drops it."""
    timeout = 0.5
    with serving(request_timeout_s=timeout) as server:
        with socket.create_connection((HOST, server.port), timeout=5) as s:
            t0 = time.monotonic()
            took = None
            for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n" * 10:
                try:
                    s.send(bytes([byte]))
                except ConnectionError:
                    took = time.monotonic() - t0
                    break
                if closed_by_peer(s, 0.1):
                    took = time.monotonic() - t0
                    break
                if time.monotonic() - t0 > 3 * timeout:
                    break
        assert took is not None and 0.8 * timeout <= took <= 3 * timeout
        assert server.requests_timed_out == 1


def test_client_that_never_reads_the_response_is_dropped() -> None:
    timeout = 0.5
    big = FakeMetrics(b"x" * (32 << 20))  # far more than both socket buffers hold
    with serving(big, write_timeout_s=timeout) as server:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            s.connect((HOST, server.port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            t0 = time.monotonic()
            while server.responses_timed_out == 0 and time.monotonic() - t0 < 3 * timeout:
                time.sleep(0.02)
            assert server.responses_timed_out == 1
            assert time.monotonic() - t0 >= 0.8 * timeout
            assert server.requests_served == 0
            assert get(server.port, "/healthz")[0] == 200
        finally:
            s.close()


# --- the write loop keeps its period ---

@pytest.mark.serial  # measures a thread's lateness on this machine
def test_flood_of_idle_connections_does_not_stall_a_10ms_loop() -> None:
    period = 0.010
    lateness: list[float] = []
    threads_seen: list[int] = []
    done = threading.Event()
    baseline = threading.active_count()

    def loop() -> None:
        deadline = time.monotonic() + period
        while not done.is_set():
            time.sleep(max(0.0, deadline - time.monotonic()))
            now = time.monotonic()
            lateness.append(now - deadline)
            threads_seen.append(threading.active_count())
            deadline += period
            if now - deadline >= 0:  # a whole period late: skip ahead, never bunch ticks
                deadline = now + period

    with serving() as server:
        t = threading.Thread(target=loop, name="fake-write-loop", daemon=True)
        t.start()
        try:
            time.sleep(0.2)
            idle = open_idle(server.port, 200)
            time.sleep(0.2)
            close_all(idle)  # all at once
            time.sleep(0.5)
        finally:
            done.set()
            t.join(timeout=1)
        assert server.connections_refused > 0  # the flood really reached the server
    assert len(lateness) > 50
    # No thread per connection: workers + accept thread + this loop, during the whole flood.
    assert max(threads_seen) - baseline <= 2 + 1 + 1
    assert max(lateness) < 0.100, f"write-loop-like thread stalled {max(lateness) * 1000:.1f} ms"


def test_readyz_says_why_and_added_routes_are_served() -> None:
    reasons = ["plc: inputs 120 ms old, above plc.max_input_age_ms = 100 (for 3.0 s)", "model: not loaded (for 9.5 s)"]
    routes = {"/api/status": lambda target: (200, b'{"a": 1}', "application/json"),
              "/api/thumb/": lambda target: (200, target.encode(), "text/plain")}
    with serving(FakeMetrics(), live=lambda: True, ready=lambda: False, why_not_ready=lambda: reasons,
                 routes=routes) as server:
        assert get(server.port, "/readyz")[::2] == (503, ("not ready: " + "; ".join(reasons) + "\n").encode())
        assert get(server.port, "/api/status")[::2] == (200, b'{"a": 1}')
        assert get(server.port, "/api/thumb/01ABC?size=2")[::2] == (200, b"/api/thumb/01ABC?size=2")
        assert get(server.port, "/api/thumb")[0] == 404  # a prefix route takes what is under it only
        assert get(server.port, "/api/statusx")[0] == 404
