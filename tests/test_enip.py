"""EtherNet/IP end to end over real loopback sockets: pycomm3 adapter in the real daemon ->
cm-ethernetip simulator front-end running the simulated PLC program, with pylogix as an
independent second CIP client. Bounds are generous on purpose (noisy 2-core CI machine)."""

from __future__ import annotations

import functools
import math
import signal
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers import read_metric, running, station_config, wait_for
from pycomm3.const import MULTISERVICE_READ_OVERHEAD

from plcbridge.adapters.plc.base import PlcError
from plcbridge.adapters.plc.enip import EnipAdapter
from plcbridge.config import ConfigError, parse_config
from plcbridge.contract import (
    INPUT_SIGNALS,
    OUTPUT_SIGNALS,
    SCORE_SCALE,
    Inputs,
    Outputs,
    StatusBit,
)
from plcbridge.contract.enip import (
    INPUT_TAGS,
    OUTPUT_TAGS,
    carried_input_tags,
    carried_tags,
    decode_inputs,
    decode_outputs,
    encode_inputs,
    encode_outputs,
    resolve_names,
)
from plcbridge.simulators.device import DeviceFileError, load_device
from plcbridge.simulators.enip import EnipSimulator
from plcbridge.simulators.process import start_simulator, stop_simulator

ENIP = {"protocol": "enip"}


@pytest.fixture
def make_sim(make_sim: Callable[..., Any]) -> Callable[..., EnipSimulator]:
    """conftest's simulator factory, on EtherNet/IP."""
    return functools.partial(make_sim, protocol="enip")


def _answered(sim: EnipSimulator) -> int:
    return sum(sim.summary()["results"].values())


# ---------------------------------------------------------------------- tag table and values


def test_tag_table_is_the_contract_with_logix_types():
    assert [t.signal for t in OUTPUT_TAGS] == list(OUTPUT_SIGNALS)
    assert [t.signal for t in INPUT_TAGS] == list(INPUT_SIGNALS)
    types = {t.default_name: t.type for t in (*OUTPUT_TAGS, *INPUT_TAGS)}
    assert types["PB_Score"] == "REAL"
    assert {n for n, t in types.items() if t != "DINT"} == {"PB_Score"}
    assert types["PB_Heartbeat"] == types["PB_PartId"] == types["PB_PlcPartId"] == "DINT"


def test_values_round_trip_through_the_tags():
    o = Outputs(heartbeat=65535, status=0b111111, result_seq=7, result_code=2, score=SCORE_SCALE, fault_code=3,
                latency_ms=40, model_version=1, part_id=0xFFFFFFF0)
    pairs = dict(encode_outputs(o, {t.signal.name: t.default_name for t in OUTPUT_TAGS}))
    assert pairs["PB_PartId"] == -16  # same 32 bits in a DINT
    assert pairs["PB_Score"] == 1.0  # the score itself, not x10000
    back = decode_outputs({t.signal.name: pairs[t.default_name] for t in OUTPUT_TAGS})
    assert back == o
    # Every score register value survives the float32 a REAL tag holds.
    for reg in range(SCORE_SCALE + 1):
        f32 = struct.unpack("<f", struct.pack("<f", reg / SCORE_SCALE))[0]
        assert decode_outputs({**{t.signal.name: 0 for t in OUTPUT_TAGS}, "score": f32}).score == reg
    i = Inputs(trigger_seq=9, part_id=0x80000000, result_ack_seq=65535)
    assert decode_inputs(encode_inputs(i)) == i
    # A PLC-written DINT counter that runs past 65535 wraps like the contract's u16.
    assert decode_inputs({"trigger_seq": 65536, "part_id": -1, "result_ack_seq": -1}) == Inputs(0, 0xFFFFFFFF, 65535)
    assert decode_outputs({**{t.signal.name: 0 for t in OUTPUT_TAGS}, "score": math.nan}).score == SCORE_SCALE


def test_tag_names_are_checked_in_the_config():
    outs, ins = resolve_names({"score": "Program:Main.DefectScore"}, {})
    assert outs["score"] == "Program:Main.DefectScore" and outs["heartbeat"] == "PB_Heartbeat"
    assert ins["part_id"] == "PB_PlcPartId"
    for bad, why in (
        ({"output_tags": {"scor": "X"}}, "'scor' is not a contract signal"),
        ({"output_tags": {"score": "9lives"}}, "is not a Logix tag name"),
        ({"input_tags": {"part_id": "pb_partid"}}, "used for both output part_id and input part_id"),
    ):
        with pytest.raises(ConfigError, match=why) as e:
            parse_config({"plc": {"protocol": "enip", "enip": bad}}, env={})
        assert "plc.enip" in str(e.value)
    with pytest.raises(DeviceFileError, match="controller-scoped"):
        load_device(None, {"enip.output_tags": {"score": "Program:Main.Score"}})


# ---------------------------------------------------------------------- adapter against the simulator


def _adapter(port: int, **enip: Any) -> EnipAdapter:
    return EnipAdapter(parse_config({"plc": {"protocol": "enip", "port": port, "enip": enip}}, env={}).plc)


@pytest.mark.parametrize("instance_ids", [True, False], ids=["symbol-instance-ids", "symbolic-names"])
def test_one_exchange_is_one_multiple_service_packet_writing_then_reading(make_sim, instance_ids):
    """Logix v21+ is addressed by symbol instance id, older firmware by name (pycomm3 picks
    by the controller's revision; forced here): one packet either way."""
    sim = make_sim("free-run")
    a = _adapter(sim.port)
    a.connect()
    a._driver._cfg["use_instance_ids"] = instance_ids
    try:
        requests, blocks = sim.requests_served, sim.block_writes
        for hb in range(50):
            inputs = a.exchange(Outputs(heartbeat=hb, status=StatusBit.READY, score=2500, part_id=0xFFFFFFFF), 0.5)
        assert sim.requests_served - requests == 50  # one Multiple Service Packet: the writes, then the reads
        assert sim.block_writes - blocks == 50
        assert inputs == Inputs(0, 0, 0)
        _, last = sim.program.seen[-1]
        assert (last.heartbeat, last.score, last.part_id) == (49, 2500, 0xFFFFFFFF)
        s = sim.summary()
        assert s["writes_seen"] == 50 and s["protocol_errors"] == 0, s["recent_protocol_errors"]
    finally:
        a.close()


def test_a_block_that_does_not_fit_one_packet_goes_as_a_write_packet_then_a_read_packet(make_sim):
    """A controller with the 500-byte connection and long symbolic names: the combined packet
    would not fit, so pycomm3's write and read go as two packets, the block still whole."""
    sim = make_sim("free-run")
    a = _adapter(sim.port)
    a.connect()
    try:
        driver = a._driver
        combined = a._one_packet(driver, encode_outputs(Outputs(), a._out_names))
        assert combined is not None
        driver._cfg["connection_size"] = MULTISERVICE_READ_OVERHEAD + sum(len(s.message) + 2 for s in combined.requests) - 1
        assert a._one_packet(driver, encode_outputs(Outputs(), a._out_names)) is None
        requests, blocks = sim.requests_served, sim.block_writes
        for hb in range(20):
            a.exchange(Outputs(heartbeat=hb, status=StatusBit.READY, score=1234), 0.5)
        assert (sim.requests_served - requests, sim.block_writes - blocks) == (2 * 20, 20)
        _, last = sim.program.seen[-1]
        assert (last.heartbeat, last.score) == (19, 1234)
        assert sim.summary()["protocol_errors"] == 0, sim.summary()["recent_protocol_errors"]
    finally:
        a.close()


@pytest.mark.parametrize("rename, message", [
    ({"output_tags": {"heartbeat": "PB_NoSuchTag"}},
     "output tag 'PB_NoSuchTag' (heartbeat) does not exist in the controller; create it as DINT"),
    ({"output_tags": {"heartbeat": "PB_Score", "score": "PB_Heartbeat"}},
     "output tag 'PB_Score' (heartbeat) is REAL in the controller, expected DINT"),
])
def test_missing_or_mistyped_tag_is_refused_at_connect_naming_it(make_sim, rename, message):
    sim = make_sim("free-run")
    a = _adapter(sim.port, **rename)
    with pytest.raises(PlcError) as e:
        a.connect()
    a.close()
    assert message in str(e.value)
    if "score" in rename["output_tags"]:
        assert "output tag 'PB_Heartbeat' (score) is DINT in the controller, expected REAL" in str(e.value)
    assert sim.summary()["writes_seen"] == 0


def test_tag_names_match_case_insensitively_like_logix(make_sim):
    sim = make_sim("free-run")
    a = _adapter(sim.port, output_tags={"heartbeat": "pb_heartbeat"})
    a.connect()
    try:
        a.exchange(Outputs(heartbeat=3), 0.5)
        assert sim.program.seen[-1][1].heartbeat == 3
    finally:
        a.close()


# ---------------------------------------------------------------------- the whole daemon


def test_triggered_every_trigger_answered_and_verdicts_match_ground_truth(make_sim):
    sim = make_sim("triggered", trigger_hz=10)
    with running(station_config(sim.port, "triggered", plc=ENIP)) as d:
        wait_for(lambda: _answered(sim) >= 40, 30, "40 answered triggers")
    s = sim.summary()
    assert s["missing"] == 0 and s["skipped"] == 0, s
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]  # result_seq and part_id echo matched, whole blocks
    # No fail-safe in service; a trigger still undecided at stop is answered by the final block.
    assert s["results"].get("FAILSAFE", 0) == s["failsafe_faults"].get("SHUTTING_DOWN", 0) <= 1, s["failsafe_faults"]
    acc = d.journal.summary()["accuracy"]
    assert acc["labelled"] >= 40
    assert acc["agreement"] >= 0.9, acc
    assert s["latency_ms"]["count"] == _answered(sim)
    assert sim.block_writes == s["writes_seen"]  # every output block came as one request


def test_free_run_writes_newest_verdicts_matching_ground_truth(make_sim):
    sim = make_sim("free-run")
    with running(station_config(sim.port, "free-run", plc=ENIP)) as d:
        wait_for(lambda: d.journal.summary()["accuracy"]["labelled"] >= 60, 30, "60 judged frames")
        wait_for(lambda: sim.summary()["results"].get("PASS", 0) + sim.summary()["results"].get("FAIL", 0) >= 30, 10,
                 "30 verdicts seen by the PLC")
    acc = d.journal.summary()["accuracy"]
    assert acc["agreement"] >= 0.9, acc
    assert sim.summary()["protocol_errors"] == 0, sim.summary()["recent_protocol_errors"]


@pytest.mark.parametrize("rename, message", [
    ({"input_tags": {"trigger_seq": "PB_Trigger"}}, "input tag 'PB_Trigger' (trigger_seq) does not exist"),
    ({"output_tags": {"status": "PB_Score", "score": "PB_Status"}}, "'PB_Score' (status) is REAL in the controller, expected DINT"),
])
def test_daemon_with_a_bad_tag_stays_failsafe_and_retries_without_writing(make_sim, rename, message):
    sim = make_sim("triggered")
    cfg = station_config(sim.port, "triggered", plc={**ENIP, "reconnect_min_ms": 50, "reconnect_max_ms": 200, "enip": rename})
    with running(cfg) as d:
        # A tag table that does not fit is a configuration error: retried at reconnect_max_ms.
        wait_for(lambda: read_metric(d, "plcbridge_plc_errors_total", kind="config") >= 3, 15, "three refused connects")
        assert message in (d.link.last_error or "")
        assert not d.link.connected
        ticks = d.loop.ticks
        time.sleep(0.3)
        assert d.loop.alive and d.loop.ticks - ticks >= 15  # the write loop keeps its cadence, writing nowhere
    assert sim.summary()["writes_seen"] == 0


def test_a_silent_controller_is_dropped_on_the_exchange_deadline_and_reconnected():
    proc, port = start_simulator("free-run", 10.0, protocol="enip")
    try:
        cfg = station_config(port, "free-run", plc={**ENIP, "reconnect_min_ms": 50, "reconnect_max_ms": 200,
                                                   "connect_timeout_ms": 300})
        with running(cfg) as d:
            wait_for(lambda: d.link.connected, 30, "connected")
            proc.send_signal(signal.SIGSTOP)  # the socket stays open and nothing answers: a pulled cable
            t0 = time.monotonic()
            wait_for(lambda: not d.link.connected, 2, "the silence to be noticed")
            noticed_s = time.monotonic() - t0
            assert "deadline" in (d.link.last_error or "") or "timed out" in (d.link.last_error or ""), d.link.last_error
            time.sleep(0.5)
            assert not d.link.connected and d.loop.alive
            proc.send_signal(signal.SIGCONT)
            wait_for(lambda: d.link.connected, 15, "a reconnect once the controller answers again")
        summary = stop_simulator(proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
    assert noticed_s < 0.5, f"took {noticed_s * 1000:.0f} ms; the exchange deadline is 8 ms"
    assert summary["protocol_errors"] == 0, summary["recent_protocol_errors"]


def test_pylogix_reads_the_simulator_tags_while_the_daemon_writes_them(make_sim):
    from pylogix import PLC

    sim = make_sim("triggered", trigger_hz=10)
    with running(station_config(sim.port, "triggered", plc=ENIP)) as d, PLC() as plc:
        plc.IPAddress, plc.Port = "127.0.0.1", sim.port
        wait_for(lambda: d.link.connected and _answered(sim) >= 3, 30, "the daemon answering triggers")
        listed = plc.GetTagList()
        assert listed.Status == "Success", listed.Status
        types = {t.TagName: t.DataType for t in listed.Value}
        # A classifier station's controller: the base tags, no optional one.
        assert types == {t.default_name: t.type for t in (*carried_tags(()), *carried_input_tags(()))}
        beats = set()
        for _ in range(10):
            r = plc.Read(["PB_Heartbeat", "PB_Status", "PB_Score", "PB_PlcTriggerSeq"])
            assert [x.Status for x in r] == ["Success"] * 4, r
            beats.add(r[0].Value)
            assert r[1].Value & StatusBit.READY
            assert isinstance(r[2].Value, float) and 0.0 <= r[2].Value <= 1.0
            assert r[3].Value >= 1  # the simulated PLC's own trigger counter
            time.sleep(0.03)
        assert len(beats) >= 5, beats  # the heartbeat moves under the second client's eyes
        refused = plc.Write("PB_PlcTriggerSeq", 0)  # the PLC owns its input tags
        assert refused.Status != "Success"
    s = sim.summary()
    assert s["protocol_errors_by_kind"] == {"write_to_input": 1}, s["recent_protocol_errors"]
    assert s["missing"] == 0 and s["skipped"] == 0
