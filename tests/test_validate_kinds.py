"""`validate_model` / `plcbridge validate-model` on anomaly and detection models (the export
signatures of tests/export_fixtures.py, manifests scaffolded by `plcbridge manifest`): every
kind passes with its outputs decoded in the smoke run, and the ways such a model is broken
(a NaN map, a map of the wrong size, an external weights file or metadata.json missing or
not pinned) each fail at their check with a message that names the file or output and what
was expected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import onnx
import pytest
from export_fixtures import anomalib1, anomalib2, yolo_detect, yolo_nms, yolo_segment, yolov5

from plcbridge.cli import main
from plcbridge.inference.validate import CHECKS, ValidationReport, validate_model
from plcbridge.tools.manifest import scaffold

RUNS = 5


def assert_fails_at(report: ValidationReport, check: str, *says: str) -> None:
    """`check` is the first failed check, its reason says each of `says`, and the report
    still lists every check in order, the earlier ones passed (as tests/test_validate_model.py)."""
    assert [c.name for c in report.checks] == list(CHECKS)
    assert not report.ok and report.failed_check == check, report.to_json()
    assert report.failure is not None and report.failure.startswith(f"{check}: ")
    for s in says:
        assert s in report.failure, (s, report.failure)
    assert all(report.check(name).ok for name in CHECKS[: CHECKS.index(check)]), report.to_json()
    json.loads(report.to_json())


def _scaffold(path: Path, **kwargs: Any) -> Path:
    """manifest.json beside `path`, as `plcbridge manifest` writes it; its directory."""
    result = scaffold(path, **kwargs)
    (path.parent / "manifest.json").write_text(json.dumps(result.manifest, indent=2), encoding="utf-8")
    return path.parent


def _edit(model_dir: Path, edit: Callable[[dict], None]) -> Path:
    manifest = model_dir / "manifest.json"
    raw = json.loads(manifest.read_text(encoding="utf-8"))
    edit(raw)
    manifest.write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return model_dir


# --- every kind passes, its outputs decoded ------------------------------------------------------


@pytest.mark.parametrize("build, describes, decoded", [
    (lambda d: anomalib2(d), "anomalib2 anomaly model, fails at score 0.5", "score 0.502 (fails at 0.5), area"),
    (lambda d: anomalib2(d, external_data=True, batch=2), "anomalib2 anomaly model", "score 0.502"),
    (lambda d: anomalib2(d, patchcore=True, outputs=("pred_score",)), "anomalib2 anomaly model", "score 0.502 (fails"),
    (lambda d: anomalib1(d, map_size=(64, 64)), "anomalib1 anomaly model", "area"),
    # Mid-grey lights every 32 px cell of a YOLO fixture at 0.502: 100 detections, all counted.
    (lambda d: yolo_detect(d), "yolov8 detection model, 2 class(es) ['scratch', 'dent']", "(fail: 100 detection(s), 100 counted"),
    (lambda d: yolo_nms(d), "end2end detection model", "(fail: 100 detection(s), 100 counted"),
    (lambda d: yolo_segment(d), "yolov8-seg segmentation model", "(fail: 100 detection(s), 100 counted"),
    (lambda d: yolov5(d), "yolov5 detection model", "(fail: 100 detection(s), 100 counted"),
])
def test_each_kind_passes_with_its_outputs_decoded(tmp_path: Path, build, describes: str, decoded: str) -> None:
    report = validate_model(_scaffold(build(tmp_path)), runs=RUNS)
    assert report.ok, report.to_json()
    assert describes in report.check("manifest").detail
    assert decoded in report.check("smoke").detail, report.check("smoke").detail
    assert "outputs decoded and judged" in report.check("range").detail


def test_the_files_beside_the_graph_are_named_in_the_sha256_check(tmp_path: Path) -> None:
    report = validate_model(_scaffold(anomalib2(tmp_path / "v2", external_data=True)), runs=RUNS)
    assert "model.onnx.data (external weights, external_data)" in report.check("sha256").detail
    report = validate_model(_scaffold(anomalib1(tmp_path / "v1")), runs=RUNS)
    assert "metadata.json (anomalib 1.x metadata, anomaly.metadata)" in report.check("sha256").detail


# --- a NaN map ---------------------------------------------------------------------------------------


def test_a_map_that_is_all_nan_fails_the_smoke_check_naming_the_output(tmp_path: Path) -> None:
    report = validate_model(_scaffold(anomalib2(tmp_path, fault="nan")), runs=RUNS)
    assert_fails_at(report, "smoke", "smoke run failed", "anomaly_map", "not finite (NaN or inf)")
    assert report.check("interface").ok


def test_a_map_that_is_nan_for_dark_frames_fails_the_range_check(tmp_path: Path) -> None:
    report = validate_model(_scaffold(anomalib2(tmp_path, fault="nan", nan_below=0.25)), runs=RUNS)
    assert_fails_at(report, "range", "black frame", "anomaly_map", "not finite")


# --- a map of the wrong size -------------------------------------------------------------------------


def _anomaly_manifest(model_dir: Path, name: str = "model.onnx", batch: int = 1) -> Path:
    """A manifest written by hand from what onnxruntime says of the graph (scaffold refuses
    the faulty exports, so this is what a hand-edited manifest of one looks like)."""
    import hashlib

    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_dir / name), providers=["CPUExecutionProvider"])
    dtypes = {"tensor(float)": "float32", "tensor(bool)": "bool"}
    h, w = (d if isinstance(d, int) else 256 for d in sess.get_inputs()[0].shape[2:])  # symbolic: the fixture's 256
    raw = {
        "name": "faulty", "version": 1, "kind": "anomaly", "file": name,
        "sha256": hashlib.sha256((model_dir / name).read_bytes()).hexdigest(), "opset": 17,
        "input": {"name": "input", "shape": [batch, 3, h, w], "dtype": "float32"},
        "outputs": [{"name": o.name, "shape": [d if isinstance(d, int) else 1 for d in o.shape], "dtype": dtypes[o.type]}
                    for o in sess.get_outputs()],
        "preprocessing": {"resize": [w, h], "color": "rgb", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0],
                          "std": [1.0, 1.0, 1.0], "layout": "nchw", "normalized_in_graph": True},
        "anomaly": {"format": "anomalib2"},
    }
    (model_dir / "manifest.json").write_text(json.dumps(raw, indent=2))
    return model_dir


@pytest.mark.parametrize("fault, says", [
    ("larger", ["'anomaly_map' [1, 1, 512, 512] is larger than the model's input 256x256"]),
    ("mask_size", ["pred_mask [1, 1, 32, 32] must have the anomaly map's shape [1, 1, 64, 64]"]),
    ("rank", ["the anomaly map 'anomaly_map' must be [B, 1, h, w], got [1, 64, 64]"]),
    ("channels", ["the anomaly map 'anomaly_map' must be [B, 1, h, w], got [1, 2, 64, 64]"]),
])
def test_a_faulty_map_shape_fails_the_manifest_check(tmp_path: Path, fault: str, says: list[str]) -> None:
    anomalib2(tmp_path, fault=fault)
    model_dir = _anomaly_manifest(tmp_path)
    assert_fails_at(validate_model(model_dir, runs=RUNS), "manifest", str(model_dir / "manifest.json"), *says)


def test_a_map_size_not_the_graphs_fails_the_interface_check(tmp_path: Path) -> None:
    model_dir = _scaffold(anomalib2(tmp_path))

    def smaller_map(raw: dict) -> None:
        raw["outputs"][2]["shape"] = raw["outputs"][3]["shape"] = [1, 1, 32, 32]

    report = validate_model(_edit(model_dir, smaller_map), runs=RUNS)
    assert_fails_at(report, "interface", "output mismatch", "manifest says 'anomaly_map' [1, 1, 32, 32] float32",
                    "model.onnx has 'anomaly_map' [1, 1, 64, 64] float32")


def test_a_map_the_graph_leaves_symbolic_is_checked_when_it_comes(tmp_path: Path) -> None:
    """The graph declares its input's and map's height and width symbolic, so only the smoke
    run can see that the map it makes (64x64) is not the manifest's (32x32)."""
    path = anomalib2(tmp_path, outputs=("pred_score", "anomaly_map"))
    proto = onnx.load(str(path))
    for tensor, names in ((proto.graph.input[0], ("h", "w")), (proto.graph.output[1], ("map_h", "map_w"))):
        for dim, name in zip(tensor.type.tensor_type.shape.dim[2:], names):
            dim.dim_param = name
    onnx.save(proto, str(path))
    model_dir = _anomaly_manifest(tmp_path)

    def smaller_map(raw: dict) -> None:
        raw["outputs"][1]["shape"] = [1, 1, 32, 32]

    report = validate_model(_edit(model_dir, smaller_map), runs=RUNS)
    assert_fails_at(report, "smoke", "smoke run failed", "anomaly_map", "map is 64x64", "32x32")


# --- files beside the graph --------------------------------------------------------------------------


def test_a_missing_external_data_file_fails_the_sha256_check_naming_it(tmp_path: Path) -> None:
    model_dir = _scaffold(anomalib2(tmp_path, external_data=True))
    (tmp_path / "model.onnx.data").unlink()
    report = validate_model(model_dir, runs=RUNS)
    assert_fails_at(report, "sha256", "model.onnx.data (external weights, external_data) is missing",
                    str(tmp_path / "model.onnx.data"), "copy it into the model directory")
    assert report.sha256 is None and all(report.check(n).status == "skipped" for n in ("opset", "interface"))


def test_a_changed_external_data_file_fails_the_sha256_check(tmp_path: Path) -> None:
    model_dir = _scaffold(anomalib2(tmp_path, external_data=True))
    data = tmp_path / "model.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[0] ^= 0x01
    data.write_bytes(bytes(blob))
    assert_fails_at(validate_model(model_dir, runs=RUNS), "sha256", "sha256 mismatch for model.onnx.data",
                    "(external weights, external_data)")


def test_external_data_the_manifest_does_not_pin_fails_the_sha256_check(tmp_path: Path) -> None:
    model_dir = _edit(_scaffold(anomalib2(tmp_path, external_data=True)), lambda raw: raw.pop("external_data"))
    assert_fails_at(validate_model(model_dir, runs=RUNS), "sha256", "keeps its weights in 'model.onnx.data'",
                    "the manifest does not pin", "external_data")


def test_a_missing_or_changed_metadata_json_fails_the_sha256_check(tmp_path: Path) -> None:
    model_dir = _scaffold(anomalib1(tmp_path))
    meta = tmp_path / "metadata.json"
    meta.write_text(meta.read_text().replace("    ", "  "))
    assert_fails_at(validate_model(model_dir, runs=RUNS), "sha256", "sha256 mismatch for metadata.json",
                    "(anomalib 1.x metadata, anomaly.metadata)")
    meta.unlink()
    assert_fails_at(validate_model(model_dir, runs=RUNS), "sha256", "metadata.json (anomalib 1.x metadata, "
                    "anomaly.metadata) is missing")


def test_a_graph_in_a_subfolder_gets_its_external_weights_by_the_graphs_name_for_them(tmp_path: Path) -> None:
    """`file` and `external_data[].file` are relative to the manifest; the graph names its
    weights relative to itself ("model.onnx.data"): the session hands them over under that name."""
    raw = scaffold(anomalib2(tmp_path / "onnx", external_data=True)).manifest
    raw["file"], raw["external_data"][0]["file"] = "onnx/model.onnx", "onnx/model.onnx.data"
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    report = validate_model(tmp_path, runs=RUNS)
    assert report.ok, report.to_json()
    assert "onnx/model.onnx.data (external weights, external_data)" in report.check("sha256").detail


# --- detection manifests that do not fit the model --------------------------------------------------


def test_class_names_not_the_models_fail_the_manifest_check(tmp_path: Path) -> None:
    model_dir = _edit(_scaffold(yolo_detect(tmp_path)), lambda raw: raw["detection"]["class_names"].append("chip"))
    assert_fails_at(validate_model(model_dir, runs=RUNS), "manifest", "'output0' [1, 6, 100] is not layout 'yolov8'",
                    "for 3 class(es): expected 7 at axis 1")


def test_a_rule_naming_a_class_the_model_does_not_have_fails_the_manifest_check(tmp_path: Path) -> None:
    def rule(raw: dict) -> None:
        raw["detection"]["rules"]["classes"] = {"chip": {"min_area": 100}}

    model_dir = _edit(_scaffold(yolo_detect(tmp_path)), rule)
    assert_fails_at(validate_model(model_dir, runs=RUNS), "manifest", "'chip' is not among the model's classes")


# --- the command line ----------------------------------------------------------------------------------


def test_cli_reports_a_missing_data_file_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = _scaffold(anomalib2(tmp_path, external_data=True))
    assert main(["validate-model", str(model_dir), "--runs", "3"]) == 0
    capsys.readouterr()
    (tmp_path / "model.onnx.data").unlink()
    assert main(["validate-model", str(model_dir), "--runs", "3"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["failed_check"] == "sha256"
    assert "FAILED sha256" in err and "model.onnx.data (external weights, external_data) is missing" in err
