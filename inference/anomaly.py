"""anomalib outputs -> `AnomalyResult`: an image score in [0, 1] on which 0.5 is the exported
threshold, the anomaly map on the same scale, and what the rules need of the map (rules.py).

anomalib 2.x exports the whole pipeline, normalisation included: the ONNX outputs are named
after anomalib's `InferenceBatch` fields, those that are not None: `pred_score` ([B, 1], [B]
for PatchCore), `pred_label` (bool), `anomaly_map` ([B, 1, h, w] at the model's input
resolution, not the camera's) and `pred_mask` (bool), scores min-max normalised and clamped
so that 0.5 is the threshold (`PostProcessor._normalize`: ((x - threshold) / (max - min)) +
0.5, clamped to [0, 1]). `decode_anomalib2` reads `pred_score` and `anomaly_map`;
`pred_label` and `pred_mask` are only those two thresholded at 0.5 (anomalib: strictly
above), so the rules threshold the score and the map themselves, and a threshold override
in the manifest means what it says.

anomalib 1.x exports the bare torch model: ONE output named `output`, the raw anomaly map
([B, 1, h, w]) or, for a classification-only model, the raw score ([B]); the normalisation
statistics are in `metadata.json` beside the model (`load_anomalib1_metadata`), a flat JSON
object whose keys are the Lightning module's thresholds and the state_dict of its
normalisation MetricCollection: "image_threshold", "pixel_threshold", "pred_scores.min",
"pred_scores.max", "anomaly_maps.min", "anomaly_maps.max" (and "task", "box_scores.*",
unused here). `decode_anomalib1` applies what anomalib 1.x's `Inferencer._normalize` does:
score = clip(((raw score - image_threshold) / (pred_scores.max - pred_scores.min)) + 0.5,
0, 1), map = the same with pixel_threshold and anomaly_maps.min/max; the raw score of a map
output is the map's maximum (as its OpenVINO inferencer), normalised with the image
statistics.

Geometry: the map stays at the model's resolution. The daemon stretches the whole frame to
the model input (preprocess.py: a resize, no crop, no letterbox), so map pixel (i, j)
covers `map_scale` = (frame w / map w, frame h / map h) frame pixels, and an area is the
count of map pixels at or above the pixel threshold times their product. Resizing the map
to a 12 MP frame for every part would cost more than the model (`map_in_frame` does it when
a person wants to see it).

Timing (`timeit`, best of 5, on the 2-core dev VM shared with other work, numpy 2.4, a
float32 256x256 map for a 4096x3000 frame): decode_anomalib2 (pred_score + anomaly_map)
0.14-0.25 ms, decode_anomalib1 of a raw map (normalisation included) 0.13-0.16 ms,
`summarize` at another pixel threshold 0.07 ms.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np

from plcbridge.inference.errors import InferenceError, ModelError

ANOMALIB2_OUTPUTS = ("pred_score", "pred_label", "anomaly_map", "pred_mask")
ANOMALIB1_OUTPUT = "output"
METADATA_NAME = "metadata.json"
DEFAULT_PIXEL_THRESHOLD = 0.5
_RANGE_SLACK = 1e-5  # float32 rounding of a value anomalib clamped to [0, 1]


@dataclass(frozen=True)
class AnomalySummary:
    """The map at one pixel threshold: its max and mean (None without a map), the area at or
    above the threshold in frame pixels (None without a map), and the bounding box of those
    pixels as (x, y, w, h) in frame pixels (None when there are none)."""

    pixel_threshold: float
    max: float | None
    mean: float | None
    area_px: float | None
    box: tuple[int, int, int, int] | None


@dataclass(frozen=True)
class AnomalyResult:
    """One frame's anomaly verdict material. `score`: normalised, 0.5 = the exported
    threshold. `anomaly_map`: (h, w) float32 normalised the same way, at the model's
    resolution (None for a classification-only model). `frame_size`: (w, h) of the frame.
    `summary`: the map at the pixel threshold the decoder was given (default 0.5)."""

    score: float
    anomaly_map: np.ndarray | None
    frame_size: tuple[int, int]
    summary: AnomalySummary

    @property
    def map_scale(self) -> tuple[float, float]:
        """Frame pixels per map pixel along x and y (1, 1 without a map)."""
        if self.anomaly_map is None:
            return 1.0, 1.0
        mh, mw = self.anomaly_map.shape
        return self.frame_size[0] / mw, self.frame_size[1] / mh

    def summarize(self, pixel_threshold: float) -> AnomalySummary:
        """The summary at another pixel threshold (a manifest's override)."""
        if pixel_threshold == self.summary.pixel_threshold:
            return self.summary
        return _summarize(self.anomaly_map, self.frame_size, pixel_threshold)

    def map_in_frame(self) -> np.ndarray:
        """The map resized to the frame, (h, w) float32: for showing, not for the verdict."""
        if self.anomaly_map is None:
            raise ValueError("this result has no anomaly map")
        return cv2.resize(self.anomaly_map, self.frame_size, interpolation=cv2.INTER_LINEAR)


def _summarize(amap: np.ndarray | None, frame_size: tuple[int, int], pixel_threshold: float) -> AnomalySummary:
    if amap is None:
        return AnomalySummary(pixel_threshold, None, None, None, None)
    mh, mw = amap.shape
    sx, sy = frame_size[0] / mw, frame_size[1] / mh
    hot = amap >= pixel_threshold
    count = int(np.count_nonzero(hot))
    box = None
    if count:
        rows = np.flatnonzero(hot.any(axis=1))
        cols = np.flatnonzero(hot.any(axis=0))
        x1, y1 = math.floor(cols[0] * sx), math.floor(rows[0] * sy)
        x2, y2 = min(math.ceil((cols[-1] + 1) * sx), frame_size[0]), min(math.ceil((rows[-1] + 1) * sy), frame_size[1])
        box = (x1, y1, x2 - x1, y2 - y1)
    return AnomalySummary(pixel_threshold, float(amap.max()), float(amap.mean(dtype=np.float64)), count * sx * sy, box)


def _frame_size(frame_shape: tuple[int, ...]) -> tuple[int, int]:
    h, w = int(frame_shape[0]), int(frame_shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"frame_shape must be (h, w[, c]) with positive sizes, got {frame_shape}")
    return w, h


def _finite(a: np.ndarray, what: str) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.floating):
        raise InferenceError(f"{what}: expected floating-point values, got {a.dtype}")
    if a.size == 0:
        raise InferenceError(f"{what}: empty output, shape {a.shape}")
    if not (np.isfinite(a.min()) and np.isfinite(a.max())):  # NaN propagates through both
        raise InferenceError(f"{what}: output not finite (NaN or inf)")
    return a


def _score_value(out: object, what: str) -> float:
    """Batch index 0 of a [B] or [B, 1] score."""
    a = np.asarray(out)
    if not (a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1)) or a.shape[0] < 1:
        raise InferenceError(f"{what}: expected a score of shape [B] or [B, 1], got {a.shape}")
    return float(_finite(a, what).reshape(a.shape[0], -1)[0, 0])


def _map_image(out: object, what: str, map_size: tuple[int, int] | None) -> np.ndarray:
    """Batch index 0 of a [B, 1, h, w] or [B, h, w] map, as (h, w) float32."""
    a = np.asarray(out)
    if not ((a.ndim == 4 and a.shape[1] == 1) or a.ndim == 3) or a.shape[0] < 1:
        raise InferenceError(f"{what}: expected an anomaly map of shape [B, 1, h, w] or [B, h, w], got {a.shape}")
    m = _finite(a[0, 0] if a.ndim == 4 else a[0], what)
    if map_size is not None and (m.shape[1], m.shape[0]) != tuple(map_size):
        raise InferenceError(f"{what}: map is {m.shape[1]}x{m.shape[0]}, the manifest declares {map_size[0]}x{map_size[1]}")
    return m.astype(np.float32, copy=False)


def _in_unit_range(value: np.ndarray | float, what: str) -> None:
    lo, hi = (float(np.min(value)), float(np.max(value)))
    if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        raise InferenceError(f"{what}: values from {lo:g} to {hi:g}, not in [0, 1]: an anomalib 2.x export normalises "
                             "them; was the model exported without its post-processor (or is it anomalib 1.x, "
                             "which needs metadata.json)?")


def decode_anomalib2(outputs: Mapping[str, object], frame_shape: tuple[int, ...], *,
                     pixel_threshold: float = DEFAULT_PIXEL_THRESHOLD, map_size: tuple[int, int] | None = None) -> AnomalyResult:
    """anomalib 2.x outputs by name (`pred_score` and/or `anomaly_map`; others ignored, see the
    module docstring) for a frame of numpy shape `frame_shape`. `map_size` (w, h): the map
    size the model must produce, when known. Without `pred_score` the score is the map's
    maximum. Problems with the outputs raise InferenceError."""
    frame_size = _frame_size(frame_shape)
    if "pred_score" not in outputs and "anomaly_map" not in outputs:
        raise InferenceError(f"anomalib 2.x model gave neither pred_score nor anomaly_map (outputs: {sorted(outputs)})")
    amap = None
    if "anomaly_map" in outputs:
        amap = _map_image(outputs["anomaly_map"], "anomaly_map", map_size)
        _in_unit_range(amap, "anomaly_map")
    if "pred_score" in outputs:
        score = _score_value(outputs["pred_score"], "pred_score")
        _in_unit_range(score, "pred_score")
    else:
        assert amap is not None
        score = float(amap.max())
    score = min(max(score, 0.0), 1.0)
    if amap is not None:
        amap = np.clip(amap, 0.0, 1.0)  # a copy: the map may be a view of the session's output
    return AnomalyResult(score, amap, frame_size, _summarize(amap, frame_size, pixel_threshold))


@dataclass(frozen=True)
class AnomalibMetadata:
    """anomalib 1.x normalisation statistics (metadata.json); the map's are None when the
    file was read for a score-only model and does not have them."""

    image_threshold: float
    score_min: float
    score_max: float
    pixel_threshold: float | None = None
    map_min: float | None = None
    map_max: float | None = None
    source: str = METADATA_NAME

    @property
    def has_map_stats(self) -> bool:
        return None not in (self.pixel_threshold, self.map_min, self.map_max)


def _number(raw: dict[str, object], key: str, where: str) -> float | None:
    """raw[key] as a finite float, None when absent. Flat "pred_scores.min" is what anomalib
    1.x writes; a nested {"pred_scores": {"min": ...}} (hand-written) is read too."""
    group, _, field = key.partition(".")
    nested = raw.get(group) if field else None
    if key in raw and isinstance(nested, dict) and field in nested:
        raise ModelError(f"{where}: both {key!r} and {group!r}.{field!r}: keep one")
    if key in raw:
        value = raw[key]
    elif isinstance(nested, dict) and field in nested:
        value = nested[field]
    else:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelError(f"{where}: {key!r} must be a number, got {json.dumps(value)}")
    if not math.isfinite(value):
        raise ModelError(f"{where}: {key!r} must be a finite number, got {value}")
    return float(value)


def parse_anomalib1_metadata(raw: object, where: str = METADATA_NAME, needs_map: bool = True) -> AnomalibMetadata:
    """Validate anomalib 1.x metadata already parsed from JSON; `where` names the file in
    errors (ModelError). `needs_map`: the model outputs a map, so the pixel statistics are
    required too."""
    if not isinstance(raw, dict):
        raise ModelError(f"{where}: anomalib metadata must be a JSON object, got {type(raw).__name__}")
    required = ["image_threshold", "pred_scores.min", "pred_scores.max"]
    pixel = ["pixel_threshold", "anomaly_maps.min", "anomaly_maps.max"]
    values = {key: _number(raw, key, where) for key in required + pixel}
    missing = [key for key in required + (pixel if needs_map else []) if values[key] is None]
    if missing:
        raise ModelError(f"{where}: missing {', '.join(repr(k) for k in missing)}: anomalib 1.x writes them when the "
                         "model is trained with min-max normalisation (the default); without them its scores "
                         "cannot be put on the 0.5-threshold scale")
    for lo, hi in (("pred_scores.min", "pred_scores.max"), ("anomaly_maps.min", "anomaly_maps.max")):
        a, b = values[lo], values[hi]
        if a is not None and b is not None and not b > a:
            raise ModelError(f"{where}: {hi!r} ({b:g}) must be greater than {lo!r} ({a:g})")
    return AnomalibMetadata(
        image_threshold=values["image_threshold"],  # type: ignore[arg-type]  # checked: required
        score_min=values["pred_scores.min"],  # type: ignore[arg-type]
        score_max=values["pred_scores.max"],  # type: ignore[arg-type]
        pixel_threshold=values["pixel_threshold"],
        map_min=values["anomaly_maps.min"],
        map_max=values["anomaly_maps.max"],
        source=where,
    )


def load_anomalib1_metadata(path: str | Path, needs_map: bool = True) -> AnomalibMetadata:
    """Read and validate an anomalib 1.x metadata.json; every problem is a ModelError that
    names the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ModelError(f"{p}: cannot read anomalib metadata: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ModelError(f"{p}: anomalib metadata is not JSON text") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelError(f"{p}: anomalib metadata is not valid JSON: {e}") from None
    return parse_anomalib1_metadata(raw, str(p), needs_map)


def _normalize(x: np.ndarray | float, threshold: float, lo: float, hi: float) -> np.ndarray:
    """anomalib 1.x min-max normalisation: threshold -> 0.5, clamped to [0, 1]."""
    out = (np.asarray(x, np.float32) - np.float32(threshold)) / np.float32(hi - lo) + np.float32(0.5)
    return np.clip(out, 0.0, 1.0)


def decode_anomalib1(output: object, metadata: AnomalibMetadata, frame_shape: tuple[int, ...], *,
                     pixel_threshold: float = DEFAULT_PIXEL_THRESHOLD, map_size: tuple[int, int] | None = None) -> AnomalyResult:
    """anomalib 1.x's single `output` (a raw map [B, 1, h, w] / [B, h, w], or a raw score [B] /
    [B, 1]) normalised with `metadata`, for a frame of numpy shape `frame_shape`."""
    frame_size = _frame_size(frame_shape)
    a = np.asarray(output)
    what = f"anomalib 1.x {ANOMALIB1_OUTPUT!r}"
    if a.ndim <= 2:
        raw_score = _score_value(a, what)
        score = float(_normalize(raw_score, metadata.image_threshold, metadata.score_min, metadata.score_max))
        return AnomalyResult(score, None, frame_size, _summarize(None, frame_size, pixel_threshold))
    raw = _map_image(a, what, map_size)
    if not metadata.has_map_stats:
        raise InferenceError(f"{what} is an anomaly map, and {metadata.source} has no pixel_threshold / "
                             "anomaly_maps.min / anomaly_maps.max to normalise it with")
    score = float(_normalize(float(raw.max()), metadata.image_threshold, metadata.score_min, metadata.score_max))
    amap = _normalize(raw, metadata.pixel_threshold, metadata.map_min, metadata.map_max)  # type: ignore[arg-type]
    return AnomalyResult(score, amap, frame_size, _summarize(amap, frame_size, pixel_threshold))
