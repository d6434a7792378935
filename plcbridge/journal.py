"""The decision journal: every decision logged with its identity, and counted.

Journaling does not depend on the PLC: a decision is logged when it is made (free-run) or
settled (triggered), whether or not the PLC is reachable. The counts feed the metrics and
the demo's summary, including agreement with the synthetic camera's ground truth.

One shape for a fail-safe in both modes: event "decision", result "FAILSAFE", with `fault`
and `reason` (WARNING level), so `jq 'select(.event=="decision" and .result=="FAILSAFE")'`
finds them all.

* triggered: the fail-safe answer to a trigger is a decision like any other (trigger_seq,
  part_id, t_trigger_mono, ...);
* free-run: a fail-safe *episode* (the outputs switched to the fail-safe result because the
  newest decision is missing or too old) is one line per episode, not one per write tick,
  with `episode: true`, and `frame_seq` of the decision it stands in for when there is one.
  A fail-safe decision made by the inference stage (BAD_FRAME, INFERENCE_*) is a plain
  decision line, without `episode`.

Counts and metrics are as before: one FAILSAFE result per fail-safe decision or episode.

Identity: every line has a `decision_id` that never repeats on this station, across PLC
restarts, daemon restarts and reboots (a ULID: wall-clock milliseconds, then 80 random bits,
so sorting the ids as text sorts them by time), and a triggered answer has `plc_session`,
the link session whose read saw the trigger: `part_id` 2 of two PLC runs are two ids and
two sessions. The same id names the decision in the archive and on the station page: the
journal hands every record to the sinks (plcbridge/sinks.py), never waiting for them.

Times: `ts` (every line) is wall clock. The decision's CLOCK_MONOTONIC stamps (seconds since
boot, comparable only with each other and with the PLC simulator's trace) are named for it:
`t_capture_mono` (frame captured), `t_trigger_mono` (trigger seen). `latency_ms` is
decided minus captured.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Collection
from datetime import datetime, timezone
from typing import Any

from plcbridge.contract import (
    OPTIONAL_OUTPUT_SIGNALS,
    FaultCode,
    ResultCode,
    area_register,
    defect_class_register,
    defect_count_register,
)
from plcbridge.decision import Decision, failsafe
from plcbridge.logs import get_logger, log_event
from plcbridge.metrics import Metrics
from plcbridge.sinks import DecisionRecord, SinkFanout

log = get_logger("journal")

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_decision_id() -> str:
    """A ULID (26 characters, Crockford base32): 48 bits of wall-clock milliseconds, then 80
    random bits. Unique without any state on disk (two ids in one millisecond collide with
    probability 2^-80), and ordered by time as text."""
    n = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(n >> shift) & 31] for shift in range(125, -1, -5))


def decision_time(decision_id: str) -> float:
    """The wall-clock time (seconds) a decision id was made at, read back from its first 48
    bits; ValueError for text that is no decision id (a URL path segment, say)."""
    if len(decision_id) != 26:
        raise ValueError(f"not a decision id: {decision_id[:40]!r}")
    n = 0
    for c in decision_id:
        i = _CROCKFORD.find(c)
        if i < 0:
            raise ValueError(f"not a decision id: {decision_id!r}")
        n = n << 5 | i
    return (n >> 80) / 1000


def utc_text(t: float) -> str:
    """Wall-clock seconds as the station says times to other machines: ISO 8601, UTC,
    milliseconds, `Z` (the page's API, the MQTT messages)."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def by_result(counts: dict[str, int]) -> dict[str, int]:
    """Counts for every result a decision can have (ResultCode less NONE), 0 where none."""
    return {r.name: int(counts.get(r.name, 0)) for r in ResultCode if r is not ResultCode.NONE}


def yield_of(counts: dict[str, int]) -> float | None:
    """PASS / (PASS + FAIL); None before any. FAILSAFE is no verdict and is left out (shown
    beside it as a count). One definition for the page, `plcbridge status` and MQTT stats."""
    p, f = counts.get(ResultCode.PASS.name, 0), counts.get(ResultCode.FAIL.name, 0)
    return round(p / (p + f), 4) if p + f else None


def decision_fields(d: Decision, decision_id: str, station: str, carried: Collection[str] = (),
                    recipes: bool = False) -> dict[str, Any]:
    """A decision's journal line: its identity, verdict, times and findings; the PLC's optional
    outputs `carried` names, as the PLC got them; `recipe` on a station with recipes. The one
    shape every record of a decision has (the journal, the sinks, the shadow's archive entries)."""
    req = d.request
    fields: dict[str, Any] = {
        "decision_id": decision_id,
        "station": station,
        "result": d.result.name,
        "score": round(d.score, 4),
        "fault": d.fault.name,
        "model_version": d.model_version,
    }
    if req is not None:
        fields.update(trigger_seq=req.trigger_seq, part_id=req.part_id, plc_session=req.plc_session,
                      t_trigger_mono=round(req.t_seen, 6))
    if recipes:
        # The recipe asked with the trigger (free-run: the one that judged); a verdict was
        # judged with it, and the PLC's result_recipe says so (a fail-safe's says none).
        fields["recipe"] = req.recipe if req is not None else d.recipe
    if d.frame_seq is not None:
        fields["frame_seq"] = d.frame_seq
    if d.t_capture is not None:
        fields["t_capture_mono"] = round(d.t_capture, 6)
        fields["latency_ms"] = round((d.t_decided - d.t_capture) * 1000, 2)
    if d.frame_meta:
        # The camera's own identity of the frame (genicam: camera_frame_id, camera_ts_ns,
        # camera_host_ts_ns, pixel_format), to find it in the camera's or a recorder's log.
        fields.update({k: v for k, v in d.frame_meta.items() if k.startswith("camera_") and v is not None})
    if d.infer_ms is not None:
        fields["infer_ms"] = round(d.infer_ms, 2)
    if d.label is not None:
        fields["truth"] = d.label
    if d.reason:
        fields["reason"] = d.reason
    if d.collapsed:
        fields["collapsed"] = d.collapsed  # older trigger values this answer also stands for
    if d.findings is not None:
        # What the PLC's optional outputs carry for this decision (written where the station
        # maps them), then what the model found and the rules counted.
        plc = {"defect_count": defect_count_register(d.defect_count),
               "defect_class": defect_class_register(d.defect_class, d.defect_count),
               "anomaly_area": area_register(d.anomaly_area)}
        fields.update({k: v for k, v in plc.items() if k in carried})
        fields["findings"] = d.findings
    return fields


class Journal:
    def __init__(self, metrics: Metrics, station: str, sinks: SinkFanout | None = None,
                 carried: Collection[str] | None = None, recipes: bool = False) -> None:
        self.metrics = metrics
        self.station = station
        # The optional outputs the station writes (config: PlcCommon.carried_optional): a
        # decision's line names those, as the PLC got them, and no others (None: all).
        self.carried = frozenset(s.name for s in OPTIONAL_OUTPUT_SIGNALS if carried is None or s.name in carried)
        self.sinks = sinks if sinks is not None else SinkFanout(metrics)
        # The station reads recipe_id: each line names the recipe (docs/plc-interface.md "Recipes").
        self.recipes = recipes
        self._lock = threading.Lock()
        self.results: collections.Counter[str] = collections.Counter()
        self.failsafes: collections.Counter[str] = collections.Counter()
        self.labelled = 0
        self.agreed = 0

    def decision(self, d: Decision) -> str:
        """Journal one decision (called once per frame in free-run, once per trigger in
        triggered) and hand it to the sinks; returns its decision id."""
        decision_id = new_decision_id()
        fields = decision_fields(d, decision_id, self.station, self.carried, self.recipes)
        level = logging.WARNING if d.is_failsafe else logging.INFO
        log_event(log, "decision", level, **fields)
        self._count(d.result, d.fault if d.is_failsafe else None)
        if d.label is not None and d.result in (ResultCode.PASS, ResultCode.FAIL):
            with self._lock:
                self.labelled += 1
                self.agreed += (d.label == "fail") == (d.result is ResultCode.FAIL)
        self.sinks.offer(DecisionRecord(decision_id, fields, d, d.image))
        return decision_id

    def failsafe_episode(self, fault: FaultCode, reason: str, **fields: Any) -> str:
        """Free-run: the outputs switched to fail-safe (counted once per episode, not per tick).

        Logged in the shape of a fail-safe decision (see the module docstring), with `episode`;
        returns its decision id.
        """
        decision_id = new_decision_id()
        line = {"decision_id": decision_id, "station": self.station, "result": ResultCode.FAILSAFE.name,
                "fault": fault.name, "reason": reason, "episode": True,
                **{k: v for k, v in fields.items() if v is not None}}
        log_event(log, "decision", logging.WARNING, **line)
        self._count(ResultCode.FAILSAFE, fault)
        d = failsafe(fault, time.monotonic(), reason, model_version=line.get("model_version", 0),
                     frame_seq=line.get("frame_seq"))
        self.sinks.offer(DecisionRecord(decision_id, line, d))
        return decision_id

    def _count(self, result: ResultCode, fault: FaultCode | None) -> None:
        with self._lock:
            self.results[result.name] += 1
            if fault is not None:
                self.failsafes[fault.name] += 1
        self.metrics.decisions.labels(result.name).inc()
        if fault is not None:
            self.metrics.failsafes.labels(fault.name).inc()

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "results": dict(self.results),
                "failsafes_by_fault": dict(self.failsafes),
                "accuracy": {
                    "labelled": self.labelled,
                    "agreed": self.agreed,
                    "agreement": round(self.agreed / self.labelled, 4) if self.labelled else None,
                },
            }
