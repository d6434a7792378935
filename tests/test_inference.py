"""The model layer against real ONNX models (the bundled demo, and small ones built here
with `onnx`): interface checks, accuracy, refusals, timeouts, NaN, CUDA fallback."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import copy_demo, nan_model, slow_model, write_manifest

from plcbridge.adapters.camera.synthetic import render_surface
from plcbridge.inference.errors import BadFrame, InferenceError, InferenceTimeout, ModelError
from plcbridge.inference.manifest import load_manifest
from plcbridge.inference.modelfile import default_opset
from plcbridge.inference.preprocess import Preprocessor
from plcbridge.inference.session import Model, Verdict


@pytest.fixture(scope="module")
def demo() -> Model:
    with Model("builtin:demo") as model:
        yield model


@pytest.fixture(scope="module")
def slow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return slow_model(tmp_path_factory.mktemp("slow"))


# --- the committed demo model -------------------------------------------------------------


def test_demo_file_matches_its_manifest() -> None:
    manifest, manifest_path = load_manifest("builtin:demo")
    onnx_path = manifest_path.parent / manifest.file
    data = onnx_path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest.sha256
    assert len(data) <= 2 * 1024 * 1024
    proto = onnx.load_from_string(data)  # one self-contained file: no external data
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert default_opset(data) == manifest.opset == proto.opset_import[0].version
    (inp,) = proto.graph.input
    assert inp.name == manifest.input.name
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == manifest.input.shape
    assert onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type) == np.dtype(manifest.input.dtype)
    out = next(o for o in proto.graph.output if o.name == manifest.output.name)
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == manifest.output.shape
    assert manifest.labels == ("pass", "fail") and 0 < manifest.threshold < 1


def test_demo_loads_from_a_path_and_a_directory_too(demo: Model) -> None:
    for spec in (demo.manifest_path, demo.manifest_path.parent, str(demo.manifest_path.parent)):
        manifest, path = load_manifest(spec)
        assert manifest == demo.manifest and path == demo.manifest_path


def test_demo_model_attributes(demo: Model) -> None:
    assert demo.name == demo.manifest.name and demo.version == 1
    assert demo.path.name == demo.manifest.file and demo.path.is_file()
    assert demo.providers == ["CPUExecutionProvider"] and not demo.fell_back
    assert demo.requested_providers == ["CPUExecutionProvider"]


def test_preprocess_makes_the_manifest_tensor(demo: Model) -> None:
    m = demo.manifest
    x = Preprocessor(m.preprocessing, m.input)(render_surface(np.random.default_rng(1), 256, 256, False))
    assert list(x.shape) == m.input.shape and x.dtype == np.dtype(m.input.dtype) and x.flags.c_contiguous


def test_demo_accuracy_on_fresh_synthetic_frames(demo: Model) -> None:
    rng = np.random.default_rng(31337)  # neither the training nor the held-out seed
    truth = rng.random(400) < 0.5
    verdicts = [demo.judge(render_surface(rng, 256, 256, bool(d))) for d in truth]
    acc = np.mean([(v.label == "fail") == d for v, d in zip(verdicts, truth)])
    assert acc >= 0.95, acc
    for v in verdicts:
        assert isinstance(v, Verdict) and 0.0 <= v.score <= 1.0
        assert v.label == ("fail" if v.score >= demo.manifest.threshold else "pass")
        assert v.preprocess_ms >= 0 and v.infer_ms > 0


def test_model_accepts_other_frame_sizes(demo: Model) -> None:
    for h, w in ((64, 96), (480, 640)):
        assert demo.judge(render_surface(np.random.default_rng(2), w, h, False)).label in ("pass", "fail")


@pytest.mark.parametrize(
    "frame, says",
    [
        (np.zeros((64, 64, 3), np.float32), "float32"),
        (np.zeros((64, 64, 3), np.uint16), "uint16"),
        (np.zeros((0, 64, 3), np.uint8), "empty"),
        (np.zeros((64, 64, 1), np.uint8), "(64, 64, 1)"),
        (np.zeros((64, 64), np.uint8), "(64, 64)"),
        (np.zeros((64, 64, 4), np.uint8), "(64, 64, 4)"),
        ([[0, 0, 0]], "list"),
        (None, "NoneType"),
    ],
)
def test_bad_frames_are_refused_with_what_was_expected(demo: Model, frame: object, says: str) -> None:
    with pytest.raises(BadFrame) as e:
        demo.judge(frame)  # type: ignore[arg-type]
    assert "HxWx3 uint8" in str(e.value) and says in str(e.value)
    assert demo.judge(np.full((64, 64, 3), 128, np.uint8)).label in ("pass", "fail")  # still fine


# --- refusals at build -----------------------------------------------------------------


def test_wrong_sha256_is_refused_naming_both(tmp_path: Path) -> None:
    path = copy_demo(tmp_path, sha256="0" * 64)
    actual = hashlib.sha256((tmp_path / "defect_cnn.onnx").read_bytes()).hexdigest()
    with pytest.raises(ModelError) as e:
        Model(path)
    assert str(path) in str(e.value) and "0" * 64 in str(e.value) and actual in str(e.value)


def test_input_shape_not_matching_the_model_is_refused(tmp_path: Path) -> None:
    pp = load_manifest("builtin:demo")[0].preprocessing.model_dump() | {"resize": [64, 64]}
    inp = {"name": "image", "shape": [1, 1, 64, 64], "dtype": "float32"}
    with pytest.raises(ModelError, match=r"input mismatch.*\[1, 1, 64, 64\].*\[1, 1, 128, 128\]"):
        Model(copy_demo(tmp_path, input=inp, preprocessing=pp))


def test_input_shape_not_matching_the_preprocessing_is_refused(tmp_path: Path) -> None:
    inp = {"name": "image", "shape": [1, 3, 128, 128], "dtype": "float32"}
    with pytest.raises(ModelError, match=r"input.shape \[1, 3, 128, 128\] does not match preprocessing"):
        load_manifest(copy_demo(tmp_path, input=inp))


@pytest.mark.parametrize(
    "overrides, says",
    [
        ({"output": {"name": "nope", "shape": [1, 1], "dtype": "float32", "kind": "probability"}}, "output 'nope' not in"),
        ({"input": {"name": "pixels", "shape": [1, 1, 128, 128], "dtype": "float32"}}, "input mismatch"),
        ({"opset": 13}, "opset 13"),
        ({"version": 70000}, "version"),
        ({"labels": ["ok", "ng"]}, "labels"),
        ({"colour": "rgb"}, "colour"),
        ({"file": "missing.onnx"}, "missing.onnx"),
        ({"threshold": 1.5}, "threshold"),
    ],
)
def test_bad_manifests_are_refused_naming_the_file(tmp_path: Path, overrides: dict, says: str) -> None:
    path = copy_demo(tmp_path, **overrides)
    with pytest.raises(ModelError) as e:
        Model(path)
    assert str(path) in str(e.value) and says in str(e.value)


def test_unreadable_manifests(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        load_manifest(tmp_path / "nowhere")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_manifest(tmp_path)
    with pytest.raises(ModelError, match="cannot read"):
        load_manifest("builtin:no-such-model")


# --- run-time failures -------------------------------------------------------------------


def test_slow_run_is_terminated_at_the_timeout_and_the_model_recovers(slow_dir: Path) -> None:
    t0 = time.monotonic()
    model = Model(slow_dir, timeout_ms=100)  # the build's smoke run is one full, unbounded run
    full_run_s = time.monotonic() - t0
    assert full_run_s > 0.4, "the slow model is not slow enough to test the timeout on this machine"
    try:
        frame = np.full((32, 32, 3), 100, np.uint8)
        for _ in range(2):  # twice: the watchdog re-arms for every run
            t0 = time.monotonic()
            with pytest.raises(InferenceTimeout, match="timeout 100 ms"):
                model.judge(frame)
            elapsed = time.monotonic() - t0
            assert 0.09 <= elapsed < min(1.0, full_run_s / 2), elapsed
        model.timeout_ms = 30_000  # same session, no timeout: the run completes
        assert model.judge(frame).label in ("pass", "fail")
    finally:
        model.close()


def test_the_watchdog_is_woken_only_for_a_deadline_earlier_than_its_own_and_fires_on_time() -> None:
    """Arming does not wake the watchdog's thread while it already sleeps until no later than
    the new deadline (the last run's: the next run's is later); it re-aims when it wakes.
    Every deadline is still kept: the later one, and an earlier one, which does wake it."""
    import onnxruntime as ort

    from plcbridge.inference.session import _Watchdog

    def asleep_until(wd: _Watchdog, deadline: float) -> None:
        """Wait for the thread to have taken the armed run and gone to sleep until its deadline."""
        end = time.monotonic() + 5
        while wd._wakes_at != deadline and time.monotonic() < end:
            time.sleep(0.002)
        assert wd._wakes_at == deadline

    wd = _Watchdog("ort-watchdog-test")
    woken: list[float] = []
    notify = wd._cond.notify
    wd._cond.notify = lambda n=1: (woken.append(time.monotonic()), notify(n))  # type: ignore[method-assign]
    try:
        t0 = time.monotonic()
        first, second = ort.RunOptions(), ort.RunOptions()
        wd.arm(first, t0 + 0.3)  # nothing armed before: woken
        asleep_until(wd, t0 + 0.3)
        assert not wd.disarm()  # a fast run: done long before its deadline
        wd.arm(second, t0 + 0.6)  # later than t0 + 0.3: not woken for it
        assert len(woken) == 1
        while not second.terminate and time.monotonic() - t0 < 5:
            time.sleep(0.005)
        fired_s = time.monotonic() - t0
        assert 0.6 <= fired_s < 2.0, fired_s
        assert wd.disarm() and not first.terminate

        third, fourth = ort.RunOptions(), ort.RunOptions()
        t1 = time.monotonic()
        wd.arm(third, t1 + 30)  # a long budget (woken: nothing was armed) ...
        asleep_until(wd, t1 + 30)
        assert not wd.disarm()
        wd.arm(fourth, t1 + 0.2)  # ... then a shorter one, before the thread would wake: woken
        assert len(woken) == 3
        while not fourth.terminate and time.monotonic() - t1 < 5:
            time.sleep(0.005)
        assert 0.2 <= time.monotonic() - t1 < 2.0
        assert wd.disarm() and not third.terminate
    finally:
        wd.stop()


def test_concurrent_judge_is_refused_not_queued(slow_dir: Path) -> None:
    with Model(slow_dir, timeout_ms=5_000) as model:
        frame = np.full((32, 32, 3), 100, np.uint8)
        worker = threading.Thread(target=model.judge, args=(frame,))
        worker.start()
        time.sleep(0.05)
        with pytest.raises(RuntimeError, match="one worker thread"):
            model.judge(frame)
        worker.join()


def test_nan_output_is_an_inference_error_never_a_pass(tmp_path: Path) -> None:
    with Model(nan_model(tmp_path, below=0.25)) as model:
        assert model.judge(np.full((32, 32, 3), 200, np.uint8)).label in ("pass", "fail")
        with pytest.raises(InferenceError, match="not finite"):
            model.judge(np.zeros((32, 32, 3), np.uint8))


def test_a_model_that_only_makes_nan_does_not_load(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="smoke run failed.*not finite"):
        Model(nan_model(tmp_path, below=2.0))


def test_close_stops_the_watchdog_and_refuses_further_judging() -> None:
    before = set(threading.enumerate())
    model = Model("builtin:demo")
    (watchdog,) = [t for t in set(threading.enumerate()) - before if t.name.startswith("ort-watchdog")]
    model.close()
    assert not watchdog.is_alive()
    with pytest.raises(InferenceError, match="closed"):
        model.judge(np.zeros((32, 32, 3), np.uint8))


# --- devices -----------------------------------------------------------------------------


def test_cuda_on_a_cpu_only_install_falls_back_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="plcbridge.inference.session"):
        with Model("builtin:demo", device="cuda") as model:
            assert model.requested_providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
            assert model.providers == ["CPUExecutionProvider"]
            assert model.fell_back and "CUDAExecutionProvider" in (model.fallback_reason or "")
            assert model.judge(np.zeros((64, 64, 3), np.uint8)).label in ("pass", "fail")
    assert any("CUDAExecutionProvider" in r.getMessage() for r in caplog.records)


def test_tiny_models_manifest_helper_roundtrip(tmp_path: Path) -> None:
    # write_manifest is what other test files use to point a daemon at a custom model.
    model_dir = nan_model(tmp_path)
    raw = json.loads((model_dir / "manifest.json").read_text())
    write_manifest(model_dir, raw["file"], version=9)
    assert load_manifest(model_dir)[0].version == 9
