"""The four ways the model can say no, kept apart because the daemon maps each to its own
PLC fault code (contract.FaultCode): a model that cannot be built (MODEL_NOT_READY), a
frame it cannot judge (BAD_FRAME), a run over budget (INFERENCE_TIMEOUT) and a run that
failed or produced garbage (INFERENCE_ERROR). They are siblings, not a hierarchy, so that
the order of `except` clauses cannot silently turn one into another.
"""

from __future__ import annotations


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
