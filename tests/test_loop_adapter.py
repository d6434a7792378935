"""The in-process `loop` PLC (plcbridge/contract/loop.py, adapters/plc/loop.py,
simulators/loop.py): the adapter behaves like a network one (the write, then the read, as one
step; a PLC that goes away is a PlcError and the link reconnects once it is back), and a
daemon runs the whole triggered handshake on it."""

from __future__ import annotations

import threading

import pytest
from helpers import RecordingPlc, read_metric, running, station_config, wait_for

from plcbridge import protocols
from plcbridge.adapters.plc.base import PlcError
from plcbridge.adapters.plc.loop import LoopAdapter
from plcbridge.config import ConfigError, parse_config
from plcbridge.contract import Inputs, Outputs, ResultCode, StatusBit
from plcbridge.contract import loop as wire
from plcbridge.simulators.device import load_device
from plcbridge.simulators.loop import LoopSimulator

TREADY = int(StatusBit.READY | StatusBit.TRIGGER_READY)
VALID = TREADY | int(StatusBit.RESULT_VALID)


def _adapter(sim_or_channel) -> LoopAdapter:
    if isinstance(sim_or_channel, str):
        cfg = parse_config({"plc": {"protocol": "loop", "loop": {"channel": sim_or_channel}}}, "<test>", env={})
    else:
        cfg = station_config(sim_or_channel)
    return LoopAdapter(cfg.plc)


def test_outputs_and_inputs_round_trip_through_the_program_write_then_read(make_sim):
    sim = make_sim("triggered", protocol="loop", early_first_trigger=True, watchdog_ms=60_000)
    assert (sim.port, sim.host, sim.section) == (0, "", "loop")
    a = _adapter(sim)
    a.connect()
    try:
        assert a.describe() == f"loop://{sim.channel}"
        # The early first trigger is raised inside the very write that shows TRIGGER_READY, and
        # the read that follows it in the same exchange already carries it.
        out = Outputs(heartbeat=1, status=TREADY)
        got = a.exchange(out, 0.5)
        assert sim.program.seen[-1][1] == out
        assert got.trigger_seq == 1 and got.part_id == 1 and got == sim.program.inputs
        # The answer and its ack: in one exchange too.
        # The loop carries every signal: a verdict also says which recipe judged it (0, the default).
        answer = Outputs(heartbeat=2, status=VALID, result_seq=1, result_code=ResultCode.PASS, part_id=1, result_recipe=0)
        assert a.exchange(answer, 0.5).result_ack_seq == 1
        assert sim.program.seen[-1][1] == answer
        # A value that does not fit its signal never reaches the program.
        with pytest.raises(PlcError, match="heartbeat=70000 is out of range") as e:
            a.exchange(Outputs(heartbeat=70_000, status=TREADY), 0.5)
        assert not e.value.written and len(sim.program.seen) == 2
    finally:
        a.close()
    s = sim.summary()
    assert s["results"] == {"PASS": 1} and s["protocol_errors"] == 0, s
    with pytest.raises(PlcError, match="not connected"):
        a.exchange(Outputs(), 0.5)


def test_an_unknown_channel_is_a_clear_plc_error(make_sim):
    sim = make_sim(protocol="loop", channel="line-7")
    with pytest.raises(PlcError, match=r"no PLC program is attached to loop channel 'line-8' \(plc\.loop\.channel\)"
                                       r" in this process; attached: .*'line-7'"):
        _adapter("line-8").connect()
    with pytest.raises(ValueError, match="'line-7' has a PLC program attached already"):
        make_sim(protocol="loop", channel="line-7")
    sim.stop()
    with pytest.raises(PlcError, match="loop channel 'line-7'"):
        _adapter("line-7").connect()


def test_a_program_busy_past_the_link_timeout_is_a_plc_that_does_not_answer():
    program_lock = threading.Lock()  # the lock a PLC program runs under: held here by a long scan
    attachment = wire.attach("slow-scan", lambda outputs, t: Inputs(trigger_seq=outputs.heartbeat), program_lock)
    try:
        a = _adapter("slow-scan")
        a.connect()
        with program_lock:
            with pytest.raises(PlcError, match="did not answer within 0.05 s") as e:
                a.exchange(Outputs(heartbeat=1), 0.05)
            assert not e.value.written
        assert a.exchange(Outputs(heartbeat=2), 0.5) == Inputs(trigger_seq=2)
    finally:
        attachment.detach()


def test_a_detached_channel_ends_the_session_and_the_link_reconnects_when_it_returns(make_sim):
    sim = make_sim("free-run", protocol="loop", channel="press-1", watchdog_ms=60_000)
    a = _adapter(sim)
    a.connect()
    a.exchange(Outputs(heartbeat=1), 0.5)
    sim.stop()  # the PLC program goes away mid-session
    with pytest.raises(PlcError, match="loop channel 'press-1' was detached"):
        a.exchange(Outputs(heartbeat=2), 0.5)

    # The same through a daemon: the link drops the session, retries, and takes the channel
    # again once a program is attached under its name.
    first = make_sim("free-run", protocol="loop", channel="press-2", watchdog_ms=60_000)
    cfg = station_config(first, "free-run", plc={"reconnect_min_ms": 20, "reconnect_max_ms": 100})
    with running(cfg) as d:
        wait_for(lambda: first.program.writes_seen >= 5, 10, "writes on the first program")
        first.stop()
        wait_for(lambda: read_metric(d, "plcbridge_plc_errors_total", kind="exchange") >= 1, 5, "the session dropped")
        wait_for(lambda: read_metric(d, "plcbridge_plc_errors_total", kind="connect") >= 1, 5, "a failed reconnect")
        assert read_metric(d, "plcbridge_plc_connected") == 0
        second = make_sim("free-run", protocol="loop", channel="press-2", watchdog_ms=60_000)
        wait_for(lambda: second.program.writes_seen >= 5, 10, "writes on the program that came back")
        assert read_metric(d, "plcbridge_plc_connected") == 1
        assert read_metric(d, "plcbridge_plc_reconnects_total") == 1
    assert second.summary()["protocol_errors"] == 0


def test_a_plc_restart_ends_the_session_like_a_real_one(make_sim):
    sim = make_sim("free-run", protocol="loop", watchdog_ms=60_000)
    a = _adapter(sim)
    a.connect()
    a.exchange(Outputs(heartbeat=1), 0.5)
    before = sim.attachment
    sim.restart_plc()
    assert before is not None and not before.attached and sim.attachment is not None and sim.attachment.attached
    with pytest.raises(PlcError, match="was detached"):
        a.exchange(Outputs(heartbeat=2), 0.5)
    a.close()
    a.connect()  # the same channel, a fresh session
    assert a.exchange(Outputs(heartbeat=3), 0.5) == Inputs()
    assert sim.summary()["restarts"] == 1


def test_a_daemon_runs_the_triggered_handshake_on_the_loop_and_answers_every_trigger(make_sim):
    sim = make_sim("triggered", trigger_hz=20, protocol="loop")
    raised: dict[int, float] = {}
    sim.program.add_trigger_listener(lambda seq, t: raised.setdefault(seq, t))
    with running(station_config(sim, "triggered")) as d:
        wait_for(lambda: sum(sim.summary()["results"].values()) >= 20, 30, "20 answered triggers")
        assert read_metric(d, "plcbridge_plc_connected") == 1 and d.link.sessions == 1
    s = sim.summary()
    # Every trigger the bridge read has exactly one answer: all those raised before the read of
    # the block before the last one (the last block, SHUTTING_DOWN, answers what was pending).
    # At most one can have been raised after that read, unseen (max_outstanding = 1).
    before_last_read = sim.program.seen[-2][0]
    read_by_bridge = {seq for seq, t in raised.items() if t < before_last_read}
    answered = [o.result_seq for _, o in sim.program.seen if o.result_seq]
    assert len(read_by_bridge) >= 20 and read_by_bridge <= set(answered), (sorted(read_by_bridge), sorted(set(answered)))
    assert s["outstanding"] <= 1 and sum(s["results"].values()) + s["outstanding"] == s["triggers_sent"] == len(raised), s
    assert s["missing"] == 0 and s["skipped"] == 0 and s["collapsed"] == 0, s
    assert s["unaccounted"] == 0 and s["protocol_errors"] == 0, s["recent_protocol_errors"]


def test_the_loop_is_a_protocol_of_the_table_but_no_network_simulator():
    row = protocols.get("loop")
    assert not row.network and row.default_port == 0 and "loop" not in protocols.SIMULATED
    assert protocols.frontend_class("loop") is LoopSimulator
    assert set(protocols.SIMULATED) == {"modbus", "opcua", "enip"}
    with pytest.raises(ConfigError, match="plc.port: the loop protocol has no network"):
        parse_config({"plc": {"protocol": "loop", "port": 502}}, "<test>", env={})
    settings = load_device(None, {"network.reply_delay_ms": 5})
    with pytest.raises(ValueError, match=r"the loop PLC has no network: \[network\]"):
        LoopSimulator(settings, RecordingPlc(settings.program))


def test_the_channel_table_is_safe_across_threads():
    lock = threading.Lock()
    won: list[wire.Attachment] = []
    errors: list[Exception] = []

    def claim() -> None:
        try:
            won.append(wire.attach("race", lambda o, t: Inputs(), lock))
        except wire.ChannelBusy as e:
            errors.append(e)

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(won) == 1 and len(errors) == 15
        assert wire.find("race") is won[0] and "race" in wire.channels()
    finally:
        won[0].detach()
    assert wire.find("race") is None and not won[0].attached
