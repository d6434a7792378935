"""Wiring: one Config in, the running stages out.

    camera grab loop --FrameMailbox--> inference worker --mailbox/queue--> write loop <--> PLC link

`Daemon.start()` starts everything; `Daemon.stop()` asks the write loop for its final
fail-safe write (READY cleared, SHUTTING_DOWN), then closes the PLC link and stops the
producers. Nothing here is global, so tests and the demo can run a daemon in-process.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plcbridge.config import Config, ConfigError, load_config
from plcbridge.contract import StatusBit
from plcbridge.inspection import FreeRunInspection, Health, TriggeredInspection
from plcbridge.journal import Journal
from plcbridge.link import PlcLink
from plcbridge.logs import get_logger, log_event
from plcbridge.mailbox import FrameMailbox
from plcbridge.metrics import HealthServer, Metrics
from plcbridge.pipeline import GrabLoop, InferenceWorker
from plcbridge.sdnotify import Notifier
from plcbridge.threads import freeze_heap, lower_this_thread, tune_interpreter
from plcbridge.writeloop import WriteLoop

if TYPE_CHECKING:
    from plcbridge.inference.session import Model

log = get_logger("daemon")


# Sections a SIGHUP may change in a running daemon. Any other section changing means a new
# PLC connection, camera or schedule: that reload is refused whole, never half applied.
HOT_SECTIONS = frozenset({"model", "failsafe", "logging"})
RELOAD_CHECK_PAUSE_S = 0.01


class Daemon:
    def __init__(self, config: Config, config_path: Path | None = None, notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier(env={})
        self._ready_sent = False
        self.last_reload: str | None = None
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
        self.loop = WriteLoop(config, self.link, self.inspection, self.health, self._drain_decisions, self.metrics,
                              watchdog=self.notifier.watchdog, watchdog_interval_s=self.notifier.watchdog_interval_s)
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
        return self.live() and bool(self.loop.status & StatusBit.READY)

    def status_line(self) -> str:
        """One human line for systemd's STATUS= (what `systemctl status` shows)."""
        j = self.journal.summary()
        late = self.loop.lateness.summary_ms()
        model = f"model v{self.worker.model_version}" if self.worker.model_ok else f"NO MODEL ({self.worker.load_error})"
        parts = [self.config.station.mode, f"PLC {'up' if self.link.connected else 'DOWN'}", model,
                 "camera ok" if self.health(time.monotonic()).camera_ok else "CAMERA FAULT",
                 " ".join(f"{k}={v}" for k, v in sorted(j["results"].items())) or "no results yet",
                 f"lateness p99 {late['p99']} ms"]
        if self.last_reload:
            parts.append(self.last_reload)
        return ", ".join(parts)

    def _notify_ready(self) -> None:
        """READY=1 only with a valid config, a loaded model and the loops running."""
        if self.worker.model_ok and self.loop.alive:
            self.notifier.ready(self.status_line())
            self._ready_sent = True

    def reload(self) -> bool:
        """SIGHUP: reload the config and the model; all of it, or nothing. True if applied."""
        self.notifier.reloading()
        outcome: list[tuple[bool, str]] = []

        def work() -> None:
            # The checks run inferences at full speed: on a producer-priority thread, so that
            # the write loop keeps its core while they run.
            lower_this_thread()
            try:
                outcome.append(self._reload())
            except Exception as e:  # noqa: BLE001 - a reload must never take the daemon down
                detail = f"unexpected error: {type(e).__name__}: {e}"
                log_event(log, "reload_failed", logging.ERROR, what="reload", reason=detail, exc_info=True)
                outcome.append((False, detail))

        t = threading.Thread(target=work, name="reload")
        t.start()
        t.join()
        ok, detail = outcome[0]
        self.metrics.reloads.labels("applied" if ok else "refused").inc()
        self.metrics.last_reload_ok.set(1 if ok else 0)
        self.last_reload = "last reload applied" if ok else f"LAST RELOAD REFUSED: {detail}"
        if ok:
            log_event(log, "reload_applied", logging.INFO, detail=detail, model_version=self.worker.model_version)
        self._notify_ready()
        return ok

    def _refuse(self, what: str, reason: str) -> tuple[bool, str]:
        log_event(log, "reload_failed", logging.ERROR, what=what, reason=reason,
                  serving_model_version=self.worker.model_version)
        return False, reason

    def _reload(self) -> tuple[bool, str]:
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            return self._refuse("config", str(e))
        changed = sorted(name for name in Config.model_fields if getattr(new, name) != getattr(self.config, name))
        cold = [name for name in changed if name not in HOT_SECTIONS]
        if cold:
            return self._refuse("config", f"section(s) {', '.join(cold)} changed; they need a restart "
                                          "(systemctl restart plcbridge); nothing was applied")
        # Always rebuild the model: the files behind an unchanged manifest path may be new.
        from plcbridge.inference.validate import validate_model

        m = new.model
        checked: list[Model] = []
        # Paced: between timed runs the reload sleeps, leaving the CPU to the write loop and to
        # the model still serving. The session that passed is the one that will serve.
        report = validate_model(m.manifest, runs=m.latency_check_runs, p99_max_ms=m.p99_budget_ms,
                                device=m.device, intra_op_threads=m.intra_op_threads,
                                timeout_ms=m.inference_timeout_ms, pause_s=RELOAD_CHECK_PAUSE_S, on_pass=checked.append)
        if not checked:
            return self._refuse("model", f"{m.manifest}: {report.failure}")
        model = checked[0]
        self.worker.swap_model(model)
        self.inspection.fs = new.failsafe
        self.loop.config = new
        logging.getLogger("plcbridge").setLevel(new.logging.level.upper())
        self.config = new
        return True, f"model {model.name} v{model.version} checked (p99 {report.latency_ms.get('p99')} ms); changed: {', '.join(changed) or 'nothing'}"

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
        freeze_heap()
        self.loop.start()
        self._notify_ready()
        if not self._ready_sent:
            self.notifier.status(self.status_line())
        return self

    def stop(self) -> None:
        self.notifier.stopping("stopping: writing the fail-safe block")
        log_event(log, "stopping", logging.INFO, reason="stop requested")
        self.loop.stop()
        self.link.close()
        self.worker.stop()
        self.grab.stop()
        if self.http is not None:
            self.http.stop()
        log_event(log, "stopped", logging.INFO, ticks=self.loop.ticks, overruns=self.loop.overruns,
                  final_write_ok=self.loop.final_write_ok)

    def _count(self, sample: str, **labels: str) -> int:
        return int(self.metrics.registry.get_sample_value(sample, labels) or 0)

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
            # Frames the inference stage skipped (free-run) and triggers refused for a full queue.
            "queue_drops": {q: self._count("plcbridge_queue_drops_total", queue=q) for q in ("frames", "triggers", "late_decisions")},
            "plc_link": {"reconnects": self._count("plcbridge_plc_reconnects_total"),
                         "exchange_errors": self._count("plcbridge_plc_errors_total", kind="exchange"),
                         "connect_errors": self._count("plcbridge_plc_errors_total", kind="connect"),
                         "late_exchanges": self._count("plcbridge_plc_late_exchanges_total")},
            "model": {"version": self.worker.model_version, "loaded": self.worker.model_ok,
                      "providers": getattr(self.worker.model, "providers", None)},
        }
