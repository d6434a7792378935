"""The bench report: every figure of one run, from the three processes' data.

`build_report` is the one place where the report's fields are defined (the tests check
each of them); `headline` is the few lines a person reads in the terminal.
"""

from __future__ import annotations

from typing import Any

from plcbridge.tools.bench.stats import (
    VERDICTS,
    by_fault,
    capture_time,
    capture_to_plc_ms,
    dropped_frames,
    join_capture_to_plc,
    split_startup,
    stats_ms,
)

SCHEMA = "plcbridge-bench/1"
MIB = 1024.0


def _round(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def build_report(*, options: Any, model: dict[str, Any], events: list[dict[str, Any]], trace: list[dict[str, Any]],
                 daemon_summary: dict[str, Any], sim_summary: dict[str, Any], times: dict[str, float],
                 proc: dict[str, Any], meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """(the report, the raw millisecond samples the plot draws)."""
    o = options
    t_start, t_ready, t_end = times["start"], times["ready"], times["end"]
    window = max(t_end - t_ready, 1e-9)
    decisions = [e for e in events if e.get("event") == "decision"]

    pairs = join_capture_to_plc(decisions, trace, o.mode)
    split = capture_to_plc_ms(pairs)
    to_plc, to_decided, decided_to_plc = (split[k] for k in ("capture_to_plc_ms", "capture_to_decision_ms", "decision_to_plc_ms"))

    judged = [d for d in decisions if d.get("infer_ms") is not None]
    in_window = [d for d in judged if t_ready <= (capture_time(d) or -1) <= t_end]
    inferences_per_s = len(in_window) / window

    startup, in_service = split_startup(events)
    dq = daemon_summary.get("queue_drops", {})
    first_result = next((r["t"] for r in trace if r.get("result") in VERDICTS), None)

    first, last = proc.get("first"), proc.get("last")
    cpu_cores = (last[0] - first[0]) / window if first and last else None
    sim_first, sim_last = proc.get("sim_first"), proc.get("sim_last")
    sim_cpu = (sim_last[0] - sim_first[0]) / window if sim_first and sim_last else None
    peak_kib = max((last[2] or 0) if last else 0, proc.get("peak_rss_sampled_kib") or 0) or None

    frames: dict[str, Any] = {
        "captured": daemon_summary.get("frames_captured"),
        "inferred": len(judged),
        "inferences_per_s": round(inferences_per_s, 2),
    }
    triggers: dict[str, Any] | None = None
    if o.mode == "free-run":
        verdicts = [d for d in decisions if d.get("result") in VERDICTS]
        frames.update({
            "dropped": dropped_frames(decisions),
            "dropped_daemon_counter": dq.get("frames"),
            # Judged, but a newer verdict replaced it before the next write tick (or the run ended).
            "results_not_written": len(verdicts) - len(pairs),
        })
    else:
        fs = by_fault(in_service)
        triggers = {
            "sent": sim_summary.get("triggers_sent"),
            "answered": sum((sim_summary.get("results") or {}).values()),
            "missing": sim_summary.get("missing"),
            "skipped": sim_summary.get("skipped"),
            "outstanding_at_end": sim_summary.get("outstanding"),
            "overrun": fs.get("TRIGGER_OVERRUN", 0),
            "refused_queue_full": dq.get("triggers"),
            "late_decisions": dq.get("late_decisions"),
        }

    wl = daemon_summary.get("write_loop", {})
    samples = {"capture_to_plc_ms": to_plc, "inference_ms": [d["infer_ms"] for d in judged]}
    return {
        "schema": SCHEMA,
        **{k: meta[k] for k in ("date", "command")},
        "host": meta["host"],
        "versions": meta["versions"],
        "options": {"protocol": o.protocol, "mode": o.mode, "model": o.model, "shadow": o.shadow, "fps": o.fps,
                    "trigger_hz": o.trigger_hz if o.mode == "triggered" else None,
                    "camera_trigger": (daemon_summary.get("camera") or {}).get("trigger"),
                    "seconds": o.seconds, "period_ms": o.period_ms},
        "model": {**model, "daemon": daemon_summary.get("model")},
        "duration_s": round(window, 3),
        "capture_to_plc_ms": stats_ms(to_plc),
        "capture_to_decision_ms": stats_ms(to_decided),
        "decision_to_plc_ms": stats_ms(decided_to_plc),
        "trigger_to_result_ms": _trigger_latency(sim_summary) if o.mode == "triggered" else None,
        "inference_ms": stats_ms(d["infer_ms"] for d in judged),
        # Anomaly and detection models: decoding the outputs and the rules, inside inference_ms.
        "postprocess_ms": _postprocess(judged),
        "write_loop": {
            "period_ms": wl.get("period_ms"),
            "ticks": wl.get("ticks"),
            "overruns": wl.get("overruns"),
            "lateness_ms": wl.get("lateness_ms"),
        },
        "failsafes": {
            "in_service": len(in_service),
            "in_service_by_fault": by_fault(in_service),
            # Before the first verdict a free-run daemon writes the fail-safe output by design.
            "startup": len(startup),
            "startup_by_fault": by_fault(startup),
            "daemon_total_by_fault": daemon_summary.get("failsafes_by_fault"),
        },
        "frames": frames,
        "triggers": triggers,
        "resources": {
            "peak_rss_mb": _round(peak_kib / MIB if peak_kib else None, 1),
            **memory_curve(proc.get("curve") or []),
            "mean_cpu_cores": _round(cpu_cores),
            "cpu_cores_per_30_inferences_per_s": _round(cpu_cores * 30 / inferences_per_s
                                                         if cpu_cores is not None and inferences_per_s else None),
            "simulator_mean_cpu_cores": _round(sim_cpu),
        },
        "cold_start_s": {
            "to_ready": round(t_ready - t_start, 3),
            "ready_to_first_result": _round(first_result - t_ready if first_result is not None else None),
            "to_first_result": _round(first_result - t_start if first_result is not None else None),
        },
        "results": daemon_summary.get("results"),
        "accuracy": daemon_summary.get("accuracy"),
        "plc": {k: sim_summary.get(k) for k in ("writes_seen", "results", "failsafe_faults", "protocol_errors",
                                                "heartbeat_alarms", "heartbeat_longest_gap_ms")},
        "plc_link": daemon_summary.get("plc_link"),
        "daemon_exit_code": meta.get("daemon_exit_code"),
        "files": meta["files"],
    }, samples


def memory_curve(curve: list[dict[str, Any]]) -> dict[str, Any]:
    """The daemon's RSS, fds and threads over the run, and how much RSS grew after the first
    minute (start-up allocations settle in it): a leak shows as growth that does not level off."""
    if not curve:
        return {"memory_curve": [], "rss_growth_after_1_min_mb": None}
    after = [p for p in curve if p["t_s"] >= 60] or curve
    base, last = after[0]["rss_kib"], curve[-1]["rss_kib"]
    growth = (last - base) / 1024 if base is not None and last is not None else None
    return {"memory_curve": curve, "rss_growth_after_1_min_mb": _round(growth, 2)}


def _trigger_latency(sim_summary: dict[str, Any]) -> dict[str, Any]:
    """The PLC's own figure: trigger raised -> the write that carried its result."""
    lat = sim_summary.get("latency_ms") or {}
    return {"count": lat.get("count", 0), **{k: lat.get(k) for k in ("p50", "p95", "p99", "max")}}


def headline(r: dict[str, Any]) -> list[str]:
    """A few lines for the terminal."""
    def fig(d: dict[str, Any] | None, keys: tuple[str, ...] = ("p50", "p95", "p99", "max")) -> str:
        if not d or not d.get("count", d.get("n")):
            return "no samples"
        return " / ".join(f"{d.get(k)}" for k in keys) + f" ms ({'/'.join(keys)})"

    o, res, cs = r["options"], r["resources"], r["cold_start_s"]
    lines = [
        f"{o['protocol']} {o['mode']} {r['model']['name']} {o['fps']:g} fps, {r['duration_s']:.0f} s",
        f"capture -> PLC      {fig(r['capture_to_plc_ms'])}",
        f"inference           {fig(r['inference_ms'], ('p50', 'p95', 'p99'))}",
        f"write lateness      {fig(r['write_loop']['lateness_ms'], ('p50', 'p99', 'max'))}, overruns {r['write_loop']['overruns']}",
        f"fail-safes          {r['failsafes']['in_service']} in service {r['failsafes']['in_service_by_fault']}, "
        f"{r['failsafes']['startup']} at start-up",
        f"resources           peak RSS {res['peak_rss_mb']} MB, {res['mean_cpu_cores']} cores "
        f"({r['frames']['inferences_per_s']} inferences/s)",
        f"cold start          READY {cs['to_ready']} s, first result {cs['to_first_result']} s",
        f"PLC link            {r['plc_link']}, heartbeat alarms {r['plc']['heartbeat_alarms']}, "
        f"longest heartbeat gap {r['plc']['heartbeat_longest_gap_ms']} ms",
    ]
    if r["trigger_to_result_ms"] is not None:
        lines.insert(2, f"trigger -> result   {fig(r['trigger_to_result_ms'])}")
        t = r["triggers"]
        lines.append(f"triggers            sent {t['sent']}, answered {t['answered']}, missing {t['missing']}, "
                     f"skipped {t['skipped']}, overrun {t['overrun']}")
    else:
        f = r["frames"]
        lines.append(f"frames              captured {f['captured']}, inferred {f['inferred']}, dropped {f['dropped']}")
    return lines


def _postprocess(judged: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Post-processing time (decode + rules) and its share of inference, None for a classifier."""
    post = [(d["findings"]["post_ms"], d["infer_ms"]) for d in judged
            if isinstance(d.get("findings"), dict) and d["findings"].get("post_ms") is not None]
    if not post:
        return None
    share = sum(p for p, _ in post) / max(sum(i for _, i in post), 1e-9)
    return {**stats_ms(p for p, _ in post), "share_of_inference": round(share, 4)}
