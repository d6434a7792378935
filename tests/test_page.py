"""The station page (plcbridge/page) and `plcbridge status`, against a running daemon and
the PLC simulator, over real HTTP on 127.0.0.1: what /api/status says matches what the
simulated PLC saw (the outputs this station carries, no others), the decision list's order
and bounds, the live image, a PLC outage, the page's own files, and the command line; and
for models with findings (anomaly, detection), the findings in the list, drawn on the live
image and in the thumbnails (the archive's overlays)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
from helpers import closed_tcp_port, running, station_config, wait_for

from plcbridge.contract import (
    BASE_INPUT_SIGNALS,
    BASE_OUTPUT_SIGNALS,
    OPTIONAL_OUTPUT_SIGNALS,
    OUTPUT_SIGNALS,
    Outputs,
    ResultCode,
    StatusBit,
)
from plcbridge.page import PageSink
from plcbridge.page.api import outputs_view, station_outputs
from plcbridge.page.images import LiveImage
from plcbridge.page.sink import KEEP
from plcbridge.sinks import DecisionRecord

PAGE = {"metrics": {"enabled": True, "port": 0}}


def get(port: int, path: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read(), r.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers["Content-Type"]


def get_json(port: int, path: str) -> Any:
    status, body, ctype = get(port, path)
    assert (status, ctype) == (200, "application/json"), (path, status, body[:200])
    return json.loads(body)


def decided(d: Any, n: int) -> bool:
    """n decisions journaled, and on the page: its sink takes them at its next look."""
    return sum(d.journal.summary()["results"].values()) >= n and len(d.page.recent(n)) >= n


def test_status_names_the_blocks_the_plc_saw_and_says_why_not_ready(make_sim) -> None:
    sim = make_sim(trigger_hz=5)
    with running(station_config(sim, **PAGE)) as d:
        port = d.http.port
        wait_for(lambda: d.ready() and decided(d, 3), 15, "ready and three decisions")
        s = get_json(port, "/api/status")
        assert s["station"] == {"name": d.config.station.name, "mode": "triggered", "protocol": "modbus",
                                "plc": d.config.plc.address, "camera": "synthetic"}
        assert s["ready"] is True
        assert [(p["part"], p["ok"], p["reason"]) for p in s["readiness"]] == \
            [(p, True, None) for p in ("write_loop", "plc", "camera", "model")]
        # The output block is one the simulated PLC really got, named in the contract's order,
        # its status word and codes decoded by the contract: the signals this station carries
        # (a classifier station: the base block, none of the optional outputs).
        out = s["plc"]["outputs"]
        assert list(out["values"]) == [sig.name for sig in BASE_OUTPUT_SIGNALS]
        assert out["values"] in [{k: o.as_dict()[k] for k in out["values"]} for _, o in list(sim.program.seen)]
        assert out["status_bits"] == [b.name for b in StatusBit if out["values"]["status"] & b]
        assert "READY" in out["status_bits"] and out["fault"] == "NONE"
        assert out["result"] == ResultCode(out["values"]["result_code"]).name
        assert out["age_ms"] >= 0
        # The inputs are the simulated PLC's own (they change only with a trigger: the bridge's
        # copy catches up within a poll).
        # The inputs this station reads: the base block (no recipe_id: its map lists none).
        assert list(s["plc"]["inputs"]["values"]) == [sig.name for sig in BASE_INPUT_SIGNALS]
        base = {sig.name for sig in BASE_INPUT_SIGNALS}
        wait_for(lambda: get_json(port, "/api/status")["plc"]["inputs"]["values"]
                 == {k: v for k, v in sim.program.inputs.as_dict().items() if k in base},
                 5, "the inputs the simulated PLC holds")
        link = s["plc"]["link"]
        assert link["connected"] and link["delivering"] and link["sessions"] == 1 and link["reconnects"] == 0
        assert link["reply_age_ms"] is not None and link["exchanges"] > 0 and link["last_error"] is None
        # Counts: since start are the journal's; yield is PASS / (PASS + FAIL).
        s = get_json(port, "/api/status")
        since = s["counts"]["since_start"]
        assert set(since) == {"PASS", "FAIL", "FAILSAFE"} and sum(since.values()) >= 3
        journal = d.journal.summary()["results"]
        assert all(since[k] <= journal.get(k, 0) for k in since)  # the journal may have moved on since
        assert sum(s["counts"]["last_hour"].values()) <= sum(since.values())
        p, f = since["PASS"], since["FAIL"]
        assert s["yield"]["since_start"] == (round(p / (p + f), 4) if p + f else None)
        assert s["model"] == {"name": "demo-defect-cnn", "version": d.worker.model_version, "loaded": True,
                              "manifest": "builtin:demo", "error": None}
        assert s["write_loop"]["period_ms"] == d.config.timing.period_ms and s["write_loop"]["ticks"] > 0
        assert set(s["write_loop"]["lateness_ms"]) >= {"n", "p50", "p99", "max"}
        assert s["newest_decision_id"] is not None and s["live"]["decision_id"] is not None


def test_without_a_plc_the_status_says_so_and_there_is_no_live_image_yet() -> None:
    port = closed_tcp_port()
    with running(station_config(port, **PAGE)) as d:
        status, body, ctype = get(d.http.port, "/api/live.jpg")
        assert (status, body) == (404, b"no frame judged yet\n") and ctype.startswith("text/plain")
        s = wait_for(lambda: (x := get_json(d.http.port, "/api/status"))["readiness"][1]["for_s"] is not None and x,
                     5, "the plc part's time")
        plc = s["readiness"][1]
        assert plc["part"] == "plc" and not plc["ok"] and f"not connected to 127.0.0.1:{port}" in plc["reason"]
        assert plc["since_utc"].endswith("Z") and s["ready"] is False
        assert s["plc"]["outputs"] is None and s["plc"]["inputs"] is None and s["plc"]["link"]["connected"] is False
        assert s["counts"]["since_start"] == {"PASS": 0, "FAIL": 0, "FAILSAFE": 0}
        assert s["yield"] == {"since_start": None, "last_hour": None}
        assert get_json(d.http.port, "/api/decisions")["decisions"] == []


def test_decisions_newest_first_within_bounds(make_sim) -> None:
    sim = make_sim(trigger_hz=20)
    with running(station_config(sim, **PAGE)) as d:
        port = d.http.port
        wait_for(lambda: decided(d, 8), 15, "eight decisions")
        three = get_json(port, "/api/decisions?limit=3")
        assert three["limit"] == 3 and len(three["decisions"]) == 3
        every = get_json(port, "/api/decisions?limit=200")["decisions"]
        assert 8 <= len(every) <= 200 and len({x["decision_id"] for x in every}) == len(every)
        times = [x["time_utc"] for x in every]
        assert times == sorted(times, reverse=True)  # newest first
        seqs = [x["trigger_seq"] for x in every]
        assert seqs == sorted(seqs, reverse=True)  # triggered: answered in order
        assert get_json(port, "/api/decisions")["limit"] == 50
        assert get_json(port, "/api/decisions?limit=100000")["limit"] == KEEP
        for bad in ("0", "-1", "x", "1.5"):
            status, body, _ = get(port, f"/api/decisions?limit={bad}")
            assert status == 400 and b"limit must be" in body
        x = every[0]
        assert x["result"] in ("PASS", "FAIL", "FAILSAFE") and x["image"] is True and x["thumb"] is None  # no archive
        assert {"decision_id", "score", "fault", "part_id", "trigger_seq", "frame_seq", "latency_ms"} <= set(x)
    # Bounded: a sink keeps the newest KEEP records whatever the line rate.
    sink = PageSink(keep=5)
    for i in range(20):
        sink.write(DecisionRecord(f"id{i}", {"result": "PASS"}, None, None))  # type: ignore[arg-type]
    assert [k.decision_id for k in sink.recent(100)] == [f"id{i}" for i in range(19, 14, -1)]
    assert sink.last_hour() == {"PASS": 20} and sink.frame() is None


def test_the_last_hour_counts_the_current_minute_and_the_59_before_it() -> None:
    now = [36_000.0]
    sink = PageSink(clock=lambda: now[0])

    def record(result: str) -> DecisionRecord:
        return DecisionRecord("id", {"result": result}, None, None)  # type: ignore[arg-type]

    for minute in range(90):  # one PASS a minute for 90 minutes, and one FAIL in the first
        sink.write(record("PASS"))
        if minute == 0:
            sink.write(record("FAIL"))
        now[0] += 60
    now[0] -= 60
    assert sink.last_hour() == {"PASS": 60}
    now[0] += 3600
    assert sink.last_hour() == {}


def test_live_image_decodes_and_changes_and_archived_decisions_have_thumbnails(make_sim, tmp_path: Path) -> None:
    sim = make_sim(trigger_hz=10)
    archive = {"enabled": True, "path": str(tmp_path), "pass_every": 1, "format": "jpeg"}
    with running(station_config(sim, archive=archive, **PAGE)) as d:
        port = d.http.port
        wait_for(lambda: decided(d, 1), 15, "a decision")
        # The page's sink draws the live image on its own thread after the journal has the
        # decision (404 until then, as documented): it comes, it is not instant.
        status, first, ctype = wait_for(lambda: (r := get(port, "/api/live.jpg"))[0] == 200 and r, 10,
                                        "the first live image", poll=0.1)
        assert (status, ctype) == (200, "image/jpeg")
        img = cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.ndim == 3 and min(img.shape[:2]) > 16
        wait_for(lambda: get(port, "/api/live.jpg")[1] != first, 10, "a newer live image", poll=0.3)
        # Every decision is archived here: its thumbnail is listed once the archive has it.
        found = wait_for(lambda: [x for x in get_json(port, "/api/decisions?limit=20")["decisions"] if x["thumb"]],
                         10, "an archived decision in the list", poll=0.3)
        x = found[0]
        assert x["thumb"] == f"/api/thumb/{x['decision_id']}"
        status, body, ctype = get(port, x["thumb"])
        assert (status, ctype) == (200, "image/jpeg")
        thumb = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert thumb is not None and thumb.shape[1] <= 160
        for missing in ("01M96N04VGAZHG5VYJ438PG01X", "../../etc/passwd", "x"):
            assert get(port, f"/api/thumb/{missing}")[:2] == (404, b"not in the image archive\n")


def test_a_plc_outage_shows_its_reason_in_the_status_within_about_a_second(make_sim) -> None:
    sim = make_sim(trigger_hz=5, device={"network.relay": True})
    with running(station_config(sim, **PAGE)) as d:
        port = d.http.port
        wait_for(lambda: get_json(port, "/api/status")["ready"], 15, "ready")
        sim.network.blackhole(True)
        t0 = time.monotonic()
        s = wait_for(lambda: (x := get_json(port, "/api/status")) and not x["readiness"][1]["ok"] and x, 5,
                     "the plc part not OK", poll=0.05)
        print(f"the outage showed in /api/status after {time.monotonic() - t0:.2f} s")
        plc = s["readiness"][1]
        assert plc["part"] == "plc" and plc["reason"], plc
        wait_for(lambda: not get_json(port, "/api/status")["ready"], 3, "READY cleared")
        sim.network.blackhole(False)
        wait_for(lambda: get_json(port, "/api/status")["ready"], 10, "ready again")


def test_the_page_is_served_and_loads_nothing_from_elsewhere(make_sim) -> None:
    sim = make_sim(trigger_hz=5)
    with running(station_config(sim, **PAGE)) as d:
        port = d.http.port
        files = {}
        for path, ctype in (("/", "text/html"), ("/page.css", "text/css"), ("/page.js", "text/javascript")):
            status, body, got = get(port, path)
            assert status == 200 and got.startswith(ctype), (path, status, got)
            files[path] = body.decode()
        html = files["/"]
        assert 'href="/page.css"' in html and 'src="/page.js"' in html
        for path, text in files.items():
            assert not re.search(r"(?i)https?:|//[a-z0-9.-]+\.[a-z]{2,}/|@import", text), f"{path} names somewhere else"
        # Every URL the script asks for is one of the daemon's own routes.
        asked = set(re.findall(r'"(/[a-z0-9./_?=-]*)', files["/page.js"]))
        assert asked and all(u.startswith(("/api/status", "/api/decisions", "/api/live.jpg")) for u in asked), asked
        assert get(port, "/favicon.ico")[0] == 404 and get(port, "/nope/")[0] == 404
        assert get(port, "/metrics")[0] == 200  # the endpoint's own routes are unchanged


def _station_file(tmp_path: Path, port: int) -> Path:
    f = tmp_path / "station.toml"
    f.write_text(f"[camera]\nsource = \"synthetic\"\n[model]\nmanifest = \"builtin:demo\"\n"
                 f"[metrics]\nenabled = true\nhost = \"127.0.0.1\"\nport = {port}\n")
    return f


def _status_cmd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "plcbridge", "status", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "120"})


def test_plcbridge_status_prints_one_screen_and_watches(make_sim, tmp_path: Path) -> None:
    sim = make_sim(trigger_hz=5)
    with running(station_config(sim, **PAGE)) as d:
        port = d.http.port
        wait_for(lambda: d.ready() and decided(d, 2), 15, "ready and two decisions")
        r = _status_cmd("--config", str(_station_file(tmp_path, port)))
        assert r.returncode == 0, r.stderr
        out = r.stdout
        assert out.startswith(f"{d.config.station.name} (triggered, modbus {d.config.plc.address}, camera synthetic)   READY")
        for part in ("write_loop", "plc", "camera", "model"):
            assert re.search(rf"^  {part} +OK$", out, re.M), out
        assert "PLC link: connected (session 1)" in out
        assert all(f"{sig.name}=" in out for sig in (*BASE_OUTPUT_SIGNALS, *BASE_INPUT_SIGNALS))
        assert "recipe_id=" not in out  # an optional input this station does not read
        assert not any(f"{sig.name}=" in out for sig in OPTIONAL_OUTPUT_SIGNALS)  # not carried by this station
        assert re.search(r"^status: .*READY.*; result \w+; fault NONE$", out.replace("\n    ", " ").replace("  status:", "status:"), re.M)
        assert re.search(r"^  since start +\d+ +\d+ +\d+ ", out, re.M) and "last decisions (" in out
        decisions = out.split("last decisions (", 1)[1].splitlines()[1:]
        assert 2 <= len(decisions) <= 10 and all(re.match(r"  \d\d:\d\d:\d\d\.\d{3}  (PASS|FAIL|FAILSAFE) ", x) for x in decisions)
        # --watch: the screen again and again, cleared each time, until Ctrl-C (exit 0).
        # (Into a file, watched until two screens are there: a loaded machine may take seconds
        # to start the command.)
        screens = tmp_path / "watch.out"
        with screens.open("w") as out_file:
            p = subprocess.Popen([sys.executable, "-m", "plcbridge", "status", "--url", f"http://127.0.0.1:{port}",
                                  "--watch", "0.2"], stdout=out_file, stderr=subprocess.PIPE, text=True)
            try:
                wait_for(lambda: screens.read_text().count("readiness\n") >= 2, 30, "two screens")
            finally:
                p.send_signal(signal.SIGINT)
                _, stderr = p.communicate(timeout=10)
        stdout = screens.read_text()
        assert p.returncode == 0 and "Traceback" not in stderr, stderr
        assert stdout.count("\x1b[H\x1b[2J") >= 2 and stdout.count("readiness\n") >= 2


def test_plcbridge_status_without_a_daemon_is_one_line_and_exit_1(tmp_path: Path) -> None:
    port = closed_tcp_port()
    for args in (("--url", f"http://127.0.0.1:{port}"), ("--config", str(_station_file(tmp_path, port)))):
        r = _status_cmd(*args)
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"plcbridge status: no plcbridge daemon answers at http://127.0.0.1:{port}")
    r = _status_cmd("--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("plcbridge status: ")


# ---------------------------------------------------------------------- the outputs a station carries


@pytest.mark.parametrize(("plc", "optional"), [
    ({}, []),
    ({"modbus": {"optional_outputs": ["anomaly_area"]}}, ["anomaly_area"]),
    ({"protocol": "opcua", "opcua": {"optional_outputs": ["defect_class", "defect_count"]}}, ["defect_count", "defect_class"]),
    ({"protocol": "enip", "enip": {"optional_outputs": ["defect_count"]}}, ["defect_count"]),
    ({"protocol": "loop"}, [s.name for s in OPTIONAL_OUTPUT_SIGNALS]),  # the in-process loop carries every signal
])
def test_the_outputs_shown_are_those_the_station_carries(plc: dict[str, Any], optional: list[str]) -> None:
    if plc.get("protocol") == "loop":
        cfg = station_config(SimpleNamespace(section="loop", channel="page-test"))
    else:
        cfg = station_config(closed_tcp_port(), plc=plc)
    signals = station_outputs(cfg)
    assert [s.name for s in signals] == [s.name for s in BASE_OUTPUT_SIGNALS] + optional  # contract order
    block = Outputs(result_code=2, defect_count=3, defect_class=1, anomaly_area=1234)
    view = outputs_view(block, signals)
    assert list(view["values"]) == [s.name for s in signals]
    assert all(view["values"][k] == block.as_dict()[k] for k in view["values"]) and view["result"] == "FAIL"
    assert list(outputs_view(block)["values"]) == [s.name for s in OUTPUT_SIGNALS]  # the default: every signal


# ---------------------------------------------------------------------- findings on the page


def _red(img: np.ndarray) -> np.ndarray:
    return (img[..., 2] > 170) & (img[..., 1] < 90) & (img[..., 0] < 90)


def test_the_live_image_draws_the_findings(tmp_path: Path) -> None:
    from findings_models import SCRATCH_BOX, Judge, anomaly_frames, detection_frame, detection_manifest

    from plcbridge.journal import Journal
    from plcbridge.metrics import Metrics
    from plcbridge.sinks import SinkFanout

    sink = PageSink()
    fanout = SinkFanout(Metrics())
    fanout.add(sink)
    journal = Journal(Metrics(), "st", fanout)
    yolo, anomaly = Judge(detection_manifest(tmp_path / "yolo"), journal), Judge("builtin:anomaly", journal)
    live = LiveImage(sink, min_interval_s=0.0)
    try:
        frame = detection_frame()
        journal.decision(yolo.decide(frame))
        wait_for(lambda: sink.frame() is not None, 5, "the page sink's frame")
        made = live.jpeg()
        assert made is not None
        img = cv2.imdecode(np.frombuffer(made[1], np.uint8), cv2.IMREAD_COLOR)
        x, y, w, h = SCRATCH_BOX
        assert img.shape == frame.shape and _red(img[y + 4:y + h - 4, x + w:x + w + 1]).all()  # the counted box, drawn
        assert np.array_equal(frame, detection_frame())  # drawn on a copy: the frame is as it was

        clean, defect = anomaly_frames()
        journal.decision(anomaly.decide(defect))
        wait_for(lambda: sink.frame() is not None and sink.frame()[0].fields["findings"]["kind"] == "anomaly", 5,
                 "the anomaly decision")
        kept, _, decoded = sink.frame()
        assert decoded is not None and kept.fields["findings"]["count"] == 1
        img = cv2.imdecode(np.frombuffer(live.jpeg()[1], np.uint8), cv2.IMREAD_COLOR)
        bx, by, bw, bh = kept.fields["findings"]["box"]
        near = _red(img)[max(0, by - 4):by + bh + 4, max(0, bx - 4):bx + bw + 4] & ~_red(defect)[max(0, by - 4):by + bh + 4,
                                                                                                   max(0, bx - 4):bx + bw + 4]
        assert near.sum() >= 8  # the anomalous region outlined in red
    finally:
        fanout.close()
        yolo.close()
        anomaly.close()


def test_an_anomaly_station_lists_its_findings_and_its_thumbnails_show_them(make_sim, tmp_path: Path) -> None:
    sim = make_sim(trigger_hz=10)
    archive = {"enabled": True, "path": str(tmp_path), "pass_every": 5}
    with running(station_config(sim, model={"manifest": "builtin:anomaly"}, archive=archive, **PAGE)) as d:
        port = d.http.port

        def archived_fail() -> Any:
            rows = get_json(port, "/api/decisions?limit=100")["decisions"]
            return next((x for x in rows if x["result"] == "FAIL" and x["thumb"]), None)

        x = wait_for(archived_fail, 30, "an archived FAIL of the anomaly model", poll=0.3)
        assert x["findings"]["kind"] == "anomaly" and x["findings"]["area_px"] > 0
        assert "anomaly_area" not in x  # this station's PLC map lists no optional output: none was written
        assert x["findings_summary"] == f"anomalous area {x['findings']['area_px']} px"
        rows = get_json(port, "/api/decisions?limit=100")["decisions"]
        passes = [r for r in rows if r["result"] == "PASS"]
        assert all(r["findings_summary"] in ("no anomalous area", f"anomalous area {r['findings']['area_px']} px, not counted")
                   for r in passes)
        # The thumbnail is the overlay's (the outline and heatmap drawn), not the bare frame's.
        status, body, ctype = get(port, x["thumb"])
        assert (status, ctype) == (200, "image/jpeg")
        thumb = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).astype(int)
        entry = next(p for p in tmp_path.rglob(f"*_{x['decision_id']}.json"))
        overlay = cv2.imread(str(entry.with_name(entry.stem + ".overlay.jpg")))
        frame = cv2.imread(str(entry.with_suffix(".png")))
        assert overlay is not None and frame is not None

        def small(img: np.ndarray) -> np.ndarray:
            return cv2.resize(img, (thumb.shape[1], thumb.shape[0]), interpolation=cv2.INTER_AREA).astype(int)

        assert np.abs(thumb - small(overlay)).mean() < np.abs(thumb - small(frame)).mean() / 2
