"""Where a bench run's milliseconds go, from the scheduler's view (sittings 19-22).

Input, for one probe NAME (probe.sh makes them): NAME.threads (`py-spy dump` of the daemon:
thread ids and names) and NAME.thw (`perf sched timehist -w -i NAME.perf`: every switch-out
with its wait, scheduling delay and run time, and every wake-up with its waker).

    python3 sched_probe.py NAME

Prints, per daemon thread, how long it waited runnable for a core ("sch delay"); per frame
of the inference thread, its CPU time and its waits; and for the write loop's ticks that
ran later than 0.8 ms, which thread woke it last before it ran (the GIL's holder, which
hands the GIL over with a wake-up).
"""

from __future__ import annotations

import bisect
import collections
import re
import sys

SWITCH = re.compile(r"\s*([\d.]+)\s+\[(\d+)\]\s+(.*?)\[(\d+)(?:/\d+)?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")
WAKE = re.compile(r"\s*([\d.]+)\s+\[(\d+)\]\s+(.*?)\[(\d+)(?:/\d+)?\]\s+awakened: .*\[(\d+)(?:/\d+)?\]")
PERIOD_MS = 10.0


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))] if v else 0.0


def main(name: str) -> None:
    names: dict[int, str] = {}
    for line in open(f"{name}.threads"):
        if m := re.match(r'Thread (\d+) \(\w+\): "(.*)"', line):
            names[int(m.group(1))] = m.group(2)
    tid_of = {v: k for k, v in names.items()}
    switches: dict[int, list[tuple[float, float, float, float]]] = collections.defaultdict(list)
    wakes: dict[int, list[tuple[float, str]]] = collections.defaultdict(list)
    for line in open(f"{name}.thw"):
        if m := WAKE.match(line):
            target = int(m.group(5))
            if target in names:
                wakes[target].append((float(m.group(1)) * 1000, names.get(int(m.group(4)), m.group(3).strip())))
        elif m := SWITCH.match(line):
            tid = int(m.group(4))
            if tid in names:  # (t, wait, sch delay, run), ms
                switches[tid].append((float(m.group(1)) * 1000, float(m.group(5)), float(m.group(6)), float(m.group(7))))

    print(f"{name}: waiting runnable for a core (sch delay), ms")
    for tid, ev in sorted(switches.items(), key=lambda kv: names[kv[0]]):
        sd = [e[2] for e in ev]
        print(f"  {names[tid]:32} n={len(sd):6} p50={pct(sd, .5):.3f} p99={pct(sd, .99):.3f} "
              f"max={max(sd):.3f} run={sum(e[3] for e in ev):.0f}")

    # Frames: the inference thread's run segments between two sleeps longer than 5 ms.
    frames, cur = [], None
    for t, wait, sd, run in switches[tid_of["inference"]]:
        if cur is None or wait > 5:
            if cur:
                frames.append(cur)
            cur = {"start": t - run - sd, "cpu": 0.0, "wait": 0.0, "sd": 0.0}
        else:
            cur["wait"] += wait
        cur["cpu"] += run
        cur["sd"] += sd
        cur["end"] = t
    frames = [f for f in frames if f["cpu"] > 1]
    print(f"{name}: inference per frame ({len(frames)} frames), ms")
    for key in ("cpu", "wait", "sd"):
        v = [f[key] for f in frames]
        print(f"  {key:5} p50={pct(v, .5):.2f} p90={pct(v, .9):.2f} p99={pct(v, .99):.2f}")
    print("  CPU time per frame in time order (# > 9 ms, + > 8, . > 7; 90 frames a line):")
    marks = "".join("#" if f["cpu"] > 9 else "+" if f["cpu"] > 8 else "." if f["cpu"] > 7 else " " for f in frames)
    for i in range(0, len(marks), 90):
        print("  |" + marks[i:i + 90])

    # Ticks: the write loop's deadlines share one phase of the period; find it from its wake-ups.
    wl = tid_of["write-loop"]
    wl_wakes = wakes[wl]
    phase = collections.Counter(int((t % PERIOD_MS) / 0.05) for t, _ in wl_wakes).most_common(1)[0][0] * 0.05
    wake_t = [w[0] for w in wl_wakes]
    seg = sorted((t - run, run) for t, _, _, run in switches[wl])
    seg_t = [s[0] for s in seg]
    late, holders = [], collections.Counter()
    k = int((wake_t[0] - phase) // PERIOD_MS) + 1
    while phase + k * PERIOD_MS < wake_t[-1] - PERIOD_MS:
        d = phase + k * PERIOD_MS - 0.02
        k += 1
        runs = seg[bisect.bisect_left(seg_t, d):bisect.bisect_left(seg_t, d + 4)]
        if not runs:
            continue
        start = max(runs, key=lambda s: s[1])[0]  # the tick's own run: the longest in the window
        before = [w for w in wl_wakes[bisect.bisect_left(wake_t, d):bisect.bisect_left(wake_t, d + 4)] if w[0] <= start]
        late.append(start - d)
        if start - d > 0.8 and before:
            holders[before[-1][1]] += 1
    print(f"{name}: write-loop ticks found {len(late)}, start p50={pct(late, .5):.3f} p99={pct(late, .99):.3f} ms, "
          f"> 0.8 ms: {sum(x > 0.8 for x in late)}; last waker before those ran: {holders.most_common(10)}")


if __name__ == "__main__":
    main(sys.argv[1])
