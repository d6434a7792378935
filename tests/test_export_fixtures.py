"""The export fixtures (tests/export_fixtures.py) are what they claim: onnxruntime loads each,
its names, shapes and dtypes are the tool's, its metadata parses as the tool's readers parse
it, and its outputs follow the input as documented, so other tests can steer them."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_fixtures import (
    ANOMALIB2_OUTPUTS,
    FIXTURE_LICENSE,
    NMS_ROWS,
    OPSET,
    SEGMENT_COEFFS,
    YOLO_NAMES,
    anomalib1,
    anomalib2,
    anomalib2_missing_data,
    yolo_detect,
    yolo_nms,
    yolo_segment,
    yolov5,
)
from onnx.external_data_helper import uses_external_data

FLOAT, BOOL = "tensor(float)", "tensor(bool)"


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _signature(sess: ort.InferenceSession) -> tuple[list[tuple], list[tuple]]:
    return ([(i.name, i.shape, i.type) for i in sess.get_inputs()], [(o.name, o.shape, o.type) for o in sess.get_outputs()])


def _run(sess: ort.InferenceSession, x: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))


def _image(shape: tuple[int, ...], fill: float = 0.1) -> np.ndarray:
    return np.full(shape, fill, np.float32)


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


# --------------------------------------------------------------------------------------------
# anomalib 2.x
# --------------------------------------------------------------------------------------------


def test_anomalib2_signature(tmp_path: Path) -> None:
    sess = _session(anomalib2(tmp_path, size=(256, 256), map_size=(64, 64)))
    assert _signature(sess) == (
        [("input", [1, 3, 256, 256], FLOAT)],
        [("pred_score", [1, 1], FLOAT), ("pred_label", [1], BOOL), ("anomaly_map", [1, 1, 64, 64], FLOAT), ("pred_mask", [1, 1, 64, 64], BOOL)],
    )
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    assert (tmp_path / "model.onnx").stat().st_size < 1 << 20


def test_anomalib2_a_bright_square_is_an_anomaly_at_its_place(tmp_path: Path) -> None:
    sess = _session(anomalib2(tmp_path, size=(256, 256), map_size=(64, 64)))
    dark = _run(sess, _image((1, 3, 256, 256)))
    assert dark["pred_score"][0, 0] == pytest.approx(0.1) and not dark["pred_label"][0] and not dark["pred_mask"].any()

    x = _image((1, 3, 256, 256))
    x[0, :, 128:160, 32:64] = 1.0  # rows 128-159, columns 32-63: map cells 32-39, 8-15
    out = _run(sess, x)
    assert out["pred_score"][0, 0] == pytest.approx(1.0) and out["pred_label"][0]
    rows, cols = np.nonzero(out["pred_mask"][0, 0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (32, 39, 8, 15)
    assert np.array_equal(out["pred_mask"], out["anomaly_map"] > 0.5)


def test_anomalib2_patchcore_score_has_no_class_axis(tmp_path: Path) -> None:
    sess = _session(anomalib2(tmp_path, patchcore=True))
    assert sess.get_outputs()[0].shape == [1]
    assert _run(sess, _image((1, 3, 256, 256), 0.7))["pred_score"].shape == (1,)


def test_anomalib2_map_at_the_models_resolution(tmp_path: Path) -> None:
    sess = _session(anomalib2(tmp_path, size=(320, 256), map_size=(40, 32)))
    assert sess.get_inputs()[0].shape == [1, 3, 320, 256]
    assert sess.get_outputs()[2].shape == [1, 1, 40, 32]
    with pytest.raises(ValueError, match="must divide"):
        anomalib2(tmp_path / "bad", size=(256, 256), map_size=(60, 60))


def test_anomalib2_external_data(tmp_path: Path) -> None:
    path = anomalib2(tmp_path, external_data=True)
    data = tmp_path / "model.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"] and data.stat().st_size > 0
    graph_only = onnx.load(str(path), load_external_data=False)
    assert graph_only.graph.initializer and all(uses_external_data(t) for t in graph_only.graph.initializer)
    assert {e.value for t in graph_only.graph.initializer for e in t.external_data if e.key == "location"} == {"model.onnx.data"}
    out = _run(_session(path), _image((1, 3, 256, 256), 0.8))
    assert out["pred_label"][0] and out["pred_score"][0, 0] == pytest.approx(0.8)


def test_anomalib2_missing_data_file_fails_to_load(tmp_path: Path) -> None:
    path = anomalib2_missing_data(tmp_path)
    assert path.exists() and not (tmp_path / "model.onnx.data").exists()
    with pytest.raises(Exception, match="model.onnx.data"):
        _session(path)


@pytest.mark.parametrize("batch", [2, "batch_size"])
def test_anomalib2_batch(tmp_path: Path, batch: int | str) -> None:
    sess = _session(anomalib2(tmp_path, batch=batch))
    assert sess.get_inputs()[0].shape == [batch, 3, 256, 256]
    assert [o.shape[0] for o in sess.get_outputs()] == [batch] * 4
    x = np.stack([_image((3, 256, 256), 0.2), _image((3, 256, 256), 0.9)])
    out = _run(sess, x)
    assert out["pred_score"].shape == (2, 1) and out["pred_label"].tolist() == [False, True]
    assert out["anomaly_map"].shape == out["pred_mask"].shape == (2, 1, 64, 64)


def test_anomalib2_output_selection(tmp_path: Path) -> None:
    sess = _session(anomalib2(tmp_path, outputs=("pred_score", "anomaly_map")))
    assert [o.name for o in sess.get_outputs()] == ["pred_score", "anomaly_map"]
    assert ANOMALIB2_OUTPUTS == ("pred_score", "pred_label", "anomaly_map", "pred_mask")


def test_anomalib2_nan_map(tmp_path: Path) -> None:
    out = _run(_session(anomalib2(tmp_path / "all", fault="nan")), _image((1, 3, 256, 256), 0.9))
    assert np.isnan(out["anomaly_map"]).all() and np.isnan(out["pred_score"]).all()
    assert not out["pred_label"][0]  # the danger a validator must catch: NaN > 0.5 is "good"

    x = _image((1, 3, 256, 256), 0.9)
    x[..., :64, :] = 0.1  # darker than nan_below: NaN there only
    out = _run(_session(anomalib2(tmp_path / "dark", fault="nan", nan_below=0.25)), x)
    assert np.isnan(out["anomaly_map"][0, 0, :16]).all() and np.isfinite(out["anomaly_map"][0, 0, 16:]).all()


@pytest.mark.parametrize(("fault", "map_shape", "mask_shape"), [
    ("rank", [1, 64, 64], [1, 64, 64]),
    ("channels", [1, 2, 64, 64], [1, 1, 64, 64]),
    ("larger", [1, 1, 512, 512], [1, 1, 64, 64]),
    ("mask_size", [1, 1, 64, 64], [1, 1, 32, 32]),
])
def test_anomalib2_faulty_maps(tmp_path: Path, fault: str, map_shape: list[int], mask_shape: list[int]) -> None:
    sess = _session(anomalib2(tmp_path, fault=fault))  # type: ignore[arg-type]
    declared = {o.name: o.shape for o in sess.get_outputs()}
    assert (declared["anomaly_map"], declared["pred_mask"]) == (map_shape, mask_shape)
    out = _run(sess, _image((1, 3, 256, 256), 0.9))
    assert (list(out["anomaly_map"].shape), list(out["pred_mask"].shape)) == (map_shape, mask_shape)
    assert out["pred_score"].shape == (1, 1) and out["pred_label"][0]


# --------------------------------------------------------------------------------------------
# anomalib 1.x
# --------------------------------------------------------------------------------------------


def test_anomalib1_signature_and_metadata(tmp_path: Path) -> None:
    sess = _session(anomalib1(tmp_path, size=(256, 256)))
    assert _signature(sess) == ([("input", [1, 3, 256, 256], FLOAT)], [("output", [1, 1, 256, 256], FLOAT)])
    text = (tmp_path / "metadata.json").read_text(encoding="utf-8")
    meta = json.loads(text)
    assert list(meta) == ["task", "image_threshold", "pixel_threshold", "anomaly_maps.min", "anomaly_maps.max",
                          "pred_scores.min", "pred_scores.max"]
    assert meta == {"task": "segmentation", "image_threshold": 7.0, "pixel_threshold": 7.0, "anomaly_maps.min": 2.0,
                    "anomaly_maps.max": 12.0, "pred_scores.min": 2.0, "pred_scores.max": 12.0}
    assert text.startswith('{\n    "task"')  # json.dump(indent=4), as anomalib writes it


def test_anomalib1_raw_map_normalises_back_to_grey(tmp_path: Path) -> None:
    """anomalib 1.x's inferencer: score = max of the raw map, label = score >= image_threshold,
    normalised ((x - threshold) / (max - min)) + 0.5, clipped to [0, 1]."""
    sess = _session(anomalib1(tmp_path, map_size=(64, 64)))
    meta = json.loads((tmp_path / "metadata.json").read_text())
    x = _image((1, 3, 256, 256), 0.2)
    x[0, :, 200:204, 100:104] = 0.8
    raw = _run(sess, x)["output"]
    assert raw.shape == (1, 1, 64, 64) and raw.min() == pytest.approx(4.0)  # raw, not in [0, 1]
    score = float(raw.max())
    assert score >= meta["image_threshold"]
    normalised = np.clip((score - meta["image_threshold"]) / (meta["pred_scores.max"] - meta["pred_scores.min"]) + 0.5, 0, 1)
    assert normalised == pytest.approx(0.8)
    assert np.unravel_index(int(raw.argmax()), raw.shape[2:]) == (50, 25)


def test_anomalib1_metadata_overrides(tmp_path: Path) -> None:
    anomalib1(tmp_path, metadata={"pixel_threshold": None, "pred_scores.max": 3.5, "task": "classification"})
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert "pixel_threshold" not in meta and meta["pred_scores.max"] == 3.5 and meta["task"] == "classification"


# --------------------------------------------------------------------------------------------
# Ultralytics and YOLOv5
# --------------------------------------------------------------------------------------------


def _painted(imgsz: tuple[int, int], squares: list[tuple[int, int, int, float]], stride: int = 32) -> np.ndarray:
    """A black image with (cell row, cell col, channel, value) squares, each filling one cell."""
    x = np.zeros((1, 3, *imgsz), np.float32)
    for row, col, channel, value in squares:
        x[0, channel, row * stride : (row + 1) * stride, col * stride : (col + 1) * stride] = value
    return x


def test_ultralytics_metadata_parses_like_autobackend(tmp_path: Path) -> None:
    path = yolo_detect(tmp_path, imgsz=(320, 320), names=("scratch", "dent"))
    meta = _metadata(path)
    assert {"names", "imgsz", "stride", "task", "description", "author", "date", "version", "batch", "license"} <= meta.keys()
    assert ast.literal_eval(meta["names"]) == {0: "scratch", 1: "dent"}
    assert meta["names"] == "{0: 'scratch', 1: 'dent'}" and meta["imgsz"] == "[320, 320]"
    assert ast.literal_eval(meta["imgsz"]) == [320, 320]
    assert ast.literal_eval(meta["stride"]) == 32 and ast.literal_eval(meta["batch"]) == 1
    assert meta["task"] == "detect" and ast.literal_eval(meta["end2end"]) is False
    assert ast.literal_eval(meta["args"])["nms"] is False
    assert meta["license"] == FIXTURE_LICENSE and "AGPL" not in " ".join(meta.values())


def test_ultralytics_metadata_overrides(tmp_path: Path) -> None:
    meta = _metadata(yolo_detect(tmp_path, metadata={"names": None, "imgsz": "[640, 640]"}))
    assert "names" not in meta and meta["imgsz"] == "[640, 640]"


def test_yolo_detect_signature_and_steering(tmp_path: Path) -> None:
    imgsz, nc = (320, 256), len(YOLO_NAMES)
    sess = _session(yolo_detect(tmp_path, imgsz=imgsz))
    cells = (320 // 32) * (256 // 32)
    assert _signature(sess) == ([("images", [1, 3, 320, 256], FLOAT)], [("output0", [1, 4 + nc, cells], FLOAT)])
    assert ast.literal_eval(_metadata(tmp_path / "best.onnx")["imgsz"]) == [320, 256]

    out = _run(sess, _painted(imgsz, [(2, 3, 0, 1.0), (7, 1, 1, 0.6)]))["output0"][0]  # red at cell (2, 3), green at (7, 1)
    gw = 256 // 32
    red, green = 2 * gw + 3, 7 * gw + 1
    assert out[:4, red].tolist() == [3.5 * 32, 2.5 * 32, 32, 32]  # cx, cy, w, h
    assert out[4:, red].tolist() == pytest.approx([1.0, 0.0]) and out[4:, green].tolist() == pytest.approx([0.0, 0.6])
    others = np.delete(out[4:], [red, green], axis=1)
    assert not others.any()


def test_yolo_detect_fixed_batch(tmp_path: Path) -> None:
    sess = _session(yolo_detect(tmp_path, batch=2))
    assert sess.get_inputs()[0].shape == [2, 3, 320, 320] and sess.get_outputs()[0].shape == [2, 6, 100]
    x = np.concatenate([_painted((320, 320), [(0, 0, 0, 1.0)]), _painted((320, 320), [(9, 9, 1, 1.0)])])
    out = _run(sess, x)["output0"]
    assert out[0, 4, 0] == 1.0 and out[1, 5, 99] == 1.0 and out[0, 4:, 1:].sum() == 0 and out[1, 4:, :99].sum() == 0
    assert ast.literal_eval(_metadata(tmp_path / "best.onnx")["batch"]) == 2


@pytest.mark.parametrize("end2end", [False, True])
def test_yolo_nms_rows(tmp_path: Path, end2end: bool) -> None:
    path = yolo_nms(tmp_path, imgsz=(320, 320), end2end=end2end)
    sess = _session(path)
    assert _signature(sess) == ([("images", [1, 3, 320, 320], FLOAT)], [("output0", [1, NMS_ROWS, 6], FLOAT)])
    meta = _metadata(path)
    assert ast.literal_eval(meta["end2end"]) is end2end and ast.literal_eval(meta["args"])["nms"] is not end2end

    rows = _run(sess, _painted((320, 320), [(1, 2, 0, 0.9), (5, 4, 1, 0.6), (8, 8, 2, 0.2)]))["output0"][0]
    # best first; blue is class 2 % 3 -> no class of 2 names sees it; 0.2 < conf anyway
    assert rows[0].tolist() == pytest.approx([64, 32, 96, 64, 0.9, 0], abs=1e-4)
    assert rows[1].tolist() == pytest.approx([128, 160, 160, 192, 0.6, 1], abs=1e-4)
    assert not rows[2:].any()
    assert not _run(sess, np.zeros((1, 3, 320, 320), np.float32))["output0"].any()


def test_yolo_nms_many_cells_keeps_300(tmp_path: Path) -> None:
    sess = _session(yolo_nms(tmp_path, imgsz=(640, 640), stride=16))  # 1600 cells > 300 rows
    rows = _run(sess, np.full((1, 3, 640, 640), 0.5, np.float32))["output0"][0]
    assert rows.shape == (NMS_ROWS, 6) and np.allclose(rows[:, 4], 0.5, atol=1e-4)


def test_yolo_segment(tmp_path: Path) -> None:
    path = yolo_segment(tmp_path, imgsz=(320, 320))
    sess = _session(path)
    nc = len(YOLO_NAMES)
    assert _signature(sess) == (
        [("images", [1, 3, 320, 320], FLOAT)],
        [("output0", [1, 4 + nc + SEGMENT_COEFFS, 100], FLOAT), ("output1", [1, SEGMENT_COEFFS, 80, 80], FLOAT)],
    )
    assert _metadata(path)["task"] == "segment"
    x = np.zeros((1, 3, 320, 320), np.float32)
    x[0, :, 64:96, 96:128] = 1.0  # white: a class-0 (and class-1) detection at cell (2, 3)
    out = _run(sess, x)
    det, proto = out["output0"][0], out["output1"][0]
    anchor = 2 * 10 + 3
    assert det[4:4 + nc, anchor].tolist() == pytest.approx([1.0, 1.0])
    coeffs = det[4 + nc:, anchor]
    mask = 1 / (1 + np.exp(-np.tensordot(coeffs, proto, axes=1)))  # [80, 80]
    assert (mask[16:24, 24:32] > 0.9).all() and (np.delete(mask, np.s_[16:24], axis=0) < 0.1).all()


def test_yolov5(tmp_path: Path) -> None:
    path = yolov5(tmp_path, imgsz=(320, 320))
    sess = _session(path)
    nc = len(YOLO_NAMES)
    assert _signature(sess) == ([("images", [1, 3, 320, 320], FLOAT)], [("output0", [1, 100, 5 + nc], FLOAT)])
    meta = _metadata(path)
    assert meta.keys() == {"stride", "names"} and ast.literal_eval(meta["names"]) == dict(enumerate(YOLO_NAMES))
    rows = _run(sess, _painted((320, 320), [(4, 6, 1, 0.8)]))["output0"][0]
    assert rows[4 * 10 + 6].tolist() == pytest.approx([6.5 * 32, 4.5 * 32, 32, 32, 0.8, 0.0, 0.8], abs=1e-4)  # obj, red, green
    assert not np.delete(rows[:, 4:], 46, axis=0).any()


def test_every_fixture_is_small_and_fast(tmp_path: Path) -> None:
    """< 1 MB and a few ms: fixtures must not slow the suite (timing is loose: shared cores)."""
    import time

    paths = [anomalib2(tmp_path / "a2"), anomalib1(tmp_path / "a1"), yolo_detect(tmp_path / "d"), yolo_nms(tmp_path / "n"),
             yolo_segment(tmp_path / "s"), yolov5(tmp_path / "v5")]
    for path in paths:
        assert path.stat().st_size < 1 << 20
        sess = _session(path)
        inp = sess.get_inputs()[0]
        x = np.zeros(inp.shape, np.float32)
        sess.run(None, {inp.name: x})
        t0 = time.perf_counter()
        for _ in range(10):
            sess.run(None, {inp.name: x})
        assert (time.perf_counter() - t0) / 10 < 0.02, path.parent.name
