"""The pictures of a decision (plcbridge/overlay.py): drawn on a copy, boxes counted or not in
two colours with their labels, segmentation masks and the anomalous region outlined, sizes
that follow the picture, and the findings in words. What drawing costs is a benchmark, not a
test: `.venv/bin/python tests/bench_overlay.py`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from findings_models import SCRATCH_BOX, WHITE, Judge, detection_manifest, paint

from plcbridge import overlay
from plcbridge.inference.anomaly import decode_anomalib2
from plcbridge.inference.detection import Detections
from plcbridge.inference.letterbox import Letterbox
from plcbridge.inference.rules import AnomalyRules, DetectionRules, describe, judge
from plcbridge.overlay import (
    COUNTED,
    NOT_COUNTED,
    annotate,
    draw_findings,
    findings_summary,
    line_width,
    verdict_lines,
)


def _is(img: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return np.abs(img.astype(int) - np.array(colour)).max(axis=-1) <= tol


def _detections(frame_wh: tuple[int, int], n: int) -> tuple[Detections, dict]:
    """n boxes of 4% of the frame's width on a diagonal, scores falling from 0.95; the rules count
    class 0 only (class 1 ignored): a journal line's findings and the decoded result."""
    w, h = frame_wh
    side = 0.04 * w
    xs = np.linspace(0.05 * w, 0.85 * w, n)
    ys = np.linspace(0.1 * h, 0.85 * h, n)
    boxes = np.stack([xs, ys, xs + side, ys + side], axis=1)
    det = Detections(boxes, np.linspace(0.95, 0.3, n), np.arange(n) % 2, letterbox=Letterbox.fit((h, w), (640, 640)))
    rules = DetectionRules(classes={"1": {"ignore": True}}, max_count=0)
    j = judge(det, rules, ["scratch", "dent"])
    return det, {"result": "FAIL", "score": j.score, "findings": describe(det, j.findings, ["scratch", "dent"])}


def _anomaly(frame_wh: tuple[int, int]) -> tuple[object, dict]:
    """A 64x64 map with one blob (0.9 at its centre) a fifth of the way in; the rules count it."""
    yy, xx = np.mgrid[0:64, 0:64]
    amap = (0.9 * np.exp(-((xx - 13) ** 2 + (yy - 20) ** 2) / 18.0)).astype(np.float32)
    res = decode_anomalib2({"anomaly_map": amap[None, None], "pred_score": np.array([[0.9]], np.float32)},
                           (frame_wh[1], frame_wh[0], 3))
    j = judge(res, AnomalyRules())
    return res, {"result": "FAIL", "score": j.score, "findings": describe(res, j.findings)}


def test_boxes_are_drawn_on_a_copy_counted_red_and_thick_the_others_light_blue() -> None:
    frame = np.zeros((1024, 1280, 3), np.uint8)
    det, fields = _detections((1280, 1024), 6)
    shown = fields["findings"]["detections"]
    assert [d["counted"] for d in shown] == [True, False] * 3
    img = annotate(frame, fields, det)
    assert not frame.any() and img.shape == frame.shape  # the frame itself is never drawn on
    lw = line_width(img)
    assert lw == 3
    for d in shown:
        x, y, w, h = d["box"]
        right = img[y + h // 3:y + 2 * h // 3, x + w]  # the box's right edge, clear of its label
        assert _is(right, COUNTED if d["counted"] else NOT_COUNTED).all(), d
        thick = _is(img[y + h // 2, x + w - 4:x + w + 5], COUNTED if d["counted"] else NOT_COUNTED).sum()
        assert (thick >= lw - 1) if d["counted"] else (thick <= max(1, lw // 2) + 1), (d, thick)
        label = img[max(0, y - 12):y - 2, x + 2:x + 20]  # above the box, in the box's colour
        assert _is(label, COUNTED if d["counted"] else NOT_COUNTED).mean() > 0.3, d  # (the text in it)
    # The band names the verdict and the findings; the rest of the frame is untouched.
    assert verdict_lines(fields)[-1] == "3 defects, worst scratch (3 not counted)"
    assert not img[900:, 1200:].any()


def test_masks_and_the_anomalous_region_are_outlined(tmp_path: Path) -> None:
    judge_ = Judge(detection_manifest(tmp_path / "seg", segment=True))
    try:
        frame = np.zeros((320, 320, 3), np.uint8)
        x, y, w, h = SCRATCH_BOX
        paint(frame, [x, y, 2 * w, h], WHITE)  # two cells: two detections, one white blob
        d = judge_.decide(frame)
    finally:
        judge_.close()
    assert d.findings is not None and d.findings["count"] == 2 and d.decoded.masks is not None
    # The masks alone: one red outline around the blob (the union of the two masks), within
    # 4 px of its edge (the masks' resolution is a quarter of the input's), nothing elsewhere.
    img = frame.copy()
    overlay._draw_masks(img, d.decoded, [True, True], 1.0, 1.0)
    ring = np.zeros(frame.shape[:2], bool)
    ring[y - 4:y + h + 4, x - 4:x + 2 * w + 4] = True
    ring[y + 4:y + h - 4, x + 4:x + 2 * w - 4] = False
    red = _is(img, COUNTED)
    assert (red & ring).sum() > 100 and not (red & ~ring).any()
    assert not red[y + 4:y + h - 4, x + w - 2:x + w + 2].any()  # one outline: not between the two cells
    draw_findings(img, d.findings, d.decoded)  # and with the boxes
    assert _is(img[y + 4:y + h - 4, x + 2 * w], COUNTED).all()

    res, fields = _anomaly((1280, 1024))
    frame = np.full((1024, 1280, 3), 100, np.uint8)
    img = annotate(frame, fields, res)
    bx, by, bw, bh = fields["findings"]["box"]
    assert fields["findings"]["area_px"] > 0 and bx > 100 and by > 200
    outline = _is(img, COUNTED, 50)
    assert outline[by - 8:by + bh + 8, bx - 8:bx + bw + 8].sum() > 100  # around the region
    assert not outline[600:, 600:].any() and (img[600:, 600:] == 100).all()  # nothing elsewhere
    assert np.abs(img[by + bh // 2, bx + bw // 2].astype(int) - 100).max() > 20  # the heatmap's tint inside
    assert fields["findings"]["count"] == 1 and findings_summary(fields["findings"]) == \
        f"anomalous area {fields['findings']['area_px']} px"
    # Not counted (below min_area): outlined all the same, in the other colour.
    fields["findings"]["count"] = 0
    img = annotate(frame, fields, res)
    assert _is(img, NOT_COUNTED, 50)[by - 8:by + bh + 8, bx - 8:bx + bw + 8].sum() > 100


def test_without_findings_only_the_verdict_is_drawn() -> None:
    frame = np.zeros((256, 256), np.uint8)  # grey: converted
    img = annotate(frame, {"result": "PASS", "score": 0.1, "frame_seq": 4})
    assert img.shape == (256, 256, 3) and img[:60].any() and not img[120:].any()
    assert findings_summary(None) == "" and verdict_lines({"result": "PASS", "score": 0.1}) == ["PASS  score 0.1000"]
    assert findings_summary({"kind": "detection", "count": 0, "detections": []}) == "no defect counted"
    assert findings_summary({"kind": "anomaly", "count": 0, "score": 0.2}) == "anomaly score 0.2, not counted"
    assert findings_summary({"kind": "anomaly", "count": 0, "area_px": 0, "map_max": 0.3}) == "no anomalous area"
