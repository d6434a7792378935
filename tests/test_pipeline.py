"""The inference stage with the real bundled model: a frame the model cannot take becomes a
BAD_FRAME fail-safe decision, never an exception out of the stage."""

import time

import numpy as np
from helpers import station_config

from plcbridge.adapters.camera.base import Frame
from plcbridge.contract import FaultCode, ResultCode
from plcbridge.decision import Request
from plcbridge.journal import Journal
from plcbridge.mailbox import FrameMailbox
from plcbridge.metrics import Metrics
from plcbridge.pipeline import InferenceWorker


def _worker(tmp_manifest=None):
    cfg = station_config(1, "triggered", **({"model": {"manifest": tmp_manifest}} if tmp_manifest else {}))
    m = Metrics()
    return InferenceWorker(cfg, FrameMailbox(), Journal(m, "t"), m).start()


def test_bad_frames_become_bad_frame_failsafes():
    w = _worker()
    try:
        assert w.model_ok and w.model_version == 1
        req = Request(5, 77, time.monotonic())
        for image in (np.zeros((0, 0, 3), np.uint8), np.zeros((64, 64), np.float32), np.zeros((64, 64, 4), np.uint16)):
            d = w.judge(Frame(image, 1, time.monotonic(), "pass"), req)
            assert (d.result, d.fault, d.request) == (ResultCode.FAILSAFE, FaultCode.BAD_FRAME, req)
            assert d.reason
        good = w.judge(Frame(np.full((256, 256, 3), 128, np.uint8), 2, time.monotonic()), req)
        assert good.result in (ResultCode.PASS, ResultCode.FAIL) and good.fault is FaultCode.NONE
    finally:
        w.stop()


def test_model_settings_reach_the_model():
    cfg = station_config(1, "triggered", model={"inference_timeout_ms": 123, "intra_op_threads": 2})
    m = Metrics()
    w = InferenceWorker(cfg, FrameMailbox(), Journal(m, "t"), m).start()
    try:
        assert w.model_ok and w.model is not None
        assert w.model.timeout_ms == 123 and w.model.intra_op_threads == 2
    finally:
        w.stop()


def test_unloadable_model_answers_triggers_with_model_not_ready(tmp_path):
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    w = _worker(str(bad))
    assert not w.model_ok and "not valid JSON" in w.load_error
    try:
        req = Request(1, 9, time.monotonic())
        w.submit(req)
        d = w.results.get(timeout=2)
        assert (d.result, d.fault, d.request) == (ResultCode.FAILSAFE, FaultCode.MODEL_NOT_READY, req)
    finally:
        w.stop()


def _triggered_worker(**timing):
    cfg = station_config(1, "triggered", timing=timing)
    m = Metrics()
    w = InferenceWorker(cfg, FrameMailbox(), Journal(m, "t"), m)
    return w.start()


def _frame(seq: int) -> Frame:
    return Frame(np.full((256, 256, 3), 128, np.uint8), seq, time.monotonic(), "pass")


def test_one_frame_judges_one_trigger_and_a_trigger_without_its_own_frame_gets_no_frame():
    w = _triggered_worker(frame_window_ms=80)
    try:
        t = time.monotonic()
        first, second = Request(1, 11, t), Request(2, 12, t + 0.001)  # two triggers, one frame between them
        w.submit(first)
        w.submit(second)
        time.sleep(0.005)
        w.frames.put(_frame(1))  # after both triggers: it belongs to the second, the newer part
        a = w.results.get(timeout=2)
        b = w.results.get(timeout=2)
    finally:
        w.stop()
    assert a.request is first and (a.result, a.fault) == (ResultCode.FAILSAFE, FaultCode.NO_FRAME), a
    assert "frame_window_ms" in a.reason
    assert b.request is second and b.fault is FaultCode.NONE and b.frame_seq == 1


def test_a_frame_taken_by_one_trigger_is_never_judged_for_the_next():
    w = _triggered_worker(frame_window_ms=60)
    try:
        first = Request(1, 11, time.monotonic())
        w.submit(first)
        time.sleep(0.002)
        w.frames.put(_frame(1))
        a = w.results.get(timeout=2)
        second = Request(2, 12, first.t_seen + 0.0005)  # seen before frame 1 was captured too
        w.submit(second)
        b = w.results.get(timeout=2)  # frame 1 is taken, none follows within 60 ms
        third = Request(3, 13, time.monotonic())
        w.submit(third)
        time.sleep(0.01)
        w.frames.put(_frame(2))
        c = w.results.get(timeout=2)
    finally:
        w.stop()
    assert a.frame_seq == 1 and a.fault is FaultCode.NONE
    assert (b.request, b.fault, b.frame_seq) == (second, FaultCode.NO_FRAME, None)
    assert c.request is third and c.frame_seq == 2 and c.fault is FaultCode.NONE
    assert len({d.frame_seq for d in (a, c)}) == 2
