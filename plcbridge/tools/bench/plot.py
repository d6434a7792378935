"""The bench's PNG: a latency histogram and the write loop's lateness timeline, at a glance.

Needs matplotlib (the optional `[plot]` extra). `plcbridge bench` imports this module only
when it is about to plot, and skips the PNG when the import fails; the gate never needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a line PC or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_report(report: dict[str, Any], samples: dict[str, list[float]], lateness_ms: list[float], path: Path) -> Path:
    o = report["options"]
    fig, (hist, timeline) = plt.subplots(2, 1, figsize=(10, 7.5))
    fig.suptitle(f"plcbridge bench: {o['protocol']} {o['mode']}, {report['model']['name']}, "
                 f"{o['fps']:g} fps, {report['duration_s']:.0f} s ({report['date']})", fontsize=11)

    series = [("capture -> PLC", samples.get("capture_to_plc_ms") or [], "tab:blue"),
              ("inference (preprocess + run)", samples.get("inference_ms") or [], "tab:orange")]
    top = max([max(s) for _, s, _ in series if len(s)] + [1.0])
    bins = np.linspace(0, top * 1.02, 80)
    for label, values, color in series:
        if len(values):
            hist.hist(values, bins=bins, alpha=0.6, label=f"{label} (n={len(values)})", color=color)
    c = report["capture_to_plc_ms"]
    for key, style in (("p50", ":"), ("p95", "--"), ("p99", "-")):
        if c.get(key) is not None:
            hist.axvline(c[key], color="tab:blue", linestyle=style, linewidth=1, label=f"capture -> PLC {key} {c[key]} ms")
    hist.set_xlabel("ms")
    hist.set_ylabel("count")
    hist.legend(fontsize=8)
    hist.set_title("latency histogram", fontsize=10)

    period = (report["write_loop"].get("period_ms") or 10.0) / 1000
    y = np.asarray(lateness_ms, dtype=np.float64)
    x = np.arange(len(y)) * period
    timeline.plot(x, y, linewidth=0.5, color="tab:green")
    wl = report["write_loop"]
    late = wl.get("lateness_ms") or {}
    timeline.set_title(f"write-loop lateness per tick: p50 {late.get('p50')} / p99 {late.get('p99')} / "
                       f"max {late.get('max')} ms, {wl.get('overruns')} overruns", fontsize=10)
    timeline.set_xlabel("s since the write loop started (tick index x period)")
    timeline.set_ylabel("lateness, ms")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
