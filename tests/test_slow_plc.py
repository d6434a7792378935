"""The daemon against a PLC that is slow and rude on purpose: replies later than the period,
replies too late to see triggers by, a black-holed link, exception responses every
exchange, a PLC without FC23. Real sockets on 127.0.0.1 through the simulator's relay
(simulators/network.py); bounds are generous (a noisy 2-core machine): figures belong to
docs/benchmarks.md."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request

import pytest
from helpers import read_metric, running, station_config, wait_for

from plcbridge.contract import FaultCode, StatusBit
from plcbridge.logs import LogPipeline


def _answered(sim) -> int:
    return sum(sim.summary()["results"].values())


def _reconnects(d) -> int:
    return int(read_metric(d, "plcbridge_plc_reconnects_total"))


# Real time: no PLC_INPUTS_STALE episode (inputs older than 100 ms) in 20 s. Beside three other
# workers on two cores a stall of the whole daemon process (a write overrun) once made one.
@pytest.mark.serial
@pytest.mark.parametrize("protocol, delay_ms, jitter_ms, seconds", [
    ("modbus", 12, 0, 20),   # every reply later than the 10 ms period
    ("opcua", 5, 25, 8),     # an OPC UA server answering in 5-30 ms, like an S7-1500 or TwinCAT
])
def test_replies_later_than_the_period_keep_one_session_and_every_trigger_is_answered(
        make_sim, protocol, delay_ms, jitter_ms, seconds):
    sim = make_sim("triggered", trigger_hz=10, protocol=protocol, watchdog_ms=500,
                   device={"network.reply_delay_ms": delay_ms, "network.reply_jitter_ms": jitter_ms})
    cfg = station_config(sim.port, "triggered", plc={"protocol": protocol})
    with running(cfg) as d:
        wait_for(lambda: _answered(sim) >= 3, 60, "the first answered triggers")
        hb0 = sim.program.seen[-1][1].heartbeat
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            time.sleep(0.5)
            assert sim.summary()["network"]["connections_accepted"] == 1, "a slow reply cost the session"
        hb1 = sim.program.seen[-1][1].heartbeat
        late = read_metric(d, "plcbridge_plc_late_exchanges_total")
        exchanges = d.link.exchanges
        errors = read_metric(d, "plcbridge_plc_errors_total", kind="exchange")
        stale = read_metric(d, "plcbridge_plc_inputs_stale_total")
    s = sim.summary()
    assert s["network"]["connections_accepted"] == 1 and errors == 0 and _reconnects(d) == 0
    assert s["missing"] == 0 and s["skipped"] == 0 and s["protocol_errors"] == 0, s
    assert _answered(sim) >= 5 * seconds, s["results"]  # 10 Hz, every trigger answered
    assert s["results"].get("FAILSAFE", 0) <= 2, s["failsafe_faults"]
    assert stale == 0
    assert s["heartbeat_alarms"] == 0, s  # the PLC's watchdog (500 ms) never missed the bridge
    assert (hb1 - hb0) % 65536 >= 50 * seconds  # one block composed every period, sent newest-first
    if protocol == "modbus":
        assert late >= 0.5 * exchanges, (late, exchanges)  # most replies really came after the period


def test_replies_too_late_to_see_triggers_by_are_said_in_the_blocks_and_recovered_from(make_sim):
    sim = make_sim("triggered", trigger_hz=5, watchdog_ms=5000, device={"network.relay": True})
    plc = sim.program
    cfg = station_config(sim.port, "triggered", plc={"max_input_age_ms": 100, "link_timeout_ms": 2000})
    with running(cfg) as d:
        wait_for(lambda: plc.seen and plc.seen[-1][1].status & StatusBit.READY, 30, "READY on the PLC")
        assert plc.seen[-1][1].status & StatusBit.TRIGGER_READY
        sim.network.set_reply_delay(250)  # beyond max_input_age_ms, within link_timeout_ms
        t_slow = time.monotonic()
        wait_for(lambda: plc.seen[-1][1].fault_code == FaultCode.PLC_INPUTS_STALE, 5, "PLC_INPUTS_STALE on the PLC")
        time.sleep(1.0)
        blind = [o for t, o in plc.seen if t > t_slow + 0.6]
        # Every block that still reaches the PLC says the bridge is blind.
        assert len(blind) >= 2
        for o in blind:
            assert o.fault_code == FaultCode.PLC_INPUTS_STALE, o
            assert not o.status & (StatusBit.READY | StatusBit.TRIGGER_READY | StatusBit.PLC_INPUTS_OK), o
        assert sim.summary()["network"]["connections_accepted"] == 1  # slow, not dead: session kept
        assert read_metric(d, "plcbridge_plc_inputs_stale_total") == 1 and read_metric(d, "plcbridge_ready") == 0
        sim.network.set_reply_delay(0)
        t_fast = time.monotonic()
        wait_for(lambda: plc.seen[-1][1].status & StatusBit.READY, 5, "READY again")
        last = plc.seen[-1][1]
        assert last.status & StatusBit.PLC_INPUTS_OK and last.status & StatusBit.TRIGGER_READY
        # The fault is gone, unless the block still presents a fail-safe result (its own fault).
        assert last.fault_code == FaultCode.NONE or last.status & StatusBit.FAILSAFE_ACTIVE, last
        n = _answered(sim)
        wait_for(lambda: _answered(sim) >= n + 3, 10, "triggers answered after the recovery")
    assert time.monotonic() - t_fast < 10
    s = sim.summary()
    assert s["missing"] == 0 and s["protocol_errors"] == 0, s
    # A trigger the bridge could only see late was answered fail-safe, never judged on a later frame.
    assert set(s["failsafe_faults"]) <= {"PLC_INPUTS_STALE"}, s["failsafe_faults"]


def test_black_holed_link_is_dropped_after_the_link_timeout_and_rebuilt_with_backoff(make_sim):
    sim = make_sim("free-run", device={"network.relay": True})
    plc = sim.program
    cfg = station_config(sim.port, "free-run", plc={"link_timeout_ms": 200, "connect_timeout_ms": 300,
                                                    "reconnect_min_ms": 100, "reconnect_max_ms": 400})
    with running(cfg) as d:
        wait_for(lambda: plc.seen and plc.seen[-1][1].status & StatusBit.READY, 30, "READY on the PLC")
        sim.network.blackhole(True)
        t0 = time.monotonic()
        wait_for(lambda: read_metric(d, "plcbridge_plc_errors_total", kind="exchange") >= 1, 2, "the silent session dropped")
        assert time.monotonic() - t0 < 0.2 + 0.5
        assert "no answer within plc.link_timeout_ms = 200" in (d.link.last_error or "")
        wait_for(lambda: not d.loop.inputs_ok, 1, "the loop to know it is blind")
        accepted = sim.summary()["network"]["connections_accepted"]
        time.sleep(3.0)
        # Connects that get no answer back off: 100, 200, 400, 400 ms ... plus the 300 ms
        # connect timeout each; never one per tick.
        during = sim.summary()["network"]["connections_accepted"] - accepted
        assert 1 <= during <= 8, during
        assert d.loop.alive and not d.loop.status & StatusBit.READY
        sim.network.blackhole(False)
        t_back = time.monotonic()
        wait_for(lambda: any(t > t_back and o.status & StatusBit.READY for t, o in plc.seen), 5, "READY after the outage")
        assert d.link.connected


def test_exception_responses_back_off_log_once_per_window_and_readyz_says_503(make_sim):
    sim = make_sim("free-run", device={"network.relay": True})
    # The bridge writes its outputs at 500; this PLC maps 0..9: every write is ILLEGAL_ADDRESS.
    cfg = station_config(sim.port, "free-run", plc={"reconnect_min_ms": 50, "reconnect_max_ms": 1000,
                                                    "modbus": {"outputs_base": 500}},
                         metrics={"enabled": True, "port": 0})
    out = io.StringIO()
    logs = LogPipeline("json", "info", rate_limit_s=5.0, stream=out).start()
    try:
        with running(cfg) as d:
            wait_for(lambda: read_metric(d, "plcbridge_plc_errors_total", kind="config") >= 1, 30, "the first refusal")
            t0 = time.monotonic()
            n0 = sim.summary()["network"]["connections_accepted"]
            # Each connect's first read is answered (the inputs map); never READY for it: not
            # one block reaches this PLC.
            ready_seen = 0
            while time.monotonic() - t0 < 3.5:
                ready_seen += d.ready() or read_metric(d, "plcbridge_ready") == 1
                time.sleep(0.005)
            assert ready_seen == 0
            connects = sim.summary()["network"]["connections_accepted"] - n0
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://127.0.0.1:{d.http.port}/readyz", timeout=5)
            assert e.value.code == 503
            assert read_metric(d, "plcbridge_ready") == 0 and not d.ready()
            assert d.loop.alive
        elapsed = time.monotonic() - t0
    finally:
        logs.stop()
    # Retried at reconnect_max_ms (1 s, -20 % jitter at most): about 4 in 3.5 s, never per tick.
    assert 2 <= connects <= int(elapsed / 0.8) + 1, connects
    events = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    refusals = [e for e in events if e["event"] == "plc_config_error"]
    assert len(refusals) == 1, refusals  # one line per 5 s window; the rest are counted
    r = refusals[0]
    assert "500..509" in r["reason"] and "ILLEGAL_ADDRESS" in r["reason"] and r["setting"] == "plc.modbus.outputs_base"
    assert sim.summary()["writes_seen"] == 0


def test_fc23_auto_falls_back_to_fc16_fc3_against_a_plc_without_it(make_sim):
    sim = make_sim("triggered", trigger_hz=10, device={"modbus.fc23": False})
    with running(station_config(sim.port, "triggered")) as d:
        wait_for(lambda: _answered(sim) >= 10, 30, "answered triggers over FC16 + FC3")
        assert d.link.adapter is not None and d.link.adapter.fc23 is False
        reconnects = _reconnects(d)
    s = sim.summary()
    assert s["missing"] == 0 and s["skipped"] == 0, s
    # The probe cost one refused FC23 per connection, and nothing else went wrong.
    assert s["protocol_errors_by_kind"] == {"unsupported_function": reconnects + 1}, s["protocol_errors_by_kind"]


def test_fc23_is_used_where_the_plc_has_it_and_forcing_it_on_a_plc_without_names_the_setting(make_sim):
    sim = make_sim("triggered", trigger_hz=10)
    with running(station_config(sim.port, "triggered")) as d:
        wait_for(lambda: _answered(sim) >= 5, 30, "answered triggers over FC23")
        assert d.link.adapter is not None and d.link.adapter.fc23 is True
    assert sim.summary()["protocol_errors"] == 0

    without = make_sim("free-run", device={"modbus.fc23": False})
    cfg = station_config(without.port, "free-run", plc={"modbus": {"exchange": "fc23"}})
    with running(cfg) as d:
        wait_for(lambda: read_metric(d, "plcbridge_plc_errors_total", kind="config") >= 1, 30, "the refusal")
        assert 'plc.modbus.exchange = "fc16+fc3"' in (d.link.last_error or ""), d.link.last_error


def _events(out: io.StringIO, name: str) -> list[dict]:
    return [e for e in map(json.loads, out.getvalue().splitlines()) if e["event"] == name]


@pytest.mark.parametrize("delay_ms, blind", [(120, True), (30, False)])
def test_a_plc_too_slow_for_the_settings_is_said_once_per_log_window_naming_the_setting(make_sim, delay_ms, blind):
    """120 ms replies: never READY, and the log says why (inputs older than plc.max_input_age_ms,
    the exchange time that makes them so). 30 ms replies at a 10 ms period: every exchange is
    late, and the log says so, naming timing.period_ms. Once per log window, not per tick."""
    sim = make_sim("triggered", trigger_hz=5, watchdog_ms=5000, device={"network.reply_delay_ms": delay_ms})
    cfg = station_config(sim.port, "triggered", logging={"rate_limit_s": 2.0})  # max_input_age_ms 100, period 10
    out = io.StringIO()
    logs = LogPipeline("json", "info", rate_limit_s=2.0, stream=out).start()
    try:
        with running(cfg) as d:
            wait_for(lambda: _events(out, "plc_exchanges_late"), 20, "the late exchanges said")
            t0 = time.monotonic()
            if blind:
                wait_for(lambda: _events(out, "plc_inputs_stale"), 10, "the blindness said")
            time.sleep(3.0)
            ready = read_metric(d, "plcbridge_ready")
        elapsed = time.monotonic() - t0
    finally:
        logs.stop()
    late = _events(out, "plc_exchanges_late")
    assert 1 <= len(late) <= elapsed / 2.0 + 3, late  # one per 2 s window, give or take the edges
    assert late[0]["setting"] == "timing.period_ms" and late[0]["period_ms"] == 10
    assert late[0]["slowest_ms"] >= delay_ms * 0.8 and "heartbeat advances by more than one" in late[0]["reason"]
    stale = _events(out, "plc_inputs_stale")
    if not blind:
        assert not stale and ready == 1  # late, not blind: READY with a 30 ms PLC
        return
    assert ready == 0
    assert 1 <= len(stale) <= elapsed / 2.0 + 3, stale
    s = stale[0]
    assert s["setting"] == "plc.max_input_age_ms" and s["limit_ms"] == 100 and s["input_age_ms"] > 100, s
    assert s["exchange_ms"] >= delay_ms * 0.8, s
    assert "above plc.max_input_age_ms = 100" in s["reason"] and "raise plc.max_input_age_ms" in s["reason"], s
