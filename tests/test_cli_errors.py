"""Bad invocations of the `plcbridge` command: exit status, the first stderr line naming the
cause, and never a traceback. Plus signals (SIGTERM leaves no child behind), a closed pipe,
--version, the demo's verdict and gate's pure-JSON stdout.

Every command runs as a subprocess (`python -m plcbridge`), as CI and an operator run it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plcbridge.tools.bench.gate import DEFAULT_BUDGET, load_budget, print_gate_result

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "inference" / "models" / "demo"


def plcbridge(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plcbridge", *args], check=False, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stdout and "Traceback" not in r.stderr, r.stderr


def first_line(text: str) -> str:
    return text.splitlines()[0] if text.strip() else ""


# --- a table of bad (and one good) invocations -------------------------------------------------


def _cases(tmp: Path) -> list[tuple[str, list[str], int, list[str]]]:
    """(id, args, exit status, words the first stderr line must hold)."""
    bare = tmp / "bare"
    bare.mkdir()
    shutil.copy(DEMO_MODEL / "defect_cnn.onnx", bare / "defect_cnn.onnx")
    text = tmp / "notes.txt"
    text.write_text("not a manifest\n")
    empty = tmp / "empty"
    empty.mkdir()
    return [
        ("onnx-without-manifest", ["validate-model", str(bare / "defect_cnn.onnx"), "--runs", "3"], 2,
         ["ONNX model file, not a manifest", "pass the model's manifest.json"]),
        ("missing-path", ["validate-model", str(tmp / "nowhere"), "--runs", "3"], 2, ["no such file or directory"]),
        ("text-file", ["validate-model", str(text), "--runs", "3"], 2, ["not a model manifest"]),
        ("folder-without-manifest", ["validate-model", str(empty), "--runs", "3"], 2, ["has no manifest.json"]),
        ("unknown-builtin", ["validate-model", "builtin:no-such-model", "--runs", "3"], 2, ["no bundled model"]),
        ("demo-trigger-hz-0", ["demo", "--trigger-hz", "0"], 2, ["--trigger-hz", "positive"]),
        ("demo-seconds-negative", ["demo", "--seconds", "-5"], 2, ["--seconds", "positive"]),
        ("bench-output-dir", ["bench", "--output-dir", "/proc/forbidden", "--seconds", "1"], 2,
         ["/proc/forbidden", "output directory"]),
        ("bench-onnx-without-manifest", ["bench", "--model", str(bare / "defect_cnn.onnx"), "--seconds", "1",
                                         "--output-dir", str(tmp / "out")], 2, ["ONNX model file, not a manifest"]),
    ]


CASE_IDS = [
    "onnx-without-manifest", "missing-path", "text-file", "folder-without-manifest", "unknown-builtin",
    "demo-trigger-hz-0", "demo-seconds-negative", "bench-output-dir", "bench-onnx-without-manifest"]


@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_invocation(case: str, tmp_path: Path) -> None:
    _, args, code, words = next(c for c in _cases(tmp_path) if c[0] == case)
    r = plcbridge(*args)
    no_traceback(r)
    assert r.returncode == code, (r.returncode, r.stderr)
    line = first_line(r.stderr)
    for w in words:
        assert w in line, line
    if args[0] == "validate-model":  # the JSON report is still on stdout, for the pipeline's artifact
        report = json.loads(r.stdout)
        assert report["ok"] is False and report["bad_spec"] is True and report["failed_check"] == "manifest"


def test_validate_model_accepts_a_bare_onnx_its_manifest_names() -> None:
    r = plcbridge("validate-model", str(DEMO_MODEL / "defect_cnn.onnx"), "--runs", "3")
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] and report["manifest_path"] == str((DEMO_MODEL / "manifest.json").resolve())


def test_validate_model_bad_model_still_exits_1(tmp_path: Path) -> None:
    # A real manifest with a wrong hash: a bad model (exit 1), not a wrong path (exit 2).
    model = tmp_path / "m"
    shutil.copytree(DEMO_MODEL, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["sha256"] = "0" * 64
    (model / "manifest.json").write_text(json.dumps(manifest))
    r = plcbridge("validate-model", str(model / "defect_cnn.onnx"), "--runs", "3")
    no_traceback(r)
    assert r.returncode == 1 and json.loads(r.stdout)["failed_check"] == "sha256", r.stderr


@pytest.mark.parametrize("extra", [["--check"], []])
def test_docs_outside_the_repository(extra: list[str], tmp_path: Path) -> None:
    r = plcbridge("docs", *extra, cwd=tmp_path)
    no_traceback(r)
    assert r.returncode == 2
    line = first_line(r.stderr)
    assert "cannot read docs/plc-interface.md" in line and "repository root" in line and "--output" in line


def test_sim_opcua_on_a_busy_port() -> None:
    pytest.importorskip("asyncua")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = plcbridge("sim", "opcua", "--host", "127.0.0.1", "--port", str(port), "--seconds", "2", "--quiet")
    no_traceback(r)
    assert r.returncode == 1
    assert first_line(r.stderr).startswith(f"plcbridge sim opcua: cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["validate-model", "builtin:demo", "--runs", "3"]])
def test_a_closed_pipe_is_no_traceback(args: list[str]) -> None:
    # `plcbridge ... | head -1` with the reader gone before anything is written.
    proc = subprocess.Popen([sys.executable, "-m", "plcbridge", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    rc = proc.wait(60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    # argparse swallows the error of its own --help text (its _print_message ignores OSError)
    assert rc == 141 or (args == ["--help"] and rc == 0), (rc, err)


def test_version() -> None:
    from importlib import metadata

    r = plcbridge("--version")
    no_traceback(r)
    assert r.returncode == 0
    assert r.stdout.startswith(f"plcbridge {metadata.version('plcbridge')}")
    if (REPO / ".git").exists() and shutil.which("git"):
        assert "(git " in r.stdout


def test_gate_stdout_is_exactly_the_json_report(tmp_path: Path) -> None:
    budget = load_budget(DEFAULT_BUDGET)
    report = {"capture_to_plc_ms": {"p99": 50.0, "p95": 10.0}, "resources": {"peak_rss_mb": 100.0},
              "failsafes": {"in_service": 0}, "write_loop": {"lateness_ms": {"p99": 0.5}},
              "files": {"report": str(tmp_path / "report.json")}}
    out, err = io.StringIO(), io.StringIO()
    rc = print_gate_result(report, budget, DEFAULT_BUDGET, 0.1, shortened=True, out=out, err=err)
    assert rc == 1  # p99 50 > 45
    assert json.loads(out.getvalue())["gate"]["passed"] is False
    assert "BROKEN  p99_max_ms" in err.getvalue() and "GATE FAILED" in err.getvalue()
    assert "shortened run" in err.getvalue()
    assert json.loads((tmp_path / "report.json").read_text())["gate"]["passed"] is False


# --- the demo: verdict, and no orphans on SIGTERM ----------------------------------------------


@pytest.mark.serial  # the verdict bounds write-loop overruns at 1 %: real time, so not beside three other workers
def test_demo_summary_has_a_verdict() -> None:
    r = plcbridge("demo", "--seconds", "3")
    no_traceback(r)
    summary = json.loads(r.stdout)
    assert summary["verdict"] == {"ok": True, "problems": []}, summary["verdict"]
    assert r.returncode == 0
    # Progress for a person: no Python dicts, and each latency says what it measures.
    progress = [line for line in r.stderr.splitlines() if line.startswith("  ") and "/3 s" in line]
    assert progress and not any("{'" in line or "': " in line for line in progress), progress
    assert "PASS" in progress[-1] and "capture -> decision (latency_ms register): " in progress[-1], progress[-1]
    assert "trigger -> result, as the PLC measured it" in r.stderr and "p50" in r.stderr


@pytest.mark.serial  # as above: real time
def test_demo_with_the_anomaly_model_answers_every_trigger_and_writes_the_area() -> None:
    """`plcbridge demo --model builtin:anomaly`: the whole line with the anomaly detector; the
    simulated PLC takes the anomalous area (an optional output) and the demo reports how often
    the model agreed with the synthetic camera's ground truth."""
    r = plcbridge("demo", "--seconds", "6", "--model", "builtin:anomaly")
    no_traceback(r)
    summary = json.loads(r.stdout)
    assert summary["verdict"] == {"ok": True, "problems": []}, summary["verdict"]  # every trigger answered
    assert summary["model"]["name"] == "padim-synthetic" and summary["model"]["kind"] == "anomaly"
    assert summary["accuracy"]["labelled"] >= 20 and summary["accuracy"]["agreement"] >= 0.95, summary["accuracy"]
    details = summary["plc_simulator"]["result_details"]
    assert details["carried"] == ["anomaly_area"] and details["anomaly_area_max"] > 0, details
    assert summary["results"].get("FAIL", 0) > 0 and summary["results"].get("PASS", 0) > 0
    assert "agreement with the camera's ground truth: " in r.stderr and "target 0.95: met" in r.stderr


def test_demo_progress_line_reads_as_words() -> None:
    from plcbridge.tools.demo import latency_lines, progress_line

    line = progress_line(5.0, 20, {"PASS": 31, "FAIL": 12}, [4.0, 5.0, 6.0], 0.3, True)
    assert "results: 12 FAIL, 31 PASS" in line and "{" not in line
    assert "capture -> decision (latency_ms register): 5.0 ms (median of the last 3)" in line
    assert "PLC link: up" in line and "write-loop lateness p99: 0.30 ms" in line
    plc, bridge = latency_lines({"latency_ms": {"count": 3, "p50": 27.0, "p95": 30.0, "p99": 31.0, "max": 31.0}},
                                [4.0, 5.0, 6.0])
    assert plc.startswith("trigger -> result, as the PLC measured it") and "p50 27.0 ms" in plc
    assert bridge.startswith("capture -> decision, as the bridge measures it (the latency_ms register)")


def test_demo_verdict_rules() -> None:
    from plcbridge.tools.demo import demo_verdict

    good = {"mode": "triggered", "results": {"PASS": 5, "FAIL": 2}, "heartbeat_alarms": 0,
            "write_loop": {"ticks": 1000, "overruns": 10}, "plc_link": {"reconnects": 0},
            "plc_simulator": {"triggers_sent": 7, "missing": 0, "skipped": 0, "unaccounted": 0, "protocol_errors": 0}}
    assert demo_verdict(good, {"SHUTTING_DOWN": 1}) == {"ok": True, "problems": []}
    bad = json.loads(json.dumps(good))
    bad["write_loop"]["overruns"] = 11
    bad["plc_link"]["reconnects"] = 1
    bad["plc_simulator"]["missing"] = 2
    v = demo_verdict(bad, {"NO_FRAME": 1}, interrupted="interrupted by SIGTERM")
    assert not v["ok"] and len(v["problems"]) == 5, v


def _descendants(pid: int) -> dict[int, str]:
    """{pid: command line} of every live descendant of pid, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        found[p] = _cmdline(p) or ""
        todo += children.get(p, [])
    return found


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None


def _alive_with(pids: dict[int, str]) -> dict[int, str]:
    """Those of pids still running the same command (a pid may be reused, its command not)."""
    alive = {}
    for p, cmd in pids.items():
        now = _cmdline(p)
        if now and now == cmd:
            try:
                state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive[p] = now
    return alive


@pytest.mark.parametrize("command,ready,markers", [
    (["demo", "--seconds", "60"], "/60 s", [" sim "]),
    (["bench", "--seconds", "60", "--no-plot"], "READY after", [" sim ", " run --config"]),
])
def test_sigterm_leaves_no_children(command: list[str], ready: str, markers: list[str], tmp_path: Path) -> None:
    if command[0] == "bench":
        command = [*command, "--output-dir", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "plcbridge", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    children: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 45
        seen = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if ready in line:
                break
        assert any(ready in line for line in seen), "".join(seen)
        children = _descendants(proc.pid)  # BEFORE the signal
        for m in markers:
            assert any(m in cmd for cmd in children.values()), (m, children)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert "Traceback" not in err and "Traceback" not in out, err
        assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err)
        end = time.monotonic() + 5
        while _alive_with(children) and time.monotonic() < end:
            time.sleep(0.1)
        assert not _alive_with(children), _alive_with(children)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in _alive_with(children):  # never leave them to the next test
            os.kill(p, signal.SIGKILL)
