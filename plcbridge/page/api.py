"""The JSON the page and `plcbridge status` read: /api/status and /api/decisions.

Everything here says what the daemon knows now and no more: readiness is
`Daemon.readiness()` itself; the PLC view is the block the link knows reached the PLC and
the inputs it last read, each with its age; names, bits and codes come from
plcbridge/contract. The work per request is a few dozen dict entries; the two figures that
cost more to compute (the write loop's lateness percentiles over its sample ring, and the
metrics registry's counters) are cached for a short while.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from plcbridge.contract import (
    INPUT_SIGNALS,
    OUTPUT_SIGNALS,
    FaultCode,
    Inputs,
    Outputs,
    ResultCode,
    Signal,
    StatusBit,
    carried_inputs,
    carried_outputs,
    code_name,
)
from plcbridge.journal import by_result, decision_time, yield_of
from plcbridge.journal import utc_text as _utc
from plcbridge.overlay import findings_summary
from plcbridge.page.images import ArchivedPictures
from plcbridge.page.sink import Kept, PageSink

if TYPE_CHECKING:
    from plcbridge.config import Config
    from plcbridge.daemon import Daemon

LATENESS_EVERY_S = 5.0  # the lateness summary (a sort of up to 200 000 samples) is recomputed this often
COUNTERS_EVERY_S = 0.5  # the metrics counters (one pass over the registry) this often


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def station_outputs(config: Config) -> tuple[Signal, ...]:
    """The output signals this station carries, in contract order: the base block and the
    optional outputs it writes (`PlcCommon.carried_optional`)."""
    return carried_outputs(config.plc.carried_optional)


def outputs_view(outputs: Outputs, signals: Sequence[Signal] = OUTPUT_SIGNALS) -> dict[str, Any]:
    """An output block named per the contract (the `signals` the station carries: see
    station_outputs), the status word decoded into bit names and the result and fault codes
    named (None for a value that is no such code)."""
    values = outputs.as_dict()
    return {
        "values": {s.name: values[s.name] for s in signals},
        "status_bits": [b.name for b in StatusBit if values["status"] & b],
        "result": code_name(ResultCode, values["result_code"]),
        "fault": code_name(FaultCode, values["fault_code"]),
    }


def inputs_view(inputs: Inputs, signals: Sequence[Signal] = INPUT_SIGNALS) -> dict[str, Any]:
    """An input block named per the contract: the `signals` the station reads."""
    values = inputs.as_dict()
    return {"values": {s.name: values[s.name] for s in signals}}


class _Every:
    """A value computed at most once per `every_s`, shared by concurrent readers."""

    def __init__(self, every_s: float, compute: Callable[[], Any]) -> None:
        self.every_s = every_s
        self.compute = compute
        self._lock = threading.Lock()
        self._value: tuple[float, Any] | None = None

    def get(self) -> Any:
        with self._lock:
            now = time.monotonic()
            if self._value is None or now - self._value[0] >= self.every_s:
                self._value = (now, self.compute())
            return self._value[1]


class StatusApi:
    """Builds /api/status and /api/decisions from a running daemon and the page's sink."""

    def __init__(self, daemon: Daemon, sink: PageSink, archived: ArchivedPictures) -> None:
        self.daemon = daemon
        self.sink = sink
        self.archived = archived
        self._outputs = station_outputs(daemon.config)
        self._inputs = carried_inputs(daemon.config.plc.carried_optional_inputs)
        self._lateness = _Every(LATENESS_EVERY_S, daemon.loop.lateness.summary_ms)
        self._counters = _Every(COUNTERS_EVERY_S, self._read_counters)

    def _read_counters(self) -> dict[str, int]:
        """The link's and the page sink's counters, as /metrics shows them: one pass over the
        registry (get_sample_value would make one per value)."""
        wanted = {("plcbridge_plc_late_exchanges_total", ()): "late_exchanges",
                  ("plcbridge_plc_reconnects_total", ()): "reconnects",
                  ("plcbridge_sink_dropped_total", (("reason", "queue_full"), ("sink", "page"))): "page_dropped_queue_full",
                  ("plcbridge_sink_dropped_total", (("reason", "error"), ("sink", "page"))): "page_dropped_error"}
        out = dict.fromkeys(wanted.values(), 0)
        for family in self.daemon.metrics.registry.collect():
            if family.name not in ("plcbridge_plc_late_exchanges", "plcbridge_plc_reconnects", "plcbridge_sink_dropped"):
                continue
            for sample in family.samples:
                key = wanted.get((sample.name, tuple(sorted(sample.labels.items()))))
                if key is not None:
                    out[key] = int(sample.value)
        return out

    def status(self) -> dict[str, Any]:
        d, c = self.daemon, self.daemon.config
        report = d.readiness_report()
        link = d.link
        counters = self._counters.get()
        block, reply = link.last_block, link.reply
        now, wall = time.monotonic(), time.time()  # after reading them: their ages are never negative
        since_start = by_result(d.journal.summary()["results"])
        last_hour = by_result(self.sink.last_hour())
        newest, frame = self.sink.newest(), self.sink.frame()
        return {
            "station": {"name": c.station.name, "mode": c.station.mode, "protocol": c.plc.protocol,
                        "plc": c.plc.address, "camera": c.camera.source},
            "time_utc": _utc(wall),
            "uptime_s": None if d.started_at is None else round(now - d.started_at, 1),
            **report,
            "plc": {
                "outputs": None if block is None else {**outputs_view(block[0], self._outputs), "age_ms": _ms(now - block[1])},
                "inputs": None if reply is None else {**inputs_view(reply.inputs, self._inputs),
                                                      "age_ms": _ms(now - reply.t_answered)},
                "link": {"connected": link.connected, "delivering": link.delivering, "sessions": link.sessions,
                         "reply_age_ms": None if reply is None else _ms(now - reply.t_answered),
                         "inputs_ok": d.loop.inputs_ok, "exchanges": link.exchanges,
                         "late_exchanges": counters["late_exchanges"], "reconnects": counters["reconnects"],
                         "last_error": link.last_error},
            },
            "counts": {"since_start": since_start, "last_hour": last_hour},
            "yield": {"since_start": yield_of(since_start), "last_hour": yield_of(last_hour)},
            "model": {"name": getattr(d.worker.model, "name", None), "version": d.worker.model_version,
                      "loaded": d.worker.model_ok, "manifest": str(c.model.manifest),
                      "error": None if d.worker.model_ok else d.worker.load_error},
            # Model operations: reloads (promote waits on these), the shadow, the watch after a change.
            "reloads": d.reload_view(),
            "shadow": None if d.shadow is None else d.shadow.view(),
            "watch": None if d.watch is None else d.watch.view(),
            "drift": None if d.drift is None else d.drift.view(),
            # Stations that read recipe_id: the recipe asked for and the one active (plcbridge/recipes.py).
            "recipe": d.recipe_view(),
            "write_loop": {"period_ms": c.timing.period_ms, "ticks": d.loop.ticks, "overruns": d.loop.overruns,
                           "lateness_ms": self._lateness.get()},
            "newest_decision_id": None if newest is None else newest.decision_id,
            "live": {"decision_id": None if frame is None else frame[0].decision_id},
            "page": {"records_dropped": counters["page_dropped_queue_full"] + counters["page_dropped_error"]},
            # Results to the plant (plcbridge/mqtt): connection and spool backlog; None when [mqtt] is off.
            "mqtt": None if d.mqtt is None else d.mqtt.view(),
        }

    def decisions(self, limit: int) -> dict[str, Any]:
        """The newest `limit` decisions, newest first, each with `thumb` when it is archived
        (the overlay's, findings drawn, when the entry has one) and `findings_summary`: the
        findings in a few words ("2 defects, worst scratch", "anomalous area 1234 px"), ""
        without findings."""
        return {"decisions": [self._decision(k) for k in self.sink.recent(limit)], "limit": limit}

    def _decision(self, kept: Kept) -> dict[str, Any]:
        archived = kept.has_image and self.archived(kept.decision_id) is not None
        try:
            when: str | None = _utc(decision_time(kept.decision_id))
        except ValueError:
            when = None
        findings = kept.fields.get("findings")
        return {**kept.fields, "time_utc": when, "image": kept.has_image,
                "thumb": f"/api/thumb/{kept.decision_id}" if archived else None,
                "findings_summary": findings_summary(findings if isinstance(findings, dict) else None)}
