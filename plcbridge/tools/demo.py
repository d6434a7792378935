"""`plcbridge demo`: the whole station on one machine, with a summary at the end.

The PLC simulator runs as a separate process (as a real PLC would be; it also keeps the
simulator's Python work off the daemon's GIL), the daemon runs in this process on the
embedded default config, the bundled model and the synthetic camera. Progress goes to
stderr once a second; the JSON summary goes to stdout.

The summary's `verdict` says whether the run was healthy: `{"ok": bool, "problems": [...]}`,
each problem one sentence; the exit status is 1 when it is not ok. The rules:

- no verdict (PASS/FAIL) was written at all;
- triggered mode: a trigger the simulator saw no answer for (`missing`), skipped, or
  otherwise unaccounted for, or no trigger raised at all;
- protocol errors or heartbeat alarms seen by the simulated PLC;
- fail-safes in service: any fail-safe after the first PASS/FAIL verdict, except
  SHUTTING_DOWN (the final answer at stop); the fail-safe output a free-run daemon writes
  before its first decision ("no decision yet") is the start-up one and is expected;
- write-loop overruns above 1 % of the ticks (OVERRUN_MAX_FRACTION);
- PLC link reconnects (the simulator is on the same machine: there is no reason for one);
- the simulator's summary is missing (it did not stop cleanly);
- the run was interrupted (SIGINT/SIGTERM): then the exit status is 130/143, not 1.

SIGINT and SIGTERM stop the run cleanly: the daemon and the simulator process are stopped,
the summary of what ran is printed, and the exit status is 128 + the signal number.
"""

from __future__ import annotations

import collections
import json
import signal
import sys
import threading
import time
from typing import Any

from plcbridge import protocols
from plcbridge.config import load_config, parse_config
from plcbridge.schedule import percentile_summary
from plcbridge.simulators.process import free_udp_port, start_simulator, stop_simulator

OVERRUN_MAX_FRACTION = 0.01  # verdict: write-loop overruns above 1 % of ticks are a problem


def result_details(model: str | None) -> list[str]:
    """The optional outputs the PLC gets for this model's kind (docs/plc-interface.md): what
    the demo's simulated PLC and bridge both carry. A model that does not load: none (the
    daemon then says why, as it would on a station)."""
    from plcbridge.inference.errors import ModelError
    from plcbridge.inference.manifest import load_manifest

    try:
        kind = load_manifest(model or "builtin:demo")[0].kind
    except ModelError:
        return []
    return {"anomaly": ["anomaly_area"], "detection": ["defect_count", "defect_class"],
            "segmentation": ["defect_count", "defect_class"]}.get(kind, [])


def demo_config(mode: str, port: int, protocol: str = "modbus", camera_trigger: str | None = None,
                trigger_port: int | None = None, model: str | None = None, optional_outputs: list[str] | None = None):
    """The embedded default station for `mode`; camera_trigger None: the station's default
    (software when triggered, see camera.trigger); model None: the station's (builtin:demo)."""
    base = load_config(None).model_dump(mode="json")
    base["station"]["mode"] = mode
    if model is not None:
        base["model"]["manifest"] = model
    base["camera"].pop("trigger")
    if camera_trigger is not None:
        base["camera"]["trigger"] = camera_trigger
    if trigger_port is not None:
        base["camera"]["trigger_port"] = trigger_port
    base["plc"] = {k: v for k, v in base["plc"].items() if k not in protocols.NAMES}  # the default's section
    base["plc"]["protocol"] = protocol
    base["plc"]["port"] = port
    if optional_outputs:
        base["plc"][protocol] = {"optional_outputs": optional_outputs}
    base["metrics"]["port"] = 0  # any free port: the demo must not collide with a running daemon
    return parse_config(base, "<demo>", env={})


class _FailsafeTimeline:
    """Wraps the daemon's journal to tell the start-up fail-safe (before the first PASS/FAIL
    verdict) from fail-safes in service, which the journal's counts do not; and keeps the
    bridge's own latency of each verdict (capture -> decision: what the PLC reads in the
    latency_ms register) for the progress lines."""

    def __init__(self, journal: Any) -> None:
        self._lock = threading.Lock()
        self.served = False
        self.startup: collections.Counter[str] = collections.Counter()
        self.in_service: collections.Counter[str] = collections.Counter()
        self.capture_to_decision_ms: collections.deque[float] = collections.deque(maxlen=10_000)
        decision, episode = journal.decision, journal.failsafe_episode

        def on_decision(d: Any) -> None:
            if d.is_failsafe:
                self._count(d.fault.name)
            elif d.result.name in ("PASS", "FAIL"):
                with self._lock:
                    self.served = True
                if d.t_capture is not None:
                    self.capture_to_decision_ms.append((d.t_decided - d.t_capture) * 1000)
            decision(d)

        def on_episode(fault: Any, reason: str, **fields: Any) -> None:
            self._count(fault.name)
            episode(fault, reason, **fields)

        journal.decision, journal.failsafe_episode = on_decision, on_episode

    def _count(self, fault: str) -> None:
        with self._lock:
            (self.in_service if self.served else self.startup)[fault] += 1


def progress_line(elapsed: float, seconds: float, results: dict[str, int], capture_to_decision_ms: list[float],
                  lateness_p99_ms: float | None, plc_up: bool) -> str:
    """The once-a-second line on stderr, for a person: counts in words, and the latency the
    bridge measures labelled as such (the PLC's own trigger -> result figure is in the summary)."""
    counts = ", ".join(f"{n} {name}" for name, n in sorted(results.items())) or "none yet"
    recent = capture_to_decision_ms[-50:]
    latency = f"{sorted(recent)[len(recent) // 2]:.1f} ms (median of the last {len(recent)})" if recent else "-"
    lateness = "-" if lateness_p99_ms is None else f"{lateness_p99_ms:.2f} ms"
    return (f"  {elapsed:5.1f}/{seconds:g} s | results: {counts} | capture -> decision (latency_ms register): "
            f"{latency} | write-loop lateness p99: {lateness} | PLC link: {'up' if plc_up else 'DOWN'}")


def latency_lines(sim_summary: dict[str, Any], capture_to_decision_ms: list[float]) -> list[str]:
    """The two latencies of a run, each saying what it measures."""
    plc = sim_summary.get("latency_ms") or {}
    bridge = percentile_summary(capture_to_decision_ms)

    def figures(f: dict[str, Any]) -> str:
        return "-" if f.get("p50") is None else f"p50 {f['p50']:.1f} ms, p99 {f['p99']:.1f} ms, max {f['max']:.1f} ms"

    return [f"trigger -> result, as the PLC measured it (trigger raised to answer read; the simulator's "
            f"trigger->result): {figures(plc)}",
            f"capture -> decision, as the bridge measures it (the latency_ms register): {figures(bridge)}"]


def demo_verdict(summary: dict[str, Any], in_service_failsafes: dict[str, int],
                 interrupted: str | None = None) -> dict[str, Any]:
    """{"ok": bool, "problems": [...]} by the rules in the module docstring."""
    problems: list[str] = []
    sim = summary.get("plc_simulator") or {}
    results = summary.get("results") or {}
    if interrupted:
        problems.append(f"the run was {interrupted}")
    if "error" in sim:
        problems.append(f"PLC simulator: {sim['error']}")
    if not results.get("PASS", 0) + results.get("FAIL", 0):
        problems.append("no PASS/FAIL verdict was written")
    if summary.get("mode") == "triggered" and "error" not in sim:
        if not sim.get("triggers_sent"):
            problems.append("the simulated PLC raised no trigger")
        for key in ("missing", "skipped", "unaccounted"):
            if sim.get(key):
                problems.append(f"{sim[key]} trigger(s) {key} (seen by the simulated PLC)")
    if sim.get("protocol_errors"):
        problems.append(f"{sim['protocol_errors']} protocol error(s): {sim.get('protocol_errors_by_kind')}")
    if summary.get("heartbeat_alarms"):
        problems.append(f"{summary['heartbeat_alarms']} heartbeat alarm(s) at the simulated PLC")
    failsafes = {k: v for k, v in in_service_failsafes.items() if k != "SHUTTING_DOWN"}
    if failsafes:
        problems.append(f"{sum(failsafes.values())} fail-safe(s) in service (after the first verdict): {failsafes}")
    loop = summary.get("write_loop") or {}
    ticks, overruns = loop.get("ticks") or 0, loop.get("overruns") or 0
    if overruns > OVERRUN_MAX_FRACTION * max(ticks, 1):
        problems.append(f"{overruns} write-loop overruns in {ticks} ticks (more than {OVERRUN_MAX_FRACTION:.0%})")
    reconnects = (summary.get("plc_link") or {}).get("reconnects") or 0
    if reconnects:
        problems.append(f"{reconnects} PLC reconnect(s)")
    return {"ok": not problems, "problems": problems}


# The agreement with the synthetic camera's ground truth a bundled model is trained for.
AGREEMENT_TARGET = 0.95


def agreement_line(accuracy: dict[str, Any], model: dict[str, Any]) -> str:
    """How often the model agreed with the synthetic camera's ground truth (every synthetic
    frame knows whether it drew a defect), against the target the bundled models are trained to."""
    labelled, agreement = accuracy.get("labelled") or 0, accuracy.get("agreement")
    name = f"{model.get('name')} v{model.get('version')}"
    if not labelled or agreement is None:
        return f"agreement with the camera's ground truth: no labelled verdict ({name})"
    met = "met" if agreement >= AGREEMENT_TARGET else "NOT met"
    return (f"agreement with the camera's ground truth: {agreement:.3f} over {labelled} verdicts ({name}; "
            f"target {AGREEMENT_TARGET:g}: {met})")


def run_demo(seconds: float, mode: str, trigger_hz: float, protocol: str = "modbus", verbose: bool = False,
             camera_trigger: str | None = None, model: str | None = None) -> int:
    from plcbridge.daemon import Daemon
    from plcbridge.logs import LogPipeline
    from plcbridge.tools.bench.run import StopSignals

    with StopSignals() as stop:  # SIGINT/SIGTERM: stop the daemon and the simulator, then exit
        print(f"plcbridge demo: {protocol}, {mode}, {seconds:g} s, model {model or 'builtin:demo'}, starting the PLC "
              "simulator ...", file=sys.stderr)
        trigger_port = free_udp_port() if camera_trigger == "hardware" else None
        wire = ["--camera-line-port", str(trigger_port)] if trigger_port is not None else []
        details = result_details(model)
        if details:
            wire += ["--optional-outputs", ",".join(details)]
        try:
            sim, port = start_simulator(mode, trigger_hz, extra=wire, protocol=protocol)
        except RuntimeError as e:
            print(f"plcbridge demo: {e}", file=sys.stderr)
            return 1
        logs = LogPipeline("text", "info" if verbose else "warning", stream=sys.stderr).start()
        daemon = None
        try:
            if stop.signum is None:
                daemon = Daemon(demo_config(mode, port, protocol, camera_trigger, trigger_port, model, details))
                timeline = _FailsafeTimeline(daemon.journal)
                daemon.start()
                t0 = time.monotonic()
                while (elapsed := time.monotonic() - t0) < seconds:
                    if stop.wait(min(1.0, seconds - elapsed)):
                        break
                    print(progress_line(time.monotonic() - t0, seconds, daemon.journal.summary()["results"],
                                        list(timeline.capture_to_decision_ms), daemon.loop.lateness.summary_ms()["p99"],
                                        daemon.link.connected), file=sys.stderr, flush=True)
        finally:
            if daemon is not None:
                daemon.stop()
            sim_summary = stop_simulator(sim)
            logs.stop()
    interrupted = None if stop.signum is None else f"interrupted by {signal.Signals(stop.signum).name}"
    if interrupted:
        print(f"plcbridge demo: {interrupted}; the daemon and the simulator were stopped", file=sys.stderr)
    if daemon is None:
        return 128 + (stop.signum or 0)
    s = daemon.summary()
    summary = {
        "protocol": protocol,
        "mode": mode,
        "camera_trigger": daemon.config.camera.trigger,
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
    summary["verdict"] = demo_verdict(summary, dict(timeline.in_service), interrupted)
    summary["failsafes_at_startup"] = dict(timeline.startup)
    for line in latency_lines(sim_summary, list(timeline.capture_to_decision_ms)):
        print(f"plcbridge demo: {line}", file=sys.stderr)
    print(f"plcbridge demo: {agreement_line(s['accuracy'], s['model'])}", file=sys.stderr)
    print(json.dumps(summary, indent=2))
    if interrupted:
        return 128 + (stop.signum or 0)
    if not summary["verdict"]["ok"]:
        print("plcbridge demo: NOT OK: " + "; ".join(summary["verdict"]["problems"]), file=sys.stderr)
        return 1
    return 0
