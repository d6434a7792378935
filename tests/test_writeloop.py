"""The write loop: absolute deadlines, the slots a late tick missed counted and skipped, never
bunched; the age of the newest inputs judged on every tick, and blindness said in the blocks.
The schedule itself is tested on a fake clock in test_schedule.py."""

import logging
import os
import threading
import time

import pytest
from helpers import read_metric, station_config, wait_for

from plcbridge.contract import FaultCode, Inputs, StatusBit
from plcbridge.inspection import Health, TriggeredInspection
from plcbridge.journal import Journal
from plcbridge.link import Reply, Written
from plcbridge.metrics import Metrics
from plcbridge.threads import WRITE_LOOP_SLICE_S, thread_slice_s
from plcbridge.writeloop import WriteLoop, status_word


class FakeLink:
    """A PLC link double: every posted block is 'delivered' at once, and each post refreshes
    the reply unless `answering` is off (a PLC that has gone quiet)."""

    connected = True
    delivering = True
    last_error = None
    sessions = 1

    def __init__(self) -> None:
        self.times: list[float] = []
        self.blocks = []
        self.reply: Reply | None = None
        self.written: Written | None = None
        self.answering = True
        self.final = None

    session_start = None
    final_connects = 0

    def post(self, block_id, outputs, token=None, session=-1):
        t = time.monotonic()
        self.times.append(t)
        self.blocks.append(outputs)
        self.written = Written(block_id, token, t)
        if self.answering:
            seq = self.reply.seq + 1 if self.reply else 0
            self.reply = Reply(seq, 1, Inputs(), t, t, block_id)

    def final_write(self, block_id, outputs, budget_s, session=-1):
        self.final = outputs
        self.blocks.append(outputs)
        return True


def _loop(cfg, link, m, drain=lambda: None):
    ins = TriggeredInspection(cfg.timing, cfg.failsafe, lambda r: None, lambda r: None, Journal(m, "t"), m)
    return WriteLoop(cfg, link, ins, lambda now: Health(True, True, 1), drain, m)


def test_late_tick_is_counted_and_the_schedule_skips_ahead():
    cfg = station_config(1, "triggered")
    m = Metrics()
    link = FakeLink()
    calls = []

    def drain():  # the 20th tick stalls 32 ms, as a hung call on the loop's thread would
        calls.append(1)
        if len(calls) == 20:
            time.sleep(0.032)

    loop = _loop(cfg, link, m, drain).start()
    time.sleep(0.6)
    loop.stop()
    # The stalled tick ends ~22 ms past the next slot: the slots already due then are given
    # up (at least 2 overruns) and the next tick runs on its own slot, not right behind.
    assert loop.overruns >= 2, loop.overruns
    assert read_metric(m, "plcbridge_write_overruns") == loop.overruns
    assert loop.lateness.summary_ms()["n"] == loop.ticks
    gaps = [b - a for a, b in zip(link.times[19:23], link.times[20:24])]
    # After the late tick the next one waits for its own slot: no burst of catch-up ticks.
    assert all(g > 0.004 for g in gaps[1:]), [round(g * 1000, 2) for g in gaps]
    # Heartbeat +1 per composed block, and the last block is the shutdown block.
    beats = [b.heartbeat for b in link.blocks]
    assert beats[:-1] == list(range(len(beats) - 1))
    assert not link.blocks[-1].status & StatusBit.READY
    assert link.final.fault_code == FaultCode.SHUTTING_DOWN


@pytest.mark.skipif(thread_slice_s(threading.get_native_id()) is None,
                    reason="this kernel reports no time slice per thread (Linux 6.12 and later on x86_64/aarch64 do)")
def test_the_write_loop_asks_for_a_short_time_slice_and_keeps_its_niceness(caplog):
    """With the default slice (1.4 ms on 2 cores) a waking write loop waited for the inference
    thread's slice to end on its core: ticks 1.2-1.8 ms late at one phase of the camera."""
    caplog.set_level(logging.INFO, logger="plcbridge.writeloop")
    loop = _loop(station_config(1, "triggered"), FakeLink(), Metrics()).start()
    try:
        wait_for(lambda: loop.ticks > 2, 5, "the loop ticking")
        tid = loop._thread.native_id
        assert thread_slice_s(tid) == WRITE_LOOP_SLICE_S
        assert os.sched_getscheduler(tid) == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, tid) == os.getpriority(os.PRIO_PROCESS, 0)
        # The test's own thread keeps the kernel's default slice.
        assert thread_slice_s(threading.get_native_id()) > WRITE_LOOP_SLICE_S
    finally:
        loop.stop()
    started = [r for r in caplog.records if getattr(r, "event", None) == "write_loop_started"]
    assert [r.slice_ms for r in started] == [WRITE_LOOP_SLICE_S * 1000], started  # the log says what the kernel gave


def test_inputs_older_than_the_limit_clear_ready_and_say_plc_inputs_stale_then_recover():
    cfg = station_config(1, "triggered", plc={"max_input_age_ms": 50, "link_timeout_ms": 1000})
    m = Metrics()
    link = FakeLink()
    loop = _loop(cfg, link, m).start()
    try:
        wait_for(lambda: link.blocks and link.blocks[-1].status & StatusBit.READY, 2, "READY with fresh inputs")
        ok = link.blocks[-1]
        assert ok.status & StatusBit.PLC_INPUTS_OK and ok.status & StatusBit.TRIGGER_READY
        assert ok.fault_code == FaultCode.NONE
        link.answering = False  # blocks still go out, but no reply comes back
        t_quiet = time.monotonic()
        wait_for(lambda: link.blocks[-1].fault_code == FaultCode.PLC_INPUTS_STALE, 2, "PLC_INPUTS_STALE")
        t_stale = link.times[-1]
        stale = link.blocks[-1]
        assert not stale.status & (StatusBit.READY | StatusBit.TRIGGER_READY | StatusBit.PLC_INPUTS_OK)
        assert stale.status & StatusBit.MODEL_OK and stale.status & StatusBit.CAMERA_OK
        # Said within a few periods of the limit, never before it.
        assert 0.05 - 0.011 <= t_stale - t_quiet < 0.05 + 0.2, t_stale - t_quiet
        assert read_metric(m, "plcbridge_plc_inputs_stale") == 1 and read_metric(m, "plcbridge_plc_inputs_ok") == 0
        assert read_metric(m, "plcbridge_ready") == 0
        link.answering = True
        wait_for(lambda: link.blocks[-1].status & StatusBit.READY, 2, "READY again once inputs are fresh")
        assert link.blocks[-1].fault_code == FaultCode.NONE
        assert read_metric(m, "plcbridge_plc_inputs_ok") == 1
    finally:
        loop.stop()


def test_a_new_link_session_without_its_first_reply_is_blind_and_says_so():
    cfg = station_config(1, "triggered", plc={"max_input_age_ms": 1000, "link_timeout_ms": 2000})
    m = Metrics()
    link = FakeLink()
    loop = _loop(cfg, link, m).start()
    try:
        wait_for(lambda: link.blocks and link.blocks[-1].status & StatusBit.READY, 2, "READY with fresh inputs")
        link.answering = False
        link.sessions = 2  # reconnected at once: the young reply belongs to the session that ended
        wait_for(lambda: link.blocks[-1].fault_code == FaultCode.PLC_INPUTS_STALE, 2, "PLC_INPUTS_STALE")
        assert not link.blocks[-1].status & (StatusBit.READY | StatusBit.TRIGGER_READY)
        assert read_metric(m, "plcbridge_plc_inputs_stale") == 1  # counted (and logged) like any other blindness
    finally:
        loop.stop()


def test_status_word_is_health_trigger_ready_and_the_results_own_bits():
    ok = Health(True, True, 1)
    health_bits = StatusBit.READY | StatusBit.CAMERA_OK | StatusBit.MODEL_OK | StatusBit.PLC_INPUTS_OK
    assert status_word(ok, False, 0) == health_bits
    assert status_word(ok, True, StatusBit.RESULT_VALID) == health_bits | StatusBit.TRIGGER_READY | StatusBit.RESULT_VALID
    # Only RESULT_VALID and FAILSAFE_ACTIVE come from the result: health bits it might carry are not its to set.
    assert status_word(Health(False, True, 1), False, StatusBit.READY | StatusBit.FAILSAFE_ACTIVE) == (
        StatusBit.MODEL_OK | StatusBit.PLC_INPUTS_OK | StatusBit.FAILSAFE_ACTIVE)
    assert status_word(Health(True, True, 1, plc_ok=False), False, 0) == StatusBit.CAMERA_OK | StatusBit.MODEL_OK


def test_final_block_is_the_inspections_shutdown_block_with_the_next_heartbeat():
    cfg = station_config(1, "triggered")
    m = Metrics()
    link = FakeLink()
    loop = _loop(cfg, link, m).start()
    wait_for(lambda: len(link.blocks) >= 3, 2, "a few ticks")
    loop.stop()
    final, last = link.final, link.blocks[-2]
    assert final.heartbeat == (last.heartbeat + 1) & 0xFFFF
    assert final.status == StatusBit.FAILSAFE_ACTIVE and final.fault_code == FaultCode.SHUTTING_DOWN
    assert loop.final_write_ok and not loop.status & StatusBit.READY
