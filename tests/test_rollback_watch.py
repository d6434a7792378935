"""The watch after a model change (issue 22, part 3; plcbridge/rollback.py), on real
DecisionRecords: each trigger trips just over its threshold and not just under it; fail-safes
that are not the model's (a camera storm) never count; the baseline is frozen at the change
and late decisions of the previous model are ignored; a clean window passes; an unset
threshold never trips; the agreement comes from a callable; the view, the log lines and the
metrics say it; and one watch runs on a real SinkFanout's thread."""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

import numpy as np
import pytest
from helpers import read_metric

from plcbridge.config import WatchSettings
from plcbridge.contract import FaultCode, ResultCode
from plcbridge.decision import Decision, Request, failsafe
from plcbridge.metrics import Metrics
from plcbridge.rollback import AGREEMENT_POLL_S, MODEL_FAULTS, ModelWatch, Trigger, Trip
from plcbridge.sinks import DecisionRecord, SinkFanout

OFF: dict[str, Any] = dict(max_failsafe_rate=None, max_reject_rate_change=None, max_inference_p99_ms=None,
                           max_inference_errors=None, min_agreement=None)
NOT_THE_MODELS = [f for f in FaultCode if f is not FaultCode.NONE and f not in MODEL_FAULTS]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Station:
    """A watch with every trigger off except those given, a fake clock and the trips it made."""

    def __init__(self, p99_budget_ms: float | None = None, agreement: Any = None, on_pass: Any = None,
                 **settings: Any) -> None:
        self.metrics = Metrics()
        self.trips: list[Trip] = []
        self.clock = Clock()
        self.settings = WatchSettings(**{**OFF, "decisions": 100, "min_decisions": 20, **settings})
        self.watch = ModelWatch(self.settings, p99_budget_ms, self.metrics, self.trips.append, agreement, clock=self.clock,
                                on_pass=on_pass)
        self.seq = 0

    def verdict(self, result: ResultCode, version: int, n: int = 1, *, infer_ms: float | None = 5.0, recipe: int = 0) -> None:
        for _ in range(n):
            self.seq += 1
            d = Decision(result, FaultCode.NONE, 0.9 if result is ResultCode.FAIL else 0.1, 0.0, version, self.seq,
                         infer_ms=infer_ms, recipe=recipe)
            self.watch.write(DecisionRecord(f"id{self.seq}", {}, d))

    def passes(self, version: int, n: int = 1, **kw: Any) -> None:
        self.verdict(ResultCode.PASS, version, n, **kw)

    def fails(self, version: int, n: int = 1, **kw: Any) -> None:
        self.verdict(ResultCode.FAIL, version, n, **kw)

    def failsafe(self, fault: FaultCode, version: int, n: int = 1, *, recipe: int | None = None) -> None:
        for _ in range(n):
            self.seq += 1
            req = None if recipe is None else Request(self.seq, self.seq, 0.0, recipe=recipe)
            d = failsafe(fault, 0.0, "test", model_version=version, request=req, frame_seq=self.seq)
            self.watch.write(DecisionRecord(f"id{self.seq}", {}, d))

    def trigger(self, name: str) -> dict[str, Any]:
        return self.watch.view()["triggers"][name]


# ---------------------------------------------------------------- each trigger, both ways


@pytest.mark.parametrize("faults, trips", [(2, False), (3, True)])
def test_failsafe_rate_trips_just_over_its_threshold_once_min_decisions_are_in(faults: int, trips: bool) -> None:
    # 0.05 of 40: 2 fail-safes are exactly the threshold (no trip), 3 (0.075) are over it.
    s = Station(max_failsafe_rate=0.05, min_decisions=40)
    s.watch.changed(1, 2, "reload")
    s.failsafe(FaultCode.BAD_FRAME, 2)
    s.failsafe(FaultCode.INFERENCE_TIMEOUT, 2, faults - 1)  # the model's: counted (inference_errors is off)
    s.passes(2, 40 - faults - 1)
    assert s.watch.view()["decisions"] == 39 and not s.trips  # a high rate, but not judged before min_decisions
    assert s.trigger("failsafe_rate")["judged"] is False
    s.passes(2)
    fig = s.trigger("failsafe_rate")
    assert fig["judged"] is True and fig["figure"] == pytest.approx(faults / 40)
    if trips:
        (trip,) = s.trips
        assert trip.trigger is Trigger.FAILSAFE_RATE and trip.figure == pytest.approx(0.075) and trip.threshold == 0.05
        assert (trip.old_version, trip.new_version, trip.decisions_watched, trip.change) == (1, 2, 40, "reload")
        assert trip.figures["model_failsafes_by_fault"] == {"BAD_FRAME": 1, "INFERENCE_TIMEOUT": 2}
        assert "3 of 40" in trip.reason and "max_failsafe_rate 0.05" in trip.reason
        assert s.watch.state == "tripped"
    else:
        assert not s.trips and s.watch.state == "watching" and fig["tripped"] is False


@pytest.mark.parametrize("baseline_fail, window_fail, trips", [
    (10, 9, False),  # 0.10 -> 0.225: change 0.125
    (10, 11, True),  # 0.10 -> 0.275: change 0.175 > 0.15
    (30, 3, True),   # 0.30 -> 0.075: a drop counts as much as a rise (0.225)
    (30, 7, False),  # 0.30 -> 0.175: 0.125
])
def test_reject_rate_change_against_the_previous_model_both_ways(baseline_fail: int, window_fail: int, trips: bool) -> None:
    s = Station(max_reject_rate_change=0.15, min_decisions=40)
    s.fails(1, baseline_fail)
    s.passes(1, 100 - baseline_fail)  # the baseline: the last 100 verdicts of v1
    s.watch.changed(1, 2, "promote")
    assert s.watch.view()["baseline"] == {"version": 1, "verdicts": 100, "reject_rate": baseline_fail / 100}
    s.fails(2, window_fail)
    s.passes(2, 39 - window_fail)
    assert not s.trips and s.trigger("reject_rate_change")["judged"] is False  # 39 verdicts: not judged yet
    s.passes(2)
    change = abs(window_fail / 40 - baseline_fail / 100)
    assert s.trigger("reject_rate_change")["figure"] == pytest.approx(change)
    assert bool(s.trips) is trips
    if trips:
        assert s.trips[0].trigger is Trigger.REJECT_RATE_CHANGE and s.trips[0].figure == pytest.approx(change)
        assert s.trips[0].figures["baseline_reject_rate"] == baseline_fail / 100


def test_reject_rate_change_is_not_judged_on_a_baseline_smaller_than_min_decisions() -> None:
    s = Station(max_reject_rate_change=0.15, min_decisions=30)
    s.passes(1, 29)  # one verdict short of a baseline
    s.watch.changed(1, 2, "reload")
    s.fails(2, 100)  # a model that rejects everything: would be a change of 1.0
    assert not s.trips and s.watch.state == "passed"
    r = s.trigger("reject_rate_change")
    assert r["judged"] is False and "baseline has 29 verdicts" in r["why_not_judged"]


@pytest.mark.parametrize("slow_ms, trips", [(49.9, False), (50.1, True)])
def test_inference_p99_over_the_models_budget(slow_ms: float, trips: bool) -> None:
    # max_inference_p99_ms unset: the model's p99 budget (50 ms) is the threshold. Under 101
    # verdicts the nearest-rank p99 is the largest one.
    s = Station(p99_budget_ms=50.0, min_decisions=20)
    s.watch.changed(1, 2, "reload")
    s.passes(2, infer_ms=slow_ms)
    s.passes(2, 18, infer_ms=10.0)
    assert not s.trips
    s.passes(2, infer_ms=10.0)
    p = s.trigger("inference_p99")
    assert p["threshold"] == 50.0 and p["judged"] is True and p["figure"] == pytest.approx(slow_ms)
    assert bool(s.trips) is trips
    if trips:
        assert s.trips[0].trigger is Trigger.INFERENCE_P99 and s.trips[0].figure == slow_ms
        assert "model.latency_budget_ms" in s.trips[0].reason


def test_inference_p99_setting_wins_over_the_budget_and_the_figure_is_the_nearest_rank_p99() -> None:
    s = Station(p99_budget_ms=1.0, max_inference_p99_ms=1e6, decisions=1000, min_decisions=10)
    s.watch.changed(1, 2, "reload")
    rng = random.Random(7)
    seen: list[float] = []
    for i in range(999):
        ms = rng.lognormvariate(2.0, 0.6) if i % 37 else rng.uniform(60, 90)
        seen.append(ms)
        s.passes(2, infer_ms=ms)
        if i % 97 == 0 or i > 990:
            expected = float(np.percentile(seen, 99, method="inverted_cdf"))  # the ceil(0.99 n)-th smallest
            assert s.trigger("inference_p99")["figure"] == pytest.approx(expected, abs=1e-4), i
    assert s.trigger("inference_p99")["threshold"] == 1e6 and not s.trips


def test_p99_of_many_verdicts_is_not_their_largest() -> None:
    # 200 verdicts: the p99 is the 198th smallest, the third largest. Two slow ones do not trip; three do.
    for slow, trips in ((2, False), (3, True)):
        s = Station(max_inference_p99_ms=50.0, decisions=300, min_decisions=20)
        s.watch.changed(1, 2, "reload")
        s.passes(2, 200 - slow, infer_ms=10.0)
        s.passes(2, slow, infer_ms=80.0)
        assert bool(s.trips) is trips, slow


@pytest.mark.parametrize("errors, trips", [(2, False), (3, True)])
def test_inference_errors_trip_at_once_without_a_minimum(errors: int, trips: bool) -> None:
    s = Station(max_inference_errors=3, min_decisions=30)
    s.watch.changed(1, 2, "reload")
    s.passes(2, 5)
    for k in range(errors):
        s.failsafe(FaultCode.INFERENCE_ERROR if k % 2 == 0 else FaultCode.INFERENCE_TIMEOUT, 2)
    s.failsafe(FaultCode.BAD_FRAME, 2, 4)  # the model's fail-safe, but not an inference error
    assert s.trigger("inference_errors")["figure"] == errors and s.trigger("inference_errors")["judged"] is True
    assert bool(s.trips) is trips
    if trips:
        (trip,) = s.trips
        assert trip.trigger is Trigger.INFERENCE_ERRORS and trip.decisions_watched == 8 and trip.figure == 3
        assert "2 errors, 1 timeouts" in trip.reason


def test_agreement_from_a_callable_judged_once_enough_were_compared() -> None:
    reading: list[tuple[float | None, int]] = [(None, 0)]
    calls = []

    def agreement() -> tuple[float | None, int]:
        calls.append(1)
        return reading[0]

    s = Station(agreement=agreement, min_agreement=0.9, min_decisions=30)
    s.watch.changed(1, 2, "promote")
    s.passes(2, 5)
    assert len(calls) == 1  # polled at most every AGREEMENT_POLL_S
    assert s.trigger("agreement")["judged"] is False
    reading[0] = (0.5, 29)  # poor, but not enough compared
    s.clock.t += AGREEMENT_POLL_S
    s.passes(2)
    assert len(calls) == 2 and not s.trips and "29 of min_decisions 30" in s.trigger("agreement")["why_not_judged"]
    reading[0] = (0.9, 30)  # exactly the threshold passes
    s.clock.t += AGREEMENT_POLL_S
    s.passes(2)
    a = s.trigger("agreement")
    assert not s.trips and a["judged"] is True and a["figure"] == 0.9
    reading[0] = (0.89, 40)
    s.passes(2, 3)  # within the poll interval: not asked again yet
    assert not s.trips and len(calls) == 3
    s.clock.t += AGREEMENT_POLL_S
    s.passes(2)
    (trip,) = s.trips
    assert trip.trigger is Trigger.AGREEMENT and trip.figure == 0.89 and trip.threshold == 0.9
    assert trip.figures["compared"] == 40 and "40 verdicts compared" in trip.reason


def test_an_agreement_callable_that_raises_is_not_judged_and_never_trips(caplog) -> None:
    def broken() -> tuple[float | None, int]:
        raise RuntimeError("shadow gone")

    s = Station(agreement=broken, min_agreement=0.9, min_decisions=10, decisions=50)
    s.watch.changed(1, 2, "promote")
    with caplog.at_level(logging.WARNING, logger="plcbridge.rollback"):
        s.passes(2, 50)
    assert not s.trips and s.watch.state == "passed"
    assert "shadow gone" in s.trigger("agreement")["why_not_judged"]
    assert any(getattr(r, "event", None) == "model_watch_agreement_failed" for r in caplog.records)


def test_a_pass_with_a_trigger_never_judged_is_a_warning_that_names_it(caplog) -> None:
    """A shadow too slow to compare min_decisions verdicts in the window: the watch still ends
    (the last-known-good is not held forever), but its pass says the agreement check was not made."""
    reading = (0.5, 12)
    s = Station(agreement=lambda: reading, min_agreement=0.9, max_inference_errors=3, min_decisions=30, decisions=50)
    s.watch.changed(1, 2, "promote")
    with caplog.at_level(logging.INFO, logger="plcbridge.rollback"):
        s.passes(2, 50)
    assert not s.trips and s.watch.state == "passed"
    (passed,) = [r for r in caplog.records if getattr(r, "event", None) == "model_watch_passed"]
    assert passed.levelno == logging.WARNING
    assert passed.not_judged == {"agreement": "12 of min_decisions 30 verdicts compared with the shadow"}
    assert "agreement never judged" in passed.reason and passed.judged["inference_errors"] is True
    # Every trigger that is on judged: an INFO pass without either field.
    caplog.clear()
    reading = (0.95, 40)
    s.clock.t += AGREEMENT_POLL_S
    s.watch.changed(2, 3, "promote")
    with caplog.at_level(logging.INFO, logger="plcbridge.rollback"):
        s.passes(3, 50)
    assert s.trigger("agreement")["judged"] is True
    (passed,) = [r for r in caplog.records if getattr(r, "event", None) == "model_watch_passed"]
    assert passed.levelno == logging.INFO and passed.not_judged is None and not hasattr(passed, "reason")


# ---------------------------------------------------------------- what is watched


def test_a_camera_and_plc_storm_during_the_watch_never_trips_nor_passes_the_watch() -> None:
    s = Station(max_failsafe_rate=0.05, max_inference_errors=1, max_reject_rate_change=0.15, p99_budget_ms=50.0,
                min_decisions=20, decisions=100)
    s.passes(1, 100)
    s.watch.changed(1, 2, "reload")
    for k in range(60):
        s.passes(2)
        for fault in NOT_THE_MODELS:  # CAMERA_FAULT, NO_FRAME, PLC_INPUTS_STALE, TRIGGER_OVERRUN, ...
            s.failsafe(fault, 2, 5)
    v = s.watch.view()
    assert not s.trips and v["state"] == "watching" and v["decisions"] == 60
    assert v["figures"]["failsafe_rate"] == 0.0 and v["figures"]["model_failsafes"] == 0
    assert v["figures"]["not_counted"] == {f.name: 300 for f in sorted(NOT_THE_MODELS, key=lambda f: f.name)}
    assert {f.name for f in NOT_THE_MODELS} == {"CAMERA_FAULT", "NO_FRAME", "PLC_INPUTS_STALE", "TRIGGER_OVERRUN",
                                                "SHUTTING_DOWN", "RECIPE_CHANGING", "RECIPE_UNKNOWN"}
    # one fail-safe of the model's own trips it at once (inference_errors: 1; the fail-safe rate is 1/61)
    s.failsafe(FaultCode.INFERENCE_ERROR, 2)
    assert [t.trigger for t in s.trips] == [Trigger.INFERENCE_ERRORS]
    assert s.trips[0].figures["failsafe_rate"] == round(1 / 61, 4)


def test_the_baseline_freezes_at_the_change_and_late_decisions_of_the_previous_model_are_ignored() -> None:
    s = Station(max_reject_rate_change=0.15, min_decisions=20, decisions=100)
    s.fails(1, 30)
    s.passes(1, 200)  # the rolling baseline keeps the last 100 verdicts of v1: all PASS
    assert s.watch.view()["state"] == "idle"
    s.watch.changed(1, 2, "reload")
    assert s.watch.view()["baseline"]["reject_rate"] == 0.0
    s.fails(1, 50)  # v1's decisions still arriving after the swap: neither baseline nor window
    s.failsafe(FaultCode.INFERENCE_ERROR, 1, 10)
    v = s.watch.view()
    assert v["baseline"] == {"version": 1, "verdicts": 100, "reject_rate": 0.0}
    assert v["decisions"] == 0 and v["figures"]["late_other_version"] == 60 and not s.trips
    s.passes(2, 19)
    s.fails(2, 1)  # 0.05 against the frozen 0.0: under 0.15
    assert not s.trips and s.trigger("reject_rate_change")["figure"] == 0.05
    s.fails(2, 3)  # 4 of 23 = 0.174
    assert [t.trigger for t in s.trips] == [Trigger.REJECT_RATE_CHANGE]
    assert s.trips[0].figure == pytest.approx(4 / 23)


def test_other_recipes_are_not_watched() -> None:
    s = Station(max_inference_errors=1, max_reject_rate_change=0.1, min_decisions=10, decisions=50)
    s.passes(1, 50)
    s.watch.changed(1, 2, "reload")
    s.fails(2, 40, recipe=3)  # recipe 3's model (version 2 too, by chance): judged by its own file
    s.failsafe(FaultCode.INFERENCE_ERROR, 2, 5, recipe=3)  # a fail-safe of recipe 3's trigger
    v = s.watch.view()
    assert not s.trips and v["decisions"] == 0
    s.failsafe(FaultCode.INFERENCE_ERROR, 2, recipe=0)
    assert [t.trigger for t in s.trips] == [Trigger.INFERENCE_ERRORS]


def test_a_change_during_a_watch_restarts_it_against_the_same_baseline_and_last_known_good() -> None:
    s = Station(max_reject_rate_change=0.15, max_inference_errors=2, min_decisions=20, decisions=100)
    s.passes(1, 90)
    s.fails(1, 10)  # v1: 0.10
    s.watch.changed(1, 2, "reload")
    s.fails(2, 30)  # v2 rejects everything: trips at its 20th verdict
    assert [t.new_version for t in s.trips] == [2]
    s.trips.clear()
    # v2 was tripped; the daemon put v1 back, then a new reload brings v3, then v4 during v3's watch
    s.passes(1, 10)  # v1 serves again: still 10 FAIL among its last 100 verdicts
    s.watch.changed(1, 3, "reload")
    assert s.watch.view()["baseline"] == {"version": 1, "verdicts": 100, "reject_rate": 0.1}  # v1's, again
    s.passes(3, 10)
    s.failsafe(FaultCode.INFERENCE_ERROR, 3)
    s.watch.changed(3, 4, "promote")
    v = s.watch.view()
    assert (v["state"], v["old_version"], v["new_version"], v["changes"], v["decisions"]) == ("watching", 1, 4, 2, 0)
    assert v["baseline"] == {"version": 1, "verdicts": 100, "reject_rate": 0.1}  # not v3's
    s.failsafe(FaultCode.INFERENCE_ERROR, 3, 5)  # v3's late errors: not v4's
    assert not s.trips and s.trigger("inference_errors")["figure"] == 0
    s.failsafe(FaultCode.INFERENCE_ERROR, 4, 2)
    (trip,) = s.trips
    assert (trip.trigger, trip.old_version, trip.new_version, trip.change) == (Trigger.INFERENCE_ERRORS, 1, 4, "promote")
    # the daemon reports its swap back: that is no model to watch
    s.watch.changed(4, 1, "rollback")
    assert s.watch.view()["state"] == "tripped" and s.watch.trip is trip
    # late verdicts of v3 and v4 (both replaced in this watch) are not the baseline: v1's goes on
    s.fails(3, 10)
    s.fails(4, 10)
    s.passes(1, 5)
    s.watch.changed(1, 5, "reload")
    assert s.watch.view()["baseline"] == {"version": 1, "verdicts": 100, "reject_rate": 0.1}


def test_after_a_trip_the_last_known_goods_baseline_goes_on() -> None:
    s = Station(max_reject_rate_change=0.15, min_decisions=20, decisions=50)
    s.passes(1, 45)
    s.fails(1, 5)  # v1: 0.10 over its last 50 verdicts
    s.watch.changed(1, 2, "reload")
    s.fails(2, 20)
    assert s.watch.state == "tripped"
    s.fails(2, 5)  # v2's decisions in flight at the swap back: no baseline
    s.passes(1, 10)  # v1 serves again: its rolling baseline goes on from its 50 (35 P, 5 F, 10 P: still 5 of 50)
    s.watch.changed(1, 3, "reload")
    assert s.watch.view()["baseline"] == {"version": 1, "verdicts": 50, "reject_rate": 0.1}


# ---------------------------------------------------------------- ends of a watch


def test_a_clean_window_passes_and_a_trip_is_reported_once(caplog) -> None:
    s = Station(max_failsafe_rate=0.05, max_inference_errors=3, max_reject_rate_change=0.15, p99_budget_ms=50.0,
                min_decisions=10, decisions=50)
    s.fails(1, 5)
    s.passes(1, 45)
    with caplog.at_level(logging.INFO, logger="plcbridge.rollback"):
        s.watch.changed(1, 2, "reload")
        assert read_metric(s.metrics, "plcbridge_model_watch_state", plcbridge_model_watch_state="watching") == 1
        for k in range(49):
            s.verdict(ResultCode.FAIL if k % 10 == 0 else ResultCode.PASS, 2, infer_ms=20.0)
        assert s.watch.state == "watching" and read_metric(s.metrics, "plcbridge_model_watch_decisions") == 49
        s.passes(2, infer_ms=20.0)
        assert s.watch.state == "passed" and not s.trips
        s.failsafe(FaultCode.INFERENCE_ERROR, 2, 10)  # after the watch: nothing is judged any more
        assert not s.trips and s.watch.state == "passed"
    assert read_metric(s.metrics, "plcbridge_model_watch_passed_total") == 1
    assert read_metric(s.metrics, "plcbridge_model_watch_state", plcbridge_model_watch_state="passed") == 1
    assert read_metric(s.metrics, "plcbridge_model_watch_state", plcbridge_model_watch_state="watching") == 0
    events = [r for r in caplog.records if r.name == "plcbridge.rollback"]
    assert [(r.event, r.levelno) for r in events] == [("model_watch_started", logging.INFO), ("model_watch_passed", logging.INFO)]
    started, passed = events
    assert (started.old_version, started.new_version, started.change, started.baseline_reject_rate) == (1, 2, "reload", 0.1)
    assert started.thresholds == {"failsafe_rate": 0.05, "reject_rate_change": 0.15, "inference_p99": 50.0,
                                  "inference_errors": 3, "agreement": None}
    assert passed.figures["decisions"] == 50 and passed.figures["reject_rate"] == 0.1
    assert passed.figures["inference_p99_ms"] == 20.0 and passed.judged["agreement"] is False

    # a second change; this one trips, once, however many bad decisions follow
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="plcbridge.rollback"):
        s.watch.changed(2, 3, "promote")
        s.failsafe(FaultCode.INFERENCE_TIMEOUT, 3, 10)
    assert len(s.trips) == 1 and s.trips[0].trigger is Trigger.INFERENCE_ERRORS
    assert read_metric(s.metrics, "plcbridge_model_watch_trips_total", trigger="inference_errors") == 1
    assert read_metric(s.metrics, "plcbridge_model_watch_trips_total", trigger="failsafe_rate") == 0
    assert read_metric(s.metrics, "plcbridge_model_watch_state", plcbridge_model_watch_state="tripped") == 1
    (tripped,) = [r for r in caplog.records if getattr(r, "event", None) == "model_watch_tripped"]
    assert tripped.levelno == logging.ERROR
    assert (tripped.trigger, tripped.figure, tripped.threshold, tripped.old_version, tripped.new_version) == (
        "inference_errors", 3.0, 3.0, 2, 3)
    assert tripped.figures["inference_errors"] == 3 and tripped.figures["model_failsafes_by_fault"] == {"INFERENCE_TIMEOUT": 3}
    assert tripped.figures["baseline_verdicts"] == 50  # v2's verdicts of its passed watch: the baseline now


def test_unset_thresholds_never_trip() -> None:
    s = Station(p99_budget_ms=None, min_decisions=10, decisions=60)  # every trigger off, no p99 budget either
    s.passes(1, 60)
    s.watch.changed(1, 2, "reload")
    s.fails(2, 20, infer_ms=5000.0)
    s.failsafe(FaultCode.INFERENCE_ERROR, 2, 20)
    s.failsafe(FaultCode.INFERENCE_TIMEOUT, 2, 20)
    v = s.watch.view()
    assert not s.trips and v["state"] == "passed"
    for name, t in v["triggers"].items():
        assert (t["threshold"], t["judged"], t["tripped"]) == (None, False, False), name
        assert t["why_not_judged"] == "off (not in [model.watch] triggers, or no threshold)"
    assert v["figures"]["inference_errors"] == 40 and v["figures"]["failsafe_rate"] == pytest.approx(40 / 60, abs=1e-4)


def test_a_disabled_watch_watches_nothing() -> None:
    s = Station(enabled=False, max_inference_errors=1)
    s.watch.changed(1, 2, "reload")
    s.failsafe(FaultCode.INFERENCE_ERROR, 2, 5)
    v = s.watch.view()
    assert not s.trips and (v["enabled"], v["state"], v["decisions"]) == (False, "idle", 0)


def test_a_failing_on_trip_is_logged_and_the_watch_stays_tripped(caplog) -> None:
    def on_trip(trip: Trip) -> None:
        raise RuntimeError("swap refused")

    watch = ModelWatch(WatchSettings(**{**OFF, "max_inference_errors": 1}), None, Metrics(), on_trip)
    watch.changed(1, 2, "reload")
    with caplog.at_level(logging.ERROR, logger="plcbridge.rollback"):
        watch.write(DecisionRecord("a", {}, failsafe(FaultCode.INFERENCE_ERROR, 0.0, "x", model_version=2)))
    assert watch.state == "tripped"
    # ERROR only: the logger's level may be INFO already (a daemon test before this one set it).
    assert [r.event for r in caplog.records if r.name == "plcbridge.rollback" and r.levelno >= logging.ERROR] == [
        "model_watch_tripped", "model_watch_rollback_failed"]


def test_on_pass_is_called_once_with_the_versions_and_a_failing_one_is_logged(caplog) -> None:
    passed: list[tuple[int | None, int | None]] = []
    s = Station(max_inference_errors=3, min_decisions=10, decisions=20, on_pass=lambda old, new: passed.append((old, new)))
    s.watch.changed(1, 2, "reload")
    s.passes(2, 40)  # the window ends at 20; the next 20 are after the watch
    assert passed == [(1, 2)] and s.watch.state == "passed"

    def broken(old: int | None, new: int | None) -> None:
        raise RuntimeError("no session")

    s = Station(max_inference_errors=3, min_decisions=10, decisions=20, on_pass=broken)
    s.watch.changed(2, 3, "reload")
    with caplog.at_level(logging.ERROR, logger="plcbridge.rollback"):
        s.passes(3, 20)
    assert s.watch.state == "passed"
    assert [r.event for r in caplog.records if r.levelno >= logging.ERROR] == ["model_watch_on_pass_failed"]


# ---------------------------------------------------------------- view, and a real sink thread


def test_the_view_names_every_trigger_with_figure_threshold_and_judged() -> None:
    s = Station(max_failsafe_rate=0.1, max_reject_rate_change=0.15, p99_budget_ms=40.0, max_inference_errors=3,
                min_agreement=0.9, agreement=lambda: (0.95, 12), min_decisions=10, decisions=100)
    idle = s.watch.view()
    assert (idle["state"], idle["old_version"], idle["new_version"], idle["trip"], idle["watching_s"]) == (
        "idle", None, None, None, None)
    s.fails(1, 2)
    s.passes(1, 18)
    s.watch.changed(1, 2, "reload")
    s.clock.t += 12.5
    s.fails(2)
    s.passes(2, 10, infer_ms=12.0)
    s.failsafe(FaultCode.BAD_FRAME, 2)
    s.failsafe(FaultCode.CAMERA_FAULT, 2)
    s.fails(1, 3)  # late, the previous model's
    v = s.watch.view()
    assert not s.trips
    assert {k: v[k] for k in ("enabled", "state", "old_version", "new_version", "change", "changes", "decisions",
                              "window", "min_decisions", "watching_s", "trip")} == {
        "enabled": True, "state": "watching", "old_version": 1, "new_version": 2, "change": "reload", "changes": 1,
        "decisions": 12, "window": 100, "min_decisions": 10, "watching_s": 12.5, "trip": None}
    assert v["baseline"] == {"version": 1, "verdicts": 20, "reject_rate": 0.1}
    t = v["triggers"]
    assert list(t) == [x.value for x in Trigger]
    judged = {"judged": True, "tripped": False, "why_not_judged": None}
    assert t["failsafe_rate"] == {"figure": round(1 / 12, 4), "threshold": 0.1, **judged}
    assert t["reject_rate_change"] == {"figure": round(abs(1 / 11 - 0.1), 4), "threshold": 0.15, **judged}
    assert t["inference_p99"] == {"figure": 12.0, "threshold": 40.0, **judged}
    assert t["inference_errors"] == {"figure": 0.0, "threshold": 3.0, **judged}
    assert t["agreement"] == {"figure": 0.95, "threshold": 0.9, **judged}
    f = v["figures"]
    assert (f["verdicts"], f["rejects"], f["model_failsafes"], f["not_counted"], f["late_other_version"]) == (
        11, 1, 1, {"CAMERA_FAULT": 1}, 3)

    s.clock.t += 2.0
    s.failsafe(FaultCode.BAD_FRAME, 2)  # 2 of 13 = 0.154 > 0.1
    s.clock.t += 5.0
    v = s.watch.view()
    assert v["state"] == "tripped" and v["watching_s"] == 14.5  # the watch's length, not the time since
    assert v["triggers"]["failsafe_rate"]["tripped"] is True and v["triggers"]["agreement"]["tripped"] is False
    assert v["trip"] == {**s.trips[0].as_dict(), "trigger": "failsafe_rate"}
    assert v["trip"]["old_version"] == 1 and v["trip"]["decisions_watched"] == 13 and v["trip"]["threshold"] == 0.1


def test_through_a_real_sink_fanout_on_its_own_thread() -> None:
    metrics = Metrics()
    tripped = threading.Event()
    seen: list[tuple[Trip, str]] = []

    def on_trip(trip: Trip) -> None:
        seen.append((trip, threading.current_thread().name))
        tripped.set()

    watch = ModelWatch(WatchSettings(**{**OFF, "max_inference_errors": 3, "decisions": 500}), 50.0, metrics, on_trip)
    fanout = SinkFanout(metrics)
    fanout.add(watch, queue_size=1000)
    try:
        assert watch.images is False and fanout.names == ["model_watch"]
        watch.changed(1, 2, "reload")
        for i in range(100):
            d = Decision(ResultCode.PASS, FaultCode.NONE, 0.1, 0.0, 2, i, infer_ms=3.0, image=np.zeros((4, 4, 3), np.uint8))
            fanout.offer(DecisionRecord(f"p{i}", {}, d, d.image))
        for i in range(3):
            fanout.offer(DecisionRecord(f"e{i}", {}, failsafe(FaultCode.INFERENCE_ERROR, 0.0, "boom", model_version=2)))
        assert tripped.wait(5.0)
    finally:
        fanout.close()
    ((trip, thread),) = seen
    assert thread == "sink-model_watch" and trip.trigger is Trigger.INFERENCE_ERRORS and trip.decisions_watched == 103
    assert watch.view()["trip"]["trigger"] == "inference_errors"
    assert read_metric(metrics, "plcbridge_sink_dropped_total", sink="model_watch", reason="error") == 0
