"""The optional outputs (result details of detection, segmentation and anomaly models:
defect_count, defect_class, anomaly_area): a classifier station's register map, node set and
tag list are exactly what they were before these signals existed; a station that lists them
in its mapping's `optional_outputs` carries them over every protocol to the real simulators
on 127.0.0.1, in the block of the result they describe; values saturate; a fail-safe, or no
result, says "nothing measured" (0, 65535, 0)."""

from __future__ import annotations

import dataclasses
import json
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
from plcbridge.config import ConfigError, FailsafeSettings, TimingSettings, load_config, parse_config
from plcbridge.contract import (
    BASE_OUTPUT_SIGNALS,
    DEFECT_CLASS_NONE,
    OPTIONAL_OUTPUT_SIGNALS,
    OUTPUT_SIGNALS,
    U16_MAX,
    U32_MAX,
    FaultCode,
    Outputs,
    ResultCode,
    StatusBit,
    area_register,
    defect_class_register,
    defect_count_register,
)
from plcbridge.contract.enip import EnipTagMap, encode_outputs
from plcbridge.contract.modbus import ModbusMap, RegisterMap
from plcbridge.contract.opcua import OpcUaNodeMap
from plcbridge.decision import Decision, failsafe
from plcbridge.inspection import FreeRunInspection, Health, block_for, session_start_block, shutdown_block
from plcbridge.journal import Journal
from plcbridge.metrics import Metrics
from plcbridge.simulators.device import DeviceFileError, ProgramSettings, load_device
from plcbridge.simulators.program import SimulatedPlc
from plcbridge.simulators.trace import TracingPlc

# The result details (the recipe outputs after them: tests/test_recipes.py).
ALL = ["defect_count", "defect_class", "anomaly_area"]
NOTHING = (0, DEFECT_CLASS_NONE, 0)  # defect_count, defect_class, anomaly_area: nothing measured
VALID = int(StatusBit.READY | StatusBit.RESULT_VALID)
FAILSAFE = VALID | int(StatusBit.FAILSAFE_ACTIVE)
OK = Health(camera_ok=True, model_ok=True, model_version=3)

# A block with every field set, the details too: a classifier station's map must not show them.
BLOCK = Outputs(heartbeat=65535, status=0b1111111, result_seq=7, result_code=2, score=10000, fault_code=9,
                latency_ms=40, model_version=3, part_id=0x12345678, defect_count=4, defect_class=2,
                anomaly_area=123456)


def details(o: Outputs) -> tuple[int, int, int]:
    return o.defect_count, o.defect_class, o.anomaly_area


# ---------------------------------------------------------------------- a classifier station: unchanged

# What the code gave for the default maps before the optional outputs existed (taken from
# the code as it was, not recomputed here).
MODBUS_BEFORE = {
    "high_first": [65535, 127, 7, 2, 10000, 9, 40, 3, 0x1234, 0x5678],
    "low_first": [65535, 127, 7, 2, 10000, 9, 40, 3, 0x5678, 0x1234],
}
OPCUA_BEFORE = [
    ("outputs.heartbeat", "plcbridge.outputs.heartbeat", "UInt16"),
    ("outputs.status", "plcbridge.outputs.status", "UInt16"),
    ("outputs.result_seq", "plcbridge.outputs.result_seq", "UInt16"),
    ("outputs.result_code", "plcbridge.outputs.result_code", "UInt16"),
    ("outputs.score", "plcbridge.outputs.score", "UInt16"),
    ("outputs.fault_code", "plcbridge.outputs.fault_code", "UInt16"),
    ("outputs.latency_ms", "plcbridge.outputs.latency_ms", "UInt16"),
    ("outputs.model_version", "plcbridge.outputs.model_version", "UInt16"),
    ("outputs.part_id", "plcbridge.outputs.part_id", "UInt32"),
    ("inputs.trigger_seq", "plcbridge.inputs.trigger_seq", "UInt16"),
    ("inputs.part_id", "plcbridge.inputs.part_id", "UInt32"),
    ("inputs.result_ack_seq", "plcbridge.inputs.result_ack_seq", "UInt16"),
]
ENIP_OUTPUTS_BEFORE = {
    "heartbeat": "PB_Heartbeat", "status": "PB_Status", "result_seq": "PB_ResultSeq", "result_code": "PB_ResultCode",
    "score": "PB_Score", "fault_code": "PB_FaultCode", "latency_ms": "PB_LatencyMs",
    "model_version": "PB_ModelVersion", "part_id": "PB_PartId",
}
ENIP_INPUTS_BEFORE = {"trigger_seq": "PB_PlcTriggerSeq", "part_id": "PB_PlcPartId", "result_ack_seq": "PB_PlcResultAckSeq"}
ENIP_WRITE_BEFORE = [("PB_Heartbeat", 65535), ("PB_Status", 127), ("PB_ResultSeq", 7), ("PB_ResultCode", 2),
                     ("PB_Score", 1.0), ("PB_FaultCode", 9), ("PB_LatencyMs", 40), ("PB_ModelVersion", 3),
                     ("PB_PartId", 305419896)]


@pytest.mark.parametrize("order", ["high_first", "low_first"])
def test_a_classifier_station_register_map_is_byte_for_byte_what_it_was(order):
    for rmap in (RegisterMap(word_order=order), ModbusMap(word_order=order).register_map):
        assert (rmap.outputs_base, rmap.outputs_count, rmap.inputs_base, rmap.inputs_count) == (0, 10, 100, 4)
        assert rmap.output_signals == BASE_OUTPUT_SIGNALS
        assert rmap.encode_outputs(BLOCK) == MODBUS_BEFORE[order]  # the details are not written
        back = rmap.decode_outputs(MODBUS_BEFORE[order])
        assert back == dataclasses.replace(BLOCK, defect_count=0, defect_class=DEFECT_CLASS_NONE, anomaly_area=0)


def test_a_classifier_station_node_set_and_tag_list_are_what_they_were():
    nodes = OpcUaNodeMap()
    assert [(n.key, n.identifier, n.ua_type) for specs in nodes.specs() for n in specs] == OPCUA_BEFORE
    assert list(nodes.output_nodes) == list(ENIP_OUTPUTS_BEFORE)  # no node for an optional signal
    tags = EnipTagMap()
    assert (tags.output_tags, tags.input_tags) == (ENIP_OUTPUTS_BEFORE, ENIP_INPUTS_BEFORE)
    assert encode_outputs(BLOCK, tags.output_tags) == ENIP_WRITE_BEFORE  # no optional tag written
    # The default device file's simulators hold the same, and the station files of the repository too.
    device = load_device(None)
    assert device.modbus.register_map.outputs_count == 10
    assert device.opcua.output_nodes == nodes.output_nodes and device.enip.output_tags == ENIP_OUTPUTS_BEFORE
    root = Path(__file__).resolve().parents[1]
    for station in sorted((root / "config").glob("station-*.toml")):
        cfg = load_config(station, env={})
        section = getattr(cfg.plc, cfg.plc.protocol, None)
        if cfg.model.manifest == "builtin:anomaly":  # the anomaly example lists its area, on purpose
            assert getattr(section, "optional_outputs", None) == ["anomaly_area"], station
            continue
        if cfg.recipe:  # the recipes example lists the recipe signals, on purpose
            assert getattr(section, "optional_outputs", None) == ["active_recipe", "result_recipe"], station
            continue
        assert getattr(section, "optional_outputs", []) == [], station


def test_the_optional_signals_come_after_the_base_block_in_the_contract():
    assert OUTPUT_SIGNALS[: len(BASE_OUTPUT_SIGNALS)] == BASE_OUTPUT_SIGNALS
    assert [s.name for s in BASE_OUTPUT_SIGNALS] == list(ENIP_OUTPUTS_BEFORE)
    assert [(s.name, s.type) for s in OPTIONAL_OUTPUT_SIGNALS] == [
        ("defect_count", "u16"), ("defect_class", "u16"), ("anomaly_area", "u32"),
        ("active_recipe", "u16"), ("result_recipe", "u16")]
    assert details(Outputs()) == NOTHING  # no result: nothing measured, class none (not class 0)


# ---------------------------------------------------------------------- settings


@pytest.mark.parametrize("listed, count", [
    ([], 10), (["defect_count"], 11), (["defect_class"], 12), (["defect_count", "defect_class"], 12),
    (["anomaly_area"], 14), (ALL, 14), (["anomaly_area", "defect_count"], 14),
])
def test_modbus_optional_registers_have_fixed_addresses_after_the_block(listed, count):
    rmap = ModbusMap(optional_outputs=listed).register_map
    assert rmap.outputs_count == count
    assert rmap.offsets(OUTPUT_SIGNALS) == {
        "heartbeat": 0, "status": 1, "result_seq": 2, "result_code": 3, "score": 4, "fault_code": 5,
        "latency_ms": 6, "model_version": 7, "part_id": 8, "defect_count": 10, "defect_class": 11, "anomaly_area": 12,
        "active_recipe": 14, "result_recipe": 15}
    o = dataclasses.replace(BLOCK, defect_count=65535, defect_class=300, anomaly_area=0xABCD1234)
    regs = rmap.encode_outputs(o)
    assert regs[:10] == MODBUS_BEFORE["high_first"]  # the base block does not move
    assert regs[10:] == [65535, 300, 0xABCD, 0x1234][: count - 10]
    back = rmap.decode_outputs(regs).as_dict()
    in_block = {s.name for s in rmap.output_signals}
    assert {n: back[n] for n in ALL} == {n: getattr(o if n in in_block else Outputs(), n) for n in ALL}
    low = ModbusMap(optional_outputs=["anomaly_area"], word_order="low_first").register_map
    assert low.encode_outputs(o)[12:14] == [0x1234, 0xABCD]


def test_settings_name_what_is_wrong_with_the_optional_outputs():
    cases = [
        ({"protocol": "modbus", "modbus": {"optional_outputs": ["defect_cnt"]}}, ["plc.modbus.optional_outputs"]),
        ({"protocol": "modbus", "modbus": {"inputs_base": 11, "optional_outputs": ["defect_class"]}},
         ["plc.modbus", "optional_outputs", "output block 0..11 overlaps input block 11..14"]),
        ({"protocol": "opcua", "opcua": {"output_nodes": {"defect_count": "i=5010"}}},
         ["plc.opcua", "'defect_count' is an optional output: list it in optional_outputs"]),
        ({"protocol": "opcua", "opcua": {"optional_outputs": ["anomaly_area"],
                                         "output_nodes": {"anomaly_area": "plcbridge.outputs.score"}}},
         ["used for both", "score", "anomaly_area"]),
        ({"protocol": "enip", "enip": {"output_tags": {"anomaly_area": "Area"}}},
         ["plc.enip", "'anomaly_area' is an optional output: list it in optional_outputs"]),
        ({"protocol": "enip", "enip": {"optional_outputs": "defect_count"}}, ["plc.enip.optional_outputs"]),
    ]
    for plc, words in cases:
        with pytest.raises(ConfigError) as e:
            parse_config({"plc": plc}, env={})
        assert all(w in str(e.value) for w in words), (words, str(e.value))
    assert ModbusMap(inputs_base=10).register_map.outputs_count == 10  # a classifier's adjacent blocks still fit
    with pytest.raises(DeviceFileError, match="opcua.optional_outputs"):
        load_device(None, {"opcua.optional_outputs": ["area"]})


@pytest.mark.parametrize("protocol", ["modbus", "opcua", "enip"])
def test_listed_optional_outputs_survive_the_resolved_config_round_trip(protocol):
    section = {"optional_outputs": ["anomaly_area", "defect_count"]}
    cfg = parse_config({"plc": {"protocol": protocol, protocol: section}}, env={})
    again = parse_config(cfg.model_dump(mode="json"), env={})
    assert again.plc == cfg.plc
    names = {"opcua": lambda s: list(s.output_nodes), "enip": lambda s: list(s.output_tags),
             "modbus": lambda s: [x.name for x in s.register_map.output_signals]}[protocol](getattr(cfg.plc, protocol))
    if protocol == "modbus":  # contiguous: defect_class lies between the two listed
        assert names[9:] == ALL
    else:
        assert names == [*ENIP_OUTPUTS_BEFORE, "defect_count", "anomaly_area"]


# ---------------------------------------------------------------------- the block: saturation, fail-safe


def test_values_saturate_into_their_registers():
    assert [defect_count_register(n) for n in (0, 3, 65535, 65536, 10**9, -2)] == [0, 3, 65535, 65535, 65535, 0]
    assert defect_class_register(0, 1) == 0  # class 0 is the model's first class, not "none"
    assert defect_class_register(65534, 1) == 65534
    assert defect_class_register(70000, 1) == DEFECT_CLASS_NONE - 1  # never reads as "none"
    assert [defect_class_register(c, n) for c, n in ((None, 3), (-1, 3), (4, 0))] == [DEFECT_CLASS_NONE] * 3
    assert [area_register(a) for a in (0, 640 * 480, U32_MAX, U32_MAX + 1, 2**40, -5)] == \
        [0, 307200, U32_MAX, U32_MAX, U32_MAX, 0]
    d = Decision(ResultCode.FAIL, FaultCode.NONE, 0.9, 1.0, 3, 17, 0.99, defect_count=100_000, defect_class=2,
                 anomaly_area=2**33)
    f = block_for(d, 17, 5, FailsafeSettings(), OK)
    assert details(f) == (U16_MAX, 2, U32_MAX)
    assert (f.result_seq, f.result_code, f.part_id) == (17, ResultCode.FAIL, 5)  # in the block of its own result
    assert RegisterMap(optional_outputs=tuple(ALL)).encode_outputs(f)[10:] == [65535, 2, 0xFFFF, 0xFFFF]
    # A class with no defect counted is no class: the PLC can rely on count 0 <=> none.
    assert details(block_for(dataclasses.replace(d, defect_count=0), 17, 5, FailsafeSettings(), OK)) == (0, DEFECT_CLASS_NONE, U32_MAX)
    # A classifier's decision (no details given) says nothing measured.
    classifier = Decision(ResultCode.PASS, FaultCode.NONE, 0.1, 1.0, 3, 18, 0.99)
    assert details(block_for(classifier, 18, 6, FailsafeSettings(), OK)) == NOTHING


def test_a_failsafe_block_says_nothing_was_measured():
    fs = FailsafeSettings(result_code="FAIL", score=1.0)
    d = failsafe(FaultCode.INFERENCE_TIMEOUT, 2.0, "slow", model_version=3)
    assert (d.defect_count, d.defect_class, d.anomaly_area) == (0, None, 0)
    f = block_for(d, 9, 4, fs, OK)
    assert f.status & StatusBit.FAILSAFE_ACTIVE and details(f) == NOTHING
    # Whatever a fail-safe decision was given, the block carries the documented values.
    odd = dataclasses.replace(d, defect_count=3, defect_class=1, anomaly_area=99)
    assert details(block_for(odd, 9, 4, fs, OK)) == NOTHING
    assert details(shutdown_block(fs, 9, 3, 4, answers=True)) == NOTHING
    assert details(session_start_block(block_for(Decision(ResultCode.FAIL, FaultCode.NONE, 0.9, 1.0, 3, defect_count=2,
                                                          defect_class=1), 9, 4, fs, OK))) == NOTHING
    # Free-run: the newest decision's details, and nothing measured once it is too old.
    m = Metrics()
    latest = Decision(ResultCode.FAIL, FaultCode.NONE, 0.8, 1.0, 3, 21, 0.99, defect_count=2, defect_class=5,
                      anomaly_area=777)
    ins = FreeRunInspection(TimingSettings(max_result_age_ms=100), fs, lambda: latest, Journal(m, "t"), m)
    f, _ = ins.tick(1.01, OK)
    assert (f.result_seq, details(f)) == (21, (2, 5, 777))
    f, _ = ins.tick(1.5, OK)
    assert f.fault_code == FaultCode.STALE_RESULT and details(f) == NOTHING
    assert details(ins.shutdown(1.6)) == NOTHING


# ---------------------------------------------------------------------- over the wire, to the simulators

ANSWER = Outputs(heartbeat=1, status=VALID, result_seq=5, result_code=ResultCode.FAIL, score=8000,
                 defect_count=3, defect_class=7, anomaly_area=0xFEDCBA98)
FAILSAFE_ANSWER = Outputs(heartbeat=2, status=FAILSAFE, result_seq=6, result_code=ResultCode.FAILSAFE, score=10000,
                          fault_code=FaultCode.INFERENCE_TIMEOUT)


def _exchange_and_check(adapter: Any, sim: Any) -> None:
    """The answer, then a fail-safe, each as the program received it (an optional signal the
    mapping does not carry arrives as its default); the summary shows them."""
    carried = [n for n in ALL if n in sim.optional_outputs]
    expected = dataclasses.replace(ANSWER, **{n: getattr(Outputs(), n) for n in ALL if n not in carried})
    adapter.connect()
    try:
        adapter.exchange(ANSWER, 0.5)
        assert sim.program.seen[-1][1] == expected
        adapter.exchange(FAILSAFE_ANSWER, 0.5)
        assert sim.program.seen[-1][1] == FAILSAFE_ANSWER and details(FAILSAFE_ANSWER) == NOTHING
    finally:
        adapter.close()
    s = sim.summary()
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]
    assert s["results"] == {"FAIL": 1, "FAILSAFE": 1}
    assert s["result_details"]["carried"] == carried
    assert s["result_details"]["last"] == {n: v for n, v in zip(ALL, NOTHING) if n in carried}
    if "defect_count" in carried:
        assert s["result_details"]["defects_counted"] == 3
    if "anomaly_area" in carried:
        assert s["result_details"]["anomaly_area_max"] == 0xFEDCBA98
    assert all(f"{n}=" in sim.status_line() for n in carried)


@pytest.mark.parametrize("order", ["high_first", "low_first"])
def test_modbus_carries_them_in_the_registers_after_the_block(make_sim, order):
    sim = make_sim("free-run", device={"modbus.optional_outputs": ALL, "modbus.word_order": order})
    cfg = station_config(sim, "free-run", plc={"modbus": {"optional_outputs": ALL, "word_order": order}})
    _exchange_and_check(ModbusAdapter(cfg.plc), sim)
    client = ModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0)
    assert client.connect()
    try:  # what a PLC program reads at 10..13
        regs = client.read_holding_registers(0, count=14, device_id=1).registers
    finally:
        client.close()
    assert regs[10:12] == [0, DEFECT_CLASS_NONE] and regs[12:14] == [0, 0]  # the fail-safe's, last written
    assert RegisterMap(word_order=order, optional_outputs=tuple(ALL)).encode_outputs(ANSWER)[12:14] == \
        ([0xFEDC, 0xBA98] if order == "high_first" else [0xBA98, 0xFEDC])


def test_modbus_both_ends_must_list_the_same(make_sim):
    # The bridge lists them, the PLC does not map the registers: refused, naming the setting.
    plain = make_sim("free-run")
    cfg = station_config(plain, "free-run", plc={"modbus": {"optional_outputs": ["defect_count"], "exchange": "fc16+fc3"}})
    a = ModbusAdapter(cfg.plc)
    a.connect()
    try:
        with pytest.raises(PlcConfigError) as e:
            a.exchange(ANSWER, 0.5)
    finally:
        a.close()
    assert "0..10" in str(e.value) and e.value.setting == "plc.modbus.outputs_base, plc.modbus.optional_outputs"
    assert plain.summary()["writes_seen"] == 0
    # The PLC has them, a classifier bridge does not write them: a partial block, counted.
    extended = make_sim("free-run", device={"modbus.optional_outputs": ["defect_count"]})
    a = ModbusAdapter(station_config(extended, "free-run").plc)
    a.connect()
    try:
        a.exchange(ANSWER, 0.5)
    finally:
        a.close()
    assert extended.summary()["protocol_errors_by_kind"] == {"partial_block": 1}


def test_enip_carries_them_as_dint_tags(make_sim):
    listed = {"optional_outputs": ["defect_count", "anomaly_area"], "output_tags": {"anomaly_area": "AreaPx"}}
    sim = make_sim("free-run", protocol="enip", device={f"enip.{k}": v for k, v in listed.items()})
    cfg = parse_config({"plc": {"protocol": "enip", "port": sim.port, "enip": listed}}, env={})
    assert cfg.plc.enip.output_tags["anomaly_area"] == "AreaPx" and "defect_class" not in cfg.plc.enip.output_tags
    # anomaly_area from 2^31 up travels as a negative DINT and comes back whole.
    _exchange_and_check(EnipAdapter(cfg.plc), sim)
    assert sim.summary()["results"] == {"FAIL": 1, "FAILSAFE": 1}
    assert [details(o) for _, o in sim.program.seen] == [(3, DEFECT_CLASS_NONE, 0xFEDCBA98), NOTHING]


def test_enip_a_listed_tag_the_controller_lacks_is_refused_at_connect(make_sim):
    sim = make_sim("free-run", protocol="enip")
    a = EnipAdapter(parse_config({"plc": {"protocol": "enip", "port": sim.port,
                                          "enip": {"optional_outputs": ["defect_class"]}}}, env={}).plc)
    with pytest.raises(PlcConfigError) as e:
        a.connect()
    a.close()
    assert "output tag 'PB_DefectClass' (defect_class) does not exist in the controller; create it as DINT" in str(e.value)
    assert "plc.enip.optional_outputs" in e.value.setting


def test_opcua_carries_them_as_typed_nodes(make_sim):
    listed = {"optional_outputs": ALL, "output_nodes": {"defect_class": "i=5011"}}
    sim = make_sim("free-run", protocol="opcua", device={f"opcua.{k}": v for k, v in listed.items()})
    cfg = station_config(sim, "free-run", plc={"opcua": listed})
    adapter = OpcUaAdapter(cfg.plc)
    assert [n.signal.name for n in adapter._outs] == [s.name for s in BASE_OUTPUT_SIGNALS] + ALL
    assert {n.signal.name: n.ua_type for n in adapter._outs if n.signal.optional} == {
        "defect_count": "UInt16", "defect_class": "UInt16", "anomaly_area": "UInt32"}
    _exchange_and_check(adapter, sim)
    # A node the PLC lacks is refused at connect, naming it; nothing is written.
    writes = sim.summary()["writes_seen"]
    missing = station_config(sim, "free-run", plc={"opcua": {**listed, "output_nodes": {"defect_class": "i=5999"}}})
    adapter = OpcUaAdapter(missing.plc)
    try:
        with pytest.raises(PlcError) as e:
            adapter.connect()
    finally:
        adapter.close()
    assert "node outputs.defect_class (nsu=urn:plcbridge:plc;i=5999)" in str(e.value) and "BadNodeIdUnknown" in str(e.value)
    assert sim.summary()["writes_seen"] == writes


def test_loop_carries_every_signal(make_sim):
    sim = make_sim("free-run", protocol="loop")
    a = LoopAdapter(station_config(sim).plc)
    a.connect()
    a.exchange(ANSWER, 0.5)
    assert sim.program.seen[-1][1] == ANSWER
    with pytest.raises(PlcError, match="anomaly_area=4294967296"):
        a.exchange(dataclasses.replace(ANSWER, anomaly_area=U32_MAX + 1), 0.5)
    a.close()


def test_the_daemon_writes_the_extended_block_with_each_answer(make_sim):
    """A classifier model on a station that lists every optional output: every answer goes out
    as the whole extended block (a partial one would be counted), nothing measured in each."""
    sim = make_sim("triggered", trigger_hz=20, device={"modbus.optional_outputs": ALL})
    with running(station_config(sim, "triggered", plc={"modbus": {"optional_outputs": ALL}})):
        wait_for(lambda: sum(sim.summary()["results"].values()) >= 10, 30, "10 answered triggers")
    s = sim.summary()
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]
    assert s["result_details"]["defects_counted"] == 0 and s["result_details"]["defect_classes"] == {}
    assert {details(o) for _, o in sim.program.seen} == {NOTHING}


# ---------------------------------------------------------------------- the simulated PLC's own checks


def _taken(plc: SimulatedPlc, o: Outputs) -> None:
    plc.on_outputs(o, 1.0)


def test_the_simulated_plc_checks_and_totals_the_details():
    plc = SimulatedPlc(ProgramSettings(mode="free-run"))
    _taken(plc, ANSWER)
    _taken(plc, dataclasses.replace(ANSWER, result_seq=6, defect_count=1, defect_class=0, anomaly_area=5))
    _taken(plc, dataclasses.replace(FAILSAFE_ANSWER, result_seq=7))
    assert plc.protocol_errors == {}
    r = plc.result_details(ALL)
    assert r == {"carried": ALL, "last": dict(zip(ALL, NOTHING)), "defects_counted": 4,
                 "defect_classes": {"0": 1, "7": 1}, "anomaly_area_max": 0xFEDCBA98}
    assert plc.result_details(["anomaly_area"]) == {"carried": ["anomaly_area"], "last": {"anomaly_area": 0},
                                                    "anomaly_area_max": 0xFEDCBA98}
    _taken(plc, dataclasses.replace(FAILSAFE_ANSWER, result_seq=8, defect_count=1))  # a fail-safe that measured
    _taken(plc, dataclasses.replace(ANSWER, result_seq=9, defect_count=0, defect_class=3))  # a class, no defect
    assert plc.protocol_errors == {"failsafe_details": 1, "defect_class_mismatch": 1}


def test_summary_and_trace_show_them_only_where_mapped(make_sim, tmp_path):
    plain = make_sim("free-run")
    assert "result_details" not in plain.summary() and "defect" not in plain.status_line()
    trace = tmp_path / "trace.jsonl"
    for carried in ((), ("defect_class",)):
        plc = TracingPlc(ProgramSettings(mode="free-run"), trace, carried)
        plc.on_outputs(ANSWER, 1.0)
        plc.close()
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert not any(k in lines[0] for k in ALL)
    assert lines[1]["defect_class"] == 7 and "defect_count" not in lines[1] and lines[1]["result_seq"] == 5
