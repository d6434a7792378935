"""Wiring: one Config in, the running stages out.

    camera grab loop --FrameMailbox--> inference worker --mailbox/queue--> write loop <--> PLC link

`Daemon.start()` starts everything; `Daemon.stop()` asks the write loop for its final
fail-safe write (READY cleared, SHUTTING_DOWN), then closes the PLC link and stops the
producers. Nothing here is global, so tests and the demo can run a daemon in-process.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

from plcbridge.config import Config
from plcbridge.inspection import FreeRunInspection, Health, TriggeredInspection
from plcbridge.journal import Journal
from plcbridge.link import PlcLink
from plcbridge.logs import get_logger, log_event
from plcbridge.mailbox import FrameMailbox
from plcbridge.metrics import HealthServer, Metrics
from plcbridge.pipeline import GrabLoop, InferenceWorker
from plcbridge.threads import tune_interpreter
from plcbridge.writeloop import WriteLoop

log = get_logger("daemon")


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.journal = Journal(self.metrics, config.station.name)
        self.frames = FrameMailbox()
        self.grab = GrabLoop(config, self.frames, self.metrics)
        self.worker = InferenceWorker(config, self.frames, self.journal, self.metrics)
        self.link = PlcLink(config.plc, self.metrics)
        if config.station.mode == "free-run":
            self.inspection: FreeRunInspection | TriggeredInspection = FreeRunInspection(
                config.timing, config.failsafe, self.worker.latest.get, self.journal, self.metrics)
        else:
            self.inspection = TriggeredInspection(
                config.timing, config.failsafe, self.worker.submit, self.worker.phase_of, self.journal, self.metrics)
        self.loop = WriteLoop(config, self.link, self.inspection, self.health, self._drain_decisions, self.metrics)
        self.http: HealthServer | None = None
        self.started_at: float | None = None
        self._stall_s = config.camera.stall_timeout_ms / 1000

    def health(self, now: float) -> Health:
        last = self.frames.last_capture
        return Health(last is not None and now - last < self._stall_s, self.worker.model_ok, self.worker.model_version)

    def _drain_decisions(self) -> None:
        if isinstance(self.inspection, TriggeredInspection):
            while True:
                try:
                    d = self.worker.results.get_nowait()
                except queue.Empty:
                    return
                self.inspection.on_decision(d)

    def live(self) -> bool:
        t = self.loop.last_tick
        return self.loop.alive and t is not None and time.monotonic() - t < 1.0

    def ready(self) -> bool:
        from plcbridge.contract import StatusBit

        return self.live() and bool(self.loop.status & StatusBit.READY)

    def start(self) -> "Daemon":
        tune_interpreter()
        self.started_at = time.monotonic()
        c = self.config
        log_event(log, "starting", logging.INFO, station=c.station.name, mode=c.station.mode, protocol=c.plc.protocol,
                  plc=f"{c.plc.host}:{c.plc.port}", camera=c.camera.source, model=c.model.manifest, period_ms=c.timing.period_ms)
        if c.metrics.enabled:
            self.http = HealthServer(self.metrics, c.metrics.host, c.metrics.port, self.live, self.ready).start()
            log_event(log, "metrics_listening", logging.INFO, url=f"http://{c.metrics.host}:{self.http.port}/metrics")
        self.worker.start()  # loads the model first: nothing that holds the GIL long runs beside the loop
        self.grab.start()
        self.link.start()
        self.loop.start()
        return self

    def stop(self) -> None:
        log_event(log, "stopping", logging.INFO, reason="stop requested")
        self.loop.stop()
        self.link.close()
        self.worker.stop()
        self.grab.stop()
        if self.http is not None:
            self.http.stop()
        log_event(log, "stopped", logging.INFO, ticks=self.loop.ticks, overruns=self.loop.overruns,
                  final_write_ok=self.loop.final_write_ok)

    def summary(self) -> dict[str, Any]:
        return {
            **self.journal.summary(),
            "write_loop": {
                "period_ms": self.config.timing.period_ms,
                "ticks": self.loop.ticks,
                "overruns": self.loop.overruns,
                "lateness_ms": self.loop.lateness.summary_ms(),
            },
            "frames_captured": self.grab.seq,
            "model": {"version": self.worker.model_version, "loaded": self.worker.model_ok,
                      "providers": getattr(self.worker.model, "providers", None)},
        }
