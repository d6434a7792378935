"""The PLC simulator as a separate process, for the demo, the benchmark and tests.

A real PLC is another machine; a simulator in its own process is the next best thing: its
Python work never competes with the daemon's write loop for the GIL, and stopping it is
what a PLC going away looks like. `start_simulator` waits for the `listening on HOST:PORT`
line that `plcbridge sim` prints; `stop_simulator` SIGINTs it and parses its JSON summary.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

SIM_START_TIMEOUT_S = 15.0


def start_simulator(mode: str, trigger_hz: float, extra: list[str] | None = None,
                    protocol: str = "modbus", niceness: int = 0) -> tuple[subprocess.Popen[str], int]:
    """Start `plcbridge sim PROTOCOL` on 127.0.0.1 with an OS-chosen port; return (process, port).

    `niceness`: the process's (below 0 needs root; subprocess.SubprocessError otherwise). A
    benchmark gives the simulator the daemon's: it stands for a PLC on another machine, and
    below the daemon it would wait for a CPU behind the daemon's side work, its timestamps
    carrying that wait."""
    cmd = [sys.executable, "-m", "plcbridge", "sim", protocol, "--host", "127.0.0.1", "--port", "0",
           "--mode", mode, "--trigger-hz", str(trigger_hz), "--quiet", *(extra or [])]
    # Its own session: a Ctrl-C at the terminal reaches only this process, which stops the
    # daemon first and then the simulator (stop_simulator), so the daemon never sees its PLC vanish.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=(lambda: os.nice(niceness)) if niceness else None)
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


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 for the emulated camera trigger wire (hardware trigger)."""
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
