"""The handshake rules, clock passed in: every trigger gets exactly one result, in order."""

from __future__ import annotations

from plcbridge.config import FailsafeSettings, TimingSettings
from plcbridge.contract import FaultCode, Inputs, ResultCode
from plcbridge.decision import Decision, Request
from plcbridge.inspection import FreeRunInspection, Health, TriggeredInspection
from plcbridge.journal import Journal
from plcbridge.metrics import Metrics

OK = Health(camera_ok=True, model_ok=True, model_version=3)


class Rig:
    def __init__(self, **timing):
        self.submitted: list[Request] = []
        self.phase: dict[int, str] = {}
        self.metrics = Metrics()
        self.journal = Journal(self.metrics, "test")
        self.ins = TriggeredInspection(TimingSettings(**timing), FailsafeSettings(), self.submitted.append,
                                       lambda r: self.phase.get(id(r)), self.journal, self.metrics)
        self.t = 0.0
        self.trigger_seq, self.ack = 0, 0
        self.ins.tick(self.t, OK)
        self.ins.on_inputs(Inputs(0, 0, 0), self.t)  # adopt

    def step(self, dt=0.01, health=OK, part_id=0):
        self.t += dt
        f = self.ins.tick(self.t, health)
        self.ins.written(f.token, self.t)
        self.ins.on_inputs(Inputs(self.trigger_seq & 0xFFFF, part_id, self.ack), self.t)
        return f

    def answer(self, req: Request, result=ResultCode.PASS, score=0.1):
        self.ins.on_decision(Decision(result, FaultCode.NONE, score, self.t, 3, 1, self.t - 0.005, None, 4.0, req))


def test_one_trigger_one_result_with_part_id_and_ack():
    r = Rig()
    r.trigger_seq = 1
    r.step(part_id=4242)
    assert len(r.submitted) == 1 and r.submitted[0].part_id == 4242
    assert r.step().valid is False  # not decided yet
    r.answer(r.submitted[0], ResultCode.FAIL, 0.9)
    f = r.step()
    assert (f.result_seq, f.result_code, f.part_id, f.score, f.valid, f.failsafe) == (1, ResultCode.FAIL, 4242, 9000, True, False)
    assert r.journal.results == {"FAIL": 1}


def test_skipped_trigger_values_each_get_overrun_in_order():
    r = Rig(result_hold_ms=20)
    r.trigger_seq = 3  # 1 and 2 were never seen on their own
    r.step(part_id=7)
    assert [q.trigger_seq for q in r.submitted] == [3]
    r.answer(r.submitted[0])
    seen = []
    for _ in range(12):
        f = r.step()
        if f.valid and (not seen or seen[-1][0] != f.result_seq):
            seen.append((f.result_seq, f.result_code, f.fault_code))
    assert seen == [(1, ResultCode.FAILSAFE, FaultCode.TRIGGER_OVERRUN), (2, ResultCode.FAILSAFE, FaultCode.TRIGGER_OVERRUN),
                    (3, ResultCode.PASS, FaultCode.NONE)]
    assert r.journal.failsafes == {"TRIGGER_OVERRUN": 2}


def test_full_queue_gives_overrun_and_never_drops():
    r = Rig(trigger_queue=1)  # capacity 2 undecided
    for _ in range(3):
        r.trigger_seq += 1
        r.step()
    assert [q.trigger_seq for q in r.submitted] == [1, 2]
    assert r.journal.failsafes == {"TRIGGER_OVERRUN": 1}
    assert r.ins.trigger_ready(OK) is False


def test_timeout_names_the_stage_that_was_late():
    r = Rig(result_timeout_ms=100)
    r.trigger_seq = 1
    r.step()
    r.phase[id(r.submitted[0])] = "judging"
    r.trigger_seq = 2
    r.step()
    r.phase[id(r.submitted[1])] = "waiting_frame"
    faults = set()
    for _ in range(20):
        f = r.step()
        if f.failsafe:
            faults.add((f.result_seq, f.fault_code))
    assert faults == {(1, FaultCode.INFERENCE_TIMEOUT), (2, FaultCode.CAMERA_FAULT)}
    # A decision that comes after its fail-safe is journaled as late, never written.
    r.answer(r.submitted[0])
    assert r.journal.results == {"FAILSAFE": 2}


def test_unhealthy_station_answers_at_once():
    r = Rig()
    sick = Health(camera_ok=False, model_ok=True, model_version=3)
    r.step(health=sick)
    r.trigger_seq = 1
    r.step(health=sick)
    f = r.step(health=sick)
    assert (f.result_seq, f.failsafe, f.fault_code) == (1, True, FaultCode.CAMERA_FAULT)
    assert r.submitted == []


def test_trigger_read_after_the_bridge_was_blind_is_answered_failsafe_not_judged():
    r = Rig()
    blind = Health(camera_ok=True, model_ok=True, model_version=3, plc_ok=False)
    assert r.ins.trigger_ready(OK) and not r.ins.trigger_ready(blind)
    r.step(health=blind)  # the bridge's inputs went stale on this tick
    r.trigger_seq = 1  # ... and the next reply carries a trigger raised meanwhile
    r.step(health=blind)
    f = r.step()
    assert (f.result_seq, f.failsafe, f.fault_code) == (1, True, FaultCode.PLC_INPUTS_STALE)
    assert r.submitted == []  # never judged on a frame of a later part
    assert r.journal.failsafes == {"PLC_INPUTS_STALE": 1}


def test_counter_reset_is_a_resync_not_a_flood_of_overruns():
    r = Rig()
    r.trigger_seq = 500
    r.step()
    assert [q.trigger_seq for q in r.submitted] == [500]
    assert r.journal.failsafes == {}


def test_result_holds_until_ack_or_hold_time():
    r = Rig(result_hold_ms=1000)
    for _ in range(2):
        r.trigger_seq += 1
        r.step()
    for q in r.submitted:
        r.answer(q)
    assert r.step().result_seq == 1
    assert r.step().result_seq == 1  # held: not acked, hold time not over
    r.ack = 1
    r.step()
    assert r.step().result_seq == 2


def test_free_run_goes_stale_then_recovers():
    m = Metrics()
    j = Journal(m, "t")
    latest: list[Decision | None] = [None]
    ins = FreeRunInspection(TimingSettings(max_result_age_ms=100), FailsafeSettings(result_code="FAIL", score=1.0),
                            lambda: latest[0], j, m)
    f = ins.tick(0.0, OK)
    assert f.failsafe and f.fault_code == FaultCode.STALE_RESULT and f.result_code == ResultCode.FAIL  # config's fail-safe code
    latest[0] = Decision(ResultCode.PASS, FaultCode.NONE, 0.1, 1.0, 3, 17, 0.99, None, 4.0)
    f = ins.tick(1.01, OK)
    assert (f.failsafe, f.result_code, f.result_seq, f.latency_ms) == (False, ResultCode.PASS, 17, 10)
    f = ins.tick(1.2, Health(camera_ok=False, model_ok=True, model_version=3))
    assert f.failsafe and f.fault_code == FaultCode.CAMERA_FAULT
    for t in (1.21, 1.22, 1.23):  # one episode, counted once
        ins.tick(t, Health(camera_ok=False, model_ok=True, model_version=3))
    assert j.failsafes == {"STALE_RESULT": 1, "CAMERA_FAULT": 1}


def test_late_decision_is_counted_and_never_written():
    r = Rig(result_timeout_ms=50)
    r.trigger_seq = 1
    r.step()
    for _ in range(8):
        r.step()
    r.answer(r.submitted[0], ResultCode.PASS)
    assert r.metrics.queue_drops.labels("late_decisions")._value.get() == 1
    f = r.step()
    assert f.failsafe and f.fault_code == FaultCode.INFERENCE_TIMEOUT
