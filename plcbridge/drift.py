"""Drift on the journal's seam: the live score distribution against the model's reference.

A sink (plcbridge/sinks.py: its own thread and bounded queue, so the write loop never waits
on it; `images = False`, it never looks at a frame) takes the score of every verdict (a
fail-safe judged nothing and is left out) and keeps one window of scores per model (name and
version: a new model starts a window of its own). Each time a window holds `drift.window`
scores, it compares their histogram with the reference in the model's manifest
(`Manifest.reference`, written by `plcbridge validate-model PATH --reference FOLDER`) by the
population stability index (plcbridge.inference.drift), then starts the next window empty:

- metrics: `plcbridge_drift_psi{model, version}` (the last full window's figure),
  `plcbridge_drift_windows_total{model, version}`, `plcbridge_drift_warnings_total{model,
  version}` and `plcbridge_drift_warn_psi` (the setting, for alert rules);
- one log line per window: `drift_window` (INFO), or `drift_warning` (WARNING) when the figure
  reaches `drift.warn_psi`, with the same fields;
- `view()`: the last figure and a short history per model, for the status.

Which model judged a decision, and its reference, is the daemon's to say: `reference_for`
(a callable taken by the constructor; `serving_reference` answers it from the model serving).
A model without a usable reference gets one `drift_no_reference` line and no figure.

What the figure means, and what it does not, is docs/drift.md: it measures how far the
scores moved, never whether the verdicts are right, and it changes nothing the PLC sees.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from plcbridge.inference.drift import bin_index, no_drift_psi, psi
from plcbridge.journal import utc_text
from plcbridge.logs import get_logger, log_event

if TYPE_CHECKING:
    from plcbridge.config import DriftSettings
    from plcbridge.decision import Decision
    from plcbridge.inference.manifest import ScoreReference
    from plcbridge.inference.session import Model
    from plcbridge.metrics import Metrics
    from plcbridge.sinks import DecisionRecord

log = get_logger("drift")

MAX_MODELS = 32  # models with a window kept at once (recipes, reloads); the least recently seen goes
HISTORY = 20  # full windows kept per model for view()


@dataclass(frozen=True)
class ModelRef:
    """The model that judged a decision, and its reference (None: `why_none` says why)."""

    name: str
    version: int
    reference: ScoreReference | None
    why_none: str = ""

    @property
    def key(self) -> str:
        return f"{self.name} v{self.version}"


ReferenceFor = Callable[["Decision"], "ModelRef | None"]


def serving_reference(model: Model | None, decision: Decision) -> ModelRef | None:
    """`reference_for` from a loaded model (the daemon passes the session of the recipe that
    judged the decision): its reference, or None when it is not the model that judged
    `decision` (none loaded, evicted, or another version swapped in since)."""
    if model is None or model.version != decision.model_version:
        return None
    reference, why = model.manifest.drift_reference
    return ModelRef(model.name, model.version, reference, why)


@dataclass
class _Window:
    """One model's scores since its last full window, and what its windows said."""

    ref: ModelRef
    counts: list[int]
    filled: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    windows: int = 0
    warnings: int = 0
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def add(self, score: float, frame_seq: int | None, edges: list[float]) -> None:
        self.counts[bin_index(score, edges)] += 1
        self.filled += 1
        if self.first_seq is None:
            self.first_seq = frame_seq
        self.last_seq = frame_seq

    def reset(self) -> None:
        self.counts = [0] * len(self.counts)
        self.filled = 0
        self.first_seq = self.last_seq = None


class DriftSink:
    """The drift monitor (see the module docstring). `reference_for(decision)` says which
    model judged the decision and its reference, or None to leave the decision out."""

    name = "drift"
    images = False  # scores only: never handed a frame

    def __init__(self, settings: DriftSettings, metrics: Metrics, reference_for: ReferenceFor,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.metrics = metrics
        self._reference_for = reference_for
        self._clock = clock
        self._lock = threading.Lock()
        self._models: OrderedDict[str, _Window] = OrderedDict()
        metrics.drift_warn_psi.set(settings.warn_psi)

    # ------------------------------------------------------------------ the seam (sink thread)

    def write(self, record: DecisionRecord) -> None:
        d = record.decision
        if d.is_failsafe or not math.isfinite(d.score):
            return
        ref = self._reference_for(d)
        if ref is None:
            return
        with self._lock:
            w = self._window_for(ref)
            reference = ref.reference
            if reference is None:
                return
            w.add(d.score, d.frame_seq, reference.edges)
            if w.filled < self.settings.window:
                return
            figure = psi(w.counts, reference.counts)
            w.windows += 1
            warning = figure >= self.settings.warn_psi
            w.warnings += warning
            entry = {"psi": round(figure, 4), "warning": warning, "at_utc": utc_text(self._clock()),
                     "frames": [w.first_seq, w.last_seq]}
            w.history.append(entry)
            w.reset()
            windows = w.windows
        labels = (ref.name, str(ref.version))
        self.metrics.drift_psi.labels(*labels).set(figure)
        self.metrics.drift_windows.labels(*labels).inc()
        fields: dict[str, Any] = dict(
            model=ref.name, version=ref.version, psi=entry["psi"], warn_psi=self.settings.warn_psi,
            window=self.settings.window, windows=windows, frames=entry["frames"],
            no_drift_psi=round(no_drift_psi(len(reference.counts), self.settings.window, reference.images), 4),
            reference_images=reference.images)
        if warning:
            self.metrics.drift_warnings.labels(*labels).inc()
            log_event(log, "drift_warning", logging.WARNING, **fields, reason=(
                f"the scores of {ref.key} moved away from its reference: PSI {figure:.3f} >= drift.warn_psi "
                f"{self.settings.warn_psi:g} over the last {self.settings.window} verdicts (a shift of the score "
                "distribution, not a verdict on the parts or the model: docs/drift.md)"))
        else:
            log_event(log, "drift_window", logging.INFO, **fields)

    def _window_for(self, ref: ModelRef) -> _Window:
        """The model's window (a new one for a model not seen, or whose reference changed);
        under the lock. Says once per model that it has no reference."""
        w = self._models.get(ref.key)
        if w is not None and w.ref == ref:
            self._models.move_to_end(ref.key)
            return w
        bins = len(ref.reference.counts) if ref.reference is not None else 0
        w = self._models[ref.key] = _Window(ref, [0] * bins)
        self._models.move_to_end(ref.key)
        while len(self._models) > MAX_MODELS:
            _, old = self._models.popitem(last=False)
            for metric in (self.metrics.drift_psi, self.metrics.drift_windows, self.metrics.drift_warnings):
                try:
                    metric.remove(old.ref.name, str(old.ref.version))
                except KeyError:
                    pass
        if ref.reference is None:
            log_event(log, "drift_no_reference", logging.INFO, model=ref.name, version=ref.version,
                      reason=f"no drift figure for this model: {ref.why_none}")
        return w

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ readers (any thread)

    def view(self) -> dict[str, Any]:
        """The settings and, per model seen (most recent last): its reference (or why none),
        the scores in the window being filled, the count of full windows and warnings, the
        last figure and the last HISTORY windows. JSON values only."""
        with self._lock:
            models = []
            for w in self._models.values():
                ref = w.ref.reference
                last = w.history[-1] if w.history else None
                models.append({
                    "model": w.ref.name, "version": w.ref.version,
                    "reference": None if ref is None else {"images": ref.images, "bins": len(ref.counts),
                                                           "folder": ref.folder, "created": ref.created},
                    "reason": w.ref.why_none or None,
                    "filled": w.filled, "windows": w.windows, "warnings": w.warnings,
                    "psi": None if last is None else last["psi"],
                    "warning": None if last is None else last["warning"],
                    "no_drift_psi": None if ref is None else
                    round(no_drift_psi(len(ref.counts), self.settings.window, ref.images), 4),
                    "history": [dict(h) for h in w.history],
                })
        return {"window": self.settings.window, "warn_psi": self.settings.warn_psi, "models": models}
