"""The simulated PLC's handshake accounting (no crying wolf) and the scenarios a commissioning
engineer rehearses: early first trigger, a line that waits for TRIGGER_READY, a PLC restart, a
stuck trigger edge, triggers faster than the camera, the 65535 -> 1 wrap. The program on a fake
clock (SimulatedPlc takes time as an argument), then a few through the Modbus front-end on
127.0.0.1, then the CLI flags."""

from __future__ import annotations

import argparse
import json
from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise

import pytest
from helpers import wait_for
from pymodbus.client import ModbusTcpClient

from plcbridge.contract import (
    FaultCode,
    Inputs,
    Outputs,
    ResultCode,
    StatusBit,
    next_seq,
    seq_delta,
)
from plcbridge.simulators.cli import _overrides, add_arguments
from plcbridge.simulators.device import DeviceFileError, ProgramSettings, load_device
from plcbridge.simulators.program import SimulatedPlc
from plcbridge.simulators.trace import TracingPlc

READY = int(StatusBit.READY)
TREADY = int(StatusBit.READY | StatusBit.TRIGGER_READY)
VALID = int(StatusBit.READY | StatusBit.TRIGGER_READY | StatusBit.RESULT_VALID)
FAILSAFE = VALID | int(StatusBit.FAILSAFE_ACTIVE)
ENDS = ("collapsed", "missing", "skipped", "lost_in_restart", "outstanding")


def _plc(**kw: object) -> SimulatedPlc:
    kw.setdefault("watchdog_ms", 60_000)
    return SimulatedPlc(ProgramSettings(**kw))


class Clock:
    """A bridge writing on a fake clock: each write bumps the heartbeat."""

    def __init__(self, plc: SimulatedPlc, t: float = 0.0) -> None:
        self.plc, self.t, self.hb = plc, t, 0

    def write(self, status: int = TREADY, **fields: int) -> None:
        self.hb = (self.hb + 1) & 0xFFFF
        self.plc.on_outputs(Outputs(heartbeat=self.hb, status=status, **fields), self.t)

    def run(self, seconds: float, step: float = 0.001) -> None:
        for _ in range(round(seconds / step)):
            self.t += step
            self.plc.tick(self.t)

    def answer(self, seq: int, code: ResultCode = ResultCode.PASS, part_id: int | None = None,
               status: int = VALID, fault: FaultCode = FaultCode.NONE) -> None:
        pid = self.plc.pending[seq].part_id if part_id is None else part_id
        self.write(status=status, result_seq=seq, result_code=code, part_id=pid, fault_code=fault)

    def overrun(self, seq: int, part_id: int = 0) -> None:
        self.answer(seq, ResultCode.FAILSAFE, part_id, FAILSAFE, FaultCode.TRIGGER_OVERRUN)


def _closed(s: dict) -> bool:
    return s["triggers_sent"] == sum(s["results"].values()) + sum(s[k] for k in ENDS) and s["unaccounted"] == 0


# --------------------------------------------------------------------------- accounting


def test_accounting_adds_up_across_every_way_a_trigger_can_end() -> None:
    plc = _plc(trigger_hz=100, max_outstanding=4, result_timeout_ms=300)
    c = Clock(plc)
    c.write()
    c.run(0.05)  # triggers 1..4, then capped
    assert plc.inputs.trigger_seq == 4
    c.answer(1)  # a verdict
    c.overrun(3)  # answers 2 too: collapsed
    c.answer(4, ResultCode.FAILSAFE, status=FAILSAFE, fault=FaultCode.INFERENCE_TIMEOUT)
    c.run(0.02)  # 5 and 6 raised
    c.answer(6)  # jumps over 5: skipped, out_of_order
    c.run(0.05)  # 7..10 raised
    c.run(0.3)  # and left unanswered: missing after result_timeout_ms; 11.. raised meanwhile
    s = plc.summary()
    assert s["missing"] >= 4 and s["outstanding"] >= 1
    plc.restart(c.t)  # the outstanding ones are lost in the restart
    s = plc.summary()
    assert s["results"] == {"FAILSAFE": 2, "PASS": 2}
    assert (s["collapsed"], s["skipped"], s["outstanding"]) == (1, 1, 0)
    assert s["lost_in_restart"] >= 1
    assert s["protocol_errors_by_kind"] == {"out_of_order": 1}
    assert _closed(s), s


def test_a_failsafe_written_as_fail_is_counted_as_a_failsafe_under_its_fault() -> None:
    plc = _plc(trigger_hz=100, max_outstanding=4)
    c = Clock(plc)
    c.write()
    c.run(0.05)
    # failsafe.result_code = "FAIL": recognised by FAILSAFE_ACTIVE and fault_code, not by result_code.
    c.answer(1, ResultCode.FAIL, status=FAILSAFE, fault=FaultCode.NO_FRAME)
    c.answer(2, ResultCode.FAIL)  # a real FAIL verdict
    c.answer(3, ResultCode.FAILSAFE, status=FAILSAFE, fault=FaultCode.CAMERA_FAULT)
    s = plc.summary()
    assert s["results"] == {"FAIL": 1, "FAILSAFE": 2}
    assert s["failsafe_faults"] == {"CAMERA_FAULT": 1, "NO_FRAME": 1}
    assert s["failsafe_result_codes"] == {"FAIL": 1, "FAILSAFE": 1}
    assert "FAILSAFE_ACTIVE" in s["failsafe_counting"]
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]
    assert "fail=1" in plc.status_line() and "failsafe=2" in plc.status_line()
    c.answer(4, ResultCode.PASS, status=FAILSAFE, fault=FaultCode.NO_FRAME)  # a fail-safe that passes the part
    assert plc.summary()["protocol_errors_by_kind"] == {"failsafe_pass": 1}
    assert _closed(plc.summary())


def test_an_overrun_answer_with_part_id_0_is_not_a_part_id_mismatch() -> None:
    plc = _plc(trigger_hz=100, max_outstanding=3)
    c = Clock(plc)
    c.write()
    c.run(0.04)
    c.overrun(1)  # a skipped value: the bridge never saw its part id
    c.overrun(2, part_id=plc.pending[2].part_id)  # queue full: it did see this one
    assert plc.summary()["protocol_errors"] == 0, plc.summary()["recent_protocol_errors"]
    c.overrun(3, part_id=999)  # a wrong echo is still wrong
    s = plc.summary()
    assert s["protocol_errors_by_kind"] == {"part_id_mismatch": 1}
    assert s["failsafe_faults"] == {"TRIGGER_OVERRUN": 3} and s["results"] == {"FAILSAFE": 3}


def test_an_overrun_answer_collapses_the_older_outstanding_triggers() -> None:
    plc = _plc(trigger_hz=100, max_outstanding=6)
    c = Clock(plc)
    c.write()
    c.run(0.07)
    assert plc.inputs.trigger_seq == 6
    c.answer(1)
    c.overrun(4)  # the flood rule: one answer for the run 2, 3, 4
    s = plc.summary()
    assert s["collapsed"] == 2 and s["skipped"] == 0 and s["protocol_errors"] == 0
    assert s["results"] == {"FAILSAFE": 1, "PASS": 1} and s["outstanding"] == 2
    assert plc.inputs.result_ack_seq == 4
    c.answer(6)  # a verdict jumping over 5 stays an out_of_order error
    s = plc.summary()
    assert s["skipped"] == 1 and s["protocol_errors_by_kind"] == {"out_of_order": 1}
    c.answer(2, part_id=2)  # an answer for a collapsed trigger afterwards is late
    assert plc.summary()["protocol_errors_by_kind"] == {"late_result": 1, "out_of_order": 1}
    assert _closed(plc.summary())


def test_results_with_no_outstanding_trigger_ask_whether_the_bridge_is_in_free_run() -> None:
    plc = _plc(trigger_hz=10)
    c = Clock(plc)
    c.write(status=READY)  # a free-run bridge: READY, never TRIGGER_READY
    for seq in (41, 42):
        c.write(status=READY | int(StatusBit.RESULT_VALID), result_seq=seq, result_code=ResultCode.PASS)
    s = plc.summary()
    assert s["protocol_errors_by_kind"] == {"unexpected_seq": 2}
    assert all("is the bridge in free-run mode?" in e for e in s["recent_protocol_errors"])
    c.run(0.15)  # the line triggers anyway (it is READY): still the same question
    assert plc.triggers_sent == 1
    c.write(status=READY | int(StatusBit.RESULT_VALID), result_seq=43, result_code=ResultCode.PASS)
    assert "is the bridge in free-run mode?" in plc.summary()["recent_protocol_errors"][-1]


def test_the_shutdown_block_answers_the_oldest_pending_trigger() -> None:
    plc = _plc(trigger_hz=100, max_outstanding=2)
    c = Clock(plc)
    c.write()
    c.run(0.03)
    c.answer(1)
    part = plc.pending[2].part_id
    # The bridge's last block: READY cleared, FAILSAFE_ACTIVE without RESULT_VALID, SHUTTING_DOWN.
    c.write(status=int(StatusBit.FAILSAFE_ACTIVE), result_seq=2, result_code=ResultCode.FAIL,
            fault_code=FaultCode.SHUTTING_DOWN, part_id=part)
    s = plc.summary()
    assert s["results"] == {"FAILSAFE": 1, "PASS": 1} and s["failsafe_faults"] == {"SHUTTING_DOWN": 1}
    assert s["bridge_state"] == "shut-down" and s["protocol_errors"] == 0 and s["outstanding"] == 0
    # The old bridge's last block repeats the last result's seq with part_id 0: not news.
    c.write(status=int(StatusBit.FAILSAFE_ACTIVE), result_seq=2, result_code=ResultCode.FAILSAFE,
            fault_code=FaultCode.SHUTTING_DOWN)
    assert plc.summary()["results"] == {"FAILSAFE": 1, "PASS": 1} and plc.summary()["protocol_errors"] == 0


def test_the_trace_gives_each_answered_trigger_its_trigger_to_result(tmp_path) -> None:
    trace = tmp_path / "trace.jsonl"
    plc = TracingPlc(ProgramSettings(mode="triggered", trigger_hz=100, max_outstanding=4, watchdog_ms=60_000), trace)
    c = Clock(plc)
    c.write()
    c.run(0.025)  # triggers 1 and 2 raised
    raised = {seq: trig.t for seq, trig in plc.pending.items()}
    part_1 = plc.pending[1].part_id
    assert sorted(raised) == [1, 2]
    c.t += 0.0042
    c.answer(1)
    c.write(status=VALID, result_seq=1, result_code=ResultCode.PASS, part_id=part_1)  # the same answer again
    c.t += 0.0031
    c.answer(2)
    plc.close()
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    answers = [ln for ln in lines if "trigger_to_result_ms" in ln]
    assert [a["result_seq"] for a in answers] == [1, 2]  # the repeated block of seq 1 is no new line
    for a in answers:
        assert a["trigger_to_result_ms"] == pytest.approx((a["t"] - raised[a["result_seq"]]) * 1000, abs=0.002)
    assert answers[0]["trigger_to_result_ms"] > 4.0
    assert not any("trigger_to_result_ms" in ln for ln in lines if ln["result_seq"] == 0)
    assert [round(v, 3) for v in plc.latencies_ms] == [a["trigger_to_result_ms"] for a in answers]


# --------------------------------------------------------------------------- scenarios


def test_early_first_trigger_fires_as_soon_as_trigger_ready_is_seen() -> None:
    plc = _plc(trigger_hz=10, early_first_trigger=True)
    c = Clock(plc)
    c.write(status=READY)  # READY, not yet TRIGGER_READY: nothing
    c.run(0.02)
    assert plc.triggers_sent == 0
    c.write(status=TREADY)
    assert plc.inputs.trigger_seq == 1 and plc.triggers_sent == 1  # within that very write
    assert plc.pending[1].t == pytest.approx(0.02)
    # The default waits one trigger period after READY.
    plain = _plc(trigger_hz=10)
    p = Clock(plain)
    p.write(status=TREADY)
    p.run(0.099)
    assert plain.triggers_sent == 0
    p.run(0.002)
    assert plain.triggers_sent == 1


def test_early_first_trigger_without_trigger_ready_falls_back_to_one_period() -> None:
    plc = _plc(trigger_hz=10, early_first_trigger=True)
    c = Clock(plc)
    c.write(status=READY)
    c.run(0.099)
    assert plc.triggers_sent == 0
    c.run(0.002)
    assert plc.triggers_sent == 1


def test_wait_trigger_ready_holds_triggers_while_the_bit_is_clear() -> None:
    plc = _plc(trigger_hz=100, max_outstanding=5, wait_trigger_ready=True)
    c = Clock(plc)
    c.write(status=READY)
    c.run(0.5)
    assert plc.triggers_sent == 0
    c.write(status=TREADY)
    c.run(0.001)
    assert plc.triggers_sent == 1  # the held part goes at once
    c.run(0.0205)
    assert plc.triggers_sent == 3  # then at the line's rate: +10 ms, +20 ms
    c.write(status=READY)  # queue full on the bridge's side: the bit clears
    c.run(0.2)
    assert plc.triggers_sent == 3
    c.write(status=TREADY)
    c.run(0.001)
    assert plc.triggers_sent == 4
    c.run(0.005)
    assert plc.triggers_sent == 4  # no burst to catch up
    # Without wait_trigger_ready the line does not wait for the bit.
    plain = _plc(trigger_hz=100, max_outstanding=5)
    p = Clock(plain)
    p.write(status=READY)
    p.run(0.5)
    assert plain.triggers_sent == 5


def test_restart_resets_to_0_the_next_trigger_is_1_and_outstanding_are_lost_in_restart() -> None:
    plc = _plc(trigger_hz=100, max_outstanding=3, restart_after_s=0.5, first_part_id=100)
    c = Clock(plc)
    c.write()
    c.run(0.015)
    c.answer(1)
    c.run(0.03)
    assert plc.inputs.trigger_seq == 4 and plc.summary()["outstanding"] == 3
    c.run(0.45)
    assert plc.restarts == 0
    c.run(0.01)  # 0.5 s after the bridge's first write
    s = plc.summary()
    assert plc.inputs == Inputs(trigger_seq=0, part_id=0, result_ack_seq=0)
    assert s["restarts"] == 1 and s["lost_in_restart"] == 3 and s["missing"] == 0 and s["outstanding"] == 0
    assert s["bridge_state"] == "waiting"
    c.run(0.5)  # no trigger until the bridge has written READY again
    assert plc.inputs.trigger_seq == 0
    c.answer(3, part_id=102)  # the bridge still answers a trigger the PLC forgot: no alarm
    c.run(0.5)  # one block after a restart proves nothing: it may be a killed connection's last request
    assert plc.inputs.trigger_seq == 0
    c.answer(3, part_id=102)  # its heartbeat has changed: the bridge is alive
    c.run(0.0115)
    assert plc.inputs == Inputs(trigger_seq=1, part_id=104, result_ack_seq=3)  # part ids keep counting
    c.answer(1)
    c.run(5.0)  # once only
    s = plc.summary()
    assert s["restarts"] == 1 and s["answers_after_restart"] == 1
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]
    assert _closed(s), s
    # The runtime method, for tests: same reset, any time.
    assert plc.inputs.trigger_seq > 1
    plc.restart(c.t)
    assert plc.inputs == Inputs() and plc.restarts == 2


def test_restart_with_the_same_seq_coming_round_again_is_not_confused_with_the_old_one() -> None:
    plc = _plc(trigger_hz=100, max_outstanding=1)
    c = Clock(plc)
    c.write()
    c.run(0.011)
    c.answer(1)  # the bridge keeps presenting seq 1 (part 1) until its next result
    plc.restart(c.t)
    c.answer(1, part_id=1)  # held result: not news
    c.answer(1, part_id=1)  # a second block, heartbeat changed: the restarted PLC may trigger
    c.run(0.011)
    assert plc.inputs.trigger_seq == 1 and plc.inputs.part_id == 2
    c.answer(1, part_id=1)  # still the old one
    assert plc.summary()["outstanding"] == 1
    c.answer(1)  # the answer to the new trigger 1 (part 2)
    s = plc.summary()
    assert s["results"] == {"PASS": 2} and s["outstanding"] == 0 and s["protocol_errors"] == 0


@dataclass
class FakeBridge:
    """The bridge's triggered handshake, reduced to what the PLC sees: every 10 ms it writes the
    answer it presents, then reads the inputs (as FC23 does). A trigger_seq that moved by k > 1
    gets TRIGGER_OVERRUN (part_id 0) for each skipped value; each trigger read is decided at once
    (PASS). Answers wait in order; when more wait than the queue allows, a run of consecutive
    TRIGGER_OVERRUN answers is collapsed into one for its newest value (the flood rule)."""

    plc: SimulatedPlc
    capacity: int = 3
    last_seq: int | None = None
    waiting: deque = field(default_factory=deque)  # (seq, part_id, overrun)
    presenting: tuple[int, int, bool] | None = None
    hb: int = 0
    answers_written: int = 0

    def exchange(self, t: float) -> None:
        self.hb = (self.hb + 1) & 0xFFFF
        p = self.presenting
        if p is None:
            self.plc.on_outputs(Outputs(heartbeat=self.hb, status=TREADY), t)
        else:
            seq, part, overrun = p
            status, code, fault = (FAILSAFE, ResultCode.FAILSAFE, FaultCode.TRIGGER_OVERRUN) if overrun else (
                VALID, ResultCode.PASS, FaultCode.NONE)
            self.plc.on_outputs(Outputs(heartbeat=self.hb, status=status, result_seq=seq, result_code=code,
                                        fault_code=fault, part_id=part), t)
        self.read(self.plc.inputs)

    def read(self, i: Inputs) -> None:
        if (p := self.presenting) and i.result_ack_seq == p[0]:
            self.presenting = None
        if self.last_seq is None:
            self.last_seq = i.trigger_seq
        else:
            d = seq_delta(self.last_seq, i.trigger_seq)
            s = self.last_seq
            for k in range(d):
                s = next_seq(s)
                self.waiting.append((s, 0, True) if k < d - 1 else (s, i.part_id, False))
            if d:
                self.last_seq = i.trigger_seq
        if len(self.waiting) > self.capacity:
            collapsed: deque = deque()
            for a in self.waiting:
                if a[2] and collapsed and collapsed[-1][2]:
                    collapsed[-1] = a
                else:
                    collapsed.append(a)
            self.waiting = collapsed
        if self.presenting is None and self.waiting:
            self.presenting = self.waiting.popleft()
            self.answers_written += 1


def test_stuck_trigger_edge_raises_one_value_per_tick_then_stops() -> None:
    plc = _plc(trigger_hz=20, max_outstanding=1, stuck_trigger_after_s=0.2, stuck_trigger_for_s=0.05)
    bridge = FakeBridge(plc)
    t_ms, seen = 0, []
    while t_ms < 1000:
        t = t_ms / 1000
        if t_ms % 10 == 0:
            bridge.exchange(t)
        plc.tick(t)
        seen.append((t_ms, plc.inputs.trigger_seq))
        t_ms += 1
    s = plc.summary()
    in_window = [seq for ms, seq in seen if 200 <= ms < 250]
    assert s["stuck_edge_values"] == len(in_window) == 50
    assert all(seq_delta(a, b) == 1 for a, b in pairwise(in_window))  # one value per tick
    after = [seq for ms, seq in seen if ms >= 250]
    assert all(seq_delta(a, b) <= 1 for a, b in pairwise(after))  # normal triggering again
    assert after[-1] != after[0]  # ... and it did resume
    # Every value raised ends somewhere, without a single false alarm; the answers stay bounded
    # (the flood rule), far fewer than the values raised.
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]
    assert s["missing"] == 0 and s["skipped"] == 0 and s["collapsed"] > 20
    assert sum(s["results"].values()) == bridge.answers_written < s["stuck_edge_values"]
    assert _closed(s), s


def test_triggers_faster_than_the_camera_keep_max_outstanding_waiting() -> None:
    # 50 Hz line, camera at 20 fps: the bridge can answer one trigger every 50 ms.
    plc = _plc(trigger_hz=50, max_outstanding=4, result_timeout_ms=2000)
    c = Clock(plc)
    c.write()
    answered, most = 0, 0
    for ms in range(1, 2001):
        c.t = ms / 1000
        plc.tick(c.t)
        most = max(most, len(plc.pending))
        if ms % 50 == 0 and plc.pending:
            c.answer(next(iter(plc.pending)))
            answered += 1
    s = plc.summary()
    assert most == 4  # the line did not wait for answers, up to max_outstanding
    assert s["triggers_sent"] == answered + s["outstanding"] and s["outstanding"] >= 3
    assert s["results"] == {"PASS": answered} and s["protocol_errors"] == 0 and s["missing"] == 0
    assert s["latency_ms"]["max"] > 100  # parts waited for the camera
    assert s["scenario"]["trigger_hz"] == 50 and s["scenario"]["max_outstanding"] == 4


def test_trigger_seq_wraps_65535_to_1_never_0() -> None:
    # A stuck edge is the fastest way round the counter: one value per tick.
    plc = _plc(stuck_trigger_after_s=0.0, stuck_trigger_for_s=100.0, result_timeout_ms=5)
    c = Clock(plc)
    c.write(status=READY)
    values = []
    for _ in range(65536):
        c.t += 0.001
        plc.tick(c.t)
        values.append(plc.inputs.trigger_seq)
    assert values[0] == 1 and values[65533:] == [65534, 65535, 1]
    assert 0 not in values
    c.overrun(1)  # the new 1 is outstanding (the old 1 expired long ago), as are 65532..65535
    s = plc.summary()
    assert s["results"] == {"FAILSAFE": 1} and s["collapsed"] == 4 and s["outstanding"] == 0
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]
    assert _closed(s), s


# --------------------------------------------------------------------------- Modbus front-end


class Client:
    """A pymodbus client writing whole output blocks and reading the inputs, as the bridge does."""

    def __init__(self, sim) -> None:
        m = sim.settings.modbus
        self.map, self.unit = m.register_map, m.device_id
        self.client = ModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0)
        assert self.client.connect()
        self.hb = 0

    def write(self, **fields: int) -> None:
        self.hb = (self.hb + 1) & 0xFFFF
        rr = self.client.write_registers(self.map.outputs_base, self.map.encode_outputs(Outputs(heartbeat=self.hb, **fields)),
                                         device_id=self.unit)
        assert not rr.isError(), rr

    def read(self) -> Inputs:
        rr = self.client.read_holding_registers(self.map.inputs_base, count=self.map.inputs_count, device_id=self.unit)
        assert not rr.isError(), rr
        return self.map.decode_inputs(rr.registers)

    def trigger(self, seq: int) -> Inputs:
        def seen() -> Inputs | None:
            self.write(status=TREADY)
            i = self.read()
            return i if i.trigger_seq == seq else None
        return wait_for(seen, 3, f"trigger {seq}", poll=0.005)


def test_restart_through_modbus_drops_the_connection_and_starts_again_at_1(make_sim) -> None:
    sim = make_sim(trigger_hz=50, watchdog_ms=5000, device={"network.relay": True})
    first = Client(sim)
    i = first.trigger(1)
    first.write(status=VALID, result_seq=1, result_code=ResultCode.PASS, part_id=i.part_id)
    assert first.trigger(2).part_id == 2  # left unanswered
    sim.restart_plc()
    wait_for(lambda: sim.summary()["network"]["connections_dropped"] == 1, 5, "the restart to drop the client")
    first.client.close()
    again = Client(sim)
    assert again.read() == Inputs()  # all 0 until the bridge has written READY again
    assert again.trigger(1).part_id == 3
    again.client.close()
    s = sim.summary()
    assert s["restarts"] == 1 and s["lost_in_restart"] == 1 and s["missing"] == 0 and s["results"] == {"PASS": 1}
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]


def test_scheduled_restart_drops_the_connection_from_the_program_clock(make_sim) -> None:
    sim = make_sim(trigger_hz=10, watchdog_ms=5000, restart_after_s=0.2, device={"network.relay": True})
    c = Client(sim)
    c.write(status=READY)  # the first write starts the scenario clock
    wait_for(lambda: sim.summary()["restarts"] == 1, 3, "the scheduled restart")
    wait_for(lambda: sim.summary()["network"]["connections_dropped"] == 1, 3, "the restart to drop the client")
    c.client.close()
    assert sim.summary()["scenario"]["restart_after_s"] == 0.2


def test_a_partial_output_block_over_modbus_is_a_partial_block_error(make_sim) -> None:
    sim = make_sim(mode="free-run", watchdog_ms=60_000)
    c = Client(sim)
    assert not c.client.write_registers(c.map.outputs_base, [7, READY], device_id=c.unit).isError()
    assert not c.client.write_register(c.map.outputs_base, 8, device_id=c.unit).isError()
    c.write(status=READY)  # a whole block is fine
    c.client.close()
    s = sim.summary()
    assert s["protocol_errors_by_kind"] == {"partial_block": 2}, s["recent_protocol_errors"]
    assert s["writes_seen"] == 3  # stored and passed on, as the OPC UA and EtherNet/IP front-ends do
    assert sim.program.seen[0][1].heartbeat == 7 and sim.program.seen[1][1] == Outputs(heartbeat=8, status=READY)


# --------------------------------------------------------------------------- settings and CLI


def test_scenario_flags_reach_the_device_settings(tmp_path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--max-outstanding", "4", "--early-first-trigger", "--wait-trigger-ready",
                              "--restart-after-s", "30", "--stuck-trigger-after-s", "10", "--stuck-trigger-for-s", "0.5"])
    args.frontend = "modbus"
    p = load_device(None, _overrides(args)).program
    assert (p.max_outstanding, p.early_first_trigger, p.wait_trigger_ready) == (4, True, True)
    assert (p.restart_after_s, p.stuck_trigger_after_s, p.stuck_trigger_for_s) == (30.0, 10.0, 0.5)
    # No flag keeps the file's value; --no-... turns a file's true off.
    f = tmp_path / "line.toml"
    f.write_text("[program]\nearly_first_trigger = true\nrestart_after_s = 3\n")
    args = parser.parse_args(["--device", str(f)])
    args.frontend = "modbus"
    p = load_device(args.device, _overrides(args)).program
    assert p.early_first_trigger and p.restart_after_s == 3.0 and p.stuck_trigger_after_s is None
    args = parser.parse_args(["--device", str(f), "--no-early-first-trigger"])
    args.frontend = "modbus"
    assert not load_device(args.device, _overrides(args)).program.early_first_trigger
    with pytest.raises(DeviceFileError, match=r"program\.stuck_trigger_for_s.*set on the command line"):
        load_device(None, {"program.stuck_trigger_for_s": 0})
    assert "--stuck-trigger-for-s" in parser.format_help()
