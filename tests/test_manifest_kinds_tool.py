"""`plcbridge manifest` on the exports inspection teams bring (tests/export_fixtures.py):
anomalib 2.x and 1.x, Ultralytics YOLO detect / NMS / end-to-end / segment and YOLOv5. Each
scaffolded manifest loads with `Model` and judges frames the way the fixture's rule says;
the files beside the graph are pinned; `names` is read as a literal, never executed."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from export_fixtures import (  # noqa: E402
    FIXTURE_LICENSE,
    anomalib1,
    anomalib2,
    anomalib2_missing_data,
    yolo_detect,
    yolo_nms,
    yolo_segment,
    yolov5,
)

from plcbridge.inference.anomaly import parse_anomalib1_metadata  # noqa: E402
from plcbridge.inference.errors import ModelError  # noqa: E402
from plcbridge.inference.manifest import Manifest  # noqa: E402
from plcbridge.inference.session import Model  # noqa: E402
from plcbridge.tools import manifest as manifest_tool  # noqa: E402

AGPL = "AGPL-3.0 License (https://ultralytics.com/license)"


def _run(*argv: object) -> int:
    p = argparse.ArgumentParser()
    manifest_tool.add_arguments(p)
    args = p.parse_args([str(a) for a in argv])
    return args.func(args)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _raw(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text(encoding="utf-8"))


def _dark(w: int = 256, h: int = 256) -> np.ndarray:
    return np.full((h, w, 3), 30, np.uint8)


def _square(frame: np.ndarray, x: int, y: int, size: int, bgr: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    out = frame.copy()
    out[y:y + size, x:x + size] = bgr
    return out


# --- anomalib 2.x ---------------------------------------------------------------------------------


def test_anomalib2_scaffolds_an_anomaly_manifest_that_judges(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = anomalib2(tmp_path)
    assert _run(path) == 0
    out = capsys.readouterr().out
    assert "recognised: anomalib 2.x export (kind anomaly, format anomalib2)" in out
    assert "InferenceBatch" in out and "input 'input'" in out
    for decide in ("anomaly.rules.threshold", "anomaly.rules.min_area", "validate-model"):
        assert decide in out, decide

    raw = _raw(tmp_path)
    assert raw["kind"] == "anomaly" and raw["anomaly"]["format"] == "anomalib2" and "metadata" not in raw["anomaly"]
    assert "output" not in raw and "threshold" not in raw and "external_data" not in raw
    assert [o["name"] for o in raw["outputs"]] == ["pred_score", "pred_label", "anomaly_map", "pred_mask"]
    assert raw["outputs"][2] == {"name": "anomaly_map", "shape": [1, 1, 64, 64], "dtype": "float32"}
    assert raw["outputs"][1]["dtype"] == "bool"
    assert raw["preprocessing"] == {"resize": [256, 256], "color": "rgb", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0],
                                    "std": [1.0, 1.0, 1.0], "layout": "nchw", "normalized_in_graph": True}
    assert raw["input"] == {"name": "input", "shape": [1, 3, 256, 256], "dtype": "float32"}

    with Model(tmp_path) as model:
        assert model.judge(_dark(512, 512)).label == "pass"
        # 128 px square at (200, 96) of a 512 px frame: 16x16 map pixels of 8x8 frame pixels each.
        v = model.judge(_square(_dark(512, 512), 200, 96, 128))
        assert v.label == "fail" and v.score == pytest.approx(1.0)
        assert v.findings is not None and v.findings.area_px == pytest.approx(128 * 128)
        assert v.findings.box == (200, 96, 128, 128)


@pytest.mark.parametrize("variant", [
    {"batch": 2}, {"batch": "batch_size"}, {"patchcore": True}, {"outputs": ("pred_score", "anomaly_map")},
    {"outputs": ("pred_score",)}, {"opset": 14}, {"size": (128, 192), "map_size": (32, 48)},
])
def test_anomalib2_variants(tmp_path: Path, variant: dict) -> None:
    path = anomalib2(tmp_path, **variant)
    assert _run(path) == 0
    raw = _raw(tmp_path)
    batch = variant.get("batch") if isinstance(variant.get("batch"), int) else 1
    h, w = variant.get("size", (256, 256))
    assert raw["input"]["shape"] == [batch, 3, h, w]  # a fixed batch of 2 stays
    assert raw["preprocessing"]["resize"] == [w, h]
    assert all(o["shape"][0] == batch for o in raw["outputs"])
    if variant.get("patchcore"):
        assert raw["outputs"][0] == {"name": "pred_score", "shape": [batch], "dtype": "float32"}
    with Model(tmp_path) as model:
        assert model.judge(_dark(w, h)).label == "pass"
        assert model.judge(_square(_dark(w, h), 0, 0, 64)).label == "fail"


def test_fixed_batch_is_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(anomalib2(tmp_path, batch=2)) == 0
    assert "fixed batch of 2" in capsys.readouterr().out


def test_anomalib2_external_data_is_listed_and_pinned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = anomalib2(tmp_path, external_data=True)
    data = tmp_path / "model.onnx.data"
    assert _run(path) == 0
    out = capsys.readouterr().out
    assert f"model.onnx.data: sha256 {_sha(data)} (external weights)" in out
    assert _raw(tmp_path)["external_data"] == [{"file": "model.onnx.data", "sha256": _sha(data)}]
    with Model(tmp_path) as model:
        assert model.judge(_square(_dark(), 0, 0, 64)).label == "fail"

    blob = bytearray(data.read_bytes())
    blob[-1] ^= 0x01  # a different file of the same size: the pin catches it
    data.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="sha256 mismatch for model.onnx.data"):
        Model(tmp_path)


def test_a_missing_external_data_file_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(anomalib2_missing_data(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "'model.onnx.data'" in err and "not beside it" in err and "copy it" in err
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.parametrize("fault, says", [
    ("rank", "must be [B, 1, h, w]"),
    ("channels", "must be [B, 1, h, w]"),
    ("larger", "larger than the model's input"),
    ("mask_size", "pred_mask [1, 1, 32, 32] must have the anomaly map's shape [1, 1, 64, 64]"),
])
def test_a_faulty_anomalib2_export_is_refused_naming_the_output(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 fault: str, says: str) -> None:
    assert _run(anomalib2(tmp_path, fault=fault)) == 2
    err = capsys.readouterr().err
    assert "looks like anomalib 2.x export" in err and says in err, err
    assert not (tmp_path / "manifest.json").exists()


def test_classifier_options_are_refused_for_a_recognised_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = anomalib2(tmp_path)
    assert _run(path, "--kind", "logit") == 2
    assert "--kind" in capsys.readouterr().err
    assert _run(path, "--threshold", "0.6") == 0
    assert _raw(tmp_path)["anomaly"]["rules"]["threshold"] == 0.6


# --- anomalib 1.x ---------------------------------------------------------------------------------


def test_anomalib1_pins_its_metadata_and_judges(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = anomalib1(tmp_path, map_size=(64, 64))
    meta = tmp_path / "metadata.json"
    assert _run(path) == 0
    out = capsys.readouterr().out
    assert "anomalib 1.x export (kind anomaly, format anomalib1)" in out and "metadata.json beside it" in out
    assert f"metadata.json: sha256 {_sha(meta)}" in out
    raw = _raw(tmp_path)
    assert raw["anomaly"]["format"] == "anomalib1"
    assert raw["anomaly"]["metadata"] == {"file": "metadata.json", "sha256": _sha(meta)}
    assert raw["outputs"] == [{"name": "output", "shape": [1, 1, 64, 64], "dtype": "float32"}]
    assert raw["preprocessing"]["normalized_in_graph"] is True
    with Model(tmp_path) as model:
        assert model.judge(_dark()).label == "pass"
        v = model.judge(_square(_dark(), 64, 64, 64))
        assert v.label == "fail" and v.findings is not None and v.findings.area_px == pytest.approx(64 * 64)

    meta.write_text(meta.read_text().replace("    ", "  "))  # the same numbers, another file
    with pytest.raises(ModelError, match="sha256 mismatch for metadata.json"):
        Model(tmp_path)


def test_anomalib1_map_without_metadata_json_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = anomalib1(tmp_path)
    (tmp_path / "metadata.json").unlink()
    assert _run(path) == 2
    err = capsys.readouterr().err
    assert "anomalib 1.x" in err and "no metadata.json beside it" in err


def test_anomalib1_metadata_without_the_map_statistics_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(anomalib1(tmp_path, metadata={"pixel_threshold": None})) == 2
    err = capsys.readouterr().err
    assert "metadata.json" in err and "'pixel_threshold'" in err


# --- Ultralytics YOLO and YOLOv5 --------------------------------------------------------------------


def _cell(row: int, col: int, bgr: tuple[int, int, int], frame: np.ndarray | None = None) -> np.ndarray:
    """A 320x320 black frame (or `frame`) with one 32 px cell painted."""
    frame = np.zeros((320, 320, 3), np.uint8) if frame is None else frame.copy()
    frame[row * 32:(row + 1) * 32, col * 32:(col + 1) * 32] = bgr
    return frame


RED, GREEN, WHITE = (0, 0, 255), (0, 255, 0), (255, 255, 255)


@pytest.mark.parametrize("build, kind, layout", [
    (lambda d: yolo_detect(d), "detection", "yolov8"),
    (lambda d: yolo_nms(d), "detection", "end2end"),
    (lambda d: yolo_nms(d, end2end=True), "detection", "end2end"),
    (lambda d: yolo_nms(d, names=("scratch",)), "detection", "end2end"),  # [1, 300, 6] also fits YOLOv5 nc=1
    (lambda d: yolov5(d), "detection", "yolov5"),
    (lambda d: yolo_segment(d), "segmentation", "yolov8-seg"),
    (lambda d: yolo_detect(d, batch=2), "detection", "yolov8"),
])
def test_yolo_exports_scaffold_their_layout_and_judge(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      build, kind: str, layout: str) -> None:
    path = build(tmp_path)
    assert _run(path) == 0
    out = capsys.readouterr().out
    assert f"recognised: YOLO export (kind {kind}, layout {layout})" in out
    for decide in ("detection.rules", "min_area", "max_count", "roi", "ignore_regions"):
        assert decide in out, decide
    raw = _raw(tmp_path)
    names = raw["detection"]["class_names"]
    assert raw["kind"] == kind and raw["detection"]["layout"] == layout and names in (["scratch", "dent"], ["scratch"])
    assert raw["preprocessing"] == {"resize": [320, 320], "color": "rgb", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0],
                                    "std": [1.0, 1.0, 1.0], "layout": "nchw", "letterbox": {"pad_value": 114}}
    assert raw["input"]["name"] == "images" and raw["input"]["shape"][1:] == [3, 320, 320]
    with Model(tmp_path) as model:
        assert model.judge(np.zeros((320, 320, 3), np.uint8)).label == "pass"
        v = model.judge(_cell(2, 3, WHITE if kind == "segmentation" else RED))
        assert v.label == "fail" and v.findings is not None and v.findings.worst_class == 0
        assert v.findings.box == (96, 64, 32, 32)
        if kind == "segmentation":
            assert v.findings.area_px == pytest.approx(32 * 32)  # the mask's area, not the box's
        if len(names) == 2:
            assert model.judge(_cell(5, 1, GREEN)).findings.worst_class == 1


def test_yolo_fixed_batch_stays_in_the_input_shape(tmp_path: Path) -> None:
    assert _run(yolo_detect(tmp_path, batch=2)) == 0
    raw = _raw(tmp_path)
    assert raw["input"]["shape"] == [2, 3, 320, 320] and raw["outputs"][0]["shape"] == [2, 6, 100]


def test_letterboxed_frame_maps_back_to_frame_pixels(tmp_path: Path) -> None:
    assert _run(yolo_detect(tmp_path)) == 0
    # 640x480 into 320x320: scale 0.5, content 320x240, 40 px grey bands top and bottom.
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[48:112, 192:256] = RED  # -> input cell row 2 (y 64..96), col 3 (x 96..128)
    with Model(tmp_path) as model:
        v = model.judge(frame)
    assert v.label == "fail" and v.findings.box == (192, 48, 64, 64)


def test_licence_string_is_mentioned_never_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(yolo_detect(tmp_path / "fixture")) == 0
    out = capsys.readouterr().out
    assert f"license = {FIXTURE_LICENSE!r}" in out and "AGPL" not in out
    assert _run(yolo_detect(tmp_path / "real", metadata={"license": AGPL})) == 0
    out = capsys.readouterr().out
    assert f"license = {AGPL!r}" in out and "AGPL-3.0 unless" in out


def test_symbolic_input_size_comes_from_imgsz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = yolo_detect(tmp_path)
    proto = onnx.load(str(path))
    for dim, name in zip(proto.graph.input[0].type.tensor_type.shape.dim[2:], ("height", "width")):
        dim.dim_param = name
    proto.graph.output[0].type.tensor_type.shape.dim[2].dim_param = "anchors"
    onnx.save(proto, str(path))
    assert _run(path) == 0
    out = capsys.readouterr().out
    assert "320x320 taken from metadata imgsz" in out
    raw = _raw(tmp_path)
    assert raw["input"]["shape"] == [1, 3, 320, 320] and raw["outputs"][0]["shape"] == [1, 6, 100]
    with Model(tmp_path) as model:
        assert model.judge(_cell(0, 0, RED)).label == "fail"


# --- `names`: a literal, never code -------------------------------------------------------------------


ODD_NAMES = ("it's", 'say "hi"', "naïve, ünïcode: 欠陥", "{0: 'x'}", "back\\slash", "tab\tand\nnewline")


def test_names_with_quotes_and_odd_characters_parse_in_index_order(tmp_path: Path) -> None:
    assert _run(yolo_detect(tmp_path, names=ODD_NAMES)) == 0
    raw = _raw(tmp_path)
    assert raw["detection"]["class_names"] == list(ODD_NAMES)
    with Model(tmp_path) as model:
        assert model.manifest.detection.class_names == list(ODD_NAMES)
        assert model.judge(_cell(1, 1, GREEN)).findings.worst_class == 1


def test_names_is_never_executed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')"
    with pytest.raises(ValueError, match="not a Python literal"):
        manifest_tool.parse_class_names(code)
    assert _run(yolo_detect(tmp_path / "m", metadata={"names": code})) == 2
    assert "not a Python literal" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("names, says", [
    ("scratch, dent", "not a Python literal"),
    ("{0: 'scratch', 2: 'dent'}", "the keys must be the class indices 0..n-1"),
    ("{'0': 'scratch', '1': 'dent'}", "the keys must be the class indices 0..n-1"),
    ("{0: 'scratch', 1: 7}", "non-empty string"),
    ("'scratch'", "is a str, not a dict"),
    ("{}", "the keys must be the class indices"),
])
def test_names_that_are_not_a_dict_literal_are_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             names: str, says: str) -> None:
    """The choice: an error (exit 2) naming the value, with the way out (--class-names); a
    guessed class order would misname every defect."""
    path = yolo_detect(tmp_path, metadata={"names": names})
    assert _run(path) == 2
    err = capsys.readouterr().err
    assert says in err and "metadata_props names" in err and "--class-names" in err, err
    assert not (tmp_path / "manifest.json").exists()
    assert _run(path, "--class-names", "scratch,dent") == 0
    assert _raw(tmp_path)["detection"]["class_names"] == ["scratch", "dent"]
    assert "from --class-names" in capsys.readouterr().out


def test_a_list_of_names_as_yolov5_wrote_it_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(yolo_detect(tmp_path, metadata={"names": "['scratch', 'dent']"})) == 0
    assert "a list, as YOLOv5 before v7 wrote it" in capsys.readouterr().out
    assert _raw(tmp_path)["detection"]["class_names"] == ["scratch", "dent"]


def test_class_count_not_the_outputs_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(yolo_detect(tmp_path, metadata={"names": "{0: 'a', 1: 'b', 2: 'c'}"})) == 2
    err = capsys.readouterr().err
    assert "does not fit 3 class(es)" in err and "[B, 7, N]" in err


def test_other_ultralytics_tasks_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(yolo_detect(tmp_path, metadata={"task": "pose"})) == 2
    assert "'pose'" in capsys.readouterr().err


# --- docs/manifest.md ------------------------------------------------------------------------------


def test_every_example_manifest_in_the_docs_is_valid() -> None:
    """One full example per kind and format in docs/manifest.md, each one the schema accepts."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "manifest.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```json\n(.*?)```", text, re.S) if b.lstrip().startswith("{")]
    manifests = [Manifest.model_validate(json.loads(b)) for b in blocks if '"sha256"' in b]
    seen = {(m.kind, m.anomaly.format if m.anomaly else m.detection.layout if m.detection else None) for m in manifests}
    assert seen >= {("classifier", None), ("anomaly", "anomalib2"), ("anomaly", "anomalib1"), ("detection", "yolov8"),
                    ("detection", "end2end"), ("segmentation", "yolov8-seg")}, seen
    assert any(m.external_data for m in manifests)
    (metadata,) = [json.loads(b) for b in blocks if '"image_threshold"' in b]
    assert parse_anomalib1_metadata(metadata).has_map_stats
