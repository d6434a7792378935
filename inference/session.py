"""The in-process model: an ONNX Runtime session that turns one frame into one Verdict.

Everything that can be checked is checked once, at build, so that a model that loads is a
model that works: manifest, sha256 of the exact bytes loaded, opset, input/output
interface, and a smoke run. After that `judge()` can fail in only three ways, each its own
exception (see errors.py) because each is its own PLC fault code.

Threading: `judge()` is meant to be called from ONE worker thread at a time (the daemon's
inference worker); a concurrent call raises RuntimeError rather than queueing silently.
`timeout_ms` is ONE budget for the whole judge(): preprocessing is timed, and the ONNX
Runtime run gets only what is left (a frame whose preprocessing alone used the budget is an
InferenceTimeout, and the model is not run). Preprocessing cannot be interrupted, but its
cost is bounded by the manifest's frame size limits, checked before any resize. A
persistent watchdog thread enforces the rest of the budget by setting `RunOptions.terminate`
on the run in progress; ONNX Runtime checks that flag between nodes, so a run is cut short
at the next node boundary (a single huge node still finishes first; the daemon's own
result timeout is the outer bound).

Kinds (manifest `kind`): a classifier's one output is the defect score; an anomaly or
detection/segmentation model's outputs are decoded (anomaly.py, detection.py) and judged by
the manifest's rules (rules.py), and the Verdict carries the findings the PLC gets (defect
count and class, anomalous area) and the decoded result for the journal and the pictures.
External weight files (`external_data`) and anomalib 1.x's metadata.json are read, hashed
and handed over from those same bytes, like the graph.

The session is tuned for a 2-core line PC that also runs a 10 ms PLC loop: intra-op
threads as configured (default 1), inter-op 1, sequential executor, and no spin-waiting
(ORT's default spinning burns most of a core while idle between frames).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from plcbridge.inference.anomaly import AnomalibMetadata, AnomalyResult, decode_anomalib1, decode_anomalib2, parse_anomalib1_metadata
from plcbridge.inference.detection import Detections, decode
from plcbridge.inference.errors import (
    BadFrame,
    InferenceError,
    InferenceTimeout,
    ModelError,
    ort_load_reason,
)
from plcbridge.inference.letterbox import Letterbox
from plcbridge.inference.manifest import load_manifest
from plcbridge.inference.modelfile import default_opset, read_verified
from plcbridge.inference.preprocess import Preprocessor
from plcbridge.inference.rules import Findings, judge

__all__ = ["Model", "Verdict", "BadFrame", "InferenceError", "InferenceTimeout", "ModelError"]

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
               "tensor(bool)": "bool", "tensor(int64)": "int64"}


@dataclass(frozen=True)
class Verdict:
    """One decision: `label` is "pass" or "fail" (score >= threshold), `score` the defect
    score in [0, 1], and the two stage times in milliseconds. Anomaly and detection models
    add `findings` (what the rules counted: the PLC's defect_count, defect_class,
    anomaly_area) and `result`, the decoded outputs in frame pixels (boxes, map)."""

    label: str
    score: float
    preprocess_ms: float
    infer_ms: float
    findings: Findings | None = None
    # Decoding the outputs and applying the rules (0 for a classifier's one number).
    postprocess_ms: float = 0.0
    result: Detections | AnomalyResult | None = field(default=None, repr=False, compare=False)


class _Watchdog:
    """One thread per Model that terminates the armed run when its deadline passes.

    A thread per run would cost a thread start (~100 us and a GIL hand-off) on every frame.
    Arming does not wake the thread when it already sleeps until no later than the new
    deadline (a disarmed run's deadline: runs follow one another, so the next deadline is
    later): it wakes then and waits on to the new one. Waking it on every arm was two
    wake-ups a frame, each a futex wake-up made with the GIL held (50-120 us on the line PC's
    VM) and a GIL hand-off, on the GIL the write loop waits for.
    """

    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._options: ort.RunOptions | None = None
        self._deadline = 0.0
        self._fired = False
        self._stopped = False
        self._wakes_at = math.inf  # when the thread's wait ends by itself (inf: none armed, it waits for one)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def arm(self, options: ort.RunOptions, deadline: float) -> None:
        with self._cond:
            self._options, self._deadline, self._fired = options, deadline, False
            if deadline < self._wakes_at:
                self._cond.notify()

    def disarm(self) -> bool:
        """Forget the run; return whether it was terminated."""
        with self._cond:
            fired, self._options = self._fired, None
            return fired

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            if self._options is not None:  # do not let a long run hold up shutdown
                self._options.terminate = True
                self._fired = True
            self._cond.notify()
        self._thread.join(timeout=2.0)

    def _loop(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._options is None:
                    self._wakes_at = math.inf
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._wakes_at = self._deadline
                    self._cond.wait(remaining)
                    continue
                self._options.terminate = True
                self._fired = True
                self._options = None


class Model:
    """A loaded, verified model. Build it once; call `judge()` per frame; `close()` at the end.

    `spec` is a manifest path, a directory holding manifest.json, or "builtin:demo".
    Build failures raise ModelError. With device="cuda" and no usable CUDA, the session
    falls back to CPU: `fell_back` is True and `fallback_reason` says why (also logged as a
    warning); the caller decides whether that is acceptable.
    """

    def __init__(
        self,
        spec: str | Path = "builtin:demo",
        device: Literal["cpu", "cuda"] = "cpu",
        intra_op_threads: int = 1,
        timeout_ms: float = 200,
    ) -> None:
        if device not in ("cpu", "cuda"):
            raise ModelError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")
        if timeout_ms <= 0:
            raise ModelError(f"timeout_ms must be positive, got {timeout_ms}")
        self.manifest, self.manifest_path = load_manifest(spec)
        m, where = self.manifest, str(self.manifest_path)
        self.name, self.version = m.name, m.version
        self.path = self.manifest_path.parent / m.file
        self.timeout_ms = float(timeout_ms)

        data = read_verified(self.path, m.sha256, where)
        try:
            opset = default_opset(data)
        except ValueError as e:
            raise ModelError(f"{where}: {self.path.name} is not a readable ONNX model: {e}") from None
        if opset != m.opset:
            raise ModelError(f"{where}: manifest says opset {m.opset}, {self.path.name} declares opset {opset}")
        # External weights: verified here and handed to ONNX Runtime as bytes, never re-read by it,
        # under the name the graph gives them: relative to the .onnx's folder, not the manifest's.
        external = {os.path.relpath(self.manifest_path.parent / e.file, self.path.parent).replace(os.sep, "/"):
                    read_verified(self.manifest_path.parent / e.file, e.sha256, where) for e in m.external_data}
        self._metadata: AnomalibMetadata | None = None
        if m.anomaly is not None and m.anomaly.metadata is not None:
            pinned = m.anomaly.metadata
            raw = read_verified(self.manifest_path.parent / pinned.file, pinned.sha256, where)
            try:
                meta = json.loads(raw)
            except ValueError as e:
                raise ModelError(f"{where}: {pinned.file} is not JSON: {e}") from None
            needs_map = m.outputs is not None and len(m.outputs[0].shape) == 4
            self._metadata = parse_anomalib1_metadata(meta, f"{where}: {pinned.file}", needs_map)

        self.requested_providers = [CUDA, CPU] if device == "cuda" else [CPU]
        self._session, self.fallback_reason = self._create_session(data, intra_op_threads, where, external)
        self.providers: list[str] = list(self._session.get_providers())
        # What the session really runs with (model.intra_op_threads); 1 keeps the write loop a core.
        self.intra_op_threads: int = self._session.get_session_options().intra_op_num_threads
        self.fell_back = self.providers[0] != self.requested_providers[0]
        if self.fell_back:
            self.fallback_reason = self.fallback_reason or f"onnxruntime chose {self.providers}"
            log.warning(
                "model %s v%d: asked for %s, running on %s: %s",
                m.name, m.version, self.requested_providers, self.providers, self.fallback_reason,
            )
        self._check_interface(where)

        self._preprocess = Preprocessor(m.preprocessing, m.input, m.frame_limits)
        self._busy = threading.Lock()
        self._watchdog = _Watchdog(f"ort-watchdog-{m.name}")
        try:
            # The model's own input size, or the nearest size the manifest's frame limits accept.
            w, h = m.frame_limits.clamp(*m.preprocessing.resize)
            # The smoke run decodes and judges too: a map of the wrong size or a NaN output is
            # refused here, not found on the line.
            grey = np.full((h, w, 3), 128, np.uint8)
            x, geometry = self._preprocess.prepare(grey)
            self._verdict(self._run(x, None), grey.shape, geometry)
        except (InferenceError, InferenceTimeout) as e:
            self.close()
            raise ModelError(f"{where}: smoke run failed: {e}") from None

    def _create_session(self, data: bytes, threads: int, where: str,
                        external: dict[str, bytes] | None = None) -> tuple[ort.InferenceSession, str | None]:
        so = ort.SessionOptions()
        if external:
            names = list(external)
            so.add_external_initializers_from_files_in_memory(names, [external[n] for n in names],
                                                              [len(external[n]) for n in names])
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")

        available = ort.get_available_providers()
        providers = [p for p in self.requested_providers if p in available]
        reason = None
        if providers != self.requested_providers:
            missing = [p for p in self.requested_providers if p not in available]
            reason = f"{', '.join(missing)} not in this onnxruntime build (available: {', '.join(available)})"
        try:
            return ort.InferenceSession(data, sess_options=so, providers=providers), reason
        except Exception as e:  # ORT raises its own pybind exception types
            if providers == [CPU]:
                raise ModelError(f"{where}: onnxruntime cannot load {self.path.name}: "
                                 f"{ort_load_reason(e, self.manifest.opset, ort.__version__)}") from None
            reason = f"{providers[0]} failed to initialise: {e}"
        try:
            return ort.InferenceSession(data, sess_options=so, providers=[CPU]), reason
        except Exception as e:
            raise ModelError(f"{where}: onnxruntime cannot load {self.path.name}: "
                             f"{ort_load_reason(e, self.manifest.opset, ort.__version__)}") from None

    def _check_interface(self, where: str) -> None:
        m = self.manifest
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{where}: {self.path.name} has {len(inputs)} inputs {[i.name for i in inputs]}, expected 1")
        self._check_tensor("input", m.input.name, m.input.shape, m.input.dtype, inputs[0], where)
        outputs = {o.name: o for o in self._session.get_outputs()}
        specs = [m.output] if m.output is not None else list(m.outputs or [])
        for spec in specs:
            if spec.name not in outputs:
                raise ModelError(f"{where}: output {spec.name!r} not in {self.path.name}; it has {sorted(outputs)}")
            self._check_tensor("output", spec.name, spec.shape, spec.dtype, outputs[spec.name], where)

    def _check_tensor(self, what: str, name: str, shape: list[int], dtype: str, actual: ort.NodeArg, where: str) -> None:
        actual_dtype = _ORT_DTYPES.get(actual.type, actual.type)
        # Symbolic dims (str/None) accept any size; fixed ones must match the manifest.
        shape_ok = len(actual.shape) == len(shape) and all(
            not isinstance(a, int) or a == s for a, s in zip(actual.shape, shape)
        )
        if actual.name != name or not shape_ok or actual_dtype != dtype:
            raise ModelError(
                f"{where}: {what} mismatch: manifest says {name!r} {shape} {dtype}, "
                f"{self.path.name} has {actual.name!r} {list(actual.shape)} {actual_dtype}"
            )

    def judge(self, image: np.ndarray) -> Verdict:
        """Judge one HxWx3 uint8 BGR frame within `timeout_ms`, preprocessing included.
        Raises BadFrame, InferenceTimeout or InferenceError."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("Model.judge() called while another judge() is running; use one worker thread")
        try:
            budget_ms = self.timeout_ms
            t0 = time.perf_counter()
            x, geometry = self._preprocess.prepare(image)
            t1 = time.perf_counter()
            preprocess_ms = (t1 - t0) * 1000.0
            left_ms = budget_ms - preprocess_ms
            if left_ms <= 0:
                raise InferenceTimeout(f"model {self.name}: preprocessing took {preprocess_ms:.1f} ms of the "
                                       f"{budget_ms:g} ms budget; the model was not run")
            out = self._run(x, left_ms / 1000.0, preprocess_ms)
            t2 = time.perf_counter()
            label, score, findings, result = self._verdict(out, image.shape, geometry)
            t3 = time.perf_counter()
        finally:
            self._busy.release()
        return Verdict(label, score, (t1 - t0) * 1000.0, (t2 - t1) * 1000.0, findings,
                       (t3 - t2) * 1000.0 if findings is not None else 0.0, result)

    def _verdict(self, out: list[np.ndarray], frame_shape: tuple[int, ...],
                 geometry: Letterbox) -> tuple[str, float, Findings | None, Detections | AnomalyResult | None]:
        """The outputs of one run as (label, score, findings, decoded result); anything that
        is no valid output is an InferenceError, so garbage never comes out as PASS."""
        m = self.manifest
        if m.kind == "classifier":
            score = self._score(out[0])
            assert m.threshold is not None  # the manifest requires it for a classifier
            return (m.labels[1] if score >= m.threshold else m.labels[0]), score, None, None
        result: Detections | AnomalyResult
        if m.anomaly is not None:
            rules = m.anomaly.rules
            if self._metadata is not None:
                result = decode_anomalib1(out[0], self._metadata, frame_shape, pixel_threshold=rules.pixel_threshold,
                                          map_size=self._map_size)
            else:
                result = decode_anomalib2(dict(zip(m.output_names, out)), frame_shape,
                                          pixel_threshold=rules.pixel_threshold, map_size=self._map_size)
            j = judge(result, rules)
        else:
            d = m.detection
            assert d is not None  # the manifest requires it for detection and segmentation
            result = decode(out, d.layout, geometry, conf=d.decoder_conf, iou=d.iou, max_det=d.max_det)
            j = judge(result, d.rules, d.class_names)
        return j.label, j.score, j.findings, result

    @property
    def _map_size(self) -> tuple[int, int] | None:
        """(w, h) of the anomaly map the graph declares, or None for a score-only model."""
        for o in self.manifest.outputs or []:
            if o.name in ("anomaly_map", "output") and len(o.shape) == 4:
                return o.shape[3], o.shape[2]
        return None

    def _run(self, x: np.ndarray, timeout_s: float | None, preprocess_ms: float = 0.0) -> list[np.ndarray]:
        """One ORT run, terminated after `timeout_s` (None: unbounded), which is what is left
        of the budget after `preprocess_ms` of preprocessing. The manifest's outputs, in order."""
        session = self._session
        if session is None:
            raise InferenceError(f"model {self.name} is closed")
        batch = self.manifest.input.shape[0]
        if batch > 1:  # an export with a fixed batch: the frame in every slot, slot 0 read
            x = np.repeat(x, batch, axis=0)
        options = ort.RunOptions()
        options.log_severity_level = 3  # a terminated run is reported by us, not as ORT stderr noise
        start = time.monotonic()
        if timeout_s is not None:
            self._watchdog.arm(options, start + timeout_s)
        try:
            out = session.run(self.manifest.output_names, {self.manifest.input.name: x}, options)
        except Exception as e:
            elapsed_ms = (time.monotonic() - start) * 1000.0
            if self._watchdog.disarm():
                raise InferenceTimeout(f"model {self.name}: run terminated after {elapsed_ms:.1f} ms "
                                       f"({self._budget_note(timeout_s, preprocess_ms)})") from None
            raise InferenceError(f"model {self.name}: onnxruntime failed after {elapsed_ms:.1f} ms: {e}") from e
        fired = self._watchdog.disarm()
        elapsed_ms = (time.monotonic() - start) * 1000.0
        if timeout_s is not None and (fired or elapsed_ms > timeout_s * 1000.0):
            raise InferenceTimeout(f"model {self.name}: run took {elapsed_ms:.1f} ms "
                                   f"({self._budget_note(timeout_s, preprocess_ms)})")
        return out

    def _budget_note(self, timeout_s: float | None, preprocess_ms: float) -> str:
        left_ms = (timeout_s or 0.0) * 1000.0
        return (f"timeout {self.timeout_ms:g} ms, of which preprocessing took {preprocess_ms:.1f} ms, "
                f"leaving {left_ms:.1f} ms for the run")

    def _score(self, out: np.ndarray) -> float:
        """The output as one defect score in [0, 1]; anything else is an InferenceError,
        so a NaN or a broken model can never come out as PASS."""
        spec = self.manifest.output
        assert spec is not None  # classifiers only
        v = np.asarray(out, dtype=np.float64).reshape(-1)
        if v.size != spec.size:
            raise InferenceError(f"model {self.name}: output has {v.size} values, manifest says {spec.shape}")
        if not np.isfinite(v).all():
            raise InferenceError(f"model {self.name}: output not finite: {v.tolist()}")
        if spec.kind == "logit":
            x = float(v[0])
            score = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
        else:
            score = float(v[0] if spec.kind == "probability" else v[spec.fail_indices].sum())
            if not -1e-6 <= score <= 1.0 + 1e-6:
                raise InferenceError(f"model {self.name}: {spec.kind} output {score} outside [0, 1]")
        return min(max(score, 0.0), 1.0)

    def close(self) -> None:
        """Stop the watchdog (terminating a run in progress) and drop the session."""
        watchdog = getattr(self, "_watchdog", None)
        if watchdog is not None:
            watchdog.stop()
        self._session = None

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Model({self.name!r} v{self.version}, {self.path}, providers={self.providers})"
