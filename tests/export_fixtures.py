"""ONNX files with the export signatures of the tools stations train with, for the tests of
loading them: anomalib 2.x and 1.x, Ultralytics YOLOv8/11 detect (raw head, NMS in the graph /
end-to-end head, segment) and YOLOv5. Built with onnx.helper, so no third-party weights or
files enter the repository; each builder takes a directory (and parameters) and returns the
path of the .onnx file it wrote.

Each graph is tiny (< 1 MB, well under 2 ms on a CPU) but real: its outputs follow the input
by a simple rule, so a test steers the result by painting the input:

- anomalib: the anomaly map is the mean of the grey image (mean of R, G, B) over each map
  pixel's block of input pixels. A bright square is an anomaly at its place: the map is above
  0.5 exactly where a block is brighter than 0.5, so a dark frame passes and a frame with one
  white square fails there (and only there).
- YOLO: the image is cut into cells of `stride` px; in each cell class c's score is the mean of
  input channel c % 3 (R, G, B) over the cell, and the box is the cell itself (cx, cy at its
  centre, w = h = stride, in input pixels). A pure red square covering a cell is a class-0
  detection there with score 1, a green one class 1; black is no detection.

What the signatures are, and where each was checked (the anomalib tags in
openvinotoolkit/anomalib, the Ultralytics and YOLOv5 exporters' source):

- anomalib 2.x (`ExportMixin.to_onnx`, v2.0.0): input `input` [N, 3, H, W]; the output names
  are the fields of `InferenceBatch` that are not None, in its order: `pred_score`,
  `pred_label`, `anomaly_map`, `pred_mask`. Scores are normalised by its post-processor:
  (x - threshold) / (max - min) + 0.5, clipped to [0, 1]; labels and masks are "> 0.5".
  anomalib itself exports at opset 14 with a dynamic batch ("batch_size").
- anomalib 1.x (`ExportMixin.to_onnx`, v1.2.0): input `input`, one output `output` (PaDiM,
  PatchCore: the raw anomaly map) and metadata.json beside it, from `_get_metadata`:
  {"task": ..., "image_threshold": ..., "pixel_threshold": ..., and the state_dict of its
  MinMax normalisation metrics: "anomaly_maps.min", "anomaly_maps.max", "pred_scores.min",
  "pred_scores.max"} ("box_scores.*" are dropped while still +-inf), json.dump(indent=4).
  Its inferencer: score = map max, label = score >= image_threshold, normalised as above.
- Ultralytics (engine/exporter.py): input `images`, outputs `output0` (and `output1`, the mask
  prototypes, for segment); metadata_props are str() of Python values: names "{0: 'a'}",
  imgsz "[640, 640]", stride "32", batch "1", args "{'batch': 1, ...}", end2end "False".
  Real exports also carry license "AGPL-3.0 License (https://ultralytics.com/license)"; these
  say "test fixture, no licence text" under the same key.
- YOLOv5 (export.py): input `images`, output `output0` [N, anchors, 5 + nc], and only two
  metadata_props: stride and names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from plcbridge.inference.train_anomaly import GraphBuilder

OPSET = 17
IR_VERSION = 8  # what onnxruntime >= 1.15 reads, whatever the onnx package's default

ANOMALIB2_OUTPUTS = ("pred_score", "pred_label", "anomaly_map", "pred_mask")
YOLO_NAMES = ("scratch", "dent")
NMS_ROWS = 300  # Ultralytics' max_det default: rows of an NMS / end-to-end output
SEGMENT_COEFFS = 32  # mask coefficients per anchor, and prototype channels
FIXTURE_LICENSE = "test fixture, no licence text"
FIXED_DATE = "2026-01-01T00:00:00"  # Ultralytics writes datetime.now().isoformat(): fixed here

Fault = Literal["nan", "rank", "channels", "larger", "mask_size"]


class _Graph(GraphBuilder):
    """The training script's graph builder (plcbridge.inference.train_anomaly), plus the graph
    outputs and the model with Ultralytics-style metadata these fixtures need."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[onnx.ValueInfoProto] = []

    def output(self, name: str, elem: int, shape: Sequence[int | str]) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem, list(shape)))

    def model(self, input_name: str, input_shape: Sequence[int | str], opset: int = OPSET,
              metadata: dict[str, str] | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "fixture", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
                                  self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="plcbridge tests")
        model.ir_version = IR_VERSION
        for key, value in (metadata or {}).items():
            prop = model.metadata_props.add()
            prop.key, prop.value = key, value
        onnx.checker.check_model(model, full_check=True)
        return model


def _save(model: onnx.ModelProto, directory: Path, name: str, external_data: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if external_data:
        # Exports from torch can keep the weights in a file beside the graph (over 2 GB they must).
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{name}.data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def _block_mean_grey(g: _Graph, x: str, size: tuple[int, int], map_size: tuple[int, int]) -> str:
    """[N, 3, H, W] -> [N, 1, h, w]: the mean of R, G and B over each (H/h x W/w) block: one Conv."""
    (h_in, w_in), (h, w) = size, map_size
    if h_in % h or w_in % w:
        raise ValueError(f"map size {map_size} must divide the input size {size}")
    kh, kw = h_in // h, w_in // w
    weights = np.full((1, 3, kh, kw), 1.0 / (3 * kh * kw), np.float32)
    return g.op("Conv", x, g.const("block_mean_w", weights), strides=[kh, kw])


# --------------------------------------------------------------------------------------------
# anomalib
# --------------------------------------------------------------------------------------------


def anomalib2(directory: Path, size: tuple[int, int] = (256, 256), map_size: tuple[int, int] = (64, 64), batch: int | str = 1,
              patchcore: bool = False, external_data: bool = False, outputs: Sequence[str] = ANOMALIB2_OUTPUTS,
              opset: int = OPSET, name: str = "model.onnx", fault: Fault | None = None, nan_below: float = 2.0) -> Path:
    """An anomalib 2.x export: `input` float32 [batch, 3, H, W] RGB in [0, 1] -> `pred_score`
    [batch, 1] ([batch] with `patchcore`), `pred_label` bool [batch], `anomaly_map` float
    [batch, 1, h, w] at `map_size` (the model's resolution), `pred_mask` bool [batch, 1, h, w].

    The map is the block mean of grey (module docstring): already "normalised", 0.5 is the
    threshold; pred_score is its max, pred_label "score > 0.5", pred_mask "map > 0.5".
    `batch` may be a name ("batch_size": anomalib's dynamic axis). `outputs` picks and orders
    the outputs (anomalib leaves out the fields that are None, e.g. with thresholding off:
    ("pred_score", "anomaly_map")). `external_data` writes the weights to `<name>.data`.

    `fault` makes a broken export, for validation tests:
    - "nan": the map is sqrt(block mean - `nan_below`): NaN wherever a block is darker than
      `nan_below` (default 2: everywhere). NaN > 0.5 is false, so pred_label says "good";
    - "rank": anomaly_map and pred_mask are [batch, h, w] (no channel axis);
    - "channels": anomaly_map is [batch, 2, h, w] (pred_mask stays [batch, 1, h, w]);
    - "larger": anomaly_map is [batch, 1, 2H, 2W], larger than the input (pred_mask stays);
    - "mask_size": pred_mask is [batch, 1, h/2, w/2], not the map's size.
    """
    g = _Graph()
    g.const("half", 0.5)
    amap = _block_mean_grey(g, "input", size, map_size)
    h, w = map_size
    map_shape: list[int | str] = [batch, 1, h, w]
    mask_shape: list[int | str] = [batch, 1, h, w]
    if fault == "nan":
        amap = g.op("Sqrt", g.op("Sub", amap, g.const("nan_below", nan_below)))
    score_src = mask_src = amap
    if fault == "rank":
        amap = mask_src = g.op("Squeeze", amap, g.const("axis_1", [1], np.int64))
        map_shape = mask_shape = [batch, h, w]
    elif fault == "channels":
        amap = g.op("Concat", amap, amap, axis=1)
        map_shape = [batch, 2, h, w]
    elif fault == "larger":
        amap = g.op("Resize", amap, "", g.const("scales", [1, 1, 2 * size[0] / h, 2 * size[1] / w]), mode="nearest")
        map_shape = [batch, 1, 2 * size[0], 2 * size[1]]
    elif fault == "mask_size":
        mask_src = g.op("MaxPool", amap, kernel_shape=[2, 2], strides=[2, 2])
        mask_shape = [batch, 1, h // 2, w // 2]

    score_shape: list[int | str] = [batch] if patchcore else [batch, 1]
    nodes = {
        "pred_score": lambda: (g.op("ReduceMax", score_src, axes=[1, 2, 3] if patchcore else [2, 3], keepdims=0, out="pred_score"),
                               TensorProto.FLOAT, score_shape),
        "pred_label": lambda: (g.op("Greater", g.op("ReduceMax", score_src, axes=[1, 2, 3], keepdims=0), "half", out="pred_label"),
                               TensorProto.BOOL, [batch]),
        "anomaly_map": lambda: (g.op("Identity", amap, out="anomaly_map"), TensorProto.FLOAT, map_shape),
        "pred_mask": lambda: (g.op("Greater", mask_src, "half", out="pred_mask"), TensorProto.BOOL, mask_shape),
    }
    for out in outputs:
        out_name, elem, shape = nodes[out]()
        g.output(out_name, elem, shape)
    return _save(g.model("input", [batch, 3, *size], opset), directory, name, external_data)


def anomalib2_missing_data(directory: Path, name: str = "model.onnx") -> Path:
    """An anomalib 2.x export whose external weights file (`<name>.data`) is gone: written,
    then deleted, as when only the .onnx was copied to the line PC."""
    path = anomalib2(directory, external_data=True, name=name)
    os.remove(directory / f"{name}.data")
    return path


def anomalib1_metadata(image_threshold: float, pixel_threshold: float, score_range: tuple[float, float],
                       map_range: tuple[float, float], task: str = "segmentation") -> dict[str, Any]:
    """metadata.json as anomalib 1.x's `_get_metadata` writes it (keys in its order)."""
    return {
        "task": task,
        "image_threshold": image_threshold,
        "pixel_threshold": pixel_threshold,
        "anomaly_maps.min": map_range[0],
        "anomaly_maps.max": map_range[1],
        "pred_scores.min": score_range[0],
        "pred_scores.max": score_range[1],
    }


def anomalib1(directory: Path, size: tuple[int, int] = (256, 256), map_size: tuple[int, int] | None = None, batch: int | str = 1,
              offset: float = 2.0, gain: float = 10.0, metadata: dict[str, Any] | None = None, opset: int = OPSET,
              name: str = "model.onnx") -> Path:
    """An anomalib 1.x export: `input` float32 [batch, 3, H, W] -> `output` [batch, 1, h, w], the
    raw (unnormalised) anomaly map, `offset + gain * block mean of grey`; and metadata.json.

    `map_size` defaults to the input size (1.x's PaDiM and PatchCore upsample their map to it).
    The metadata puts both thresholds at the raw value of grey 0.5 (offset + gain / 2) and
    min/max at the ends of the raw range, so anomalib 1.x's normalisation gives back the grey
    level: ((x - t) / (max - min)) + 0.5 == block mean. `metadata` overrides keys (None
    removes one), e.g. {"pixel_threshold": None} or {"pred_scores.max": 1e-9}.
    """
    map_size = map_size or size
    g = _Graph()
    grey = _block_mean_grey(g, "input", size, map_size)
    g.op("Add", g.op("Mul", grey, g.const("gain", gain)), g.const("offset", offset), out="output")
    g.output("output", TensorProto.FLOAT, [batch, 1, *map_size])
    path = _save(g.model("input", [batch, 3, *size], opset), directory, name)
    meta = anomalib1_metadata(offset + gain / 2, offset + gain / 2, (offset, offset + gain), (offset, offset + gain))
    for key, value in (metadata or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    with (directory / "metadata.json").open("w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, indent=4)
    return path


# --------------------------------------------------------------------------------------------
# Ultralytics and YOLOv5
# --------------------------------------------------------------------------------------------


def ultralytics_metadata(task: str, imgsz: tuple[int, int], names: Sequence[str], stride: int = 32, batch: int = 1,
                         head: str = "Detect", nms: bool = False, end2end: bool = False,
                         overrides: dict[str, str | None] | None = None) -> dict[str, str]:
    """metadata_props as Ultralytics' exporter writes them: str() of each Python value (so a
    reader parses names, imgsz, args with ast.literal_eval). The license is not theirs; the
    author is what real exports say, because readers recognise Ultralytics files by it.
    `overrides` replaces values (None removes a key)."""
    values: dict[str, Any] = {
        "description": f"plcbridge test fixture in Ultralytics' {task} export layout",
        "author": "Ultralytics",
        "date": FIXED_DATE,
        "version": "8.3.0",
        "license": FIXTURE_LICENSE,
        "docs": "https://docs.ultralytics.com",
        "stride": stride,
        "task": task,
        "head": head,
        "batch": batch,
        "imgsz": list(imgsz),
        "names": dict(enumerate(names)),
        "args": {"batch": batch, "half": False, "dynamic": False, "simplify": True, "opset": OPSET, "nms": nms},
        "channels": 3,
        "end2end": end2end,
    }
    meta = {k: str(v) for k, v in values.items()}
    for key, value in (overrides or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    return meta


def _cells(imgsz: tuple[int, int], stride: int) -> tuple[int, int]:
    if imgsz[0] % stride or imgsz[1] % stride:
        raise ValueError(f"imgsz {imgsz} must be a multiple of the stride {stride}")
    return imgsz[0] // stride, imgsz[1] // stride


def _cell_boxes(imgsz: tuple[int, int], stride: int) -> np.ndarray:
    """[4, cells]: cx, cy, w, h of each cell, row-major, in input pixels."""
    gh, gw = _cells(imgsz, stride)
    cy, cx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    size = np.full(gh * gw, stride, np.float32)
    return np.stack([(cx.ravel() + 0.5) * stride, (cy.ravel() + 0.5) * stride, size, size])


def _class_scores(g: _Graph, imgsz: tuple[int, int], stride: int, nc: int) -> tuple[str, int]:
    """images -> ([batch, nc, cells] per-class scores: the cell mean of channel c % 3, cell count)."""
    gh, gw = _cells(imgsz, stride)
    pooled = g.op("AveragePool", "images", kernel_shape=[stride, stride], strides=[stride, stride])
    flat = g.op("Reshape", pooled, g.const("shape_b3n", [0, 3, gh * gw], np.int64))
    return g.op("Gather", flat, g.const("class_channel", [c % 3 for c in range(nc)], np.int64), axis=1), gh * gw


def yolo_detect(directory: Path, imgsz: tuple[int, int] = (320, 320), names: Sequence[str] = YOLO_NAMES, stride: int = 32,
                batch: int = 1, metadata: dict[str, str | None] | None = None, opset: int = OPSET, name: str = "best.onnx") -> Path:
    """An Ultralytics YOLOv8/11 detect export without NMS: `images` [batch, 3, H, W] ->
    `output0` [batch, 4 + nc, cells]: cx, cy, w, h in input pixels, then one score per class
    (no objectness). One anchor per `stride` cell (real heads have three strides' worth)."""
    g = _Graph()
    scores, n = _class_scores(g, imgsz, stride, len(names))
    boxes = g.op("Expand", g.const("cell_boxes", _cell_boxes(imgsz, stride)[None]), g.const("boxes_shape", [batch, 4, n], np.int64))
    g.op("Concat", boxes, scores, axis=1, out="output0")
    g.output("output0", TensorProto.FLOAT, [batch, 4 + len(names), n])
    meta = ultralytics_metadata("detect", imgsz, names, stride, batch, overrides=metadata)
    return _save(g.model("images", [batch, 3, *imgsz], opset, meta), directory, name)


def yolo_nms(directory: Path, imgsz: tuple[int, int] = (320, 320), names: Sequence[str] = YOLO_NAMES, stride: int = 32,
             conf: float = 0.25, end2end: bool = False, metadata: dict[str, str | None] | None = None, opset: int = OPSET,
             name: str = "best.onnx") -> Path:
    """An Ultralytics export with NMS in the graph (`nms=True`), or with `end2end` an end-to-end
    head (YOLOv10/YOLO26): `output0` [1, 300, 6] = x1, y1, x2, y2, score, class, best first;
    the cells whose best class score is > `conf`, then zero rows as padding. (Cells do not
    overlap, so suppression has nothing to remove: one row per bright cell.)"""
    g = _Graph()
    scores, n = _class_scores(g, imgsz, stride, len(names))
    k = min(NMS_ROWS, n)
    best = g.op("ReduceMax", scores, axes=[1], keepdims=0)  # [1, n]
    cls = g.op("Cast", g.op("ArgMax", scores, axis=1, keepdims=0), to=TensorProto.FLOAT)  # [1, n]
    top = g.op("TopK", best, g.const("k", [k], np.int64), axis=1, largest=1, sorted=1)
    g.nodes[-1].output.append("top_index")  # TopK has two outputs: values, indices
    cx, cy, w, h = _cell_boxes(imgsz, stride)
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)  # [n, 4]
    rows_boxes = g.op("Gather", g.const("cell_xyxy", xyxy), "top_index", axis=0)  # [1, k, 4]
    rows_cls = g.op("GatherElements", cls, "top_index", axis=1)  # [1, k]
    unsq = g.const("axis_2", [2], np.int64)
    rows = g.op("Concat", rows_boxes, g.op("Unsqueeze", top, unsq), g.op("Unsqueeze", rows_cls, unsq), axis=2)  # [1, k, 6]
    keep = g.op("Unsqueeze", g.op("Cast", g.op("Greater", top, g.const("conf", conf)), to=TensorProto.FLOAT), unsq)
    rows = g.op("Mul", rows, keep)
    g.op("Pad", rows, g.const("pad_rows", [0, 0, 0, 0, NMS_ROWS - k, 0], np.int64), out="output0")
    g.output("output0", TensorProto.FLOAT, [1, NMS_ROWS, 6])
    meta = ultralytics_metadata("detect", imgsz, names, stride, 1, head="v10Detect" if end2end else "Detect", nms=not end2end,
                                end2end=end2end, overrides=metadata)
    return _save(g.model("images", [1, 3, *imgsz], opset, meta), directory, name)


def yolo_segment(directory: Path, imgsz: tuple[int, int] = (320, 320), names: Sequence[str] = YOLO_NAMES, stride: int = 32,
                 metadata: dict[str, str | None] | None = None, opset: int = OPSET, name: str = "best.onnx") -> Path:
    """An Ultralytics segment export: `output0` [1, 4 + nc + 32, cells] (boxes, class scores, 32
    mask coefficients) and `output1` [1, 32, H/4, W/4], the mask prototypes. Prototype 0 is
    8 * (grey - 0.5) over 4x4 px blocks, the others 0, and every anchor's coefficients are
    (1, 0, ..., 0): so a detection's mask, sigmoid(coefficients . prototypes), is the bright part."""
    g = _Graph()
    scores, n = _class_scores(g, imgsz, stride, len(names))
    coeffs = np.zeros((1, SEGMENT_COEFFS, n), np.float32)
    coeffs[0, 0] = 1.0
    g.op("Concat", g.const("cell_boxes", _cell_boxes(imgsz, stride)[None]), scores, g.const("mask_coeffs", coeffs), axis=1, out="output0")
    proto_w = np.zeros((SEGMENT_COEFFS, 3, 4, 4), np.float32)
    proto_w[0] = 8.0 / 48  # 8 x the mean of 3 channels x 16 pixels
    proto_b = np.zeros(SEGMENT_COEFFS, np.float32)
    proto_b[0] = -4.0
    g.op("Conv", "images", g.const("proto_w", proto_w), g.const("proto_b", proto_b), strides=[4, 4], out="output1")
    g.output("output0", TensorProto.FLOAT, [1, 4 + len(names) + SEGMENT_COEFFS, n])
    g.output("output1", TensorProto.FLOAT, [1, SEGMENT_COEFFS, imgsz[0] // 4, imgsz[1] // 4])
    meta = ultralytics_metadata("segment", imgsz, names, stride, 1, head="Segment", overrides=metadata)
    return _save(g.model("images", [1, 3, *imgsz], opset, meta), directory, name)


def yolov5(directory: Path, imgsz: tuple[int, int] = (320, 320), names: Sequence[str] = YOLO_NAMES, stride: int = 32,
           opset: int = OPSET, name: str = "best.onnx") -> Path:
    """A YOLOv5 export: `images` [1, 3, H, W] -> `output0` [1, cells, 5 + nc] = cx, cy, w, h,
    objectness, class scores (a detection's confidence is objectness x class score). Objectness
    is the cell's brightest channel mean, class c's score the mean of channel c % 3. Metadata:
    stride and names only, as YOLOv5's export.py writes them."""
    g = _Graph()
    scores, n = _class_scores(g, imgsz, stride, len(names))
    pooled = g.op("Reshape", g.op("AveragePool", "images", kernel_shape=[stride, stride], strides=[stride, stride]),
                  g.const("shape_13n", [1, 3, n], np.int64))
    obj = g.op("ReduceMax", pooled, axes=[1], keepdims=1)  # [1, 1, n]
    rows = g.op("Concat", g.const("cell_boxes", _cell_boxes(imgsz, stride)[None]), obj, scores, axis=1)  # [1, 5 + nc, n]
    g.op("Transpose", rows, perm=[0, 2, 1], out="output0")
    g.output("output0", TensorProto.FLOAT, [1, n, 5 + len(names)])
    meta = {"stride": str(stride), "names": str(dict(enumerate(names)))}
    return _save(g.model("images", [1, 3, *imgsz], opset, meta), directory, name)
