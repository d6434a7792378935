"""A camera over cv2.VideoCapture: a local device, a video file, an RTSP stream or a
GStreamer pipeline, whatever `settings.url` names.

It does not retry: a failed open or read is a CameraError and the grab loop reconnects
with backoff by building a fresh source, which is also the only reliable way to recover
a VideoCapture after a device was unplugged or a stream dropped.

RTSP URLs often carry a password (``rtsp://admin:secret@10.0.0.5/stream``) and logs end up
in tickets and chat, so every message that names the source goes through `redact_url`.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import cv2
import numpy as np

from plcbridge.adapters.camera.base import CameraAbsent, CameraError, CameraSource
from plcbridge.config import OpenCvCameraSettings
from plcbridge.logs import NativeOutput, get_logger, log_event, native_stderr
from plcbridge.schedule import FixedRateSchedule

log = get_logger("camera")

BACKENDS: dict[str, int] = {
    "any": cv2.CAP_ANY,
    "v4l2": cv2.CAP_V4L2,
    "ffmpeg": cv2.CAP_FFMPEG,
    "gstreamer": cv2.CAP_GSTREAMER,
}

# scheme://userinfo@ : the authority ends at the first / ? # or blank (as in ffmpeg's own
# parser), and the greedy match backtracks to its last "@", so a raw "@" in the password is
# hidden too. Works inside a GStreamer pipeline string (location=rtsp://...) as well.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s]*)@")
# Some cameras take credentials as query parameters instead (...?user=admin&pwd=secret).
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pass|pwd|token|key|secret|auth)=)[^&;\s\"']*", re.IGNORECASE
)


def redact_url(url: str) -> str:
    """`url` with passwords replaced by ``***``, safe to log.

    ``rtsp://admin:secret@host/s`` -> ``rtsp://admin:***@host/s``; a user part with no
    colon may itself be a token, so it is hidden whole (``https://***@host``).
    """

    def _userinfo(m: re.Match[str]) -> str:
        user, colon, _ = m.group("userinfo").partition(":")
        return f"{m.group('scheme')}{user}:***@" if colon else f"{m.group('scheme')}***@"

    return _SECRET_PARAM.sub(r"\g<key>***", _USERINFO.sub(_userinfo, url))


def parse_source(url: str) -> int | str:
    """A device index as an int (``"0"`` -> 0, which VideoCapture needs to open a device
    rather than a file called "0"), anything else as given."""
    s = url.strip()
    return int(s) if s.isascii() and s.isdigit() else url


class OpenCvCamera(CameraSource):
    """Frames from cv2.VideoCapture; labels are unknown (None).

    A video file is paced to `settings.fps` when set, since VideoCapture would otherwise
    decode it as fast as the CPU allows; without fps it is read unpaced. Live devices and
    streams pace themselves, so there `fps` (with width/height) is only asked of the
    device via cap.set.
    """

    def __init__(self, settings: OpenCvCameraSettings) -> None:
        self.settings = settings
        self._source = parse_source(settings.url)
        self._is_file = isinstance(self._source, str) and os.path.isfile(self._source)
        self._cap: cv2.VideoCapture | None = None
        self._pacer: FixedRateSchedule | None = None
        self._opened: dict[str, Any] = {}  # what camera_opened says of this source

    def _describe(self) -> str:
        return f"{redact_url(self.settings.url)!r} (backend {self.settings.backend})"

    def open(self) -> None:
        backend = self.settings.backend
        api = BACKENDS[backend]
        if api != cv2.CAP_ANY and not cv2.videoio_registry.hasBackend(api):
            # opencv-python(-headless) wheels ship without GStreamer: say so, rather than
            # a bare "cannot open" that sends someone debugging their pipeline.
            raise CameraError(
                f"opencv camera: cannot open {self._describe()}: this OpenCV build has no "
                f"{backend} backend"
            )
        # What OpenCV/FFmpeg print on stderr goes into the error (and so into the JSON
        # camera_open_failed event), not between the JSON lines of the journal.
        try:
            with native_stderr() as native:
                cap = cv2.VideoCapture(self._source, api)
                opened = cap.isOpened()
        except cv2.error as e:
            raise CameraError(f"opencv camera: cannot open {self._describe()}: {_one_line(e)}{_said(native)}") from None
        if not opened:
            cap.release()
            hint = ""
            if (
                isinstance(self._source, str)
                and not _looks_like_stream(self._source)
                and not os.path.exists(self._source)
            ):
                hint = ": no such file"
            raise CameraAbsent(f"opencv camera: cannot open {self._describe()}{hint}{_said(native)}")
        self._cap = cap
        self._report_native(native, "open")
        if self._is_file:
            self._pacer = FixedRateSchedule(1 / self.settings.fps) if self.settings.fps else None
        else:
            self._request(cv2.CAP_PROP_FRAME_WIDTH, "width", self.settings.width)
            self._request(cv2.CAP_PROP_FRAME_HEIGHT, "height", self.settings.height)
            self._request(cv2.CAP_PROP_FPS, "fps", self.settings.fps)
        self._opened = {"url": redact_url(self.settings.url), "backend": self.settings.backend,
                        "backend_used": _backend_name(cap), "file": self._is_file}

    def opened_fields(self) -> dict[str, Any]:
        return dict(self._opened)

    def _request(self, prop: int, name: str, value: float | None) -> None:
        """Ask the device for a setting and warn when it does not take it: a camera that
        silently stays at 640x480 otherwise only shows up as a worse model score."""
        if value is None or self._cap is None:
            return
        with native_stderr() as native:
            self._cap.set(prop, float(value))
            got = self._cap.get(prop)
        self._report_native(native, "set")
        if abs(got - value) > 1e-3 * max(1.0, abs(value)):
            log_event(log, "camera_setting_refused", logging.WARNING, url=redact_url(self.settings.url),
                      backend=self.settings.backend, setting=name, asked=value, got=got)

    def _report_native(self, native: NativeOutput, during: str) -> None:
        """Native stderr output from a call that worked: logged as an event, rate-limited."""
        if native.lines:
            log_event(log, "camera_native_output", logging.WARNING, url=redact_url(self.settings.url),
                      backend=self.settings.backend, during=during, said=redact_url(native.text()),
                      lines=len(native.lines), rate_key=f"opencv-{during}")

    def grab(self) -> tuple[np.ndarray, str | None]:
        if self._cap is None:
            raise CameraError("opencv camera: grab() before open()")
        try:
            with native_stderr() as native:
                ok, frame = self._cap.read()
        except cv2.error as e:
            raise CameraError(f"opencv camera: read from {self._describe()} failed: {_one_line(e)}{_said(native)}") from None
        if not ok or frame is None:
            what = "end of file" if self._is_file else "device unplugged or stream dropped?"
            raise CameraError(f"opencv camera: no frame from {self._describe()} ({what}){_said(native)}")
        self._report_native(native, "read")
        if self._pacer is not None:
            self._pacer.wait()
        return frame, None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _said(native: NativeOutput) -> str:
    """What OpenCV/FFmpeg printed during the failed call, for the error's text (redacted)."""
    return f"; OpenCV/FFmpeg said: {redact_url(native.text())}" if native.lines else ""


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _backend_name(cap: "cv2.VideoCapture") -> str | None:
    try:
        return cap.getBackendName()
    except (cv2.error, AttributeError):
        return None


def _looks_like_stream(source: str) -> bool:
    """A URL (rtsp://, http://) or a GStreamer pipeline ("... ! appsink"), not a file path."""
    return "://" in source or "!" in source
