"""The shadow model (plcbridge/shadow.py): a candidate judged on the live model's frames in a
process of its own at idle priority. Real ONNX models, a real child process and real threads:
an identical candidate agrees on every frame, a candidate that fails everything disagrees and
its frames land in a real archive, a slow one drops frames while offer() never waits, one that
does not load is a clear ModelError, one whose process dies stops the shadow and nothing else."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import read_metric, wait_for
from onnx_models import copy_demo, slow_model

from plcbridge.adapters.camera.synthetic import render_surface
from plcbridge.archive import ArchiveSink
from plcbridge.archive.store import scan
from plcbridge.config import ArchiveSettings, ModelSettings, ShadowSettings
from plcbridge.contract import FaultCode, ResultCode
from plcbridge.decision import Decision, Request, failsafe
from plcbridge.inference.errors import ModelError
from plcbridge.inference.session import Model
from plcbridge.metrics import Metrics
from plcbridge.shadow import ShadowRunner

SIZE = 128


@pytest.fixture(scope="module")
def live() -> Model:
    with Model("builtin:demo") as model:
        yield model


def _decisions(live: Model, n: int, seed: int = 5, defects: bool | None = None) -> list[Decision]:
    """`n` live decisions on fresh synthetic frames (every other one with a defect unless `defects` says)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = render_surface(rng, SIZE, SIZE, bool(i % 2) if defects is None else defects)
        v = live.judge(image)
        req = Request(100 + i, 9000 + i, time.monotonic(), plc_session=2)
        out.append(Decision(ResultCode.FAIL if v.label == "fail" else ResultCode.PASS, FaultCode.NONE, v.score,
                            time.monotonic(), live.version, i, time.monotonic(), request=req, image=image,
                            infer_ms=v.infer_ms))
    return out


def _shadow(manifest: Path | str, metrics: Metrics, *, timeout_ms: int = 5000, archive=None, **settings) -> ShadowRunner:
    return ShadowRunner(ShadowSettings(manifest=str(manifest), **settings), ModelSettings(inference_timeout_ms=timeout_ms),
                        metrics, archive, station="line3")


def _events(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def test_an_identical_candidate_agrees_on_every_frame_on_idle_cpu(live: Model, tmp_path: Path, caplog):
    m = Metrics()
    decisions = _decisions(live, 30)
    shadow = _shadow(copy_demo(tmp_path / "candidate"), m, queue=64, summary_every_s=0.2)
    with caplog.at_level(logging.INFO, logger="plcbridge.shadow"):
        shadow.start()
        try:
            c = shadow.view()["candidate"]
            assert c["name"] == live.name and c["version"] == live.version and c["kind"] == "classifier"
            # The candidate runs in a process of its own, every thread of it at the lowest priority
            # (SCHED_IDLE where the kernel allows it, as here; nice 19 otherwise).
            assert c["pid"] != os.getpid() and c["scheduling"] in ("SCHED_IDLE", "nice 19")
            if c["scheduling"] == "SCHED_IDLE":
                tasks = [int(t) for t in os.listdir(f"/proc/{c['pid']}/task")]
                assert tasks and all(os.sched_getscheduler(t) == os.SCHED_IDLE for t in tasks)
            assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the daemon's own threads are untouched
            assert read_metric(m, "plcbridge_shadow_running") == 1

            # Fail-safes and decisions without a frame are not offered.
            t = time.monotonic()
            assert not shadow.offer(failsafe(FaultCode.BAD_FRAME, t, "x", image=decisions[0].image))
            assert not shadow.offer(Decision(ResultCode.PASS, FaultCode.NONE, 0.1, t, 1, 99))
            assert all(shadow.offer(d) for d in decisions)
            wait_for(lambda: shadow.view()["judged"] == 30, 60, "30 frames judged")
            wait_for(lambda: _events(caplog, "shadow_summary"), 10, "a periodic shadow_summary")
        finally:
            shadow.stop()
    v = shadow.view()
    live_fails = sum(d.result is ResultCode.FAIL for d in decisions)
    assert 0 < live_fails < 30
    assert v["state"] == "stopped" and v["offered"] == 30 and v["skipped"] == 2 and v["judged"] == 30
    assert v["dropped"] == {"queue_full": 0, "not_running": 0}
    assert v["confusion"]["PASS"] == {"PASS": 30 - live_fails, "FAIL": 0, "TIMEOUT": 0, "ERROR": 0, "BAD_FRAME": 0}
    assert v["confusion"]["FAIL"] == {"PASS": 0, "FAIL": live_fails, "TIMEOUT": 0, "ERROR": 0, "BAD_FRAME": 0}
    assert v["agreement"] == 1.0 and v["compared"] == v["agreed"] == 30 and v["archived"] == 0
    assert v["score_diff"]["n"] == 30 and v["score_diff"]["max_abs"] < 1e-4 and abs(v["score_diff"]["mean"]) < 1e-4
    assert v["latency_ms"]["n"] == 30 and 0 < v["latency_ms"]["p50"] <= v["latency_ms"]["p99"] <= v["latency_ms"]["max"]
    assert v["cpu_ms"]["n"] == 30 and v["cpu_ms"]["p50"] > 0
    assert v["live_model_version"] == live.version
    # The metrics say the same.
    assert read_metric(m, "plcbridge_shadow_decisions_total", live="PASS", shadow="PASS") == 30 - live_fails
    assert read_metric(m, "plcbridge_shadow_decisions_total", live="FAIL", shadow="FAIL") == live_fails
    assert read_metric(m, "plcbridge_shadow_decisions_total", live="PASS", shadow="FAIL") == 0
    assert read_metric(m, "plcbridge_shadow_offered_total") == 30
    assert read_metric(m, "plcbridge_shadow_seconds_count") == 30
    assert read_metric(m, "plcbridge_shadow_score_diff_count") == 30
    assert read_metric(m, "plcbridge_shadow_running") == 0
    # The summary: every summary_every_s while running, and a final one at stop with the whole matrix.
    summaries = _events(caplog, "shadow_summary")
    assert summaries[0].final is False and summaries[-1].final is True
    assert summaries[-1].confusion == v["confusion"] and summaries[-1].agreement == 1.0
    assert not _events(caplog, "shadow_disagreement")
    started = _events(caplog, "shadow_started")[0]
    assert started.scheduling == c["scheduling"] and started.version == live.version


def test_a_disagreeing_candidate_is_counted_logged_and_its_frames_archived(live: Model, tmp_path: Path, caplog):
    m = Metrics()
    root = tmp_path / "archive"
    root.mkdir()
    archive = ArchiveSink(ArchiveSettings(enabled=True, path=root, pass_every=0), m)
    # threshold 0: the candidate fails every frame; the live model passes those without a defect.
    decisions = _decisions(live, 6, seed=8, defects=False) + _decisions(live, 4, seed=9, defects=True)
    live_passes = [d for d in decisions if d.result is ResultCode.PASS]
    assert len(live_passes) >= 5
    shadow = _shadow(copy_demo(tmp_path / "fails-all", threshold=0.0, version=8), m, queue=16,
                     archive=archive.keep_shadow)
    with caplog.at_level(logging.INFO, logger="plcbridge.shadow"):
        shadow.start()
        try:
            for d in decisions:
                assert shadow.offer(d)
            wait_for(lambda: shadow.view()["judged"] == len(decisions), 60, "every frame judged")
        finally:
            shadow.stop()
    archive.close()  # lets the archive's shadow feed write what it holds

    v = shadow.view()
    n = len(live_passes)
    assert v["confusion"]["PASS"]["FAIL"] == n and v["confusion"]["FAIL"]["FAIL"] == len(decisions) - n
    assert v["disagreements"] == {"live_pass_shadow_fail": n, "live_fail_shadow_pass": 0}
    assert v["agreement"] == round((len(decisions) - n) / len(decisions), 4) and v["archived"] == n
    # The same network with another threshold: the same scores, another verdict.
    assert v["score_diff"]["n"] == len(decisions) and v["score_diff"]["max_abs"] < 1e-4
    assert read_metric(m, "plcbridge_shadow_decisions_total", live="PASS", shadow="FAIL") == n

    # Each disagreement: one entry tagged SHADOW, the frame exactly as judged, the live record and the shadow's verdict.
    entries, _ = scan(root)
    assert len(entries) == n and all(e.result == "SHADOW" for e in entries)
    by_seq = {d.frame_seq: d for d in live_passes}
    for e in entries:
        record = json.loads(e.sidecar.read_text())
        d = by_seq[record["frame_seq"]]
        assert record["kept_for"] == "shadow_disagreement" and record["result"] == "PASS"
        assert record["decision_id"] == e.decision_id and record["station"] == "line3"
        assert record["part_id"] == d.request.part_id and record["trigger_seq"] == d.request.trigger_seq
        assert record["shadow"]["result"] == "FAIL" and record["shadow"]["model_version"] == 8
        assert record["shadow"]["score"] == pytest.approx(d.score, abs=1e-4)  # the same model: only the threshold differs
        assert np.array_equal(cv2.imread(str(e.image), cv2.IMREAD_UNCHANGED), d.image)
    assert read_metric(m, "plcbridge_archive_saved_total", result="SHADOW") == n
    assert read_metric(m, "plcbridge_sink_dropped_total", sink="archive_shadow", reason="queue_full") == 0

    # The log: one shadow_disagreement per frame here (rate-limiting is the log pipeline's), naming the frame.
    lines = _events(caplog, "shadow_disagreement")
    assert len(lines) == n and {r.frame_seq for r in lines} == set(by_seq)
    first = lines[0]
    assert first.live == "PASS" and first.shadow == "FAIL" and first.shadow_model_version == 8
    assert first.part_id == by_seq[first.frame_seq].request.part_id and first.rate_key == "shadow_disagreement"
    assert first.archive_id in {e.decision_id for e in entries}


def test_a_busy_candidate_drops_frames_and_offer_never_waits(live: Model, tmp_path: Path):
    m = Metrics()
    shadow = _shadow(slow_model(tmp_path / "slow", matmuls=80), m, timeout_ms=30_000, queue=1)
    decision = _decisions(live, 1)[0]
    shadow.start()
    try:
        t0 = time.perf_counter()
        accepted = sum(shadow.offer(decision) for _ in range(200))
        elapsed = time.perf_counter() - t0
        v = shadow.view()
        # Each accepted frame is judged, being judged (one) or waiting (queue = 1): never more.
        assert accepted <= v["judged"] + 2
        assert v["offered"] == 200 and v["dropped"]["queue_full"] == 200 - accepted >= 150
        assert read_metric(m, "plcbridge_shadow_dropped_total", reason="queue_full") == 200 - accepted
        assert elapsed < 1.0, f"200 offers took {elapsed:.3f} s"
        wait_for(lambda: shadow.view()["judged"] >= 1, 60, "the slow candidate's first verdict")
    finally:
        t = time.monotonic()
        shadow.stop()
        assert time.monotonic() - t < 10
    v = shadow.view()
    assert v["offered"] == 200 and v["judged"] + sum(v["dropped"].values()) >= 199  # at most one abandoned at stop
    assert v["latency_ms"]["n"] >= 1 and v["latency_ms"]["p50"] > 10


def test_a_candidate_that_does_not_load_is_a_clear_model_error(tmp_path: Path, caplog):
    m = Metrics()
    bad = copy_demo(tmp_path / "bad", sha256="0" * 64)
    shadow = _shadow(bad, m)
    with caplog.at_level(logging.INFO, logger="plcbridge.shadow"), pytest.raises(ModelError) as err:
        shadow.start()
    text = str(err.value)
    assert text.startswith("[model.shadow] manifest ") and str(bad) in text and "sha256" in text
    assert shadow.view()["state"] == "failed" and "sha256" in shadow.view()["reason"]
    assert _events(caplog, "shadow_failed")
    assert read_metric(m, "plcbridge_shadow_running") == 0
    assert not shadow.offer(Decision(ResultCode.PASS, FaultCode.NONE, 0.1, time.monotonic(), 1, 0,
                                     image=np.zeros((8, 8, 3), np.uint8)))
    assert shadow.view()["dropped"]["not_running"] == 1
    shadow.stop()  # harmless after a failed start

    with pytest.raises(ModelError, match="no-such-folder"):
        _shadow(tmp_path / "no-such-folder" / "manifest.json", Metrics()).start()


def test_a_shadow_process_that_dies_stops_the_shadow_and_nothing_else(live: Model, tmp_path: Path, caplog):
    m = Metrics()
    decisions = _decisions(live, 3)
    shadow = _shadow("builtin:demo", m, queue=4)
    with caplog.at_level(logging.INFO, logger="plcbridge.shadow"):
        shadow.start()
        try:
            assert shadow.offer(decisions[0])
            wait_for(lambda: shadow.view()["judged"] == 1, 60, "one verdict")
            os.kill(shadow.view()["candidate"]["pid"], signal.SIGKILL)
            assert shadow.offer(decisions[1])  # found out when it is handed this one
            wait_for(lambda: shadow.view()["state"] == "failed", 30, "the shadow to notice")
            assert not shadow.offer(decisions[2])
        finally:
            shadow.stop()
    v = shadow.view()
    assert v["state"] == "failed" and "ended" in v["reason"] and v["judged"] == 1
    assert v["dropped"]["not_running"] >= 1
    assert read_metric(m, "plcbridge_shadow_running") == 0
    assert _events(caplog, "shadow_failed")


def test_in_the_daemon_a_frame_waits_for_its_live_answer_to_reach_the_plc(live: Model, tmp_path: Path):
    """after_delivery: the candidate starts on a frame only once delivered() says the block with
    that live decision reached the PLC (its CPU time falls between parts, not in the exchange
    that brings the answer); a decision never delivered is judged after delivery_wait_s."""
    m = Metrics()
    first, second = _decisions(live, 2)
    shadow = ShadowRunner(ShadowSettings(manifest=str(copy_demo(tmp_path / "candidate")), queue=4),
                          ModelSettings(inference_timeout_ms=5000), m, after_delivery=True, delivery_wait_s=60)
    shadow.start()
    try:
        assert shadow.offer(first)
        time.sleep(0.5)
        assert shadow.view()["judged"] == 0, "no frame judged before its answer is on the PLC"
        shadow.delivered(first)
        wait_for(lambda: shadow.view()["judged"] == 1, 30, "the first frame judged once delivered")
    finally:
        shadow.stop()
    quick = ShadowRunner(ShadowSettings(manifest=str(copy_demo(tmp_path / "candidate2"))),
                         ModelSettings(inference_timeout_ms=5000), Metrics(), after_delivery=True, delivery_wait_s=0.2)
    quick.start()
    try:
        assert quick.offer(second)  # never delivered (a PLC that is down): judged all the same
        wait_for(lambda: quick.view()["judged"] == 1, 30, "judged after delivery_wait_s")
    finally:
        quick.stop()
