"""Recipe switch times and what the sessions cost in memory, with realistic models: a daemon
in this process against the simulated PLC (Modbus on 127.0.0.1) changing product every
`--every` seconds between recipe 1 (bench:yolo320, a YOLOv8-shaped detector) and recipe 2
(builtin:anomaly, the PaDiM anomaly model), the PLC waiting for active_recipe each time.

Two ways to keep the sessions, 3 runs each, one sitting; printed, nothing asserted:
- preloaded (recipes.max_loaded unset): every recipe's session loaded at start;
- on demand (recipes.max_loaded = 1): one session at a time, loaded when the PLC asks.

The switch time is the PLC's (the simulator's `recipes.switch_ms`: new recipe_id written ->
the first block with active_recipe equal to it and READY); the memory is the process's
resident set after start (VmRSS), against the same daemon with recipe 0 alone.

    .venv/bin/python tests/bench_recipes.py [--seconds 20] [--every 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import RecordingPlc, station_config  # noqa: E402

from plcbridge import protocols  # noqa: E402
from plcbridge.config import parse_config  # noqa: E402
from plcbridge.simulators.device import load_device  # noqa: E402
from plcbridge.tools.bench import yolo_shaped  # noqa: E402

LISTED = {"optional_inputs": ["recipe_id"], "optional_outputs": ["active_recipe", "result_recipe"]}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def simulator(seconds_between: float) -> Any:
    settings = load_device(None, {"program.mode": "triggered", "program.trigger_hz": 10.0, "modbus.host": "127.0.0.1",
                                  "modbus.port": 0, "program.watchdog_ms": 1000, "program.recipe": 1,
                                  "program.recipe_sequence": [1, 2], "program.recipe_change_every_s": seconds_between,
                                  **{f"modbus.{k}": v for k, v in LISTED.items()}})
    return protocols.frontend_class("modbus")(settings, RecordingPlc(settings.program)).start()


def run(yolo: Path, seconds: float, every: float, max_loaded: int | None) -> dict[str, Any]:
    from plcbridge.daemon import Daemon

    sim = simulator(every)
    try:
        raw = station_config(sim, plc={"modbus": LISTED}).model_dump(mode="json")
        raw["recipe"] = [{"id": 1, "name": "detector", "manifest": str(yolo)},
                         {"id": 2, "name": "anomaly", "manifest": "builtin:anomaly"}]
        raw["model"]["inference_timeout_ms"] = 500
        if max_loaded is not None:
            raw["recipes"] = {"max_loaded": max_loaded}
        before = rss_mib()
        d = Daemon(parse_config(raw, "<bench>", env={}))
        t0 = time.monotonic()
        d.start()
        start_s = time.monotonic() - t0
        after_start = rss_mib()
        time.sleep(seconds)
        peak = rss_mib()
        d.stop()
        s = sim.summary()
    finally:
        sim.stop()
    r = s["recipes"]
    return {"start_s": start_s, "rss_start_mib": after_start - before, "rss_end_mib": peak - before,
            "switch_ms": r["switch_ms"], "wrong_recipe": r["wrong_recipe"], "missing": s["missing"],
            "verdicts": r.get("verdicts_by_recipe")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="run length (default 20)")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between product changes (default 2)")
    parser.add_argument("--one", type=int, metavar="MAX_LOADED", help=argparse.SUPPRESS)  # one run, in a fresh process
    parser.add_argument("--yolo", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run(args.yolo, args.seconds, args.every, args.one or None)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        yolo = yolo_shaped.build(Path(tmp))
        for label, bound in (("preloaded", 0), ("on demand, max_loaded 1", 1)):
            runs = []
            for _ in range(3):  # each in a fresh process: its resident set is its own
                out = subprocess.run([sys.executable, __file__, "--one", str(bound), "--yolo", str(yolo), "--seconds",
                                      str(args.seconds), "--every", str(args.every)], capture_output=True, text=True,
                                     check=True)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            p50 = [r["switch_ms"].get("p50") for r in runs]
            p99 = [r["switch_ms"].get("p99") for r in runs]
            print(f"{label}: switch (PLC's view) p50 median {statistics.median(p50):.1f} ms, p99 median "
                  f"{statistics.median(p99):.1f} ms (runs p50 {p50}, p99 {p99}, max "
                  f"{[r['switch_ms'].get('max') for r in runs]}, switches {[r['switch_ms']['count'] for r in runs]}); "
                  f"start {statistics.median(r['start_s'] for r in runs):.2f} s; RSS after start "
                  f"+{statistics.median(r['rss_start_mib'] for r in runs):.0f} MiB, at the end "
                  f"+{statistics.median(r['rss_end_mib'] for r in runs):.0f} MiB; wrong_recipe "
                  f"{[r['wrong_recipe'] for r in runs]}, missing {[r['missing'] for r in runs]}", flush=True)


if __name__ == "__main__":
    main()
