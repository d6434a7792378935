"""The image archive (plcbridge/archive): what it keeps, whole files only, its bounds, and a
disk that is full, gone or slow, which costs frames and never the PLC's answers; for a
decision with findings (real anomaly and detection models), the frame as judged and an
overlay beside it that shows them, one entry with it for the scan, the sizes and eviction."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import read_metric, running, station_config, wait_for

from plcbridge.archive import ArchiveSink
from plcbridge.archive.store import Index, entry_paths, overlay_path, scan, sidecar_json, write_atomic
from plcbridge.config import ArchiveSettings
from plcbridge.contract import FaultCode, ResultCode
from plcbridge.decision import Decision, Request, failsafe
from plcbridge.journal import Journal, new_decision_id
from plcbridge.metrics import Metrics
from plcbridge.sinks import DecisionRecord, SinkFanout


def _frame(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), np.uint8)


def _decision(result: ResultCode, seq: int, image: np.ndarray | None, fault: FaultCode = FaultCode.NONE) -> Decision:
    t = time.monotonic()
    req = Request(seq, 500 + seq, t, plc_session=1)
    if result is ResultCode.FAILSAFE:
        return failsafe(fault, t, "test", model_version=4, request=req, frame_seq=seq, t_capture=t, image=image)
    return Decision(result, FaultCode.NONE, 0.9 if result is ResultCode.FAIL else 0.1, t, 4, seq, t, request=req, image=image)


def _archive(tmp_path: Path, **settings) -> tuple[ArchiveSink, Journal, SinkFanout, Metrics]:
    m = Metrics()
    sink = ArchiveSink(ArchiveSettings(enabled=True, path=tmp_path, **settings), m)
    fanout = SinkFanout(m)
    fanout.add(sink)
    return sink, Journal(m, "st", fanout), fanout, m


def test_it_keeps_every_fail_every_failsafe_with_a_frame_and_a_sample_of_pass(tmp_path: Path):
    _, journal, fanout, m = _archive(tmp_path, pass_every=3)
    ids = {}
    for i in range(9):
        ids[f"pass{i}"] = journal.decision(_decision(ResultCode.PASS, i, _frame(i)))
    ids["fail"] = journal.decision(_decision(ResultCode.FAIL, 20, _frame(20)))
    ids["bad_frame"] = journal.decision(_decision(ResultCode.FAILSAFE, 21, _frame(21), FaultCode.BAD_FRAME))
    journal.decision(_decision(ResultCode.FAILSAFE, 22, None, FaultCode.NO_FRAME))  # no frame: nothing to keep
    fanout.close()
    entries, leftovers = scan(tmp_path)
    assert leftovers == 0
    kept = {e.decision_id for e in entries}
    assert kept == {ids["pass2"], ids["pass5"], ids["pass8"], ids["fail"], ids["bad_frame"]}
    assert read_metric(m, "plcbridge_archive_saved_total", result="PASS") == 3
    assert read_metric(m, "plcbridge_archive_saved_total", result="FAILSAFE") == 1
    fail = next(e for e in entries if e.decision_id == ids["fail"])
    record = fail.record()
    assert record["decision_id"] == ids["fail"] and record["result"] == "FAIL" and record["part_id"] == 520
    assert record["plc_session"] == 1 and record["model_version"] == 4 and record["image"] == fail.image.name
    assert fail.image.name.endswith(f"_FAIL_{ids['fail']}.png") and fail.image.parent.parent.name == time.strftime("%Y-%m-%d", time.gmtime())
    assert (cv2.imread(str(fail.image)) == _frame(20)).all()  # PNG: the frame exactly as judged


def test_pass_frames_are_also_limited_per_interval_and_jpeg_has_its_quality(tmp_path: Path):
    _, journal, fanout, _ = _archive(tmp_path, pass_every=1, pass_min_interval_s=3600, format="jpeg", jpeg_quality=50)
    for i in range(5):
        journal.decision(_decision(ResultCode.PASS, i, _frame(i, 128)))
    fanout.close()
    entries, _ = scan(tmp_path)
    assert len(entries) == 1 and entries[0].image.suffix == ".jpg"
    assert cv2.imread(str(entries[0].image)).shape == (128, 128, 3)


def test_png_compression_trades_bytes_for_cpu_and_stays_lossless(tmp_path: Path):
    sizes = {}
    for level in (0, 1, None):
        root = tmp_path / f"level{level}"
        root.mkdir()
        _, journal, fanout, _ = _archive(root, png_compression=level)
        frame = np.tile(_frame(7, 32), (4, 4, 1))  # the same 128x128 at every level, repetitive: zlib finds something
        journal.decision(_decision(ResultCode.FAIL, 1, frame))
        fanout.close()
        (entry,), _ = scan(root)
        assert (cv2.imread(str(entry.image)) == frame).all()  # lossless at every level
        sizes[level] = entry.image.stat().st_size
    assert sizes[0] > 2 * sizes[1] and sizes[0] > sizes[None], sizes  # level 0 stores, the others compress
    # Level 0 stores the pixels without libpng's row filters (choosing one per row was most of its CPU).
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):
        (entry,), _ = scan(tmp_path / "level0")
        assert set(_png_row_filters(entry.image.read_bytes(), 128, 3)) == {0}


def _png_row_filters(png: bytes, width: int, channels: int) -> bytes:
    """The filter type byte of every row of an 8-bit PNG (0: none)."""
    idat, at = b"", 8
    while at < len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        if kind == b"IDAT":
            idat += png[at + 8:at + 8 + length]
        at += 12 + length
    raw, stride = zlib.decompress(idat), 1 + width * channels
    return raw[::stride]


def test_writes_are_atomic_and_what_a_crash_leaves_is_cleaned_and_never_listed(tmp_path: Path):
    saved = time.time()
    image, sidecar = entry_paths(tmp_path, saved, "FAIL", new_decision_id(), ".png")
    image.parent.mkdir(parents=True)
    write_atomic(image, b"png bytes")
    assert not list(image.parent.glob(".*.tmp"))
    # A power cut mid-write: a temporary file, and an image whose sidecar never came.
    (image.parent / f".{sidecar.name}.tmp").write_bytes(b'{"half": ')
    entries, removed = scan(tmp_path)
    assert entries == [] and removed == len(b"png bytes") + len(b'{"half": ')
    assert list(tmp_path.rglob("*.*")) == []
    # A whole pair is an entry.
    write_atomic(image, b"png bytes")
    write_atomic(sidecar, sidecar_json({"result": "FAIL"}, image, saved))
    entries, removed = scan(tmp_path)
    assert [e.image for e in entries] == [image] and removed == 0


def test_the_oldest_go_first_past_the_byte_quota_and_the_age_limit(tmp_path: Path):
    now = time.time()
    for k, age_days in enumerate((40, 20, 10, 5, 1)):  # oldest first
        saved = now - age_days * 86400
        image, sidecar = entry_paths(tmp_path, saved, "FAIL", new_decision_id(), ".png")
        image.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(image, bytes(1000))
        write_atomic(sidecar, sidecar_json({"k": k}, image, saved))
    entries, _ = scan(tmp_path)
    index = Index(entries)
    size = entries[0].size
    assert index.evict(10 * size, 30 * 86400, now) == (0, 1)  # 40 days old: past max_age
    assert index.evict(2 * size, 30 * 86400, now) == (2, 0)  # over quota: the two oldest left
    left, _ = scan(tmp_path)
    assert [e.record()["k"] for e in left] == [3, 4]
    assert len([p for p in tmp_path.iterdir()]) == 2  # the emptied day folders went with them


def _free_run_station(sim, root: Path, **archive):
    cfg = station_config(sim.port, "free-run", archive={"enabled": True, "path": str(root), "pass_every": 1, **archive})
    return cfg


def _watch(d, sim, seconds: float) -> dict:
    """Run `seconds` and report what the PLC and the write loop saw meanwhile."""
    writes, alarms, overruns = sim.summary()["writes_seen"], sim.summary()["heartbeat_alarms"], d.loop.overruns
    time.sleep(seconds)
    s = sim.summary()
    return {"writes": s["writes_seen"] - writes, "alarms": s["heartbeat_alarms"] - alarms, "overruns": d.loop.overruns - overruns}


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MB tmpfs: a full disk for real (root only; skipped elsewhere with how to run it)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'not root'}): run the suite as root "
                    "(`sudo make test`) to test the archive on a full disk")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_costs_frames_never_the_plc(make_sim, small_disk: Path):
    sim = make_sim("free-run", watchdog_ms=5000)
    with running(_free_run_station(sim, small_disk)) as d:
        def saved() -> float:
            return sum(read_metric(d, "plcbridge_archive_saved_total", result=r) for r in ("PASS", "FAIL"))

        wait_for(lambda: read_metric(d, "plcbridge_archive_dropped_total", reason="disk_full") >= 3, 60,
                 "the disk to fill")
        full_at = saved()
        seen = _watch(d, sim, 2.0)
        # The oldest frames made room: the newest are still kept on the full disk.
        wait_for(lambda: saved() >= full_at + 3, 30, "frames saved on the full disk")
        assert read_metric(d, "plcbridge_archive_evicted_total", reason="disk_full") >= 1
    assert full_at >= 3  # it kept frames until the disk was full
    assert seen["writes"] >= 100 and seen["alarms"] == 0, seen  # 2 s at 10 ms: the PLC heard from us throughout
    assert seen["overruns"] <= 20, seen  # generous: a busy 2-core machine; the archive is not on this thread
    assert not list(small_disk.rglob(".*.tmp")), "a half-written file was left behind"
    for e in scan(small_disk)[0]:  # every entry whole: its sidecar parses and its image decodes
        json.loads(e.sidecar.read_text())
        assert cv2.imread(str(e.image)) is not None


def test_a_vanished_folder_is_counted_not_recreated_and_saving_resumes_when_it_is_back(make_sim, tmp_path: Path):
    root = tmp_path / "usb"
    root.mkdir()
    sim = make_sim("free-run", watchdog_ms=5000)
    with running(_free_run_station(sim, root)) as d:
        wait_for(lambda: read_metric(d, "plcbridge_archive_saved_total", result="PASS") >= 3, 60, "frames saved")
        # The stick is pulled: at once (an rmtree races the writer making a new file in a folder it empties).
        root.rename(tmp_path / "pulled")
        wait_for(lambda: read_metric(d, "plcbridge_archive_dropped_total", reason="missing_folder") >= 3, 30,
                 "missing_folder drops")
        assert not root.exists()  # not created in place of the missing disk
        seen = _watch(d, sim, 1.0)
        root.mkdir()  # plugged in again
        before = read_metric(d, "plcbridge_archive_saved_total", result="PASS")
        wait_for(lambda: read_metric(d, "plcbridge_archive_saved_total", result="PASS") >= before + 3, 30,
                 "saving again")
    assert seen["writes"] >= 50 and seen["alarms"] == 0, seen
    assert scan(root)[0], "frames saved after the folder came back"


class _SlowStick(ArchiveSink):
    """A USB stick that takes 200 ms per frame."""

    def _save(self, record: DecisionRecord) -> str | None:
        time.sleep(0.2)
        return super()._save(record)


def test_a_slow_writer_loses_frames_at_its_queue_and_the_plc_notices_nothing(make_sim, tmp_path: Path, monkeypatch):
    import plcbridge.archive as archive_pkg

    monkeypatch.setattr(archive_pkg, "ArchiveSink", _SlowStick)
    sim = make_sim("free-run", watchdog_ms=5000)
    with running(_free_run_station(sim, tmp_path, queue=4)) as d:
        wait_for(lambda: read_metric(d, "plcbridge_sink_dropped_total", sink="archive", reason="queue_full") >= 10, 60,
                 "frames left out at the archive's queue")
        seen = _watch(d, sim, 1.0)
        decided = d.journal.summary()["results"]
    assert seen["writes"] >= 50 and seen["alarms"] == 0, seen
    assert sum(decided.values()) > 20  # the station kept deciding at camera rate
    assert os.path.isdir(tmp_path) and scan(tmp_path)[0]


def test_check_config_warns_of_an_archive_folder_that_is_not_there(tmp_path: Path):
    from plcbridge.checks import config_warnings

    missing = station_config(1, "triggered", archive={"enabled": True, "path": str(tmp_path / "usb")})
    assert [w for w, _ in config_warnings(missing)] == ["archive.path"]
    there = station_config(1, "triggered", archive={"enabled": True, "path": str(tmp_path)})
    off = station_config(1, "triggered", archive={"enabled": False, "path": str(tmp_path / "usb")})
    assert "archive.path" not in [w for w, _ in config_warnings(there) + config_warnings(off)]


def test_only_the_archives_own_folders_are_read(tmp_path: Path):
    """A file system's root holds lost+found (root only, 0700): never read, never a reason to fail."""
    (tmp_path / "lost+found").mkdir(mode=0o700)
    (tmp_path / "lost+found" / "#1234").write_bytes(b"x")
    (tmp_path / "notes").mkdir()
    _, journal, fanout, m = _archive(tmp_path)
    journal.decision(_decision(ResultCode.FAIL, 1, _frame(1)))
    fanout.close()
    entries, _ = scan(tmp_path)
    assert len(entries) == 1 and read_metric(m, "plcbridge_archive_saved_total", result="FAIL") == 1
    assert (tmp_path / "lost+found" / "#1234").exists() and (tmp_path / "notes").exists()


# ---------------------------------------------------------------------- findings: the overlay beside the frame


def _colour_at(img: np.ndarray, xs: slice, ys: slice) -> np.ndarray:
    """The mean BGR of a patch (a JPEG's colours are close, not exact)."""
    return img[ys, xs].reshape(-1, 3).mean(axis=0)


def _reddish(bgr: np.ndarray) -> bool:
    return bool(bgr[2] > 150 and bgr[0] < 110 and bgr[1] < 110)


def _bluish(bgr: np.ndarray) -> bool:
    return bool(bgr[0] > 150 and bgr[2] < 130)


def test_a_decision_with_findings_keeps_its_frame_as_judged_and_an_overlay_that_shows_them(tmp_path: Path):
    from findings_models import DENT_BOX, SCRATCH_BOX, Judge, anomaly_frames, detection_frame, detection_manifest

    root = tmp_path / "archive"
    root.mkdir()
    _, journal, fanout, m = _archive(root, pass_every=1)
    yolo, anomaly = Judge(detection_manifest(tmp_path / "yolo"), journal), Judge("builtin:anomaly", journal)
    frames = {"detection": detection_frame(), "empty": detection_frame() * 0, "anomaly": anomaly_frames()[1]}
    try:
        ids = {"detection": journal.decision(yolo.decide(frames["detection"])),
               "empty": journal.decision(yolo.decide(frames["empty"])),
               "anomaly": journal.decision(anomaly.decide(frames["anomaly"]))}
    finally:
        fanout.close()
        yolo.close()
        anomaly.close()
    entries, leftovers = scan(root)
    assert leftovers == 0 and len(entries) == 3
    by_id = {e.decision_id: e for e in entries}
    for name, decision_id in ids.items():
        e = by_id[decision_id]
        record = e.record()
        # The frame exactly as judged (PNG), and the overlay beside it: same stem, counted in the size.
        assert np.array_equal(cv2.imread(str(e.image)), frames[name])
        assert e.overlay == e.sidecar.with_name(e.sidecar.stem + ".overlay.jpg") and e.overlay.is_file()
        assert record["overlay"] == e.overlay.name and record["image"] == e.image.name
        assert e.size == sum(p.stat().st_size for p in (e.sidecar, e.image, e.overlay))
        assert record["findings"]["kind"] == ("anomaly" if name == "anomaly" else "detection")
    assert read_metric(m, "plcbridge_archive_bytes") == sum(e.size for e in entries)

    det = by_id[ids["detection"]]
    record = det.record()
    assert record["result"] == "FAIL" and record["defect_count"] == 1 and record["defect_class"] == 0
    assert [d["box"] for d in record["findings"]["detections"]] == [SCRATCH_BOX, DENT_BOX]
    overlay, frame = cv2.imread(str(det.overlay)), frames["detection"]
    assert overlay.shape == frame.shape
    # The counted scratch's box is red where the frame is black (its right edge, just past the red
    # cell), the dent that did not count light blue; both are labelled above their box.
    x, y, w, h = SCRATCH_BOX
    assert not frame[y + 4:y + h - 4, x + w].any() and _reddish(_colour_at(overlay, slice(x + w, x + w + 1), slice(y + 4, y + h - 4)))
    x, y, w, h = DENT_BOX
    assert not frame[y + 4:y + h - 4, x + w].any() and _bluish(_colour_at(overlay, slice(x + w, x + w + 1), slice(y + 4, y + h - 4)))
    assert _bluish(_colour_at(overlay, slice(x + 1, x + 10), slice(y - 6, y - 2)))  # the label's background

    empty = by_id[ids["empty"]]
    assert empty.record()["result"] == "PASS" and empty.record()["defect_class"] == 65535
    assert cv2.imread(str(empty.overlay))[120:, :].max() < 40  # nothing found, nothing drawn (below the band)

    ano = by_id[ids["anomaly"]]
    f = ano.record()["findings"]
    assert ano.record()["result"] == "FAIL" and ano.record()["anomaly_area"] == f["area_px"] > 0
    overlay, frame = cv2.imread(str(ano.overlay)).astype(int), frames["anomaly"].astype(int)
    x, y, w, h = f["box"]
    inside = np.abs(overlay[y:y + h, x:x + w] - frame[y:y + h, x:x + w]).mean()
    assert inside > 10, inside  # tinted and outlined where the map is anomalous
    band = 100  # the verdict's band at the top
    outside = np.ones(frame.shape[:2], bool)
    outside[:band] = False
    outside[max(0, y - 24):y + h + 24, max(0, x - 24):x + w + 24] = False
    assert np.abs(overlay - frame)[outside].mean() < 3  # and the rest of the frame as it was (a JPEG of it)
    red = (overlay[..., 2] > 180) & (overlay[..., 1] < 90) & (overlay[..., 0] < 90) & ~(frame[..., 2] > 180)
    assert red[max(0, y - 4):y + h + 4, max(0, x - 4):x + w + 4].sum() >= 8  # the red outline of a counted anomaly


def test_an_overlay_is_part_of_its_entry_counted_evicted_and_cleaned_with_it(tmp_path: Path):
    now = time.time()
    made = []
    for k, age_days in enumerate((3, 2, 1)):  # oldest first; the first two have an overlay
        saved = now - age_days * 86400
        image, sidecar = entry_paths(tmp_path, saved, "FAIL", new_decision_id(), ".png")
        image.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(image, bytes(1000))
        overlay = overlay_path(sidecar) if k < 2 else None
        if overlay is not None:
            write_atomic(overlay, bytes(500))
        write_atomic(sidecar, sidecar_json({"k": k}, image, saved, overlay))
        made.append((image, sidecar, overlay))
    # What a crash leaves: an overlay whose sidecar was never written, a half-written overlay.
    hour = made[2][0].parent
    orphan = hour / "235959.000_FAIL_01ORPHAN0000000000000000000.overlay.jpg"
    orphan.write_bytes(bytes(300))
    (hour / f".{made[2][1].stem}.overlay.jpg.tmp").write_bytes(bytes(7))
    entries, removed = scan(tmp_path)
    assert removed == 307 and not orphan.exists() and not list(hour.glob(".*"))
    assert [e.overlay for e in entries] == [made[0][2], made[1][2], None]
    assert [e.size for e in entries] == [e.sidecar.stat().st_size + 1500 for e in entries[:2]] + \
        [entries[2].sidecar.stat().st_size + 1000]
    assert json.loads(made[0][1].read_text())["overlay"] == made[0][2].name and "overlay" not in entries[2].record()
    # The page finds each entry's pictures in the index: the overlay to show when there is one.
    index = Index(entries)
    first = index.pictures(entries[0].decision_id)
    assert first is not None and first.shown == made[0][2] and first.image == made[0][0]
    assert index.pictures(entries[2].decision_id).shown == made[2][0]
    assert index.pictures("01NOTARCHIVED0000000000000") is None
    # Eviction takes the whole entry, overlay included, and counts its bytes, and forgets it.
    assert index.bytes == sum(e.size for e in entries)
    assert index.evict(entries[2].size + 1, 30 * 86400, now) == (2, 0)
    assert index.bytes == entries[2].size
    assert all(not p.exists() for image, sidecar, overlay in made[:2] for p in (image, sidecar, overlay))
    assert index.pictures(entries[0].decision_id) is None and index.pictures(entries[2].decision_id) is not None
    assert [e.decision_id for e in scan(tmp_path)[0]] == [entries[2].decision_id]


def test_a_picture_that_cannot_be_drawn_costs_the_overlay_never_the_frame(tmp_path: Path, monkeypatch):
    from findings_models import Judge, detection_frame, detection_manifest

    import plcbridge.archive.sink as archive_sink

    def broken(*args, **kwargs):
        raise RuntimeError("drawing bug")

    monkeypatch.setattr(archive_sink, "annotate", broken)
    (tmp_path / "archive").mkdir()
    _, journal, fanout, m = _archive(tmp_path / "archive")
    judge = Judge(detection_manifest(tmp_path / "yolo"), journal)
    try:
        decision_id = journal.decision(judge.decide(detection_frame()))
    finally:
        fanout.close()
        judge.close()
    (entry,), _ = scan(tmp_path / "archive")
    assert entry.decision_id == decision_id and entry.overlay is None and "overlay" not in entry.record()
    assert entry.record()["findings"]["count"] == 1 and np.array_equal(cv2.imread(str(entry.image)), detection_frame())
    assert read_metric(m, "plcbridge_archive_saved_total", result="FAIL") == 1
    assert read_metric(m, "plcbridge_archive_overlays_failed_total") == 1


def test_docs_archive_quotes_the_settings_class_as_it_is():
    """docs/archive.md shows `ArchiveSettings` with its comments: the copy is the class's source."""
    import inspect

    doc = (Path(__file__).resolve().parent.parent / "docs" / "archive.md").read_text()
    quoted = doc[doc.index("class ArchiveSettings(Strict):"):]
    assert quoted[:quoted.index("```")].rstrip() == inspect.getsource(ArchiveSettings).rstrip()
