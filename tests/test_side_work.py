"""Nothing beside the write loop may stall it or hold up a stop, and readiness tells the
truth: a flood on the metrics port, a stdout nobody reads, SIGTERM in the middle of a slow
reload, and systemd's READY=1 withheld while the PLC is not there. Real processes, real
sockets on 127.0.0.1, generous bounds."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import termios
import time
import urllib.request

import pytest
from helpers import running, station_config, wait_for
from test_reload import DaemonProcess, _station
from test_systemd import NotifySocket

from plcbridge.contract import StatusBit


@pytest.mark.serial  # bounds heartbeat gaps and overruns in real time: alone, not beside three other workers
def test_a_flood_of_idle_clients_on_the_metrics_port_does_not_stall_the_write_loop(make_sim):
    # 200 ms: the stall this guards against was a 480 ms heartbeat gap; a 100 ms watchdog also
    # fired once under make test's four workers on two cores.
    sim = make_sim("free-run", watchdog_ms=200)
    cfg = station_config(sim.port, "free-run", metrics={"enabled": True, "port": 0})
    with running(cfg) as d:
        wait_for(lambda: sim.program.seen and sim.program.seen[-1][1].status & StatusBit.READY, 30, "READY")
        port = d.http.port
        alarms = sim.summary()["heartbeat_alarms"]
        threads = len(__import__("threading").enumerate())
        socks = []
        for _ in range(200):  # half-open: connected, never a byte sent
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
        time.sleep(1.0)
        assert len(__import__("threading").enumerate()) <= threads + 2, "a thread per connection"
        for s in socks:
            s.close()
        time.sleep(0.5)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        overruns = d.loop.overruns
    assert "plcbridge_http_connections_refused_total" in body
    refused = float(next(line.split()[1] for line in body.splitlines()
                         if line.startswith("plcbridge_http_connections_refused_total")))
    assert refused > 0
    # The old thread-per-connection server stalled the loop 220 ms (PLC heartbeat gap 480 ms).
    assert sim.summary()["heartbeat_alarms"] == alarms, sim.summary()
    assert overruns <= 3, overruns


def test_sigterm_exits_within_about_a_second_when_nobody_reads_stdout(make_sim, tmp_path):
    sim = make_sim("free-run")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    cfg = tmp_path / "station.toml"
    cfg.write_text(f'[station]\nmode = "free-run"\n[camera]\nsource = "synthetic"\n[model]\nmanifest = "builtin:demo"\n[plc]\nport = {sim.port}\n[metrics]\nport = {metrics_port}\n')
    proc = subprocess.Popen([sys.executable, "-m", "plcbridge", "run", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ: the smallest pipe, full after a few lines

        def unread() -> int:
            n = bytearray(4)
            fcntl.ioctl(fd, termios.FIONREAD, n)
            return int.from_bytes(n, sys.byteorder)

        wait_for(lambda: unread() >= 4096 - 600, 30, "the daemon's stdout pipe to fill up")
        wait_for(lambda: sum(sim.summary()["results"].values()) >= 20, 30, "verdicts reaching the PLC")
        time.sleep(1.0)  # the daemon keeps logging into the full pipe meanwhile
        assert proc.poll() is None
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert "plcbridge_log_events_dropped_total" in body  # how many the full pipe cost, on /metrics
        assert "plcbridge_last_reload_ok 1.0" in body  # no reload asked for: not "refused"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0
    assert took < 2.0, f"SIGTERM took {took:.2f} s with stdout unread (it must not wait for the reader)"
    # The fail-safe block still went out before the exit.
    assert sim.summary()["bridge_state"] == "shut-down"


def test_sigterm_during_a_slow_reload_cancels_it_and_exits_at_once(make_sim, tmp_path):
    sim = make_sim("free-run")
    cfg = tmp_path / "station.toml"
    _station(cfg, sim.port, "builtin:demo", '[station]\nmode = "free-run"\n')
    d = DaemonProcess(cfg)
    try:
        wait_for(lambda: d.named("write_loop_started"), 30, "the daemon running")
        # 10,000 timed runs paced 10 ms apart: a reload check of several minutes.
        cfg.write_text(cfg.read_text().replace('manifest = "builtin:demo"',
                                               'manifest = "builtin:demo"\nlatency_check_runs = 10000'))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: d.named("reload_requested"), 10, "the reload to start")
        time.sleep(1.0)
        assert d.proc.poll() is None and not d.named("reload_applied")
        t0 = time.monotonic()
        rc = d.stop()
        took = time.monotonic() - t0
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
    assert rc == 0 and took < 3.0, took
    time.sleep(0.2)
    assert d.named("reload_cancelled"), [e["event"] for e in d.events][-10:]
    assert not d.named("reload_applied")
    final = d.named("final_write")
    assert final and final[-1]["written"] is True


def test_systemd_ready_waits_for_the_plc_and_status_says_why(make_sim, tmp_path):
    with socket.socket() as s:  # a port with no PLC behind it (yet)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ns = NotifySocket(tmp_path / "notify.sock")
    cfg = tmp_path / "station.toml"
    cfg.write_text(f'[camera]\nsource = "synthetic"\n[model]\nmanifest = "builtin:demo"\n'
                   f"[plc]\nport = {port}\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n[metrics]\nenabled = false\n")
    env = {**os.environ, "NOTIFY_SOCKET": str(ns.path)}
    proc = subprocess.Popen([sys.executable, "-m", "plcbridge", "run", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any("STATUS" in m for _, m in ns.messages), 30, "a first STATUS=")
        time.sleep(2.0)
        assert "READY" not in ns.keys(), "READY=1 while no PLC answers"
        status = [m["STATUS"] for _, m in ns.messages if "STATUS" in m][-1]
        assert status.startswith("NOT READY") and "PLC DOWN" in status, status
        make_sim("triggered", port=port)
        wait_for(lambda: "READY" in ns.keys(), 30, "READY=1 once the PLC answers")
        ready = next(m for _, m in ns.messages if "READY" in m)
        assert ready["STATUS"].startswith("ready") and "PLC up" in ready["STATUS"], ready
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        ns.close()
