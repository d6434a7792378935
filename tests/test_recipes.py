"""Recipes, the PLC side (docs/plc-interface.md "Recipes"): the optional input recipe_id and the
optional outputs active_recipe (the station's state, the PLC's handshake) and result_recipe
(the recipe each result was judged with), the fault codes RECIPE_CHANGING and RECIPE_UNKNOWN.

A station without recipes reads and writes exactly the blocks it did before (registers, nodes,
tags); a station that lists them carries them over every protocol to the real simulators on
127.0.0.1; the simulated PLC's product-change scenario (a recipe change every few seconds, a
wait for the switch, a check of each verdict's recipe) against a fake bridge that answers with
the right or the wrong recipe, on a fake clock and over the in-process loop."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from helpers import running, station_config, wait_for
from pymodbus.client import ModbusTcpClient

from plcbridge.adapters.plc.base import PlcConfigError, PlcError
from plcbridge.adapters.plc.enip import EnipAdapter
from plcbridge.adapters.plc.loop import LoopAdapter
from plcbridge.adapters.plc.modbus import ModbusAdapter
from plcbridge.adapters.plc.opcua import OpcUaAdapter
from plcbridge.config import ConfigError, FailsafeSettings, load_config, parse_config
from plcbridge.contract import (
    BASE_INPUT_SIGNALS,
    FAULT_MEANING,
    FAULT_PLC_ACTION,
    INPUT_SIGNALS,
    OPTIONAL_INPUT_SIGNALS,
    OPTIONAL_OUTPUT_SIGNALS,
    RECIPE_DEFAULT,
    RECIPE_NONE,
    FaultCode,
    Inputs,
    Outputs,
    ResultCode,
    StatusBit,
    carried_inputs,
)
from plcbridge.contract.enip import EnipTagMap, decode_inputs, encode_inputs, from_logix
from plcbridge.contract.modbus import ModbusMap, RegisterMap
from plcbridge.contract.opcua import OpcUaNodeMap
from plcbridge.decision import Decision, failsafe
from plcbridge.inspection import Health, block_for, final_answer_block, shutdown_block
from plcbridge.simulators.cli import _overrides, add_arguments
from plcbridge.simulators.cli import run as run_sim
from plcbridge.simulators.device import DeviceFileError, ProgramSettings, load_device
from plcbridge.simulators.program import SimulatedPlc
from plcbridge.simulators.trace import TracingPlc

RECIPE_OUTPUTS = ["active_recipe", "result_recipe"]
LISTED = {"optional_inputs": ["recipe_id"], "optional_outputs": RECIPE_OUTPUTS}
READY = int(StatusBit.READY | StatusBit.TRIGGER_READY)
VALID = int(StatusBit.READY | StatusBit.RESULT_VALID)
FAILSAFE = VALID | int(StatusBit.FAILSAFE_ACTIVE)
OK = Health(camera_ok=True, model_ok=True, model_version=3)


def _device(protocol: str) -> dict[str, Any]:
    return {f"{protocol}.{k}": v for k, v in LISTED.items()}


# ---------------------------------------------------------------------- the contract


def test_the_recipe_signals_are_optional_and_come_after_the_base_blocks():
    assert [s.name for s in BASE_INPUT_SIGNALS] == ["trigger_seq", "part_id", "result_ack_seq"]
    assert [(s.name, s.type) for s in OPTIONAL_INPUT_SIGNALS] == [("recipe_id", "u16")]
    assert INPUT_SIGNALS == BASE_INPUT_SIGNALS + OPTIONAL_INPUT_SIGNALS
    assert [(s.name, s.type) for s in OPTIONAL_OUTPUT_SIGNALS][-2:] == [("active_recipe", "u16"), ("result_recipe", "u16")]
    assert carried_inputs() == BASE_INPUT_SIGNALS and carried_inputs(["recipe_id", "nonsense"]) == INPUT_SIGNALS
    # Nothing asked: the default recipe; no result: no recipe judged it; the default recipe active.
    assert (RECIPE_DEFAULT, RECIPE_NONE) == (0, 65535)
    assert Inputs().recipe_id == RECIPE_DEFAULT
    assert (Outputs().active_recipe, Outputs().result_recipe) == (RECIPE_DEFAULT, RECIPE_NONE)
    assert (int(FaultCode.RECIPE_CHANGING), int(FaultCode.RECIPE_UNKNOWN)) == (11, 12)
    assert "never judged by the previous recipe's model" in FAULT_MEANING[FaultCode.RECIPE_CHANGING]
    assert "active_recipe == recipe_id and READY" in FAULT_PLC_ACTION[FaultCode.RECIPE_CHANGING]
    assert "READY stays clear" in FAULT_MEANING[FaultCode.RECIPE_UNKNOWN]


# What the code gave for a station without recipes before they existed (taken from the code as
# it was, not recomputed here): a block with every field set, the recipe fields too.
BLOCK = Outputs(heartbeat=65535, status=0b1111111, result_seq=7, result_code=2, score=10000, fault_code=9,
                latency_ms=40, model_version=3, part_id=0x12345678, active_recipe=7, result_recipe=7)
ASKED = Inputs(trigger_seq=65535, part_id=0x12345678, result_ack_seq=3, recipe_id=7)
MODBUS_OUT_BEFORE = {
    "high_first": [65535, 127, 7, 2, 10000, 9, 40, 3, 0x1234, 0x5678],
    "low_first": [65535, 127, 7, 2, 10000, 9, 40, 3, 0x5678, 0x1234],
}
MODBUS_IN_BEFORE = {"high_first": [65535, 0x1234, 0x5678, 3], "low_first": [65535, 0x5678, 0x1234, 3]}
OPCUA_INPUTS_BEFORE = {"trigger_seq": "plcbridge.inputs.trigger_seq", "part_id": "plcbridge.inputs.part_id",
                       "result_ack_seq": "plcbridge.inputs.result_ack_seq"}
ENIP_INPUTS_BEFORE = {"trigger_seq": "PB_PlcTriggerSeq", "part_id": "PB_PlcPartId", "result_ack_seq": "PB_PlcResultAckSeq"}


@pytest.mark.parametrize("order", ["high_first", "low_first"])
def test_a_station_without_recipes_reads_and_writes_byte_for_byte_what_it_did(order):
    for rmap in (RegisterMap(word_order=order), ModbusMap(word_order=order).register_map):
        assert (rmap.inputs_base, rmap.inputs_count, rmap.outputs_count) == (100, 4, 10)
        assert rmap.input_signals == BASE_INPUT_SIGNALS
        assert rmap.encode_inputs(ASKED) == MODBUS_IN_BEFORE[order]  # recipe_id is not there to write
        assert rmap.decode_inputs(MODBUS_IN_BEFORE[order]) == dataclasses.replace(ASKED, recipe_id=RECIPE_DEFAULT)
        assert rmap.encode_outputs(BLOCK) == MODBUS_OUT_BEFORE[order]
    with pytest.raises(ValueError, match="expected 4 registers"):
        RegisterMap().decode_inputs([1, 2, 3, 4, 5])


def test_a_station_without_recipes_has_the_nodes_and_tags_it_had():
    nodes = OpcUaNodeMap()
    assert nodes.input_nodes == OPCUA_INPUTS_BEFORE
    assert [n.key for n in nodes.specs()[1]] == [f"inputs.{n}" for n in OPCUA_INPUTS_BEFORE]
    assert not any("recipe" in n for n in nodes.output_nodes)
    tags = EnipTagMap()
    assert tags.input_tags == ENIP_INPUTS_BEFORE and not any("recipe" in n for n in tags.output_tags)
    # What the bridge reads from the base tags alone: the default recipe.
    assert decode_inputs({"trigger_seq": 5, "part_id": 9, "result_ack_seq": 4}) == Inputs(5, 9, 4, RECIPE_DEFAULT)
    device = load_device(None)
    for section in (device.modbus, device.opcua, device.enip):
        assert section.optional_inputs == [] and not set(RECIPE_OUTPUTS) & set(section.optional_outputs)
    assert device.modbus.register_map.inputs_count == 4
    assert (device.program.recipe, device.program.recipe_change_every_s, device.program.uses_recipes) == (0, None, False)
    root = Path(__file__).resolve().parents[1]
    for station in sorted((root / "config").glob("station-*.toml")):
        cfg = load_config(station, env={})
        listed = getattr(getattr(cfg.plc, cfg.plc.protocol, None), "optional_inputs", [])
        assert listed == (["recipe_id"] if cfg.recipe else []), station  # the recipes example reads it, on purpose
    assert [p.name for p in (root / "config").glob("station-*.toml") if load_config(p, env={}).recipe] == [
        "station-recipes.toml"]


def test_modbus_recipe_registers_have_fixed_addresses_after_each_block():
    rmap = ModbusMap(optional_inputs=["recipe_id"]).register_map
    assert rmap.inputs_count == 5 and rmap.offsets(rmap.input_signals)["recipe_id"] == 4
    assert rmap.encode_inputs(ASKED) == [*MODBUS_IN_BEFORE["high_first"], 7]
    assert rmap.decode_inputs([1, 0, 2, 3, 7]) == Inputs(1, 2, 3, 7)
    for listed, count in ((["active_recipe"], 15), (["result_recipe"], 16), (RECIPE_OUTPUTS, 16)):
        out = ModbusMap(optional_outputs=listed).register_map
        assert out.outputs_count == count
        regs = out.encode_outputs(dataclasses.replace(BLOCK, result_recipe=9))
        assert regs[:10] == MODBUS_OUT_BEFORE["high_first"]  # the base block does not move
        assert regs[10:14] == [0, 65535, 0, 0]  # the result details in between: nothing measured
        assert regs[14:] == [7, 9][: count - 14]
    # Blocks that fit without the recipe register overlap with it, and the settings say so.
    assert ModbusMap(outputs_base=104).register_map.outputs_count == 10
    with pytest.raises(ValueError, match="overlaps"):
        ModbusMap(outputs_base=104, optional_inputs=["recipe_id"])


def test_settings_name_what_is_wrong_with_the_recipe_signals():
    cases = [
        ({"protocol": "modbus", "modbus": {"optional_inputs": ["recipe"]}}, ["plc.modbus.optional_inputs"]),
        ({"protocol": "modbus", "modbus": {"outputs_base": 104, "optional_inputs": ["recipe_id"]}},
         ["optional_inputs", "overlaps input block 100..104"]),
        ({"protocol": "modbus", "modbus": {"inputs_base": 15, "optional_outputs": ["result_recipe"]}},
         ["optional_outputs", "output block 0..15 overlaps"]),
        ({"protocol": "opcua", "opcua": {"input_nodes": {"recipe_id": "i=6000"}}},
         ["plc.opcua", "'recipe_id' is an optional input: list it in optional_inputs"]),
        ({"protocol": "opcua", "opcua": {"optional_inputs": ["recipe_id"],
                                         "input_nodes": {"recipe_id": "plcbridge.inputs.trigger_seq"}}},
         ["used for both", "trigger_seq", "recipe_id"]),
        ({"protocol": "enip", "enip": {"input_tags": {"recipe_id": "Recipe"}}},
         ["plc.enip", "'recipe_id' is an optional input: list it in optional_inputs"]),
        ({"protocol": "enip", "enip": {"output_tags": {"active_recipe": "Active"}}},
         ["'active_recipe' is an optional output: list it in optional_outputs"]),
        ({"protocol": "enip", "enip": {"optional_inputs": "recipe_id"}}, ["plc.enip.optional_inputs"]),
    ]
    for plc, words in cases:
        with pytest.raises(ConfigError) as e:
            parse_config({"plc": plc}, env={})
        assert all(w in str(e.value) for w in words), (words, str(e.value))
    with pytest.raises(DeviceFileError, match="enip.optional_inputs"):
        load_device(None, {"enip.optional_inputs": ["recipe"]})
    with pytest.raises(DeviceFileError, match="recipe_change_every_s needs recipe_sequence"):
        load_device(None, {"program.recipe_change_every_s": 1.0})
    with pytest.raises(DeviceFileError, match="program.recipe"):
        load_device(None, {"program.recipe": 65536})


@pytest.mark.parametrize("protocol", ["modbus", "opcua", "enip"])
def test_listed_recipe_signals_survive_the_resolved_config_round_trip(protocol):
    cfg = parse_config({"plc": {"protocol": protocol, protocol: dict(LISTED)}}, env={})
    assert parse_config(cfg.model_dump(mode="json"), env={}).plc == cfg.plc
    section = getattr(cfg.plc, protocol)
    assert section.optional_inputs == ["recipe_id"]
    if protocol == "opcua":
        assert section.input_nodes["recipe_id"] == "plcbridge.inputs.recipe_id"
    if protocol == "enip":
        assert section.input_tags["recipe_id"] == "PB_PlcRecipeId"
        assert [section.output_tags[n] for n in RECIPE_OUTPUTS] == ["PB_ActiveRecipe", "PB_ResultRecipe"]


def test_enip_a_recipe_id_out_of_range_asks_for_no_recipe_never_for_another():
    recipe_id = OPTIONAL_INPUT_SIGNALS[0]
    trigger_seq = BASE_INPUT_SIGNALS[0]
    assert [from_logix(recipe_id, v) for v in (0, 7, 65534, 65535)] == [0, 7, 65534, 65535]
    # 65536 taken modulo 65536 would ask for the default recipe: it asks for none instead.
    assert [from_logix(recipe_id, v) for v in (65536, 65543, -1, -(1 << 31))] == [RECIPE_NONE] * 4
    assert from_logix(trigger_seq, 65536) == 0  # the counters keep their modulo
    assert decode_inputs(encode_inputs(ASKED)) == ASKED


def test_blocks_carry_the_recipe_their_result_was_judged_with():
    fs = FailsafeSettings()
    verdict = Decision(ResultCode.FAIL, FaultCode.NONE, 0.9, 1.0, 3, 17, 0.99, recipe=4)
    b = block_for(verdict, 17, 5, fs, OK)
    assert (b.result_seq, b.result_recipe) == (17, 4)
    assert b.active_recipe == RECIPE_DEFAULT  # station state: the write loop's, not the result's
    assert block_for(Decision(ResultCode.PASS, FaultCode.NONE, 0.1, 1.0, 3, 18, 0.99), 18, 6, fs, OK).result_recipe == 0
    # A fail-safe was judged with no recipe, whatever the decision holds.
    fsd = dataclasses.replace(failsafe(FaultCode.RECIPE_CHANGING, 2.0, "switching", model_version=3), recipe=4)
    assert block_for(fsd, 19, 7, fs, OK).result_recipe == RECIPE_NONE
    assert shutdown_block(fs, 19, 3, 7, answers=True).result_recipe == RECIPE_NONE
    assert final_answer_block(verdict, 17, 5, fs).result_recipe == 4
    assert final_answer_block(fsd, 19, 7, fs).result_recipe == RECIPE_NONE


# ---------------------------------------------------------------------- over the wire, to the simulators

ANSWER = Outputs(heartbeat=1, status=VALID, result_seq=5, result_code=ResultCode.PASS, score=100,
                 active_recipe=7, result_recipe=7)
CHANGING = Outputs(heartbeat=2, status=FAILSAFE, result_seq=6, result_code=ResultCode.FAILSAFE, score=10000,
                   fault_code=FaultCode.RECIPE_CHANGING, active_recipe=RECIPE_NONE)


def _exchange_and_check(adapter: Any, sim: Any) -> None:
    """The PLC asks for recipe 7: the bridge reads it; a verdict judged with 7, then a fail-safe
    of a switch, each as the program received it."""
    adapter.connect()
    try:
        assert adapter.exchange(ANSWER, 0.5).recipe_id == 7
        assert sim.program.seen[-1][1] == ANSWER
        assert adapter.exchange(CHANGING, 0.5) == Inputs(recipe_id=7)
        assert sim.program.seen[-1][1] == CHANGING and CHANGING.result_recipe == RECIPE_NONE
    finally:
        adapter.close()
    s = sim.summary()
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]
    assert s["results"] == {"FAILSAFE": 1, "PASS": 1} and s["failsafe_faults"] == {"RECIPE_CHANGING": 1}
    r = s["recipes"]
    assert (r["recipe_id"], r["carried"], r["verdicts_by_recipe"]) == (7, ["active_recipe", "recipe_id", "result_recipe"],
                                                                      {"7": 1})
    if sim.optional_outputs:  # the network front-ends (the loop lists none: it carries everything)
        assert s["result_details"]["last"] == {"active_recipe": RECIPE_NONE, "result_recipe": RECIPE_NONE}
    assert "recipe=7" in sim.status_line()


@pytest.mark.parametrize("order", ["high_first", "low_first"])
def test_modbus_carries_them_in_the_registers_after_each_block(make_sim, order):
    sim = make_sim("free-run", device={**_device("modbus"), "modbus.word_order": order}, recipe=7)
    cfg = station_config(sim, "free-run", plc={"modbus": {**LISTED, "word_order": order}})
    _exchange_and_check(ModbusAdapter(cfg.plc), sim)
    client = ModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0)
    assert client.connect()
    try:  # what the PLC program holds: recipe_id at 104, active_recipe and result_recipe at 14, 15
        assert client.read_holding_registers(100, count=5, device_id=1).registers[4] == 7
        assert client.read_holding_registers(14, count=2, device_id=1).registers == [RECIPE_NONE, RECIPE_NONE]
    finally:
        client.close()


def test_modbus_both_ends_must_list_recipe_id(make_sim):
    plain = make_sim("free-run")
    cfg = station_config(plain, "free-run", plc={"modbus": {"optional_inputs": ["recipe_id"]}})
    a = ModbusAdapter(cfg.plc)
    try:
        with pytest.raises(PlcConfigError) as e:
            a.connect()  # its first read of the input block: 100..104, the PLC maps 100..103
    finally:
        a.close()
    assert "100..104" in str(e.value) and e.value.setting == "plc.modbus.inputs_base, plc.modbus.optional_inputs"
    assert plain.summary()["writes_seen"] == 0


def test_enip_carries_them_as_dint_tags(make_sim):
    listed = {**LISTED, "input_tags": {"recipe_id": "Product"}}
    sim = make_sim("free-run", protocol="enip", device={f"enip.{k}": v for k, v in listed.items()}, recipe=7)
    cfg = parse_config({"plc": {"protocol": "enip", "port": sim.port, "enip": listed}}, env={})
    _exchange_and_check(EnipAdapter(cfg.plc), sim)
    # A controller without the tag: refused at connect, naming it.
    plain = make_sim("free-run", protocol="enip")
    a = EnipAdapter(parse_config({"plc": {"protocol": "enip", "port": plain.port,
                                          "enip": {"optional_inputs": ["recipe_id"]}}}, env={}).plc)
    with pytest.raises(PlcConfigError) as e:
        a.connect()
    a.close()
    assert "input tag 'PB_PlcRecipeId' (recipe_id) does not exist in the controller; create it as DINT" in str(e.value)
    assert "plc.enip.optional_inputs" in e.value.setting


def test_opcua_carries_them_as_typed_nodes(make_sim):
    sim = make_sim("free-run", protocol="opcua", device=_device("opcua"), recipe=7)
    cfg = station_config(sim, "free-run", plc={"opcua": dict(LISTED)})
    adapter = OpcUaAdapter(cfg.plc)
    assert [(n.key, n.ua_type) for n in adapter._ins][-1] == ("inputs.recipe_id", "UInt16")
    _exchange_and_check(adapter, sim)
    missing = station_config(sim, "free-run", plc={"opcua": {**LISTED, "input_nodes": {"recipe_id": "i=6999"}}})
    adapter = OpcUaAdapter(missing.plc)
    try:
        with pytest.raises(PlcError) as e:
            adapter.connect()
    finally:
        adapter.close()
    assert "node inputs.recipe_id (nsu=urn:plcbridge:plc;i=6999)" in str(e.value) and "BadNodeIdUnknown" in str(e.value)


def test_loop_carries_them(make_sim):
    sim = make_sim("free-run", protocol="loop", recipe=7)
    _exchange_and_check(LoopAdapter(station_config(sim).plc), sim)


def test_the_daemon_answers_with_the_default_recipe_over_the_extended_blocks(make_sim):
    """The daemon before recipes are built into it: a station that lists the recipe signals on
    both ends runs its one recipe, the default, and says so in every answer."""
    sim = make_sim("triggered", trigger_hz=20, device=_device("modbus"))
    with running(station_config(sim, "triggered", plc={"modbus": dict(LISTED)})):
        wait_for(lambda: sum(sim.summary()["results"].values()) >= 10, 30, "10 answered triggers")
    s = sim.summary()
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]
    blocks = [o for _, o in sim.program.seen]
    # The final block says no recipe is active (RECIPE_NONE), whatever verdict it still shows.
    assert blocks[-1].fault_code == FaultCode.SHUTTING_DOWN and blocks[-1].active_recipe == RECIPE_NONE
    verdicts = [o for o in blocks[:-1] if o.status & StatusBit.RESULT_VALID and not o.status & StatusBit.FAILSAFE_ACTIVE]
    assert verdicts and {(o.active_recipe, o.result_recipe) for o in verdicts} == {(0, 0)}
    r = s["recipes"]
    assert set(r["triggers_by_recipe"]) == {"0"} and set(r["verdicts_by_recipe"]) == {"0"}


# ---------------------------------------------------------------------- the simulated PLC's scenario


class RecipeBridge:
    """A bridge with recipes, composing one block per call from the PLC inputs it read.

    A switch takes `switch_s`; each trigger is answered `answer_s` after it was read. `mode`:
    "right" follows the contract (a trigger whose recipe is not active is answered fail-safe);
    "early_echo" echoes the recipe asked (with READY) at once but judges with the model still
    loaded until the switch is done; "old_model" reports the switch right but judges a trigger
    read mid-switch with the model still loaded."""

    def __init__(self, recipes=(0, 1, 2, 3), switch_s=0.05, answer_s=0.004, mode="right") -> None:
        self.recipes, self.switch_s, self.answer_s, self.mode = set(recipes), switch_s, answer_s, mode
        self.asked = self.loaded = RECIPE_DEFAULT
        self.active: int | None = RECIPE_DEFAULT
        self.switch_done: float | None = None
        self.last_seq: int | None = None
        self.queue: deque[tuple[float, Outputs]] = deque()
        self.presented = self.last = Outputs()
        self.hb = 0
        self.read_mid_switch = 0  # triggers read while their recipe was not active

    def step(self, i: Inputs, t: float) -> Outputs:
        if i.recipe_id != self.asked:
            self.asked = i.recipe_id
            if self.asked == self.loaded:
                self.active, self.switch_done = self.asked, None
            else:
                self.active = None
                self.switch_done = t + self.switch_s if self.asked in self.recipes else None
        if self.switch_done is not None and t >= self.switch_done:
            self.active = self.loaded = self.asked
            self.switch_done = None
        known = self.asked in self.recipes
        shown = self.asked if self.mode == "early_echo" and known else self.active
        shown = RECIPE_NONE if shown is None else shown
        if i.trigger_seq not in (0, self.last_seq) and self.last_seq is not None:
            self._answer(i, t)
        self.last_seq = i.trigger_seq
        if self.queue and self.queue[0][0] <= t:
            self.presented = self.queue.popleft()[1]
        ready = known and shown == self.asked
        health = FaultCode.NONE if ready else (FaultCode.RECIPE_CHANGING if known else FaultCode.RECIPE_UNKNOWN)
        p = self.presented
        self.hb = (self.hb + 1) & 0xFFFF
        self.last = dataclasses.replace(p, heartbeat=self.hb, status=p.status | (READY if ready else 0),
                                        fault_code=p.fault_code if p.status & StatusBit.FAILSAFE_ACTIVE else health,
                                        active_recipe=shown)
        return self.last

    def _answer(self, i: Inputs, t: float) -> None:
        judged: int | None = i.recipe_id if self.active == i.recipe_id else None
        if judged is None:
            self.read_mid_switch += 1
        if self.mode == "early_echo" or (self.mode == "old_model" and judged is None and i.recipe_id in self.recipes):
            judged = self.loaded
        if judged is None:
            fault = FaultCode.RECIPE_CHANGING if i.recipe_id in self.recipes else FaultCode.RECIPE_UNKNOWN
            o = Outputs(status=int(StatusBit.RESULT_VALID | StatusBit.FAILSAFE_ACTIVE), result_seq=i.trigger_seq,
                        result_code=ResultCode.FAILSAFE, score=10000, fault_code=fault, part_id=i.part_id)
        else:
            o = Outputs(status=int(StatusBit.RESULT_VALID), result_seq=i.trigger_seq, result_code=ResultCode.PASS,
                        part_id=i.part_id, result_recipe=judged)
        self.queue.append((t + self.answer_s, o))


def _plc(inputs=("recipe_id",), outputs=tuple(RECIPE_OUTPUTS), **program: Any) -> SimulatedPlc:
    program.setdefault("trigger_hz", 50)
    plc = SimulatedPlc(ProgramSettings(**program))
    plc.set_mapping(inputs, outputs, show=True)
    return plc


def _drive(plc: SimulatedPlc, bridge: RecipeBridge, seconds: float, start_ms: int = 0) -> int:
    """Fake clock: the program ticks every ms, the bridge reads and writes every 10 ms."""
    for ms in range(start_ms + 1, start_ms + round(seconds * 1000) + 1):
        t = ms / 1000
        plc.tick(t)
        if ms % 10 == 0:
            plc.on_outputs(bridge.step(plc.inputs, t), t)
    return start_ms + round(seconds * 1000)


def _accounted(s: dict[str, Any]) -> bool:
    ended = sum(s["results"].values()) + s["outstanding"] + s["missing"] + s["skipped"] + s["collapsed"]
    return s["unaccounted"] == 0 and s["triggers_sent"] == ended


def test_a_product_change_waits_for_the_switch_and_every_verdict_has_its_recipe():
    plc = _plc(recipe_sequence=[1, 2, 3], recipe_change_every_s=0.5)
    bridge = RecipeBridge()
    _drive(plc, bridge, 3.2)
    s = plc.summary()
    r = plc.recipe_summary()
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]
    assert r["changes"] == 6 and r["recipe_id"] == 3 and r["wrong_recipe"] == 0 and not r["waiting_for_switch"]
    # Every switch as the PLC saw it: written -> echoed with READY, at least the bridge's 50 ms.
    assert r["switch_ms"]["count"] == 6 and 50 <= r["switch_ms"]["min"] <= r["switch_ms"]["max"] < 80
    # The PLC raised no trigger the bridge could not judge with its recipe: all verdicts.
    assert bridge.read_mid_switch == 0 and set(s["results"]) == {"PASS"}
    assert set(r["triggers_by_recipe"]) == {"0", "1", "2", "3"} == set(r["verdicts_by_recipe"])
    assert sum(r["verdicts_by_recipe"].values()) == s["results"]["PASS"] >= 100
    assert _accounted(s), s
    assert "recipe=3" in plc.status_line() and "WAITING-SWITCH" not in plc.status_line()


def test_a_change_is_written_only_when_the_old_product_is_answered():
    plc = _plc(trigger_hz=50, recipe_sequence=[2], recipe_change_every_s=0.1)
    bridge = RecipeBridge(answer_s=0.035)  # slower than the line: a trigger is outstanding when the change is due
    due_ms = changed_ms = None
    for ms in range(1, 200):  # one change: due at 111 ms, the next one at 211 ms
        t = ms / 1000
        before = (plc.inputs.recipe_id, len(plc.pending), plc.triggers_sent)
        plc.tick(t)
        if ms == 111:  # due: 0.1 s after the bridge's first write at 10 ms
            due_ms = ms
            assert plc.pending, "the scenario needs a trigger outstanding when the change comes due"
        if before[0] == 0 and plc.inputs.recipe_id == 2:
            changed_ms = ms
            assert before[1] == 0 and not plc.pending, "recipe_id changed with a trigger outstanding"
        if due_ms is not None and changed_ms is None:
            assert plc.triggers_sent == before[2], "a new part was sent while a change was due"
        if ms % 10 == 0:
            plc.on_outputs(bridge.step(plc.inputs, t), t)
    assert due_ms is not None and changed_ms is not None and changed_ms > due_ms
    assert plc.recipe_summary()["changes"] == 1 and plc.summary()["protocol_errors"] == 0
    assert bridge.read_mid_switch == 0


def test_a_bridge_that_echoes_before_its_switch_is_done_is_caught_judging_with_the_old_recipe():
    plc = _plc(recipe_sequence=[1, 2], recipe_change_every_s=0.5)
    _drive(plc, RecipeBridge(mode="early_echo"), 2.2)
    s = plc.summary()
    assert s["protocol_errors_by_kind"].keys() == {"wrong_recipe"} and plc.recipe_summary()["wrong_recipe"] >= 4
    m = re.search(r"wrong_recipe: seq \d+: a verdict with result_recipe (\d+), but the PLC asked for recipe (\d+) "
                  r"with the trigger", s["recent_protocol_errors"][-1])
    assert m is not None and m.group(1) != m.group(2) and {m.group(1), m.group(2)} <= {"1", "2"}


def test_a_plc_that_does_not_wait_gets_recipe_changing_from_a_right_bridge_and_catches_a_wrong_one():
    plc = _plc(recipe_sequence=[1, 2, 3], recipe_change_every_s=0.5, wait_active_recipe=False)
    bridge = RecipeBridge()
    _drive(plc, bridge, 3.2)
    s = plc.summary()
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]
    # The first part of each new product comes with the change: answered fail-safe, never judged.
    assert s["failsafe_faults"] == {"RECIPE_CHANGING": 6} and bridge.read_mid_switch == 6
    assert plc.recipe_summary()["wrong_recipe"] == 0
    # A bridge that judges those with the model still loaded is caught, by result_recipe, and
    # without it by the active_recipe of the block that brings the verdict.
    for outputs in (RECIPE_OUTPUTS, ["active_recipe"]):
        rude = _plc(outputs=outputs, recipe_sequence=[1, 2, 3], recipe_change_every_s=0.5, wait_active_recipe=False)
        _drive(rude, RecipeBridge(mode="old_model"), 3.2)
        assert rude.summary()["protocol_errors_by_kind"] == {"wrong_recipe": 6}, outputs
    right = _plc(outputs=["active_recipe"], recipe_sequence=[1, 2, 3], recipe_change_every_s=0.5)
    _drive(right, RecipeBridge(), 3.2)
    assert right.summary()["protocol_errors"] == 0 and "verdicts_by_recipe" not in right.recipe_summary()


def test_an_unknown_recipe_stops_the_line_until_a_known_one_is_asked():
    plc = _plc(recipe=9, recipe_sequence=[2], recipe_change_every_s=1.0)  # 9 first, then 2 from 1.01 s
    bridge = RecipeBridge()
    at = _drive(plc, bridge, 1.0)
    s = plc.summary()
    assert s["triggers_sent"] == 0 and s["bridge_state"] == "not-ready"
    assert plc.recipe_summary()["waiting_for_switch"] and "recipe=9 WAITING-SWITCH" in plc.status_line()
    assert (bridge.last.active_recipe, bridge.last.fault_code, bridge.last.status) == \
        (RECIPE_NONE, FaultCode.RECIPE_UNKNOWN, 0)
    _drive(plc, bridge, 0.95, at)
    s = plc.summary()
    assert s["results"].get("PASS", 0) >= 30 and s["protocol_errors"] == 0
    assert plc.recipe_summary()["verdicts_by_recipe"].keys() == {"2"}


def test_a_plc_restart_keeps_its_recipe_and_waits_for_the_echo_again():
    plc = _plc(recipe=3)
    bridge = RecipeBridge()
    at = _drive(plc, bridge, 0.5)
    sent = plc.triggers_sent
    assert sent > 10
    plc.restart(at / 1000)
    assert plc.inputs == Inputs(recipe_id=3)
    _drive(plc, bridge, 0.5, at)
    s = plc.summary()
    assert plc.triggers_sent > sent + 10 and s["protocol_errors"] == 0
    assert plc.recipe_summary()["triggers_by_recipe"] == {"3": plc.triggers_sent}


def test_without_a_recipe_mapping_the_program_checks_nothing_and_shows_nothing():
    plain = SimulatedPlc(ProgramSettings(mode="free-run"))
    plain.on_outputs(Outputs(status=VALID, result_seq=1, result_code=ResultCode.PASS), 1.0)  # result_recipe 65535
    assert plain.summary()["protocol_errors"] == 0 and "recipe" not in plain.status_line()
    listed = _plc(mode="free-run")
    listed.on_outputs(Outputs(status=FAILSAFE, result_seq=1, result_code=ResultCode.FAILSAFE,
                              fault_code=FaultCode.RECIPE_UNKNOWN, result_recipe=4), 1.0)
    assert listed.summary()["protocol_errors_by_kind"] == {"failsafe_details": 1}  # a fail-safe judged with none


def test_the_front_ends_refuse_a_program_with_recipes_through_a_mapping_without_them(make_sim):
    with pytest.raises(ValueError, match="does not carry recipe_id and active_recipe: list recipe_id in modbus"):
        make_sim("free-run", recipe=2)
    with pytest.raises(ValueError, match="does not carry active_recipe"):
        make_sim("free-run", device={"modbus.optional_inputs": ["recipe_id"]}, recipe=2)
    sim = make_sim("free-run", device=_device("modbus"), recipe_sequence=[1], recipe_change_every_s=5.0)
    assert sim.summary()["recipes"]["sequence"] == [1]
    assert "recipes" not in make_sim("free-run").summary()


def test_the_scenario_over_the_loop_against_a_bridge_on_the_wire(make_sim):
    """The real front-end and its clock; the fake bridge exchanging blocks through the loop
    adapter every 10 ms, as the write loop does."""
    sim = make_sim("triggered", protocol="loop", trigger_hz=50, recipe_sequence=[1, 2], recipe_change_every_s=0.4,
                   watchdog_ms=1000)
    adapter = LoopAdapter(station_config(sim).plc)
    adapter.connect()
    bridge = RecipeBridge(switch_s=0.03)
    inputs = adapter.read(0.5)
    t_end = time.monotonic() + 2.1
    try:
        while time.monotonic() < t_end:
            inputs = adapter.exchange(bridge.step(inputs, time.monotonic()), 0.5)
            time.sleep(0.01)
    finally:
        adapter.close()
    s = sim.summary()
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]
    r = s["recipes"]
    assert r["changes"] >= 4 and r["switch_ms"]["count"] >= 3 and r["wrong_recipe"] == 0
    assert {"1", "2"} <= set(r["verdicts_by_recipe"]) and bridge.read_mid_switch == 0


# ---------------------------------------------------------------------- trace and command line


def test_trace_lines_show_the_recipe_fields_only_where_carried(tmp_path):
    trace = tmp_path / "trace.jsonl"
    answer = dataclasses.replace(ANSWER, active_recipe=3, result_recipe=3)
    for inputs, outputs in (((), ()), (("recipe_id",), tuple(RECIPE_OUTPUTS))):
        plc = TracingPlc(ProgramSettings(mode="free-run", recipe=3), trace, outputs, inputs)
        plc.on_outputs(answer, 1.0)
        plc.close()
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert not any("recipe" in k for k in lines[0])
    assert {k: v for k, v in lines[1].items() if "recipe" in k} == {"active_recipe": 3, "result_recipe": 3, "recipe_id": 3}


def test_the_command_line_flags_set_the_recipe_fields(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--optional-inputs", "recipe_id", "--optional-outputs", "active_recipe,result_recipe",
                              "--recipe", "3", "--recipe-sequence", "1,2", "--recipe-change-every-s", "2.5",
                              "--no-wait-active-recipe"])
    args.frontend = "modbus"
    o = _overrides(args)
    assert (o["modbus.optional_inputs"], o["modbus.optional_outputs"]) == (["recipe_id"], RECIPE_OUTPUTS)
    assert (o["program.recipe"], o["program.recipe_sequence"], o["program.recipe_change_every_s"],
            o["program.wait_active_recipe"]) == (3, [1, 2], 2.5, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["--optional-inputs", "recipe"])
    assert "unknown optional input(s) recipe; known: recipe_id" in capsys.readouterr().err
    # A recipe with no recipe_id to write it in: refused, naming the settings.
    bare = parser.parse_args(["--recipe", "3", "--port", "0", "--seconds", "0.2", "--quiet"])
    bare.frontend = "modbus"
    assert run_sim(bare) == 2
    assert "list recipe_id in modbus.optional_inputs" in capsys.readouterr().err
    full = parser.parse_args(["--optional-inputs", "recipe_id", "--optional-outputs", "active_recipe,result_recipe",
                              "--recipe", "3", "--port", "0", "--seconds", "0.3", "--quiet"])
    full.frontend = "modbus"
    assert run_sim(full) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert summary["recipes"]["recipe_id"] == 3 and summary["recipes"]["waiting_for_switch"]


def test_check_config_warns_a_station_reading_recipe_id_without_recipes_or_result_recipe() -> None:
    """A station that reads recipe_id but lists no [[recipe]] has recipe 0 alone, and one that
    does not write result_recipe leaves the PLC unable to check a verdict's recipe: both are
    said; a station that does not read recipe_id hears nothing of recipes."""
    from plcbridge.checks import config_warnings
    from plcbridge.config import parse_config

    base = {"camera": {"source": "synthetic"}, "model": {"manifest": "builtin:demo"}}
    plain = parse_config({**base, "plc": {"protocol": "modbus"}}, "<test>", env={})
    reads = parse_config({**base, "plc": {"protocol": "modbus", "modbus": {"optional_inputs": ["recipe_id"]}}},
                         "<test>", env={})
    full = parse_config({**base, "plc": {"protocol": "modbus", "modbus": LISTED},
                         "recipe": [{"id": 4, "manifest": "builtin:demo"}]}, "<test>", env={})
    assert not [w for w in config_warnings(plain) if "recipe" in w[1]]
    warnings = {w[0]: w[1] for w in config_warnings(reads) if "recipe" in w[1]}
    assert "has no [[recipe]]" in warnings["plc.modbus.optional_inputs"]
    assert "result_recipe is not written" in warnings["plc.modbus.optional_outputs"]
    assert not [w for w in config_warnings(full) if "recipe" in w[1]]
