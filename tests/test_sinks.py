"""The seam between the control path and the side work (plcbridge/sinks.py), and the
decision identity the journal gives every record: a sink that stalls or fails never holds the
journal up, what it misses is counted, and every decision has an id that never repeats
across PLC restarts and daemon restarts."""

from __future__ import annotations

import logging
import re
import threading
import time

from helpers import read_metric, running, station_config, wait_for

from plcbridge.contract import FaultCode, ResultCode
from plcbridge.decision import Decision, Request, failsafe
from plcbridge.journal import Journal, new_decision_id
from plcbridge.metrics import Metrics
from plcbridge.sinks import DecisionRecord, SinkFanout


class Recorder:
    """A sink that keeps every record; `gate` (cleared) makes it stall, `fail_every` raise."""

    def __init__(self, name: str = "recorder", fail_every: int = 0) -> None:
        self.name = name
        self.records: list[DecisionRecord] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_every = fail_every
        self.calls = 0
        self.closed = False

    def write(self, record: DecisionRecord) -> None:
        self.gate.wait()
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            raise OSError(28, "No space left on device")
        self.records.append(record)

    def close(self) -> None:
        self.closed = True


def _verdict(seq: int) -> Decision:
    return Decision(ResultCode.PASS, FaultCode.NONE, 0.1, time.monotonic(), 3, frame_seq=seq, t_capture=time.monotonic(),
                    request=Request(seq, 1000 + seq, time.monotonic(), plc_session=2), image=object())


def test_a_stalled_sink_never_holds_the_journal_up_and_what_it_misses_is_counted():
    m = Metrics()
    fanout = SinkFanout(m)
    stalled, healthy = Recorder("stalled"), Recorder("healthy")
    stalled.gate.clear()
    fanout.add(stalled, queue_size=8)
    fanout.add(healthy, queue_size=500)
    journal = Journal(m, "st", fanout)
    done = threading.Event()

    def journal_200() -> None:
        for i in range(200):
            journal.decision(_verdict(i))
        done.set()

    threading.Thread(target=journal_200, daemon=True).start()
    assert done.wait(30), "the journal waited for a stalled sink"
    wait_for(lambda: len(healthy.records) == 200, 10, "the healthy sink's records")
    # 8 queued and at most 1 taken by the stalled thread; the rest dropped, every one counted.
    dropped = read_metric(m, "plcbridge_sink_dropped_total", sink="stalled", reason="queue_full")
    assert 200 - 9 <= dropped <= 200 - 8, dropped
    assert read_metric(m, "plcbridge_sink_dropped_total", sink="healthy", reason="queue_full") == 0
    stalled.gate.set()
    fanout.close()
    assert stalled.closed and healthy.closed
    assert len(stalled.records) + dropped == 200  # the queued ones were written before close


def test_a_failing_sink_is_counted_and_goes_on_with_the_next_record():
    m = Metrics()
    fanout = SinkFanout(m)
    sink = Recorder(fail_every=3)
    fanout.add(sink)
    journal = Journal(m, "st", fanout)
    for i in range(30):
        journal.decision(_verdict(i))
    fanout.close()
    assert len(sink.records) == 20
    assert read_metric(m, "plcbridge_sink_dropped_total", sink="recorder", reason="error") == 10


def test_a_sink_starts_on_a_record_only_after_the_hold_and_a_backlog_is_not_held_again():
    """The moments after a decision are the control path's (the block that carries it, the
    exchange): a sink starts no sooner than the hold. Records already older than the hold when
    their turn comes (a sink behind) are written at once, not held each again."""
    m = Metrics()
    fanout = SinkFanout(m, hold_s=0.2)
    written: list[float] = []

    class Timed(Recorder):
        def write(self, record: DecisionRecord) -> None:
            written.append(time.monotonic())
            if len(written) == 1:
                time.sleep(0.5)  # the first write is slow: the next four wait behind it

    fanout.add(Timed("timed"))
    journal = Journal(m, "st", fanout)
    t0 = time.monotonic()
    for i in range(5):
        journal.decision(_verdict(i))
    wait_for(lambda: len(written) == 5, 10, "five writes")
    fanout.close()
    assert written[0] - t0 >= 0.2, written[0] - t0  # held
    # The other four were offered with the first and are past their hold when its write ends:
    # written back to back (held each again, they would span 0.6 s).
    assert written[4] - written[1] < 0.3, [round(t - t0, 3) for t in written]


def test_handing_a_record_over_wakes_no_thread_the_sink_takes_it_at_its_next_look():
    """The producer only appends (a wake-up would be a futex call made with the GIL the write
    loop waits for): the sink's thread finds the record when it next looks, every poll_s.
    Closing does not wait for that look, and what was queued is written first."""
    m = Metrics()
    fanout = SinkFanout(m, hold_s=0.0, poll_s=1.0)
    sink = Recorder()
    fanout.add(sink)
    journal = Journal(m, "st", fanout)
    time.sleep(0.05)  # the thread is asleep until about 1 s after it started
    t0 = time.monotonic()
    journal.decision(_verdict(1))
    time.sleep(0.2)
    assert sink.records == []  # a queue that woke its consumer would have it written by now
    wait_for(lambda: len(sink.records) == 1, 5, "the record at the sink's next look")
    assert time.monotonic() - t0 >= 0.3
    journal.decision(_verdict(2))
    t1 = time.monotonic()
    fanout.close()
    assert time.monotonic() - t1 < 0.6 and len(sink.records) == 2 and sink.closed  # not at the next look, ~1 s on


def test_a_record_is_the_journal_line_with_its_id_the_decision_and_its_frame(caplog):
    caplog.set_level(logging.INFO)
    m = Metrics()
    fanout = SinkFanout(m)
    sink = Recorder()
    fanout.add(sink)
    journal = Journal(m, "st", fanout)
    d = _verdict(7)
    decision_id = journal.decision(d)
    episode_id = journal.failsafe_episode(FaultCode.STALE_RESULT, "newest decision is 300 ms old", model_version=3)
    fanout.close()
    verdict, episode = sink.records
    assert verdict.decision_id == decision_id == verdict.fields["decision_id"]
    assert verdict.decision is d and verdict.image is d.image
    assert verdict.fields["part_id"] == 1007 and verdict.fields["plc_session"] == 2 and verdict.fields["result"] == "PASS"
    assert episode.decision_id == episode_id != decision_id
    assert episode.fields["episode"] is True and episode.decision.fault is FaultCode.STALE_RESULT and episode.image is None
    lines = [r for r in caplog.records if getattr(r, "event", None) == "decision"]
    assert [r.decision_id for r in lines] == [decision_id, episode_id]


def test_decision_ids_are_ulids_ordered_by_time():
    ids = [new_decision_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert all(re.fullmatch(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", i) for i in ids), ids[:3]
    time.sleep(0.002)
    later = new_decision_id()
    assert later > max(ids)  # a later millisecond sorts after, as text
    assert failsafe(FaultCode.NO_FRAME, 0.0, "x").image is None


def test_decision_ids_never_repeat_across_a_plc_restart_and_a_daemon_restart(make_sim):
    """Part ids come back: a PLC whose program was loaded again counts from 1, as in the
    trial where `part_id == 2` found two different parts minutes apart."""
    records: list[DecisionRecord] = []
    sim = make_sim("triggered", protocol="loop", trigger_hz=20, watchdog_ms=5000, channel="ids")
    for run in range(2):  # a daemon, then a fresh one on the same PLC
        sink = Recorder(f"run{run}")
        with running(station_config(sim, "triggered")) as d:
            d.journal.sinks.add(sink)
            wait_for(lambda: len(sink.records) >= 5, 30, "decisions")  # noqa: B023
            if run == 0:
                sessions = d.link.sessions
                sim.stop()  # the PLC program loaded again: part ids from 1
                sim = make_sim("triggered", protocol="loop", trigger_hz=20, watchdog_ms=5000, channel="ids")
                wait_for(lambda: d.link.sessions > sessions and len(sink.records) >= 15, 30,  # noqa: B023
                         "decisions after the PLC restart")
        records += sink.records
    ids = [r.decision_id for r in records]
    assert len(set(ids)) == len(ids)
    by_part: dict[int, list[tuple[str, int]]] = {}
    for r in records:
        if r.decision.request is not None and r.decision.request.trigger_seq:
            by_part.setdefault(r.fields["part_id"], []).append((r.decision_id, r.fields["plc_session"]))
    repeated = {p: v for p, v in by_part.items() if len(v) > 1}
    assert 1 in repeated and 2 in repeated, by_part  # the same part_id for another part ...
    for seen in repeated.values():  # ... each time with its own id, and a session to tell the PLC runs apart
        assert len({decision_id for decision_id, _ in seen}) == len(seen)
    first_run = [r for r in records if r.fields.get("part_id") == 1]
    assert len({r.fields["plc_session"] for r in first_run[:2]}) == 2, first_run[:2]


def test_sinks_run_below_the_producers():
    import os

    from plcbridge.threads import PRODUCER_NICENESS, SIDE_WORK_NICENESS

    seen: list[int] = []

    class Nice(Recorder):
        def write(self, record: DecisionRecord) -> None:
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    m = Metrics()
    fanout = SinkFanout(m)
    fanout.add(Nice())
    Journal(m, "st", fanout).decision(_verdict(1))
    fanout.close()
    # Relative to the process's own niceness (the unit starts it at Nice=-10), at most 19.
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert seen == [min(19, base + SIDE_WORK_NICENESS)] and SIDE_WORK_NICENESS > PRODUCER_NICENESS
