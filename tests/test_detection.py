"""YOLO output decoding: every layout into the same Detections, in frame pixels, with
hand-computed boxes, scores and mask areas."""

from __future__ import annotations

import numpy as np
import pytest

from plcbridge.inference.detection import Detections, box_iou, decode, decode_end2end, decode_yolov5, decode_yolov8, nms
from plcbridge.inference.errors import InferenceError
from plcbridge.inference.letterbox import Letterbox
from plcbridge.inference.rules import DetectionRules, judge

# A 640x480 frame into a 640x640 input: scale 1, 80 rows of padding on top (and bottom).
LB = Letterbox.fit((480, 640, 3), (640, 640))
N = 8400


def v8_output(cands: list[tuple[float, float, float, float, int, float]], nc: int, n: int = N, batch: int = 1,
              extra_rows: int = 0) -> np.ndarray:
    """[batch, 4+nc+extra_rows, n] float32: candidate i = (cx, cy, w, h, class, score) in
    column i of image 0, every other column all zeros (no class above any threshold)."""
    out = np.zeros((batch, 4 + nc + extra_rows, n), np.float32)
    for i, (cx, cy, w, h, c, s) in enumerate(cands):
        out[0, :4, i] = (cx, cy, w, h)
        out[0, 4 + c, i] = s
    return out


def test_yolov8_boxes_scores_classes_in_frame_pixels():
    # Input box cx 100, cy 180, 40x20 -> input x1y1x2y2 (80, 170, 120, 190) -> frame (80, 90, 120, 110).
    out = v8_output([(100, 180, 40, 20, 2, 0.9), (400, 300, 10, 30, 0, 0.5)], nc=3)
    det = decode_yolov8(out, LB)
    assert det.boxes.tolist() == [[80, 90, 120, 110], [395, 205, 405, 235]]
    assert det.scores.tolist() == pytest.approx([0.9, 0.5])
    assert det.classes.tolist() == [2, 0] and det.classes.dtype == np.int64
    assert det.masks is None and det.mask_areas is None
    assert det.box_areas.tolist() == [800, 300] and det.areas.tolist() == [800, 300]
    assert det.lengths.tolist() == [40, 30]
    assert det.centres.tolist() == [[100, 100], [400, 220]]


def test_yolov8_takes_the_best_class_of_each_candidate():
    out = v8_output([(100, 180, 40, 20, 0, 0.4)], nc=3)
    out[0, 4 + 1, 0] = 0.7  # the same box scores 0.7 for class 1
    det = decode_yolov8(out, LB)
    assert det.classes.tolist() == [1] and det.scores.tolist() == pytest.approx([0.7])


def test_confidence_is_strictly_greater_than_conf_as_ultralytics():
    out = v8_output([(100, 180, 40, 20, 0, 0.25), (300, 300, 40, 20, 0, 0.2501)], nc=1)
    det = decode_yolov8(out, LB)
    assert det.centres.tolist() == [[300, 220]]
    assert len(decode_yolov8(out, LB, conf=0.3)) == 0


def test_nms_is_class_aware_and_uses_the_iou_threshold():
    # A: 100x100 at (0..100); B shifted by 10: IoU 90*100 / (2*10000 - 9000) = 0.818; C shifted by 40: IoU 60/140 = 0.43.
    a, b, c = (50, 150, 100, 100), (60, 150, 100, 100), (90, 150, 100, 100)
    out = v8_output([(*a, 0, 0.9), (*b, 0, 0.8), (*c, 0, 0.7), (*b, 1, 0.6)], nc=2)
    det = decode_yolov8(out, LB, iou=0.7)
    # B (same class, IoU 0.82 > 0.7) is suppressed; C (0.43) stays; class 1's box over B stays (other class).
    assert det.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert det.classes.tolist() == [0, 0, 1]
    assert len(decode_yolov8(out, LB, iou=0.4)) == 2  # now C (0.43) goes too
    assert len(decode_yolov8(out, LB, iou=0.85)) == 4  # and nothing is suppressed


def test_max_det_keeps_the_best():
    cands = [(50 + 60 * i, 200, 20, 20, 0, 0.3 + 0.05 * i) for i in range(8)]
    det = decode_yolov8(v8_output(cands, nc=1), LB, max_det=3)
    assert det.scores.tolist() == pytest.approx([0.65, 0.6, 0.55])


def test_only_batch_index_0_is_read():
    out = v8_output([(100, 180, 40, 20, 0, 0.9)], nc=1, batch=2)
    out[1, :4, :5] = 300.0
    out[1, 4, :5] = 0.99
    det = decode_yolov8(out, LB)
    assert det.boxes.tolist() == [[80, 90, 120, 110]]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [(0, 4, 5000), (0, 0, 3)])
def test_a_non_finite_output_is_an_inference_error_not_an_empty_result(bad, where):
    out = v8_output([(100, 180, 40, 20, 0, 0.9)], nc=1)
    out[where] = bad
    with pytest.raises(InferenceError, match="not finite"):
        decode_yolov8(out, LB)


@pytest.mark.parametrize("shape", [(1, 4, 8400), (1, 84), (0, 84, 8400)])
def test_a_yolov8_output_of_the_wrong_shape_is_an_inference_error(shape):
    with pytest.raises(InferenceError, match="yolov8 output0"):
        decode_yolov8(np.zeros(shape, np.float32), LB)


def test_box_iou_by_hand():
    boxes = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 10]], np.float64)
    iou = box_iou(np.array([0.0, 0.0, 10.0, 10.0]), boxes)
    assert iou.tolist() == pytest.approx([50 / 150, 1.0, 0.0, 0.0])
    assert box_iou(np.array([3.0, 3.0, 3.0, 3.0]), np.array([[3.0, 3.0, 3.0, 3.0]])).tolist() == [0.0]  # empty union


def test_nms_direct_tie_order_and_threshold():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 110, 110]], np.float64)
    scores = np.array([0.5, 0.5, 0.9])
    classes = np.zeros(3, np.int64)
    assert nms(boxes, scores, classes, iou=0.3).tolist() == [2, 0]  # IoU 1/3 > 0.3: the later of the tie goes
    assert nms(boxes, scores, classes, iou=0.34).tolist() == [2, 0, 1]
    assert nms(boxes, scores, np.array([0, 1, 0]), iou=0.3).tolist() == [2, 0, 1]  # other class: kept
    assert nms(boxes, scores, classes, iou=0.34, max_det=1).tolist() == [2]
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)).tolist() == []


def test_nms_matrix_and_streaming_paths_agree(monkeypatch):
    """Up to NMS_MATRIX_MAX candidates NMS precomputes every IoU; beyond, it streams one row
    per kept box: the same boxes either way (300 overlapping boxes of 3 classes)."""
    import plcbridge.inference.detection as detection

    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 500, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(20, 120, (300, 2))], axis=1)
    scores, classes = rng.uniform(0, 1, 300), rng.integers(0, 3, 300)
    matrix = nms(boxes, scores, classes, iou=0.5)
    monkeypatch.setattr(detection, "NMS_MATRIX_MAX", 10)
    streamed = nms(boxes, scores, classes, iou=0.5)
    assert 20 < len(matrix) < 300 and matrix.tolist() == streamed.tolist()


def end2end_output(rows: list[tuple[float, float, float, float, float, int]], max_det: int = 300, nm: int = 0) -> np.ndarray:
    out = np.zeros((1, max_det, 6 + nm), np.float32)
    for i, r in enumerate(rows):
        out[0, i, :6] = r
    return out


def test_end2end_rows_are_thresholded_and_zero_padding_is_ignored():
    out = end2end_output([(80, 170, 120, 190, 0.9, 3), (10, 90, 20, 100, 0.2, 1), (0, 80, 640, 560, 0.6, 0)])
    det = decode_end2end(out, LB)
    assert det.boxes.tolist() == [[80, 90, 120, 110], [0, 0, 640, 480]]
    assert det.scores.tolist() == pytest.approx([0.9, 0.6])
    assert det.classes.tolist() == [3, 0]
    assert len(decode_end2end(out, LB, conf=0.0)) == 3  # the 297 zero rows never count, even at conf 0
    assert len(decode_end2end(out, LB, max_det=1)) == 1


def test_end2end_rows_come_out_best_first():
    out = end2end_output([(0, 80, 10, 90, 0.3, 0), (0, 80, 10, 90, 0.8, 1), (0, 80, 10, 90, 0.5, 2)])
    assert decode_end2end(out, LB).classes.tolist() == [1, 2, 0]


def test_end2end_class_column_must_hold_class_indices():
    with pytest.raises(InferenceError, match="class column"):
        decode_end2end(end2end_output([(80, 170, 120, 190, 0.9, 0)]) + np.array([0, 0, 0, 0, 0, 0.5], np.float32), LB)
    with pytest.raises(InferenceError, match="max_det, 6"):
        decode_end2end(np.zeros((1, 300, 7), np.float32), LB)


def test_raw_head_with_our_nms_and_in_graph_nms_give_the_same_detections_and_verdict():
    """Three objects, each seen by several neighbouring candidates (duplicates shifted by 1-3
    px, IoU > 0.75, lower scores), among 8400 candidates of background noise below conf.
    The in-graph output holds what Ultralytics' NMS keeps: each object's best candidate,
    x1y1x2y2, zero-padded to 300 rows. Both decode to the same boxes and the same verdict."""
    rng = np.random.default_rng(7)
    nc = 4
    objects = [(120, 200, 60, 40, 1, 0.91), (400, 300, 30, 90, 3, 0.62), (500, 520, 40, 40, 1, 0.33)]
    cands = []
    for cx, cy, w, h, c, s in objects:
        cands.append((cx, cy, w, h, c, s))
        for k in range(1, 4):
            cands.append((cx + k, cy + k, w, h, c, s - 0.05 * k))
    raw = v8_output(cands, nc=nc)
    raw[0, 4:, len(cands):] = rng.uniform(0, 0.2, (nc, N - len(cands)))  # noise under conf 0.25
    raw[0, :4, len(cands):] = rng.uniform(10, 600, (4, N - len(cands)))
    rows = [(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, s, c) for cx, cy, w, h, c, s in objects]
    graph = end2end_output(rows)

    a = decode([raw], "yolov8", LB)
    b = decode([graph], "end2end", LB)
    assert len(a) == len(b) == 3
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    assert a.classes.tolist() == b.classes.tolist() == [1, 3, 1]
    for rules in (DetectionRules(), DetectionRules(max_count=2), DetectionRules.model_validate({"classes": {"1": {"min_score": 0.95}}}),
                  DetectionRules.model_validate({"classes": {"3": {"ignore": True}}, "default": {"min_score": 0.5}})):
        ja, jb = judge(a, rules), judge(b, rules)
        assert (ja.label, ja.score, ja.findings.count, ja.findings.worst_class) == \
            (jb.label, pytest.approx(jb.score), jb.findings.count, jb.findings.worst_class)
    assert [judge(a, r).label for r in (DetectionRules(), DetectionRules(max_count=3))] == ["fail", "pass"]


def test_yolov5_score_is_objectness_times_class():
    out = np.zeros((1, 100, 5 + 2), np.float32)
    out[0, 0] = (100, 180, 40, 20, 0.9, 0.5, 0.1)  # 0.9 * 0.5 = 0.45, class 0
    out[0, 1] = (300, 300, 20, 20, 0.3, 0.2, 0.9)  # 0.3 * 0.9 = 0.27, class 1
    out[0, 2] = (500, 300, 20, 20, 0.5, 0.4, 0.3)  # 0.5 * 0.4 = 0.20 < 0.25: dropped
    out[0, 3] = (500, 400, 20, 20, 0.2, 1.0, 1.0)  # objectness 0.2 alone is under conf
    det = decode_yolov5(out, LB)
    assert det.scores.tolist() == pytest.approx([0.45, 0.27])
    assert det.classes.tolist() == [0, 1]
    assert det.boxes.tolist() == [[80, 90, 120, 110], [290, 210, 310, 230]]


def test_yolov5_nms_and_shape():
    out = np.zeros((1, 10, 6), np.float32)
    out[0, 0] = (100, 180, 40, 20, 0.9, 1.0)
    out[0, 1] = (101, 180, 40, 20, 0.8, 1.0)  # IoU 39/41 with the first: suppressed
    assert len(decode_yolov5(out, LB)) == 1
    with pytest.raises(InferenceError, match=r"5\+nc"):
        decode_yolov5(np.zeros((1, 10, 5), np.float32), LB)


# Segmentation: 2 prototypes at 160x160 (a quarter of 640): prototype 0 is +1 everywhere, 1 is -1.
PROTO = np.stack([np.ones((160, 160)), -np.ones((160, 160))])[None].astype(np.float32)


def seg_output(cands: list[tuple[float, float, float, float, int, float, tuple[float, float]]], nc: int = 2) -> np.ndarray:
    out = v8_output([c[:6] for c in cands], nc=nc, extra_rows=2)
    for i, c in enumerate(cands):
        out[0, 4 + nc:, i] = c[6]
    return out


def test_segment_mask_is_the_box_crop_of_the_positive_prototype_and_its_area_is_in_frame_pixels():
    # Box input (80, 170, 120, 190) -> prototype columns 20..29, rows 42.5..47.5 -> rows 43..47:
    # 10 x 5 = 50 prototype pixels of 4x4 input pixels each, scale 1: 800 frame px (the box's own area).
    out = seg_output([(100, 180, 40, 20, 0, 0.9, (1.0, 0.0)), (300, 300, 40, 20, 1, 0.8, (0.0, 1.0))])
    det = decode([out, PROTO], "yolov8-seg", LB)
    assert det.masks is not None and det.mask_areas is not None
    assert det.masks.shape == (2, 160, 160) and det.masks.dtype == bool
    assert det.mask_areas.tolist() == [800.0, 0.0]  # the second's coefficients select -1: nothing set
    ys, xs = np.nonzero(det.masks[0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (20, 29, 43, 47)
    assert det.areas.tolist() == [800.0, 0.0]  # rules see the mask area, not the box's 800 and 800


def test_segment_mask_area_scales_with_the_frame_and_drops_padding():
    lb = Letterbox.fit((960, 1280, 3), (640, 640))  # scale 0.5, padding 80 rows top and bottom
    # Box input (80, 60, 120, 100) reaches 20 rows into the top padding: only rows 80..100 (prototype 20..24) count.
    out = seg_output([(100, 80, 40, 40, 0, 0.9, (1.0, 0.0))])
    det = decode([out, PROTO], "yolov8-seg", lb)
    assert det.boxes.tolist() == [[160, 0, 240, 40]]
    assert det.mask_areas.tolist() == [10 * 5 * 16 * 4]  # 50 prototype px x 16 input px x 4 frame px per input px
    assert det.mask_areas[0] == det.box_areas[0]


def test_segment_mask_follows_the_prototypes():
    proto = PROTO.copy()
    proto[0, 0, :, :25] = -1.0  # prototype 0 negative left of column 25: the box's columns 20..24 drop out
    out = seg_output([(100, 180, 40, 20, 0, 0.9, (1.0, 0.0))])
    det = decode([out, proto], "yolov8-seg", LB)
    assert det.mask_areas.tolist() == [400.0]
    frame_mask = det.mask_in_frame(0)
    assert frame_mask.shape == (480, 640)
    ys, xs = np.nonzero(frame_mask)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (100, 120, 92, 112)


def test_end2end_segment_gives_the_same_masks_as_the_raw_head():
    raw = seg_output([(100, 180, 40, 20, 0, 0.9, (1.0, 0.0))])
    graph = end2end_output([(80, 170, 120, 190, 0.9, 0)], nm=2)
    graph[0, 0, 6:] = (1.0, 0.0)
    a = decode([raw, PROTO], "yolov8-seg", LB)
    b = decode([graph, PROTO], "end2end-seg", LB)
    assert np.array_equal(a.masks, b.masks) and a.mask_areas.tolist() == b.mask_areas.tolist() == [800.0]


def test_segment_shape_problems_are_inference_errors():
    with pytest.raises(InferenceError, match="prototypes"):
        decode([seg_output([]), np.zeros((1, 3, 160, 160), np.float32)[:, :0]], "yolov8-seg", LB)
    with pytest.raises(InferenceError, match="2 output"):
        decode([seg_output([])], "yolov8-seg", LB)
    with pytest.raises(InferenceError, match="max_det, 8"):
        decode([end2end_output([], nm=3), PROTO], "end2end-seg", LB)
    bad = PROTO.copy()
    bad[0, 1, 2, 3] = np.nan
    with pytest.raises(InferenceError, match="not finite"):
        decode([seg_output([]), bad], "yolov8-seg", LB)


def test_decode_refuses_an_unknown_layout_and_bad_settings():
    with pytest.raises(ValueError, match="unknown detection layout"):
        decode([np.zeros((1, 5, 10), np.float32)], "yolov9", LB)
    with pytest.raises(ValueError, match="conf"):
        decode([end2end_output([])], "end2end", LB, conf=-0.1)


def test_decode_wants_the_list_of_outputs_not_one_array():
    with pytest.raises(TypeError, match="list"):
        decode(end2end_output([]), "end2end", LB)


def test_mask_in_frame_needs_masks():
    det = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="no masks"):
        det.mask_in_frame(0)


def test_segment_masks_match_the_full_product_cropped_as_ultralytics_process_mask():
    """Random prototypes, coefficients and fractional boxes (some into the padding): the
    per-window masks equal sigmoid(coeffs @ protos) > 0.5 over the whole prototype grid,
    cropped to x1 <= column < x2, y1 <= row < y2 (in prototype pixels) and to the frame's part."""
    rng = np.random.default_rng(11)
    lb = Letterbox.fit((700, 1000, 3), (640, 640))  # content rows 96..544 of 640
    proto = rng.normal(0, 1, (1, 32, 160, 160)).astype(np.float32)
    cands = []
    while len(cands) < 25:
        x1, y1 = rng.uniform(0, 600), rng.uniform(0, 600)
        w, h = rng.uniform(1, 200), rng.uniform(1, 200)
        if y1 + h <= 96 or y1 >= 544:  # wholly in the padding: dropped by the decoder (test below)
            continue
        cands.append((x1 + w / 2, y1 + h / 2, w, h, 0, rng.uniform(0.3, 1.0), tuple(rng.normal(0, 1, 32))))
    out = np.zeros((1, 4 + 1 + 32, 100), np.float32)
    for i, (cx, cy, w, h, c, s, coef) in enumerate(cands):
        out[0, :4, i], out[0, 4, i], out[0, 5:, i] = (cx, cy, w, h), s, coef
    det = decode([out, proto], "yolov8-seg", lb, iou=1.0)  # iou 1: NMS keeps all 25
    assert len(det) == 25
    # The reference, computed the direct way; the decoder's boxes map back to input pixels for the crop.
    boxes_in = lb.boxes_to_input(det.boxes)
    order = [int(np.flatnonzero(np.isclose(out[0, 4, :25], s))[0]) for s in det.scores]
    coeffs = out[0, 5:, order]  # (25, 32): numpy puts the advanced-index axis first
    sig = 1 / (1 + np.exp(-(coeffs @ proto[0].reshape(32, -1)).reshape(-1, 160, 160)))
    top, bottom = lb.content_box[1] / 4, lb.content_box[3] / 4
    cols, rows = np.arange(160), np.arange(160)
    x1, y1 = boxes_in[:, 0:1] / 4, np.maximum(boxes_in[:, 1:2] / 4, top)
    x2, y2 = boxes_in[:, 2:3] / 4, np.minimum(boxes_in[:, 3:4] / 4, bottom)
    crop = ((rows >= y1) & (rows < y2))[:, :, None] & ((cols >= x1) & (cols < x2))[:, None, :]
    want = (sig > 0.5) & crop
    assert np.array_equal(det.masks, want)
    assert det.mask_areas.tolist() == pytest.approx((want.sum(axis=(1, 2)) * 16 / lb.scale ** 2).tolist(), rel=1e-3)


def test_a_box_wholly_in_the_letterbox_padding_is_no_detection():
    """A model may react to the grey border; a box that covers no frame pixel says nothing
    about the part. One box in the top padding, one straddling it: only the second stays."""
    lb = Letterbox.fit((480, 640, 3), (320, 320))  # 40 px of padding top and bottom
    out = np.zeros((1, 4 + 1, 2), np.float32)
    out[0, :, 0] = (100, 20, 30, 20, 0.9)  # y 10..30: padding only
    out[0, :, 1] = (200, 40, 30, 20, 0.8)  # y 30..50: 10 px into the frame
    det = decode([out], "yolov8", lb)
    assert len(det) == 1 and det.scores[0] == pytest.approx(0.8)
    assert det.boxes[0][1] == pytest.approx(0) and det.boxes[0][3] == pytest.approx(20)
