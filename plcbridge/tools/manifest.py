"""`plcbridge manifest`: scaffold the manifest.json of a new model.

A manifest (docs/manifest.md) pins what the daemon must know about an ONNX file besides
its weights. Most of it can be read off the file itself: the input and output names,
shapes and dtypes (from ONNX Runtime, which is always installed), the default-domain opset
and the external weight files the graph names (the project's own protobuf reader,
`plcbridge.inference.modelfile`, the same one the daemon and `validate-model` use), the
model's metadata_props and the sha256 of every file. The rest are defaults that the
engineer must confirm against the training code: the tool writes the file next to the
model, validates it with `load_manifest` and prints what it recognised, why, and that
checklist.

What it recognises, from the export's signature (tests/export_fixtures.py builds each):

- anomalib 2.x (`ExportMixin.to_onnx`, v2.0.0): input `input`, outputs among `pred_score`,
  `pred_label`, `anomaly_map`, `pred_mask` (the `InferenceBatch` fields). kind "anomaly",
  format "anomalib2"; the graph normalises (ImageNet mean/std inside), so preprocessing is
  RGB, scale 1/255, mean 0, std 1, `normalized_in_graph`;
- anomalib 1.x (v1.2.0): input `input`, one output `output`, and `metadata.json` beside the
  model (its normalisation statistics): format "anomalib1", the metadata pinned by sha256;
- Ultralytics YOLO (engine/exporter.py) and YOLOv5 (export.py): metadata_props `names`
  (str() of a dict, read with `ast.literal_eval`, never eval), and from Ultralytics `imgsz`,
  `stride`, `task`, `end2end`, `args`. The output shapes decide the layout: [B, 4+nc, N]
  yolov8, [B, 300, 6] end2end (nms=True or an end-to-end head), [B, N, 5+nc] yolov5, and a
  segment model's second output, the prototypes [B, 32, H/4, W/4]. kind "detection" or
  "segmentation", class names in index order, preprocessing RGB 1/255 letterboxed with
  grey 114 as Ultralytics' predict does. An Ultralytics export carries its licence string
  (AGPL-3.0) in metadata_props: the tool says so;
- anything else: a classifier, its first output the defect score.

External weights (`model.onnx.data`, or whatever `location` the graph's tensors name) are
listed in `external_data` with their sha256, and handed to ONNX Runtime from the bytes
hashed, as the daemon does. A fixed batch (anomalib can export 2) stays in `input.shape`
for anomaly and detection models. What the tool cannot know, the verdict rules
(thresholds, minimum areas, the roi), it writes as the permissive defaults and lists.

Exit 0 when the manifest was written and loads, 2 on bad input (no such file, not an ONNX
model, an interface the manifest cannot describe, an export whose outputs are not its
tool's, an existing manifest without --force), 1 if the written manifest does not load (a
bug here: the message says why).

The lead registers it in cli.py as

    manifest_tool.add_arguments(sub.add_parser("manifest", help=manifest_tool.HELP))

(`add_arguments` sets `func=run`).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

HELP = ("scaffold manifest.json for an .onnx model (interface, opset, sha256, preprocessing defaults; "
        "recognises anomalib and Ultralytics/YOLOv5 exports)")

# ONNX Runtime's type names for the tensor dtypes a manifest can name (inference/manifest.py).
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}
# ... and for the outputs of the other kinds (anomalib's pred_label and pred_mask are bool).
_GRAPH_DTYPES = {**_ORT_DTYPES, "tensor(bool)": "bool", "tensor(int64)": "int64"}
_NUMPY_DTYPES = {"float32": "float32", "float16": "float16", "uint8": "uint8"}
_NORMALIZE = {
    # name -> (mean, std) per channel after `scale`: what the engineer must confirm against training.
    "unit": ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]),  # pixels / 255, i.e. 0..1
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),  # torchvision's pretrained weights
    "symmetric": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),  # -1..1
}
UNIT_SCALE = 1 / 255
DEFAULT_THRESHOLD = 0.5  # a classifier's, and anomalib's (its outputs are normalised so 0.5 is its threshold)
DEFAULT_MIN_SCORE = 0.25  # Ultralytics' own predict confidence
ANOMALIB2_OUTPUTS = ("pred_score", "pred_label", "anomaly_map", "pred_mask")
ANOMALIB1_OUTPUT = "output"
ANOMALIB1_METADATA = "metadata.json"
YOLO_PAD_VALUE = 114  # Ultralytics' letterbox grey
YOLO_MASK_COEFFS = 32
YOLO_TASKS = ("detect", "segment")
LITERAL_MAX_CHARS = 100_000  # a `names` longer than this is not a class list (and literal_eval of it is slow)


class UsageError(Exception):
    """Bad input: the message says what is wrong and what to do; exit 2."""


@dataclass
class Scaffold:
    manifest: dict[str, Any]
    checks: list[str] = field(default_factory=list)  # what the engineer must still decide or confirm
    recognised: str = ""  # what the file was taken for, and from what in it
    notes: list[str] = field(default_factory=list)  # worth knowing, nothing to decide (licence, batch)


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


# --------------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------------


@dataclass
class _Export:
    """What scaffold() read off the file: its bytes, the loaded session, metadata_props and
    the external weight files (location as the graph names it -> bytes)."""

    path: Path
    data: bytes
    opset: int
    session: Any  # onnxruntime.InferenceSession
    metadata: dict[str, str]
    external: dict[str, bytes]


def _external_files(model_path: Path, data: bytes) -> dict[str, bytes]:
    """The files the graph keeps tensor data in, read from beside the model."""
    from plcbridge.inference.modelfile import external_data_files

    try:
        locations = external_data_files(data)
    except (ValueError, IndexError, UnicodeDecodeError):
        return {}  # not a readable ModelProto: onnxruntime says why below
    files: dict[str, bytes] = {}
    for location in locations:
        rel = PurePosixPath(location.replace("\\", "/"))
        if not location or rel.is_absolute() or ".." in rel.parts:
            raise UsageError(f"{model_path}: the graph keeps weights in {location!r}, which is not a file inside "
                             "the model's directory; export it again with its weights in one file beside it "
                             "(onnx.save_model(..., save_as_external_data=True, location='model.onnx.data'))")
        path = model_path.parent / rel
        try:
            files[location] = path.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"{model_path}: the graph keeps its weights in the external file {location!r}, which is "
                             f"not beside it (looked for {path}): copy it from the export folder together with "
                             f"{model_path.name}") from None
        except OSError as e:
            raise UsageError(f"{model_path}: cannot read its external weights file {path}: {e.strerror or e}") from None
    return files


def _load(model_path: Path) -> _Export:
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
    external = _external_files(model_path, data)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3  # the reason goes into our message, not onto stderr twice
        if external:  # as the daemon does: from the bytes hashed, never re-read by onnxruntime
            names = list(external)
            so.add_external_initializers_from_files_in_memory(names, [external[n] for n in names],
                                                              [len(external[n]) for n in names])
        session = ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidProtobuf, ...)
        why = ort_load_reason(e, opset, ort.__version__)
        raise UsageError(f"{model_path}: not an ONNX model onnxruntime {ort.__version__} can load: {why}") from None
    if opset is None:
        why = "its protobuf could not be parsed" if parse_failed else "it declares no default-domain opset"
        raise UsageError(f"{model_path}: onnxruntime loads it, but {why} (ai.onnx opset_import)")
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    return _Export(model_path, data, opset, session, metadata, external)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Recognising the export
# --------------------------------------------------------------------------------------------


def _literal(text: str) -> Any:
    """A metadata_props value as Ultralytics wrote it (str() of a Python value), parsed with
    ast.literal_eval: literals only, nothing is ever called or imported. ValueError if it is
    not a literal."""
    if len(text) > LITERAL_MAX_CHARS:
        raise ValueError(f"{len(text)} characters long")
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        # ast's own message names its node classes ("malformed node or string ... <ast.Name
        # object at 0x...>"): nothing an engineer can act on.
        raise ValueError("not a Python literal") from None


def parse_class_names(text: str) -> tuple[list[str], str]:
    """Ultralytics' `names` metadata -> (class names in index order, what it was).

    Ultralytics writes str() of a dict {0: 'a', 1: 'b'}; YOLOv5 before v7 a list ['a', 'b'].
    Both are accepted; anything else (not a literal, other types, indices that are not
    0..n-1, empty names) is a ValueError saying what was found: the classes' order is the
    model's output order, and a guess at it would misname every defect."""
    shown = text if len(text) <= 120 else text[:117] + "..."
    try:
        value = _literal(text)
    except ValueError as e:
        raise ValueError(f"names {shown!r} is {e}") from None
    if isinstance(value, dict):
        keys = list(value)
        if not keys or any(isinstance(k, bool) or not isinstance(k, int) for k in keys) or sorted(keys) != list(range(len(keys))):
            raise ValueError(f"names {shown!r}: the keys must be the class indices 0..n-1, got {sorted(map(repr, keys))[:10]}")
        names = [value[i] for i in range(len(keys))]
        what = "a dict of class indices, as Ultralytics writes it"
    elif isinstance(value, (list, tuple)) and value:
        names = list(value)
        what = "a list, as YOLOv5 before v7 wrote it"
    else:
        raise ValueError(f"names {shown!r} is a {type(value).__name__}, not a dict of class indices to names "
                         "({0: 'scratch', 1: 'dent'})")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"names {shown!r}: every class name must be a non-empty string, got {bad[:5]}")
    return names, what


def _class_names_arg(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
    else:
        value = [v.strip() for v in text.split(",")]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise argparse.ArgumentTypeError(f"expected class names in index order, like scratch,dent or a JSON list "
                                         f"[\"scratch\", \"dent\"], got {text!r}")
    return value


def _signature(ex: _Export) -> tuple[str | None, str]:
    """("anomalib2" | "anomalib1" | "yolo" | None, why): which export this is, from its
    input/output names, metadata_props and the files beside it."""
    inp = ex.session.get_inputs()[0]
    names = [o.name for o in ex.session.get_outputs()]
    if inp.name == "input" and set(names) <= set(ANOMALIB2_OUTPUTS) and {"pred_score", "anomaly_map"} & set(names):
        return "anomalib2", (f"input 'input' and outputs {names}: the fields of anomalib 2.x's InferenceBatch, "
                             "as its ExportMixin.to_onnx names them")
    if inp.name == "input" and names == [ANOMALIB1_OUTPUT]:
        beside = ex.path.parent / ANOMALIB1_METADATA
        if beside.is_file():
            return "anomalib1", (f"input 'input', one output 'output' and {ANOMALIB1_METADATA} beside it: "
                                 "anomalib 1.x's ExportMixin.to_onnx")
        shape = ex.session.get_outputs()[0].shape
        if len(shape) == 4:
            raise UsageError(f"{ex.path}: input 'input' and one output 'output' {list(shape)}: an anomalib 1.x "
                             f"anomaly map, but there is no {ANOMALIB1_METADATA} beside it (looked for {beside}); "
                             "its normalisation statistics are in that file: copy it from the export folder "
                             "(weights/onnx/metadata.json)")
    if "names" in ex.metadata:
        task = ex.metadata.get("task")
        origin = "Ultralytics" if task is not None else "YOLOv5 (metadata_props stride and names only)"
        return "yolo", f"metadata_props names{', task ' + repr(task) if task else ''}: {origin} export"
    return None, ("no export signature it knows (anomalib: input 'input' with pred_score/anomaly_map, or 'output' "
                  "with metadata.json beside it; Ultralytics/YOLOv5: metadata_props 'names')")


def _nchw_input(ex: _Export, size: tuple[int, int] | None, from_metadata: tuple[int, int] | None = None,
                metadata_what: str = "") -> tuple[int, int, int, list[str]]:
    """(batch, h, w, notes) of an NCHW 3-channel image input with a fixed or symbolic batch.
    Symbolic H/W come from `size` (w, h), else `from_metadata` (w, h)."""
    inp = ex.session.get_inputs()[0]
    shape = list(inp.shape)
    dims = _dims(shape)
    notes: list[str] = []
    if len(dims) != 4 or dims[1] != 3:
        raise UsageError(f"{ex.path}: input {inp.name!r} has shape {shape}; this export's input is [B, 3, H, W] (RGB, NCHW)")
    batch = dims[0] or 1
    h, w = dims[2], dims[3]
    if h is None or w is None:
        if size is not None:
            w, h = size
        elif from_metadata is not None:
            w, h = from_metadata
            notes.append(f"input {inp.name!r} {shape} has a symbolic height/width: {w}x{h} taken from {metadata_what}")
        else:
            raise UsageError(f"{ex.path}: input {inp.name!r} has shape {shape}: its height/width are symbolic; "
                             "pass --size WxH (the size the model was trained at)")
    elif size is not None and tuple(size) != (w, h):
        raise UsageError(f"--size {size[0]}x{size[1]} contradicts the model's fixed input {w}x{h} (shape {shape})")
    if batch > 1:
        notes.append(f"the input has a fixed batch of {batch}: the daemon puts the frame in every slot and reads slot 0, "
                     f"so each frame costs {batch} images' inference; export with batch 1 (or a dynamic batch) to save it")
    return batch, h, w, notes


def _input_dtype(ex: _Export) -> str:
    inp = ex.session.get_inputs()[0]
    dtype = _ORT_DTYPES.get(inp.type)
    if dtype not in ("float32", "float16"):
        raise UsageError(f"{ex.path}: input {inp.name!r} is {inp.type}; this export takes float32 or float16 pixels")
    return dtype


def _graph_outputs(ex: _Export, input_shape: list[int], dtype: str) -> list[dict[str, Any]]:
    """Every graph output as the manifest's `outputs` entries. Symbolic dims (a dynamic batch,
    a dynamic export's anchor count) are what one run on a black input of `input_shape` gives."""
    import numpy as np

    outs = ex.session.get_outputs()
    entries = []
    for o in outs:
        dt = _GRAPH_DTYPES.get(o.type)
        if dt is None:
            raise UsageError(f"{ex.path}: output {o.name!r} is {o.type}; the manifest knows {sorted(set(_GRAPH_DTYPES.values()))}")
        entries.append({"name": o.name, "shape": _dims(list(o.shape)), "dtype": dt})
    if any(None in e["shape"] for e in entries):
        x = np.zeros(input_shape, _NUMPY_DTYPES[dtype])
        try:
            arrays = ex.session.run([o.name for o in outs], {ex.session.get_inputs()[0].name: x})
        except Exception as e:
            from plcbridge.inference.errors import ort_load_reason

            raise UsageError(f"{ex.path}: some output shapes are symbolic, and one run on a black {input_shape} input "
                             f"to learn them failed: {ort_load_reason(e)}") from None
        for entry, a in zip(entries, arrays):
            entry["shape"] = [int(d) for d in np.shape(a)]
            if not entry["shape"] or min(entry["shape"]) < 1:
                raise UsageError(f"{ex.path}: output {entry['name']!r} is empty ({list(np.shape(a))}) for a black input")
    return entries


def _prevalidate(manifest: dict[str, Any], path: Path, what: str) -> None:
    """The manifest's own consistency checks before anything is written: a faulty export
    (a map of the wrong rank, prototypes of the wrong size) is said as bad input."""
    from pydantic import ValidationError

    from plcbridge.inference.manifest import Manifest
    from plcbridge.schema import validation_problems

    try:
        Manifest.model_validate(manifest)
    except ValidationError as e:
        problems = "; ".join(f"{where}: {why}" for where, why in validation_problems(e, root=Manifest))
        raise UsageError(f"{path}: looks like {what}, but not as that tool exports it: {problems}") from None


# --------------------------------------------------------------------------------------------
# anomalib
# --------------------------------------------------------------------------------------------


def _anomalib(ex: _Export, fmt: str, *, color: str | None, size: tuple[int, int] | None,
              threshold: float | None) -> tuple[dict[str, Any], list[str], list[str]]:
    """The kind-specific part of an anomalib export's manifest, the checks and the notes."""
    from plcbridge.inference.anomaly import parse_anomalib1_metadata
    from plcbridge.inference.errors import ModelError

    dtype = _input_dtype(ex)
    batch, h, w, notes = _nchw_input(ex, size)
    inp = ex.session.get_inputs()[0]
    input_shape = [batch, 3, h, w]
    outputs = _graph_outputs(ex, input_shape, dtype)
    section: dict[str, Any] = {"format": fmt}
    checks: list[str] = []
    has_map = any(o["name"] in ("anomaly_map", ANOMALIB1_OUTPUT) and len(o["shape"]) == 4 for o in outputs)
    if fmt == "anomalib1":
        meta_path = ex.path.parent / ANOMALIB1_METADATA
        raw = meta_path.read_bytes()
        try:
            parse_anomalib1_metadata(json.loads(raw), str(meta_path), needs_map=has_map)
        except ValueError as e:  # not JSON (json.JSONDecodeError is a ValueError)
            raise UsageError(f"{meta_path}: anomalib metadata is not valid JSON: {e}") from None
        except ModelError as e:
            raise UsageError(str(e)) from None
        section["metadata"] = {"file": ANOMALIB1_METADATA, "sha256": _sha256(raw)}
        checks.append("preprocessing: anomalib 1.x (>= 1.0) exports its transform (resize, ImageNet normalisation) "
                      "inside the graph, so only scale 1/255 is applied here; a model from anomalib 0.x has it "
                      "outside: then set its mean/std and normalized_in_graph false")
    else:
        checks.append("preprocessing: anomalib 2.x normalises inside the graph (ImageNet mean/std), so only "
                      "scale 1/255 (0..1 RGB) is applied here: normalized_in_graph true")
    t = DEFAULT_THRESHOLD if threshold is None else threshold
    section["rules"] = {"threshold": t, "pixel_threshold": DEFAULT_THRESHOLD, "min_area": 0.0}
    checks.append(f"anomaly.rules.threshold: {t:g} on the normalised score (0.5 is the threshold anomalib computed "
                  "on its validation set): lower it to reject more, raise it to reject less")
    if has_map:
        checks.append("anomaly.rules.min_area: 0 px, so any score at or above the threshold fails the part; set the "
                      "smallest anomalous area (frame pixels at or above pixel_threshold) that is a defect, so a "
                      "tiny blob passes; anomaly.rules.pixel_threshold 0.5 is anomalib's own")
    else:
        checks.append("the model gives a score, no anomaly map: anomaly.rules.min_area cannot be used")
    checks.append(f"preprocessing.resize {w}x{h}: the whole frame is stretched to the model's input (no crop): if "
                  "training cropped (e.g. a CenterCrop), crop the camera image to match; set `frame` limits to what "
                  "the camera delivers")
    part = {
        "kind": "anomaly",
        "input": {"name": inp.name, "shape": input_shape, "dtype": dtype},
        "outputs": outputs,
        "preprocessing": {"resize": [w, h], "color": color or "rgb", "scale": UNIT_SCALE, "mean": [0.0, 0.0, 0.0],
                          "std": [1.0, 1.0, 1.0], "layout": "nchw", "normalized_in_graph": True},
        "anomaly": section,
    }
    return part, checks, notes


# --------------------------------------------------------------------------------------------
# Ultralytics / YOLOv5
# --------------------------------------------------------------------------------------------


def _imgsz(text: str | None) -> tuple[int, int] | None:
    """Ultralytics' imgsz ("[640, 640]", [h, w], or one int) as (w, h); None if absent or odd."""
    if text is None:
        return None
    try:
        value = _literal(text)
    except ValueError:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (isinstance(value, (list, tuple)) and len(value) in (1, 2)
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        h, w = value[0], value[-1]
        return w, h
    return None


def _flag(meta: dict[str, str], key: str) -> bool:
    try:
        return _literal(meta[key]) is True if key in meta else False
    except ValueError:
        return False


def _yolo_layout(ex: _Export, outputs: list[dict[str, Any]], nc: int, task: str | None, nms: bool) -> tuple[str, str]:
    """(layout, why) from the output shapes (module docstring)."""
    names = [o["name"] for o in outputs]
    seg = len(outputs) == 2 and len(outputs[1]["shape"]) == 4 and outputs[1]["shape"][1] == YOLO_MASK_COEFFS
    if len(outputs) > 2 or (len(outputs) == 2 and not seg):
        raise UsageError(f"{ex.path}: outputs {[(o['name'], o['shape']) for o in outputs]}: a YOLO export has output0, "
                         f"and for segmentation output1, the {YOLO_MASK_COEFFS} mask prototypes [B, 32, H/4, W/4]")
    if task == "segment" and not seg:
        raise UsageError(f"{ex.path}: metadata task 'segment', but no prototype output [B, 32, H/4, W/4] "
                         f"(outputs {[(o['name'], o['shape']) for o in outputs]})")
    if task == "detect" and seg:
        raise UsageError(f"{ex.path}: metadata task 'detect', but a second output {names[1]!r} {outputs[1]['shape']} "
                         "like a segment model's prototypes")
    if seg and task is None:
        raise UsageError(f"{ex.path}: a YOLOv5 segment export: plcbridge reads Ultralytics (v8/11) segment exports "
                         "only; export the model with Ultralytics")
    shape = outputs[0]["shape"]
    if len(shape) != 3:
        raise UsageError(f"{ex.path}: output {names[0]!r} has shape {shape}; a YOLO head gives [B, 4+nc, N], "
                         "[B, N, 6] or [B, N, 5+nc]")
    nm = YOLO_MASK_COEFFS if seg else 0
    fits = []
    if shape[1] == 4 + nc + nm:
        fits.append("yolov8")
    if shape[2] == 6 + nm:
        fits.append("end2end")
    if task is None and not seg and shape[2] == 5 + nc:
        fits.append("yolov5")
    if not fits:
        expected = (f"[B, {4 + nc + nm}, N] (raw head: 4 box + {nc} class{f' + {nm} mask' if nm else ''} rows) or "
                    f"[B, N, {6 + nm}] (NMS in the graph / end-to-end head)")
        if task is None and not seg:
            expected += f" or [B, N, {5 + nc}] (YOLOv5)"
        raise UsageError(f"{ex.path}: output {names[0]!r} {shape} does not fit {nc} class(es) from metadata names: "
                         f"expected {expected}")
    if len(fits) == 1:
        layout = fits[0]
    elif nms and "end2end" in fits:
        layout = "end2end"
    elif task is None and "yolov5" in fits:
        layout = "yolov5"
    else:
        layout = "yolov8" if "yolov8" in fits else fits[0]
    why = {"yolov8": f"{names[0]!r} {shape} = [B, 4+{nc}{'+32' if nm else ''}, N]: a raw head, NMS done here",
           "end2end": f"{names[0]!r} {shape} = [B, max_det, 6{'+32' if nm else ''}]: NMS in the graph (nms=True) or "
                      "an end-to-end head (YOLOv10/26)",
           "yolov5": f"{names[0]!r} {shape} = [B, N, 5+{nc}]: cx, cy, w, h, objectness, class scores"}[layout]
    if seg:
        why += f", and {names[1]!r} {outputs[1]['shape']}: the mask prototypes"
    if len(fits) > 1:
        why += f" (the shape also fits {', '.join(f for f in fits if f != layout)}; the metadata decided)"
    return (layout + "-seg" if seg else layout), why


def _yolo(ex: _Export, *, color: str | None, size: tuple[int, int] | None, threshold: float | None,
          class_names: list[str] | None) -> tuple[dict[str, Any], list[str], list[str], str]:
    """The kind-specific part of a YOLO export's manifest, the checks, the notes and why the layout."""
    meta = ex.metadata
    task = meta.get("task")
    notes: list[str] = []
    if class_names is not None:
        names, names_from = class_names, "--class-names"
    else:
        try:
            names, what = parse_class_names(meta["names"])
        except ValueError as e:
            raise UsageError(f"{ex.path}: metadata_props {e}; pass the class names in the model's index order with "
                             "--class-names NAME,NAME,...") from None
        names_from = f"metadata names ({what})"
    imgsz = _imgsz(meta.get("imgsz"))
    dtype = _input_dtype(ex)
    batch, h, w, input_notes = _nchw_input(ex, size, imgsz, "metadata imgsz")
    notes += input_notes
    if imgsz is not None and imgsz != (w, h):
        notes.append(f"metadata imgsz is {imgsz[0]}x{imgsz[1]} (w x h), the input {w}x{h}: the input's size is used")
    try:
        stride = _literal(meta["stride"]) if "stride" in meta else None
    except ValueError:
        stride = None
    if isinstance(stride, int) and stride > 0 and (w % stride or h % stride):
        raise UsageError(f"{ex.path}: input {w}x{h} is not a multiple of the model's stride {stride}")
    inp = ex.session.get_inputs()[0]
    input_shape = [batch, 3, h, w]
    outputs = _graph_outputs(ex, input_shape, dtype)
    try:
        args = _literal(meta["args"]) if "args" in meta else {}
    except ValueError:
        args = {}
    nms = _flag(meta, "end2end") or (isinstance(args, dict) and args.get("nms") is True)
    layout, why = _yolo_layout(ex, outputs, len(names), task, nms)
    seg = layout.endswith("-seg")

    min_score = DEFAULT_MIN_SCORE if threshold is None else threshold
    rules = {"default": {"min_score": min_score, "min_area": 0.0, "min_length": 0.0}, "classes": {},
             "max_count": 0, "roi": [], "ignore_regions": []}
    checks = [
        f"detection.class_names {names} (from {names_from}), in the model's class index order",
        f"detection.rules: as written, ANY detection of any class with a score >= {min_score:g} fails the part. Decide "
        "per class (rules.classes, by name): min_score, min_area (px^2 in frame pixels"
        f"{', of the mask' if seg else ', of the box'}), min_length (px, the longer box side), or "
        "{\"ignore\": true}; max_count (how many counted defects still pass); roi and ignore_regions "
        "([x, y, w, h] frame-pixel rectangles: where defects count, and where they never do)",
        f"preprocessing: RGB, 0..1 (scale 1/255), letterboxed to {w}x{h} with grey {YOLO_PAD_VALUE}, as Ultralytics' "
        "predict does; set `frame` limits to what the camera delivers",
    ]
    if layout.startswith("end2end"):
        checks.append("detection: the graph's own NMS already dropped boxes below the confidence it was exported with "
                      "(Ultralytics' default 0.25): a min_score below that counts nothing more")
    if nms and not layout.startswith("end2end"):
        notes.append(f"the metadata says NMS/end-to-end, but the output shape is a raw head: read as {layout}")
    licence = meta.get("license")
    if licence:
        text = f"the model file carries the licence string license = {licence!r}"
        if "AGPL" in licence.upper():
            text += (" (Ultralytics models and their exports are AGPL-3.0 unless you hold an Ultralytics Enterprise "
                     "licence): make sure deploying it on the line complies")
        notes.append(text)
    part = {
        "kind": "segmentation" if seg else "detection",
        "input": {"name": inp.name, "shape": input_shape, "dtype": dtype},
        "outputs": outputs,
        "preprocessing": {"resize": [w, h], "color": color or "rgb", "scale": UNIT_SCALE, "mean": [0.0, 0.0, 0.0],
                          "std": [1.0, 1.0, 1.0], "layout": "nchw", "letterbox": {"pad_value": YOLO_PAD_VALUE}},
        "detection": {"layout": layout, "class_names": names, "iou": 0.7, "max_det": 300, "rules": rules},
    }
    return part, checks, notes, why


# --------------------------------------------------------------------------------------------
# The classifier (no known signature)
# --------------------------------------------------------------------------------------------


def _classifier(ex: _Export, *, color: str | None, normalize: str | None, kind: str | None,
                fail_classes: list[int] | None, threshold: float | None,
                size: tuple[int, int] | None) -> tuple[dict[str, Any], list[str]]:
    model_path, session = ex.path, ex.session
    normalize = normalize or "unit"
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    inp = session.get_inputs()[0]
    outputs = session.get_outputs()
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
        scale = UNIT_SCALE
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
    part = {
        "input": {"name": inp.name, "shape": [1, channels, h, w] if layout == "nchw" else [1, h, w, channels],
                  "dtype": in_dtype},
        "output": manifest_output,
        "preprocessing": {"resize": [w, h], "color": color, "scale": scale, "mean": mean, "std": std,
                          "layout": layout},
        "threshold": threshold,
    }
    return part, checks


# --------------------------------------------------------------------------------------------


def scaffold(model_path: Path, *, name: str | None = None, version: int = 1, color: str | None = None,
             normalize: str | None = None, kind: str | None = None, fail_classes: list[int] | None = None,
             threshold: float | None = None, size: tuple[int, int] | None = None,
             class_names: list[str] | None = None) -> Scaffold:
    """Read `model_path` and return the manifest dict to write beside it, with what it was
    recognised as, the checklist and the notes (module docstring).

    `kind`, `fail_classes` and `normalize` are for classifiers; `threshold` is a classifier's
    threshold, an anomaly model's rules.threshold or a detector's default min_score;
    `class_names` replaces a YOLO export's metadata names. Raises UsageError for input that is
    not a model a manifest can describe."""
    ex = _load(model_path)
    inputs = ex.session.get_inputs()
    if len(inputs) != 1:
        raise UsageError(f"{model_path}: {len(inputs)} inputs {[i.name for i in inputs]}; the daemon feeds exactly one "
                         "image tensor")
    signature, why = _signature(ex)
    notes: list[str] = []
    if signature == "yolo" and ex.metadata.get("task") == "classify":
        signature = None
        names = ex.metadata.get("names", "")
        why = (f"metadata_props task 'classify': an Ultralytics classification model, read as a classifier "
               f"(its classes: {names}; name the defect classes with --fail-classes)")
    elif signature == "yolo" and ex.metadata.get("task") not in (None, *YOLO_TASKS):
        raise UsageError(f"{model_path}: an Ultralytics {ex.metadata.get('task')!r} model (metadata_props task); "
                         f"plcbridge judges {' and '.join(YOLO_TASKS)} exports (and classifiers)")
    if signature is not None:
        given = [flag for flag, value in (("--kind", kind), ("--fail-classes", fail_classes), ("--normalize", normalize))
                 if value is not None]
        if given:
            raise UsageError(f"{' and '.join(given)}: for classifiers; {model_path} was recognised by its {why}")
    if class_names is not None and signature != "yolo":
        raise UsageError("--class-names: for YOLO exports; this model has no class outputs")
    checks: list[str] = []
    if signature in ("anomalib2", "anomalib1"):
        part, checks, notes = _anomalib(ex, signature, color=color, size=size, threshold=threshold)
        label = {"anomalib2": "anomalib 2.x", "anomalib1": "anomalib 1.x"}[signature]
        recognised = f"{label} export (kind anomaly, format {signature}): {why}"
    elif signature == "yolo":
        part, checks, notes, layout_why = _yolo(ex, color=color, size=size, threshold=threshold, class_names=class_names)
        recognised = (f"YOLO export (kind {part['kind']}, layout {part['detection']['layout']}): {why}; "
                      f"{layout_why}")
    else:
        part, checks = _classifier(ex, color=color, normalize=normalize, kind=kind, fail_classes=fail_classes,
                                   threshold=threshold, size=size)
        recognised = f"classifier: {why}"
    checks.append(f"version: {version} is what the PLC reads as model_version (u16, 0..65535): raise it for "
                  "every model you deploy")

    manifest: dict[str, Any] = {
        "name": name or model_path.stem,
        "version": version,
        **({"kind": part.pop("kind")} if "kind" in part else {}),
        "file": model_path.name,
        "sha256": _sha256(ex.data),
        "opset": ex.opset,
        **part,
    }
    if ex.external:
        manifest["external_data"] = [{"file": loc, "sha256": _sha256(b)} for loc, b in ex.external.items()]
        checks.append(f"external_data: {', '.join(ex.external)} must be deployed with {model_path.name} (both pinned "
                      "by sha256): copy the whole model directory")
    manifest["labels"] = ["pass", "fail"]
    if signature is not None:
        _prevalidate(manifest, model_path, recognised.split(":")[0])
    return Scaffold(manifest, checks, recognised, notes)


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
                     "anomalib and Ultralytics/YOLOv5 exports recognised from their signature and metadata, "
                     "preprocessing defaults from the input shape. Prints what it recognised and what must still be "
                     "decided or checked by hand.")
    p.add_argument("model", type=Path, help="the .onnx file; manifest.json is written in its directory")
    p.add_argument("--name", default=None, help="model name (default: the file name without .onnx)")
    p.add_argument("--version", type=_version, default=1, help="model version, what the PLC reads as model_version (default 1)")
    p.add_argument("--color", choices=["rgb", "bgr", "gray"], default=None,
                   help="channel order the model was trained on (default: gray for 1 channel, rgb for 3)")
    p.add_argument("--normalize", choices=sorted(_NORMALIZE), default=None,
                   help="classifiers: mean/std after scaling pixels to 0..1: unit (none, default), imagenet, "
                        "symmetric (-1..1)")
    p.add_argument("--kind", choices=["probability", "logit", "softmax"], default=None,
                   help="classifiers: how the output becomes the defect score (default: probability for 1 value, "
                        "softmax for more)")
    p.add_argument("--fail-classes", type=_classes, default=None, metavar="I[,J...]",
                   help="classifiers, softmax: class indices that mean FAIL (needed for more than 2 classes)")
    p.add_argument("--threshold", type=_threshold, default=None,
                   help="a classifier's threshold (score >= threshold is FAIL, default 0.5), an anomaly model's "
                        "rules.threshold (default 0.5), a detector's default min_score (default 0.25)")
    p.add_argument("--class-names", type=_class_names_arg, default=None, metavar="NAME[,NAME...]",
                   help="YOLO exports: the class names in index order, instead of the metadata's `names`")
    p.add_argument("--size", type=_size, default=None, metavar="WxH",
                   help="input width x height, for a model exported with a symbolic height/width")
    p.add_argument("--force", action="store_true", help="overwrite an existing manifest.json")
    p.set_defaults(func=run)


def _tensor_line(t: dict[str, Any]) -> str:
    return f"{t['name']!r} {t['shape']} {t['dtype']}"


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
                          kind=args.kind, fail_classes=args.fail_classes, threshold=args.threshold, size=args.size,
                          class_names=getattr(args, "class_names", None))
    except UsageError as e:
        print(f"plcbridge manifest: {e}", file=sys.stderr)
        return 2
    tmp = target.with_name(f".{MANIFEST_NAME}.tmp")
    try:
        tmp.write_text(json.dumps(result.manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
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
    print(f"  recognised: {result.recognised}")
    print(f"  {m['file']}: sha256 {m['sha256']}, opset {m['opset']}")
    for extra in m.get("external_data", []):
        print(f"  {extra['file']}: sha256 {extra['sha256']} (external weights)")
    pinned = (m.get("anomaly") or {}).get("metadata")
    if pinned:
        print(f"  {pinned['file']}: sha256 {pinned['sha256']} (anomalib 1.x normalisation statistics)")
    print(f"  input  {_tensor_line(m['input'])}")
    if "output" in m:
        print(f"  output {_tensor_line(m['output'])} ({m['output']['kind']})")
    else:
        for o in m["outputs"]:
            print(f"  output {_tensor_line(o)}")
    if result.notes:
        print("Note:")
        for item in result.notes:
            print(f"  - {item}")
    print("Decide and check before deploying (docs/manifest.md):")
    for item in result.checks:
        print(f"  - {item}")
    print(f"Then: plcbridge validate-model {target.parent} --p99-max-ms MS  (on the line PC's hardware class)")
    return 0
