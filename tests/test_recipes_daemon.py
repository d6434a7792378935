"""Recipes, the daemon side (plcbridge/recipes.py; docs/plc-interface.md "Recipes"): the PLC
chooses the model by recipe_id, and the bridge answers with active_recipe once the switch is
done. Against the simulated PLC on 127.0.0.1 over every protocol, with two real ONNX models
that disagree on purpose (one fails every part, one passes every part, told apart by their
versions): recipe changes under triggers miss no trigger and judge none with another
recipe's model; an unknown recipe is RECIPE_UNKNOWN with READY clear; a change across a PLC
restart; sessions loaded on demand within `recipes.max_loaded`; a recipe whose model does
not load; free-run across a switch."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import Running, read_metric, station_config, wait_for
from onnx_models import constant_model, copy_demo

from plcbridge.config import Config, parse_config
from plcbridge.contract import RECIPE_NONE, FaultCode, ResultCode, StatusBit
from plcbridge.recipes import RecipeBook
from plcbridge.sinks import DecisionRecord

LISTED = {"optional_inputs": ["recipe_id"], "optional_outputs": ["active_recipe", "result_recipe"]}
FAILS, PASSES = 11, 22  # the model versions of recipe 1 (fails every part) and recipe 2 (passes every part)
# Beside three other workers: a heartbeat standing for a second is a fault, a hiccup is not.
WATCHDOG_MS = 1000


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipe-models")
    return {"fails": constant_model(root / "fails", 0.9, "always_fail", FAILS),
            "passes": constant_model(root / "passes", 0.1, "always_pass", PASSES)}


def _recipes(models: dict[str, Path]) -> list[dict[str, Any]]:
    return [{"id": 1, "name": "housing-A", "manifest": str(models["fails"])},
            {"id": 2, "name": "housing-B", "manifest": str(models["passes"])}]


def _config(sim: Any, models: dict[str, Path], mode: str = "triggered", recipe: list[dict[str, Any]] | None = None,
            **sections: Any) -> Config:
    protocol = sim.section
    raw = station_config(sim, mode, plc={protocol: LISTED}).model_dump(mode="json")
    raw["recipe"] = _recipes(models) if recipe is None else recipe
    for name, values in sections.items():
        raw[name].update(values)
    return parse_config(raw, "<test>", env={})


def _sim(make_sim: Any, protocol: str = "modbus", **program: Any) -> Any:
    device = {f"{protocol}.{k}": v for k, v in LISTED.items()}
    program.setdefault("recipe", 1)  # the first product: recipe 1, asked before the first trigger
    return make_sim("triggered", protocol=protocol, device=device, watchdog_ms=WATCHDOG_MS, **program)


def _spy_blocks(d: Any) -> list[Any]:
    """Every block the write loop posts to the link, from now on."""
    seen: list[Any] = []
    original = d.link.post

    def spy(block_id: int, block: Any, token: Any, session: int) -> None:
        seen.append(block)
        original(block_id, block, token, session)

    d.link.post = spy
    return seen


def _verdicts(records: list[DecisionRecord]) -> dict[int, set[tuple[str, int]]]:
    """recipe -> {(result, model_version)} over the verdicts."""
    out: dict[int, set[tuple[str, int]]] = {}
    for r in records:
        d = r.decision
        if not d.is_failsafe:
            out.setdefault(r.fields["recipe"], set()).add((d.result.name, d.model_version))
    return out


def _plc_missed_nothing(s: dict[str, Any]) -> None:
    assert s["missing"] == 0 and s["unaccounted"] == 0 and s["skipped"] == 0, s
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]
    assert s["heartbeat_alarms"] == 0, s


# ---------------------------------------------------------------------- the switch under triggers


@pytest.mark.parametrize("protocol", ["modbus", "opcua", "enip"])
def test_recipe_changes_under_triggers_judge_each_trigger_with_its_own_recipes_model(make_sim, models, protocol):
    """The PLC changes product every 0.8 s (1 -> 2 -> 1 ...), waiting for active_recipe each
    time, and triggers at 20 Hz: every trigger answered, every verdict judged with the model of
    the recipe read with it (recipe 1's fails, recipe 2's passes), the switches seen by the PLC."""
    sim = _sim(make_sim, protocol, trigger_hz=20, recipe_sequence=[1, 2], recipe_change_every_s=0.8)
    run = Running(_config(sim, models))
    with run as d:
        wait_for(lambda: sim.summary()["recipes"]["changes"] >= 5, 30, "5 recipe changes")
        wait_for(lambda: not sim.summary()["recipes"]["waiting_for_switch"], 10, "the last switch done")
        assert read_metric(d, "plcbridge_recipe_switches_total", outcome="done") >= 4
        assert read_metric(d, "plcbridge_recipe_models_loaded") == 3  # recipes 0, 1, 2: all preloaded
    s = sim.summary()
    _plc_missed_nothing(s)
    r = s["recipes"]
    assert r["wrong_recipe"] == 0 and r["switch_ms"]["count"] >= 4
    assert r["verdicts_by_recipe"].get("1", 0) > 0 and r["verdicts_by_recipe"].get("2", 0) > 0, r
    assert _verdicts(run.recorder.records) == {1: {("FAIL", FAILS)}, 2: {("PASS", PASSES)}}
    # Preloaded sessions: the switch is a lookup; the PLC sees it within a few exchanges.
    assert r["switch_ms"]["max"] < 2000, r["switch_ms"]


def test_a_plc_that_triggers_during_a_switch_gets_recipe_changing_never_the_old_model(make_sim, models, tmp_path):
    """Recipes loaded on demand (recipes.max_loaded = 1, a slow-to-load third recipe) and a PLC
    that does not wait for active_recipe: triggers read while the switch is in progress are
    answered FAILSAFE + RECIPE_CHANGING at once; at no moment are two sessions loaded."""
    sim = _sim(make_sim, trigger_hz=30, recipe_sequence=[1, 2], recipe_change_every_s=0.7, wait_active_recipe=False)
    run = Running(_config(sim, models, recipes={"max_loaded": 1}))
    loaded: list[float] = []
    stop = threading.Event()
    with run as d:
        def watch() -> None:
            while not stop.is_set():
                loaded.append(read_metric(d, "plcbridge_recipe_models_loaded"))
                stop.wait(0.002)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            wait_for(lambda: read_metric(d, "plcbridge_recipe_switches_total", outcome="done") >= 4, 30, "4 switches")
        finally:
            stop.set()
            watcher.join()
    assert max(loaded) == 1, "the memory bound: one session at a time"
    changing = [r for r in run.recorder.records if r.decision.fault is FaultCode.RECIPE_CHANGING]
    assert changing, "triggers read during a switch"
    assert all(r.decision.result is ResultCode.FAILSAFE for r in changing)
    assert _verdicts(run.recorder.records) == {1: {("FAIL", FAILS)}, 2: {("PASS", PASSES)}}
    s = sim.summary()
    assert s["missing"] == 0 and s["unaccounted"] == 0 and s["recipes"]["wrong_recipe"] == 0, s


def test_an_unknown_recipe_is_recipe_unknown_with_ready_clear_until_the_plc_asks_for_one_it_has(make_sim, models):
    """recipe_id 99 (no such recipe) for 1.5 s, then 2: while 99 stands, active_recipe 65535,
    READY and TRIGGER_READY clear, fault_code RECIPE_UNKNOWN, and a PLC that triggers anyway
    gets FAILSAFE + RECIPE_UNKNOWN for every part; then recipe 2 judges."""
    sim = _sim(make_sim, trigger_hz=20, recipe_sequence=[99, 2], recipe_change_every_s=1.5, wait_active_recipe=False)
    run = Running(_config(sim, models))
    with run as d:
        seen = _spy_blocks(d)
        wait_for(lambda: any(r.decision.fault is FaultCode.RECIPE_UNKNOWN for r in run.recorder.records), 15,
                 "a trigger answered RECIPE_UNKNOWN")
        assert any("recipe_id 99 names no recipe" in (p["reason"] or "") for p in d.readiness() if p["part"] == "recipe")
        assert "RECIPE:" in d.status_line()
        wait_for(lambda: any(r.fields.get("recipe") == 2 and not r.decision.is_failsafe for r in run.recorder.records),
                 15, "a verdict of recipe 2")
        assert read_metric(d, "plcbridge_recipe_switches_total", outcome="unknown") >= 1
    # While recipe_id 99 stands: no recipe active, READY and TRIGGER_READY clear, RECIPE_UNKNOWN
    # (in the blocks without a fail-safe answer of their own). READY is never set without one.
    unknown = [b for b in seen if b.active_recipe == RECIPE_NONE and b.fault_code == FaultCode.RECIPE_UNKNOWN]
    assert unknown and not [b for b in unknown if b.status & (StatusBit.READY | StatusBit.TRIGGER_READY)]
    assert not [b for b in seen if b.status & StatusBit.READY and b.active_recipe == RECIPE_NONE]
    answers = [r for r in run.recorder.records if r.fields.get("recipe") == 99]
    assert answers and all(r.decision.fault is FaultCode.RECIPE_UNKNOWN for r in answers)
    assert any(b.active_recipe == 2 and b.status & StatusBit.READY for b in seen)
    s = sim.summary()
    assert s["missing"] == 0 and s["unaccounted"] == 0 and s["recipes"]["wrong_recipe"] == 0, s


def test_a_recipe_change_across_a_plc_restart(make_sim, models):
    """The PLC restarts (its counters back to 0, recipe_id retained) in the middle of product
    changes: nothing of its previous run is answered to the new one, and every verdict after
    the restart is still judged with the recipe read with its trigger."""
    sim = _sim(make_sim, trigger_hz=20, recipe_sequence=[1, 2], recipe_change_every_s=0.6, restart_after_s=1.5)
    run = Running(_config(sim, models))
    with run as d:
        wait_for(lambda: sim.summary()["restarts"] >= 1, 20, "the PLC restart")
        after = len(run.recorder.records)
        wait_for(lambda: sim.summary()["recipes"]["changes"] >= 5, 30, "5 recipe changes")
        wait_for(lambda: not sim.summary()["recipes"]["waiting_for_switch"], 10, "the last switch done")
        assert d.ready()
    s = sim.summary()
    _plc_missed_nothing(s)
    assert s["recipes"]["wrong_recipe"] == 0
    assert _verdicts(run.recorder.records[after:]) == {1: {("FAIL", FAILS)}, 2: {("PASS", PASSES)}}


def test_a_recipe_whose_model_does_not_load_is_model_not_ready_and_the_others_still_judge(make_sim, models, tmp_path):
    broken = copy_demo(tmp_path / "broken", sha256="0" * 64)
    recipes = [*_recipes(models), {"id": 3, "manifest": str(broken)}]
    sim = _sim(make_sim, trigger_hz=20, recipe_sequence=[1, 3, 2], recipe_change_every_s=1.0, wait_active_recipe=False)
    run = Running(_config(sim, models, recipe=recipes))
    with run as d:
        seen = _spy_blocks(d)
        wait_for(lambda: any(r.fields.get("recipe") == 3 for r in run.recorder.records), 20, "a trigger of recipe 3")
        wait_for(lambda: any(r.fields.get("recipe") == 2 and not r.decision.is_failsafe for r in run.recorder.records),
                 20, "a verdict of recipe 2 after it")
        assert d.recipes.errors.get(3) and "sha256" in d.recipes.errors[3]
    # Asked for, its load is tried again: RECIPE_CHANGING; once it failed, MODEL_NOT_READY with
    # MODEL_OK and READY clear (so the PLC stops triggering) until the PLC asks for another.
    threes = [r.decision.fault for r in run.recorder.records if r.fields.get("recipe") == 3]
    assert set(threes) <= {FaultCode.MODEL_NOT_READY, FaultCode.RECIPE_CHANGING}
    # (fault_code says MODEL_NOT_READY in the blocks without a fail-safe answer of their own.)
    failed = [b for b in seen if b.active_recipe == RECIPE_NONE and not b.status & StatusBit.MODEL_OK]
    assert failed and not [b for b in failed if b.status & StatusBit.READY]
    assert {b.fault_code for b in failed} <= {FaultCode.MODEL_NOT_READY, FaultCode.RECIPE_CHANGING, FaultCode.SHUTTING_DOWN}
    assert not [b for b in seen if b.status & StatusBit.READY and b.active_recipe == RECIPE_NONE]
    assert _verdicts(run.recorder.records) == {1: {("FAIL", FAILS)}, 2: {("PASS", PASSES)}}


def test_free_run_outputs_the_failsafe_while_switching_and_each_verdict_with_its_recipe(make_sim, models):
    device = {f"modbus.{k}": v for k, v in LISTED.items()}
    sim = make_sim("free-run", device=device, watchdog_ms=WATCHDOG_MS, recipe=1, recipe_sequence=[1, 2],
                   recipe_change_every_s=0.8)
    run = Running(_config(sim, models, mode="free-run"))
    with run as d:
        seen = _spy_blocks(d)
        wait_for(lambda: read_metric(d, "plcbridge_recipe_switches_total", outcome="done") >= 3, 30, "3 switches")
    # (Before the bridge's first read of recipe_id, recipe 0, [model], judges: the demo model, v1.)
    verdicts = [b for b in seen if b.result_code in (ResultCode.PASS, ResultCode.FAIL)]
    judged = {(b.result_recipe, b.result_code, b.model_version) for b in verdicts}
    assert {j for j in judged if j[0] != 0} == {(1, ResultCode.FAIL, FAILS), (2, ResultCode.PASS, PASSES)}
    assert {j[2] for j in judged if j[0] == 0} <= {1}
    assert all(b.result_recipe == b.active_recipe for b in verdicts), "a verdict goes out under its own recipe only"
    assert not [b for b in seen if b.status & StatusBit.READY and b.active_recipe == RECIPE_NONE]
    s = sim.summary()
    assert s["recipes"]["wrong_recipe"] == 0 and s["protocol_errors"] == 0, s["recent_protocol_errors"]


# ---------------------------------------------------------------------- the book alone


def _book(models: dict[str, Path], max_loaded: int | None = None) -> RecipeBook:
    from plcbridge.metrics import Metrics

    raw = {"plc": {"protocol": "modbus", "modbus": LISTED}, "recipe": _recipes(models),
           "recipes": {} if max_loaded is None else {"max_loaded": max_loaded}}
    return RecipeBook(parse_config(raw, "<test>", env={}), Metrics())


def test_the_book_switches_at_once_to_a_loaded_recipe_and_names_unknown_ones(models):
    book = _book(models)
    assert book.start() and book.loaded() == [0, 1, 2] and book.active == 0
    try:
        book.ask(2, 10.0)
        assert book.active == 2 and book.fault_for(2) is FaultCode.NONE and book.station_fault is FaultCode.NONE
        assert book.fault_for(1) is FaultCode.RECIPE_CHANGING  # a trigger of another recipe is not judged now
        book.ask(RECIPE_NONE, 11.0)
        assert book.active == RECIPE_NONE and book.station_fault is FaultCode.RECIPE_UNKNOWN
        assert book.fault_for(RECIPE_NONE) is FaultCode.RECIPE_UNKNOWN
        book.ask(1, 12.0)
        assert book.active == 1 and book.serving is not None and book.serving.version == FAILS
    finally:
        book.stop()


def test_the_book_loads_on_demand_within_its_bound_and_evicts_the_least_recently_used(models):
    book = _book(models, max_loaded=2)
    assert book.start() and book.loaded() == [0, 1]
    try:
        book.ask(2)
        assert book.active == RECIPE_NONE and book.station_fault is FaultCode.RECIPE_CHANGING
        wait_for(lambda: book.active == 2, 20, "recipe 2 loaded")
        book.close_retired()
        assert book.loaded() == [1, 2], "recipe 0, used least recently, made room"
        assert book.last_switch_ms is not None and book.last_switch_ms > 0
    finally:
        book.stop()


def test_a_threshold_of_the_recipes_own_changes_the_verdict_not_the_model(models):
    from plcbridge.metrics import Metrics

    raw = {"plc": {"protocol": "modbus", "modbus": LISTED},
           "recipe": [{"id": 5, "manifest": str(models["fails"]), "threshold": 0.95,
                       "failsafe": {"result_code": "FAIL", "score": 1.0}}]}
    config = parse_config(raw, "<test>", env={})
    book = RecipeBook(config, Metrics())
    book.start()
    try:
        book.ask(5)
        model = book.serving
        assert model is not None and model.manifest.threshold == 0.95
        import numpy as np

        assert model.judge(np.full((64, 64, 3), 128, np.uint8)).label == "pass"  # 0.9 < 0.95
        assert book.failsafe_of(5, config.failsafe).result_code == "FAIL"
        assert book.failsafe_of(0, config.failsafe).result_code == "FAILSAFE"
        assert book.failsafe_of(99, config.failsafe) is config.failsafe
    finally:
        book.stop()


def test_a_station_with_recipes_must_carry_recipe_id_and_active_recipe(models):
    from plcbridge.config import ConfigError

    with pytest.raises(ConfigError, match=r"must carry recipe_id \(plc.modbus.optional_inputs\) and active_recipe"):
        parse_config({"recipe": _recipes(models)}, "<test>", env={})
    with pytest.raises(ConfigError, match="recipe id 1 is listed twice"):
        parse_config({"plc": {"protocol": "modbus", "modbus": LISTED},
                      "recipe": [{"id": 1, "manifest": "builtin:demo"}, {"id": 1, "manifest": "builtin:demo"}]},
                     "<test>", env={})


def test_check_config_names_a_recipe_or_shadow_model_that_is_not_there(models, tmp_path):
    from plcbridge.checks import station_problems

    raw = {"plc": {"protocol": "modbus", "modbus": LISTED},
           "recipe": [*_recipes(models), {"id": 7, "manifest": str(tmp_path / "gone")}],
           "model": {"shadow": {"manifest": str(tmp_path / "also-gone")}}}
    problems = dict(station_problems(parse_config(raw, "<test>", env={}), env={}))
    assert set(problems) == {"recipe.2.manifest", "model.shadow.manifest"}
    assert "gone" in problems["recipe.2.manifest"] and "no such file" in problems["recipe.2.manifest"]
