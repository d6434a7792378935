"""The file-backed camera sources (folder, opencv) against real files written by OpenCV.

No camera hardware: live devices are stood in for by a fake VideoCapture where the test is
about what we ask of cv2 rather than what cv2 does.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import wait_for

from plcbridge.adapters.camera import opencv as opencv_mod
from plcbridge.adapters.camera.base import CameraAbsent, CameraError, camera_class, open_camera
from plcbridge.adapters.camera.folder import FolderCamera, label_for
from plcbridge.adapters.camera.opencv import OpenCvCamera, parse_source, redact_url
from plcbridge.config import FolderCameraSettings, OpenCvCameraSettings, parse_config
from plcbridge.mailbox import FrameMailbox
from plcbridge.metrics import Metrics
from plcbridge.pipeline import GrabLoop


def _img(value: int, bgr: tuple[int, int, int] | None = None) -> np.ndarray:
    img = np.full((24, 32, 3), value, np.uint8)
    if bgr is not None:
        img[:] = bgr
    return img


def _folder(tmp_path: Path, **kw: object) -> FolderCameraSettings:
    return FolderCameraSettings(source="folder", path=tmp_path, fps=1000, **kw)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Sorted: broken.png (corrupt), fail_0, other, pass_0, passive (value 10*i)."""
    cv2.imwrite(str(tmp_path / "fail_0.png"), _img(10))
    cv2.imwrite(str(tmp_path / "other.png"), _img(20))
    cv2.imwrite(str(tmp_path / "pass_0.png"), _img(30))
    cv2.imwrite(str(tmp_path / "passive.png"), _img(40))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "notes.txt").write_text("not matched by *.png")
    return tmp_path


# --- folder -------------------------------------------------------------------------------


def test_registry_builds_folder_camera(images: Path) -> None:
    assert camera_class("folder") is FolderCamera
    cam = open_camera(_folder(images))
    assert isinstance(cam, FolderCamera)


def test_folder_plays_in_order_with_labels_and_skips_corrupt_file(images: Path, caplog) -> None:
    cam = FolderCamera(_folder(images))
    cam.open()
    with caplog.at_level(logging.WARNING, logger="plcbridge.camera"):
        got = [cam.grab() for _ in range(8)]  # two rounds of the 4 good images
    cam.close()
    assert [(int(img[0, 0, 0]), label) for img, label in got] == [
        (10, "fail"), (20, None), (30, "pass"), (40, None)
    ] * 2
    assert all(img.shape == (24, 32, 3) and img.dtype == np.uint8 for img, _ in got)
    # Warned once, naming the file, and not again on the second round.
    warnings = [r for r in caplog.records if r.name == "plcbridge.camera" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].event == "folder_camera_files_skipped", warnings
    assert warnings[0].count == 1 and len(warnings[0].files) == 1 and "broken.png" in warnings[0].files[0]
    assert (warnings[0].skipped_total, warnings[0].in_folder) == (1, 5)
    assert cam.skipped_files == 1


def test_a_folder_emptied_under_a_running_camera_is_one_warning_with_the_count(tmp_path: Path, caplog) -> None:
    for i in range(40):
        cv2.imwrite(str(tmp_path / f"pass_{i:02d}.png"), _img(i))
    cam = FolderCamera(_folder(tmp_path))
    cam.open()
    cam.grab()
    for p in tmp_path.glob("*.png"):
        p.unlink()
    with caplog.at_level(logging.WARNING, logger="plcbridge.camera"), pytest.raises(CameraError, match="none of the 40 files"):
        cam.grab()
    warnings = [r for r in caplog.records if r.name == "plcbridge.camera"]
    assert len(warnings) == 1, [r.event for r in warnings]
    w = warnings[0]
    assert w.event == "folder_camera_files_skipped" and w.count == 40 and w.skipped_total == 40
    assert len(w.files) == 5 and w.more == 35 and "pass_01.png" in w.files[0]


def test_a_removed_folder_is_said_at_once_as_the_folder_not_file_by_file(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(20):
        cv2.imwrite(str(folder / f"pass_{i:02d}.png"), _img(i))
    cam = FolderCamera(_folder(folder))
    cam.open()
    cam.grab()
    shutil.rmtree(folder)
    with caplog.at_level(logging.WARNING, logger="plcbridge.camera"), pytest.raises(CameraAbsent) as e:
        cam.grab()
    assert str(e.value) == f"folder camera: {folder} does not exist"
    assert not [r for r in caplog.records if r.name == "plcbridge.camera"], "no per-file warning before the cause"


def test_one_open_is_one_camera_opened_line_and_failures_are_named_alike(tmp_path: Path, caplog) -> None:
    """The grab loop's own events: `camera_opened` once per open (with the folder's fields),
    `camera_grab_failed` and `camera_open_failed` with the cause."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        cv2.imwrite(str(images / f"pass_{i}.png"), _img(i))
    cfg = parse_config({"station": {"mode": "free-run"},
                        "camera": {"source": "folder", "path": str(images), "fps": 200.0}}, env={})
    grab = GrabLoop(cfg, FrameMailbox(), Metrics())
    events = lambda: [r for r in caplog.records if r.name == "plcbridge.camera"]  # noqa: E731
    with caplog.at_level(logging.INFO, logger="plcbridge.camera"):
        grab.start()
        try:
            wait_for(lambda: grab.seq >= 3, 10, "frames from the folder")
            images.rename(images.with_name("moved-away"))  # the folder goes at once (rmtree takes file by file)
            wait_for(lambda: any(r.event == "camera_open_failed" for r in events()), 10, "the reopen refused")
        finally:
            grab.stop()
    names = [r.event for r in events()]
    assert names[:3] == ["camera_opened", "camera_grab_failed", "camera_open_failed"], names
    opened = events()[0]
    assert (opened.source, opened.images, opened.path, opened.reopen) == ("folder", 5, str(images), False)
    assert "does not exist" in events()[1].reason and "does not exist" in events()[2].reason
    assert "folder_camera_opened" not in names and "folder_camera_files_skipped" not in names


def test_folder_returns_bgr(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), _img(0, bgr=(255, 0, 0)))  # pure blue in BGR
    cam = FolderCamera(_folder(tmp_path))
    cam.open()
    img, _ = cam.grab()
    assert tuple(int(v) for v in img[0, 0]) == (255, 0, 0)


def test_folder_without_loop_ends(images: Path) -> None:
    cam = FolderCamera(_folder(images, loop=False))
    cam.open()
    for _ in range(4):
        cam.grab()
    with pytest.raises(CameraError, match="end of folder"):
        cam.grab()


def test_folder_all_corrupt_is_an_error(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"garbage")
    cam = FolderCamera(_folder(tmp_path))
    cam.open()
    with pytest.raises(CameraError, match="none of the 2 files"):
        cam.grab()


def test_folder_missing_or_empty(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CameraError, match="does not exist") as e:
        FolderCamera(_folder(missing)).open()
    assert str(missing) in str(e.value)
    (tmp_path / "only.txt").write_text("x")
    with pytest.raises(CameraError, match=r"no files matching '\*\.png'"):
        FolderCamera(_folder(tmp_path)).open()


def test_folder_labels_from_subfolders(tmp_path: Path) -> None:
    for sub, value in (("fail", 1), ("pass", 2), ("unsorted", 3)):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / "img.png"), _img(value))
    cam = FolderCamera(_folder(tmp_path, pattern="**/*.png"))
    cam.open()
    got = [cam.grab() for _ in range(3)]
    assert [(int(i[0, 0, 0]), lab) for i, lab in got] == [(1, "fail"), (2, "pass"), (3, None)]


@pytest.mark.parametrize(
    ("rel", "label"),
    [
        ("pass_1.png", "pass"),
        ("FAIL-3.png", "fail"),
        ("pass7.png", "pass"),
        ("pass.png", "pass"),
        ("passive.png", None),
        ("failure.png", None),
        ("pass/fail_2.png", "fail"),  # the file name wins over the folder
        ("fail/x/y.png", "fail"),
    ],
)
def test_label_for(rel: str, label: str | None) -> None:
    root = Path("/data")
    assert label_for(root / rel, root) == label


def test_folder_paces_to_fps(images: Path) -> None:
    cam = FolderCamera(FolderCameraSettings(source="folder", path=images, fps=50))
    cam.open()
    t0 = time.monotonic()
    for _ in range(11):  # first at once, then 10 periods of 20 ms
        cam.grab()
    elapsed = time.monotonic() - t0
    assert 0.15 < elapsed < 1.0


# --- opencv ---------------------------------------------------------------------------------


N_FRAMES = 5


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    assert writer.isOpened(), "this OpenCV build cannot write MJPG/AVI"
    for i in range(N_FRAMES):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    return path


def test_registry_builds_opencv_camera(video: Path) -> None:
    assert camera_class("opencv") is OpenCvCamera
    assert isinstance(open_camera(OpenCvCameraSettings(source="opencv", url=str(video))), OpenCvCamera)


def test_opencv_reads_video_file_then_ends(video: Path) -> None:
    cam = open_camera(OpenCvCameraSettings(source="opencv", url=str(video), backend="ffmpeg"))
    cam.open()
    means = []
    for _ in range(N_FRAMES):
        frame, label = cam.grab()
        assert label is None and frame.shape == (48, 64, 3) and frame.dtype == np.uint8
        means.append(float(frame.mean()))
    assert means == pytest.approx([40.0 * i for i in range(N_FRAMES)], abs=3)  # MJPG is lossy
    with pytest.raises(CameraError, match="end of file"):
        cam.grab()
    cam.close()
    cam.close()  # idempotent


def test_opencv_paces_video_file(video: Path) -> None:
    cam = OpenCvCamera(OpenCvCameraSettings(source="opencv", url=str(video), fps=20))
    cam.open()
    t0 = time.monotonic()
    for _ in range(N_FRAMES):  # first at once, then 4 periods of 50 ms
        cam.grab()
    assert 0.15 < time.monotonic() - t0 < 1.0


def test_opencv_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_clip.avi"
    cam = OpenCvCamera(OpenCvCameraSettings(source="opencv", url=str(missing), backend="ffmpeg"))
    with pytest.raises(CameraError) as e:
        cam.open()
    msg = str(e.value)
    assert str(missing) in msg and "backend ffmpeg" in msg and "no such file" in msg


class FakeCapture:
    """Stands in for cv2.VideoCapture on a live device / stream."""

    instances: list["FakeCapture"] = []

    def __init__(self, source: object, api: int, opened: bool = True) -> None:
        self.source, self.api, self.opened = source, api, opened
        self.props: dict[int, float] = {}
        self.frames = [np.zeros((4, 4, 3), np.uint8)]
        self.released = False
        FakeCapture.instances.append(self)

    def isOpened(self) -> bool:  # noqa: N802 - cv2's name
        return self.opened

    def set(self, prop: int, value: float) -> bool:
        self.props[prop] = value if prop != cv2.CAP_PROP_FRAME_WIDTH else 640.0  # refuses width
        return True

    def get(self, prop: int) -> float:
        return self.props.get(prop, 0.0)

    def read(self) -> tuple[bool, np.ndarray | None]:
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def release(self) -> None:
        self.released = True


@pytest.fixture
def fake_cv(monkeypatch: pytest.MonkeyPatch) -> type[FakeCapture]:
    FakeCapture.instances = []
    monkeypatch.setattr(opencv_mod.cv2, "VideoCapture", FakeCapture)
    return FakeCapture


def test_opencv_device_index_backend_and_settings(fake_cv, caplog) -> None:
    cam = OpenCvCamera(
        OpenCvCameraSettings(source="opencv", url="0", backend="v4l2", width=1280, height=960, fps=60)
    )
    with caplog.at_level(logging.WARNING, logger="plcbridge.camera"):
        cam.open()
    cap = fake_cv.instances[0]
    assert cap.source == 0 and cap.api == cv2.CAP_V4L2
    assert cap.props[cv2.CAP_PROP_FRAME_HEIGHT] == 960 and cap.props[cv2.CAP_PROP_FPS] == 60
    assert any(getattr(r, "event", None) == "camera_setting_refused" and (r.setting, r.asked) == ("width", 1280)
               for r in caplog.records)  # device refused it
    cam.grab()
    with pytest.raises(CameraError, match="unplugged or stream dropped"):
        cam.grab()
    cam.close()
    assert cap.released


def test_opencv_open_failure_hides_password(fake_cv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opencv_mod.cv2, "VideoCapture", lambda s, a: FakeCapture(s, a, opened=False))
    url = "rtsp://admin:s3cret@10.0.0.5:554/Streaming/Channels/101"
    with pytest.raises(CameraError) as e:
        OpenCvCamera(OpenCvCameraSettings(source="opencv", url=url, backend="ffmpeg")).open()
    msg = str(e.value)
    assert "s3cret" not in msg and "10.0.0.5:554" in msg and "backend ffmpeg" in msg
    assert "no such file" not in msg  # a stream, not a path
    assert fake_cv.instances[0].released


def test_opencv_backend_missing_from_build_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opencv_mod.cv2.videoio_registry, "hasBackend", lambda api: False)
    cam = OpenCvCamera(OpenCvCameraSettings(source="opencv", url="videotestsrc ! appsink", backend="gstreamer"))
    with pytest.raises(CameraError, match="no gstreamer backend"):
        cam.open()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://admin:secret@10.0.0.5/s", "rtsp://admin:***@10.0.0.5/s"),
        ("rtsp://admin:p@ss@cam.local:554/s", "rtsp://admin:***@cam.local:554/s"),
        ("https://tok3n@example.com/v", "https://***@example.com/v"),
        ("http://cam/video.cgi?user=admin&pwd=secret&res=1", "http://cam/video.cgi?user=admin&pwd=***&res=1"),
        (
            'rtspsrc location="rtsp://u:secret@h/x" ! decodebin ! appsink',
            'rtspsrc location="rtsp://u:***@h/x" ! decodebin ! appsink',
        ),
        ("rtsp://10.0.0.5/s", "rtsp://10.0.0.5/s"),
        ("/videos/line 3@night.avi", "/videos/line 3@night.avi"),
        ("0", "0"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_parse_source() -> None:
    assert parse_source("0") == 0 and parse_source(" 2 ") == 2
    assert parse_source("clip.avi") == "clip.avi"
    assert parse_source("rtsp://h/1") == "rtsp://h/1"
