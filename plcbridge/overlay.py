"""Pictures of a decision: a judged frame with what the model found drawn on a COPY of it,
for the station page's live image and the archive's annotated JPEG (`*.overlay.jpg`).

What is drawn, from the decision's findings (plcbridge.inference.rules.describe: the JSON
of the journal line) and its decoded result (plcbridge.inference.detection.Detections or
plcbridge.inference.anomaly.AnomalyResult):

- detection / segmentation: the boxes the journal line lists (at most
  rules.DESCRIBED_DETECTIONS, the best first; the picture shows what the record says), each
  with its class name and score. A COUNTED defect (one the rules count towards a FAIL) is
  red and drawn thick; one that did not count (an ignored class, below a threshold, outside
  the roi: the note says why) is light blue and thin. Segmentation: the masks of those
  detections outlined, in the same two colours (the union of each group's masks, traced
  once per group at the masks' own resolution and mapped to the picture).
- anomaly: the map (model resolution) laid over the frame as a faint heatmap where it comes
  near the pixel threshold (HEAT_FROM), and the anomalous region (map >= the pixel threshold)
  outlined: red when the rules counted it, light blue when they did not (score below the
  threshold, area below min_area). Only the bounding window of the warm part of the map is
  resized to frame pixels, so a 12 MP frame with a small anomaly costs a small resize.
- a band at the top: the verdict and score, what the decision was about, and the findings in
  a few words; semi-transparent and drawn first, so a box or outline under it stays whole.

Line widths and text sizes follow the picture's size. Everything is OpenCV drawing calls on
arrays (boxes in one polylines call per colour, contours in one drawContours per group);
the only Python loop is over the labels of the described detections (at most 20).

Timing (`annotate`: copy, band and drawing; best of 20 on the 2-core dev VM shared with
other work, OpenCV 5.1, numpy 2.4; `.venv/bin/python tests/bench_overlay.py` prints them):
256x256 0.3-0.5 ms (20 boxes, or an anomaly), 1.2 ms (20 segmentation masks);
1280x1024 0.9-1.7 ms (boxes), 1.1-1.9 ms (anomaly), 1.9-2.6 ms (masks); 4096x3000 8-11 ms,
of which 4-5 ms is the copy. The JPEG encode of the result costs more than the drawing: on
a synthetic camera surface at quality 85, 4:4:4, 0.2 ms (256x256), 4.9 ms (1280x1024),
48 ms (4096x3000); the PNG of the frame itself 1.7, 35 and 420 ms.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any, Sequence

import cv2
import numpy as np

from plcbridge.inference.anomaly import AnomalyResult
from plcbridge.inference.detection import Detections

BGR = tuple[int, int, int]

RESULT_COLOURS: dict[str, BGR] = {"PASS": (40, 160, 40), "FAIL": (40, 40, 220), "FAILSAFE": (0, 140, 255)}
COUNTED: BGR = (40, 40, 230)  # red: a defect the rules counted
NOT_COUNTED: BGR = (235, 190, 60)  # light blue: found, and not counted (the note says why)
HEAT_ALPHA = 0.35  # how strongly the heatmap tints the frame ...
# ... where the map is at least this share of the pixel threshold: anomalib's normalised map
# sits well below the threshold on a normal surface (the bundled model: 0.38-0.44 of 0.5 on
# clean synthetic frames), so a lower start would tint the whole frame.
HEAT_FROM = 0.9
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def jpeg_params(quality: int) -> list[int]:
    """cv2.imencode parameters for a JPEG of a picture with drawings on it: `quality`, and the
    colour at full resolution (4:4:4, no chroma subsampling), so a thin red line stays red
    where 4:2:0 would smear it over 2x2 pixels into the frame's grey."""
    return [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]


def as_bgr8(image: Any) -> np.ndarray:
    """The frame as 8-bit BGR, a new array (the camera's own is never drawn on)."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img.copy()


def scaled(img: np.ndarray, width: int) -> np.ndarray:
    """`img` no wider than `width` (itself when it is not wider)."""
    h, w = img.shape[:2]
    if w <= width:
        return img
    return cv2.resize(img, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------- words


def verdict_lines(fields: dict[str, Any]) -> list[str]:
    """The band's words for a journal line's fields: the verdict and score, what the decision
    was about, and the findings in a few words (the rules' note, why a detection did not
    count, stays in the record: on the picture the colours say which did)."""
    result = str(fields.get("result", "?"))
    head = f"{result}  score {fields['score']:.4f}" if isinstance(fields.get("score"), (int, float)) else result
    if fields.get("fault") not in (None, "NONE"):
        head += f"  {fields['fault']}"
    lines = [head]
    about = [f"{k} {fields[k]}" for k in ("part_id", "trigger_seq", "frame_seq") if fields.get(k) is not None]
    if about:
        lines.append("  ".join(about))
    findings = fields.get("findings")
    summary = findings_summary(findings) if isinstance(findings, dict) else ""
    if summary:
        lines.append(summary)
    return lines


def findings_summary(findings: dict[str, Any] | None) -> str:
    """The findings in a few words: "2 defects, worst scratch (1 not counted)", "no defect
    counted", "anomalous area 1234 px", ...; "" without findings (a classifier, a fail-safe)."""
    if not findings:
        return ""
    count = int(findings.get("count") or 0)
    if findings.get("kind") == "anomaly":
        area = findings.get("area_px")
        if "map_max" not in findings:  # a score-only model: no map, no area
            return f"anomaly score {findings.get('score')}" + ("" if count else ", not counted")
        if not area:
            return "no anomalous area"
        return f"anomalous area {area} px" + ("" if count else ", not counted")
    shown = findings.get("detections") or []
    total = int(findings.get("detections_total") or len(shown))
    if count:
        worst = findings.get("worst_class_name") or f"class {findings.get('worst_class')}"
        text = f"{count} defect{'s' if count != 1 else ''}, worst {worst}"
    else:
        text = "no defect counted"
    if total > count:
        text += f" ({total - count} not counted)"
    return text


# ---------------------------------------------------------------------- drawing


def line_width(img: np.ndarray) -> int:
    """A line width that reads at this picture's size: 1 px up to 750 px, 3 at 1280, 8 at 4096."""
    return max(1, round(max(img.shape[:2]) / 500))


def _font_scale(img: np.ndarray) -> float:
    return max(0.4, max(img.shape[:2]) / 1600)


def draw_label(img: np.ndarray, lines: Sequence[str], colour: BGR) -> None:
    """Lines of text at the top left on a dark semi-transparent band, sized to the picture;
    the first line in `colour`, larger, the others light grey, wrapped to the width."""
    h_img, w_img = img.shape[:2]
    scale = max(0.5, w_img / 900)
    thick = max(1, round(scale * 2))
    rows: list[tuple[str, float, BGR]] = []
    for i, text in enumerate(lines):
        s = scale if i == 0 else scale * 0.7
        char_w = cv2.getTextSize("0", _FONT, s, thick)[0][0] or 1
        width = max(8, (w_img - 16) // char_w)
        for part in textwrap.wrap(text, width) or [""]:
            rows.append((part, s, colour if i == 0 else (230, 230, 230)))
    sizes = [cv2.getTextSize(text, _FONT, s, thick) for text, s, _ in rows]
    band_h = min(h_img, sum(h + base + 12 for (_, h), base in sizes))
    band_w = min(w_img, max(w for (w, _), _ in sizes) + 16) if sizes else 0
    if band_h and band_w:
        band = img[:band_h, :band_w]
        band[:] = cv2.convertScaleAbs(band, alpha=0.35)
    y = 0
    for (text, s, c), ((_, h), base) in zip(rows, sizes):
        cv2.putText(img, text, (8, y + h + 6), _FONT, s, c, thick, cv2.LINE_AA)
        y += h + base + 12


def _frame_size(result: Any, img: np.ndarray) -> tuple[int, int]:
    """(w, h) of the frame the result's coordinates are in: the picture's when unknown."""
    if isinstance(result, AnomalyResult):
        return result.frame_size
    if isinstance(result, Detections) and result.letterbox is not None:
        return result.letterbox.frame_size
    return img.shape[1], img.shape[0]


def draw_findings(img: np.ndarray, findings: dict[str, Any] | None, result: Any = None) -> None:
    """Draw the findings (rules.describe's JSON) and the decoded result onto `img`, in place.
    `img` is the judged frame as 8-bit BGR at any size: the frame's coordinates are scaled to
    it. Nothing is drawn without findings (a classifier, a fail-safe)."""
    if not findings:
        return
    fw, fh = _frame_size(result, img)
    sx, sy = img.shape[1] / fw, img.shape[0] / fh
    if findings.get("kind") == "anomaly":
        if isinstance(result, AnomalyResult) and result.anomaly_map is not None:
            _draw_anomaly(img, result, findings)
        return
    shown = [d for d in findings.get("detections") or [] if isinstance(d, dict)]
    counted = [bool(d.get("counted", True)) for d in shown]
    if isinstance(result, Detections) and result.masks is not None and result.letterbox is not None:
        _draw_masks(img, result, counted, sx, sy)
    _draw_boxes(img, shown, counted, sx, sy)


def _draw_boxes(img: np.ndarray, shown: list[dict[str, Any]], counted: list[bool], sx: float, sy: float) -> None:
    if not shown:
        return
    boxes = np.array([d.get("box", (0, 0, 0, 0)) for d in shown], np.float64).reshape(-1, 4)
    x1, y1 = boxes[:, 0] * sx, boxes[:, 1] * sy
    x2, y2 = (boxes[:, 0] + boxes[:, 2]) * sx, (boxes[:, 1] + boxes[:, 3]) * sy
    corners = np.stack([x1, y1, x2, y1, x2, y2, x1, y2], axis=1).round().astype(np.int32).reshape(-1, 4, 2)
    lw = line_width(img)
    flags = np.asarray(counted, bool)
    # Not counted first, then counted: a red box is never hidden under a blue one.
    for sel, colour, width in ((~flags, NOT_COUNTED, max(1, lw // 2)), (flags, COUNTED, lw)):
        if sel.any():
            cv2.polylines(img, list(corners[sel]), True, colour, width, cv2.LINE_AA)
    fs = _font_scale(img)
    thick = max(1, round(fs * 1.5))
    h_img, w_img = img.shape[:2]
    for i in np.argsort(flags, kind="stable"):  # the counted ones' labels on top
        d = shown[i]
        name = d.get("name") if d.get("name") is not None else f"class {d.get('class')}"
        score = d.get("score")
        text = f"{name} {score:.2f}" if isinstance(score, (int, float)) else str(name)
        (tw, th), base = cv2.getTextSize(text, _FONT, fs, thick)
        x, y = int(corners[i, 0, 0]), int(corners[i, 0, 1])
        x = min(max(x, 0), max(0, w_img - tw - 4))
        top = y - th - base - 4 if y - th - base - 4 >= 0 else min(y + lw, max(0, h_img - th - base - 4))
        colour = COUNTED if flags[i] else NOT_COUNTED
        cv2.rectangle(img, (x, top), (x + tw + 4, top + th + base + 4), colour, -1)
        cv2.putText(img, text, (x + 2, top + th + 2), _FONT, fs, (255, 255, 255) if flags[i] else (0, 0, 0), thick,
                    cv2.LINE_AA)


def _draw_masks(img: np.ndarray, det: Detections, counted: list[bool], sx: float, sy: float) -> None:
    """The described detections' masks outlined: traced at the prototype resolution (one
    findContours per colour), the points mapped prototype -> input -> frame -> picture."""
    assert det.masks is not None and det.letterbox is not None
    lb = det.letterbox
    n = min(len(det), len(counted))
    if n == 0:
        return
    masks = det.masks[:n]
    mh, mw = masks.shape[1:]
    px, py = lb.input_size[0] / mw, lb.input_size[1] / mh  # input pixels per prototype pixel
    csx, csy = lb.content_scale
    scale = np.array([px / csx * sx, py / csy * sy])
    offset = np.array([lb.pad[0] / csx * sx, lb.pad[1] / csy * sy])
    flags = np.asarray(counted[:n], bool)
    lw = line_width(img)
    for sel, colour, width in ((~flags, NOT_COUNTED, max(1, lw // 2)), (flags, COUNTED, lw)):
        if not sel.any():
            continue
        union = masks[sel].any(axis=0).astype(np.uint8)
        contours, _ = cv2.findContours(union, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            continue
        # All contours' points at once: pixel centres (+0.5) to picture pixels.
        lengths = [len(c) for c in contours]
        pts = (np.concatenate(contours).reshape(-1, 2) + 0.5) * scale - offset
        mapped = np.split(pts.round().astype(np.int32).reshape(-1, 1, 2), np.cumsum(lengths)[:-1])
        cv2.drawContours(img, mapped, -1, colour, width, cv2.LINE_AA)


def _draw_anomaly(img: np.ndarray, result: AnomalyResult, findings: dict[str, Any]) -> None:
    """The faint heatmap where the map is warm (>= HEAT_FROM x the pixel threshold), and the
    anomalous region (>= the pixel threshold) outlined."""
    amap = result.anomaly_map
    assert amap is not None
    threshold = float(findings.get("pixel_threshold", result.summary.pixel_threshold))
    warm = amap >= threshold * HEAT_FROM
    if not warm.any():
        return
    mh, mw = amap.shape
    h_img, w_img = img.shape[:2]
    fx, fy = w_img / mw, h_img / mh  # picture pixels per map pixel (the map covers the whole frame)
    rows, cols = np.flatnonzero(warm.any(axis=1)), np.flatnonzero(warm.any(axis=0))
    r0, r1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, mh)  # one map pixel of margin: the
    c0, c1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, mw)  # interpolation fades out there
    x0, x1 = math.floor(c0 * fx), min(math.ceil(c1 * fx), w_img)
    y0, y1 = math.floor(r0 * fy), min(math.ceil(r1 * fy), h_img)
    if x1 <= x0 or y1 <= y0:
        return
    m = cv2.resize(np.ascontiguousarray(amap[r0:r1, c0:c1]), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    roi = img[y0:y1, x0:x1]
    lo = threshold * HEAT_FROM  # the colour scale runs from there (blue) to 1 (red)
    level = cv2.convertScaleAbs(m, alpha=255.0 / max(1.0 - lo, 1e-6), beta=-255.0 * lo / max(1.0 - lo, 1e-6))
    tinted = cv2.addWeighted(roi, 1.0 - HEAT_ALPHA, cv2.applyColorMap(level, cv2.COLORMAP_JET), HEAT_ALPHA, 0)
    np.copyto(roi, tinted, where=(m >= lo)[..., None])
    hot = (m >= threshold).astype(np.uint8)
    contours, _ = cv2.findContours(hot, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0))
    if contours:
        colour = COUNTED if findings.get("count") else NOT_COUNTED
        cv2.drawContours(img, contours, -1, colour, line_width(img), cv2.LINE_AA)


def annotate(image: Any, fields: dict[str, Any], result: Any = None, max_width: int | None = None) -> np.ndarray:
    """A new 8-bit BGR picture of `image` (never drawn on) no wider than `max_width`, with the
    findings of the journal line `fields` drawn (boxes, masks or the anomaly outline) and its
    verdict band. `result`: the decision's decoded result, for masks and the anomaly map."""
    frame = np.asarray(image)
    # Scaled down first, when it is: a big frame is copied and converted at the picture's size.
    img = as_bgr8(scaled(frame, max_width) if max_width is not None else frame)
    findings = fields.get("findings")
    draw_label(img, verdict_lines(fields), RESULT_COLOURS.get(str(fields.get("result")), (255, 255, 255)))
    draw_findings(img, findings if isinstance(findings, dict) else None, result)
    return img
