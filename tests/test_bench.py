"""`plcbridge bench` and `plcbridge gate` end to end: short real runs (simulator and daemon
as subprocesses) whose reports must hold every field with sane values, and a gate that
must fail, naming each broken budget with its measured value. No test asserts a speed:
the speed goals live in docs/benchmarks.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from plcbridge.tools.bench.gate import DEFAULT_BUDGET, load_budget
from plcbridge.tools.bench.report import memory_curve
from plcbridge.tools.bench.run import BenchOptions, run_bench
from plcbridge.tools.bench.stats import cpu_seconds, dropped_frames, join_capture_to_plc, split_startup, stats_ms, vm_kib

PERCENTILES = ("p50", "p95", "p99", "max")


# ------------------------------------------------------------------ the arithmetic

def _d(seq: int, t: float, result: str = "PASS", key: str = "frame_seq") -> dict:
    return {"event": "decision", key: seq, "t_capture": t, "result": result, "latency_ms": 1.0, "infer_ms": 0.5}


def test_join_tells_wrapped_sequence_numbers_apart_by_time():
    decisions = [_d(5, 1.0), _d(65536 + 5, 700.0, "FAIL")]
    trace = [{"t": 1.012, "result_seq": 5, "result": "PASS"}, {"t": 700.009, "result_seq": 5, "result": "FAIL"},
             {"t": 700.5, "result_seq": 5, "result": "FAILSAFE"}]  # a stale episode over the same seq
    pairs = join_capture_to_plc(decisions, trace, "free-run")
    assert [(round((r["t"] - d["t_capture"]) * 1000, 3)) for d, r in pairs] == [12.0, 9.0]


def test_join_triggered_uses_trigger_seq_and_never_matches_a_decision_twice():
    decisions = [_d(1, 1.0, key="trigger_seq"), _d(2, 1.1, "FAIL", key="trigger_seq")]
    trace = [{"t": 1.02, "result_seq": 1, "result": "PASS"}, {"t": 1.03, "result_seq": 1, "result": "PASS"},
             {"t": 1.12, "result_seq": 2, "result": "FAIL"}]
    assert len(join_capture_to_plc(decisions, trace, "triggered")) == 2


def test_startup_failsafes_are_split_from_those_in_service():
    events = [{"event": "failsafe", "fault": "STALE_RESULT"}, _d(0, 1.0),
              {"event": "decision", "result": "FAILSAFE", "fault": "BAD_FRAME"}, {"event": "failsafe", "fault": "CAMERA_FAULT"}]
    before, after = split_startup(events)
    assert [e["fault"] for e in before] == ["STALE_RESULT"] and [e["fault"] for e in after] == ["BAD_FRAME", "CAMERA_FAULT"]


def test_memory_growth_is_measured_from_the_first_minute():
    curve = [{"t_s": t, "rss_kib": kib} for t, kib in ((1, 1000), (30, 5000), (60, 6024), (120, 7048))]
    assert memory_curve(curve)["rss_growth_after_1_min_mb"] == 1.0  # 7048 - 6024 KiB: start-up left out
    assert memory_curve(curve[:2])["rss_growth_after_1_min_mb"] == pytest.approx(3.91, abs=0.01)  # shorter runs: from the first point
    assert memory_curve([])["rss_growth_after_1_min_mb"] is None


def test_small_helpers():
    assert dropped_frames([_d(0, 0), _d(1, 0), _d(4, 0), _d(5, 0)]) == 2
    s = stats_ms([1, 2, 3, 4, 100])
    assert s["count"] == 5 and s["p50"] == 3 and s["max"] == 100 and s["p50"] <= s["p95"] <= s["p99"] <= s["max"]
    assert stats_ms([])["p99"] is None
    assert cpu_seconds("123 (a b) S " + " ".join(["0"] * 10) + " 250 150 0 0", 100) == 4.0
    assert vm_kib("Name:\tx\nVmHWM:\t  2048 kB\n", "VmHWM") == 2048


# ------------------------------------------------------------------ real runs

def _sane(name: str, d: dict) -> None:
    present = [k for k in PERCENTILES if d.get(k) is not None]
    values = [d[k] for k in present]
    assert values == sorted(values), f"{name}: percentiles out of order {d}"
    for k, v in d.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            assert v >= 0, f"{name}.{k} = {v}"


@pytest.fixture(scope="module")
def free_run_report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    return run_bench(BenchOptions(protocol="modbus", mode="free-run", model="builtin:demo", fps=30, seconds=5,
                                  output_dir=out, plot=True), command="test")


def test_free_run_report_has_every_field_with_sane_values(free_run_report):
    r = free_run_report
    for key in ("capture_to_plc_ms", "capture_to_decision_ms", "decision_to_plc_ms", "inference_ms"):
        assert r[key]["count"] > 100, key  # ~150 frames in 5 s at 30 fps
        assert all(r[key][k] is not None for k in ("p50", "p95", "p99", "max")), key
        _sane(key, r[key])
    assert r["trigger_to_result_ms"] is None and r["triggers"] is None  # free-run has no triggers
    wl = r["write_loop"]
    assert wl["period_ms"] == 10 and wl["ticks"] >= 450 and 0 <= wl["overruns"] < wl["ticks"]
    _sane("lateness", wl["lateness_ms"])
    assert wl["lateness_ms"]["n"] == wl["ticks"]

    f = r["frames"]
    assert 0 < f["inferred"] <= f["captured"] and f["dropped"] >= 0 and f["results_not_written"] >= 0
    assert f["inferred"] + f["dropped"] <= f["captured"]
    assert r["capture_to_plc_ms"]["count"] + f["results_not_written"] == r["results"].get("PASS", 0) + r["results"].get("FAIL", 0)
    assert 20 <= f["inferences_per_s"] <= 40

    fs = r["failsafes"]
    assert fs["in_service"] == sum(fs["in_service_by_fault"].values())
    assert fs["startup"] == sum(fs["startup_by_fault"].values())
    assert fs["in_service"] + fs["startup"] == sum(fs["daemon_total_by_fault"].values())

    res = r["resources"]
    assert 20 < res["peak_rss_mb"] < 2000 and 0 < res["mean_cpu_cores"] <= 2.5
    curve = res["memory_curve"]  # one point a second in a 5 s run
    assert 3 <= len(curve) <= 6 and [p["t_s"] for p in curve] == sorted(p["t_s"] for p in curve)
    assert all(p["rss_kib"] > 20_000 and p["fds"] > 2 and p["threads"] >= 4 for p in curve), curve
    assert res["cpu_cores_per_30_inferences_per_s"] > 0 and res["simulator_mean_cpu_cores"] >= 0
    cs = r["cold_start_s"]
    # READY=1 is sent just after the loops start, so the first result may reach the PLC a
    # few ms before READY reaches the bench: ready_to_first_result may be slightly negative.
    assert 0 < cs["to_ready"] < 60 and 0 < cs["to_first_result"] < 60
    assert cs["ready_to_first_result"] == pytest.approx(cs["to_first_result"] - cs["to_ready"], abs=0.002)

    assert r["options"]["protocol"] == "modbus" and r["model"]["name"] == "demo-defect-cnn"
    assert r["daemon_exit_code"] == 0 and r["plc"]["protocol_errors"] == 0 and r["plc"]["heartbeat_alarms"] >= 0
    assert set(r["plc_link"]) == {"reconnects", "exchange_errors", "connect_errors", "config_errors", "exchanges",
                                  "late_exchanges", "blocks_superseded", "extra_blocks", "polls", "inputs_stale_episodes"}
    assert r["plc_link"]["exchanges"] > 100
    assert all(v >= 0 for v in r["plc_link"].values())
    assert 4.5 <= r["duration_s"] <= 8
    files = r["files"]
    saved = json.loads(Path(files["report"]).read_text())
    assert saved["capture_to_plc_ms"] == r["capture_to_plc_ms"]
    assert Path(files["trace"]).stat().st_size > 0 and Path(files["daemon_log"]).stat().st_size > 0
    if files["plot"] is not None:  # the [plot] extra is optional
        assert Path(files["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib" in r["plot_skipped"]


def test_triggered_report_counts_triggers(tmp_path):
    r = run_bench(BenchOptions(mode="triggered", trigger_hz=20, seconds=3, output_dir=tmp_path, plot=False))
    t = r["triggers"]
    assert t["sent"] >= 40 and t["answered"] + t["missing"] + t["skipped"] + t["outstanding_at_end"] == t["sent"]
    assert t["overrun"] >= 0 and t["refused_queue_full"] >= 0
    _sane("trigger_to_result", r["trigger_to_result_ms"])
    assert r["trigger_to_result_ms"]["count"] == t["answered"]
    assert r["capture_to_plc_ms"]["count"] > 0 and r["frames"]["inferences_per_s"] > 0
    assert r["plot_skipped"] == "--no-plot"


def test_the_bench_can_keep_every_frame_in_the_archive_and_say_how_many(tmp_path):
    r = run_bench(BenchOptions(mode="free-run", seconds=3, output_dir=tmp_path, plot=False, archive=True))
    kept = r["side_work"]["archive"]
    assert r["side_work"]["page_open_in_browser"] is False
    decided = r["results"].get("PASS", 0) + r["results"].get("FAIL", 0)
    assert kept["bytes"] > 0 and kept["frames"] >= decided // 2 > 0, (kept, decided)  # pass_every = 1: about every frame
    assert Path(kept["path"]).is_dir() and r["files"]["report"].endswith("-archive.json")


def _gate(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plcbridge", "gate", "--output-dir", str(tmp_path), "--quiet", *args],
                          capture_output=True, text=True, timeout=120)


def test_gate_names_each_broken_budget_with_the_measured_value(tmp_path):
    # Two budgets no machine meets; the others so loose that a busy test machine meets them.
    budget = tmp_path / "impossible.toml"
    budget.write_text("p99_max_ms = 0.001\np95_max_ms = 10000\nframe_rate_fps = 30\nduration_minutes = 10\n"
                      "rss_max_mb = 1\nmax_failsafe_events = 1000\nlateness_p99_max_ms = 10000\n")
    r = _gate(["--budget", str(budget), "--duration-minutes", "0.05"], tmp_path)
    assert r.returncode == 1, r.stderr
    verdict = r.stderr  # the verdict lines go to stderr: stdout is exactly the JSON report
    broken = {line.split()[1].rstrip(":") for line in verdict.splitlines() if line.startswith("BROKEN")}
    assert broken == {"p99_max_ms", "rss_max_mb"}, verdict
    assert "BROKEN  p99_max_ms: measured " in verdict and "> limit 0.001 ms" in verdict
    assert "BROKEN  rss_max_mb: measured " in verdict and "> limit 1 MB" in verdict
    assert "ok      p95_max_ms: measured" in verdict and "<= limit 10000 ms" in verdict and "shortened run" in verdict
    assert "GATE FAILED: 2 budget(s) broken: p99_max_ms, rss_max_mb" in verdict
    report = json.loads(r.stdout)
    assert report["gate"]["passed"] is False
    assert {c["name"] for c in report["gate"]["checks"] if not c["ok"]} == {"p99_max_ms", "rss_max_mb"}


def test_gate_refuses_a_bad_budget_file(tmp_path):
    budget = tmp_path / "bad.toml"
    budget.write_text(DEFAULT_BUDGET.read_text().replace("p95_max_ms = 30", "p95_max_ms = -1") + "\nsurprise = 1\n")
    r = _gate(["--budget", str(budget)], tmp_path)
    assert r.returncode == 2
    assert "invalid budget" in r.stderr and "p95_max_ms" in r.stderr and "surprise" in r.stderr


def test_shipped_budget_is_the_reference_station():
    b = load_budget(DEFAULT_BUDGET)
    assert (b.p99_max_ms, b.p95_max_ms, b.frame_rate_fps, b.max_failsafe_events) == (45, 30, 30, 0)


def test_the_simulator_runs_at_the_niceness_it_is_given():
    """The bench gives the simulated PLC the daemon's niceness (it stands for a PLC on another
    machine); the process must really run there, not only say so."""
    from plcbridge.simulators.process import start_simulator, stop_simulator

    for niceness in (0, 5):
        proc, _port = start_simulator("free-run", 10.0, niceness=niceness)
        try:
            stat = Path(f"/proc/{proc.pid}/stat").read_text()
            assert int(stat.rsplit(")", 1)[1].split()[16]) == niceness  # field 19, nice
        finally:
            stop_simulator(proc)
