"""The inference stage with the real bundled model: a frame the model cannot take becomes a
BAD_FRAME fail-safe decision, never an exception out of the stage."""

import time

import numpy as np

from conftest import station_config

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
    w = InferenceWorker(cfg, FrameMailbox(), Journal(m, "t"), m)
    w._load()
    return w


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
        w.model.close()


def test_unloadable_model_answers_triggers_with_model_not_ready(tmp_path):
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    w = _worker(str(bad))
    assert not w.model_ok and "not valid JSON" in w.load_error
    w._thread.start()
    try:
        req = Request(1, 9, time.monotonic())
        w.submit(req)
        d = w.results.get(timeout=2)
        assert (d.result, d.fault, d.request) == (ResultCode.FAILSAFE, FaultCode.MODEL_NOT_READY, req)
    finally:
        w._stop.set()
        w._thread.join(2)
