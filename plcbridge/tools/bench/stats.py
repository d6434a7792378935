"""The arithmetic of `plcbridge bench`: join the daemon's decisions with the PLC's trace.

Pure functions over plain data (parsed log events, trace lines, summaries), so that the
joins and the accounting are unit-testable without starting any process.

Every time here is CLOCK_MONOTONIC in seconds: `t_capture_mono` in the daemon's `decision`
events (`t_capture` in logs from before the rename: `capture_time()` reads either) and `t` in the simulator's trace come from two processes but from one clock.
Percentiles are numpy's default (linear interpolation), as the daemon's own lateness figures.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from typing import Any, Iterable

import numpy as np

from plcbridge.schedule import percentile_summary

U16 = 0xFFFF
VERDICTS = ("PASS", "FAIL")


def capture_time(d: dict[str, Any]) -> float | None:
    """A decision event's CLOCK_MONOTONIC capture stamp (`t_capture_mono`; `t_capture` in older logs)."""
    t = d.get("t_capture_mono")
    return d.get("t_capture") if t is None else t


def stats_ms(values_ms: Iterable[float]) -> dict[str, Any]:
    """count, p50, p95, p99, max and mean of millisecond values (None figures when empty)."""
    v = np.asarray(list(values_ms), dtype=np.float64)
    mean = round(float(v.mean()), 3) if len(v) else None
    return {"count": int(len(v)), **percentile_summary(v), "mean": mean}


def split_startup(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(fail-safe events before the first PASS/FAIL decision, those after it), in log order.

    Before its first decision a free-run daemon writes the fail-safe output ("no decision
    yet") by design; that start-up episode is reported apart from fail-safes in service.
    """
    before: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []
    served = False
    for e in events:
        if e.get("event") == "decision" and e.get("result") in VERDICTS:
            served = True
        elif e.get("event") == "failsafe" or (e.get("event") == "decision" and e.get("result") == "FAILSAFE"):
            (after if served else before).append(e)
    return before, after


def by_fault(events: Iterable[dict[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(str(e.get("fault")) for e in events).items()))


def join_capture_to_plc(decisions: list[dict[str, Any]], trace: list[dict[str, Any]], mode: str) -> list[tuple[dict, dict]]:
    """(decision, trace record) pairs: each verdict and the write that first carried it.

    The key is the sequence number the PLC sees: `frame_seq` (free-run) or `trigger_seq`
    (triggered), both 16 bits on the wire. A wrapped number is told apart by time: a record
    belongs to the newest decision with that number captured before the record arrived.
    A fail-safe record (STALE_RESULT over an old verdict, say) never matches a verdict.
    """
    key = "frame_seq" if mode == "free-run" else "trigger_seq"
    by_seq: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for d in decisions:
        if d.get("result") in VERDICTS and d.get(key) is not None and capture_time(d) is not None:
            by_seq[int(d[key]) & U16].append(d)
    times = {seq: [capture_time(d) for d in ds] for seq, ds in by_seq.items()}
    pairs: list[tuple[dict, dict]] = []
    used: set[int] = set()
    for rec in trace:
        if rec.get("result") not in VERDICTS:
            continue
        seq = int(rec["result_seq"]) & U16
        candidates = by_seq.get(seq)
        if not candidates:
            continue
        i = bisect.bisect_right(times[seq], rec["t"]) - 1
        if i < 0:
            continue
        d = candidates[i]
        if id(d) in used or d["result"] != rec["result"]:
            continue
        used.add(id(d))
        pairs.append((d, rec))
    return pairs


def capture_to_plc_ms(pairs: list[tuple[dict, dict]]) -> dict[str, list[float]]:
    """Capture -> PLC of each (decision, trace record) pair, and split at the decision:
    capture -> decided (the inference stage) and decided -> the first write that carried it
    (waiting for the write loop, the exchange); the split only where the decision has its
    latency_ms. The report and tests/bench_pool.py both take their figures from here."""
    timed = [(d, (rec["t"] - capture_time(d)) * 1000) for d, rec in pairs]
    return {"capture_to_plc_ms": [ms for _, ms in timed],
            "capture_to_decision_ms": [d["latency_ms"] for d, _ in timed if d.get("latency_ms") is not None],
            "decision_to_plc_ms": [ms - d["latency_ms"] for d, ms in timed if d.get("latency_ms") is not None]}


def dropped_frames(decisions: list[dict[str, Any]]) -> int:
    """Frames the inference stage never judged: the gaps in frame_seq between decisions."""
    seqs = sorted({int(d["frame_seq"]) for d in decisions if d.get("frame_seq") is not None})
    return sum(b - a - 1 for a, b in zip(seqs, seqs[1:]) if b > a + 1)


def cpu_seconds(stat_line: str, clock_ticks: int) -> float:
    """utime + stime from one /proc/PID/stat line (the command name may hold spaces)."""
    fields = stat_line.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / clock_ticks  # fields 14 and 15 of stat(5)


def vm_kib(status_text: str, key: str) -> int | None:
    """VmHWM / VmRSS (KiB) from /proc/PID/status."""
    for line in status_text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None
