"""systemd integration: sd_notify over a real AF_UNIX datagram socket, the watchdog tied
to the write loop, and the unit file checked by systemd-analyze where systemd is installed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import running, station_config, wait_for

from plcbridge.sdnotify import Notifier, NotifyListener

ROOT = Path(__file__).resolve().parents[1]


class NotifySocket(NotifyListener):
    """The daemon's sd_notify datagrams as a test reads them."""

    def keys(self) -> list[str]:
        """The message kinds in order, WATCHDOG runs collapsed to one entry."""
        out: list[str] = []
        for _, m in self.messages:
            kind = next((k for k in ("READY", "RELOADING", "STOPPING", "WATCHDOG") if k in m), "STATUS")
            if not (kind == "WATCHDOG" and out and out[-1] == "WATCHDOG"):
                out.append(kind)
        return out


def test_notify_sequence_ready_watchdog_reload_stopping(make_sim, tmp_path):
    sim = make_sim("triggered", trigger_hz=10)
    ns = NotifySocket(tmp_path / "notify.sock")
    cfg = tmp_path / "station.toml"
    cfg.write_text(f'[camera]\nsource = "synthetic"\n[model]\nmanifest = "builtin:demo"\n[plc]\nport = {sim.port}\n[metrics]\nenabled = false\n')
    env = {**os.environ, "NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "200000"}
    proc = subprocess.Popen([sys.executable, "-m", "plcbridge", "run", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "READY" in ns.keys(), 30, "READY=1")
        wait_for(lambda: ns.keys().count("WATCHDOG") >= 1 and len([m for _, m in ns.messages if "WATCHDOG" in m]) >= 3,
                 5, "watchdog pings")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: ns.keys().count("READY") >= 2, 30, "READY=1 after the reload")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        ns.close()
    kinds = [k for k in ns.keys() if k != "STATUS"]
    assert [k for k in kinds if k != "WATCHDOG"] == ["READY", "RELOADING", "READY", "STOPPING"], kinds
    assert "WATCHDOG" in kinds[kinds.index("READY"):kinds.index("RELOADING")], kinds  # pinging while serving
    ready = next(m for _, m in ns.messages if "READY" in m)
    assert "STATUS" in ready and "model v1" in ready["STATUS"]
    reloading = next(m for _, m in ns.messages if "RELOADING" in m)
    assert int(reloading["MONOTONIC_USEC"]) > 0
    # MONOTONIC_USEC is CLOCK_MONOTONIC: the same clock as this process's time.monotonic().
    t_recv = next(t for t, m in ns.messages if "RELOADING" in m)
    assert abs(int(reloading["MONOTONIC_USEC"]) / 1e6 - t_recv) < 1.0


def test_watchdog_pings_stop_while_the_write_loop_is_blocked(make_sim, tmp_path):
    sim = make_sim("free-run")
    ns = NotifySocket(tmp_path / "notify.sock")
    notifier = Notifier(env={"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "100000"})  # ping every 50 ms
    gate = threading.Event()
    gate.set()
    try:
        with running(station_config(sim.port, "free-run")) as d:
            pass  # warm-up run to load everything once
        from plcbridge.daemon import Daemon

        d = Daemon(station_config(sim.port, "free-run"), notifier=notifier).start()
        try:
            wait_for(lambda: len([1 for _, m in ns.messages if "WATCHDOG" in m]) >= 5, 5, "pings while ticking")
            real_tick = d.inspection.tick

            def stuck(now, health):  # the write loop's own call, blocked as a hung driver would block it
                gate.wait()
                return real_tick(now, health)

            d.inspection.tick = stuck
            gate.clear()
            time.sleep(0.1)
            t_blocked = time.monotonic()
            time.sleep(0.5)
            pings_while_blocked = [t for t, m in ns.messages if "WATCHDOG" in m and t > t_blocked]
            gate.set()
            d.inspection.tick = real_tick
            t_released = time.monotonic()
            wait_for(lambda: any(t > t_released for t, m in ns.messages if "WATCHDOG" in m), 2, "pings after release")
        finally:
            gate.set()
            d.stop()
    finally:
        notifier.close()
        ns.close()
    assert pings_while_blocked == [], "no WATCHDOG=1 may be sent while the write loop is stuck"


def test_notifier_without_systemd_is_a_no_op():
    n = Notifier(env={})
    assert n.watchdog_interval_s is None
    assert n.ready("x") is False and n.status("x") is False and n.watchdog() is False


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed on this machine")
def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    unit = (ROOT / "systemd" / "plcbridge.service").read_text()
    # verify checks that ExecStart exists: point it at this checkout's installed entry point.
    exe = Path(sys.executable).with_name("plcbridge")
    assert "ExecStart=/opt/plcbridge/venv/bin/plcbridge " in unit
    (tmp_path / "plcbridge.service").write_text(unit.replace("/opt/plcbridge/venv/bin/plcbridge", str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "plcbridge.service")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "plcbridge.service" not in r.stderr, r.stderr  # no warnings about our unit either
    for key in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "Restart=on-failure", "ExecReload=",
                "TimeoutStopSec=", "ProtectSystem=strict", "CapabilityBoundingSet=\n", "MemoryMax=", "User=plcbridge"):
        assert key in unit, key
