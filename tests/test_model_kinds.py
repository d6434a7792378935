"""The session judges every model kind the manifest knows, through the real ONNX Runtime:
anomalib 2.x (with external weights, a fixed batch of 2, PatchCore's [B] score), anomalib 1.x
with its metadata.json, and YOLO detect (raw head, NMS in the graph, YOLOv5) and segment
exports (tests/export_fixtures.py), plus the bundled anomaly model trained on the synthetic
camera. Each manifest is written by hand here, as docs/manifest.md shows it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from export_fixtures import anomalib1, anomalib2, yolo_detect, yolo_nms, yolo_segment, yolov5

from plcbridge.adapters.camera.synthetic import render_surface
from plcbridge.inference.detection import Detections
from plcbridge.inference.errors import InferenceError, ModelError
from plcbridge.inference.manifest import load_manifest
from plcbridge.inference.session import Model


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(model_dir: Path, onnx_path: Path, **fields: Any) -> Path:
    manifest = {"name": "fixture", "version": 3, "file": onnx_path.name, "sha256": sha(onnx_path), "opset": 17,
                "labels": ["pass", "fail"], **fields}
    path = model_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


RGB01 = {"color": "rgb", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "layout": "nchw"}


def anomalib2_manifest(d: Path, onnx_path: Path, batch: int = 1, patchcore: bool = False, rules: dict | None = None,
                       **extra: Any) -> Path:
    outputs = [{"name": "pred_score", "shape": [batch] if patchcore else [batch, 1], "dtype": "float32"},
               {"name": "pred_label", "shape": [batch], "dtype": "bool"},
               {"name": "anomaly_map", "shape": [batch, 1, 64, 64], "dtype": "float32"},
               {"name": "pred_mask", "shape": [batch, 1, 64, 64], "dtype": "bool"}]
    return write(d, onnx_path, kind="anomaly", input={"name": "input", "shape": [batch, 3, 256, 256], "dtype": "float32"},
                 outputs=outputs, preprocessing={"resize": [256, 256], **RGB01, "normalized_in_graph": True},
                 anomaly={"format": "anomalib2", "rules": rules or {}}, **extra)


def frame_with_square(w: int = 256, h: int = 256, at: tuple[int, int] = (64, 64), size: int = 40,
                      colour: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A black BGR frame with one square of `colour` (BGR) at `at` (x, y)."""
    f = np.zeros((h, w, 3), np.uint8)
    f[at[1]:at[1] + size, at[0]:at[0] + size] = colour
    return f


# ------------------------------------------------------------------ anomaly

def test_anomalib2_square_fails_where_it_is_and_black_passes(tmp_path):
    with Model(anomalib2_manifest(tmp_path, anomalib2(tmp_path))) as m:
        good = m.judge(np.zeros((256, 256, 3), np.uint8))
        bad = m.judge(frame_with_square(at=(64, 128), size=40))
    assert good.label == "pass" and good.findings is not None and good.findings.area_px == 0
    assert bad.label == "fail" and bad.score == pytest.approx(1.0)
    assert bad.findings is not None and bad.findings.box is not None
    x, y, w, h = bad.findings.box  # the map is at 1/4 resolution: the square's blocks, rounded outwards
    assert 60 <= x <= 64 and 124 <= y <= 128 and 40 <= w <= 48 and 40 <= h <= 48
    assert 1600 <= bad.findings.area_px <= 48 * 48


def test_anomaly_rules_min_area_and_threshold_override(tmp_path):
    onnx_path = anomalib2(tmp_path)
    small = frame_with_square(size=8)  # 8x8 = 64 px of anomaly
    with Model(anomalib2_manifest(tmp_path, onnx_path, rules={"min_area": 500})) as m:
        assert m.judge(small).label == "pass"  # anomalous, but a blob under min_area passes
        assert m.judge(frame_with_square(size=40)).label == "fail"
    grey = np.full((256, 256, 3), 150, np.uint8)  # 150/255 = 0.59 everywhere: over 0.5, under 0.7
    with Model(anomalib2_manifest(tmp_path, onnx_path, rules={"threshold": 0.7, "pixel_threshold": 0.7})) as m:
        assert m.judge(grey).label == "pass"
    with Model(anomalib2_manifest(tmp_path, onnx_path)) as m:
        assert m.judge(grey).label == "fail"


def test_anomalib2_external_weights_are_pinned_and_handed_over_verified(tmp_path):
    onnx_path = anomalib2(tmp_path, external_data=True)
    data = tmp_path / "model.onnx.data"
    assert data.is_file()
    manifest = anomalib2_manifest(tmp_path, onnx_path, external_data=[{"file": data.name, "sha256": sha(data)}])
    with Model(manifest) as m:
        assert m.judge(frame_with_square()).label == "fail"
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\0")  # the weights changed, the manifest did not
    with pytest.raises(ModelError, match="sha256 mismatch for model.onnx.data"):
        Model(manifest)
    data.unlink()
    with pytest.raises(ModelError, match="model.onnx.data"):
        Model(manifest)


def test_anomalib2_unlisted_external_weights_are_refused(tmp_path):
    """ONNX Runtime is given the graph's bytes only: weights the manifest does not pin are not
    read from disk behind its back."""
    onnx_path = anomalib2(tmp_path, external_data=True)
    with pytest.raises(ModelError):
        Model(anomalib2_manifest(tmp_path, onnx_path))


def test_fixed_batch_of_two_and_patchcore_score(tmp_path):
    (tmp_path / "b2").mkdir()
    with Model(anomalib2_manifest(tmp_path / "b2", anomalib2(tmp_path / "b2", batch=2), batch=2)) as m:
        assert m.judge(frame_with_square()).label == "fail"
        assert m.judge(np.zeros((256, 256, 3), np.uint8)).label == "pass"
    (tmp_path / "pc").mkdir()
    with Model(anomalib2_manifest(tmp_path / "pc", anomalib2(tmp_path / "pc", patchcore=True), patchcore=True)) as m:
        assert m.judge(frame_with_square()).label == "fail"


def test_anomalib2_nan_map_is_refused_at_load(tmp_path):
    with pytest.raises(ModelError, match="smoke run failed.*(NaN|finite)"):
        Model(anomalib2_manifest(tmp_path, anomalib2(tmp_path, fault="nan")))


def test_anomalib1_with_metadata(tmp_path):
    onnx_path = anomalib1(tmp_path, map_size=(64, 64))
    meta = tmp_path / "metadata.json"
    manifest = write(tmp_path, onnx_path, kind="anomaly",
                     input={"name": "input", "shape": [1, 3, 256, 256], "dtype": "float32"},
                     outputs=[{"name": "output", "shape": [1, 1, 64, 64], "dtype": "float32"}],
                     preprocessing={"resize": [256, 256], **RGB01, "normalized_in_graph": True},
                     anomaly={"format": "anomalib1", "metadata": {"file": "metadata.json", "sha256": sha(meta)}})
    with Model(manifest) as m:
        assert m.judge(np.zeros((256, 256, 3), np.uint8)).label == "pass"
        v = m.judge(frame_with_square())
        assert v.label == "fail" and v.score == pytest.approx(1.0)
    meta.write_text(meta.read_text().replace('"task"', '"Task"'))
    with pytest.raises(ModelError, match="sha256 mismatch for metadata.json"):
        Model(manifest)


def test_bundled_anomaly_model_on_the_synthetic_camera():
    """The real anomaly detector (inference/train_anomaly.py) through the daemon's own Model:
    defects fail with their area, good surfaces pass; seeds none of its training used."""
    rng = np.random.default_rng(424242)
    right = 0
    with Model("builtin:anomaly") as m:
        assert m.manifest.kind == "anomaly" and m.manifest.threshold is None
        for i in range(40):
            defect = i % 2 == 1
            v = m.judge(render_surface(rng, 256, 256, defect))
            right += (v.label == "fail") == defect
            assert v.findings is not None and (v.findings.area_px > 0) == (v.label == "fail")
    assert right >= 38


# ------------------------------------------------------------------ detection

YOLO_IN = {"name": "images", "shape": [1, 3, 320, 320], "dtype": "float32"}
YOLO_PP = {"resize": [320, 320], **RGB01, "letterbox": {"pad_value": 114}}
CELLS = (320 // 32) ** 2


def yolo_manifest(d: Path, onnx_path: Path, layout: str = "yolov8", rules: dict | None = None, **extra: Any) -> Path:
    nc = 2
    shapes = {"yolov8": [1, 4 + nc, CELLS], "end2end": [1, 300, 6], "yolov5": [1, CELLS, 5 + nc],
              "yolov8-seg": [1, 4 + nc + 32, CELLS]}
    outputs = [{"name": "output0", "shape": shapes[layout], "dtype": "float32"}]
    if layout == "yolov8-seg":
        outputs.append({"name": "output1", "shape": [1, 32, 80, 80], "dtype": "float32"})
    kind = "segmentation" if layout.endswith("-seg") else "detection"
    return write(d, onnx_path, kind=kind, input=YOLO_IN, outputs=outputs, preprocessing=YOLO_PP,
                 detection={"layout": layout, "class_names": ["scratch", "dent"], "rules": rules or {}}, **extra)


RED, GREEN = (0, 0, 255), (0, 255, 0)  # BGR


def test_yolo_detect_finds_the_red_square_and_maps_it_back_through_the_letterbox(tmp_path):
    # A 640x480 frame into 320x320: scale 0.5, 40 px of padding top and bottom. The square at
    # frame (320, 200) 64x64 lands on input (160, 140) 32x32 (cells are 32 px, from y = 0, so
    # it straddles two cell rows: whichever the model reports maps back to within a cell).
    frame = frame_with_square(640, 480, at=(320, 208), size=64, colour=RED)
    with Model(yolo_manifest(tmp_path, yolo_detect(tmp_path))) as m:
        v = m.judge(frame)
        assert m.judge(np.zeros((480, 640, 3), np.uint8)).label == "pass"
    assert v.label == "fail" and v.findings is not None
    assert v.findings.count >= 1 and v.findings.worst_class == 0
    assert isinstance(v.result, Detections)
    x1, y1, x2, y2 = v.result.boxes[0]
    assert x1 == pytest.approx(320, abs=1) and x2 == pytest.approx(384, abs=1)  # columns align with cells
    assert 176 - 1 <= y1 <= 208 + 1 and 240 - 1 <= y2 <= 272 + 1  # within one cell (64 frame px) of the square


@pytest.mark.parametrize("rules, label", [
    ({}, "fail"),
    ({"classes": {"scratch": {"min_area": 5000}}}, "pass"),  # the 64x64 box (4096 px) is under min_area
    ({"classes": {"scratch": {"ignore": True}}}, "pass"),
    ({"ignore_regions": [[300, 150, 120, 150]]}, "pass"),  # its centre is in an ignore region
    ({"roi": [[0, 0, 200, 480]]}, "pass"),  # outside the only region of interest
    ({"roi": [[300, 150, 120, 150]]}, "fail"),
    ({"max_count": 1}, "pass"),  # one defect is tolerated
])
def test_detection_rules_from_the_manifest(tmp_path, rules, label):
    # Frame y 240 is input y 160 (x 0.5, + 40 px of padding): the square fills exactly one cell.
    frame = frame_with_square(640, 480, at=(320, 240), size=64, colour=RED)
    with Model(yolo_manifest(tmp_path, yolo_detect(tmp_path), rules=rules)) as m:
        assert m.judge(frame).label == label


def test_max_count_counts_defects(tmp_path):
    frame = frame_with_square(640, 480, at=(0, 240), size=64, colour=RED)
    frame[240:304, 320:384] = GREEN
    with Model(yolo_manifest(tmp_path, yolo_detect(tmp_path), rules={"max_count": 1})) as m:
        v = m.judge(frame)
    assert v.label == "fail" and v.findings is not None and v.findings.count == 2


def test_nms_in_the_graph_and_ours_give_the_same_verdict(tmp_path):
    frame = frame_with_square(320, 320, at=(64, 96), size=64, colour=GREEN)
    verdicts = []
    for layout, build in (("yolov8", yolo_detect), ("end2end", yolo_nms), ("yolov5", yolov5)):
        d = tmp_path / layout
        d.mkdir()
        with Model(yolo_manifest(d, build(d), layout)) as m:
            v = m.judge(frame)
        assert isinstance(v.result, Detections)
        verdicts.append((v.label, v.findings.count if v.findings else None, v.findings.worst_class if v.findings else None,
                         np.round(v.result.boxes).tolist()))
    assert verdicts[0] == verdicts[1] == verdicts[2], verdicts
    assert verdicts[0][:3] == ("fail", 4, 1)  # a 64x64 square covers four 32 px cells: four dents


def test_segmentation_measures_the_mask(tmp_path):
    # The fixture's mask is the bright part of the box (grey > 0.5): a white square, which
    # every class sees (one detection per class, both with the square's mask).
    frame = frame_with_square(320, 320, at=(64, 64), size=32)
    with Model(yolo_manifest(tmp_path, yolo_segment(tmp_path), "yolov8-seg")) as m:
        v = m.judge(frame)
        assert isinstance(v.result, Detections) and v.result.masks is not None
    assert v.label == "fail" and v.findings is not None and v.findings.area_px == pytest.approx(32 * 32, rel=0.1)


# ------------------------------------------------------------------ bad manifests

@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(threshold=0.5), "`threshold` is not for a anomaly model"),
    (lambda m: m.pop("anomaly"), "a anomaly model needs `anomaly`"),
    (lambda m: m["outputs"].append({"name": "extra", "shape": [1], "dtype": "float32"}), "outputs \\['extra'\\]"),
    (lambda m: m["preprocessing"].update(letterbox={}), "does not letterbox"),
    (lambda m: m["preprocessing"].update(mean=[0.5, 0.5, 0.5]), "normalized_in_graph"),
])
def test_anomaly_manifest_mistakes_are_named(tmp_path, change, message):
    path = anomalib2_manifest(tmp_path, anomalib2(tmp_path))
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(ModelError, match=message):
        load_manifest(path)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["detection"].update(class_names=["scratch", "dent", "chip"]), "expected 7 at axis 1"),
    (lambda m: m["detection"].update(layout="yolov5"), "layout 'yolov5'"),
    (lambda m: m["detection"]["rules"].update(classes={"crack": {}}), "'crack' is not among"),
    (lambda m: m["detection"].update(conf=0.5), "conf 0.5 must be below"),
    (lambda m: m.update(kind="segmentation"), "is a detection layout"),
])
def test_detection_manifest_mistakes_are_named(tmp_path, change, message):
    path = yolo_manifest(tmp_path, yolo_detect(tmp_path))
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(ModelError, match=message):
        load_manifest(path)


def test_a_wrong_map_size_is_refused_at_load(tmp_path):
    """The manifest says 64x64, the graph makes 128x128 (a model swapped under its manifest)."""
    onnx_path = anomalib2(tmp_path, map_size=(128, 128))
    with pytest.raises(ModelError, match="anomaly_map"):
        Model(anomalib2_manifest(tmp_path, onnx_path))


def test_garbage_output_is_an_inference_error_never_a_pass(tmp_path):
    with Model(anomalib2_manifest(tmp_path, anomalib2(tmp_path))) as m:
        with pytest.raises(InferenceError):
            m._verdict([np.array([[np.nan]], np.float32), np.array([True]), np.full((1, 1, 64, 64), np.nan, np.float32),
                        np.zeros((1, 1, 64, 64), bool)], (256, 256, 3), m._preprocess.prepare(np.zeros((256, 256, 3), np.uint8))[1])
