"""The verdict rules: what an inspection engineer writes in the model's manifest to say which
detections, or how much anomaly, make a part FAIL, and `judge()`, the one function that
applies them.

A detector finds things; whether a thing is a defect worth rejecting a part for is the
line's decision, not the model's: a 3 px scratch may be fine, a label in the fixture's
corner is always seen and never matters, one blemish may be tolerated but not two. Those
decisions live here, as data, so that changing them is a manifest edit, not a retrain.

Detection / segmentation (`DetectionRules`): a detection COUNTS when its class is not
ignored, its score >= the class's `min_score`, its area >= `min_area` (px^2 in frame pixels:
the box's, or the mask's for a segmentation model), its longer box side >= `min_length`
(px), its box centre lies inside one of the `roi` rectangles (if any are given) and in none
of the `ignore_regions`. The part FAILs when more than `max_count` detections count
(default 0: any counted defect fails). Classes not listed in `classes` follow `default`;
`{"ignore": true}` ignores a class (or, as `default`, every class not listed). Rectangles
are [x, y, w, h] in frame pixels; a centre (cx, cy) is inside when x <= cx < x + w and
y <= cy < y + h. Polygons are left out: rectangles cover the fixtures seen so far, and a
polygon test per detection would be a loop over detections in cv2.pointPolygonTest.

Anomaly (`AnomalyRules`): FAIL when the normalised score >= `threshold` (default 0.5, the
exported one) and the anomalous area (map pixels >= `pixel_threshold`, in frame pixels) >=
`min_area` (default 0: the area does not matter), so a tiny blob passes.

The score handed to the PLC: for detection, the highest counted defect's score (0.0 when
none counts; a part with counted defects within `max_count` passes with that score); for
anomaly, the normalised score. `Findings`: the counted defect count, the class index of the
worst (highest-score) counted defect or None (the caller picks the register value for
"none", e.g. 0xFFFF), the area in frame pixels (the worst counted defect's; for anomaly, the
anomalous area), its box, and a one-line note for the journal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Sequence

import numpy as np
from pydantic import Field, field_validator, model_validator

from plcbridge.inference.anomaly import AnomalyResult
from plcbridge.inference.detection import Detections
from plcbridge.inference.errors import InferenceError, ModelError
from plcbridge.schema import Strict

# [x, y, w, h] in frame pixels; numbers as written (a quoted "10" is a typo, not a coordinate).
Rect = Annotated[list[Annotated[float, Field(strict=True)]], Field(min_length=4, max_length=4)]
Score = Annotated[float, Field(ge=0, le=1)]
Pixels = Annotated[float, Field(ge=0)]


class ClassRule(Strict):
    """When a detection of one class counts as a defect (see the module docstring)."""

    ignore: bool = False
    min_score: Score = 0.25  # Ultralytics' own predict threshold: what the team saw while labelling
    min_area: Pixels = 0.0  # px^2 in frame pixels (mask area for segmentation models)
    min_length: Pixels = 0.0  # px, the longer side of the box

    @model_validator(mode="after")
    def _ignored_has_no_thresholds(self) -> "ClassRule":
        if self.ignore and self.model_fields_set - {"ignore"}:
            raise ValueError(f"an ignored class takes no thresholds, got {', '.join(sorted(self.model_fields_set - {'ignore'}))}")
        return self


class DetectionRules(Strict):
    """The manifest's rules for a detection or segmentation model (see the module docstring).
    `classes` keys are class names, or indices written as digits ("0")."""

    classes: dict[Annotated[str, Field(min_length=1)], ClassRule] = {}
    default: ClassRule = ClassRule()
    max_count: Annotated[int, Field(ge=0)] = 0
    roi: list[Rect] = []
    ignore_regions: list[Rect] = []

    @field_validator("roi", "ignore_regions")
    @classmethod
    def _rects(cls, rects: list[list[float]]) -> list[list[float]]:
        for i, (x, y, w, h) in enumerate(rects):
            if not all(math.isfinite(v) for v in (x, y, w, h)) or x < 0 or y < 0 or w <= 0 or h <= 0:
                raise ValueError(f"rectangle {i} {[x, y, w, h]}: need [x, y, w, h] with x, y >= 0 and w, h > 0 (frame pixels)")
        return rects

    @property
    def score_floor(self) -> float:
        """The lowest score any rule counts: the decoder's confidence threshold must be below it
        (the decoder keeps scores strictly above `conf`, the rules count scores at or above
        `min_score`)."""
        rules = [r for r in (*self.classes.values(), self.default) if not r.ignore]
        return min((r.min_score for r in rules), default=1.0)

    def resolve(self, class_names: Sequence[str] | None = None) -> dict[int, ClassRule]:
        """{class index: rule} for the listed classes. Call it once at load with the model's
        class names: a name the model does not have, an index beyond its classes, or two
        rules for one class is a ModelError there, not a surprise on the line."""
        names = list(class_names) if class_names is not None else None
        table: dict[int, ClassRule] = {}
        keys: dict[int, str] = {}
        for key, rule in self.classes.items():
            if key.isascii() and key.isdigit():
                idx = int(key)
                if names is not None and idx >= len(names):
                    raise ModelError(f"rules.classes: class index {idx} is beyond the model's {len(names)} classes")
            elif names is None:
                raise ModelError(f"rules.classes: class {key!r} by name, but the model's class names are not known; "
                                 "use its index as a string (\"0\")")
            elif names.count(key) != 1:
                why = "is not among" if key not in names else "appears more than once in"
                raise ModelError(f"rules.classes: class {key!r} {why} the model's classes {names}")
            else:
                idx = names.index(key)
            if idx in table:
                raise ModelError(f"rules.classes: class {idx} has two rules, {keys[idx]!r} and {key!r}")
            table[idx], keys[idx] = rule, key
        return table


class AnomalyRules(Strict):
    """The manifest's rules for an anomaly model (see the module docstring)."""

    threshold: Score = 0.5  # on the normalised score; 0.5 = the threshold anomalib exported
    pixel_threshold: Score = 0.5  # on the normalised map
    min_area: Pixels = 0.0  # px^2 in frame pixels; 0: any score >= threshold fails


@dataclass(frozen=True)
class Findings:
    """What the verdict rests on, for the PLC and the journal (see the module docstring).
    `box`: (x, y, w, h) in frame pixels, rounded outwards, of the worst counted defect or
    of the anomalous region; None when there is none."""

    count: int
    worst_class: int | None
    area_px: float
    box: tuple[int, int, int, int] | None
    note: str
    # Detection / segmentation: (N,) bool, which detections counted (in the decoder's order,
    # best first), for the journal and the pictures; None for anomaly.
    counted: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Judgement:
    label: Literal["pass", "fail"]
    score: float
    findings: Findings


def _box_xywh(x1: float, y1: float, x2: float, y2: float) -> tuple[int, int, int, int]:
    x, y = math.floor(x1), math.floor(y1)
    return x, y, math.ceil(x2) - x, math.ceil(y2) - y


def _inside_any(points: np.ndarray, rects: list[list[float]]) -> np.ndarray:
    """(N,) whether each (x, y) point lies inside at least one [x, y, w, h] rectangle."""
    r = np.asarray(rects, np.float64)
    px, py = points[:, 0:1], points[:, 1:2]
    inside: np.ndarray = (px >= r[:, 0]) & (px < r[:, 0] + r[:, 2]) & (py >= r[:, 1]) & (py < r[:, 1] + r[:, 3])
    return np.asarray(inside.any(axis=1))


def _judge_detections(det: Detections, rules: DetectionRules, class_names: Sequence[str] | None) -> Judgement:
    table = rules.resolve(class_names)
    n = len(det)
    uniq, inv = np.unique(det.classes, return_inverse=True)
    per_class = [table.get(int(c), rules.default) for c in uniq]
    ignored = np.array([r.ignore for r in per_class], bool)[inv]
    min_score = np.array([r.min_score for r in per_class], np.float64)[inv]
    min_area = np.array([r.min_area for r in per_class], np.float64)[inv]
    min_length = np.array([r.min_length for r in per_class], np.float64)[inv]
    areas = det.areas
    centres = det.centres
    # Each detection is discounted for the first reason that applies, in this order.
    reasons: list[tuple[str, np.ndarray]] = [
        ("ignored class", ignored),
        ("below min_score", det.scores < min_score),
        ("below min_area", areas < min_area),
        ("below min_length", det.lengths < min_length),
    ]
    if rules.roi:
        reasons.append(("outside the roi", ~_inside_any(centres, rules.roi)))
    if rules.ignore_regions:
        reasons.append(("in an ignore region", _inside_any(centres, rules.ignore_regions)))
    counted = np.ones(n, bool)
    discounted: list[str] = []
    for why, hit in reasons:
        k = int(np.count_nonzero(counted & hit))
        if k:
            discounted.append(f"{k} {why}")
        counted &= ~hit
    count = int(np.count_nonzero(counted))
    label: Literal["pass", "fail"] = "fail" if count > rules.max_count else "pass"
    note = f"{n} detection(s), {count} counted (at most {rules.max_count} pass)"
    if discounted:
        note += f"; not counted: {', '.join(discounted)}"
    if not count:
        return Judgement(label, 0.0, Findings(0, None, 0.0, None, note, counted))
    idx = np.flatnonzero(counted)
    worst = int(idx[np.argmax(det.scores[idx])])
    score = float(det.scores[worst])
    worst_class = int(det.classes[worst])
    note += f"; worst: class {worst_class} score {score:.3f} area {float(areas[worst]):.0f} px"
    box = _box_xywh(*(float(v) for v in det.boxes[worst]))
    return Judgement(label, score, Findings(count, worst_class, float(areas[worst]), box, note, counted))


def _judge_anomaly(result: AnomalyResult, rules: AnomalyRules) -> Judgement:
    summary = result.summarize(rules.pixel_threshold)
    if summary.area_px is None and rules.min_area > 0:
        # A manifest/model mismatch the loader should refuse; here, a fault rather than a PASS.
        raise InferenceError(f"rules.min_area is {rules.min_area:g} px, but the model gives no anomaly map to measure an area on")
    area = summary.area_px if summary.area_px is not None else 0.0
    anomalous = result.score >= rules.threshold
    counted = anomalous and area >= rules.min_area
    note = f"score {result.score:.3f} (fails at {rules.threshold:g})"
    if summary.area_px is not None:
        note += f", area {area:.0f} px at pixel threshold {rules.pixel_threshold:g}"
        if anomalous and not counted:
            note += f", below min_area {rules.min_area:g} px"
    findings = Findings(1 if counted else 0, None, area, summary.box, note)
    return Judgement("fail" if counted else "pass", result.score, findings)


def judge(result: Detections | AnomalyResult, rules: DetectionRules | AnomalyRules,
          class_names: Sequence[str] | None = None) -> Judgement:
    """The verdict: label "pass" or "fail", the score for the PLC in [0, 1], and the findings
    (see the module docstring). `class_names`: the detection model's class names, needed
    when the rules name classes instead of giving indices. Detections go with
    DetectionRules, an AnomalyResult with AnomalyRules; anything else is a TypeError."""
    if isinstance(result, Detections) and isinstance(rules, DetectionRules):
        return _judge_detections(result, rules, class_names)
    if isinstance(result, AnomalyResult) and isinstance(rules, AnomalyRules):
        return _judge_anomaly(result, rules)
    raise TypeError(f"no rules for {type(result).__name__} with {type(rules).__name__}: "
                    "Detections go with DetectionRules, AnomalyResult with AnomalyRules")


# The journal keeps at most this many detections per decision (the best first): a head gone
# wrong can give hundreds, and one journal line must stay a line.
DESCRIBED_DETECTIONS = 20


def describe(result: Detections | AnomalyResult, findings: Findings,
             class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The decoded result and the findings as plain JSON values, for the journal line, the
    archive's sidecar and the station page: boxes as [x, y, w, h] in frame pixels (rounded
    outwards), scores to 3 decimals, class ids with their names, and whether the rules
    counted each detection (`counted`)."""
    out: dict[str, Any] = {"count": findings.count, "note": findings.note}
    if findings.box is not None:
        out["box"] = list(findings.box)
    if isinstance(result, AnomalyResult):
        s = result.summary
        out.update(kind="anomaly", score=round(result.score, 4), area_px=round(findings.area_px))
        if s.max is not None:
            out.update(map_max=round(s.max, 4), map_mean=round(s.mean or 0.0, 4), pixel_threshold=s.pixel_threshold)
        return out
    names = list(class_names or [])

    def name(c: int) -> str | None:
        return names[c] if 0 <= c < len(names) else None

    out["kind"] = "detection"
    if findings.worst_class is not None:
        out.update(worst_class=findings.worst_class, worst_class_name=name(findings.worst_class),
                   area_px=round(findings.area_px))
    shown = []
    for i in range(min(len(result), DESCRIBED_DETECTIONS)):
        c = int(result.classes[i])
        shown.append({"class": c, "name": name(c), "score": round(float(result.scores[i]), 3),
                      "box": list(_box_xywh(*(float(v) for v in result.boxes[i])))})
        if findings.counted is not None and i < len(findings.counted):
            shown[-1]["counted"] = bool(findings.counted[i])
    out["detections"] = shown
    if len(result) > len(shown):
        out["detections_total"] = len(result)
    return out
