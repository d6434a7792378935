"""The journal line of a decision with findings, from real models through the inference
worker's own judge() and the real Journal: an anomaly model (`builtin:anomaly`, on synthetic
camera frames) and a YOLO detection model (tests/export_fixtures.py). The line carries the
PLC's optional outputs as the PLC receives them (anomaly_area; defect_count, defect_class
with 65535 for "none") and `findings`; the sinks get the same fields, the decision and its
decoded result (what the pictures draw)."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from findings_models import DENT_BOX, SCRATCH_BOX, SIZE, Judge, anomaly_frames, detection_frame, detection_manifest

from plcbridge.contract import DEFECT_CLASS_NONE, FaultCode, ResultCode
from plcbridge.decision import failsafe
from plcbridge.inference.anomaly import AnomalyResult
from plcbridge.inference.detection import Detections
from plcbridge.journal import Journal
from plcbridge.logs import LogPipeline
from plcbridge.metrics import Metrics
from plcbridge.sinks import DecisionRecord, SinkFanout


class Recording:
    """A sink that keeps what it is given."""

    name = "recording"

    def __init__(self) -> None:
        self.records: list[DecisionRecord] = []
        self.got = threading.Event()

    def write(self, record: DecisionRecord) -> None:
        self.records.append(record)
        self.got.set()

    def close(self) -> None:
        pass


def _journal(carried: tuple[str, ...] | None = None) -> tuple[Journal, SinkFanout, Recording]:
    """A journal for a station writing the optional outputs `carried` (None: all of them)."""
    m = Metrics()
    fanout = SinkFanout(m)
    sink = Recording()
    fanout.add(sink)
    return Journal(m, "line-3", fanout, carried=carried), fanout, sink


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [x for x in map(json.loads, out.getvalue().splitlines()) if x.get("event") == "decision"]


def _journaled(judge: Judge, journal: Journal, fanout: SinkFanout, frames: list[Any]) -> list[dict[str, Any]]:
    """Judge and journal each frame; the journal lines as written (JSON), in order."""
    out = io.StringIO()
    logs = LogPipeline("json", "info", stream=out).start()
    try:
        for frame in frames:
            journal.decision(judge.decide(frame))
    finally:
        logs.stop(2.0)
        fanout.close()
    lines = _lines(out)
    assert len(lines) == len(frames)
    return lines


@pytest.fixture(scope="module")
def anomaly_judge():
    judge = Judge("builtin:anomaly")
    yield judge
    judge.close()


def test_an_anomaly_decision_journals_its_area_as_the_plc_gets_it_and_its_findings(anomaly_judge: Judge) -> None:
    journal, fanout, sink = _journal(("anomaly_area",))  # config/station-anomaly.toml
    clean, defect = anomaly_frames()
    good, bad = _journaled(anomaly_judge, journal, fanout, [clean, defect])

    assert bad["result"] == "FAIL" and good["result"] == "PASS"
    f = bad["findings"]
    assert f["kind"] == "anomaly" and f["count"] == 1 and f["score"] == bad["score"] >= 0.5
    assert f["area_px"] > 0 and bad["anomaly_area"] == f["area_px"]  # the u32 the PLC gets: frame pixels
    assert f["pixel_threshold"] == 0.5 and 0.5 <= f["map_max"] <= 1.0 and 0.0 <= f["map_mean"] < f["map_max"]
    x, y, w, h = f["box"]
    assert 0 <= x < x + w <= 256 and 0 <= y < y + h <= 256 and w * h >= f["area_px"]
    assert "score" in f["note"] and isinstance(f["post_ms"], float)
    assert "defect_count" not in bad and "defect_class" not in bad  # the anomaly kind's output only
    # A clean frame: the same fields, nothing counted.
    g = good["findings"]
    assert g["kind"] == "anomaly" and g["count"] == 0 and g["score"] < 0.5
    assert good["anomaly_area"] == g["area_px"] == 0 and "box" not in g

    # The sinks got the journal line's fields exactly, the decision and its decoded result.
    assert [r.fields["decision_id"] for r in sink.records] == [good["decision_id"], bad["decision_id"]]
    rec = sink.records[1]
    assert json.loads(json.dumps(rec.fields)) == {k: v for k, v in bad.items() if k in rec.fields}
    assert set(bad) - set(rec.fields) == {"ts", "level", "part", "event"}
    d = rec.decision
    assert d.findings == rec.fields["findings"] and d.anomaly_area == bad["anomaly_area"]
    assert isinstance(d.decoded, AnomalyResult) and d.decoded.anomaly_map is not None
    assert d.decoded.frame_size == (256, 256) and rec.image is defect


def test_a_detection_decision_journals_count_and_class_as_the_plc_gets_them_and_each_detection(tmp_path: Path) -> None:
    judge = Judge(detection_manifest(tmp_path / "yolo"))
    journal, fanout, sink = _journal(("defect_count", "defect_class"))
    empty = detection_frame() * 0
    try:
        bad, good = _journaled(judge, journal, fanout, [detection_frame(), empty])
    finally:
        judge.close()

    assert bad["result"] == "FAIL" and bad["score"] == 1.0 and bad["model_version"] == 3
    assert bad["defect_count"] == 1 and bad["defect_class"] == 0  # the scratch: class 0, as the model numbers it
    assert "anomaly_area" not in bad
    f = bad["findings"]
    assert f["kind"] == "detection" and f["count"] == 1
    assert (f["worst_class"], f["worst_class_name"], f["area_px"], f["box"]) == (0, "scratch", 1024, SCRATCH_BOX)
    assert f["detections"] == [
        {"class": 0, "name": "scratch", "score": 1.0, "box": SCRATCH_BOX, "counted": True},
        {"class": 1, "name": "dent", "score": 0.5, "box": DENT_BOX, "counted": False},  # below its min_score 0.9
    ]
    assert "detections_total" not in f and "1 below min_score" in f["note"]

    # Nothing found: a PASS whose outputs say "none", as the PLC reads them.
    assert good["result"] == "PASS" and good["score"] == 0.0
    assert good["defect_count"] == 0 and good["defect_class"] == DEFECT_CLASS_NONE == 65535
    g = good["findings"]
    assert g["count"] == 0 and g["detections"] == [] and "worst_class" not in g and "box" not in g

    rec = sink.records[0]
    assert rec.fields["findings"] == f and rec.decision.defect_count == 1 and rec.decision.defect_class == 0
    assert isinstance(rec.decision.decoded, Detections) and len(rec.decision.decoded) == 2
    assert rec.decision.decoded.letterbox is not None and rec.decision.decoded.letterbox.frame_size == (SIZE, SIZE)


def test_a_failsafe_and_a_classifier_decision_carry_no_findings() -> None:
    journal, fanout, sink = _journal()
    out = io.StringIO()
    logs = LogPipeline("json", "info", stream=out).start()
    try:
        journal.decision(failsafe(FaultCode.BAD_FRAME, 1.0, "test"))
        judge = Judge("builtin:demo", journal)
        try:
            journal.decision(judge.decide(detection_frame()[:256, :256]))
        finally:
            judge.close()
    finally:
        logs.stop(2.0)
        fanout.close()
    lines = _lines(out)
    assert [x["result"] for x in lines][0] == ResultCode.FAILSAFE.name
    for line in lines:
        assert not {"findings", "defect_count", "defect_class", "anomaly_area"} & set(line), line
    assert all(r.decision.findings is None and r.decision.decoded is None for r in sink.records)


def test_a_station_that_writes_no_optional_output_journals_none_and_keeps_the_findings(anomaly_judge: Judge) -> None:
    """The journal says what the PLC got: a station whose map lists no optional output gets no
    area, so its lines name none; what the model found is still in `findings`."""
    journal, fanout, _ = _journal(())
    try:
        (bad,) = _journaled(anomaly_judge, journal, fanout, [anomaly_frames()[1]])
    finally:
        fanout.close()
    assert not {"defect_count", "defect_class", "anomaly_area"} & set(bad), bad
    assert bad["findings"]["kind"] == "anomaly" and bad["findings"]["area_px"] > 0
