"""`plcbridge manifest MODEL.onnx`: scaffold the manifest.json of a new model.

A manifest (docs/manifest.md) pins what the daemon must know about an ONNX file besides
its weights. Most of it can be read off the file itself: the input and output names,
shapes and dtypes (from ONNX Runtime, which is always installed), the default-domain opset
(the project's own protobuf reader, `plcbridge.inference.modelfile`, the same one the
daemon and `validate-model` use) and the sha256. The rest are defaults derived from the
input shape (resize to the model's H x W, gray or RGB from C, the layout from where C is)
that the engineer must confirm against the training code: the tool writes the file next
to the model, validates it with `load_manifest` and prints that checklist.

Exit 0 when the manifest was written and loads, 2 on bad input (no such file, not an ONNX
model, an interface the manifest cannot describe, an existing manifest without --force),
1 if the written manifest does not load (a bug here: the message says why).

The lead registers it in cli.py as

    manifest_tool.add_arguments(sub.add_parser("manifest", help=manifest_tool.HELP))

(`add_arguments` sets `func=run`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HELP = "scaffold manifest.json for an .onnx model (interface, opset, sha256, preprocessing defaults)"

# ONNX Runtime's type names for the tensor dtypes a manifest can name (inference/manifest.py).
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}
_NORMALIZE = {
    # name -> (mean, std) per channel after `scale`: what the engineer must confirm against training.
    "unit": ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]),  # pixels / 255, i.e. 0..1
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),  # torchvision's pretrained weights
    "symmetric": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),  # -1..1
}


class UsageError(Exception):
    """Bad input: the message says what is wrong and what to do; exit 2."""


@dataclass
class Scaffold:
    manifest: dict[str, Any]
    checks: list[str] = field(default_factory=list)  # what the engineer must still confirm


def _dims(shape: list[Any]) -> list[Any]:
    """The ONNX Runtime shape with symbolic dims (str/None) kept as None."""
    return [d if isinstance(d, int) and d >= 1 else None for d in shape]


def _fixed_output_shape(shape: list[Any], name: str) -> list[int]:
    dims = _dims(shape)
    if dims and dims[0] is None:
        dims[0] = 1  # batch
    if any(d is None for d in dims):
        raise UsageError(f"output {name!r} has shape {shape} with a symbolic dimension other than the batch; "
                         "the manifest needs the number of values the model gives per frame (export with a fixed shape)")
    return dims


def _layout_and_shape(shape: list[Any], name: str, size: tuple[int, int] | None) -> tuple[str, int, int, int]:
    """(layout, channels, h, w) for a 4-D image input; symbolic H/W need `size` (w, h)."""
    if len(shape) != 4:
        raise UsageError(f"input {name!r} has shape {shape}: the daemon feeds one image as a 4-D tensor "
                         "(1, C, H, W) or (1, H, W, C)")
    dims = _dims(shape)
    if dims[0] not in (None, 1):
        raise UsageError(f"input {name!r} has a fixed batch of {dims[0]}; the daemon judges one frame per run (batch 1)")
    if dims[1] in (1, 3):
        layout, c, h, w = "nchw", dims[1], dims[2], dims[3]
    elif dims[3] in (1, 3):
        layout, c, h, w = "nhwc", dims[3], dims[1], dims[2]
    else:
        raise UsageError(f"input {name!r} has shape {shape}: no channel dimension of 1 or 3 at position 1 (NCHW) "
                         "or 3 (NHWC); the manifest knows gray and 3-channel images only")
    if h is None or w is None:
        if size is None:
            raise UsageError(f"input {name!r} has shape {shape}: its height/width are symbolic; "
                             "pass --size WxH (the size the model was trained at)")
        w, h = size
    elif size is not None and tuple(size) != (w, h):
        raise UsageError(f"--size {size[0]}x{size[1]} contradicts the model's fixed input {w}x{h} (shape {shape})")
    return layout, c, h, w


def scaffold(model_path: Path, *, name: str | None = None, version: int = 1, color: str | None = None,
             normalize: str = "unit", kind: str | None = None, fail_classes: list[int] | None = None,
             threshold: float = 0.5, size: tuple[int, int] | None = None) -> Scaffold:
    """Read `model_path` and return the manifest dict to write beside it, with the checklist.

    Raises UsageError for input that is not a model a manifest can describe."""
    import onnxruntime as ort

    from plcbridge.inference.errors import ort_load_reason
    from plcbridge.inference.modelfile import default_opset

    if not model_path.exists():
        raise UsageError(f"{model_path}: no such file")
    if not model_path.is_file():
        raise UsageError(f"{model_path}: not a file (pass the .onnx model file itself)")
    try:
        data = model_path.read_bytes()
    except OSError as e:
        raise UsageError(f"{model_path}: cannot read: {e.strerror or e}") from None
    try:
        opset = default_opset(data)
    except (ValueError, IndexError, UnicodeDecodeError):
        opset = None
        parse_failed = True
    else:
        parse_failed = False
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3  # the reason goes into our message, not onto stderr twice
        session = ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidProtobuf, ...)
        why = ort_load_reason(e, opset, ort.__version__)
        raise UsageError(f"{model_path}: not an ONNX model onnxruntime {ort.__version__} can load: {why}") from None
    if opset is None:
        why = "its protobuf could not be parsed" if parse_failed else "it declares no default-domain opset"
        raise UsageError(f"{model_path}: onnxruntime loads it, but {why} (ai.onnx opset_import)")

    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise UsageError(f"{model_path}: {len(inputs)} inputs {[i.name for i in inputs]}; the daemon feeds exactly one "
                         "image tensor")
    inp = inputs[0]
    checks: list[str] = []
    in_dtype = _ORT_DTYPES.get(inp.type)
    if in_dtype is None:
        raise UsageError(f"{model_path}: input {inp.name!r} is {inp.type}; a manifest input is float32, float16 or uint8")
    layout, channels, h, w = _layout_and_shape(list(inp.shape), inp.name, size)

    out = outputs[0]
    if len(outputs) > 1:
        checks.append(f"output: the model has {len(outputs)} outputs {[o.name for o in outputs]}; the first, "
                      f"{out.name!r}, was taken: edit output.name/shape/dtype if the verdict comes from another")
    out_dtype = _ORT_DTYPES.get(out.type)
    if out_dtype is None:
        raise UsageError(f"{model_path}: output {out.name!r} is {out.type}; a manifest output is float32, float16 or uint8")
    out_shape = _fixed_output_shape(list(out.shape), out.name)
    n_out = 1
    for d in out_shape:
        n_out *= d

    if channels == 1:
        if color not in (None, "gray"):
            raise UsageError(f"--color {color}: the model's input has 1 channel, which is gray")
        color = "gray"
    else:
        if color == "gray":
            raise UsageError("--color gray: the model's input has 3 channels (rgb or bgr)")
        if color is None:
            color = "rgb"
            checks.append("preprocessing.color: \"rgb\" assumed (PIL/torchvision training); use \"bgr\" if the model "
                          "was trained on OpenCV-loaded images")
    if in_dtype == "uint8":
        scale, mean, std = 1.0, [0.0] * channels, [1.0] * channels
        checks.append("preprocessing: the input is uint8, so it takes raw 0..255 pixels (scale 1, mean 0, std 1); "
                      "make sure any normalisation is inside the graph")
    else:
        scale = 1 / 255
        m, s = _NORMALIZE[normalize]
        if channels == 1:
            m, s = m[:1], s[:1]
        mean, std = list(m), list(s)
        checks.append(f"preprocessing.scale/mean/std: {normalize!r} normalisation assumed, i.e. (pixel * {scale:.6g} "
                      f"- mean) / std with mean {mean} and std {std}: copy the training code's values")

    if kind is None:
        kind = "probability" if n_out == 1 else "softmax"
        if n_out == 1:
            checks.append("output.kind: \"probability\" assumed (a sigmoid in the graph, 1 = defect); use \"logit\" if "
                          "the graph ends before the sigmoid")
        else:
            checks.append(f"output.kind: \"softmax\" assumed over {n_out} values: the graph must output probabilities "
                          "(a Softmax node), not raw logits")
    manifest_output: dict[str, Any] = {"name": out.name, "shape": out_shape, "dtype": out_dtype, "kind": kind}
    if kind == "softmax":
        if fail_classes is None and n_out != 2:
            raise UsageError(f"output {out.name!r} has {n_out} classes: pass --fail-classes I[,J...] (the class indices "
                             "whose probabilities add up to the defect score)")
        if fail_classes is not None:
            manifest_output["fail_classes"] = fail_classes
        else:
            checks.append("output.fail_classes: omitted, so class 1 of 2 means FAIL (class 0 PASS); set it if the "
                          "classes are the other way round")
    elif n_out != 1:
        raise UsageError(f"--kind {kind}: output {out.name!r} has {n_out} values; {kind} needs exactly 1")

    checks.append(f"threshold: {threshold} (score >= threshold is FAIL): set it from the validation set's "
                  "operating point")
    checks.append(f"version: {version} is what the PLC reads as model_version (u16, 0..65535): raise it for "
                  "every model you deploy")

    manifest = {
        "name": name or model_path.stem,
        "version": version,
        "file": model_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "opset": opset,
        "input": {"name": inp.name, "shape": [1, channels, h, w] if layout == "nchw" else [1, h, w, channels],
                  "dtype": in_dtype},
        "output": manifest_output,
        "preprocessing": {"resize": [w, h], "color": color, "scale": scale, "mean": mean, "std": std,
                          "layout": layout},
        "threshold": threshold,
        "labels": ["pass", "fail"],
    }
    return Scaffold(manifest, checks)


def _size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    try:
        size = (int(w), int(h))
    except ValueError:
        size = (0, 0)
    if not sep or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, e.g. 224x224, got {text!r}")
    return size


def _classes(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected class indices like 1 or 2,3, got {text!r}")
    return values


def _version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"the version is the PLC's u16 model_version signal, 0..65535, got {text!r}")
    return value


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a score between 0 and 1, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Write manifest.json beside an .onnx model: interface, opset and sha256 read from the file, "
                     "preprocessing defaults from its input shape. Prints what must still be checked by hand.")
    p.add_argument("model", type=Path, help="the .onnx file; manifest.json is written in its directory")
    p.add_argument("--name", default=None, help="model name (default: the file name without .onnx)")
    p.add_argument("--version", type=_version, default=1, help="model version, what the PLC reads as model_version (default 1)")
    p.add_argument("--color", choices=["rgb", "bgr", "gray"], default=None,
                   help="channel order the model was trained on (default: gray for 1 channel, rgb for 3)")
    p.add_argument("--normalize", choices=sorted(_NORMALIZE), default="unit",
                   help="mean/std after scaling pixels to 0..1: unit (none, default), imagenet, symmetric (-1..1)")
    p.add_argument("--kind", choices=["probability", "logit", "softmax"], default=None,
                   help="how the output becomes the defect score (default: probability for 1 value, softmax for more)")
    p.add_argument("--fail-classes", type=_classes, default=None, metavar="I[,J...]",
                   help="softmax: class indices that mean FAIL (needed for more than 2 classes)")
    p.add_argument("--threshold", type=_threshold, default=0.5, help="score >= threshold is FAIL (default 0.5)")
    p.add_argument("--size", type=_size, default=None, metavar="WxH",
                   help="input width x height, for a model exported with a symbolic height/width")
    p.add_argument("--force", action="store_true", help="overwrite an existing manifest.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from plcbridge.inference.errors import ModelError
    from plcbridge.inference.manifest import MANIFEST_NAME, load_manifest

    model: Path = args.model
    target = model.parent / MANIFEST_NAME
    try:
        if model.suffix.lower() != ".onnx" and model.is_file():
            raise UsageError(f"{model}: not an .onnx file (pass the model file; the manifest is written beside it)")
        if target.exists() and not args.force:
            raise UsageError(f"{target} already exists; pass --force to overwrite it (or edit it by hand)")
        result = scaffold(model, name=args.name, version=args.version, color=args.color, normalize=args.normalize,
                          kind=args.kind, fail_classes=args.fail_classes, threshold=args.threshold, size=args.size)
    except UsageError as e:
        print(f"plcbridge manifest: {e}", file=sys.stderr)
        return 2
    tmp = target.with_name(f".{MANIFEST_NAME}.tmp")
    try:
        tmp.write_text(json.dumps(result.manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        print(f"plcbridge manifest: cannot write {target}: {e.strerror or e}", file=sys.stderr)
        return 2
    try:
        load_manifest(target)
    except ModelError as e:
        print(f"plcbridge manifest: wrote {target}, but it does not load:\n{e}", file=sys.stderr)
        return 1
    m = result.manifest
    print(f"wrote {target}")
    print(f"  {m['file']}: sha256 {m['sha256']}, opset {m['opset']}")
    print(f"  input  {m['input']['name']!r} {m['input']['shape']} {m['input']['dtype']}")
    print(f"  output {m['output']['name']!r} {m['output']['shape']} {m['output']['dtype']} ({m['output']['kind']})")
    print("Check before deploying (docs/manifest.md):")
    for item in result.checks:
        print(f"  - {item}")
    print(f"Then: plcbridge validate-model {target.parent} --p99-max-ms MS  (on the line PC's hardware class)")
    return 0
