"""`plcbridge bench --model bench:yolo320`: a detector with the shape and cost of an Ultralytics
YOLOv8 export, generated here (no weights are downloaded or copied; Ultralytics' own carry an
AGPL-3.0 licence), to measure what a detection station costs the control path.

The graph is what `yolo export format=onnx imgsz=320` gives for two classes, in structure:
input `images` [1, 3, 320, 320] RGB/255 after a letterbox; a strided conv backbone down to
1/32 with SiLU activations; heads at strides 8, 16 and 32 (40x40 + 20x20 + 10x10 = 2100
anchors); output `output0` [1, 6, 2100]: cx, cy, w, h in input pixels, then the two class
scores (sigmoid, no objectness). Weights are seeded random numbers, so its detections mean
nothing; the class bias is set so that synthetic frames give from none to over a hundred
candidates above the 0.25 confidence (30 frames: median 0, 80th percentile 18, max 135),
so that NMS has work on some frames as on a busy real image. Its verdicts are not measured,
its cost is: about 0.42 GMAC, 9-10 ms per judge() on one core of the 2-core bench machine,
between a classifier and a YOLOv8n at 320 px (~1.1 GMAC).

Needs the `onnx` package (the test extra); written once into the bench's output folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

NAME = "bench:yolo320"
IMGSZ = 320
CLASSES = ("scratch", "dent")
SEED = 320
OPSET = 17
# Class logit bias: sigmoid(-3.7) = 0.02 on an average anchor; with the class weights' spread
# some frames get many anchors above conf 0.25, most none (see the docstring).
CLASS_BIAS = -3.7
CLASS_WEIGHT_SCALE = 40.0  # class logits spread ~1 (box weights stay small: boxes near their anchors)
CHANNELS = (16, 32, 64, 96, 128)  # strides 2, 4, 8, 16, 32


def build(directory: Path) -> Path:
    """Write yolo320.onnx and its manifest.json into `directory`; return the manifest's path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv_silu(x: str, cin: int, cout: int, stride: int, name: str) -> str:
        w = const(f"{name}_w", rng.normal(0, (2 / (9 * cin)) ** 0.5, (cout, cin, 3, 3)))
        b = const(f"{name}_b", np.zeros(cout))
        nodes.append(helper.make_node("Conv", [x, w, b], [f"{name}_c"], pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Sigmoid", [f"{name}_c"], [f"{name}_s"]))
        nodes.append(helper.make_node("Mul", [f"{name}_c", f"{name}_s"], [name]))
        return name

    x, cin, taps = "images", 3, {}
    for i, cout in enumerate(CHANNELS):
        x = conv_silu(x, cin, cout, 2, f"down{i}")
        x = conv_silu(x, cout, cout, 1, f"body{i}")
        cin = cout
        taps[2 ** (i + 1)] = (x, cout)
    heads = []
    nc = len(CLASSES)
    for stride in (8, 16, 32):
        feat, c = taps[stride]
        n = IMGSZ // stride
        h = conv_silu(feat, c, 64, 1, f"head{stride}")
        weights = rng.normal(0, 0.05, (4 + nc, 64, 1, 1))
        weights[4:] *= CLASS_WEIGHT_SCALE
        w = const(f"pred{stride}_w", weights)
        b = const(f"pred{stride}_b", np.array([0, 0, 0, 0] + [CLASS_BIAS] * nc))
        nodes.append(helper.make_node("Conv", [h, w, b], [f"pred{stride}"]))
        nodes.append(helper.make_node("Sigmoid", [f"pred{stride}"], [f"sig{stride}"]))
        # cx, cy: the anchor's cell centre plus an offset of up to a cell; w, h: 1..4 cells.
        gy, gx = np.mgrid[0:n, 0:n].astype(np.float32)
        centre = np.stack([gx + 0.5, gy + 0.5])[None] * stride
        scale = np.array([stride, stride, 4 * stride, 4 * stride] + [1] * nc, np.float32).reshape(1, -1, 1, 1)
        offset = np.zeros((1, 4 + nc, n, n), np.float32)
        offset[0, :2] = centre[0] - stride / 2
        offset[0, 2:4] = stride
        nodes.append(helper.make_node("Mul", [f"sig{stride}", const(f"scale{stride}", scale)], [f"scaled{stride}"]))
        nodes.append(helper.make_node("Add", [f"scaled{stride}", const(f"offset{stride}", offset)], [f"boxes{stride}"]))
        nodes.append(helper.make_node("Reshape", [f"boxes{stride}", f"shape{stride}_i"], [f"flat{stride}"]))
        inits.append(numpy_helper.from_array(np.array([1, 4 + nc, n * n], np.int64), f"shape{stride}_i"))
        heads.append(f"flat{stride}")
    nodes.append(helper.make_node("Concat", heads, ["output0"], axis=2))
    anchors = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))
    graph = helper.make_graph(
        nodes, "yolo320_bench",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, IMGSZ, IMGSZ])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + nc, anchors])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    for key, value in {"task": "detect", "imgsz": str([IMGSZ, IMGSZ]), "stride": "32",
                       "names": str(dict(enumerate(CLASSES))),
                       "description": "plcbridge bench: YOLOv8-shaped detector, seeded random weights"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = directory / "yolo320.onnx"
    data = model.SerializeToString()
    onnx_path.write_bytes(data)
    manifest = {
        "name": "yolo320-bench", "version": 1, "kind": "detection", "file": onnx_path.name,
        "sha256": hashlib.sha256(data).hexdigest(), "opset": OPSET,
        "input": {"name": "images", "shape": [1, 3, IMGSZ, IMGSZ], "dtype": "float32"},
        "outputs": [{"name": "output0", "shape": [1, 4 + nc, anchors], "dtype": "float32"}],
        "preprocessing": {"resize": [IMGSZ, IMGSZ], "color": "rgb", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0],
                          "std": [1.0, 1.0, 1.0], "layout": "nchw", "letterbox": {"pad_value": 114}},
        "detection": {"layout": "yolov8", "class_names": list(CLASSES), "rules": {}},
        "labels": ["pass", "fail"],
    }
    path = directory / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
