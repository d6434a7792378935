"""What one PLC exchange costs, per protocol: wall time and CPU of the bridge's process.

Not a test (no test_ prefix): a benchmark that prints figures as JSON, for
docs/benchmarks.md. Each protocol's simulator runs in its own process (`plcbridge sim X`,
127.0.0.1, port 0); this process makes `--count` exchanges through the real adapter, one
every `--gap-ms`, from one thread, as the link's thread does. CPU is this process's
user + system time over the timed exchanges divided by their count, so it includes every
thread the adapter uses (asyncua's event loop thread for OPC UA). The simulator's CPU is
reported beside it: its CPU over the timed exchanges, less what it spends in the same time
with no client (its program's clock), per exchange - what the PLC side of an exchange costs
on this machine, which a real PLC does not take from the line PC.

    .venv/bin/python tests/bench_exchange.py [--count 2000] [--gap-ms 2] [--cases loop "modbus fc23"]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from plcbridge.config import load_config, parse_config
from plcbridge.contract import Outputs, StatusBit
from plcbridge.protocols import adapter_class

CASES = {  # name -> (protocol, extra [plc] settings)
    "modbus fc23": ("modbus", {"modbus": {"exchange": "fc23"}}),
    "modbus fc16+fc3": ("modbus", {"modbus": {"exchange": "fc16+fc3"}}),
    "opcua": ("opcua", {}),
    "enip": ("enip", {}),
    # The in-process PLC (plcbridge/contract/loop.py): its program runs in this process, so
    # the CPU figure includes the simulated PLC's side of each exchange.
    "loop": ("loop", {}),
}


class _InProcess:
    """The loop PLC, stopped like a simulator process."""

    def __init__(self) -> None:
        from plcbridge.simulators.device import load_device
        from plcbridge.simulators.loop import LoopSimulator

        self.sim = LoopSimulator(load_device(None, {"program.mode": "free-run"})).start()

    def terminate(self) -> None:
        self.sim.stop()

    def wait(self, timeout: float) -> None:
        pass


def _start_sim(protocol: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "plcbridge", "sim", protocol, "--port", "0", "--mode", "free-run",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"simulator {protocol} did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def _cpu_s(pid: int) -> float:
    """A process's user + system CPU seconds, all threads (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(name: str, count: int, gap_s: float) -> dict:
    protocol, extra = CASES[name]
    sim, port = (_InProcess(), 0) if protocol == "loop" else _start_sim(protocol)
    try:
        raw = load_config(None, env={}).model_dump(mode="json")
        raw["plc"] = {k: v for k, v in raw["plc"].items() if k != "modbus"} if protocol != "modbus" else raw["plc"]
        raw["plc"].update({"protocol": protocol, "port": port, **extra})
        if isinstance(sim, _InProcess):
            raw["plc"]["loop"] = {"channel": sim.sim.channel}
        settings = parse_config(raw, "<bench>", env={}).plc
        idle_s = 0.0
        if isinstance(sim, subprocess.Popen):  # the simulator's own clock, with no client
            c0, t0 = _cpu_s(sim.pid), time.monotonic()
            time.sleep(2.0)
            idle_s = (_cpu_s(sim.pid) - c0) / (time.monotonic() - t0)
        adapter = adapter_class(protocol)(settings)
        adapter.connect()
        try:
            for hb in range(50):  # warm-up: first requests, lazy imports, FC23 probe
                adapter.exchange(Outputs(heartbeat=hb, status=int(StatusBit.READY)), 1.0)
            walls = []
            sim0 = _cpu_s(sim.pid) if isinstance(sim, subprocess.Popen) else None
            cpu0, t_next = time.process_time(), time.monotonic()
            for hb in range(count):
                t0 = time.monotonic()
                adapter.exchange(Outputs(heartbeat=hb & 0xFFFF, status=int(StatusBit.READY)), 1.0)
                walls.append(time.monotonic() - t0)
                t_next += gap_s
                time.sleep(max(0.0, t_next - time.monotonic()))
            cpu = time.process_time() - cpu0
            span = time.monotonic() - (t_next - count * gap_s)
            sim_cpu = _cpu_s(sim.pid) - sim0 - idle_s * span if sim0 is not None else None
        finally:
            adapter.close()
    finally:
        sim.terminate()
        sim.wait(10)
    w = np.array(walls) * 1000
    return {"case": name, "exchanges": count, "wall_ms_p50": round(float(np.percentile(w, 50)), 3),
            "wall_ms_p99": round(float(np.percentile(w, 99)), 3), "wall_ms_max": round(float(w.max()), 3),
            "cpu_ms_per_exchange": round(cpu * 1000 / count, 3),
            "simulator_cpu_ms_per_exchange": round(sim_cpu * 1000 / count, 3) if sim_cpu is not None else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--gap-ms", type=float, default=2.0)
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = p.parse_args()
    out = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "load_avg_1m": os.getloadavg()[0],
           "results": [measure(c, args.count, args.gap_ms / 1000) for c in args.cases]}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
