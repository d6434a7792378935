"""The synthetic camera: image format, label rate, pacing, determinism, and cost."""

from __future__ import annotations

import time

import numpy as np
import pytest

from plcbridge.adapters.camera.base import CameraError, open_camera
from plcbridge.adapters.camera.synthetic import DEFECT_KINDS, SyntheticCamera, render_surface
from plcbridge.config import SyntheticCameraSettings


def _camera(**kw) -> SyntheticCamera:
    cam = SyntheticCamera(SyntheticCameraSettings(**{"fps": 1000.0, **kw}))
    cam.open()
    return cam


def test_frames_are_bgr_uint8_of_the_configured_size() -> None:
    cam = _camera(width=320, height=200)
    for _ in range(5):
        image, label = cam.grab()
        assert image.shape == (200, 320, 3) and image.dtype == np.uint8
        assert label in ("pass", "fail")
    cam.close()


def test_registry_builds_it_from_settings() -> None:
    cam = open_camera(SyntheticCameraSettings())
    assert isinstance(cam, SyntheticCamera)


def test_grab_before_open_is_a_camera_error() -> None:
    with pytest.raises(CameraError):
        SyntheticCamera(SyntheticCameraSettings()).grab()


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_labels_occur_at_the_configured_fraction(fraction: float) -> None:
    cam = _camera(defect_fraction=fraction, width=64, height=64, seed=3)
    fails = sum(cam.grab()[1] == "fail" for _ in range(400))
    assert abs(fails / 400 - fraction) < 0.07


def test_same_seed_same_frames_other_seed_other_frames() -> None:
    a, b, c = _camera(seed=11), _camera(seed=11), _camera(seed=12)
    for _ in range(5):
        (ia, la), (ib, lb), (ic, _) = a.grab(), b.grab(), c.grab()
        assert la == lb and np.array_equal(ia, ib)
        assert not np.array_equal(ia, ic)


def test_paces_at_fps_on_absolute_deadlines() -> None:
    cam = _camera(fps=100.0)
    t0 = time.monotonic()
    for _ in range(20):
        cam.grab()
    elapsed = time.monotonic() - t0
    assert 0.1 <= elapsed <= 1.0


def test_late_grab_skips_missed_slots_instead_of_bursting() -> None:
    cam = _camera(fps=50.0)  # 20 ms slots
    cam.grab()
    time.sleep(0.1)  # miss ~5 slots
    cam.grab()  # late: delivered at once
    t0 = time.monotonic()
    cam.grab()  # the next slot is a whole period away, not in the past
    assert time.monotonic() - t0 >= 0.005


def test_defects_change_the_image_and_every_kind_draws() -> None:
    for kind in DEFECT_KINDS:
        clean = render_surface(np.random.default_rng(5), 128, 128, False)
        # Same rng state up to the defect: the difference is the defect alone.
        rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
        a, b = render_surface(rng_a, 128, 128, False), render_surface(rng_b, 128, 128, True, kind)
        diff = np.abs(a.astype(int) - b.astype(int)).max(axis=2)
        assert clean.shape == a.shape
        assert 10 <= (diff > 4).sum() <= 0.2 * diff.size, kind  # visible, and local
        assert (diff > 0).sum() <= 0.3 * diff.size, kind


def test_rendering_is_cheap() -> None:
    rng = np.random.default_rng(0)
    render_surface(rng, 256, 256, True)  # builds the texture bank
    t0 = time.perf_counter()
    for i in range(100):
        render_surface(rng, 256, 256, i % 2 == 0)
    per_frame_ms = (time.perf_counter() - t0) * 10
    assert per_frame_ms < 10  # ~0.4 ms on an idle 2-core box; generous for loaded CI
