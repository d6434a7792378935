"""`plcbridge manifest`: scaffolds a manifest.json that load_manifest and validate-model accept."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from plcbridge.inference.manifest import load_manifest  # noqa: E402
from plcbridge.tools import manifest as manifest_tool  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "inference" / "models" / "demo" / "defect_cnn.onnx"


def _run(*argv: str) -> int:
    p = argparse.ArgumentParser()
    manifest_tool.add_arguments(p)
    args = p.parse_args([str(a) for a in argv])
    return args.func(args)


def _softmax_model(path: Path, *, classes: int, shape: list, opset: int = 17) -> Path:
    """x -> ReduceMean over H, W (NHWC: axes 1, 2) -> MatMul to `classes` -> Softmax."""
    channels = shape[3]
    w = helper.make_tensor("w", TensorProto.FLOAT, [channels, classes], [0.1 * (i + 1) for i in range(channels * classes)])
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(nodes, "sm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_demo_copy_scaffolds_a_manifest_that_loads_and_validates(tmp_path, capsys):
    model = tmp_path / "defect_cnn.onnx"
    shutil.copy(DEMO, model)
    assert _run(model, "--version", "3") == 0
    out = capsys.readouterr().out
    for reminder in ("threshold", "mean", "output.kind", "validate-model"):
        assert reminder in out

    manifest, path = load_manifest(tmp_path)
    assert path == (tmp_path / "manifest.json").resolve()
    assert manifest.sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
    demo, _ = load_manifest("builtin:demo")
    assert manifest.opset == demo.opset == 17
    assert manifest.input == demo.input and manifest.version == 3
    assert manifest.output.model_dump() == demo.output.model_dump()
    assert manifest.preprocessing.resize == demo.preprocessing.resize
    assert manifest.preprocessing.color == "gray" and manifest.preprocessing.layout == "nchw"

    from plcbridge.inference.validate import validate_model

    report = validate_model(tmp_path, runs=5)
    assert report.ok, report.to_json()


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    shutil.copy(DEMO, model)
    (tmp_path / "manifest.json").write_text("{}")
    assert _run(model) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "manifest.json").read_text() == "{}"
    assert _run(model, "--force", "--name", "candidate") == 0
    assert load_manifest(tmp_path)[0].name == "candidate"


@pytest.mark.parametrize("case", ["missing", "garbage", "not_onnx_suffix", "directory"])
def test_bad_input_exits_2_with_a_reason(tmp_path, capsys, case):
    if case == "missing":
        target, why = tmp_path / "nope.onnx", "no such file"
    elif case == "garbage":
        target, why = tmp_path / "junk.onnx", "not an ONNX model"
        target.write_bytes(b"\x00\xffthis is not a protobuf" * 10)
    elif case == "not_onnx_suffix":
        target, why = tmp_path / "model.pt", "not an .onnx file"
        target.write_bytes(b"x")
    else:
        target, why = tmp_path, "not a file"
    assert _run(target) == 2
    err = capsys.readouterr().err
    assert why in err and str(target) in err
    assert not (tmp_path / "manifest.json").exists()


def test_a_too_new_opset_is_said_with_what_to_do_not_onnxruntimes_cpp_signature(tmp_path, capsys):
    model = tmp_path / "new.onnx"
    raw = onnx.load(str(DEMO))
    raw.opset_import[0].version = 99
    onnx.save(raw, str(model))
    assert _run(model) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "opset 99" in err and "opset_version <=" in err and "newer onnxruntime" in err, err
    assert "onnxruntime::" not in err and "[ONNXRuntimeError]" not in err and ".h:" not in err, err


def test_multiclass_softmax_nhwc_dynamic_batch(tmp_path, capsys):
    model = _softmax_model(tmp_path / "orient.onnx", classes=4, shape=["batch", 24, 32, 3])
    assert _run(model) == 2
    assert "--fail-classes" in capsys.readouterr().err

    assert _run(model, "--fail-classes", "2,3", "--color", "bgr", "--normalize", "imagenet") == 0
    m, _ = load_manifest(tmp_path)
    assert m.input.shape == [1, 24, 32, 3] and m.preprocessing.layout == "nhwc"
    assert m.preprocessing.resize == [32, 24] and m.preprocessing.color == "bgr"
    assert m.preprocessing.mean == [0.485, 0.456, 0.406]
    assert m.output.kind == "softmax" and m.output.shape == [1, 4] and m.output.fail_indices == [2, 3]

    from plcbridge.inference.validate import validate_model

    report = validate_model(tmp_path, runs=5)
    assert report.ok, report.to_json()


def test_symbolic_height_width_needs_size(tmp_path, capsys):
    model = _softmax_model(tmp_path / "dyn.onnx", classes=2, shape=[1, "h", "w", 3])
    assert _run(model) == 2
    assert "--size" in capsys.readouterr().err
    assert _run(model, "--size", "64x48") == 0
    m, _ = load_manifest(tmp_path)
    assert m.preprocessing.resize == [64, 48] and m.input.shape == [1, 48, 64, 3]
    assert m.output.fail_classes is None  # two classes: class 1 is FAIL by default
    assert "fail_classes" in capsys.readouterr().out


def test_manifest_written_is_plain_json_naming_the_file(tmp_path):
    model = tmp_path / "defect_cnn.onnx"
    shutil.copy(DEMO, model)
    assert _run(model) == 0
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["file"] == "defect_cnn.onnx" and raw["labels"] == ["pass", "fail"]
    assert not list(tmp_path.glob(".*.tmp"))
