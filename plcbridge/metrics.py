"""Prometheus metrics and the liveness/readiness endpoint.

Metrics live in a registry per daemon (not the process-global one) so that tests and the
demo can run several daemons in one process. The HTTP server is a small stdlib
ThreadingHTTPServer on 127.0.0.1 by default: /metrics, /healthz (the write loop ticked in
the last second) and /readyz (the READY status bit is set).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from plcbridge.contract import FaultCode

_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1)
_LATENCY = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.045, 0.075, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.inference_seconds = Histogram("plcbridge_inference_seconds", "Model run time (preprocess + ORT run)", buckets=_LATENCY, registry=r)
        self.capture_to_write_seconds = Histogram(
            "plcbridge_capture_to_write_seconds", "Frame capture to the PLC write that first carried its result", buckets=_LATENCY, registry=r
        )
        self.trigger_to_result_seconds = Histogram(
            "plcbridge_trigger_to_result_seconds", "Trigger seen to the PLC write that carried its result", buckets=_LATENCY, registry=r
        )
        self.write_lateness_seconds = Histogram(
            "plcbridge_write_lateness_seconds", "Write tick start minus its scheduled start", buckets=_FAST, registry=r
        )
        self.write_overruns = Counter("plcbridge_write_overruns", "Write ticks skipped because the loop was late by a period or more", registry=r)
        self.tick_errors = Counter("plcbridge_tick_errors", "Write ticks that raised (no block written that tick)", registry=r)
        self.plc_exchange_seconds = Histogram("plcbridge_plc_exchange_seconds", "One PLC exchange (write outputs + read inputs)", buckets=_FAST, registry=r)
        self.failsafes = Counter("plcbridge_failsafe", "Fail-safe results written, by fault", ["fault"], registry=r)
        for f in FaultCode:
            if f is not FaultCode.NONE:
                self.failsafes.labels(f.name)
        self.decisions = Counter("plcbridge_decisions", "Decisions journaled, by result", ["result"], registry=r)
        self.queue_drops = Counter("plcbridge_queue_drops", "Items overwritten or refused by a bounded queue", ["queue"], registry=r)
        self.plc_late_exchanges = Counter("plcbridge_plc_late_exchanges", "PLC exchanges that completed after their deadline", registry=r)
        self.plc_connected = Gauge("plcbridge_plc_connected", "1 while the PLC connection is up", registry=r)
        self.plc_reconnects = Counter("plcbridge_plc_reconnects", "PLC connections established after a loss", registry=r)
        self.plc_errors = Counter("plcbridge_plc_errors", "PLC exchanges or connects that failed", ["kind"], registry=r)
        self.camera_errors = Counter("plcbridge_camera_errors", "Camera source failures, by kind (open, grab)", ["kind"], registry=r)
        self.camera_reconnects = Counter("plcbridge_camera_reconnects", "Camera source reopened after a failure", registry=r)
        self.camera_ok = Gauge("plcbridge_camera_ok", "1 while frames arrive within the stall limit", registry=r)
        self.model_ok = Gauge("plcbridge_model_ok", "1 while a model session is loaded and healthy", registry=r)
        self.model_info = Info("plcbridge_model", "The model serving now", registry=r)
        self.reloads = Counter("plcbridge_reloads", "SIGHUP reloads, by outcome", ["result"], registry=r)
        self.last_reload_ok = Gauge("plcbridge_last_reload_ok", "1 if the last reload was applied, 0 if it was refused", registry=r)
        self.ready = Gauge("plcbridge_ready", "1 while the READY status bit is written", registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """Serves /metrics, /healthz and /readyz on a daemon thread."""

    def __init__(self, metrics: Metrics, host: str, port: int, live: Callable[[], bool], ready: Callable[[], bool]):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, outer.metrics.exposition(), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok = live() if path == "/healthz" else ready()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"not ok\n", "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # keep scrapes out of the journal
                pass

        self.metrics = metrics
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    def start(self) -> "HealthServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
