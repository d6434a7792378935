"""The bundled anomaly detector (inference/models/anomaly/padim_synthetic.onnx, written by
`plcbridge.inference.train_anomaly`): anomalib 2.x's export signature, accuracy on synthetic
frames of seeds its training and threshold never saw, and a map that points at the defect."""

from __future__ import annotations

import hashlib

import numpy as np
import onnxruntime as ort
import pytest

from plcbridge.adapters.camera.synthetic import DEFECT_KINDS, render_surface
from plcbridge.inference.train_anomaly import (
    FRAME,
    INPUT_NAME,
    INPUT_SHAPE,
    ONNX_NAME,
    OPSET,
    OUT_DIR,
    OUTPUTS,
    balanced_set,
    camera_set,
    export_facts,
    to_input,
)

MODEL = OUT_DIR / ONNX_NAME
# Seeds none of training (20260417), threshold (20260418) or the script's held-out sets used.
BALANCED_SEED = 5150
CAMERA_SEED = 6160
LOCATION_SEED = 7170
ORT_TYPES = {"float32": "tensor(float)", "bool": "tensor(bool)"}


@pytest.fixture(scope="module")
def sess() -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(MODEL), opts, providers=["CPUExecutionProvider"])


def _run(sess: ort.InferenceSession, frame: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {INPUT_NAME: to_input(frame)})))


def test_signature_is_anomalib_2s(sess: ort.InferenceSession) -> None:
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.shape, inp.type) == ("input", [1, 3, 256, 256], "tensor(float)")
    got = [(o.name, o.shape, o.type) for o in sess.get_outputs()]
    assert got == [
        ("pred_score", [1, 1], "tensor(float)"),
        ("pred_label", [1], "tensor(bool)"),
        ("anomaly_map", [1, 1, 64, 64], "tensor(float)"),
        ("pred_mask", [1, 1, 64, 64], "tensor(bool)"),
    ]
    assert got == [(name, list(shape), ORT_TYPES[dtype]) for name, shape, dtype in OUTPUTS]
    assert list(INPUT_SHAPE) == inp.shape


def test_accuracy_on_frames_of_unseen_seeds(sess: ort.InferenceSession) -> None:
    frames, kinds = balanced_set(BALANCED_SEED, 240)  # 120 good, 40 of each defect kind
    labels = [bool(_run(sess, f)["pred_label"][0]) for f in frames]
    right = [label == (kind is not None) for label, kind in zip(labels, kinds)]
    assert np.mean(right) >= 0.95
    for kind in (None, *DEFECT_KINDS):
        assert np.mean([r for r, k in zip(right, kinds) if k == kind]) >= 0.9, kind

    cam_frames, defective = camera_set(CAMERA_SEED, 200)  # the camera's own defect rate and labels
    assert 0.15 < np.mean(defective) < 0.45
    cam_labels = [bool(_run(sess, f)["pred_label"][0]) for f in cam_frames]
    assert np.mean([a == b for a, b in zip(cam_labels, defective)]) >= 0.95


def test_outputs_agree_with_each_other(sess: ort.InferenceSession) -> None:
    """Scores in [0, 1] with 0.5 as the threshold, and one threshold for image and pixels:
    a frame is anomalous exactly when some pixel of its mask is."""
    frames, _ = balanced_set(BALANCED_SEED + 1, 60)
    for frame in frames:
        out = _run(sess, frame)
        score, amap = float(out["pred_score"][0, 0]), out["anomaly_map"]
        assert 0.0 <= score <= 1.0 and np.isfinite(amap).all() and amap.min() >= 0.0 and amap.max() <= 1.0
        assert bool(out["pred_label"][0]) == (score > 0.5) == bool(out["pred_mask"].any())
        assert np.array_equal(out["pred_mask"], amap > 0.5)
    # A flat frame is no brushed surface: finite, and anomalous rather than NaN or a pass.
    out = _run(sess, np.full((FRAME[1], FRAME[0], 3), 128, np.uint8))
    assert np.isfinite(out["anomaly_map"]).all() and out["pred_label"][0]


def test_map_peaks_at_the_defect(sess: ort.InferenceSession) -> None:
    """render_surface does not say where it drew the defect, but the same rng state renders the
    same surface with and without it (the defect is drawn last): their difference is the defect."""
    rng = np.random.default_rng(LOCATION_SEED)
    found = 0
    for i in range(45):
        kind = DEFECT_KINDS[i % len(DEFECT_KINDS)]
        state = rng.bit_generator.state
        clean = render_surface(rng, FRAME[0], FRAME[1], False)
        rng.bit_generator.state = state
        frame = render_surface(rng, FRAME[0], FRAME[1], True, kind)
        ys, xs = np.nonzero(np.abs(frame.astype(int) - clean.astype(int)).max(axis=2) >= 3)
        out = _run(sess, frame)
        if not out["pred_label"][0] or len(ys) == 0:
            continue
        found += 1
        amap = out["anomaly_map"][0, 0]
        py, px = np.unravel_index(int(amap.argmax()), amap.shape)
        scale = FRAME[0] / amap.shape[1]  # frame pixels per map pixel
        cy, cx = (py + 0.5) * scale, (px + 0.5) * scale
        assert np.hypot(ys - cy, xs - cx).min() <= 3 * scale, (i, kind)
        # and the mask covers some of the defect
        mask = out["pred_mask"][0, 0]
        assert mask[(ys / scale).astype(int), (xs / scale).astype(int)].any(), (i, kind)
    assert found >= 40


def test_export_facts_describe_the_committed_file() -> None:
    facts = export_facts()
    assert facts["sha256"] == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert facts["size_bytes"] == MODEL.stat().st_size < 1 << 20
    assert facts["opset"] == OPSET == 17
    assert facts["input"] == {"name": "input", "shape": [1, 3, 256, 256], "dtype": "float32"}
    assert facts["outputs"] == [{"name": n, "shape": list(s), "dtype": d} for n, s, d in OUTPUTS]
    assert facts["threshold"] == 0.5
    training = facts["training"]
    assert float(training["accuracy_camera"]) >= 0.95 and float(training["accuracy_balanced"]) >= 0.95
    assert float(training["image_min"]) < float(training["threshold_raw"]) < float(training["image_max"])
