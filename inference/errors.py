"""The four ways the model can say no, kept apart because the daemon maps each to its own
PLC fault code (contract.FaultCode): a model that cannot be built (MODEL_NOT_READY), a
frame it cannot judge (BAD_FRAME), a run over budget (INFERENCE_TIMEOUT) and a run that
failed or produced garbage (INFERENCE_ERROR). They are siblings, not a hierarchy, so that
the order of `except` clauses cannot silently turn one into another.
"""

from __future__ import annotations

import re


class ModelError(Exception):
    """The model cannot be loaded: bad manifest, missing file, hash/opset/interface mismatch."""


class BadFrame(ValueError):
    """The frame is not what the model expects (type, dtype, shape, empty, or a size outside
    the manifest's frame limits)."""


class InferenceTimeout(RuntimeError):
    """Preprocessing plus the run took longer than the model's timeout: the run was
    terminated, or never started when preprocessing alone used the budget."""


class InferenceError(RuntimeError):
    """ONNX Runtime raised, or the model's output is not a usable score (NaN, inf, range)."""


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
# "/onnxruntime_src/onnxruntime/core/graph/model_load_utils.h:46 void onnxruntime::...(const ..., int) "
_CPP_WHERE = re.compile(r"^\S+\.(?:h|hpp|cc|cpp|cu):\d+\s+(?:[^()]*\([^()]*\)\s+(?:const\s+)?)?")
_OPSET_LIMIT = re.compile(r"official support for domain ai\.onnx is till opset (\d+)")
_OPSET_GIVEN = re.compile(r"\bOpset (\d+)\b")


def ort_load_reason(e: BaseException, opset: int | None = None, ort_version: str = "") -> str:
    """Why ONNX Runtime does not load a model, in one line that says what to do.

    ORT's own text starts with its C++ source file and function signature
    ("[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/.../model_load_utils.h:46 void
    onnxruntime::model_load_utils::ValidateOpsetForDomain(...) ..."): that is taken out, and an
    opset newer than the installed ORT supports is said with the two ways out."""
    text = " ".join(str(e).split()) or type(e).__name__
    if (m := _ORT_PREFIX.match(text)) is not None:
        text = _CPP_WHERE.sub("", text[m.end():], count=1)
    limit = _OPSET_LIMIT.search(text)
    if limit is None:
        return text if len(text) <= 400 else text[:397] + "..."
    newest = limit.group(1)
    given = opset if opset is not None else (g.group(1) if (g := _OPSET_GIVEN.search(text)) else "?")
    return (f"the model declares opset {given} (ai.onnx), newer than onnxruntime {ort_version or ''} supports "
            f"(opset {newest} at most): export it again with opset_version <= {newest} (e.g. "
            "torch.onnx.export(..., opset_version=17)), or install a newer onnxruntime").replace("  ", " ")
