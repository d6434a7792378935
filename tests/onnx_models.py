"""Real ONNX models for tests, built with the `onnx` package (a test dependency), each in
its own directory with a manifest.json that `plcbridge.inference` loads like any other.

- `slow_model`: a chain of MatMuls that takes ~1 s per run, to provoke InferenceTimeout (also
  usable to inject a slow inference into a whole daemon: `model.manifest = str(dir)`);
- `nan_model`: outputs NaN for dark frames, which must never become a PASS;
- `write_manifest` / `copy_demo`: a manifest (or a copy of the demo model) with fields
  overridden, for the refusal tests.

The tiny models take a 16x16 grey image, so any camera frame fits their preprocessing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from plcbridge.inference.manifest import load_manifest

OPSET = 17
INPUT = {"name": "image", "shape": [1, 1, 16, 16], "dtype": "float32"}
OUTPUT = {"name": "defect_prob", "shape": [1, 1], "dtype": "float32", "kind": "probability"}
PREPROCESSING = {"resize": [16, 16], "color": "gray", "scale": 1 / 255, "mean": [0.0], "std": [1.0], "layout": "nchw"}


def write_manifest(model_dir: Path, onnx_name: str, **overrides: Any) -> Path:
    """Write model_dir/manifest.json for model_dir/onnx_name (sha256 computed); `overrides`
    replace top-level fields, e.g. sha256="0"*64 or input={...}."""
    manifest: dict[str, Any] = {
        "name": Path(onnx_name).stem,
        "version": 7,
        "file": onnx_name,
        "sha256": hashlib.sha256((model_dir / onnx_name).read_bytes()).hexdigest(),
        "opset": OPSET,
        "input": INPUT,
        "output": OUTPUT,
        "preprocessing": PREPROCESSING,
        "threshold": 0.5,
        "labels": ["pass", "fail"],
    }
    manifest.update(overrides)
    path = model_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


def _save(model_dir: Path, name: str, nodes: list, initializers: list) -> Path:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT["name"], TensorProto.FLOAT, INPUT["shape"])],
        [helper.make_tensor_value_info(OUTPUT["name"], TensorProto.FLOAT, OUTPUT["shape"])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # what onnxruntime >= 1.15 reads, whatever the onnx package's default
    onnx.checker.check_model(model)
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / f"{name}.onnx"))
    write_manifest(model_dir, f"{name}.onnx")
    return model_dir


def _input_to_score(x: str) -> list:
    """Nodes mapping tensor `x` to a [1, 1] sigmoid score named like the output."""
    return [
        helper.make_node("ReduceMean", [x], ["_mean"], keepdims=0),
        helper.make_node("Reshape", ["_mean", "_shape11"], ["_mean11"]),
        helper.make_node("Sigmoid", ["_mean11"], [OUTPUT["name"]]),
    ]


def _shape11() -> Any:
    return numpy_helper.from_array(np.array([1, 1], np.int64), "_shape11")


def slow_model(model_dir: Path, matmuls: int = 300, size: int = 512) -> Path:
    """A model whose run is `matmuls` chained size x size MatMuls (~3 ms each on one core
    of the dev box: ~1 s a run).

    The chain starts from the input (so ORT cannot constant-fold it away at load) and
    multiplies by a permutation matrix (so values neither grow nor vanish). ORT's
    sequential executor checks RunOptions.terminate between nodes, so a terminated run
    stops within one MatMul. Returns the model directory.
    """
    rng = np.random.default_rng(0)
    perm = np.eye(size, dtype=np.float32)[rng.permutation(size)]
    base = rng.standard_normal((size, size)).astype(np.float32)
    inits = [
        numpy_helper.from_array(perm, "perm"),
        numpy_helper.from_array(base, "base"),
        _shape11(),
    ]
    nodes = [
        helper.make_node("ReduceMean", [INPUT["name"]], ["_in_mean"], keepdims=0),
        helper.make_node("Add", ["base", "_in_mean"], ["h0"]),
    ]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "perm"], [f"h{i + 1}"]))
    nodes += _input_to_score(f"h{matmuls}")
    return _save(model_dir, "slow", nodes, inits)


def nan_model(model_dir: Path, below: float = 0.25) -> Path:
    """A model whose output is NaN for frames darker than `below` (mean grey / 255; sqrt
    of a negative number) and a valid score otherwise. The build's smoke run uses a
    mid-grey frame, so below=0.25 loads and below=2 (NaN always) does not."""
    inits = [numpy_helper.from_array(np.array(below, np.float32), "below"), _shape11()]
    nodes = [
        helper.make_node("ReduceMean", [INPUT["name"]], ["_m"], keepdims=0),
        helper.make_node("Sub", ["_m", "below"], ["_d"]),
        helper.make_node("Sqrt", ["_d"], ["_maybe_nan"]),
        *_input_to_score("_maybe_nan"),
    ]
    return _save(model_dir, "nan", nodes, inits)


def copy_demo(model_dir: Path, **overrides: Any) -> Path:
    """Copy the bundled demo model into model_dir with manifest fields overridden.
    Returns the manifest path."""
    manifest, manifest_path = load_manifest("builtin:demo")
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(manifest_path.parent / manifest.file, model_dir / manifest.file)
    raw = manifest.model_dump(mode="json")
    raw.update(overrides)
    path = model_dir / "manifest.json"
    path.write_text(json.dumps(raw, indent=2))
    return path


def constant_model(model_dir: Path, score: float, name: str = "constant", version: int = 7) -> Path:
    """A model that gives every frame the same defect score (a real graph that reads the
    frame: sigmoid(0 x mean + logit(score))): 0.9 fails every part, 0.1 passes every part.
    Two of them are two models that disagree on purpose, told apart by `version`."""
    logit = float(np.log(score / (1 - score)))
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(logit, np.float32), "logit"), _shape11()]
    nodes = [
        helper.make_node("ReduceMean", [INPUT["name"]], ["_m"], keepdims=0),
        helper.make_node("Mul", ["_m", "zero"], ["_z"]),
        helper.make_node("Add", ["_z", "logit"], ["_l"]),
        helper.make_node("Reshape", ["_l", "_shape11"], ["_l11"]),
        helper.make_node("Sigmoid", ["_l11"], [OUTPUT["name"]]),
    ]
    _save(model_dir, name, nodes, inits)
    write_manifest(model_dir, f"{name}.onnx", version=version)
    return model_dir


def nan_band_model(model_dir: Path, low: float, high: float, version: int = 7) -> Path:
    """A model whose output is NaN for frames whose mean grey (/255) lies between `low` and
    `high` (sqrt of (m - low)(m - high), negative inside the band) and a valid score
    elsewhere: with a band that leaves out 0, 0.5 and 1 it passes validate-model's frames
    (black, mid-grey, white, noise) and fails, INFERENCE_ERROR, on a dim camera's."""
    inits = [numpy_helper.from_array(np.array(low, np.float32), "low"),
             numpy_helper.from_array(np.array(high, np.float32), "high"), _shape11()]
    nodes = [
        helper.make_node("ReduceMean", [INPUT["name"]], ["_m"], keepdims=0),
        helper.make_node("Sub", ["_m", "low"], ["_a"]),
        helper.make_node("Sub", ["_m", "high"], ["_b"]),
        helper.make_node("Mul", ["_a", "_b"], ["_d"]),
        helper.make_node("Sqrt", ["_d"], ["_maybe_nan"]),
        *_input_to_score("_maybe_nan"),
    ]
    _save(model_dir, "nan_band", nodes, inits)
    write_manifest(model_dir, "nan_band.onnx", version=version)
    return model_dir
