"""`plcbridge archive list | show | export` on a small archive built with the store's own
functions (entry_paths, sidecar_json, write_atomic), so the tool is tested against the
layout the daemon's writer produces: real PNG frames, records shaped like the journal's,
entries over two days (with a midnight boundary and a new PLC session) and two recent ones
for the relative times. Plus what a power cut leaves (a temporary file, an image without its
sidecar), which the tool must neither list nor touch; and entries of decisions with findings
(detection, anomaly), whose overlay the tool shows and exports, and whose findings go into
index.csv.

Errors run as a subprocess (`python -m plcbridge archive`), as the quality engineer runs it:
exit 1, one line on stderr, no traceback.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from plcbridge.archive.store import entry_paths, overlay_path, sidecar_json, write_atomic
from plcbridge.tools import archive as tool

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(saved: float, n: int) -> str:
    """A decision id like the journal's (wall-clock ms, then 80 bits), made for `saved`."""
    value = int(saved * 1000) << 80 | (0xA5A5 << 40 | n)
    return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


# (name, saved, result, fault, score, part_id, plc_session): part_id None is a free-run decision;
# a fail-safe scores 1.0, as plcbridge.decision.failsafe() makes it.
FIXED = [
    ("pass-1", at("2026-11-28T08:00:00.000"), "PASS", "NONE", 0.0312, 101, 1),
    ("fail-1", at("2026-11-28T08:00:05.250"), "FAIL", "NONE", 0.9731, 102, 1),
    ("bad-frame", at("2026-11-28T23:59:59.999"), "FAILSAFE", "BAD_FRAME", 1.0, 103, 1),
    ("fail-midnight", at("2026-11-29T00:00:00.000"), "FAIL", "NONE", 0.88, 1, 2),  # a new PLC session: part ids restart
    ("timeout", at("2026-11-29T13:30:00.500"), "FAILSAFE", "INFERENCE_TIMEOUT", 1.0, None, None),
    ("pass-2", at("2026-11-29T13:30:01.000"), "PASS", "NONE", 0.1, None, None),
]


class Built:
    """The archive under test: root, and per entry name its id, record, frame and files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ids: dict[str, str] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.frames: dict[str, np.ndarray] = {}
        self.images: dict[str, Path] = {}
        self.sidecars: dict[str, Path] = {}
        self.overlays: dict[str, Path] = {}
        self.order: list[str] = []

    def add(self, name: str, saved: float, result: str, fault: str, score: float, part_id: int | None,
            plc_session: int | None, findings: dict[str, Any] | None = None) -> None:
        """An entry; with `findings`, the record carries them and the entry an overlay (the
        frame inverted, as a JPEG: what the writer would have drawn does not matter here)."""
        n = len(self.order)
        decision_id = ulid(saved, n)
        record: dict[str, Any] = {"decision_id": decision_id, "station": "line-3", "result": result, "score": score,
                                  "fault": fault, "model_version": 7}
        if part_id is not None:
            record.update(trigger_seq=1000 + n, part_id=part_id, plc_session=plc_session, t_trigger_mono=812.5 + n)
        else:
            record["frame_seq"] = 5000 + n
        record.update(t_capture_mono=812.6 + n, latency_ms=4.25, infer_ms=2.1)
        if result == "FAILSAFE":
            record["reason"] = f"{fault.lower()}: test"
        if findings is not None:
            record["findings"] = findings
        frame = np.random.default_rng(n).integers(0, 256, (24, 32, 3), dtype=np.uint8)
        image, sidecar = entry_paths(self.root, saved, result, decision_id, ".png")
        image.parent.mkdir(parents=True, exist_ok=True)
        ok, png = cv2.imencode(".png", frame)
        assert ok
        write_atomic(image, png.tobytes())
        overlay = None
        if findings is not None:
            overlay = overlay_path(sidecar)
            ok, jpg = cv2.imencode(".jpg", 255 - frame)
            assert ok
            write_atomic(overlay, jpg.tobytes())
            self.overlays[name] = overlay
        write_atomic(sidecar, sidecar_json(record, image, saved, overlay))
        self.ids[name], self.records[name], self.frames[name] = decision_id, record, frame
        self.images[name], self.sidecars[name] = image, sidecar
        self.order.append(name)

    def names(self, ids: list[str]) -> list[str]:
        by_id = {v: k for k, v in self.ids.items()}
        return [by_id[i] for i in ids]


@pytest.fixture
def arc(tmp_path: Path) -> Built:
    built = Built(tmp_path / "archive")
    built.root.mkdir()
    for row in FIXED:
        built.add(*row)
    now = time.time()
    built.add("recent-fail", now - 3 * 3600, "FAIL", "NONE", 0.91, 7, 3)
    built.add("recent-pass", now - 90 * 60, "PASS", "NONE", 0.02, 8, 3)
    # What a power cut leaves: a temporary file and an image whose sidecar was never written.
    hour = built.images["fail-1"].parent
    (hour / ".080006.000_FAIL_X.png.tmp").write_bytes(b"half")
    (hour / "080007.000_FAIL_01ORPHAN0000000000000000000.png").write_bytes(built.images["fail-1"].read_bytes())
    return built


def run_main(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    rc = tool.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def plcbridge(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "plcbridge", "archive", *map(str, args)], check=False,
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def listed_ids(out: str) -> list[str]:
    return [line.split()[6] for line in out.splitlines()[1:]]


# ---------------------------------------------------------------------- list


def test_list_prints_every_entry_oldest_first_with_its_fields(arc: Built, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(capsys, "--path", arc.root, "list")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["time", "(UTC)", "result"]
    assert arc.names(listed_ids(out)) == arc.order  # the orphan image and the .tmp are no entries
    fail = lines[1 + arc.order.index("fail-1")].split()
    assert fail == ["2026-11-28T08:00:05.250Z", "FAIL", "NONE", "0.9731", "102", "1", arc.ids["fail-1"],
                    str(arc.images["fail-1"])]
    timeout = lines[1 + arc.order.index("timeout")].split()
    assert timeout[:6] == ["2026-11-29T13:30:00.500Z", "FAILSAFE", "INFERENCE_TIMEOUT", "1.0000", "-", "-"]


def test_list_result_shadow_finds_the_shadow_models_disagreements(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from plcbridge.archive.store import SHADOW_TAG
    from plcbridge.tools.archive import RESULTS

    assert SHADOW_TAG in RESULTS  # the tool's own spelling of the writer's tag
    built = Built(tmp_path / "archive")
    built.root.mkdir()
    built.add("live-fail", at("2026-11-28T08:00:00.000"), "FAIL", "NONE", 0.97, 1, 1)
    built.add("disagreed", at("2026-11-28T08:00:00.100"), SHADOW_TAG, "NONE", 0.97, 1, 1)
    built.add("live-pass", at("2026-11-28T08:00:01.000"), "PASS", "NONE", 0.02, 2, 1)
    rc, out, err = run_main(capsys, "list", "--path", built.root, "--result", "shadow")
    assert rc == 0 and err == "", err
    assert built.names(listed_ids(out)) == ["disagreed"]


@pytest.mark.parametrize(("options", "expected"), [
    (["--since", "2026-11-29"], ["fail-midnight", "timeout", "pass-2", "recent-fail", "recent-pass"]),
    # half-open: the entry at midnight belongs to the 29th only
    (["--since", "2026-11-28", "--until", "2026-11-29"], ["pass-1", "fail-1", "bad-frame"]),
    # an offset is honoured (01:00+01:00 is midnight UTC); Z is UTC; milliseconds count
    (["--since", "2026-11-29T01:00:00+01:00", "--until", "2026-11-29T13:30:00.500Z"], ["fail-midnight"]),
    (["--since", "2026-11-28 08:00:05.250", "--until", "2026-11-28T08:00:05.251"], ["fail-1"]),
    (["--result", "fail"], ["fail-1", "fail-midnight", "recent-fail"]),
    (["--result", "FAIL,failsafe"], ["fail-1", "bad-frame", "fail-midnight", "timeout", "recent-fail"]),
    (["--limit", "2"], ["recent-fail", "recent-pass"]),  # the newest N, still oldest first
    (["--result", "FAILSAFE", "--limit", "1"], ["timeout"]),
    (["--since", "-2h"], ["recent-pass"]),
    (["--since", "-4h", "--until", "now"], ["recent-fail", "recent-pass"]),
    (["--since=-4h", "--until=-2h"], ["recent-fail"]),
    (["--since", "-240m", "--until", "-2h"], ["recent-fail"]),
    (["--until", "-1d", "--result", "PASS"], ["pass-1", "pass-2"]),
    (["--since", "2026-11-30", "--until", "2026-12-01"], []),
])
def test_list_filters(arc: Built, capsys: pytest.CaptureFixture[str], options: list[str], expected: list[str]) -> None:
    rc, out, err = run_main(capsys, "list", "--path", arc.root, *options)
    assert rc == 0 and err == "", err
    assert arc.names(listed_ids(out)) == expected


def test_list_json_is_the_sidecar_plus_paths(arc: Built, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_main(capsys, "--path", arc.root, "list", "--json", "--result", "FAILSAFE")
    assert rc == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["decision_id"] for r in rows] == [arc.ids["bad-frame"], arc.ids["timeout"]]
    for row, name in zip(rows, ["bad-frame", "timeout"]):
        assert row == {**json.loads(arc.sidecars[name].read_text()), "image_path": str(arc.images[name]),
                       "sidecar_path": str(arc.sidecars[name]), "overlay_path": None}
        assert {k: row[k] for k in arc.records[name]} == arc.records[name]
        assert row["image"] == arc.images[name].name and row["saved_utc"].startswith("2026-11-")


# ---------------------------------------------------------------------- show


def test_show_prints_the_sidecar_and_the_image_path(arc: Built, capsys: pytest.CaptureFixture[str]) -> None:
    decision_id = arc.ids["bad-frame"]
    for key in (decision_id, decision_id.lower(), decision_id[:-6]):  # any case; a unique beginning
        rc, out, err = run_main(capsys, "show", key, "--path", arc.root)
        assert rc == 0 and err == ""
        body, last = out.rstrip("\n").rsplit("\n", 1)
        assert json.loads(body) == json.loads(arc.sidecars["bad-frame"].read_text())
        assert last == f"image: {arc.images['bad-frame']}"
    rc, out, _ = run_main(capsys, "--path", arc.root, "show", "--json", decision_id)
    assert rc == 0
    assert json.loads(out) == {"record": json.loads(arc.sidecars["bad-frame"].read_text()),
                               "image_path": str(arc.images["bad-frame"]), "overlay_path": None,
                               "sidecar_path": str(arc.sidecars["bad-frame"])}


def test_show_an_ambiguous_beginning_is_refused(arc: Built, capsys: pytest.CaptureFixture[str]) -> None:
    common = os.path.commonprefix([arc.ids["pass-1"], arc.ids["fail-1"]])
    rc, out, err = run_main(capsys, "--path", arc.root, "show", common)
    assert rc == 1 and out == "" and "give more of it" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------- export


def _check_export(arc: Built, files: dict[str, bytes], expected: list[str]) -> None:
    """`files`: the export's content by relative name. Its index.csv has one row per entry,
    naming files that are there; the images decode to the archived frames."""
    rows = list(csv.DictReader(io.StringIO(files["index.csv"].decode())))
    assert [r["decision_id"] for r in rows] == [arc.ids[n] for n in expected]
    assert set(files) == {"index.csv"} | {r["image"] for r in rows} | {r["sidecar"] for r in rows} | \
        {r["overlay"] for r in rows if r["overlay"]}
    for row, name in zip(rows, expected):
        rec = arc.records[name]
        assert row["result"] == rec["result"] and row["fault"] == rec["fault"] and float(row["score"]) == rec["score"]
        assert row["part_id"] == str(rec.get("part_id", "")) and row["plc_session"] == str(rec.get("plc_session", ""))
        assert row["model_version"] == "7" and row["saved_utc"].endswith("Z")
        assert row["image"] == arc.images[name].relative_to(arc.root).as_posix()  # the archive's own layout
        assert files[row["sidecar"]] == arc.sidecars[name].read_bytes()
        frame = cv2.imdecode(np.frombuffer(files[row["image"]], np.uint8), cv2.IMREAD_COLOR)
        assert frame is not None and np.array_equal(frame, arc.frames[name])
        if name in arc.overlays:
            assert row["overlay"] == arc.overlays[name].relative_to(arc.root).as_posix()
            assert files[row["overlay"]] == arc.overlays[name].read_bytes()
        else:
            assert row["overlay"] == "" and row["defects"] == row["worst_class"] == row["area_px"] == ""


@pytest.mark.parametrize("name", ["fails.tar.gz", "fails.tgz", "fails.tar"])
def test_export_to_a_tar(arc: Built, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    r = plcbridge("export", "--path", arc.root, "--since", "2026-11-28T08:00:01", "--until", "2026-11-30",
                  "--result", "FAIL,FAILSAFE", "--out", out)
    assert r.returncode == 0, r.stderr
    expected = ["fail-1", "bad-frame", "fail-midnight", "timeout"]
    assert r.stdout.splitlines() == [r.stdout.strip()]  # the one-line summary
    assert r.stdout.startswith("exported 4 entries, ") and "2026-11-28T08:00:05.250Z .. 2026-11-29T13:30:00.500Z" in r.stdout
    size = sum(arc.images[n].stat().st_size + arc.sidecars[n].stat().st_size for n in expected)
    assert f"{size} bytes" in r.stdout
    with tarfile.open(out) as tar:
        members = tar.getmembers()
        top = name.split(".")[0]
        assert all(m.isfile() and m.name.startswith(f"{top}/") for m in members)
        files = {m.name[len(top) + 1:]: tar.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    _check_export(arc, files, expected)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_export_to_a_folder_is_an_archive_again(arc: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "export"
    out.mkdir()  # an empty folder is fine
    r = plcbridge("export", "--path", arc.root, "--since", "2026-11-28", "--until", "2026-11-29", "--out", out)
    assert r.returncode == 0, r.stderr
    expected = ["pass-1", "fail-1", "bad-frame"]
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _check_export(arc, files, expected)
    rc, listed, _ = run_main(capsys, "list", "--path", out)  # the export mirrors the layout: the tool reads it
    assert rc == 0 and arc.names(listed_ids(listed)) == expected


def test_export_reports_progress_on_stderr(arc: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tool, "PROGRESS_INTERVAL_S", 0.0)  # a line per entry instead of per second
    rc, out, err = run_main(capsys, "export", "--path", arc.root, "--since", "-7d", "--until", "now", "--out",
                            tmp_path / "recent.tar.gz")
    assert rc == 0 and out.startswith("exported 2 entries")
    assert [line.split(",")[0] for line in err.splitlines()] == ["plcbridge archive: export: 1/2 entries",
                                                                 "plcbridge archive: export: 2/2 entries"]


@pytest.mark.parametrize("target", ["half.tar.gz", "half-folder", "empty-folder"])
def test_an_export_that_fails_half_way_removes_its_output(arc: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    out = tmp_path / "out" / target
    out.parent.mkdir()
    if target == "empty-folder":
        out.mkdir()
    cls = tool._TarOutput if target.endswith(".tar.gz") else tool._FolderOutput
    real_add = cls.add
    calls = []

    def add(self: Any, name: str, data: bytes, mtime: float) -> None:
        calls.append(name)
        if len(calls) == 5:  # the third entry's sidecar: the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / name))
        real_add(self, name, data, mtime)

    monkeypatch.setattr(cls, "add", add)
    rc, stdout, err = run_main(capsys, "export", "--path", arc.root, "--since", "2026-01-01", "--until", "now", "--out", out)
    assert rc == 1 and stdout == ""
    assert len(err.splitlines()) == 1 and "No space left on device" in err and "partial export was removed" in err
    left = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*"))
    assert left == (["empty-folder"] if target == "empty-folder" else [])  # a folder it did not make is kept, empty


def test_export_of_an_empty_range_writes_nothing(arc: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(capsys, "export", "--path", arc.root, "--since", "2026-11-30", "--until", "2026-12-01",
                            "--out", tmp_path / "none.tar")
    assert rc == 0 and out == "" and "nothing written" in err
    assert list(tmp_path.iterdir()) == [arc.root]


# ---------------------------------------------------------------------- the station file


def test_config_names_the_archive_folder(arc: Built, tmp_path: Path) -> None:
    station = tmp_path / "station.toml"
    station.write_text('[camera]\nsource = "synthetic"\n\n[model]\nmanifest = "builtin:demo"\n\n'
                       f'[archive]\nenabled = true\npath = "{arc.root}"\n')
    r = plcbridge("list", "--config", station, "--result", "FAILSAFE")
    assert r.returncode == 0, r.stderr
    assert arc.names(listed_ids(r.stdout)) == ["bad-frame", "timeout"]


# ---------------------------------------------------------------------- errors


def _error_cases(arc: Built, tmp: Path) -> list[tuple[list[str | Path], list[str]]]:
    """(arguments, words the one stderr line must hold)."""
    full = tmp / "full"
    full.mkdir()
    (full / "notes.txt").write_text("keep me\n")
    (tmp / "taken.tar").write_bytes(b"")
    bad_station = tmp / "bad.toml"
    bad_station.write_text("[archive]\npath = 3\n")
    off = tmp / "off.toml"
    off.write_text(f'[camera]\nsource = "synthetic"\n[model]\nmanifest = "builtin:demo"\n[archive]\npath = "{tmp / "unmounted"}"\n')
    export: list[str | Path] = ["export", "--path", arc.root, "--since", "2026-11-28", "--until", "2026-11-30"]
    return [
        (["list"], ["--config STATION.toml", "--path DIR"]),
        (["list", "--path", arc.root, "--config", off], ["not both"]),
        (["list", "--path", tmp / "unmounted"], [str(tmp / "unmounted"), "does not exist", "mounted"]),
        (["list", "--config", off], ["does not exist", "[archive] path in", "enabled = false"]),
        (["list", "--config", bad_station], ["bad.toml"]),
        (["list", "--path", arc.root / "2026-11-28" / "08" / arc.images["fail-1"].name], ["is not a folder"]),
        (["show", "--path", arc.root, "01ZZZZZZZZZZZZZZZZZZZZZZZZ"], ["no archived entry", "01ZZZZZZZZZZZZZZZZZZZZZZZZ"]),
        (["show", "--path", arc.root, "not-an-id"], ["is not a decision id"]),
        ([*export, "--out", full], ["not empty", "refusing"]),
        ([*export, "--out", tmp / "taken.tar"], ["exists", "not overwritten"]),
        ([*export, "--out", arc.root / "inside"], ["inside the archive folder"]),
        ([*export, "--out", tmp / "no" / "such" / "folder"], ["does not exist"]),
        (["export", "--path", arc.root, "--since", "2026-11-28", "--out", tmp / "x.tar"], ["needs --since", "--until"]),
        (["export", "--path", arc.root, "--since", "2026-11-30", "--until", "2026-11-28", "--out", tmp / "x.tar"],
         ["--since 2026-11-30", "is not before --until 2026-11-28"]),
        (["list", "--path", arc.root, "--since", "-1h", "--until", "-2h"], ["is not before"]),
        (["list", "--path", arc.root, "--result", "REJECT"], ["unknown result REJECT", "PASS, FAIL, FAILSAFE or SHADOW"]),
        ([*export, "--result", "pass,maybe", "--out", tmp / "x.tar"], ["unknown result MAYBE"]),
        (["list", "--path", arc.root, "--since", "yesterday"], ["--since 'yesterday'", "not a time", "-2h"]),
        (["list", "--path", arc.root, "--limit", "0"], ["--limit"]),
    ]


def test_user_errors_exit_1_with_one_line_and_no_traceback(arc: Built, tmp_path: Path) -> None:
    for args, words in _error_cases(arc, tmp_path):
        r = plcbridge(*args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and r.stdout == "", (args, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("plcbridge archive: "), (args, r.stderr)
        for word in words:
            assert word in lines[0], (args, word, lines[0])
    assert (tmp_path / "full" / "notes.txt").read_text() == "keep me\n"
    assert not (tmp_path / "unmounted").exists()  # never created in place of a missing folder
    assert not (tmp_path / "x.tar").exists() and not (arc.root / "inside").exists()


# ---------------------------------------------------------------------- read only


def test_the_tool_never_changes_the_archive(arc: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def snapshot() -> dict[str, tuple[int, int]]:
        return {p.relative_to(arc.root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in arc.root.rglob("*")}

    before = snapshot()
    assert ".080006.000_FAIL_X.png.tmp" in {Path(k).name for k in before}  # the leftovers are there ...
    for argv in (["list"], ["list", "--json"], ["show", arc.ids["fail-1"]],
                 ["export", "--since", "2026-01-01", "--until", "now", "--out", tmp_path / "all.tar.gz"],
                 ["export", "--since", "2026-01-01", "--until", "now", "--out", tmp_path / "all"]):
        rc, _, err = run_main(capsys, "--path", arc.root, *argv)
        assert rc == 0, err
    assert snapshot() == before  # ... and stay: removing them is the daemon's scan's work


# ---------------------------------------------------------------------- findings and overlays

DETECTION = {"count": 2, "note": "3 detection(s), 2 counted (at most 0 pass); not counted: 1 below min_score",
             "box": [64, 96, 32, 32], "kind": "detection", "worst_class": 0, "worst_class_name": "scratch",
             "area_px": 1024, "detections": [
                 {"class": 0, "name": "scratch", "score": 0.97, "box": [64, 96, 32, 32], "counted": True},
                 {"class": 0, "name": "scratch", "score": 0.81, "box": [10, 10, 20, 20], "counted": True},
                 {"class": 1, "name": "dent", "score": 0.5, "box": [192, 160, 32, 32], "counted": False}]}
ANOMALY = {"count": 1, "note": "score 0.712 (fails at 0.5), area 1234 px at pixel threshold 0.5", "box": [40, 40, 50, 30],
           "kind": "anomaly", "score": 0.712, "area_px": 1234, "map_max": 0.83, "map_mean": 0.21, "pixel_threshold": 0.5}


@pytest.fixture
def arc_findings(tmp_path: Path) -> Built:
    built = Built(tmp_path / "archive")
    built.root.mkdir()
    built.add("classifier", at("2026-11-28T08:00:00.000"), "PASS", "NONE", 0.02, 201, 1)
    built.add("detection", at("2026-11-28T08:00:01.000"), "FAIL", "NONE", 0.97, 202, 1, DETECTION)
    built.add("anomaly", at("2026-11-28T08:00:02.000"), "FAIL", "NONE", 0.712, 203, 1, ANOMALY)
    # An overlay whose sidecar never came (a crash between the two): no entry, never listed.
    hour = built.images["anomaly"].parent
    (hour / "080003.000_FAIL_01ORPHAN0000000000000000000.overlay.jpg").write_bytes(b"jpeg")
    return built


def test_an_entry_with_an_overlay_is_one_entry_and_list_json_names_the_overlay(arc_findings: Built,
                                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(capsys, "--path", arc_findings.root, "list")
    assert rc == 0 and err == "" and arc_findings.names(listed_ids(out)) == arc_findings.order
    rc, out, _ = run_main(capsys, "--path", arc_findings.root, "list", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["overlay_path"] for r in rows] == [None, str(arc_findings.overlays["detection"]),
                                                 str(arc_findings.overlays["anomaly"])]
    assert rows[1]["findings"] == DETECTION and rows[1]["overlay"] == arc_findings.overlays["detection"].name


def test_show_names_the_overlay_and_what_it_shows(arc_findings: Built, capsys: pytest.CaptureFixture[str]) -> None:
    for name, words in (("detection", "2 defects, worst scratch (1 not counted)"), ("anomaly", "anomalous area 1234 px")):
        rc, out, err = run_main(capsys, "--path", arc_findings.root, "show", arc_findings.ids[name])
        assert rc == 0 and err == ""
        lines = out.rstrip("\n").splitlines()
        assert lines[-2] == f"image: {arc_findings.images[name]}"
        assert lines[-1] == f"overlay: {arc_findings.overlays[name]} (the frame with the findings drawn: {words})"
        assert json.loads("\n".join(lines[:-2]))["findings"] == arc_findings.records[name]["findings"]
        rc, out, _ = run_main(capsys, "--path", arc_findings.root, "show", "--json", arc_findings.ids[name])
        assert json.loads(out)["overlay_path"] == str(arc_findings.overlays[name])
    rc, out, _ = run_main(capsys, "--path", arc_findings.root, "show", arc_findings.ids["classifier"])
    assert rc == 0 and out.rstrip("\n").splitlines()[-1].startswith("image: ") and "\noverlay" not in out
    rc, out, _ = run_main(capsys, "--path", arc_findings.root, "show", "--json", arc_findings.ids["classifier"])
    assert json.loads(out)["overlay_path"] is None
    # A sidecar naming an overlay that is gone (deleted by hand): said, not hidden.
    arc_findings.overlays["anomaly"].unlink()
    rc, out, _ = run_main(capsys, "--path", arc_findings.root, "show", arc_findings.ids["anomaly"])
    assert rc == 0 and out.rstrip("\n").splitlines()[-1].startswith("overlay: (missing: ")


@pytest.mark.parametrize("out_name", ["findings.tar.gz", "findings-folder"])
def test_export_carries_the_overlays_and_the_findings_in_the_index(arc_findings: Built, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str], out_name: str) -> None:
    out = tmp_path / out_name
    rc, stdout, err = run_main(capsys, "--path", arc_findings.root, "export", "--since", "2026-11-28", "--until",
                               "2026-11-29", "--out", out)
    assert rc == 0 and err == "" and stdout.startswith("exported 3 entries, ")
    size = sum(p.stat().st_size for d in (arc_findings.images, arc_findings.sidecars, arc_findings.overlays)
               for p in d.values())
    assert f" {size} bytes " in stdout  # the overlays are counted
    if tool.is_tar(out):
        with tarfile.open(out) as tar:
            files = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    else:
        files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    expected = ["classifier", "detection", "anomaly"]
    _check_export(arc_findings, files, expected)
    rows = {r["decision_id"]: r for r in csv.DictReader(io.StringIO(files["index.csv"].decode()))}
    det, ano = rows[arc_findings.ids["detection"]], rows[arc_findings.ids["anomaly"]]
    assert (det["defects"], det["worst_class"], det["area_px"]) == ("2", "scratch", "1024")
    assert (ano["defects"], ano["worst_class"], ano["area_px"]) == ("1", "", "1234")
    assert list(rows[arc_findings.ids["classifier"]])[-6:] == ["defects", "worst_class", "area_px", "image", "sidecar",
                                                                "overlay"]
    if not tool.is_tar(out):  # an export is an archive again: its overlays are part of its entries
        rc, listed, _ = run_main(capsys, "list", "--json", "--path", out)
        assert [json.loads(x)["overlay_path"] is not None for x in listed.splitlines()] == [False, True, True]
