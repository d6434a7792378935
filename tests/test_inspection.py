"""The handshake rules, clock passed in: every trigger gets exactly one result, in order."""

from __future__ import annotations

from helpers import read_metric

from plcbridge.config import FailsafeSettings, TimingSettings
from plcbridge.contract import FaultCode, Inputs, Outputs, ResultCode, StatusBit
from plcbridge.decision import Decision, Request
from plcbridge.inspection import FreeRunInspection, Health, TriggeredInspection
from plcbridge.journal import Journal
from plcbridge.metrics import Metrics

OK = Health(camera_ok=True, model_ok=True, model_version=3)


def valid(f: Outputs) -> bool:
    return bool(f.status & StatusBit.RESULT_VALID)


def is_failsafe(f: Outputs) -> bool:
    return bool(f.status & StatusBit.FAILSAFE_ACTIVE)


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
        f, token = self.ins.tick(self.t, health)
        self.ins.written(token, self.t)
        self.ins.on_inputs(Inputs(self.trigger_seq & 0xFFFF, part_id, self.ack), self.t)
        return f

    def answer(self, req: Request, result=ResultCode.PASS, score=0.1):
        self.ins.on_decision(Decision(result, FaultCode.NONE, score, self.t, 3, 1, self.t - 0.005, None, 4.0, req))


def test_one_trigger_one_result_with_part_id_and_ack():
    r = Rig()
    r.trigger_seq = 1
    r.step(part_id=4242)
    assert len(r.submitted) == 1 and r.submitted[0].part_id == 4242
    assert not valid(r.step())  # not decided yet
    r.answer(r.submitted[0], ResultCode.FAIL, 0.9)
    f = r.step()
    assert (f.result_seq, f.result_code, f.part_id, f.score, valid(f), is_failsafe(f)) == (1, ResultCode.FAIL, 4242, 9000, True, False)
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
        if valid(f) and (not seen or seen[-1][0] != f.result_seq):
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
    assert r.ins.trigger_ready(OK) is False
    for _ in range(12):  # the overrun beyond the limit is journaled once its run has closed (100 ms quiet)
        r.step()
    assert r.journal.failsafes == {"TRIGGER_OVERRUN": 1}


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
        if is_failsafe(f):
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
    assert (f.result_seq, is_failsafe(f), f.fault_code) == (1, True, FaultCode.CAMERA_FAULT)
    assert r.submitted == []


def test_trigger_read_after_the_bridge_was_blind_is_answered_failsafe_not_judged():
    r = Rig()
    blind = Health(camera_ok=True, model_ok=True, model_version=3, plc_ok=False)
    assert r.ins.trigger_ready(OK) and not r.ins.trigger_ready(blind)
    r.step(health=blind)  # the bridge's inputs went stale on this tick
    r.trigger_seq = 1  # ... and the next reply carries a trigger raised meanwhile
    r.step(health=blind)
    f = r.step()
    assert (f.result_seq, is_failsafe(f), f.fault_code) == (1, True, FaultCode.PLC_INPUTS_STALE)
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
    f, _ = ins.tick(0.0, OK)
    assert is_failsafe(f) and f.fault_code == FaultCode.STALE_RESULT and f.result_code == ResultCode.FAIL  # config's fail-safe code
    latest[0] = Decision(ResultCode.PASS, FaultCode.NONE, 0.1, 1.0, 3, 17, 0.99, None, 4.0)
    f, _ = ins.tick(1.01, OK)
    assert (is_failsafe(f), f.result_code, f.result_seq, f.latency_ms) == (False, ResultCode.PASS, 17, 10)
    f, _ = ins.tick(1.2, Health(camera_ok=False, model_ok=True, model_version=3))
    assert is_failsafe(f) and f.fault_code == FaultCode.CAMERA_FAULT
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
    assert read_metric(r.metrics, "plcbridge_queue_drops", queue="late_decisions") == 1
    f = r.step()
    assert is_failsafe(f) and f.fault_code == FaultCode.INFERENCE_TIMEOUT


# ---------------------------------------------------------------- start, restart, flood, shutdown

def _rig_at(trigger_seq: int, ack: int, **timing) -> Rig:
    """A rig whose first read (the session start) sees trigger_seq and result_ack_seq."""
    r = Rig.__new__(Rig)
    r.submitted, r.phase = [], {}
    r.metrics = Metrics()
    r.journal = Journal(r.metrics, "test")
    r.ins = TriggeredInspection(TimingSettings(**timing), FailsafeSettings(), r.submitted.append,
                                lambda q: r.phase.get(id(q)), r.journal, r.metrics)
    r.t, r.trigger_seq, r.ack = 0.0, trigger_seq, ack
    r.ins.tick(r.t, OK)
    r.ins.on_inputs(Inputs(trigger_seq, 77, ack), r.t)
    return r


def _answers(r: Rig, steps: int = 30) -> list[tuple[int, int, int]]:
    """(result_seq, result_code, fault_code) of each new answer presented, the PLC acking each."""
    seen = []
    for _ in range(steps):
        f = r.step()
        if valid(f) and (not seen or seen[-1][0] != f.result_seq):
            seen.append((f.result_seq, f.result_code, f.fault_code))
        if valid(f):
            r.ack = f.result_seq
    return seen


def test_session_start_idle_or_acked_is_nothing_to_answer():
    for seq, ack in ((0, 0), (7, 7)):
        r = _rig_at(seq, ack)
        assert _answers(r, 5) == [] and r.journal.results == {}
        r.trigger_seq = seq + 1  # the next trigger is an ordinary one (0 -> 1, 7 -> 8)
        r.step()
        assert [q.trigger_seq for q in r.submitted] == [seq + 1]


def test_session_start_with_an_unacked_trigger_answers_it_failsafe_at_once():
    r = _rig_at(5, 4)
    assert _answers(r, 3) == [(5, ResultCode.FAILSAFE, FaultCode.PLC_INPUTS_STALE)]
    assert r.submitted == [] and r.journal.failsafes == {"PLC_INPUTS_STALE": 1}


def test_plc_restart_is_no_phantom_part_and_old_answers_are_never_shown_to_the_new_session():
    r = Rig(result_hold_ms=1000)
    r.trigger_seq = 1
    r.step(part_id=11)
    r.trigger_seq = 2
    r.step(part_id=12)
    r.answer(r.submitted[0])
    f = r.step()
    assert (f.result_seq, valid(f)) == (1, True)  # presented, not yet acked; trigger 2 still judging
    r.trigger_seq, r.ack = 0, 0  # the PLC restarts: idle counter, no ack
    r.step()  # the read that sees it (the rig composes before it reads; the write loop reads first)
    for _ in range(3):
        f = r.step()
        assert not valid(f), f  # neither answer of the old session is presented to the new one
    r.answer(r.submitted[1])  # the old trigger's verdict comes in late: journaled, never written
    assert not valid(r.step())
    assert read_metric(r.metrics, "plcbridge_results_discarded") == 1  # trigger 2: never delivered (1 was, unacked)
    r.trigger_seq = 1  # the new session's first trigger is answered normally
    r.step(part_id=21)
    assert [q.part_id for q in r.submitted] == [11, 12, 21]
    r.answer(r.submitted[2])
    assert _answers(r, 5) == [(1, ResultCode.PASS, FaultCode.NONE)]


def test_reconnect_to_the_same_plc_session_keeps_the_pending_answer():
    r = Rig()
    r.trigger_seq = 1
    r.step()
    r.ins.on_inputs(Inputs(1, 0, 0), r.t, new_session=True)  # link blip: same counter
    r.answer(r.submitted[0])
    assert _answers(r, 5) == [(1, ResultCode.PASS, FaultCode.NONE)]


def test_counter_wraps_65535_to_1_without_a_skipped_value():
    r = _rig_at(65534, 65534)
    r.trigger_seq = 65535
    r.step()
    r.trigger_seq = 1
    r.step()
    assert [q.trigger_seq for q in r.submitted] == [65535, 1]
    assert r.journal.failsafes == {}


def test_stuck_trigger_edge_flood_stays_bounded_and_the_next_real_trigger_is_answered_in_time():
    r = Rig(result_timeout_ms=500)
    seq = 0
    for _ in range(1000):  # 10 s of a PLC bug: +10 values per 10 ms read
        seq += 10
        r.trigger_seq = seq
        r.step()
        assert len(r.ins.slots) <= r.ins.capacity + 1, len(r.ins.slots)
        for q in r.submitted:
            r.answer(q)
        r.submitted.clear()
        r.ack = r.step(dt=0.0).result_seq  # the PLC acks whatever it is shown
    for _ in range(30):  # the last run closes and everything waiting is presented and acked
        r.ack = r.step().result_seq
    assert not r.ins.slots
    # Exactly once: every value the PLC raised is in the journal, on its own line or counted
    # in the one line of the collapsed run that answered it.
    lines = sum(r.journal.results.values())
    collapsed = read_metric(r.metrics, "plcbridge_triggers_collapsed")
    assert lines + collapsed == seq, (lines, collapsed, seq)
    assert collapsed > 0.8 * seq  # most of the flood was answered by collapsed runs
    # The bug stops; a legitimate trigger is answered within result_timeout_ms.
    seq += 1
    r.trigger_seq = seq
    t0 = r.t
    r.step(part_id=4242)
    legit = r.submitted[-1]
    assert legit.part_id == 4242
    r.answer(legit)
    for _ in range(60):
        f = r.step()
        r.ack = f.result_seq
        if f.result_seq == seq and f.result_code == ResultCode.PASS:
            break
    assert f.result_seq == seq and r.t - t0 < 0.5, (f, r.t - t0)


def test_shutdown_answers_the_pending_trigger_with_its_own_seq_and_part_id():
    r = _rig_at(8, 8)
    r.trigger_seq = 9
    r.step(part_id=99)
    f = r.ins.shutdown(r.t)
    assert (f.result_seq, f.part_id, f.result_code, f.fault_code, valid(f), is_failsafe(f)) == (
        9, 99, ResultCode.FAILSAFE, FaultCode.SHUTTING_DOWN, True, True)
    assert f.status == StatusBit.RESULT_VALID | StatusBit.FAILSAFE_ACTIVE  # READY and the health bits cleared
    assert r.journal.failsafes == {"SHUTTING_DOWN": 1}


def test_shutdown_delivers_a_verdict_that_was_decided_but_not_yet_written_as_journaled():
    """The journal must never disagree with the PLC: a decided PASS goes out as PASS in the
    final block, with SHUTTING_DOWN and READY clear, not as a fail-safe the journal never said."""
    r = _rig_at(8, 8)
    r.trigger_seq = 9
    r.step(part_id=99)
    r.answer(r.submitted[0], ResultCode.PASS, 0.2)  # decided between two ticks: journaled, not yet written
    assert r.journal.results == {"PASS": 1}
    f = r.ins.shutdown(r.t)
    assert (f.result_seq, f.part_id, f.result_code, f.score, f.fault_code, f.model_version) == (
        9, 99, ResultCode.PASS, 2000, FaultCode.SHUTTING_DOWN, 3)
    assert f.status == StatusBit.RESULT_VALID  # not a fail-safe; READY and the health bits cleared
    assert r.journal.results == {"PASS": 1}  # nothing else journaled for trigger 9


def test_shutdown_with_nothing_pending_answers_nothing_and_repeats_the_last_result_seq():
    r = Rig(result_hold_ms=20)
    r.trigger_seq = 1
    r.step()
    r.answer(r.submitted[0])
    r.ack = 1
    for _ in range(5):
        r.step()  # presented, acked: nothing waits
    f = r.ins.shutdown(r.t)
    assert (f.result_seq, f.part_id, f.result_code, f.fault_code, f.model_version) == (
        1, 0, ResultCode.FAILSAFE, FaultCode.SHUTTING_DOWN, 3)
    assert f.status == StatusBit.FAILSAFE_ACTIVE and not valid(f)  # no trigger answered by it
    assert Rig().ins.shutdown(0.0).result_seq == 0  # nothing ever presented


def test_free_run_shutdown_block_repeats_the_last_result_seq():
    m = Metrics()
    d = Decision(ResultCode.PASS, FaultCode.NONE, 0.1, 1.0, 5, 42, 0.99, None, 4.0)
    ins = FreeRunInspection(TimingSettings(max_result_age_ms=100), FailsafeSettings(), lambda: d, Journal(m, "t"), m)
    f, token = ins.tick(1.01, OK)
    assert token is d and (f.result_seq, valid(f)) == (42, True)
    f = ins.shutdown(1.02)
    assert (f.result_seq, f.model_version, f.fault_code, f.status) == (42, 5, FaultCode.SHUTTING_DOWN, StatusBit.FAILSAFE_ACTIVE)


def test_the_block_carries_only_the_result_bits_and_says_blind_in_every_block():
    """The write loop stamps heartbeat and health bits; the fault is complete here."""
    r = Rig(result_hold_ms=1000)
    r.trigger_seq = 1
    r.step(part_id=5)
    r.answer(r.submitted[0])
    f = r.step()
    assert (f.heartbeat, f.status, f.fault_code) == (0, StatusBit.RESULT_VALID, FaultCode.NONE)
    blind = Health(camera_ok=True, model_ok=True, model_version=3, plc_ok=False)
    f = r.step(health=blind)  # the verdict still presented, the inputs now stale
    assert (f.result_seq, f.result_code, valid(f)) == (1, ResultCode.PASS, True)
    assert f.fault_code == FaultCode.PLC_INPUTS_STALE
    f = r.step(health=Health(camera_ok=False, model_ok=True, model_version=3))
    assert (valid(f), f.fault_code) == (True, FaultCode.CAMERA_FAULT)  # a verdict, and why none can follow
