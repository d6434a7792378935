"""Write-loop lateness beside the bounded HTTP endpoint: quiet vs. under a connection flood.

    .venv/bin/python tests/bench_endpoint_flood.py [--seconds 10] [--idle 100] [--slow 50] [--hold 3]

A thread that sleeps on absolute 10 ms deadlines (like the write loop) records how late each
tick starts, first with no clients, then while a separate client process repeatedly opens
`--idle` connections that send nothing and `--slow` slowloris connections (a partial request,
then a byte every 0.5 s), holds them `--hold` seconds, and closes them all at once. The
client process also scrapes /metrics every 0.25 s, to show what a real scraper gets. The
interpreter is tuned as the daemon tunes it (switch interval, frozen heap). Prints one JSON
object. Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np

from plcbridge.endpoint import HealthServer
from plcbridge.metrics import Metrics
from plcbridge.threads import freeze_heap, tune_interpreter

HOST = "127.0.0.1"
PERIOD_S = 0.010


def lateness_for(seconds: float) -> dict[str, float | int]:
    """Run a 10 ms absolute-deadline loop on its own thread for `seconds`; lateness in ms."""
    samples: list[float] = []

    def loop() -> None:
        end = time.monotonic() + seconds
        deadline = time.monotonic() + PERIOD_S
        while deadline < end:
            time.sleep(max(0.0, deadline - time.monotonic()))
            now = time.monotonic()
            samples.append(now - deadline)
            deadline += PERIOD_S
            if now >= deadline:  # a whole period late: skip ahead, as the write loop does
                deadline = now + PERIOD_S

    t = threading.Thread(target=loop, name="fake-write-loop")
    t.start()
    t.join()
    v = np.array(samples) * 1000
    p50, p99 = np.percentile(v, [50, 99])
    return {"ticks": len(v), "p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3),
            "max_ms": round(float(v.max()), 3), "late_by_a_period": int((v >= PERIOD_S * 1000).sum())}


def scraper(port: int, stop: threading.Event, every_s: float = 0.25) -> dict[str, object]:
    """A well-behaved Prometheus stand-in: GET /metrics every `every_s` until stop is set."""
    ok = failed = 0
    took_ms: list[float] = []
    while not stop.wait(every_s):
        t0 = time.monotonic()
        try:
            with socket.create_connection((HOST, port), timeout=2) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
        except OSError:
            data = b""
        if data.startswith(b"HTTP/1.1 200 "):
            ok += 1
            took_ms.append((time.monotonic() - t0) * 1000)
        else:
            failed += 1
    return {"scrapes_ok": ok, "scrapes_refused_or_failed": failed,
            "scrape_ms_p50": round(float(np.percentile(took_ms, 50)), 2) if took_ms else None,
            "scrape_ms_max": round(max(took_ms), 2) if took_ms else None}


def flood_client(port: int, seconds: float, n_idle: int, n_slow: int, hold_s: float) -> dict[str, object]:
    """Runs in the child process: open/hold/close-all cycles, while a scraper scrapes."""
    end = time.monotonic() + seconds
    stop = threading.Event()
    scrapes: dict[str, object] = {}
    t = threading.Thread(target=lambda: scrapes.update(scraper(port, stop)), daemon=True)
    t.start()
    cycles = opened = 0
    while time.monotonic() < end:
        socks: list[socket.socket] = []
        for _ in range(n_idle):  # connect and send nothing
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect((HOST, port))
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                continue
            socks.append(s)
        slow: list[socket.socket] = []
        for _ in range(n_slow):  # a partial request, then one byte every 0.5 s
            try:
                s = socket.create_connection((HOST, port), timeout=0.5)
                s.sendall(b"GET /metr")
                s.setblocking(False)
                slow.append(s)
            except OSError:
                pass
        opened += len(socks) + len(slow)
        hold_end = min(time.monotonic() + hold_s, end)
        while time.monotonic() < hold_end:
            time.sleep(min(0.5, max(0.0, hold_end - time.monotonic())))
            for s in slow:
                try:
                    s.send(b"i")
                except OSError:
                    pass
        for s in socks + slow:  # all at once
            s.close()
        cycles += 1
    stop.set()
    t.join()
    return {"cycles": cycles, "connections_opened": opened, **scrapes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--idle", type=int, default=100)
    ap.add_argument("--slow", type=int, default=50)
    ap.add_argument("--hold", type=float, default=3.0, help="seconds each wave is held open (> the 2 s request timeout)")
    ap.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.client:
        print(json.dumps(flood_client(a.client, a.seconds, a.idle, a.slow, a.hold)))
        return

    tune_interpreter()
    metrics = Metrics()
    server = HealthServer(metrics, HOST, 0, lambda: True, lambda: True).start()
    freeze_heap()
    try:
        quiet = lateness_for(a.seconds)
        client = subprocess.Popen([sys.executable, __file__, "--client", str(server.port), "--seconds", str(a.seconds),
                                   "--idle", str(a.idle), "--slow", str(a.slow), "--hold", str(a.hold)],
                                  stdout=subprocess.PIPE, text=True)
        time.sleep(0.2)  # let the flood start before measuring
        flood = lateness_for(a.seconds)
        out, _ = client.communicate(timeout=a.seconds + 30)
        t0 = time.monotonic()
        server.stop()
        stop_ms = (time.monotonic() - t0) * 1000
    finally:
        server.stop()
    print(json.dumps({
        "period_ms": PERIOD_S * 1000, "seconds_per_phase": a.seconds, "idle_clients": a.idle,
        "slowloris_clients": a.slow, "hold_s": a.hold,
        "quiet": quiet, "flood": flood, "client": json.loads(out) if out.strip() else None,
        "server": {"connections_accepted": server.connections_accepted, "requests_served": server.requests_served,
                   "connections_refused": server.connections_refused,
                   "requests_timed_out": server.requests_timed_out, "responses_timed_out": server.responses_timed_out,
                   "stop_ms": round(stop_ms, 1)},
    }, indent=2))


if __name__ == "__main__":
    main()
