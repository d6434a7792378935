"""YOLO outputs -> `Detections`: one form for every head an inspection team exports, so that
the verdict rules (rules.py) are written once.

Layouts (`Layout`), batch index 0 in every case (a model exported with a fixed batch of 2
still gives the first image's result; the others are never read):

- "yolov8": Ultralytics v8/11 detect, output0 [B, 4+nc, N]: cx, cy, w, h in input pixels,
  then nc class scores (sigmoid already applied in the graph), no objectness. NMS is ours.
- "yolov8-seg": v8/11 segment, output0 [B, 4+nc+nm, N] (nm mask coefficients, 32 in
  Ultralytics) and output1, the prototypes, [B, nm, H/4, W/4].
- "end2end": NMS in the graph (`export(nms=True)`) and the end-to-end heads (v10, 26):
  [B, max_det, 6] = x1, y1, x2, y2, score, class, in input pixels; rows after the last
  detection are zeros (nms=True) or low-score top-k picks (end-to-end): both fall under the
  confidence threshold. No NMS of ours: the graph's is the model's own.
- "end2end-seg": `export(nms=True)` of a segment model: [B, max_det, 6+nm] plus the prototypes.
- "yolov5": [B, N, 5+nc] = cx, cy, w, h, objectness, nc class scores; score = obj * class.

Thresholds as Ultralytics' predict: a candidate is kept when its score is strictly greater
than `conf` (default 0.25, Ultralytics' own); class-aware NMS drops a box whose IoU with a
kept box of the same class is greater than `iou` (default 0.7, Ultralytics' predict default);
at most `max_det` (300) are kept, best first. The rules' per-class minimum scores are
separate and later: `conf` is only the floor below which a candidate is not worth decoding,
so it must not exceed the smallest of them (`DetectionRules.score_floor`).

Masks: the prototype resolution (a quarter of the input per side), over the whole
letterboxed input, cropped to the box (as Ultralytics' `process_mask`: pixel column c counts
when x1 <= c < x2 in prototype pixels) and to the part of the input that is frame, not
padding; a pixel is set when coefficients @ prototypes > 0, which is sigmoid(...) > 0.5
without the exponentials. They are not resized to the frame: a 12 MP bool mask per
detection would cost more than the model; the rules need only each mask's area, computed
here in frame pixels (set pixels x the frame area one prototype pixel covers), and
`Detections.mask_in_frame` resizes one mask when a person wants to see it.

Nothing non-finite passes: a NaN in a score column would compare False with every threshold
and quietly become "no defect", so any NaN or inf in an output read is an InferenceError.

Timing (`timeit`, best of 5, on the 2-core dev VM shared with other work, so +-50%; numpy
2.4, float32 outputs shaped like a real head: background scores under 0.05, 20 objects each
seen by 8 neighbouring candidates, ~160 candidates above conf, 40 kept): yolov8 decode of an
8400-candidate output (640 px input) 0.4-0.9 ms with 1 class, 0.6-0.8 ms with 80; 2100
candidates (320 px) 0.35-0.55 ms; an 8400-candidate output through a 320 px letterbox
0.35-0.85 ms; yolov8-seg (80 classes, 32x160x160 prototypes, 40 detections) 1.5-2.8 ms;
end2end 0.03 ms; NMS of 300 overlapping same-class boxes 1.4-2.0 ms. A head gone wrong,
every one of 8400 candidates above conf, costs 65-90 ms (the streaming NMS path, 300 kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import cv2
import numpy as np

from plcbridge.inference.errors import InferenceError
from plcbridge.inference.letterbox import Letterbox

Layout = Literal["yolov8", "yolov8-seg", "end2end", "end2end-seg", "yolov5"]
LAYOUTS: tuple[Layout, ...] = ("yolov8", "yolov8-seg", "end2end", "end2end-seg", "yolov5")
SEGMENT_LAYOUTS: frozenset[str] = frozenset({"yolov8-seg", "end2end-seg"})

DEFAULT_CONF = 0.25
DEFAULT_IOU = 0.7
DEFAULT_MAX_DET = 300
MAX_NMS = 30000  # candidates into NMS at most, best first (Ultralytics' max_nms)
NMS_MATRIX_MAX = 1024  # up to this many candidates, NMS precomputes all pairwise IoUs (8 MiB of float64)


@dataclass(frozen=True)
class Detections:
    """Decoded detections of one frame, best score first.

    `boxes` (N, 4) float64 x1, y1, x2, y2 in frame pixels (clipped to the frame); `scores`
    (N,) float64 in [0, 1]; `classes` (N,) int64 class indices. Segmentation only: `masks`
    (N, mh, mw) bool at the prototype resolution over the letterboxed model input (see the
    module docstring; `mask_in_frame` maps one to the frame) and `mask_areas` (N,) float64,
    each mask's area in frame pixels. `letterbox` is the geometry the boxes were mapped back
    with."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray | None = None
    mask_areas: np.ndarray | None = None
    letterbox: Letterbox | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def box_areas(self) -> np.ndarray:
        """(N,) box areas in frame pixels."""
        return (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])

    @property
    def areas(self) -> np.ndarray:
        """(N,) the area a rule compares: the mask's for segmentation, else the box's (frame pixels)."""
        return self.mask_areas if self.mask_areas is not None else self.box_areas

    @property
    def lengths(self) -> np.ndarray:
        """(N,) the longer side of each box, in frame pixels."""
        return np.maximum(self.boxes[:, 2] - self.boxes[:, 0], self.boxes[:, 3] - self.boxes[:, 1])

    @property
    def centres(self) -> np.ndarray:
        """(N, 2) box centres (x, y) in frame pixels."""
        return (self.boxes[:, :2] + self.boxes[:, 2:]) / 2.0

    def mask_in_frame(self, i: int) -> np.ndarray:
        """Mask `i` as an (h, w) bool image of the frame: for showing, not for the verdict (slow on big frames)."""
        if self.masks is None or self.letterbox is None:
            raise ValueError("these detections have no masks")
        lb = self.letterbox
        full = cv2.resize(self.masks[i].astype(np.uint8), lb.input_size, interpolation=cv2.INTER_NEAREST)
        x1, y1, x2, y2 = lb.content_box
        return cv2.resize(full[y1:y2, x1:x2], lb.frame_size, interpolation=cv2.INTER_NEAREST).astype(bool)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1, y1, x2, y2 box with each of (M, 4) boxes, as array operations; 0 where
    the union is empty."""
    ix1 = np.maximum(boxes[:, 0], box[0])
    iy1 = np.maximum(boxes[:, 1], box[1])
    ix2 = np.minimum(boxes[:, 2], box[2])
    iy2 = np.minimum(boxes[:, 3], box[3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float = DEFAULT_IOU,
        max_det: int = DEFAULT_MAX_DET) -> np.ndarray:
    """Greedy class-aware NMS: indices of the kept boxes, best score first (ties: lower index
    first). A box is dropped when its IoU with a kept box of the same class is > `iou`, as
    torchvision.ops.nms. The Python loop runs once per KEPT box (at most `max_det`), never
    over the candidates: up to NMS_MATRIX_MAX candidates, each step reads one row of a
    precomputed "suppresses" matrix (3 numpy calls); beyond that (a model gone wrong, with
    thousands of candidates above conf), each step computes one IoU of the kept box against
    all the boxes still in play, so memory stays O(candidates)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    b = np.asarray(boxes, np.float64)[order]
    c = np.asarray(classes)[order]
    keep: list[int] = []
    alive = np.arange(order.size)
    if order.size <= NMS_MATRIX_MAX:
        x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
        inter = (np.clip(np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1), 0, None)
                 * np.clip(np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1), 0, None))
        area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        union = area[:, None] + area - inter
        ious = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        suppresses = (ious > iou) & (c[:, None] == c)
        while alive.size and len(keep) < max_det:
            i = int(alive[0])
            keep.append(i)
            rest = alive[1:]
            alive = rest[~suppresses[i, rest]]
    else:
        while alive.size and len(keep) < max_det:
            i = int(alive[0])
            keep.append(i)
            rest = alive[1:]
            alive = rest[~((c[rest] == c[i]) & (box_iou(b[i], b[rest]) > iou))]
    return order[np.asarray(keep, dtype=np.int64)]


def _check_settings(conf: float, iou: float, max_det: int) -> None:
    """Settings come from a validated manifest; this guards direct callers (a negative `conf`
    would let the zero rows of an in-graph NMS output through as detections)."""
    if not (0.0 <= conf < 1.0 and 0.0 <= iou <= 1.0 and max_det >= 1):
        raise ValueError(f"need 0 <= conf < 1, 0 <= iou <= 1 and max_det >= 1, got conf={conf}, iou={iou}, max_det={max_det}")


def _first_image(out: object, what: str, rank: int = 3) -> np.ndarray:
    """Batch index 0 of a [B, ...] output, checked for rank and finiteness."""
    a = np.asarray(out)
    if a.ndim != rank or a.shape[0] < 1 or a.size == 0:
        raise InferenceError(f"{what}: expected a non-empty array of rank {rank} (batch first), got shape {a.shape}")
    a = a[0]
    if not np.issubdtype(a.dtype, np.floating):
        raise InferenceError(f"{what}: expected floating-point values, got {a.dtype}")
    # min and max propagate NaN, and +inf/-inf show in one of them: two fast reductions
    # instead of an isfinite() array of the whole output.
    if not (np.isfinite(a.min()) and np.isfinite(a.max())):
        raise InferenceError(f"{what}: output not finite (NaN or inf)")
    return a


def _xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    xy, half = xywh[:, :2], xywh[:, 2:4] / 2.0
    return np.concatenate([xy - half, xy + half], axis=1)


def _best_class(cls_scores: np.ndarray, conf: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidate indices, their best score, their class) of (nc, N) class scores; max over
    all classes first (a fast reduction), argmax only over the few candidates above `conf`."""
    best = cls_scores.max(axis=0)
    cand = np.flatnonzero(best > conf)
    if cand.size > MAX_NMS:
        cand = cand[np.argsort(-best[cand], kind="stable")[:MAX_NMS]]
    classes = cls_scores[:, cand].argmax(axis=0) if cls_scores.shape[0] > 1 else np.zeros(cand.size, np.int64)
    return cand, best[cand].astype(np.float64), classes.astype(np.int64)


def _masks(coeffs: np.ndarray, proto: np.ndarray, boxes_in: np.ndarray, lb: Letterbox) -> tuple[np.ndarray, np.ndarray]:
    """(K, mh, mw) bool masks of K detections and their areas in frame pixels (module docstring).

    One small matmul per detection, over its crop window only: the pixels outside the window
    are cleared anyway, and a defect's window is a few hundred prototype pixels where the
    whole (K x nm) @ (nm x mh*mw) product would be 33 M multiply-adds for 40 detections at
    640 px (~4.5 ms on the dev VM, against ~0.3 ms this way). The loop is over the kept
    detections (at most max_det), never over pixels."""
    nm, mh, mw = proto.shape
    k = coeffs.shape[0]
    masks = np.zeros((k, mh, mw), bool)
    counts = np.zeros(k, np.int64)
    in_w, in_h = lb.input_size
    fx, fy = mw / in_w, mh / in_h
    cx1, cy1, cx2, cy2 = lb.content_box
    # Prototype column c is inside when x1 <= c < x2 (Ultralytics' crop_mask): c in [ceil(x1), ceil(x2)).
    xa = np.clip(np.ceil(np.maximum(boxes_in[:, 0], cx1) * fx), 0, mw).astype(np.int64)
    xb = np.clip(np.ceil(np.minimum(boxes_in[:, 2], cx2) * fx), 0, mw).astype(np.int64)
    ya = np.clip(np.ceil(np.maximum(boxes_in[:, 1], cy1) * fy), 0, mh).astype(np.int64)
    yb = np.clip(np.ceil(np.minimum(boxes_in[:, 3], cy2) * fy), 0, mh).astype(np.int64)
    weights = coeffs.astype(np.float32)
    for j in range(k):
        if xa[j] < xb[j] and ya[j] < yb[j]:
            window = np.tensordot(weights[j], proto[:, ya[j]:yb[j], xa[j]:xb[j]], axes=1) > 0
            masks[j, ya[j]:yb[j], xa[j]:xb[j]] = window
            counts[j] = np.count_nonzero(window)
    sx, sy = lb.content_scale
    frame_px_per_proto_px = (1.0 / fx / sx) * (1.0 / fy / sy)
    return masks, counts.astype(np.float64) * frame_px_per_proto_px


def _proto(out: object, what: str, nm: int | None = None) -> np.ndarray:
    p = _first_image(out, what, rank=4)
    if nm is not None and p.shape[0] != nm:
        raise InferenceError(f"{what}: {p.shape[0]} prototypes, the detections carry {nm} mask coefficients")
    if p.shape[0] < 1:
        raise InferenceError(f"{what}: no prototypes, shape [B, {', '.join(map(str, p.shape))}]")
    return p


def _finish(boxes_in: np.ndarray, scores: np.ndarray, classes: np.ndarray, lb: Letterbox,
            coeffs: np.ndarray | None = None, proto: np.ndarray | None = None) -> Detections:
    boxes = lb.boxes_to_frame(boxes_in)
    # A box wholly in the letterbox's padding clips to nothing: it saw no pixel of the frame
    # (a model can react to the grey border), so it is no finding about the part.
    inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not inside.all():
        boxes, boxes_in, scores, classes = boxes[inside], boxes_in[inside], scores[inside], classes[inside]
        coeffs = coeffs[inside] if coeffs is not None else None
    masks = areas = None
    if proto is not None and coeffs is not None:
        masks, areas = _masks(coeffs, proto, boxes_in, lb)
    return Detections(boxes, scores, classes, masks, areas, lb)


def decode_yolov8(output0: object, letterbox: Letterbox, *, conf: float = DEFAULT_CONF, iou: float = DEFAULT_IOU,
                  max_det: int = DEFAULT_MAX_DET, proto: object = None) -> Detections:
    """Ultralytics v8/11 detect ([B, 4+nc, N]), or segment when `proto` ([B, nm, mh, mw]) is given
    ([B, 4+nc+nm, N]): threshold, our class-aware NMS, boxes back to the frame."""
    _check_settings(conf, iou, max_det)
    protos = _proto(proto, "yolov8-seg output1 (prototypes)") if proto is not None else None
    nm = protos.shape[0] if protos is not None else 0
    what = "yolov8-seg output0" if protos is not None else "yolov8 output0"
    p = _first_image(output0, what)
    nc = p.shape[0] - 4 - nm
    if nc < 1:
        want = "[B, 4+nc+nm, N]" if nm else "[B, 4+nc, N]"
        raise InferenceError(f"{what}: expected {want} with nc >= 1{f' and nm = {nm}' if nm else ''}, got shape "
                             f"[B, {', '.join(map(str, p.shape))}]")
    cand, scores, classes = _best_class(p[4:4 + nc], conf)
    boxes = _xywh_to_xyxy(p[:4, cand].T.astype(np.float64))
    keep = nms(boxes, scores, classes, iou, max_det)
    coeffs = p[4 + nc:, cand[keep]].T if protos is not None else None
    return _finish(boxes[keep], scores[keep], classes[keep], letterbox, coeffs, protos)


def decode_end2end(output0: object, letterbox: Letterbox, *, conf: float = DEFAULT_CONF,
                   max_det: int = DEFAULT_MAX_DET, proto: object = None) -> Detections:
    """NMS in the graph or an end-to-end head ([B, max_det, 6] x1, y1, x2, y2, score, class;
    [B, max_det, 6+nm] with `proto` for segmentation): threshold, best first, boxes back to the frame."""
    _check_settings(conf, 0.0, max_det)
    protos = _proto(proto, "end2end-seg output1 (prototypes)") if proto is not None else None
    nm = protos.shape[0] if protos is not None else 0
    what = "end2end-seg output0" if protos is not None else "end2end output0"
    p = _first_image(output0, what)
    if p.shape[1] != 6 + nm:
        raise InferenceError(f"{what}: expected [B, max_det, {6 + nm}] (x1, y1, x2, y2, score, class"
                             f"{f', {nm} mask coefficients' if nm else ''}), got shape [B, {', '.join(map(str, p.shape))}]")
    rows = np.flatnonzero(p[:, 4] > conf)
    rows = rows[np.argsort(-p[rows, 4], kind="stable")[:max_det]]
    cls = p[rows, 5]
    if np.any(cls < 0) or np.any(cls != np.round(cls)):
        raise InferenceError(f"{what}: class column holds {cls[(cls < 0) | (cls != np.round(cls))][:3].tolist()}, "
                             "not class indices: is this output really [x1, y1, x2, y2, score, class]?")
    coeffs = p[rows, 6:] if protos is not None else None
    return _finish(p[rows, :4].astype(np.float64), p[rows, 4].astype(np.float64), cls.astype(np.int64),
                   letterbox, coeffs, protos)


def decode_yolov5(output0: object, letterbox: Letterbox, *, conf: float = DEFAULT_CONF, iou: float = DEFAULT_IOU,
                  max_det: int = DEFAULT_MAX_DET) -> Detections:
    """YOLOv5 ([B, N, 5+nc]: cx, cy, w, h, objectness, class scores): score = obj * best class
    score, threshold, our class-aware NMS, boxes back to the frame."""
    _check_settings(conf, iou, max_det)
    p = _first_image(output0, "yolov5 output0")
    nc = p.shape[1] - 5
    if nc < 1:
        raise InferenceError(f"yolov5 output0: expected [B, N, 5+nc] with nc >= 1, got shape [B, {', '.join(map(str, p.shape))}]")
    # obj * cls <= obj for class scores in [0, 1]: objectness alone picks the few candidates
    # (as YOLOv5's own NMS does) before any product is formed.
    pre = np.flatnonzero(p[:, 4] > conf)
    products = p[pre, 5:] * p[pre, 4:5]
    classes = products.argmax(axis=1) if nc > 1 else np.zeros(pre.size, np.int64)
    scores = products[np.arange(pre.size), classes].astype(np.float64)
    ok = scores > conf
    pre, scores, classes = pre[ok], scores[ok], classes[ok].astype(np.int64)
    if pre.size > MAX_NMS:
        top = np.argsort(-scores, kind="stable")[:MAX_NMS]
        pre, scores, classes = pre[top], scores[top], classes[top]
    boxes = _xywh_to_xyxy(p[pre, :4].astype(np.float64))
    keep = nms(boxes, scores, classes, iou, max_det)
    return _finish(boxes[keep], scores[keep], classes[keep], letterbox)


def decode(outputs: Sequence[object], layout: Layout, letterbox: Letterbox, *, conf: float = DEFAULT_CONF,
           iou: float = DEFAULT_IOU, max_det: int = DEFAULT_MAX_DET) -> Detections:
    """The model's outputs, in the graph's order (output0, then the prototypes for the
    segmentation layouts), as Detections in frame pixels. Problems with the outputs raise
    InferenceError (a model that returns garbage never passes a part)."""
    if isinstance(outputs, np.ndarray):  # indexing it would silently take batch 0 as "output0"
        raise TypeError("outputs: the list of the model's output arrays (as session.run returns), not one array")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown detection layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    want = 2 if layout in SEGMENT_LAYOUTS else 1
    if len(outputs) < want:
        raise InferenceError(f"layout {layout!r} needs {want} output(s), the model gave {len(outputs)}")
    if layout == "yolov8":
        return decode_yolov8(outputs[0], letterbox, conf=conf, iou=iou, max_det=max_det)
    if layout == "yolov8-seg":
        return decode_yolov8(outputs[0], letterbox, conf=conf, iou=iou, max_det=max_det, proto=outputs[1])
    if layout == "end2end":
        return decode_end2end(outputs[0], letterbox, conf=conf, max_det=max_det)
    if layout == "end2end-seg":
        return decode_end2end(outputs[0], letterbox, conf=conf, max_det=max_det, proto=outputs[1])
    return decode_yolov5(outputs[0], letterbox, conf=conf, iou=iou, max_det=max_det)
