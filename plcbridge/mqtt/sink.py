"""The MQTT sink on the journal's seam (plcbridge/sinks.py), and what it publishes besides
the decisions.

Two threads, neither of them the control path's:

- the seam's thread for this sink ("sink-mqtt"): `write()` turns each decision record into
  its message (plcbridge/mqtt/messages.py), commits it to the spool (an fsync: the reason it
  is not done on the journal's thread), adds it to the stats window, and wakes the publisher.
  A spool that cannot take it (a full disk, a missing folder) costs that decision, counted
  (`plcbridge_mqtt_dropped_total{reason="spool_error"}`) and logged; a sink that falls behind
  loses records at the seam (`plcbridge_sink_dropped_total{sink="mqtt"}`);
- the publisher's ("mqtt", plcbridge/mqtt/client.py), which owns the connection and also
  sends the status and stats: they must go out on an idle line too, when this sink's thread
  is never woken, and only the thread that drives the connection may publish on it.

The status is the station page's facts (Daemon.readiness_report(), the model, the link, the
camera: `DaemonStation`), so the plant and the page never disagree; the stats' counts since
start are the journal's (every decision once), the interval's figures the records this sink
saw.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from plcbridge.archive.sink import retention
from plcbridge.journal import by_result, utc_text, yield_of
from plcbridge.logs import get_logger, log_event
from plcbridge.metrics import build_info
from plcbridge.mqtt.client import Publisher
from plcbridge.mqtt.messages import decision_message, encode, offline_message, stats_message, status_message
from plcbridge.mqtt.spool import Spool, SpoolError
from plcbridge.sinks import DecisionRecord

if TYPE_CHECKING:
    from plcbridge.config import Config
    from plcbridge.daemon import Daemon
    from plcbridge.metrics import Metrics

log = get_logger("mqtt")

STOP_S = 1.5  # the publisher's share of the daemon's stop: offline status, DISCONNECT
SAMPLES = 10_000  # latencies kept per stats interval (a uniform sample beyond this)
FACTS_FRESH_S = 0.25  # the status facts read for the change check are reused this long


class Station(Protocol):
    """What the status and stats say about the station (the daemon: DaemonStation)."""

    def facts(self) -> dict[str, Any]:
        """The status topic's facts: started_utc, ready, readiness, mode, model, plc, camera, software."""
        ...

    def totals(self) -> dict[str, Any]:
        """Since start: results (by name), failsafes_by_fault, write_loop (overruns, lateness_ms)."""
        ...


class DaemonStation:
    """A running daemon's facts, read where the station page reads them."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def facts(self) -> dict[str, Any]:
        d, c = self.daemon, self.daemon.config
        now = time.monotonic()
        report = d.readiness_report()
        started = None if d.started_at is None else utc_text(time.time() - (now - d.started_at))
        model_ok = d.worker.model_ok
        return {
            "started_utc": started, **report, "mode": c.station.mode,
            "model": {"name": getattr(d.worker.model, "name", None), "version": d.worker.model_version,
                      "loaded": model_ok, "error": None if model_ok else d.worker.load_error,
                      **d.model_operations()},
            "plc": {"protocol": c.plc.protocol, "address": c.plc.address, "connected": d.link.connected,
                    "inputs_ok": d.loop.inputs_ok, "last_error": d.link.last_error},
            "camera": {"source": c.camera.source, "ok": d.health(now).camera_ok},
            "recipe": d.recipe_view(),
            "software": build_info(),
        }

    def totals(self) -> dict[str, Any]:
        d = self.daemon
        j = d.journal.summary()
        return {"results": j["results"], "failsafes_by_fault": j["failsafes_by_fault"],
                "write_loop": {"overruns": d.loop.overruns, "lateness_ms": d.loop.lateness.summary_ms()}}


def percentiles(values: list[float]) -> dict[str, Any]:
    """n, p50, p90, p99, max (nearest rank), rounded to 0.1 ms; None for each with no values."""
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    v = sorted(values)

    def at(q: float) -> float:
        return round(v[min(len(v) - 1, max(0, int(q * len(v) + 0.999999) - 1))], 1)

    return {"n": len(v), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(v[-1], 1)}


class StatsWindow:
    """The decisions this sink saw since the last stats message: counts by result and the
    latencies (a uniform sample of at most SAMPLES, whatever the rate)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._counts: Counter[str] = Counter()
        self._latency: list[float] = []
        self._infer: list[float] = []
        self._seen = 0

    def add(self, fields: Mapping[str, Any]) -> None:
        with self._lock:
            self._counts[str(fields.get("result"))] += 1
            self._seen += 1
            for key, kept in (("latency_ms", self._latency), ("infer_ms", self._infer)):
                value = fields.get(key)
                if isinstance(value, (int, float)):
                    if len(kept) < SAMPLES:
                        kept.append(float(value))
                    else:  # reservoir sampling: every decision of the interval equally likely kept
                        i = random.randrange(self._seen)
                        if i < SAMPLES:
                            kept[i] = float(value)

    def take(self) -> tuple[float, dict[str, int], list[float], list[float]]:
        """(seconds covered, counts, latencies, inference times), and a new window begins."""
        with self._lock:
            now = self._clock()
            out = (now - self._start, dict(self._counts), self._latency, self._infer)
            self._start, self._counts, self._latency, self._infer, self._seen = now, Counter(), [], [], 0
            return out


class MqttSink:
    """`[mqtt]`: the decisions to the spool, the spool to the broker (name "mqtt")."""

    name = "mqtt"
    images = False  # the seam hands the records over without their frames: a lagging spool pins none

    def __init__(self, config: Config, metrics: Metrics, station: Station, env: Mapping[str, str] | None = None) -> None:
        s = self.settings = config.mqtt
        self.metrics = metrics
        self.station = station
        self.topics = config.mqtt_topics()
        self.where = {"site": s.site, "line": s.line}
        self.station_name = config.station.name
        self.archive = config.archive
        self.spool = Spool(s.spool_path, s.spool_max_bytes, s.spool_max_age_days * 86400, metrics)
        self.window = StatsWindow()
        self.publisher = Publisher(s, self.topics, config.mqtt_client_id(), self.spool, metrics, self, env)
        self._facts: tuple[float, dict[str, Any]] | None = None
        metrics.mqtt_backlog_messages.set_function(lambda: self.spool.backlog().messages)
        metrics.mqtt_backlog_bytes.set_function(lambda: self.spool.backlog().bytes)
        metrics.mqtt_backlog_age_seconds.set_function(lambda: self.spool.backlog().oldest_age_s or 0.0)

    def start(self) -> None:
        """Start the publisher (the daemon's start; the spool's backlog goes out first)."""
        self.publisher.start()

    # ------------------------------------------------------------------ the seam (sink thread)

    def write(self, record: DecisionRecord) -> None:
        self.window.add(record.fields)
        image = retention(self.archive, record.decision.result) if record.judged_frame else None
        payload = encode(decision_message(record.fields, image=image, **self.where))
        try:
            self.spool.put(record.decision_id, self.topics.decision, payload)
        except SpoolError as e:
            reason = "too_large" if e.reason == "too_large" else "spool_error"
            self.metrics.mqtt_dropped.labels(reason).inc()
            log_event(log, "mqtt_spool_failed", logging.ERROR, path=str(self.spool.path), decision_id=record.decision_id,
                      drop=e.reason, reason=f"{e}: this decision is not published (the PLC and the journal have it)",
                      setting="mqtt.spool_path", rate_key=f"mqtt-spool-{e.reason}")
            return
        self.metrics.mqtt_spooled.inc()
        self.publisher.wake()

    def close(self) -> None:
        """At the daemon's stop, after the last record: offline status, DISCONNECT, spool closed
        (what is not acknowledged stays in it). Bounded by STOP_S: the final PLC write is long done."""
        self.publisher.stop(STOP_S)
        self.spool.close()

    # ------------------------------------------------------------------ what the publisher sends (its thread)

    def _station_facts(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._facts is None or now - self._facts[0] > FACTS_FRESH_S:
            self._facts = (now, self.station.facts())
        return self._facts[1]

    def status_key(self) -> Hashable:
        f = self._station_facts()
        return (f.get("ready"), tuple((p.get("part"), p.get("ok")) for p in f.get("readiness", ())),
                f.get("model", {}).get("version"), f.get("model", {}).get("loaded"),
                f.get("plc", {}).get("connected"), f.get("plc", {}).get("inputs_ok"), f.get("camera", {}).get("ok"))

    def status(self) -> bytes:
        facts = {**self._station_facts(), "mqtt": self.spool.backlog().as_dict()}
        return encode(status_message(facts, station=self.station_name, now=time.time(), **self.where))

    def offline(self, reason: str, at: float) -> bytes:
        return encode(offline_message(station=self.station_name, reason=reason, now=at, **self.where))

    def stats(self) -> bytes:
        totals = self.station.totals()
        interval_s, counts, latency, infer = self.window.take()
        since, interval = by_result(totals.get("results", {})), by_result(counts)
        figures = {
            "interval_s": round(interval_s, 1),
            "counts": {"since_start": since, "interval": interval},
            "yield": {"since_start": yield_of(since), "interval": yield_of(interval)},
            "failsafes_by_fault": totals.get("failsafes_by_fault", {}),
            "latency_ms": percentiles(latency), "infer_ms": percentiles(infer),
            "write_loop": totals.get("write_loop", {}),
            "mqtt": {**self.spool.backlog().as_dict(), **self.counts()},
        }
        return encode(stats_message(figures, station=self.station_name, now=time.time(), **self.where))

    # ------------------------------------------------------------------ the page, `plcbridge status`

    def counts(self) -> dict[str, int]:
        """published (decisions acknowledged), spooled, dropped (every reason, the seam's too)."""
        get = self.metrics.registry.get_sample_value
        dropped = sum(get("plcbridge_mqtt_dropped_total", {"reason": r}) or 0
                      for r in ("spool_bytes", "spool_age", "spool_error", "too_large", "rejected"))
        dropped += sum(get("plcbridge_sink_dropped_total", {"sink": self.name, "reason": r}) or 0
                       for r in ("queue_full", "error"))
        return {"published": int(get("plcbridge_mqtt_published_total", {"topic": "decision"}) or 0),
                "spooled": int(get("plcbridge_mqtt_spooled_total") or 0), "dropped": int(dropped)}

    def view(self) -> dict[str, Any]:
        """The connection and the backlog, for /api/status."""
        error = self.spool.error
        return {**self.publisher.view(), **self.spool.backlog().as_dict(), **self.counts(),
                "topic_prefix": self.topics.prefix, "spool_path": str(self.spool.path),
                "spool_error": None if error is None else str(error)}
