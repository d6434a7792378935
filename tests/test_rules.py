"""The verdict rules: each rule of a manifest's `rules` section, one test that it changes the
verdict, with detections and anomaly results built by hand."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from plcbridge.inference.anomaly import decode_anomalib2
from plcbridge.inference.detection import Detections
from plcbridge.inference.errors import InferenceError, ModelError
from plcbridge.inference.rules import AnomalyRules, ClassRule, DetectionRules, judge


def dets(*rows: tuple[float, float, float, float, float, int], mask_areas: list[float] | None = None) -> Detections:
    """Detections from (x1, y1, x2, y2, score, class) rows in frame pixels."""
    a = np.array(rows, np.float64).reshape(-1, 6)
    areas = np.array(mask_areas, np.float64) if mask_areas is not None else None
    return Detections(a[:, :4], a[:, 4], a[:, 5].astype(np.int64), mask_areas=areas)


def rules(**raw: object) -> DetectionRules:
    """Rules as a manifest.json section would give them."""
    return DetectionRules.model_validate(raw)


SCRATCH = (100, 100, 120, 110, 0.8, 0)  # 20x10 box: area 200, length 20, centre (110, 105)


def test_no_detection_passes_with_score_0():
    j = judge(dets(), DetectionRules())
    assert (j.label, j.score) == ("pass", 0.0)
    assert (j.findings.count, j.findings.worst_class, j.findings.area_px, j.findings.box) == (0, None, 0.0, None)


def test_any_counted_defect_fails_by_default_with_its_score_class_area_and_box():
    j = judge(dets(SCRATCH, (300.5, 10.2, 310, 20, 0.6, 2)), DetectionRules())
    assert (j.label, j.score) == ("fail", pytest.approx(0.8))
    assert (j.findings.count, j.findings.worst_class, j.findings.area_px) == (2, 0, 200.0)
    assert j.findings.box == (100, 100, 20, 10)
    assert "2 detection(s), 2 counted" in j.findings.note


def test_box_under_min_area_passes_and_at_min_area_fails():
    assert judge(dets(SCRATCH), rules(default={"min_area": 201})).label == "pass"
    assert judge(dets(SCRATCH), rules(default={"min_area": 200})).label == "fail"
    j = judge(dets(SCRATCH), rules(default={"min_area": 201}))
    assert j.score == 0.0 and "1 below min_area" in j.findings.note


def test_segmentation_compares_the_mask_area_not_the_box_area():
    thin = dets(SCRATCH, mask_areas=[60.0])  # a diagonal scratch fills 60 of its box's 200 px
    assert judge(thin, rules(default={"min_area": 100})).label == "pass"
    assert judge(thin, rules(default={"min_area": 60})).findings.area_px == 60.0


def test_box_under_min_length_passes():
    assert judge(dets(SCRATCH), rules(default={"min_length": 21})).label == "pass"
    assert judge(dets(SCRATCH), rules(default={"min_length": 20})).label == "fail"


def test_class_below_its_min_score_passes():
    r = rules(classes={"0": {"min_score": 0.85}})
    assert judge(dets(SCRATCH), r).label == "pass"
    assert judge(dets((100, 100, 120, 110, 0.85, 0)), r).label == "fail"  # at the minimum: counts
    assert judge(dets((100, 100, 120, 110, 0.5, 1)), r).label == "fail"  # class 1 follows the default (0.25)


def test_ignored_class_and_ignoring_every_unlisted_class():
    assert judge(dets(SCRATCH), rules(classes={"0": {"ignore": True}})).label == "pass"
    only_dents = rules(classes={"dent": {"min_score": 0.5}}, default={"ignore": True})
    names = ["scratch", "dent"]
    assert judge(dets(SCRATCH), only_dents, names).label == "pass"
    j = judge(dets(SCRATCH, (0, 0, 5, 5, 0.7, 1)), only_dents, names)
    assert (j.label, j.score, j.findings.worst_class, j.findings.count) == ("fail", pytest.approx(0.7), 1, 1)
    assert "1 ignored class" in j.findings.note


def test_defect_in_an_ignore_region_passes():
    r = rules(ignore_regions=[[100, 100, 20, 20]])  # the centre (110, 105) is inside
    assert judge(dets(SCRATCH), r).label == "pass"
    assert judge(dets(SCRATCH), rules(ignore_regions=[[111, 100, 20, 20]])).label == "fail"  # x 111.. misses 110


def test_defect_outside_the_roi_passes():
    assert judge(dets(SCRATCH), rules(roi=[[0, 0, 110, 480]])).label == "pass"  # x < 110: the centre is on the edge outside
    assert judge(dets(SCRATCH), rules(roi=[[0, 0, 111, 480]])).label == "fail"
    assert judge(dets(SCRATCH), rules(roi=[[0, 0, 50, 50], [100, 100, 20, 20]])).label == "fail"  # any roi will do


def test_ignore_region_wins_over_roi():
    r = rules(roi=[[0, 0, 640, 480]], ignore_regions=[[100, 100, 20, 20]])
    assert judge(dets(SCRATCH), r).label == "pass"


def test_count_over_max_count_fails_and_within_passes_with_the_worst_score():
    two = dets(SCRATCH, (300, 300, 310, 310, 0.9, 1))
    j = judge(two, rules(max_count=2))
    assert (j.label, j.score, j.findings.count, j.findings.worst_class) == ("pass", pytest.approx(0.9), 2, 1)
    assert judge(two, rules(max_count=1)).label == "fail"


def test_only_counted_defects_give_the_score():
    # The best-scoring detection is ignored; the score is the counted one's.
    j = judge(dets((0, 0, 5, 5, 0.95, 1), SCRATCH), rules(classes={"1": {"ignore": True}}))
    assert (j.label, j.score, j.findings.worst_class) == ("fail", pytest.approx(0.8), 0)


def test_class_names_resolve_and_are_checked():
    r = rules(classes={"scratch": {"min_area": 500}})
    assert judge(dets(SCRATCH), r, ["scratch", "dent"]).label == "pass"
    assert r.resolve(["scratch", "dent"]) == {0: ClassRule(min_area=500)}
    with pytest.raises(ModelError, match="'scratch' by name, but the model's class names are not known"):
        judge(dets(SCRATCH), r)
    with pytest.raises(ModelError, match="'scratch' is not among the model's classes"):
        r.resolve(["dent"])
    with pytest.raises(ModelError, match="'scratch' appears more than once"):
        r.resolve(["scratch", "scratch"])
    with pytest.raises(ModelError, match="class 0 has two rules"):
        rules(classes={"0": {}, "scratch": {}}).resolve(["scratch"])
    with pytest.raises(ModelError, match="class index 5 is beyond the model's 2 classes"):
        rules(classes={"5": {}}).resolve(["a", "b"])


def test_score_floor_is_the_lowest_counted_min_score():
    assert DetectionRules().score_floor == 0.25
    assert rules(classes={"0": {"min_score": 0.1}, "1": {"ignore": True}}, default={"min_score": 0.6}).score_floor == 0.1
    assert rules(default={"ignore": True}).score_floor == 1.0


@pytest.mark.parametrize("raw, where", [
    ({"roi": [[0, 0, 0, 10]]}, "roi"),
    ({"ignore_regions": [[-1, 0, 5, 5]]}, "ignore_regions"),
    ({"roi": [[0, 0, 5]]}, "roi.0"),
    ({"roi": [[0, 0, "5", 5]]}, "roi.0.2"),
    ({"max_count": -1}, "max_count"),
    ({"max_count": 1.5}, "max_count"),
    ({"default": {"min_score": 1.5}}, "default.min_score"),
    ({"default": {"min_score": "0.5"}}, "default.min_score"),
    ({"classes": {"0": {"ignore": True, "min_area": 4}}}, "classes.0"),
    ({"classes": {"0": {"min_areaa": 4}}}, "classes.0.min_areaa"),
    ({"classes": {"": {}}}, "classes..[key]"),  # pydantic's location of the empty key
    ({"rois": []}, "rois"),
])
def test_detection_rules_reject_what_a_manifest_must_not_say(raw, where):
    with pytest.raises(ValidationError) as e:
        DetectionRules.model_validate(raw)
    assert where in [".".join(str(p) for p in err["loc"]) for err in e.value.errors()]


def test_detection_rules_defaults_as_a_manifest_without_them():
    r = DetectionRules.model_validate({})
    assert (r.classes, r.max_count, r.roi, r.ignore_regions) == ({}, 0, [], [])
    assert r.default == ClassRule(ignore=False, min_score=0.25, min_area=0.0, min_length=0.0)
    assert AnomalyRules.model_validate({}) == AnomalyRules(threshold=0.5, pixel_threshold=0.5, min_area=0.0)


# Anomaly: a 4x4 normalised map over a 40x80 frame (200 frame px per map pixel), 3 pixels >= 0.5.
MAP = np.array([[0.0, 0.1, 0.2, 0.1], [0.1, 0.2, 0.5, 0.9], [0.0, 0.1, 0.3, 0.6], [0.0, 0.0, 0.1, 0.1]], np.float32)


def anomaly(score: float, with_map: bool = True):
    outputs = {"pred_score": np.array([[score]], np.float32)}
    if with_map:
        outputs["anomaly_map"] = MAP[None, None]
    return decode_anomalib2(outputs, (80, 40, 3))


def test_anomaly_over_the_threshold_fails_with_area_and_box():
    j = judge(anomaly(0.7), AnomalyRules())
    assert (j.label, j.score) == ("fail", pytest.approx(0.7))
    assert (j.findings.count, j.findings.worst_class, j.findings.area_px, j.findings.box) == (1, None, 600.0, (20, 20, 20, 40))
    assert judge(anomaly(0.49), AnomalyRules()).label == "pass"
    assert judge(anomaly(0.5), AnomalyRules()).label == "fail"  # at the threshold: fails


def test_anomaly_area_under_min_area_passes():
    assert judge(anomaly(0.7), AnomalyRules(min_area=601)).label == "pass"
    j = judge(anomaly(0.7), AnomalyRules(min_area=600))
    assert j.label == "fail" and j.findings.area_px == 600.0
    tiny = judge(anomaly(0.7), AnomalyRules(min_area=601))
    assert tiny.score == pytest.approx(0.7) and tiny.findings.count == 0 and "below min_area" in tiny.findings.note


def test_anomaly_threshold_override():
    assert judge(anomaly(0.55), AnomalyRules(threshold=0.6)).label == "pass"
    assert judge(anomaly(0.55), AnomalyRules(threshold=0.5)).label == "fail"
    assert judge(anomaly(0.35), AnomalyRules(threshold=0.3)).label == "fail"
    assert judge(anomaly(0.55), AnomalyRules(threshold=0.6)).score == pytest.approx(0.55)  # the PLC gets the score as is


def test_anomaly_pixel_threshold_override_changes_the_area():
    j = judge(anomaly(0.7), AnomalyRules(pixel_threshold=0.8, min_area=300))
    assert (j.label, j.findings.area_px, j.findings.box) == ("pass", 200.0, (30, 20, 10, 20))  # only the 0.9 pixel
    wide = judge(anomaly(0.7), AnomalyRules(pixel_threshold=0.3, min_area=800))  # 0.3, 0.5, 0.6, 0.9
    assert (wide.label, wide.findings.area_px) == ("fail", 800.0)


def test_anomaly_score_only_model():
    assert judge(anomaly(0.7, with_map=False), AnomalyRules()).label == "fail"
    assert judge(anomaly(0.4, with_map=False), AnomalyRules()).findings.area_px == 0.0
    with pytest.raises(InferenceError, match="no anomaly map"):
        judge(anomaly(0.7, with_map=False), AnomalyRules(min_area=10))


def test_rules_must_match_the_result_kind():
    with pytest.raises(TypeError, match="Detections go with DetectionRules"):
        judge(dets(SCRATCH), AnomalyRules())
    with pytest.raises(TypeError):
        judge(anomaly(0.7), DetectionRules())
