"""PLC simulator: the program on a fake clock, then the Modbus front-end over real loopback
TCP with a pymodbus client playing the bridge, then the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient

from plcbridge.contract import (
    FaultCode,
    Inputs,
    Outputs,
    ResultCode,
    StatusBit,
)
from plcbridge.contract.modbus import RegisterMap
from plcbridge.simulators.device import (
    DeviceFileError,
    DeviceSettings,
    ProgramSettings,
    load_device,
    parse_device,
)
from plcbridge.simulators.modbus import ModbusSimulator
from plcbridge.simulators.program import SimulatedPlc

READY = int(StatusBit.READY)
VALID = int(StatusBit.READY | StatusBit.RESULT_VALID)


def _plc(**kw: object) -> SimulatedPlc:
    return SimulatedPlc(ProgramSettings(**kw))


def _bring_up(plc: SimulatedPlc, t: float = 0.0, hb: int = 1) -> float:
    """Bridge says READY; returns the time the first trigger is raised."""
    plc.on_outputs(Outputs(heartbeat=hb, status=READY), t)
    plc.tick(t)
    first = t + 1.0 / plc.settings.trigger_hz
    plc.tick(first)
    return first


def _answer(plc: SimulatedPlc, t: float, hb: int, code: ResultCode = ResultCode.PASS, **kw: int) -> None:
    i = plc.inputs
    fields = dict(heartbeat=hb, status=VALID, result_seq=i.trigger_seq, result_code=code, part_id=i.part_id)
    fields.update(kw)
    plc.on_outputs(Outputs(**fields), t)


# --------------------------------------------------------------------------- program


def test_no_trigger_until_the_bridge_is_ready() -> None:
    plc = _plc(trigger_hz=20, first_part_id=500)
    for ms in range(0, 1000, 10):
        plc.tick(ms / 1000)
    assert plc.triggers_sent == 0
    plc.on_outputs(Outputs(heartbeat=1, status=0), 1.0)  # alive but not READY
    plc.tick(1.5)
    assert plc.triggers_sent == 0
    first = _bring_up(plc, 1.5, hb=2)
    assert plc.inputs == Inputs(trigger_seq=1, part_id=500, result_ack_seq=0)
    assert first == pytest.approx(1.55)


def test_matching_result_is_acked_counted_once_with_exact_latency() -> None:
    plc = _plc(trigger_hz=10)
    t0 = _bring_up(plc)
    _answer(plc, t0 + 0.0123, hb=2)
    assert plc.inputs.result_ack_seq == 1
    _answer(plc, t0 + 0.0223, hb=3)  # the bridge re-writes the held result: not a new one
    s = plc.summary()
    assert s["results"] == {"PASS": 1}
    assert s["latency_ms"]["count"] == 1 and s["latency_ms"]["max"] == pytest.approx(12.3)
    assert s["protocol_errors"] == 0
    plc.tick(t0 + 0.1)
    assert plc.inputs.trigger_seq == 2 and plc.inputs.part_id == 2


def test_wrong_part_id_echo_is_a_protocol_error() -> None:
    plc = _plc()
    t0 = _bring_up(plc)
    _answer(plc, t0 + 0.01, hb=2, part_id=999)
    s = plc.summary()
    assert s["protocol_errors_by_kind"] == {"part_id_mismatch": 1}
    assert "999" in s["recent_protocol_errors"][0]
    assert s["results"] == {"PASS": 1}  # the verdict still counts; the echo is what is wrong


def test_heartbeat_stall_raises_exactly_one_alarm_per_episode() -> None:
    plc = _plc(mode="free-run", watchdog_ms=100)
    t, hb = 0.0, 0

    def beat(ms: int) -> None:
        nonlocal t, hb
        for _ in range(ms // 10):
            hb = (hb + 1) & 0xFFFF
            plc.on_outputs(Outputs(heartbeat=hb, status=READY), t)
            for _ in range(10):
                t += 0.001
                plc.tick(t)

    def stall(ms: int) -> None:
        nonlocal t
        for _ in range(ms):
            t += 0.001
            plc.tick(t)

    beat(200)
    stall(500)
    assert plc.heartbeat_alarms == 1
    assert plc.summary()["bridge_state"] == "HEARTBEAT-LOST"
    beat(200)
    assert plc.summary()["bridge_state"] == "ready"
    stall(300)
    beat(50)
    s = plc.summary()
    assert s["heartbeat_alarms"] == 2
    assert s["heartbeat_longest_gap_ms"] == pytest.approx(510, abs=2)


def test_announced_shutdown_is_not_a_heartbeat_stall() -> None:
    plc = _plc(watchdog_ms=50)
    plc.on_outputs(Outputs(heartbeat=1, status=READY), 0.0)
    plc.on_outputs(Outputs(heartbeat=2, status=0, fault_code=FaultCode.SHUTTING_DOWN), 0.01)
    for ms in range(10, 1000):
        plc.tick(ms / 1000)
    s = plc.summary()
    assert s["heartbeat_alarms"] == 0 and s["bridge_state"] == "shut-down" and s["triggers_sent"] == 0
    plc.on_outputs(Outputs(heartbeat=0, status=READY), 1.0)  # restarted bridge: watchdog re-armed
    plc.tick(1.2)
    assert plc.heartbeat_alarms == 1
    assert plc.summary()["heartbeat_longest_gap_ms"] == pytest.approx(200)


def test_unanswered_trigger_is_missing_and_a_late_answer_is_a_protocol_error() -> None:
    plc = _plc(result_timeout_ms=300, watchdog_ms=10_000)
    t0 = _bring_up(plc)
    plc.tick(t0 + 0.299)
    assert plc.missing == 0
    plc.tick(t0 + 0.301)
    assert plc.missing == 1
    assert plc.inputs.trigger_seq == 2  # the line moved on to the next part
    _answer(plc, t0 + 0.35, hb=2, result_seq=1, part_id=1)
    s = plc.summary()
    assert s["protocol_errors_by_kind"] == {"late_result": 1}
    assert s["results"] == {} and s["outstanding"] == 1


def test_overrun_can_be_provoked_and_skipped_triggers_are_counted() -> None:
    plc = _plc(trigger_hz=100, max_outstanding=3, watchdog_ms=10_000)
    t = _bring_up(plc)
    for _ in range(5):
        t += 0.01
        plc.tick(t)
    assert plc.triggers_sent == 3  # capped by max_outstanding
    o = dict(heartbeat=2, status=VALID, result_code=ResultCode.FAILSAFE)
    plc.on_outputs(Outputs(result_seq=1, part_id=1, fault_code=FaultCode.TRIGGER_OVERRUN, **o), t)
    # seq 2 never answered. (Had seq 3's answer been a TRIGGER_OVERRUN, it would answer seq 2
    # too, under the bridge's flood rule: "collapsed", see test_sim_scenarios.py.)
    plc.on_outputs(Outputs(result_seq=3, part_id=3, fault_code=FaultCode.INFERENCE_TIMEOUT, **o), t)
    s = plc.summary()
    assert s["results"] == {"FAILSAFE": 2}
    assert s["failsafe_faults"] == {"INFERENCE_TIMEOUT": 1, "TRIGGER_OVERRUN": 1}
    assert s["skipped"] == 1 and s["collapsed"] == 0
    assert s["protocol_errors_by_kind"] == {"out_of_order": 1}
    assert s["triggers_sent"] == sum(s["results"].values()) + s["missing"] + s["skipped"] + s["outstanding"]
    assert s["unaccounted"] == 0


def test_result_for_a_seq_never_triggered_and_bad_codes() -> None:
    plc = _plc()
    t0 = _bring_up(plc)
    plc.on_outputs(Outputs(heartbeat=2, status=VALID, result_seq=77, result_code=ResultCode.PASS), t0)
    _answer(plc, t0 + 0.01, hb=3, code=ResultCode.FAILSAFE)  # fault_code NONE explains nothing
    s = plc.summary()
    assert s["protocol_errors_by_kind"] == {"failsafe_without_fault": 1, "unexpected_seq": 1}
    assert plc.inputs.result_ack_seq == 1


def test_trigger_seq_wraps_65535_to_1() -> None:
    plc = _plc(trigger_hz=1000, watchdog_ms=10_000)
    t = _bring_up(plc)
    hb = 1
    while plc.triggers_sent < 65537:
        hb = (hb + 1) & 0xFFFF
        _answer(plc, t, hb=hb)
        t += 0.001
        plc.tick(t)
    assert plc.inputs.trigger_seq == 2  # 65537 triggers: 1, ..., 65535, 1, 2 (0 is idle, never a trigger)
    s = plc.summary()
    assert s["results"] == {"PASS": 65536} and s["outstanding"] == 1 and s["protocol_errors"] == 0


def test_free_run_counts_each_new_result_including_a_result_turning_stale() -> None:
    plc = _plc(mode="free-run")
    plc.on_outputs(Outputs(heartbeat=1, status=READY), 0.0)  # no decision yet
    for hb, seq in enumerate([5, 5, 6, 7, 7], start=2):
        plc.on_outputs(Outputs(heartbeat=hb, status=VALID, result_seq=seq, result_code=ResultCode.FAIL), hb / 100)
    stale = Outputs(heartbeat=9, status=READY, result_seq=7, result_code=ResultCode.FAILSAFE, fault_code=FaultCode.STALE_RESULT)
    plc.on_outputs(stale, 0.1)
    plc.tick(0.2)
    s = plc.summary()
    assert s["results"] == {"FAIL": 3, "FAILSAFE": 1}
    assert s["failsafe_faults"] == {"STALE_RESULT": 1}
    assert s["triggers_sent"] == 0 and plc.inputs == Inputs()


def test_summary_is_json_and_status_line_is_one_line() -> None:
    plc = _plc()
    t0 = _bring_up(plc)
    _answer(plc, t0 + 0.005, hb=2, code=ResultCode.FAIL)
    s = json.loads(json.dumps(plc.summary()))
    for key in ("mode", "duration_s", "triggers_sent", "results", "failsafe_faults", "missing", "skipped",
                "protocol_errors", "latency_ms", "heartbeat_alarms", "heartbeat_longest_gap_ms", "writes_seen"):
        assert key in s
    assert set(s["latency_ms"]) == {"count", "p50", "p95", "p99", "max"}
    line = plc.status_line()
    assert "\n" not in line and "fail=1" in line
    assert "trigger->result=5.0ms" in line and " lat=" not in line  # says what the latency measures


# --------------------------------------------------------------------------- device file


def test_bundled_default_device_loads_and_overrides_apply() -> None:
    d = load_device()
    assert d == DeviceSettings()  # the file documents the defaults; keep them in step
    d = load_device("default", {"program.mode": "free-run", "modbus.port": 0, "program.trigger_hz": None})
    assert d.program.mode == "free-run" and d.modbus.port == 0 and d.program.trigger_hz == 10.0


def test_device_file_errors_name_the_file_and_field(tmp_path: Path) -> None:
    f = tmp_path / "station.toml"
    f.write_text("[program]\ntrigger_hz = 5\ntriger_hz = 5\n")
    with pytest.raises(DeviceFileError, match=r"station\.toml.*\n.*program\.triger_hz"):
        load_device(f)
    f.write_text("[modbus]\noutputs_base = 95\n")
    with pytest.raises(DeviceFileError, match="overlaps input block"):
        load_device(f)
    with pytest.raises(DeviceFileError, match=r"program\.trigger_hz.*set on the command line"):
        parse_device({}, "x.toml", {"program.trigger_hz": -1})
    with pytest.raises(DeviceFileError, match="cannot read"):
        load_device(tmp_path / "nope.toml")
    f.write_text("[network]\nreply_delay_ms = -3\n[modbus]\nfc23 = 'maybe'\n")
    with pytest.raises(DeviceFileError, match=r"network\.reply_delay_ms(.|\n)*modbus\.fc23"):
        load_device(f)


# --------------------------------------------------------------------------- Modbus loopback


class Bridge:
    """A pymodbus client doing what the bridge does: write the output block, read inputs."""

    def __init__(self, sim: ModbusSimulator) -> None:
        m = sim.settings.modbus
        self.map: RegisterMap = m.register_map
        self.unit = m.device_id
        self.client = ModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0)
        assert self.client.connect()
        self.hb = 0

    def write(self, **fields: int) -> None:
        self.hb = (self.hb + 1) & 0xFFFF
        o = Outputs(heartbeat=self.hb, **fields)
        rr = self.client.write_registers(self.map.outputs_base, self.map.encode_outputs(o), device_id=self.unit)
        assert not rr.isError(), rr

    def read(self) -> Inputs:
        rr = self.client.read_holding_registers(self.map.inputs_base, count=self.map.inputs_count, device_id=self.unit)
        assert not rr.isError(), rr
        return self.map.decode_inputs(rr.registers)

    def wait_trigger(self, after: int = 0, timeout: float = 2.0) -> Inputs:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.write(status=READY)
            i = self.read()
            if i.trigger_seq != after:
                return i
            time.sleep(0.005)
        raise AssertionError("no trigger")


def _settings(**program: object) -> DeviceSettings:
    return load_device(None, {"modbus.port": 0, "modbus.host": "127.0.0.1", **{f"program.{k}": v for k, v in program.items()}})


@pytest.fixture
def sim(request: pytest.FixtureRequest) -> Iterator[ModbusSimulator]:
    s = ModbusSimulator(_settings(**getattr(request, "param", {}))).start()
    try:
        yield s
    finally:
        s.stop()
    assert not s.running and s.error is None


@pytest.fixture
def bridge(sim: ModbusSimulator) -> Iterator[Bridge]:
    b = Bridge(sim)
    yield b
    b.client.close()


@pytest.mark.parametrize("sim", [{"trigger_hz": 50, "watchdog_ms": 1000}], indirect=True)
def test_loopback_trigger_is_answered_acked_and_timed(sim: ModbusSimulator, bridge: Bridge) -> None:
    assert sim.port > 0
    i = bridge.wait_trigger()
    assert i.trigger_seq == 1 and i.part_id == 1 and i.result_ack_seq == 0
    bridge.write(status=VALID, result_seq=i.trigger_seq, result_code=ResultCode.PASS, part_id=i.part_id)
    assert bridge.read().result_ack_seq == 1  # the ack is presented by the very next read
    s = sim.summary()
    assert s["results"] == {"PASS": 1} and s["protocol_errors"] == 0
    assert 0 < s["latency_ms"]["max"] < 1000
    assert bridge.wait_trigger(after=1).part_id == 2


@pytest.mark.parametrize("sim", [{"trigger_hz": 50, "watchdog_ms": 1000}], indirect=True)
def test_loopback_wrong_part_id_counts_a_protocol_error(sim: ModbusSimulator, bridge: Bridge) -> None:
    i = bridge.wait_trigger()
    bridge.write(status=VALID, result_seq=i.trigger_seq, result_code=ResultCode.FAIL, part_id=i.part_id + 1)
    s = sim.summary()
    assert s["protocol_errors_by_kind"] == {"part_id_mismatch": 1} and s["results"] == {"FAIL": 1}


@pytest.mark.parametrize("sim", [{"mode": "free-run", "watchdog_ms": 100}], indirect=True)
def test_loopback_stopped_heartbeat_raises_one_alarm_per_stall(sim: ModbusSimulator, bridge: Bridge) -> None:
    def beat(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            bridge.write(status=READY)
            time.sleep(0.005)

    beat(0.15)
    assert sim.summary()["heartbeat_alarms"] == 0
    time.sleep(0.35)  # > 3 watchdog periods: still one alarm, not one per tick
    assert sim.summary()["heartbeat_alarms"] == 1
    beat(0.15)
    time.sleep(0.35)
    beat(0.05)
    s = sim.summary()
    assert s["heartbeat_alarms"] == 2 and s["heartbeat_longest_gap_ms"] >= 340


def test_loopback_bad_requests_are_refused_and_counted_not_fatal(sim: ModbusSimulator, bridge: Bridge) -> None:
    c, rmap = bridge.client, bridge.map
    assert c.write_registers(rmap.inputs_base, [1], device_id=1).isError()  # the PLC's own inputs
    assert c.write_registers(rmap.outputs_base + rmap.outputs_count, [1], device_id=1).isError()  # gap
    assert c.write_registers(60000, [1], device_id=1).isError()  # outside anything mapped
    assert c.write_coil(0, True, device_id=1).isError()
    assert c.read_holding_registers(rmap.inputs_base, count=4, device_id=9).isError()
    bridge.write(status=READY)  # still serving
    assert bridge.read() == Inputs()
    s = sim.summary()
    assert s["protocol_errors_by_kind"] == {
        "bad_function": 1, "modbus_exception": 1, "write_outside_outputs": 2, "wrong_device_id": 1,
    }
    assert s["writes_seen"] == 1


@pytest.mark.parametrize("sim", [{"trigger_hz": 50, "watchdog_ms": 1000}], indirect=True)
def test_fc23_writes_the_block_and_its_read_sees_the_ack_of_that_write(sim: ModbusSimulator, bridge: Bridge) -> None:
    c, rmap = bridge.client, bridge.map
    i = bridge.wait_trigger()
    writes = sim.summary()["writes_seen"]
    answer = Outputs(heartbeat=bridge.hb + 1, status=VALID, result_seq=i.trigger_seq, result_code=ResultCode.PASS,
                     score=4321, part_id=i.part_id)
    rr = c.readwrite_registers(read_address=rmap.inputs_base, read_count=rmap.inputs_count,
                               write_address=rmap.outputs_base, values=rmap.encode_outputs(answer), device_id=1)
    assert not rr.isError(), rr
    assert rmap.decode_inputs(rr.registers).result_ack_seq == i.trigger_seq  # this very write's ack
    s = sim.summary()
    assert s["writes_seen"] == writes + 1  # one transaction, one whole block for the program
    assert s["results"] == {"PASS": 1} and s["protocol_errors"] == 0
    rr = c.read_holding_registers(rmap.outputs_base, count=rmap.outputs_count, device_id=1)
    assert rmap.decode_outputs(rr.registers) == answer
    # A read part outside the mapped span is refused before the write part is applied.
    rr = c.readwrite_registers(read_address=60000, read_count=4, write_address=rmap.outputs_base,
                               values=rmap.encode_outputs(Outputs(heartbeat=1)), device_id=1)
    assert rr.isError() and rr.exception_code == 2
    assert sim.summary()["writes_seen"] == writes + 1
    assert sim.summary()["protocol_errors_by_kind"] == {"modbus_exception": 1}


def test_fc23_can_be_switched_off_like_on_plcs_without_it() -> None:
    sim = ModbusSimulator(load_device(None, {"modbus.port": 0, "modbus.host": "127.0.0.1", "modbus.fc23": False})).start()
    try:
        b = Bridge(sim)
        rr = b.client.readwrite_registers(read_address=b.map.inputs_base, read_count=b.map.inputs_count,
                                          write_address=b.map.outputs_base,
                                          values=b.map.encode_outputs(Outputs(heartbeat=1)), device_id=1)
        assert rr.isError() and rr.exception_code == 1  # ILLEGAL_FUNCTION
        s = sim.summary()
        assert s["writes_seen"] == 0
        assert s["protocol_errors_by_kind"] == {"unsupported_function": 1}, s["recent_protocol_errors"]
        b.write(status=READY)  # FC16 + FC3, the fallback, still work
        assert b.read() == Inputs()
        b.client.close()
    finally:
        sim.stop()
    assert sim.summary()["protocol_errors"] == 1 and sim.summary()["writes_seen"] == 1


def test_requests_arriving_together_are_each_answered_in_order(sim: ModbusSimulator) -> None:
    """pymodbus 3.16's own handler answers only the first of requests sent in one segment."""
    base = sim.settings.modbus.inputs_base
    frames = [struct.pack(">HHHBBHH", tid, 0, 6, 1, 3, base, tid % 4 + 1) for tid in range(1, 31)]
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as s:
        s.sendall(b"".join(frames[:20]) + frames[20][:5])  # the last one split across segments
        time.sleep(0.05)
        s.sendall(frames[20][5:] + b"".join(frames[21:]))
        buf = b""
        while len(buf) < sum(9 + 2 * (tid % 4 + 1) for tid in range(1, 31)):
            chunk = s.recv(4096)
            assert chunk, "closed"
            buf += chunk
    tids = []
    while buf:
        tid, _, length = struct.unpack(">HHH", buf[:6])
        assert buf[7] == 3 and buf[8] == 2 * (tid % 4 + 1), buf[:9]
        tids.append(tid)
        buf = buf[6 + length :]
    assert tids == list(range(1, 31))
    assert sim.summary()["protocol_errors"] == 0


def test_port_in_use_is_reported_by_start(sim: ModbusSimulator) -> None:
    settings = load_device(None, {"modbus.port": sim.port})
    with pytest.raises(RuntimeError):
        ModbusSimulator(settings).start()


# --------------------------------------------------------------------------- CLI


def test_cli_prints_listening_then_json_summary_on_sigterm(tmp_path: Path) -> None:
    out_file = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "plcbridge.simulators.cli", "modbus", "--port", "0", "--host", "127.0.0.1",
           "--trigger-hz", "20", "--summary-json", str(out_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        assert client.connect()
        regs = RegisterMap().encode_outputs(Outputs(heartbeat=1, status=READY))
        assert not client.write_registers(0, regs, device_id=1).isError()
        client.close()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["writes_seen"] == 1 and summary["mode"] == "triggered"
    assert json.loads(out_file.read_text()) == summary


def test_cli_rejects_a_bad_flag_value_naming_the_field() -> None:
    proc = subprocess.run([sys.executable, "-m", "plcbridge.simulators.cli", "modbus", "--trigger-hz", "0"],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2
    assert "program.trigger_hz" in proc.stderr and proc.stdout == ""
