"""Several `plcbridge bench` runs together: one percentile per group of runs, taken over all
of their samples.

Not a test (no test_ prefix): a helper for docs/benchmarks.md. A 30 s triggered run has
about 290 triggers, so its p99 is its 3rd-largest trigger, and the median of three runs'
p99s moves by milliseconds from one sitting to the next. Here every sample of a group's
runs counts once: 870 triggers make a p99 of the 9th largest.

- Triggered runs: trigger -> result, from each run's PLC trace (`*-plc-trace.jsonl`, the
  `trigger_to_result_ms` of each line that answered one), nearest rank as the simulator's
  own figures.
- Free-run runs: capture -> PLC, each verdict and the write that first carried it, joined
  from the run's daemon log (`*-daemon-log.jsonl`) and PLC trace exactly as the report joins
  them (plcbridge.tools.bench.stats.join_capture_to_plc), and, as parts of it, the inference
  stage's `infer_ms` and the time from the decision to the PLC. A 30 s run at 30 fps has 900
  frames: the p99 is its 9th largest; three 60 s runs pooled make it the 54th.
- Both modes: the write loop's lateness, every tick of every run (the daemon's own samples,
  `lateness_samples_ms` in `*-daemon-summary.json`): 6,000 ticks a minute.

    .venv/bin/python tests/bench_pool.py modbus='out/modbus-*' opcua='out/opcua-*' enip='out/enip-*'
    .venv/bin/python tests/bench_pool.py off='out/off-*' both='out/both-*'

The first group is the reference for the ratios and the differences. Prints JSON.
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path
from typing import Any

from plcbridge.schedule import percentile_summary
from plcbridge.tools.bench.stats import capture_to_plc_ms, join_capture_to_plc


def _one(run_dir: Path, pattern: str) -> Path:
    found = sorted(run_dir.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"{run_dir}: expected one {pattern}, found {len(found)}")
    return found[0]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def mode_of(run_dir: Path) -> str:
    """The run's --mode, from its report."""
    reports = [p for p in run_dir.glob("*.json") if not p.name.endswith("-daemon-summary.json")]
    if len(reports) != 1:
        raise SystemExit(f"{run_dir}: expected one report (*.json), found {len(reports)}")
    return str(json.loads(reports[0].read_text(encoding="utf-8"))["options"]["mode"])


def triggers_ms(run_dir: Path) -> dict[str, list[float]]:
    """The trigger -> result of every trigger answered in one run's PLC trace."""
    trace = _jsonl(_one(run_dir, "*-plc-trace.jsonl"))
    return {"trigger_to_result_ms": [float(r["trigger_to_result_ms"]) for r in trace if r.get("trigger_to_result_ms") is not None],
            "write_lateness_ms": lateness_ms(run_dir)}


def lateness_ms(run_dir: Path) -> list[float]:
    """The write loop's lateness at every tick of one run, as the daemon measured it."""
    summary = json.loads(_one(run_dir, "*-daemon-summary.json").read_text(encoding="utf-8"))
    return [float(v) for v in summary.get("lateness_samples_ms", [])]


def frames_ms(run_dir: Path) -> dict[str, list[float]]:
    """Capture -> PLC of every verdict the PLC got in one free-run run, and its two parts."""
    decisions = [e for e in _jsonl(_one(run_dir, "*-daemon-log.jsonl")) if e.get("event") == "decision"]
    split = capture_to_plc_ms(join_capture_to_plc(decisions, _jsonl(_one(run_dir, "*-plc-trace.jsonl")), "free-run"))
    return {"capture_to_plc_ms": split["capture_to_plc_ms"],
            "inference_ms": [float(d["infer_ms"]) for d in decisions if d.get("infer_ms") is not None],
            "decision_to_plc_ms": split["decision_to_plc_ms"],
            "write_lateness_ms": lateness_ms(run_dir)}


def main(argv: list[str]) -> int:
    if not argv or any("=" not in a for a in argv):
        print(__doc__.split("\n\n")[-2], file=sys.stderr)
        return 2
    groups = []
    for arg in argv:
        name, pattern = arg.split("=", 1)
        runs = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_dir())
        if not runs:
            raise SystemExit(f"{name}: no run folders match {pattern!r}")
        modes = {mode_of(r) for r in runs}
        if len(modes) != 1:
            raise SystemExit(f"{name}: runs of both modes ({sorted(modes)}); pool one mode per group")
        per_run = [(triggers_ms if modes == {"triggered"} else frames_ms)(r) for r in runs]
        main_figure = next(iter(per_run[0]))
        if not all(run[main_figure] for run in per_run):
            raise SystemExit(f"{name}: a run has no {main_figure} (a trace from before the field, or nothing reached the PLC)")
        group: dict[str, Any] = {"group": name, "mode": modes.pop(), "runs": len(runs)}
        for figure in per_run[0]:
            pooled = [v for run in per_run for v in run[figure]]
            group[figure] = {"n": len(pooled), **percentile_summary(pooled, nearest_rank=True)}
        groups.append(group)
    ref = groups[0]
    for g in groups:  # the main figure (the first) and the lateness, against the first group
        for figure in dict.fromkeys((next(k for k in g if k.endswith("_ms")), "write_lateness_ms")):
            if figure in ref and g[figure]["n"] and ref[figure]["n"]:
                g[f"{figure[:-3]}_against_{ref['group']}"] = {
                    **{f"{k}_ratio": round(g[figure][k] / ref[figure][k], 3) for k in ("p50", "p99")},
                    **{f"{k}_diff_ms": round(g[figure][k] - ref[figure][k], 2) for k in ("p50", "p99")}}
    print(json.dumps(groups, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
