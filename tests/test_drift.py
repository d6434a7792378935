"""Drift (issue 22, part 4): the PSI arithmetic against hand-computed values, the manifest's
`reference` field, `validate-model --reference` writing one into a copy of a manifest (and
refusing a folder too small to make one), the synthetic camera's lighting change, the drift
sink on real decisions, and a daemon in free-run whose camera's lighting changes mid-run:
its drift figure stays below the warning before the change and rises above it after."""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import read_metric, station_config, wait_for
from onnx_models import copy_demo

from plcbridge.adapters.camera.synthetic import SyntheticCamera
from plcbridge.cli import main
from plcbridge.config import ConfigError, DriftSettings, SyntheticCameraSettings, parse_config
from plcbridge.contract import FaultCode, ResultCode
from plcbridge.decision import Decision, failsafe
from plcbridge.drift import DriftSink, ModelRef
from plcbridge.inference.drift import EPSILON, bin_index, histogram, no_drift_psi, psi, reference_edges
from plcbridge.inference.errors import ModelError
from plcbridge.inference.manifest import Manifest, ScoreReference, load_manifest
from plcbridge.inference.validate import write_reference
from plcbridge.metrics import Metrics
from plcbridge.sinks import DecisionRecord

DEMO = "demo-defect-cnn"  # the bundled demo model's name (version 1)


# ---------------------------------------------------------------- PSI, by hand


def test_psi_of_identical_histograms_is_zero_and_empty_bins_on_both_sides_add_nothing() -> None:
    assert psi([10, 20, 70], [10, 20, 70]) == 0.0
    assert psi([1, 2, 7], [100, 200, 700]) == pytest.approx(0.0, abs=1e-15)  # shares, not counts
    assert psi([50, 0, 50], [5, 0, 5]) == pytest.approx(0.0, abs=1e-15)


def test_psi_of_two_bins_is_the_hand_computed_figure_and_symmetric() -> None:
    # p = (0.5, 0.5), q = (0.8, 0.2): (0.5 - 0.8) ln(0.5/0.8) + (0.5 - 0.2) ln(0.5/0.2)
    # = -0.3 * -0.4700036 + 0.3 * 0.9162907 = 0.1410011 + 0.2748872
    assert psi([50, 50], [80, 20]) == pytest.approx(0.4158883, abs=1e-7)
    assert psi([80, 20], [50, 50]) == pytest.approx(psi([50, 50], [80, 20]), abs=1e-15)
    # p = (0.25, 0.25, 0.5), q = (0.5, 0.25, 0.25): 0.25 ln 2 twice, the middle bin 0
    assert psi([1, 1, 2], [2, 1, 1]) == pytest.approx(0.5 * math.log(2), abs=1e-12)


def test_an_empty_reference_bin_counts_with_epsilon() -> None:
    # p = (0.9, 0.1), q = (1.0, 0 -> 1e-4): (0.9 - 1) ln 0.9 + (0.1 - 1e-4) ln(0.1 / 1e-4)
    # = 0.0105361 + 0.0999 * 6.9077553 = 0.0105361 + 0.6900848
    assert EPSILON == 1e-4
    assert psi([90, 10], [100, 0]) == pytest.approx(0.7006209, abs=1e-7)
    assert psi([90, 10], [100, 0], eps=1e-3) == pytest.approx(-0.1 * math.log(0.9) + 0.099 * math.log(100), abs=1e-12)


def test_psi_refuses_histograms_over_other_bins_or_without_counts() -> None:
    with pytest.raises(ValueError, match="different bins"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="without any count"):
        psi([0, 0], [1, 2])


def test_bins_are_left_closed_the_last_closed_and_outside_scores_clipped() -> None:
    edges = [0.0, 0.25, 0.5, 1.0]
    assert [bin_index(s, edges) for s in (0.0, 0.2499, 0.25, 0.4999, 0.5, 0.99, 1.0)] == [0, 0, 1, 1, 2, 2, 2]
    assert bin_index(-0.5, edges) == 0 and bin_index(1.5, edges) == 2
    assert histogram([0.1, 0.3, float("nan"), 1.0, 0.7], edges) == [1, 1, 2]


def test_reference_edges_are_the_deciles_and_the_threshold_and_refuse_no_spread() -> None:
    scores = [i / 100 for i in range(101)]  # 0.00 .. 1.00: the deciles are 0.1 .. 0.9
    assert reference_edges(scores) == pytest.approx([k / 10 for k in range(11)])
    assert reference_edges(scores, also=(0.55,)) == pytest.approx([0, .1, .2, .3, .4, .5, .55, .6, .7, .8, .9, 1])
    assert histogram(scores, reference_edges(scores)) == [10] * 9 + [11]
    # Ties merge: half the scores 0, half 1 -> edges 0, 0.5 (the median between them), 1.
    assert reference_edges([0.0] * 50 + [1.0] * 50) == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="images the same score, 0.3: there is no distribution"):
        reference_edges([0.3] * 100, also=(0.5,))
    with pytest.raises(ValueError, match=r"scores 0.3 .. 0.35, all in one bin"):
        reference_edges([0.3] * 95 + [0.35] * 5, also=(0.5,))


def test_the_no_drift_figure_is_the_chi_square_expectation() -> None:
    assert no_drift_psi(10, 500, 600) == pytest.approx(9 * (1 / 500 + 1 / 600))
    # ... and it is what two samples of one distribution give, on average.
    rng = np.random.default_rng(3)
    edges = [k / 10 for k in range(11)]
    ref = histogram(rng.beta(2, 5, 600), edges)
    figures = [psi(histogram(rng.beta(2, 5, 500), edges), ref) for _ in range(200)]
    assert float(np.mean(figures)) == pytest.approx(no_drift_psi(10, 500, 600), rel=0.35)


# ---------------------------------------------------------------- the manifest's reference


def _reference(**over) -> dict:
    raw = {"edges": [0.0, 0.5, 1.0], "counts": [60, 40], "images": 100, "folder": "refs", "created": "2026-12-07T00:00:00Z"}
    raw.update(over)
    return raw


def test_old_manifests_stay_valid_and_carry_no_reference() -> None:
    manifest, _ = load_manifest("builtin:demo")
    assert manifest.reference is None
    ref, why = manifest.drift_reference
    assert ref is None and "no reference score distribution" in why and "--reference" in why


@pytest.mark.parametrize(("over", "message"), [
    ({"counts": [60, -1], "images": 59}, "greater than or equal to 0"),
    ({"edges": [0.0, 0.6, 0.5, 1.0], "counts": [1, 1, 98]}, "strictly increasing"),
    ({"edges": [0.0, 0.5, 0.5, 1.0], "counts": [1, 1, 98]}, "strictly increasing"),
    ({"counts": [50, 25, 25]}, "one per bin"),
    ({"images": 99}, "add up to 100"),
    ({"edges": [0.1, 0.5, 1.0]}, "from 0 to 1"),
    ({"edges": [0.0, 0.5, 0.9]}, "from 0 to 1"),
    ({"edges": [0.0, 0.5, 1.5]}, "less than or equal to 1"),
    ({"counts": [60.0, 40]}, "integer"),
    ({"extra": 1}, "xtra"),
])
def test_a_bad_reference_is_refused_naming_the_problem(tmp_path: Path, over: dict, message: str) -> None:
    path = copy_demo(tmp_path, reference=_reference(**over))
    with pytest.raises(ModelError, match="invalid model manifest") as e:
        load_manifest(path)
    assert "reference" in str(e.value) and message in str(e.value)


def test_a_reference_made_with_another_model_file_is_not_compared_with(tmp_path: Path) -> None:
    manifest, _ = load_manifest(copy_demo(tmp_path, reference=_reference(model_sha256="AB" * 32)))
    assert isinstance(manifest.reference, ScoreReference) and manifest.reference.model_sha256 == "ab" * 32
    ref, why = manifest.drift_reference
    assert ref is None and "another model file" in why
    same, _ = load_manifest(copy_demo(tmp_path / "same", reference=_reference(model_sha256=manifest.sha256)))
    assert same.drift_reference[0] == same.reference


# ---------------------------------------------------------------- validate-model --reference


def _camera_images(folder: Path, count: int, seed: int = 1, **settings) -> Path:
    """`count` frames of the synthetic camera (software trigger: unpaced), as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    cam = SyntheticCamera(SyntheticCameraSettings(trigger="software", seed=seed, **settings))
    cam.open()
    try:
        for i in range(count):
            grabbed = cam.grab()
            assert grabbed is not None
            assert cv2.imwrite(str(folder / f"{i:04d}.png"), grabbed[0])
    finally:
        cam.close()
    return folder


def _original_demo_manifest(model_dir: Path) -> Path:
    """The bundled demo model as its own manifest.json is written (no `reference` key at all)."""
    _, bundled = load_manifest("builtin:demo")
    path = copy_demo(model_dir)
    path.write_bytes(bundled.read_bytes())
    return path


def test_validate_model_writes_the_reference_in_place_keeping_every_other_byte(tmp_path: Path, capsys) -> None:
    manifest_path = _original_demo_manifest(tmp_path / "model")
    before = manifest_path.read_text()
    folder = _camera_images(tmp_path / "refs", 60)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden").write_text("left out")

    assert main(["validate-model", str(manifest_path.parent), "--runs", "3", "--reference", str(folder)]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["ok"] and report["reference"]["written"] is True and report["reference"]["images"] == 60
    assert "reference: 61/61 files" in err
    assert f"reference written to {manifest_path}: 60 of 61 images in {folder} judged (1 unreadable, 0 refused" in err

    after = manifest_path.read_text()
    head = before.rstrip()[:-1].rstrip()  # everything up to the closing brace
    assert after.startswith(head + ',\n  "reference": {\n') and after.endswith("\n  }\n}\n")
    raw = json.loads(after)
    assert list(raw) == [*json.loads(before), "reference"]  # key order kept, the reference last
    manifest, _ = load_manifest(manifest_path)
    ref = manifest.reference
    assert ref is not None and manifest.drift_reference == (ref, "")
    assert ref.images == 60 == sum(ref.counts) and ref.unreadable == 1 and ref.refused == 0
    assert ref.folder == str(folder) and ref.created.endswith("Z") and ref.model_sha256 == manifest.sha256
    assert ref.edges[0] == 0 and ref.edges[-1] == 1 and 0.5 in ref.edges  # the threshold is an edge
    assert not [p for p in manifest_path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left

    # Run again on another folder: the reference is replaced where it stands, nothing else moves.
    again = _camera_images(tmp_path / "refs2", 55, seed=2)
    assert main(["validate-model", str(manifest_path), "--runs", "3", "--reference", str(again)]) == 0
    capsys.readouterr()
    third = manifest_path.read_text()
    assert third.startswith(head + ',\n  "reference": {\n') and list(json.loads(third)) == list(raw)
    assert load_manifest(manifest_path)[0].reference.images == 55


@pytest.mark.parametrize("files", [10, 49])
def test_validate_model_refuses_a_folder_too_small_and_changes_nothing(tmp_path: Path, capsys, files: int) -> None:
    manifest_path = copy_demo(tmp_path / "model")
    before, listing = manifest_path.read_bytes(), sorted(manifest_path.parent.iterdir())
    folder = _camera_images(tmp_path / "refs", files)
    assert main(["validate-model", str(manifest_path), "--runs", "3", "--reference", str(folder)]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # refused before any check ran
    assert f"plcbridge validate-model: {folder}: {files} file(s); a reference needs at least 50 images" in err
    assert manifest_path.read_bytes() == before and sorted(manifest_path.parent.iterdir()) == listing


def test_validate_model_refuses_a_folder_of_too_few_readable_images_after_the_checks(tmp_path: Path, capsys) -> None:
    manifest_path = copy_demo(tmp_path / "model")
    before = manifest_path.read_bytes()
    folder = _camera_images(tmp_path / "refs", 45)
    for i in range(10):
        (folder / f"broken{i}.png").write_bytes(b"\x89PNG not really")
    assert main(["validate-model", str(manifest_path), "--runs", "3", "--reference", str(folder)]) == 2
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["ok"] and report["reference"] == {"written": False, "error": report["reference"]["error"]}
    assert "45 of 55 files judged (10 unreadable, 0 refused by the model" in report["reference"]["error"]
    assert "no reference written" in err and "at least 50 images" in err
    assert manifest_path.read_bytes() == before


def test_validate_model_refuses_a_missing_folder_and_a_bundled_model(tmp_path: Path, capsys) -> None:
    manifest_path = copy_demo(tmp_path / "model")
    assert main(["validate-model", str(manifest_path), "--reference", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such folder; --reference takes a folder of reference images" in capsys.readouterr().err
    folder = _camera_images(tmp_path / "refs", 50)
    assert main(["validate-model", "builtin:demo", "--reference", str(folder)]) == 2
    assert "builtin:demo is the one installed with plcbridge: copy its folder" in capsys.readouterr().err


def test_write_reference_validates_before_it_replaces(tmp_path: Path) -> None:
    manifest_path = copy_demo(tmp_path)
    before = manifest_path.read_bytes()
    ref = ScoreReference.model_validate(_reference())
    # A manifest that is not one JSON object is not touched.
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ModelError, match="not a JSON object"):
        write_reference(bad, ref)
    assert bad.read_text() == "[1, 2]"
    # One that would not validate (an unknown key already in it) is not touched either.
    raw = json.loads(before)
    raw["colour"] = "red"
    manifest_path.write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="would not be valid"):
        write_reference(manifest_path, ref)
    assert json.loads(manifest_path.read_text()) == raw
    manifest_path.write_text(json.dumps(json.loads(before)))  # compact, one line
    write_reference(manifest_path, ref)
    assert Manifest.model_validate(json.loads(manifest_path.read_text())).reference == ref


# ---------------------------------------------------------------- the synthetic camera's lighting


def test_the_lighting_settings_go_together() -> None:
    with pytest.raises(ValueError, match="change nothing"):
        SyntheticCameraSettings(lighting_change_after_s=5)
    with pytest.raises(ValueError, match="not set"):
        SyntheticCameraSettings(lighting_gain=0.5)
    with pytest.raises(ValueError, match="not set"):
        SyntheticCameraSettings(lighting_offset=-20)
    assert SyntheticCameraSettings(lighting_change_after_s=0, lighting_offset=-20).lighting_gain == 1
    with pytest.raises(ConfigError, match="lighting_change_after_s"):
        parse_config({"camera": {"source": "synthetic", "lighting_change_after_s": 1.0}}, "<test>", env={})


def test_frames_after_the_lighting_change_are_gain_times_pixel_plus_offset_and_say_so() -> None:
    plain = SyntheticCamera(SyntheticCameraSettings(trigger="software", seed=4))
    changed = SyntheticCamera(SyntheticCameraSettings(trigger="software", seed=4, lighting_change_after_s=0,
                                                      lighting_gain=0.5, lighting_offset=-10))
    later = SyntheticCamera(SyntheticCameraSettings(trigger="software", seed=4, lighting_change_after_s=3600,
                                                    lighting_gain=0.5))
    for cam in (plain, changed, later):
        cam.open()
    for _ in range(3):
        a, b, c = plain.grab(), changed.grab(), later.grab()
        assert a is not None and b is not None and c is not None
        assert len(a) == 2 and len(c) == 2 and np.array_equal(a[0], c[0]) and a[1] == c[1]  # not yet changed
        assert len(b) == 3 and b[1] == a[1] and b[2] == {"camera_lighting": "changed"}
        expected = np.clip(np.round(a[0].astype(np.float64) * 0.5 - 10), 0, 255)
        assert np.abs(b[0].astype(np.int16) - expected).max() <= 1 and b[0].dtype == np.uint8
        assert b[0].mean() < a[0].mean() * 0.5
    for cam in (plain, changed, later):
        cam.close()


# ---------------------------------------------------------------- the drift sink, on real decisions


def _verdict(score: float, seq: int, version: int = 1) -> DecisionRecord:
    d = Decision(ResultCode.FAIL if score >= 0.5 else ResultCode.PASS, FaultCode.NONE, score, 0.0, version, seq)
    return DecisionRecord(f"id{seq}", {}, d)


def test_the_sink_makes_one_figure_per_full_window_per_model(caplog) -> None:
    metrics = Metrics()
    ref = ScoreReference.model_validate({"edges": [0.0, 0.5, 1.0], "counts": [80, 20], "images": 100})
    models = {1: ModelRef(DEMO, 1, ref), 2: ModelRef(DEMO, 2, None, "no reference here")}
    sink = DriftSink(DriftSettings(window=50, warn_psi=0.2), metrics, lambda d: models.get(d.model_version))
    assert sink.images is False and sink.name == "drift"
    assert read_metric(metrics, "plcbridge_drift_warn_psi") == 0.2
    labels = {"model": DEMO, "version": "1"}
    with caplog.at_level(logging.INFO, logger="plcbridge.drift"):
        seq = 0
        for _ in range(2):  # two windows at the reference's shares: PSI 0
            for k in range(50):
                seq += 1
                sink.write(_verdict(0.9 if k % 5 == 0 else 0.1, seq))
                sink.write(DecisionRecord("fs", {}, failsafe(FaultCode.CAMERA_FAULT, 0.0, "no frame", model_version=1)))
        assert read_metric(metrics, "plcbridge_drift_windows_total", **labels) == 2
        assert read_metric(metrics, "plcbridge_drift_psi", **labels) == pytest.approx(0.0, abs=1e-12)
        for k in range(49):  # half and half: PSI 0.4158883 (by hand above), not yet a full window
            seq += 1
            sink.write(_verdict(0.9 if k % 2 else 0.1, seq))
        sink.write(_verdict(0.3, 999, version=2))  # another model: a window of its own (none: no reference)
        sink.write(_verdict(0.3, 1000, version=3))  # a model the daemon does not know: left out
        assert read_metric(metrics, "plcbridge_drift_windows_total", **labels) == 2
        seq += 1
        sink.write(_verdict(0.9, seq))
    assert read_metric(metrics, "plcbridge_drift_windows_total", **labels) == 3
    assert read_metric(metrics, "plcbridge_drift_warnings_total", **labels) == 1
    assert read_metric(metrics, "plcbridge_drift_psi", **labels) == pytest.approx(0.4158883, abs=1e-6)

    events = [(r.event, r.levelno, r) for r in caplog.records if r.name == "plcbridge.drift"]
    assert [(e, lvl) for e, lvl, _ in events] == [("drift_window", logging.INFO), ("drift_window", logging.INFO),
                                                  ("drift_no_reference", logging.INFO), ("drift_warning", logging.WARNING)]
    warning = events[-1][2]
    assert (warning.model, warning.version, warning.psi, warning.warn_psi, warning.window, warning.windows) == (
        DEMO, 1, 0.4159, 0.2, 50, 3)
    assert warning.frames == [101, 150] and warning.reference_images == 100
    assert warning.no_drift_psi == pytest.approx(1 * (1 / 50 + 1 / 100), abs=1e-4)
    assert "no reference here" in events[2][2].reason

    view = sink.view()
    assert (view["window"], view["warn_psi"]) == (50, 0.2)
    two, one = view["models"]  # the most recently seen last
    assert (one["model"], one["version"], one["windows"], one["warnings"], one["filled"]) == (DEMO, 1, 3, 1, 0)
    assert one["psi"] == 0.4159 and one["warning"] is True and one["reference"]["images"] == 100
    assert [h["psi"] for h in one["history"]] == [0.0, 0.0, 0.4159]
    assert (two["version"], two["reference"], two["reason"], two["psi"]) == (2, None, "no reference here", None)
    json.dumps(view)  # JSON values only


def test_the_sink_is_fed_from_its_own_thread_by_the_journal_without_frames() -> None:
    from plcbridge.journal import Journal

    metrics = Metrics()
    ref = ScoreReference.model_validate({"edges": [0.0, 0.5, 1.0], "counts": [50, 50], "images": 100})
    seen: list[Decision] = []
    done = threading.Event()

    def reference_for(d: Decision) -> ModelRef:
        seen.append(d)
        if len(seen) == 60:
            done.set()
        return ModelRef(DEMO, 1, ref)

    journal = Journal(metrics, "test")
    journal.sinks.add(DriftSink(DriftSettings(window=50), metrics, reference_for))
    image = np.zeros((8, 8, 3), np.uint8)
    for seq in range(60):
        journal.decision(Decision(ResultCode.PASS, FaultCode.NONE, 0.1 + 0.8 * (seq % 2), 0.0, 1, seq, image=image))
    assert done.wait(10)
    journal.sinks.close()
    assert all(d.image is None for d in seen)  # images = False: handed the record without the frame
    assert read_metric(metrics, "plcbridge_drift_psi", model=DEMO, version="1") == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- a daemon whose camera's lighting changes


class _LightingSeen:
    """A sink that notes the first frame the camera says was taken under the changed lighting."""

    name = "lighting-seen"
    images = False

    def __init__(self) -> None:
        self.first_changed: int | None = None

    def write(self, record: DecisionRecord) -> None:
        d = record.decision
        if self.first_changed is None and d.frame_meta and d.frame_meta.get("camera_lighting") == "changed":
            self.first_changed = d.frame_seq

    def close(self) -> None:
        pass


WINDOW = 200  # scores per window: 2 s at 100 fps
REFERENCE_IMAGES = 600
WARN_PSI = 0.3  # the demo model at half the light: about 0.8; sampling noise at 200/600: below 0.15


def test_drift_rises_when_the_camera_lighting_changes_mid_run(tmp_path: Path, make_sim, capsys, caplog) -> None:
    from plcbridge.daemon import Daemon

    # The reference: the demo model's scores on the camera as it is, before any change (another seed).
    manifest_path = copy_demo(tmp_path / "model")
    folder = _camera_images(tmp_path / "refs", REFERENCE_IMAGES, seed=11)
    assert main(["validate-model", str(manifest_path), "--runs", "3", "--reference", str(folder)]) == 0
    capsys.readouterr()
    assert load_manifest(manifest_path)[0].reference is not None

    sim = make_sim("free-run")
    cfg = station_config(sim, "free-run", model={"manifest": str(manifest_path)},
                         camera={"fps": 100.0, "lighting_change_after_s": 5.0, "lighting_gain": 0.5},
                         drift={"window": WINDOW, "warn_psi": WARN_PSI})
    daemon = Daemon(cfg)
    seen = _LightingSeen()
    daemon.journal.sinks.add(seen)
    assert daemon.drift is not None
    drift = daemon.drift

    def windows() -> list[dict]:
        models = drift.view()["models"]
        return models[0]["history"] if models else []

    def after_the_change() -> bool:
        return seen.first_changed is not None and any(w["frames"][0] >= seen.first_changed for w in windows())

    with caplog.at_level(logging.INFO, logger="plcbridge.drift"):
        daemon.start()
        try:
            wait_for(after_the_change, 60, "a full window of frames taken under the changed lighting")
        finally:
            daemon.stop()
    assert seen.first_changed is not None
    before = [w for w in windows() if w["frames"][1] < seen.first_changed]
    after = [w for w in windows() if w["frames"][0] >= seen.first_changed]
    assert before, (f"no full window before the lighting change (frame {seen.first_changed}): the station judged "
                    f"fewer than {WINDOW} frames in its first 5 s; windows: {windows()}")
    assert all(w["psi"] < WARN_PSI and not w["warning"] for w in before), windows()
    assert after and all(w["psi"] >= WARN_PSI and w["warning"] for w in after), windows()

    view = drift.view()["models"][0]
    assert (view["model"], view["version"], view["reference"]["images"]) == (DEMO, 1, REFERENCE_IMAGES)
    labels = {"model": DEMO, "version": "1"}
    assert read_metric(daemon, "plcbridge_drift_windows_total", **labels) == view["windows"] >= 2
    assert read_metric(daemon, "plcbridge_drift_warnings_total", **labels) == view["warnings"] >= 1
    warnings = [r for r in caplog.records if getattr(r, "event", None) == "drift_warning"]
    assert warnings and all(r.levelno == logging.WARNING and r.psi >= WARN_PSI for r in warnings)
    assert {r.frames[0] for r in warnings} >= {w["frames"][0] for w in after}


def test_the_reference_example_in_docs_manifest_md_is_valid() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "manifest.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```json\n(.*?)```", text, re.S) if b.lstrip().startswith('"reference"')]
    ref = ScoreReference.model_validate(json.loads("{" + block + "}")["reference"])
    assert ref.images == sum(ref.counts) == 600 and 0.5 in ref.edges
