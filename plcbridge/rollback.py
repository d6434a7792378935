"""Automatic rollback: the watch over a new model's first decisions (`[model.watch]`).

After every model change the daemon applies to the station's own model (a reload, `plcbridge
promote`) it calls `ModelWatch.changed(old, new, reason)`. From then on the new model's
decisions are watched until `watch.decisions` of them have passed; each one is checked
against the typed triggers below, and the first that trips ends the watch: `on_trip(Trip)` is
called once, on this sink's thread, and the daemon swaps the last-known-good model back in,
sets the PLC's bit and the status topics (this module decides; it swaps nothing itself).

    journal --record--> [sink queue] --> sink thread: ModelWatch.write --> the window's counts
                                                                        --> the triggers --> on_trip(Trip)

It is a sink on the journal's seam (plcbridge/sinks.py): its own thread and bounded queue, so
the write loop never waits on it; `images = False`, it never looks at a frame. The work per
decision is a few counter updates and one insertion into a sorted list of at most
`decisions // 100 + 1` inference times (the p99 is read from it at once): no percentile is
ever computed over the whole window.

What is watched. Only recipe 0, the station's `[model]`: a decision judged with another
recipe (`Decision.recipe`, or for a fail-safe the recipe its trigger asked for) is never
looked at; recipes' models change through their own files, and a recipe switch is not a
model change. Of recipe 0's decisions, those of the new version (`model_version ==
new_version`) make the window; the previous model's decisions still arriving (judged before
the swap, delivered after it) are ignored. In the window, a decision counts when the model
can answer for it: a verdict (PASS/FAIL) or a fail-safe with one of MODEL_FAULTS. A fail-safe
for any other reason (the camera, the PLC, an overrun, a recipe switch, shutting down) is not
counted at all, neither toward a trigger nor toward the window's length: a camera storm during
the watch never rolls a good model back, and never lets a model pass a watch it was not judged
in (the view says how many were left out, by fault).

The triggers (`Trigger`), evaluated after each watched decision, in this order:

- failsafe_rate: the model's fail-safes (MODEL_FAULTS) / watched decisions > max_failsafe_rate,
  judged once min_decisions are watched;
- reject_rate_change: |FAIL / (PASS + FAIL) of the window - that of the baseline| >
  max_reject_rate_change, judged once the window has min_decisions verdicts and the baseline
  had as many (else never: the view says why);
- inference_p99: the nearest-rank p99 of the window's verdicts' `infer_ms` (preprocess + run)
  > max_inference_p99_ms, or the model's p99 budget where that is unset, judged once
  min_decisions verdicts are in;
- inference_errors: INFERENCE_ERROR + INFERENCE_TIMEOUT answers >= max_inference_errors, at
  once, no minimum;
- agreement: `agreement()` (given by the daemon: the shadow's share of agreement with the
  live model and how many verdicts it compared, since the change, the previous model running
  as the shadow) < min_agreement, judged once it compared min_decisions. It is polled at most
  every AGREEMENT_POLL_S (the clock given), so it may read the shadow's figures under a lock.

A trigger is off when `[model.watch] triggers` does not list it, or its threshold is None
(inference_p99 also needs a budget: `p99_budget_ms` None turns it off). A figure equal to its threshold does not trip (agreement: equal passes).

The baseline. The watch always keeps the last `decisions` verdicts of the model serving recipe
0 (a rolling window; fail-safes are not verdicts). `changed()` freezes it as the previous
model's reject rate. A `changed()` during a watch restarts the window for the newer model
against the same frozen baseline, and the last-known-good stays the model that served before
the watch began (`Trip.old_version`): the daemon keeps that model until the watch ends. After a
trip, the rolling baseline goes on from the frozen one (the last-known-good is serving again),
late verdicts of the versions replaced during the watch are kept out of it, and the swap back,
if the daemon reports it as `changed(trip.new_version, trip.old_version, ...)`, starts no watch.

What it says: the `model_watch_started` (INFO), `model_watch_tripped` (ERROR: the trigger, its
figure and threshold, and every figure of the window) and `model_watch_passed` (INFO, the
figures; WARNING, naming them and why, when a trigger that is on was never judged in the
window, e.g. a shadow too slow to compare min_decisions verdicts) log lines; the metrics
`plcbridge_model_watch_state` (an enum: idle, watching, passed, tripped), `plcbridge_model_watch_trips_total{trigger}`,
`plcbridge_model_watch_passed_total` and `plcbridge_model_watch_decisions` (decisions watched
in the current or last watch); and `view()`, JSON values for the station page, MQTT and
`plcbridge status`.

Limits: a record the sink's queue dropped (the watch far behind) is not seen; a change to a
model of the same version as the one it replaces cannot tell the old session's late decisions
from the new one's (both are counted); the metrics are made on the daemon's registry, so one
ModelWatch per `Metrics`.
"""

from __future__ import annotations

import bisect
import enum
import logging
import math
import threading
import time
from collections import Counter as Tally
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from prometheus_client import Counter, Enum, Gauge

from plcbridge.contract import RECIPE_DEFAULT, FaultCode, ResultCode
from plcbridge.logs import get_logger, log_event

if TYPE_CHECKING:
    from plcbridge.config import WatchSettings
    from plcbridge.decision import Decision
    from plcbridge.metrics import Metrics
    from plcbridge.sinks import DecisionRecord

log = get_logger("rollback")


class Trigger(str, enum.Enum):
    """What can roll a new model back (docs: `[model.watch]`)."""

    FAILSAFE_RATE = "failsafe_rate"
    REJECT_RATE_CHANGE = "reject_rate_change"
    INFERENCE_P99 = "inference_p99"
    INFERENCE_ERRORS = "inference_errors"
    AGREEMENT = "agreement"


# The fail-safes a model can cause, and the only ones the watch counts. The others are the
# camera's (CAMERA_FAULT, NO_FRAME), the PLC's (PLC_INPUTS_STALE, TRIGGER_OVERRUN), the
# station's (SHUTTING_DOWN) or a recipe switch's (RECIPE_CHANGING, RECIPE_UNKNOWN): a camera or
# PLC problem during the watch must never roll a good model back. STALE_RESULT (free-run: no
# fresh verdict in time) and MODEL_NOT_READY are counted: a model too slow to keep up, or one
# whose session is gone, is the model's.
MODEL_FAULTS: frozenset[FaultCode] = frozenset({
    FaultCode.BAD_FRAME, FaultCode.INFERENCE_TIMEOUT, FaultCode.INFERENCE_ERROR,
    FaultCode.MODEL_NOT_READY, FaultCode.STALE_RESULT,
})
# What inference_errors counts.
ERROR_FAULTS: frozenset[FaultCode] = frozenset({FaultCode.INFERENCE_ERROR, FaultCode.INFERENCE_TIMEOUT})

STATES = ("idle", "watching", "passed", "tripped")
AGREEMENT_POLL_S = 0.25  # the agreement callable is asked at most this often (the clock given)

Agreement = Callable[[], "tuple[float | None, int]"]


@dataclass(frozen=True)
class Trip:
    """A tripped watch: which trigger, its figure against its threshold, the versions (old:
    the last-known-good to swap back in; new: the model that tripped), how many decisions
    were watched, a sentence saying it, and every figure of the window (`figures`)."""

    trigger: Trigger
    figure: float
    threshold: float
    old_version: int | None
    new_version: int
    decisions_watched: int
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)
    change: str = ""  # the reason given to changed(): what brought the new model in

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trigger"] = self.trigger.value
        return d


@dataclass(frozen=True)
class _Judgement:
    figure: float | None
    threshold: float | None
    judged: bool
    tripped: bool
    why_not: str | None = None


class ModelWatch:
    """The watch after a model change (see the module docstring): a journal sink.

    `on_trip(trip)` is called once per tripped watch on the sink's thread, outside the watch's
    lock (it may call `view()`); `on_pass(old_version, new_version)`, if given, once per passed
    watch, the same way (the daemon lets the last-known-good go: nothing rolls back to it now).
    The swap back is no model to watch: a `changed(trip.new_version, trip.old_version, ...)`
    after a trip is recognised as that swap and ignored. `agreement()`, if given, returns (the shadow's agreement share or None,
    verdicts compared) since the change; it must be quick and must not call into the watch."""

    name = "model_watch"
    images = False  # counts and times only: never handed a frame

    def __init__(self, settings: WatchSettings, p99_budget_ms: float | None, metrics: Metrics,
                 on_trip: Callable[[Trip], None], agreement: Agreement | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_pass: Callable[[int | None, int | None], None] | None = None) -> None:
        self.settings = settings
        self._on_trip = on_trip
        self._on_pass = on_pass
        self._agreement_fn = agreement
        self._clock = clock
        self._lock = threading.Lock()
        self._p99_threshold = settings.max_inference_p99_ms if settings.max_inference_p99_ms is not None else p99_budget_ms
        self._p99_source = "model.watch.max_inference_p99_ms" if settings.max_inference_p99_ms is not None \
            else "model.latency_budget_ms (the p99 budget)"
        self._thresholds: dict[Trigger, float | None] = {
            Trigger.FAILSAFE_RATE: settings.max_failsafe_rate, Trigger.REJECT_RATE_CHANGE: settings.max_reject_rate_change,
            Trigger.INFERENCE_P99: self._p99_threshold, Trigger.INFERENCE_ERRORS: settings.max_inference_errors,
            Trigger.AGREEMENT: settings.min_agreement}
        for t in Trigger:  # a trigger `triggers` does not list is off
            if t.value not in settings.triggers:
                self._thresholds[t] = None
        self._armed = tuple(t for t in Trigger if self._thresholds[t] is not None)  # checked per decision, in order
        self._topk_size = settings.decisions // 100 + 1  # enough for the nearest-rank p99 of up to `decisions`

        self._state = "idle"
        # the rolling baseline: the serving model's last `decisions` verdicts (True: FAIL)
        self._rolling: deque[bool] = deque(maxlen=settings.decisions)
        self._rolling_fails = 0
        self._rolling_version: int | None = None
        self._retired: set[int] = set()  # versions replaced since the watch began: their late verdicts are no baseline
        # frozen at changed(): the last-known-good's verdicts
        self._lkg_version: int | None = None
        self._frozen: deque[bool] = deque(maxlen=settings.decisions)
        self._frozen_fails = 0
        # the watch
        self._new_version: int | None = None
        self._change = ""
        self._changes = 0  # changed() calls in this watch (a restart adds one)
        self._t_start: float | None = None
        self._t_end: float | None = None
        self._trip: Trip | None = None
        self._reset_window()

        r = metrics.registry
        self._m_state = Enum("plcbridge_model_watch_state", "The watch over a new model's first decisions "
                             "([model.watch]): idle, watching, passed or tripped (the last watch's outcome)",
                             states=list(STATES), registry=r)
        self._m_trips = Counter("plcbridge_model_watch_trips", "Watches ended by a trigger (the last-known-good "
                                "model swapped back in), by trigger", ["trigger"], registry=r)
        for t in Trigger:
            self._m_trips.labels(t.value)
        self._m_passed = Counter("plcbridge_model_watch_passed", "Watches a new model passed with no trigger tripped",
                                 registry=r)
        self._m_decisions = Gauge("plcbridge_model_watch_decisions", "Decisions of the new model watched in the "
                                  "current (or last) watch", registry=r)
        self._m_state.state("idle")

    def _reset_window(self) -> None:
        self._watched = 0  # verdicts + model fail-safes of the new version
        self._verdicts = 0
        self._fails = 0
        self._model_failsafes: Tally[str] = Tally()
        self._n_model_failsafes = 0
        self._errors = 0
        self._not_counted: Tally[str] = Tally()  # fail-safes that are not the model's, by fault
        self._late = 0  # decisions of another version (the previous model's, late) while watching
        self._timed = 0  # verdicts with an inference time
        self._topk: list[float] = []  # the largest inference times, ascending
        self._agreement: tuple[float | None, int] = (None, 0)
        self._agreement_error: str | None = None
        self._t_polled: float | None = None

    # ------------------------------------------------------------------ the daemon's call

    def changed(self, old_version: int | None, new_version: int, reason: str) -> None:
        """A model change was applied to recipe 0 (`reason`: "reload", "promote", ...): watch
        `new_version` from now on. During a watch, the watch restarts for the newer model
        against the same baseline and last-known-good. With the watch disabled, only the
        rolling baseline follows the new model."""
        with self._lock:
            trip = self._trip
            if self._state == "tripped" and trip is not None and (old_version, new_version) == (trip.new_version, trip.old_version):
                return  # the swap back to the last-known-good on_trip asked for: no model to watch
            restart = self._state == "watching"
            if not restart:
                self._retired = set()
                self._lkg_version = old_version
                if self._rolling_version == old_version and old_version is not None:
                    self._frozen, self._frozen_fails = deque(self._rolling, maxlen=self.settings.decisions), self._rolling_fails
                else:  # no verdict of the previous model seen: no baseline to compare with
                    self._frozen, self._frozen_fails = deque(maxlen=self.settings.decisions), 0
            if old_version is not None and old_version != new_version:
                self._retired.add(old_version)
            self._retired.discard(new_version)
            self._rolling.clear()
            self._rolling_fails = 0
            self._rolling_version = new_version
            if not self.settings.enabled:
                return
            self._state = "watching"
            self._new_version = new_version
            self._change = reason
            self._changes = self._changes + 1 if restart else 1
            self._t_start, self._t_end, self._trip = self._clock(), None, None
            self._reset_window()
            fields: dict[str, Any] = dict(
                old_version=old_version, new_version=new_version, last_known_good=self._lkg_version, change=reason,
                restarted=restart, window=self.settings.decisions, min_decisions=self.settings.min_decisions,
                baseline_verdicts=len(self._frozen),
                baseline_reject_rate=_round(self._frozen_fails / len(self._frozen)) if self._frozen else None,
                thresholds={t.value: self._thresholds[t] for t in Trigger})
            if old_version == new_version:
                fields["same_version"] = True
            self._m_state.state("watching")
            self._m_decisions.set(0)
        log_event(log, "model_watch_started", logging.INFO, **fields)

    # ------------------------------------------------------------------ the seam (sink thread)

    def write(self, record: DecisionRecord) -> None:
        d = record.decision
        if d is None or _recipe_of(d) != RECIPE_DEFAULT:
            return
        verdict = d.result in (ResultCode.PASS, ResultCode.FAIL)
        trip: Trip | None = None
        passed: dict[str, Any] | None = None
        with self._lock:
            if self._state != "watching":
                if verdict:
                    self._add_rolling(d)
                return
            if d.model_version != self._new_version:
                self._late += 1  # the previous model's decisions still arriving
                return
            if verdict:
                self._add_rolling(d)
            if not self._count(d, verdict):
                return
            trip = self._check()
            if trip is not None:
                self._end("tripped")
                self._trip = trip
                # the last-known-good serves again: its baseline goes on
                self._rolling = deque(self._frozen, maxlen=self.settings.decisions)
                self._rolling_fails, self._rolling_version = self._frozen_fails, self._lkg_version
                self._retired.add(trip.new_version)
                self._m_trips.labels(trip.trigger.value).inc()
            elif self._watched >= self.settings.decisions:
                self._end("passed")
                passed = self._log_fields()
                # A pass is no proof of what was never judged (a shadow too slow to compare
                # min_decisions verdicts, a baseline too small): say which, and why.
                passed["not_judged"] = {t.value: j.why_not for t in Trigger
                                        if (j := self._judge(t)).threshold is not None and not j.judged} or None
                self._m_passed.inc()
            self._m_decisions.set(self._watched)
        if trip is not None:
            self._tripped(trip)
        elif passed is not None:
            unjudged = passed["not_judged"]
            if unjudged:
                passed["reason"] = (f"passed with {', '.join(unjudged)} never judged in the window of "
                                    f"{self.settings.decisions} decisions: that check was not made on this model")
            log_event(log, "model_watch_passed", logging.WARNING if unjudged else logging.INFO, **passed)
            if self._on_pass is not None:
                try:
                    self._on_pass(passed["old_version"], passed["new_version"])
                except Exception as e:  # noqa: BLE001 - logged; the watch has passed all the same
                    log_event(log, "model_watch_on_pass_failed", logging.ERROR, reason=f"{type(e).__name__}: {e}",
                              exc_info=True)

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ under the lock

    def _add_rolling(self, d: Decision) -> None:
        v = d.model_version
        if v != self._rolling_version:
            if v in self._retired or self._state == "watching":
                return  # the replaced model's late verdicts
            self._rolling.clear()  # a model the watch was not told of: its own baseline
            self._rolling_fails, self._rolling_version = 0, v
        if len(self._rolling) == self._rolling.maxlen:
            self._rolling_fails -= self._rolling[0]
        fail = d.result is ResultCode.FAIL
        self._rolling.append(fail)
        self._rolling_fails += fail

    def _count(self, d: Decision, verdict: bool) -> bool:
        """Count a decision of the new model in the window; False if it is not counted."""
        if verdict:
            self._verdicts += 1
            self._fails += d.result is ResultCode.FAIL
            ms = d.infer_ms
            if ms is not None and math.isfinite(ms):
                self._timed += 1
                top = self._topk
                if len(top) < self._topk_size:
                    bisect.insort(top, ms)
                elif ms > top[0]:
                    del top[0]
                    bisect.insort(top, ms)
        elif d.result is ResultCode.FAILSAFE and d.fault in MODEL_FAULTS:
            self._model_failsafes[d.fault.name] += 1
            self._n_model_failsafes += 1
            self._errors += d.fault in ERROR_FAULTS
        else:
            self._not_counted[d.fault.name] += 1
            return False
        self._watched += 1
        return True

    def _end(self, state: str) -> None:
        self._state = state
        self._t_end = self._clock()
        self._m_state.state(state)

    def _check(self) -> Trip | None:
        self._poll_agreement()
        for t in self._armed:
            j = self._judge(t, explain=False)
            if j.tripped:
                assert j.figure is not None and j.threshold is not None
                return Trip(t, j.figure, j.threshold, self._lkg_version, self._new_version or 0, self._watched,
                            self._reason(t, j), self._figures(), self._change)
        return None

    def _poll_agreement(self) -> None:
        fn = self._agreement_fn
        if fn is None or self.settings.min_agreement is None:
            return
        now = self._clock()
        if self._t_polled is not None and now - self._t_polled < AGREEMENT_POLL_S:
            return
        self._t_polled = now
        try:
            share, compared = fn()
            self._agreement = (None if share is None else float(share), int(compared))
            self._agreement_error = None
        except Exception as e:  # noqa: BLE001 - the shadow's trouble is no reason to roll back
            self._agreement = (None, 0)
            self._agreement_error = f"{type(e).__name__}: {e}"
            log_event(log, "model_watch_agreement_failed", logging.WARNING, reason=self._agreement_error,
                      effect="the agreement trigger is not judged until it answers", rate_key="agreement")

    def _p99(self) -> float | None:
        n = self._timed
        if not n:
            return None
        rank = n - (99 * n + 99) // 100 + 1  # the ceil(0.99 n)-th smallest is the rank-th largest
        return self._topk[-rank]

    def _judge(self, t: Trigger, explain: bool = True) -> _Judgement:
        """A trigger's figure against its threshold now; `explain`: say why it is not judged
        (the per-decision check leaves the sentence out)."""
        threshold = self._thresholds[t]
        m = self.settings.min_decisions
        why: str | None = None
        if t is Trigger.FAILSAFE_RATE:
            fig = self._n_model_failsafes / self._watched if self._watched else None
            judged = self._watched >= m
            if explain and not judged:
                why = f"{self._watched} of min_decisions {m} decisions watched"
            over = fig is not None and threshold is not None and fig > threshold
        elif t is Trigger.REJECT_RATE_CHANGE:
            base_n = len(self._frozen)
            fig = abs(self._fails / self._verdicts - self._frozen_fails / base_n) if self._verdicts and base_n else None
            judged = base_n >= m and self._verdicts >= m
            if explain and not judged:
                why = (f"the previous model's baseline has {base_n} verdicts, fewer than min_decisions {m}: never "
                       "judged in this watch") if base_n < m else f"{self._verdicts} of min_decisions {m} verdicts"
            over = fig is not None and threshold is not None and fig > threshold
        elif t is Trigger.INFERENCE_P99:
            fig = self._p99()
            judged = self._timed >= m
            if explain and not judged:
                why = f"{self._timed} of min_decisions {m} timed verdicts"
            over = fig is not None and threshold is not None and fig > threshold
        elif t is Trigger.INFERENCE_ERRORS:
            fig, judged = float(self._errors), True
            over = threshold is not None and self._errors >= threshold
        else:
            share, compared = self._agreement
            fig = share
            judged = self._agreement_fn is not None and self._agreement_error is None and share is not None and compared >= m
            if explain and not judged:
                why = ("no shadow comparison is given to the watch" if self._agreement_fn is None else
                       f"the agreement could not be read: {self._agreement_error}" if self._agreement_error is not None
                       else f"{compared} of min_decisions {m} verdicts compared with the shadow")
            over = share is not None and threshold is not None and share < threshold
        if threshold is None:
            return _Judgement(fig, None, False, False, "off (not in [model.watch] triggers, or no threshold)" if explain else None)
        return _Judgement(fig, float(threshold), judged, judged and over, why)

    def _reason(self, t: Trigger, j: _Judgement) -> str:
        new, old, n = self._new_version, self._lkg_version, self._watched
        if t is Trigger.FAILSAFE_RATE:
            faults = ", ".join(f"{k} {v}" for k, v in sorted(self._model_failsafes.items()))
            return (f"{self._n_model_failsafes} of {n} decisions of model v{new} were fail-safes the model causes ({faults}): "
                    f"rate {j.figure:.3f} > model.watch.max_failsafe_rate {j.threshold:g}")
        if t is Trigger.REJECT_RATE_CHANGE:
            base = self._frozen_fails / len(self._frozen)
            return (f"model v{new} rejected {self._fails} of {self._verdicts} verdicts ({self._fails / self._verdicts:.3f}) "
                    f"against {base:.3f} of model v{old} over its last {len(self._frozen)} verdicts: change {j.figure:.3f} > "
                    f"model.watch.max_reject_rate_change {j.threshold:g}")
        if t is Trigger.INFERENCE_P99:
            return (f"p99 of model v{new}'s inference time (preprocess + run) over {self._timed} verdicts is "
                    f"{j.figure:.2f} ms > {j.threshold:g} ms ({self._p99_source})")
        if t is Trigger.INFERENCE_ERRORS:
            return (f"model v{new} answered {self._errors} INFERENCE_ERROR/INFERENCE_TIMEOUT fail-safes in {n} decisions "
                    f"({self._model_failsafes.get('INFERENCE_ERROR', 0)} errors, "
                    f"{self._model_failsafes.get('INFERENCE_TIMEOUT', 0)} timeouts) >= "
                    f"model.watch.max_inference_errors {j.threshold:g}")
        return (f"the shadow agreed with model v{new} on {j.figure:.3f} of {self._agreement[1]} verdicts compared "
                f"< model.watch.min_agreement {j.threshold:g}")

    def _figures(self) -> dict[str, Any]:
        """Every figure of the window, JSON values."""
        base_n = len(self._frozen)
        share, compared = self._agreement
        return {
            "decisions": self._watched,
            "verdicts": self._verdicts,
            "rejects": self._fails,
            "reject_rate": _round(self._fails / self._verdicts) if self._verdicts else None,
            "baseline_version": self._lkg_version,
            "baseline_verdicts": base_n,
            "baseline_reject_rate": _round(self._frozen_fails / base_n) if base_n else None,
            "reject_rate_change": _round(self._judge(Trigger.REJECT_RATE_CHANGE).figure),
            "model_failsafes": self._n_model_failsafes,
            "failsafe_rate": _round(self._n_model_failsafes / self._watched) if self._watched else None,
            "model_failsafes_by_fault": dict(sorted(self._model_failsafes.items())),
            "inference_errors": self._errors,
            "timed_verdicts": self._timed,
            "inference_p99_ms": _round(self._p99()),
            "agreement": _round(share),
            "compared": compared,
            "not_counted": dict(sorted(self._not_counted.items())),
            "late_other_version": self._late,
        }

    def _log_fields(self) -> dict[str, Any]:
        return dict(old_version=self._lkg_version, new_version=self._new_version, change=self._change,
                    window=self.settings.decisions, figures=self._figures(),
                    judged={t.value: self._judge(t).judged for t in Trigger})

    # ------------------------------------------------------------------ outside the lock

    def _tripped(self, trip: Trip) -> None:
        log_event(log, "model_watch_tripped", logging.ERROR, trigger=trip.trigger.value, figure=_round(trip.figure),
                  threshold=trip.threshold, old_version=trip.old_version, new_version=trip.new_version,
                  decisions=trip.decisions_watched, window=self.settings.decisions, change=trip.change,
                  reason=trip.reason, effect=f"the last-known-good model v{trip.old_version} is swapped back in",
                  figures=trip.figures)
        try:
            self._on_trip(trip)
        except Exception as e:  # noqa: BLE001 - logged here with the trip it failed for; the watch stays tripped
            log_event(log, "model_watch_rollback_failed", logging.ERROR, trigger=trip.trigger.value,
                      old_version=trip.old_version, new_version=trip.new_version, reason=f"{type(e).__name__}: {e}",
                      exc_info=True)

    # ------------------------------------------------------------------ readers (any thread)

    @property
    def state(self) -> str:
        return self._state

    @property
    def trip(self) -> Trip | None:
        return self._trip

    def view(self) -> dict[str, Any]:
        """The watch as JSON values (station page, MQTT status, `plcbridge status`): state,
        versions, decisions watched of the window, each trigger's figure, threshold and whether
        it is judged yet (and why not), the baseline, and the trip if any."""
        with self._lock:
            now = self._clock()
            triggers = {}
            for t in Trigger:
                j = self._judge(t)
                triggers[t.value] = {"figure": _round(j.figure), "threshold": j.threshold, "judged": j.judged,
                                     "tripped": self._trip is not None and self._trip.trigger is t,
                                     "why_not_judged": j.why_not}
            base_n = len(self._frozen)
            return {
                "enabled": self.settings.enabled,
                "state": self._state,
                "old_version": self._lkg_version,
                "new_version": self._new_version,
                "change": self._change or None,
                "changes": self._changes,
                "decisions": self._watched,
                "window": self.settings.decisions,
                "min_decisions": self.settings.min_decisions,
                "watching_s": None if self._t_start is None else round((self._t_end or now) - self._t_start, 1),
                "baseline": {"version": self._lkg_version, "verdicts": base_n,
                             "reject_rate": _round(self._frozen_fails / base_n) if base_n else None},
                "triggers": triggers,
                "figures": self._figures(),
                "trip": None if self._trip is None else self._trip.as_dict(),
            }


def _recipe_of(d: Decision) -> int:
    """The recipe a decision belongs to: the one that judged a verdict; for a fail-safe, the one
    its trigger asked for (a fail-safe carries no recipe of its own), else the default."""
    if d.result in (ResultCode.PASS, ResultCode.FAIL) or d.request is None:
        return d.recipe
    return d.request.recipe


def _round(x: float | None, ndigits: int = 4) -> float | None:
    return None if x is None else round(float(x), ndigits)
