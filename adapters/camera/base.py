"""The camera source interface, and the registry that picks a source by name.

A source only grabs. Reconnects, stall detection and CAMERA_OK live in the grab loop
(`plcbridge.pipeline`), which is the same for every source.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np

from plcbridge.registry import resolve


@dataclass(frozen=True)
class Frame:
    """One captured image.

    `seq` counts frames from the source since the daemon started (it keeps counting across
    reconnects), `t_capture` is time.monotonic() when the grab returned, and `label` is
    the ground truth where the source knows it (synthetic: "pass"/"fail"), else None.
    `trigger` is the request a software-triggered frame was taken for: the pairing is by
    identity, never by time.
    """

    image: np.ndarray  # HxWx3 uint8, BGR (OpenCV's order)
    seq: int
    t_capture: float
    label: str | None = None
    trigger: Any = None
    # The camera's own identity of the frame, where the source has one (genicam:
    # camera_frame_id, camera_ts_ns, camera_host_ts_ns, pixel_format); journaled with the decision.
    meta: dict[str, Any] | None = None


class CameraError(RuntimeError):
    """The source failed or cannot be opened; the grab loop reconnects with backoff."""


class CameraAbsent(CameraError):
    """There is no camera to be had right now (no such device, a missing or empty folder, a
    folder with no readable image, a stream nothing serves): nothing was held open, so the
    grab loop looks again every `camera.reconnect_min_ms` without growing its backoff, and
    a camera that comes back is used within about that."""


class CameraSource(abc.ABC):
    """One open camera. Built fresh for every (re)connect by the grab loop."""

    def __init__(self, settings: Any) -> None:
        """Keep the source's config section (`camera`, with its `source` field); open nothing yet."""

    @abc.abstractmethod
    def open(self) -> None:
        """Open the device; raise CameraError with the reason when it cannot."""

    @abc.abstractmethod
    def grab(self) -> tuple[np.ndarray, str | None] | tuple[np.ndarray, str | None, dict[str, Any]] | None:
        """Block until the next image; return (BGR uint8 image, ground-truth label or None),
        optionally with a third item, the frame's meta (Frame.meta; a "counts" entry in it
        is taken out for the metrics, see Metrics.camera_counts).
        A hardware-triggered source returns None when no trigger came for a short while.

        Raise CameraError when the source failed. Pacing (fps) is the source's job: a real
        camera paces itself, file-backed sources sleep to their configured rate. With
        `trigger = "software"` the grab loop calls grab() once per trigger and the source
        takes that frame now, unpaced.
        """

    def opened_fields(self) -> dict[str, Any]:
        """What the grab loop's one `camera_opened` line says about this source after open()
        (a folder: its image count): a source logs no open line of its own."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional
        """Release the device."""


# name -> "module:Class", imported only when chosen, so that e.g. the opencv source's
# VideoCapture backends are not touched by a synthetic-camera test.
REGISTRY: dict[str, str] = {
    "synthetic": "plcbridge.adapters.camera.synthetic:SyntheticCamera",
    "folder": "plcbridge.adapters.camera.folder:FolderCamera",
    "opencv": "plcbridge.adapters.camera.opencv:OpenCvCamera",
    "genicam": "plcbridge.adapters.camera.genicam:GenicamCamera",
}


def camera_class(name: str) -> type[CameraSource]:
    return resolve(REGISTRY, name, "camera source")


def open_camera(settings: Any) -> CameraSource:
    """Build a fresh, unopened source from its config section (which has a `source` field)."""
    return camera_class(settings.source)(settings)
