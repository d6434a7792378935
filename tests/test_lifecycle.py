"""The daemon's life: losing and regaining the PLC, SIGTERM with a final fail-safe write,
refusing a bad config, and the metrics/health endpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from helpers import plc_answers, read_metric, running, station_config, wait_for

from plcbridge.contract import FaultCode, ResultCode, StatusBit
from plcbridge.simulators.process import start_simulator, stop_simulator


@pytest.mark.parametrize("protocol", ["modbus", "enip"])  # OPC UA: tests/test_opcua.py (its own session checks)
def test_simulator_killed_and_restarted_daemon_reconnects_and_heartbeat_resumes(protocol):
    proc, port = start_simulator("triggered", 10.0, protocol=protocol)
    try:
        cfg = station_config(port, "triggered", plc={"protocol": protocol, "reconnect_min_ms": 50, "reconnect_max_ms": 400})
        with running(cfg) as d:
            wait_for(lambda: d.link.connected and d.worker.model_ok, 30, "connected with the model loaded")
            # SIGKILL: no goodbye on the application layer (pycomm3's `connected` flag even stays True)
            proc.kill()
            proc.wait()
            wait_for(lambda: not d.link.connected, 5, "the loss to be noticed")
            ticks = d.loop.ticks
            time.sleep(1.0)
            assert d.loop.alive
            assert d.loop.ticks - ticks >= 50, "the write loop kept its cadence while the PLC was gone"
            proc, _ = start_simulator("triggered", 10.0, ["--port", str(port)], protocol=protocol)
            wait_for(lambda: d.link.connected, 15, "a reconnect on a fresh client")
            time.sleep(1.5)
            assert d.loop.alive
            assert read_metric(d, "plcbridge_plc_reconnects_total") >= 1
        summary = stop_simulator(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The restarted PLC saw a changing heartbeat and got answers again.
    assert summary["writes_seen"] >= 100, summary
    assert summary["heartbeat_longest_gap_ms"] < 1000, summary  # generous: the heartbeat kept changing
    assert sum(summary["results"].values()) >= 3, summary
    assert summary["protocol_errors"] == 0, summary["recent_protocol_errors"]


def test_a_restarted_plc_is_shown_nothing_decided_for_its_previous_run(tmp_path):
    """The PLC process dies while the bridge presents an answer and a new one takes its port:
    the first block it reads carries no answer (result_seq 0, RESULT_VALID clear), and no
    answer of the old run ever reaches it (it would count an unexpected_seq). That block was
    composed from the new PLC's own inputs, read before the session's first write: it says
    the inputs are fresh, not PLC_INPUTS_STALE."""
    proc, port = start_simulator("triggered", 10.0)
    trace = tmp_path / "after-restart.jsonl"
    try:
        with running(station_config(port, "triggered")) as d:
            wait_for(lambda: d.inspection.presenting is not None, 30, "an answer on the outputs")
            proc.kill()
            proc.wait()
            wait_for(lambda: not d.link.connected, 5, "the loss to be noticed")
            assert d.inspection.presenting is not None  # still held when the new PLC comes
            proc, _ = start_simulator("triggered", 10.0, ["--port", str(port), "--trace", str(trace)])
            wait_for(lambda: d.link.connected, 10, "the reconnect")
            wait_for(lambda: trace.exists() and len(trace.read_text().splitlines()) >= 3, 15, "answers to the new PLC")
        summary = stop_simulator(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = json.loads(trace.read_text().splitlines()[0])
    assert first["result_seq"] == 0 and not first["status"] & StatusBit.RESULT_VALID, first
    assert first["status"] & StatusBit.PLC_INPUTS_OK and first["fault"] != "PLC_INPUTS_STALE", first
    assert summary["protocol_errors"] == 0, summary["recent_protocol_errors"]
    assert sum(summary["results"].values()) >= 1, summary


@pytest.mark.parametrize("protocol", ["modbus", "opcua", "enip", "loop"])
def test_every_session_begins_with_a_block_composed_from_its_own_first_read(make_sim, protocol):
    """The daemon's start and two PLC restarts (each one a new link session): the first block
    of every session is composed from the inputs the bridge read on that session before
    writing, so the PLC never reads a PLC_INPUTS_STALE that is not true (an HMI would log a
    false fault at every connect) and never an answer meant for its previous run."""
    relay = {} if protocol == "loop" else {"network.relay": True}  # a restart drops the connections
    sim = make_sim("triggered", protocol=protocol, trigger_hz=10, watchdog_ms=5000, device=relay)
    # max_input_age_ms well above a busy machine's slowest reply: a real stale episode is not
    # what this test looks at.
    with running(station_config(sim, "triggered", plc={"max_input_age_ms": 1000, "link_timeout_ms": 1000})) as d:
        wait_for(lambda: sum(sim.program.summary()["results"].values()) >= 2, 60, "answers on the first session")
        for _ in range(2):
            sessions, blocks = d.link.sessions, len(sim.program.seen)
            sim.restart_plc()
            wait_for(lambda: d.link.sessions > sessions and len(sim.program.seen) > blocks + 5, 30,  # noqa: B023
                     "blocks on the new session")
    seen = [o for _, o in sim.program.seen]
    assert seen[0].status & StatusBit.PLC_INPUTS_OK and seen[0].fault_code != FaultCode.PLC_INPUTS_STALE, seen[0]
    assert seen[-1].fault_code == FaultCode.SHUTTING_DOWN  # the final block, the one without PLC_INPUTS_OK
    stale = [o for o in seen[:-1] if o.fault_code == FaultCode.PLC_INPUTS_STALE or not o.status & StatusBit.PLC_INPUTS_OK]
    assert not stale, stale[:3]
    assert d.link.sessions >= 3
    s = sim.program.summary()
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]
    assert s["answers_after_restart"] == 0, s


def test_the_final_write_to_a_plc_that_is_gone_makes_a_few_connects_not_a_burst():
    from plcbridge.link import FINAL_CONNECTS

    proc, port = start_simulator("triggered", 10.0)
    try:
        with running(station_config(port, "triggered")) as d:
            wait_for(lambda: d.link.connected, 30, "connected")
            proc.kill()
            proc.wait()
            wait_for(lambda: not d.link.connected, 5, "the loss to be noticed")
            before = read_metric(d, "plcbridge_plc_errors_total", kind="connect")
            t0 = time.monotonic()
        took = time.monotonic() - t0  # the stop: the final write against a closed port
        during_stop = read_metric(d, "plcbridge_plc_errors_total", kind="connect") - before
    finally:
        if proc.poll() is None:
            proc.kill()
    assert d.loop.final_write_ok is False and d.link.final_connects == FINAL_CONNECTS, d.link.final_connects
    assert during_stop <= FINAL_CONNECTS + 1, during_stop  # + a refused probe already under way; it was 20
    assert took < 2.0, took


def test_a_plc_back_after_an_outage_is_reconnected_within_a_second():
    """While the PLC is gone its port refuses: looked for every reconnect_min_ms, never with a
    backoff grown through the outage (which gave 2.6-3.1 s here)."""
    proc, port = start_simulator("triggered", 10.0)
    try:
        with running(station_config(port, "triggered")) as d:  # the defaults: reconnect 100 ms .. 5 s
            wait_for(lambda: d.link.connected, 30, "connected")
            proc.kill()
            proc.wait()
            wait_for(lambda: not d.link.connected, 5, "the loss to be noticed")
            time.sleep(4.0)  # doubling from 100 ms would be waiting 1.6 to 3.2 s by now
            proc, _ = start_simulator("triggered", 10.0, ["--port", str(port)])
            t_back = time.monotonic()  # the simulator is listening
            wait_for(lambda: d.link.connected, 10, "the reconnect")
            took = time.monotonic() - t_back
            refused = read_metric(d, "plcbridge_plc_errors_total", kind="connect")
        stop_simulator(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert took < 1.0, took
    assert refused >= 20, refused  # about one refused connect per 100 ms of the outage, each costing the PLC nothing


def test_a_camera_back_after_an_outage_is_used_within_a_second(make_sim, tmp_path):
    import cv2
    import numpy as np

    from plcbridge.config import parse_config

    images = tmp_path / "images"
    images.mkdir()

    def put_images() -> None:
        for i in range(3):
            cv2.imwrite(str(images / f"pass_{i}.png"), np.full((64, 64, 3), 100 + i, np.uint8))

    put_images()
    sim = make_sim("free-run")
    raw = station_config(sim.port, "free-run").model_dump(mode="json")
    raw["camera"] = {"source": "folder", "path": str(images), "fps": 30}  # reconnect 100 ms .. 5 s
    with running(parse_config(raw, "<test>", env={})) as d:
        wait_for(lambda: d.health(time.monotonic()).camera_ok, 30, "CAMERA_OK")
        for p in images.glob("*.png"):
            p.unlink()  # the files vanish: the camera fails at its next grab and finds nothing to open
        wait_for(lambda: not d.health(time.monotonic()).camera_ok, 5, "CAMERA_FAULT")
        time.sleep(4.0)
        put_images()
        t_back = time.monotonic()
        wait_for(lambda: d.health(time.monotonic()).camera_ok, 10, "CAMERA_OK again")
        took = time.monotonic() - t_back
    assert took < 1.0, took  # it was 5 s: the backoff had grown while the folder was empty


def _daemon_cmd(config_path):
    return [sys.executable, "-m", "plcbridge", "run", "--config", str(config_path)]


def test_sigterm_under_load_writes_failsafe_with_ready_cleared_and_exits_0(make_sim, tmp_path):
    sim = make_sim("triggered", trigger_hz=25, max_outstanding=3)  # triggers in flight when SIGTERM lands
    cfg = tmp_path / "station.toml"
    cfg.write_text(f'[camera]\nsource = "synthetic"\n[model]\nmanifest = "builtin:demo"\n[plc]\nport = {sim.port}\n[metrics]\nenabled = false\n[logging]\nformat = "json"\n')
    proc = subprocess.Popen(_daemon_cmd(cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        plc = sim.program
        wait_for(lambda: plc.seen and plc.seen[-1][1].status & StatusBit.READY, 30, "READY on the PLC")
        wait_for(lambda: sum(sim.summary()["results"].values()) >= 20, 15, "answered triggers")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    last = plc.seen[-1][1]
    assert not last.status & StatusBit.READY
    assert last.fault_code == FaultCode.SHUTTING_DOWN
    verdict = last.status & StatusBit.RESULT_VALID and last.result_code in (ResultCode.PASS, ResultCode.FAIL)
    assert verdict or (last.status & StatusBit.FAILSAFE_ACTIVE and last.result_code == ResultCode.FAILSAFE), last
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "decision" in names and "final_write" in names
    final = next(e for e in events if e["event"] == "final_write")
    assert final["written"] is True
    # Every answer the PLC read, the last block's included, is the one the journal holds.
    journal = {(e["trigger_seq"], e["part_id"]): e["result"] for e in events if e["event"] == "decision" and "trigger_seq" in e}
    read = plc_answers(plc.seen)
    assert len(read) >= 20 and all(names == {journal.get(key)} for key, names in read.items()), \
        [(key, names, journal.get(key)) for key, names in read.items() if names != {journal.get(key)}]


def test_run_refuses_a_bad_config_and_starts_nothing(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[station]\nmode = "sometimes"\n')
    r = subprocess.run(_daemon_cmd(cfg), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "station.mode" in r.stderr and str(cfg) in r.stderr
    assert r.stdout == ""


def test_metrics_and_health_endpoints(make_sim):
    sim = make_sim("triggered", trigger_hz=10)
    cfg = station_config(sim.port, "triggered", metrics={"enabled": True, "host": "127.0.0.1", "port": 0})
    with running(cfg) as d:
        assert d.http is not None
        base = f"http://127.0.0.1:{d.http.port}"
        wait_for(lambda: sum(sim.summary()["results"].values()) >= 3, 30, "answered triggers")
        body = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert urllib.request.urlopen(base + "/healthz", timeout=5).status == 200
        assert urllib.request.urlopen(base + "/readyz", timeout=5).status == 200
    for name in ("plcbridge_write_lateness_seconds_bucket", "plcbridge_inference_seconds_count",
                 "plcbridge_trigger_to_result_seconds_count", 'plcbridge_failsafe_total{fault="STALE_RESULT"}',
                 "plcbridge_plc_connected 1.0", "plcbridge_model_info{"):
        assert name in body, name


def test_readyz_names_what_is_not_ready_and_since_when():
    from helpers import closed_tcp_port

    port = closed_tcp_port()
    cfg = station_config(port, "triggered", metrics={"enabled": True, "port": 0})
    with running(cfg) as d:
        wait_for(lambda: read_metric(d, "plcbridge_plc_errors_total", kind="connect") >= 2, 30, "connect attempts")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{d.http.port}/readyz", timeout=5)
            raise AssertionError("/readyz said 200 without a PLC")
        except urllib.error.HTTPError as e:
            assert e.code == 503
            body = e.read().decode()
    assert body.startswith("not ready: ") and f"plc: not connected to 127.0.0.1:{port}" in body, body
    assert "connection refused" in body.lower() and " s)" in body, body
    assert "camera:" not in body and "model:" not in body, body  # only what is not OK
