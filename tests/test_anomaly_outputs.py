"""anomalib 1.x and 2.x outputs into AnomalyResult, with hand-computed scores, areas and boxes,
and anomalib 1.x's metadata.json read with errors that name the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from plcbridge.inference.anomaly import (
    AnomalibMetadata,
    decode_anomalib1,
    decode_anomalib2,
    load_anomalib1_metadata,
    parse_anomalib1_metadata,
)
from plcbridge.inference.errors import InferenceError, ModelError

# A 4x4 map for a 40x80 (w x h) frame: each map pixel covers 10 x 20 = 200 frame pixels.
FRAME = (80, 40, 3)
MAP = np.array([
    [0.0, 0.1, 0.2, 0.1],
    [0.1, 0.2, 0.5, 0.9],
    [0.0, 0.1, 0.3, 0.6],
    [0.0, 0.0, 0.1, 0.1],
], np.float32)


def test_anomalib2_score_map_area_and_box():
    res = decode_anomalib2({"pred_score": np.array([[0.7]], np.float32), "anomaly_map": MAP[None, None],
                            "pred_label": np.array([True]), "pred_mask": (MAP > 0.5)[None, None]}, FRAME)
    assert res.score == pytest.approx(0.7)
    assert res.frame_size == (40, 80) and res.map_scale == (10.0, 20.0)
    assert res.anomaly_map is not None and res.anomaly_map.shape == (4, 4)
    s = res.summary
    assert s.pixel_threshold == 0.5
    assert s.area_px == 3 * 200  # 0.5, 0.9 and 0.6: "at or above" the threshold
    assert s.box == (20, 20, 20, 40)  # columns 2..3, rows 1..2 of the map, in frame pixels
    assert s.max == pytest.approx(0.9)
    assert s.mean == pytest.approx(float(MAP.sum()) / 16)


def test_anomalib2_summary_at_another_pixel_threshold():
    res = decode_anomalib2({"pred_score": np.array([[0.7]], np.float32), "anomaly_map": MAP[None, None]}, FRAME)
    s = res.summarize(0.2)
    assert s.area_px == 6 * 200 and s.box == (10, 0, 30, 60)  # 0.2 (twice), 0.3, 0.5, 0.6, 0.9: rows 0..2, columns 1..3
    assert res.summarize(0.95).area_px == 0 and res.summarize(0.95).box is None
    assert res.summarize(0.5) is res.summary


def test_anomalib2_patchcore_score_is_one_dimensional_and_only_batch_0_counts():
    res = decode_anomalib2({"pred_score": np.array([0.2, 0.9], np.float32),
                            "anomaly_map": np.stack([MAP, np.ones_like(MAP)])[:, None]}, FRAME)
    assert res.score == pytest.approx(0.2) and res.summary.area_px == 600


def test_anomalib2_without_pred_score_takes_the_map_max():
    res = decode_anomalib2({"anomaly_map": MAP[None]}, FRAME)  # [B, h, w] is accepted too
    assert res.score == pytest.approx(0.9)


def test_anomalib2_score_only_model_has_no_map_and_no_area():
    res = decode_anomalib2({"pred_score": np.array([[0.3]], np.float32), "pred_label": np.array([[False]])}, FRAME)
    assert res.score == pytest.approx(0.3) and res.anomaly_map is None
    assert (res.summary.area_px, res.summary.box, res.summary.max) == (None, None, None)
    with pytest.raises(ValueError, match="no anomaly map"):
        res.map_in_frame()


def test_map_in_frame_is_the_frame_size():
    res = decode_anomalib2({"anomaly_map": MAP[None, None]}, FRAME)
    full = res.map_in_frame()
    assert full.shape == (80, 40) and full.dtype == np.float32
    assert full[35, 35] == pytest.approx(0.9, abs=0.2)  # inside map pixel (1, 3)


def test_the_session_output_is_not_modified():
    amap = (MAP * 1.0)[None, None]
    amap[0, 0, 0, 0] = 1.0 + 5e-6  # float32 slack above 1 is tolerated and clamped ...
    decode_anomalib2({"anomaly_map": amap}, FRAME)
    assert amap[0, 0, 0, 0] == np.float32(1.0 + 5e-6)  # ... in a copy


@pytest.mark.parametrize("outputs, match", [
    ({"pred_score": np.array([[np.nan]], np.float32)}, "not finite"),
    ({"pred_score": np.array([[0.5]], np.float32), "anomaly_map": np.where(MAP > 0.8, np.inf, MAP)[None, None]}, "not finite"),
    ({"anomaly_map": np.where(MAP > 0.8, np.nan, MAP)[None, None]}, "not finite"),
    ({"anomaly_map": np.stack([MAP, MAP])[None]}, "shape"),  # [B, 2, h, w]: two channels
    ({"anomaly_map": MAP}, "shape"),  # no batch axis
    ({"anomaly_map": MAP[None, None, None]}, "shape"),
    ({"pred_score": np.array([[0.5, 0.5]], np.float32)}, "shape"),
    ({"pred_score": np.array([[1.7]], np.float32)}, r"not in \[0, 1\]"),  # not normalised
    ({"anomaly_map": (MAP * 30)[None, None]}, r"not in \[0, 1\]"),
    ({"pred_label": np.array([True])}, "neither pred_score nor anomaly_map"),
    ({"anomaly_map": (MAP > 0.5)[None, None]}, "floating-point"),
])
def test_anomalib2_output_problems_are_inference_errors(outputs, match):
    with pytest.raises(InferenceError, match=match):
        decode_anomalib2(outputs, FRAME)


def test_anomalib2_map_of_the_wrong_size():
    with pytest.raises(InferenceError, match="4x4, the manifest declares 256x256"):
        decode_anomalib2({"anomaly_map": MAP[None, None]}, FRAME, map_size=(256, 256))
    assert decode_anomalib2({"anomaly_map": MAP[None, None]}, FRAME, map_size=(4, 4)).score == pytest.approx(0.9)


# anomalib 1.x: image threshold 10 on scores seen from 2 to 22; pixel threshold 8 on maps seen from 0 to 16.
META = AnomalibMetadata(image_threshold=10.0, score_min=2.0, score_max=22.0, pixel_threshold=8.0, map_min=0.0, map_max=16.0)


def test_anomalib1_map_is_normalised_as_anomalib_does():
    raw = np.array([[0, 4, 8], [12, 15, 40]], np.float32)[None, None]
    res = decode_anomalib1(raw, META, (20, 30))
    # map: (x - 8) / 16 + 0.5, clipped; score: the raw max 40 -> (40 - 10) / 20 + 0.5 = 2.0 -> 1.0.
    assert res.anomaly_map.tolist() == [[0.0, 0.25, 0.5], [0.75, 0.9375, 1.0]]
    assert res.score == 1.0
    assert res.summary.area_px == 4 * 10 * 10  # map 3x2 on a 30x20 frame: 10x10 px each
    raw[0, 0, 1, 2] = 15.0
    assert decode_anomalib1(raw, META, (20, 30)).score == pytest.approx(0.75)  # (15 - 10) / 20 + 0.5


@pytest.mark.parametrize("raw, score", [(10.0, 0.5), (0.0, 0.0), (30.0, 1.0), (14.0, 0.7)])
def test_anomalib1_score_output(raw, score):
    res = decode_anomalib1(np.array([raw], np.float32), META, FRAME)
    assert res.score == pytest.approx(score) and res.anomaly_map is None and res.summary.area_px is None


def test_anomalib1_map_without_pixel_statistics_is_an_error():
    meta = AnomalibMetadata(image_threshold=10.0, score_min=2.0, score_max=22.0, source="/m/metadata.json")
    with pytest.raises(InferenceError, match="/m/metadata.json has no pixel_threshold"):
        decode_anomalib1(MAP[None, None], meta, FRAME)
    with pytest.raises(InferenceError, match="not finite"):
        decode_anomalib1(np.where(MAP > 0.8, np.nan, MAP)[None, None], META, FRAME)


# What anomalib 1.x's export writes (export_mixin._get_metadata: thresholds, then the
# normalisation MetricCollection's state_dict, flat dotted keys; inf ones dropped).
WRITTEN = {"task": "segmentation", "image_threshold": 10.0, "pixel_threshold": 8.0,
           "anomaly_maps.min": 0.0, "anomaly_maps.max": 16.0, "pred_scores.min": 2.0, "pred_scores.max": 22}


def test_load_metadata_as_anomalib_1_writes_it(tmp_path):
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(WRITTEN, indent=4))
    meta = load_anomalib1_metadata(path)
    assert (meta.image_threshold, meta.score_min, meta.score_max) == (10.0, 2.0, 22.0)
    assert (meta.pixel_threshold, meta.map_min, meta.map_max) == (8.0, 0.0, 16.0)
    assert meta.has_map_stats and meta.source == str(path)


def test_load_metadata_nested_form_is_read_too():
    raw = {"image_threshold": 1, "pred_scores": {"min": 0, "max": 2}}
    meta = parse_anomalib1_metadata(raw, "m.json", needs_map=False)
    assert (meta.score_min, meta.score_max, meta.has_map_stats) == (0.0, 2.0, False)
    with pytest.raises(ModelError, match="both 'pred_scores.min' and 'pred_scores'.'min'"):
        parse_anomalib1_metadata({**raw, "pred_scores.min": 0}, "m.json", needs_map=False)


@pytest.mark.parametrize("change, match", [
    ({"pred_scores.max": None}, "'pred_scores.max' must be a number, got null"),
    ({"image_threshold": "10"}, "'image_threshold' must be a number, got \"10\""),
    ({"pixel_threshold": True}, "'pixel_threshold' must be a number, got true"),
    ({"pred_scores.min": 22.0}, "'pred_scores.max' .22. must be greater than 'pred_scores.min' .22."),
    ({"anomaly_maps.max": -1.0}, "'anomaly_maps.max' .-1. must be greater than 'anomaly_maps.min'"),
])
def test_load_metadata_bad_values_name_the_file_and_the_key(tmp_path, change, match):
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps({**WRITTEN, **change}))
    with pytest.raises(ModelError, match=match) as e:
        load_anomalib1_metadata(path)
    assert str(e.value).startswith(str(path))


def test_load_metadata_missing_keys(tmp_path):
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps({"task": "classification", "image_threshold": 3.0, "pixel_threshold": 3.0}))
    with pytest.raises(ModelError, match="missing 'pred_scores.min', 'pred_scores.max', 'anomaly_maps.min', 'anomaly_maps.max'"):
        load_anomalib1_metadata(path)
    with pytest.raises(ModelError, match="missing 'pred_scores.min', 'pred_scores.max':"):
        load_anomalib1_metadata(path, needs_map=False)


def test_load_metadata_nan_and_broken_files(tmp_path):
    path = tmp_path / "metadata.json"
    path.write_text('{"image_threshold": NaN, "pred_scores.min": 0, "pred_scores.max": 1}')  # Python's json writes NaN
    with pytest.raises(ModelError, match="'image_threshold' must be a finite number"):
        load_anomalib1_metadata(path, needs_map=False)
    path.write_text('{"image_threshold": ')
    with pytest.raises(ModelError, match="not valid JSON"):
        load_anomalib1_metadata(path)
    path.write_text("[1, 2]")
    with pytest.raises(ModelError, match="must be a JSON object, got list"):
        load_anomalib1_metadata(path)
    with pytest.raises(ModelError, match="cannot read anomalib metadata"):
        load_anomalib1_metadata(tmp_path / "absent.json")
