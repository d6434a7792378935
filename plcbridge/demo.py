"""`plcbridge demo`: the whole station on one machine, with a summary at the end.

The PLC simulator runs as a separate process (as a real PLC would be; it also keeps the
simulator's Python work off the daemon's GIL), the daemon runs in this process on the
embedded default config, the bundled model and the synthetic camera. Progress goes to
stderr once a second; the JSON summary goes to stdout.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

from plcbridge.config import load_config, parse_config

SIM_START_TIMEOUT_S = 15.0


def start_simulator(mode: str, trigger_hz: float, extra: list[str] | None = None,
                    protocol: str = "modbus") -> tuple[subprocess.Popen[str], int]:
    """Start `plcbridge sim PROTOCOL` on 127.0.0.1 with an OS-chosen port; return (process, port)."""
    cmd = [sys.executable, "-m", "plcbridge", "sim", protocol, "--host", "127.0.0.1", "--port", "0",
           "--mode", mode, "--trigger-hz", str(trigger_hz), "--quiet", *(extra or [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    end = time.monotonic() + SIM_START_TIMEOUT_S
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("listening on "):
            return proc, int(line.rsplit(":", 1)[1])
    proc.kill()
    raise RuntimeError(f"the PLC simulator did not start (exit code {proc.poll()}); command: {' '.join(cmd)}")


def _free_udp_port() -> int:
    """A UDP port on 127.0.0.1 for the emulated camera trigger wire (hardware trigger)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_simulator(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """SIGINT the simulator and parse the JSON summary it prints on the way out."""
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:  # never leave a simulator behind
        proc.kill()
        proc.communicate()
        return {"error": "the simulator did not stop within 15 s of SIGINT and was killed"}
    start = out.find("{")
    return json.loads(out[start:]) if start >= 0 else {"error": f"no summary (exit code {proc.returncode})"}


def demo_config(mode: str, port: int, protocol: str = "modbus", camera_trigger: str = "free-run",
                trigger_port: int | None = None):
    base = load_config(None).model_dump(mode="json")
    base["station"]["mode"] = mode
    base["camera"]["trigger"] = camera_trigger
    if trigger_port is not None:
        base["camera"]["trigger_port"] = trigger_port
    base["plc"]["protocol"] = protocol
    base["plc"]["port"] = port
    base["metrics"]["port"] = 0  # any free port: the demo must not collide with a running daemon
    return parse_config(base, "<demo>", env={})


def run_demo(seconds: float, mode: str, trigger_hz: float, protocol: str = "modbus", verbose: bool = False,
             camera_trigger: str = "free-run") -> int:
    from plcbridge.daemon import Daemon
    from plcbridge.logs import LogPipeline

    print(f"plcbridge demo: {protocol}, {mode}, {seconds:g} s, starting the PLC simulator ...", file=sys.stderr)
    trigger_port = _free_udp_port() if camera_trigger == "hardware" else None
    wire = ["--camera-line-port", str(trigger_port)] if trigger_port is not None else []
    sim, port = start_simulator(mode, trigger_hz, extra=wire, protocol=protocol)
    logs = LogPipeline("text", "info" if verbose else "warning", stream=sys.stderr).start()
    daemon = None
    try:
        daemon = Daemon(demo_config(mode, port, protocol, camera_trigger, trigger_port)).start()
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < seconds:
            time.sleep(min(1.0, seconds - elapsed))
            j = daemon.journal.summary()
            late = daemon.loop.lateness.summary_ms()
            print(f"  {time.monotonic() - t0:5.1f}/{seconds:g} s  results {j['results']}  "
                  f"lateness p99 {late['p99']} ms  plc {'up' if daemon.link.connected else 'DOWN'}", file=sys.stderr)
    finally:
        if daemon is not None:
            daemon.stop()
        sim_summary = stop_simulator(sim)
        logs.stop()
    s = daemon.summary()
    summary = {
        "protocol": protocol,
        "mode": mode,
        "camera_trigger": camera_trigger,
        "seconds": seconds,
        "results": s["results"],
        "accuracy": s["accuracy"],
        "failsafes_by_fault": s["failsafes_by_fault"],
        "write_loop": s["write_loop"],
        "plc_link": s.get("plc_link"),
        "trigger_to_result_ms": sim_summary.get("latency_ms"),
        "heartbeat_alarms": sim_summary.get("heartbeat_alarms"),
        "model": s["model"],
        "plc_simulator": sim_summary,
    }
    print(json.dumps(summary, indent=2))
    return 0
