"""Trigger -> result over several `plcbridge bench` runs together: one percentile per group
of runs, taken over all of their triggers.

Not a test (no test_ prefix): a helper for docs/benchmarks.md. A 30 s triggered run has
about 290 triggers, so its p99 is its 3rd-largest trigger, and the median of three runs'
p99s moves by milliseconds from one sitting to the next. Here every trigger of a group's
runs counts once: 870 triggers make a p99 of the 9th largest. Each run's triggers come from
its PLC trace (`*-plc-trace.jsonl`, the `trigger_to_result_ms` of each line that answered
one), nearest rank as the simulator's own figures.

    .venv/bin/python tests/bench_pool.py modbus='out/modbus-*' opcua='out/opcua-*' enip='out/enip-*'

The first group is the reference for the ratios. Prints JSON.
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

from plcbridge.schedule import percentile_summary


def triggers_ms(run_dir: Path) -> list[float]:
    """The trigger -> result of every trigger answered in one run's PLC trace."""
    traces = sorted(run_dir.glob("*-plc-trace.jsonl"))
    if len(traces) != 1:
        raise SystemExit(f"{run_dir}: expected one *-plc-trace.jsonl, found {len(traces)}")
    out = []
    with traces[0].open(encoding="utf-8") as f:
        for line in f:
            v = json.loads(line).get("trigger_to_result_ms")
            if v is not None:
                out.append(float(v))
    return out


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
        per_run = [triggers_ms(r) for r in runs]
        if not all(per_run):
            raise SystemExit(f"{name}: a run has no trigger_to_result_ms in its trace (a trace from before the field, or not triggered)")
        pooled = [v for run in per_run for v in run]
        groups.append({"group": name, "runs": len(runs), "triggers": len(pooled),
                       **percentile_summary(pooled, nearest_rank=True)})
    ref = groups[0]
    for g in groups:
        g["against_" + ref["group"]] = {k: round(g[k] / ref[k], 3) for k in ("p50", "p99")}
    print(json.dumps(groups, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
