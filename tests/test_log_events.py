"""Logs a technician can filter: every line on stdout+stderr is one JSON object with a fixed
`event` name, native OpenCV/FFmpeg output is carried inside events, flapping status is
rate-limited without losing the state, one fail-safe shape, a readable text format, and
build/process metrics."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import subprocess
import sys
import time

import pytest
from helpers import read_metric, wait_for

from plcbridge.config import FailsafeSettings, TimingSettings
from plcbridge.contract import FaultCode, StatusBit
from plcbridge.decision import Request, failsafe
from plcbridge.inspection import FreeRunInspection, Health
from plcbridge.journal import Journal
from plcbridge.logs import LogPipeline, get_logger, log_event, text_value
from plcbridge.metrics import Metrics
from plcbridge.writeloop import StatusLog, StatusReport

EVENT_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def _run_daemon(config_text: str, tmp_path, until, seconds_after: float) -> list[str]:
    """`plcbridge run`, stdout and stderr merged as journald sees them; SIGTERM; the lines."""
    cfg = tmp_path / "station.toml"
    cfg.write_text(config_text)
    out = (tmp_path / "out.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "plcbridge", "run", "--config", str(cfg)],
                            stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        until()
        time.sleep(seconds_after)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out.seek(0)
    lines = out.read().splitlines()
    out.close()
    assert proc.returncode == 0, lines[-20:]
    return lines


def _parse_all(lines: list[str]) -> list[dict]:
    events = []
    for line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(obj, dict), line
        assert EVENT_NAME.match(str(obj.get("event", ""))), f"event name not fixed/snake_case: {line!r}"
        events.append(obj)
    return events


def test_daemon_output_with_stderr_merged_is_all_json_with_fixed_event_names(make_sim, tmp_path):
    sim = make_sim("triggered", trigger_hz=20)
    plc = sim.program
    lines = _run_daemon(
        f'[camera]\nsource = "synthetic"\n[model]\nmanifest = "builtin:demo"\n[plc]\nport = {sim.port}\n'
        '[metrics]\nenabled = false\n[logging]\nformat = "json"\n', tmp_path,
        lambda: wait_for(lambda: sum(sim.summary()["results"].values()) >= 10, 40, "answered triggers"), 0.5)
    events = _parse_all(lines)
    names = {e["event"] for e in events}
    assert {"decision", "status_changed", "final_write"} <= names
    decisions = [e for e in events if e["event"] == "decision" and e["result"] in ("PASS", "FAIL")]
    assert decisions
    for d in decisions:  # monotonic stamps are named as such; ts is the wall clock
        assert "t_capture" not in d and "t_trigger" not in d
        assert isinstance(d["t_capture_mono"], float) and isinstance(d["t_trigger_mono"], float)
        assert abs(d["ts"] - time.time()) < 600
    status = [e for e in events if e["event"] == "status_changed"]
    assert all(isinstance(e["status"], list) for e in status)
    assert plc.seen


@pytest.mark.parametrize("url", ["rtsp://user:secret@127.0.0.1:1/x", "/nonexistent/clip.mp4"])
def test_opencv_camera_failures_keep_stderr_json_and_carry_the_cause(url, make_sim, tmp_path):
    sim = make_sim("free-run")
    seen: list[str] = []

    def opened_failed_logged():
        text = (tmp_path / "out.log").read_text() if (tmp_path / "out.log").exists() else ""
        seen[:] = [x for x in text.splitlines() if "camera_open_failed" in x]
        return seen

    lines = _run_daemon(
        f'[station]\nmode = "free-run"\n[camera]\nsource = "opencv"\nurl = "{url}"\nbackend = "ffmpeg"\n'
        f'[model]\nmanifest = "builtin:demo"\n[plc]\nport = {sim.port}\n[metrics]\nenabled = false\n'
        '[logging]\nformat = "json"\n', tmp_path,
        lambda: wait_for(opened_failed_logged, 40, "camera_open_failed"), 0.3)
    events = _parse_all(lines)
    failed = [e for e in events if e["event"] == "camera_open_failed"]
    assert failed
    reason = failed[0]["reason"]
    assert "backend ffmpeg" in reason
    assert "secret" not in "\n".join(lines)  # the password never reaches the journal
    if url.startswith("rtsp"):
        assert "user:***@127.0.0.1:1" in reason
        assert "Connection refused" in reason, reason  # what FFmpeg said, inside the event
    else:
        assert "no such file" in reason
    # A free-run fail-safe episode has the decision shape.
    episodes = [e for e in events if e["event"] == "decision" and e.get("episode")]
    assert episodes and episodes[0]["result"] == "FAILSAFE" and episodes[0]["fault"]


# ------------------------------------------------------------------------------ unit tests


def _capture(fmt: str = "json", rate_limit_s: float = 5.0):
    out = io.StringIO()
    return out, LogPipeline(fmt, "info", rate_limit_s=rate_limit_s, stream=out).start()


def test_text_format_reads_as_text_not_python_reprs():
    out, p = _capture("text")
    log_event(get_logger("writeloop"), "status_changed", logging.WARNING, raised=["READY", "CAMERA_OK"], cleared=[],
              fault="NONE", reason="camera unplugged", score=0.912345, latency_ms=12.3456, ok=True, none=None,
              counts={"PASS": 3, "FAIL": 1}, path="/tmp/a b.png", quote='say "x"')
    p.stop()
    line = out.getvalue().strip()
    assert "['" not in line and "{'" not in line and "True" not in line and "None" not in line
    for part in ("raised=READY,CAMERA_OK", "cleared=-", "fault=NONE", 'reason="camera unplugged"', "score=0.912",
                 "latency_ms=12.346", "ok=true", "none=-", "counts=PASS:3,FAIL:1", 'path="/tmp/a b.png"',
                 r'quote="say \"x\""'):
        assert part in line, (part, line)
    assert text_value(1234567.891234) == "1234567.891" and text_value(2.0) == "2" and text_value(0.000123456) == "0.000123"


def _status_lines(out: io.StringIO) -> list[dict]:
    return [e for e in map(json.loads, out.getvalue().splitlines()) if e["event"] == "status_changed"]


_UP = int(StatusBit.READY | StatusBit.CAMERA_OK | StatusBit.MODEL_OK | StatusBit.PLC_INPUTS_OK)
_DOWN = int(StatusBit.MODEL_OK | StatusBit.PLC_INPUTS_OK)


def _bits(names: list[str]) -> int:
    return sum(int(StatusBit[n]) for n in names)


def _assert_every_line_follows_the_one_before(lines: list[dict], start: int = 0) -> None:
    """Each line's raised/cleared is exactly the change from the previous line's status: no
    transition a reader cannot see (a READY raised between two "cleared READY" lines)."""
    prev = start
    for e in lines:
        now = _bits(e["status"])
        assert _bits(e["raised"]) == now & ~prev and _bits(e["cleared"]) == prev & ~now, (e, prev)
        prev = now


def test_flapping_status_is_merged_and_every_line_says_the_change_from_the_line_before():
    out, p = _capture(rate_limit_s=60)  # the pipeline's own limiter has no say over status_changed
    status_log = StatusLog(window_s=0.3)
    old, t = 0, 100.0
    status_log.change(old, _UP, FaultCode.NONE, t)
    old = _UP
    for i in range(43):  # the flapping camera: 43 changes within the window, ending down
        new = _DOWN if i % 2 == 0 else _UP
        t += 0.001
        status_log.change(old, new, FaultCode.CAMERA_FAULT if new == _DOWN else FaultCode.NONE, t)
        old = new
    status_log.due(t + 0.1)  # within the window: nothing yet, so this line merges the next change too
    status_log.change(old, _UP, FaultCode.NONE, t + 0.2)
    status_log.change(_UP, _DOWN, FaultCode.CAMERA_FAULT, t + 0.25)
    t += 0.25
    status_log.due(t + 0.1)  # the window of the first merged change has ended: written
    p.stop()
    lines = _status_lines(out)
    assert len(lines) == 3, lines
    _assert_every_line_follows_the_one_before(lines)
    assert sum(e.get("merged", 1) for e in lines) == 46  # every change accounted for
    last = lines[-1]
    assert last["status"] == ["MODEL_OK", "PLC_INPUTS_OK"] and last["fault"] == "CAMERA_FAULT"  # the state now
    assert last["merged"] == 44 and "rate-limited" in last["note"] and "net change" in last["note"]
    # Each line carries the monotonic time of the block it reports: ordered among the decisions.
    assert [e["t_block_mono"] for e in lines] == sorted(e["t_block_mono"] for e in lines)
    assert last["t_block_mono"] == round(t, 6) and last["t_first_mono"] == round(100.002, 6)


def test_a_change_of_another_kind_is_written_at_once_with_the_merged_ones():
    out, p = _capture()
    report = StatusReport(Metrics(), _Link(), 100, log_window_s=60)
    plc_down = int(StatusBit.MODEL_OK | StatusBit.CAMERA_OK)
    report.block(_UP, FaultCode.NONE, True, 1.0)
    report.block(_DOWN, FaultCode.CAMERA_FAULT, False, 1.1)  # CAMERA_OK, READY: written
    report.block(_UP, FaultCode.NONE, True, 1.2)  # the same bits: merged
    report.block(plc_down, FaultCode.PLC_INPUTS_STALE, True, 1.3)  # PLC_INPUTS_OK, READY: another kind, now
    report.block(plc_down, FaultCode.PLC_INPUTS_STALE, True, 1.4)
    report.final(0, FaultCode.SHUTTING_DOWN, 1.5)  # the final block: written whatever the window
    p.stop()
    lines = _status_lines(out)
    _assert_every_line_follows_the_one_before(lines)
    assert [e.get("merged", 1) for e in lines] == [1, 1, 2, 1]
    assert lines[2]["status"] == ["CAMERA_OK", "MODEL_OK"] and lines[2]["t_block_mono"] == 1.3
    assert lines[-1]["status"] == [] and lines[-1]["fault"] == "SHUTTING_DOWN"


class _Link:
    connected = True
    delivering = True
    last_error = None


def test_failsafe_has_one_shape_in_both_modes():
    out, p = _capture()
    m = Metrics()
    j = Journal(m, "st")
    ins = FreeRunInspection(TimingSettings(max_result_age_ms=100), FailsafeSettings(), lambda: None, j, m)
    for t in (0.0, 0.01, 0.02):  # one episode: one line, counted once
        ins.tick(t, Health(camera_ok=True, model_ok=True, model_version=3))
    j.decision(failsafe(FaultCode.INFERENCE_TIMEOUT, 1.0, "no answer in time", model_version=3,
                        request=Request(trigger_seq=5, part_id=77, t_seen=0.5)))
    p.stop()
    fs = [e for e in map(json.loads, out.getvalue().splitlines()) if e.get("result") == "FAILSAFE"]
    assert [e["event"] for e in fs] == ["decision", "decision"]
    free, trig = fs
    for e in fs:
        assert e["level"] == "warning" and e["station"] == "st" and e["reason"] and e["fault"]
    assert free["episode"] is True and free["fault"] == "STALE_RESULT" and free["reason"] == "no decision yet"
    assert "episode" not in trig and trig["trigger_seq"] == 5 and trig["t_trigger_mono"] == 0.5
    assert j.failsafes == {"STALE_RESULT": 1, "INFERENCE_TIMEOUT": 1} and j.results == {"FAILSAFE": 2}
    assert read_metric(m, "plcbridge_failsafe_total", fault="STALE_RESULT") == 1
    assert read_metric(m, "plcbridge_decisions_total", result="FAILSAFE") == 2


def test_metrics_have_build_info_and_process_metrics():
    text = Metrics().exposition().decode()
    assert re.search(r'^plcbridge_build_info\{commit="[^"]+",version="[^"]+"\} 1\.0$', text, re.M)
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "process_threads"):
        assert re.search(rf"^{name} [0-9.e+]+$", text, re.M), name
    assert Metrics().exposition()  # a second registry in one process: no duplicate-registration error


def test_other_loggers_and_python_warnings_become_log_message_events():
    import warnings

    logging.captureWarnings(False)  # pytest swaps warnings.showwarning per test: let start() hook it afresh
    out, p = _capture()
    logging.getLogger("inference.session").warning("model %s v%d: asked for %s", "demo", 3, ["CUDA"])
    logging.getLogger("some.library").info("chatter")  # below WARNING: not ours to print
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning)
    p.stop()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(e["event"], e["part"]) for e in lines] == [("log_message", "inference.session"), ("log_message", "py.warnings")]
    assert lines[0]["message"] == "model demo v3: asked for ['CUDA']" and "deprecated thing" in lines[1]["message"]
