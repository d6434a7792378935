"""A camera that replays image files from a folder.

Why it exists: to run a station on recorded images (commissioning, demos, CI) and to
measure the model's accuracy on real images, so a file's ground-truth label is handed on
with the image:

* a file whose name (stem) starts with ``pass`` or ``fail`` as a word of its own
  (``pass_012.png``, ``FAIL-3.png``, ``pass7.png``; not ``passive.png``) carries that label;
* otherwise the nearest enclosing folder below ``settings.path`` named ``pass`` or ``fail``
  gives it. `settings.pattern` is a `Path.glob` pattern, so use ``"**/*.png"`` (or
  ``"*/*.png"``) to pick up ``pass/`` and ``fail/`` sub-folders;
* anything else has no label (None).

Files are played in sorted order of their path below the folder, so a run is reproducible.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, TypedDict

import cv2
import numpy as np

from plcbridge.adapters.camera.base import CameraAbsent, CameraError, CameraSource
from plcbridge.config import FolderCameraSettings
from plcbridge.logs import get_logger, log_event, native_stderr
from plcbridge.schedule import FixedRateSchedule

log = get_logger("camera")

_LABELS = ("pass", "fail")
# "pass" / "fail" followed by anything but a letter: pass_1, pass-1, pass1, pass; not passive.
_STEM_LABEL = re.compile(r"^(pass|fail)(?![a-z])", re.IGNORECASE)


# A folder_camera_files_skipped line names this many files; `more` counts the rest.
_NAMED = 5


class _SkipFields(TypedDict, total=False):
    """The optional fields of a folder_camera_files_skipped event."""

    said: str  # what the image decoder printed for the files named, when it printed anything


def label_for(path: Path, root: Path) -> str | None:
    """Ground truth from the file name, else from a pass/fail folder below `root`."""
    m = _STEM_LABEL.match(path.stem)
    if m:
        return m.group(1).lower()
    for part in reversed(path.relative_to(root).parts[:-1]):
        if part.lower() in _LABELS:
            return part.lower()
    return None


class FolderCamera(CameraSource):
    """Plays the images in `settings.path` matching `settings.pattern` at `settings.fps`.

    An undecodable file is skipped with a warning and left out of later loops: one bad
    file in a folder of hundreds must not take the station down (the grab loop would
    reconnect, replay, and fail on the same file forever). The files one grab skips share
    one warning with their count. Only when no file at all decodes is that a CameraError.
    """

    def __init__(self, settings: FolderCameraSettings) -> None:
        self.settings = settings
        self._files: list[tuple[Path, str | None]] | None = None
        self._index = 0
        self._bad: set[Path] = set()
        self._pacer = FixedRateSchedule(1 / settings.fps)

    def open(self) -> None:
        root = Path(self.settings.path)
        if not root.exists():
            raise CameraAbsent(f"folder camera: {root} does not exist")
        if not root.is_dir():
            raise CameraError(f"folder camera: {root} is not a folder")
        paths = sorted(
            (p for p in root.glob(self.settings.pattern) if p.is_file()),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        if not paths:
            raise CameraAbsent(f"folder camera: no files matching {self.settings.pattern!r} in {root}")
        self._files = [(p, label_for(p, root)) for p in paths]
        self._index = 0
        self._bad.clear()
        self._pacer = FixedRateSchedule(1 / self.settings.fps)

    def opened_fields(self) -> dict[str, Any]:
        return {"images": len(self._files or ()), "path": str(self.settings.path), "pattern": self.settings.pattern}

    def grab(self) -> tuple[np.ndarray, str | None]:
        image, label = self._next_image()
        # Decode first, then wait: the decode time is spent inside the slot, not added to it.
        if self.settings.trigger == "free-run":  # triggered: this frame is wanted now
            self._pacer.wait()
        return image, label

    def _next_image(self) -> tuple[np.ndarray, str | None]:
        if self._files is None:
            raise CameraError("folder camera: grab() before open()")
        skipped: list[tuple[Path, str]] = []  # this grab's: one log line for all of them
        try:
            return self._decode_next(self._files, skipped)
        finally:
            if skipped:
                self._log_skipped(skipped)

    def _decode_next(self, files: list[tuple[Path, str | None]], skipped: list[tuple[Path, str]]) -> tuple[np.ndarray, str | None]:
        while True:
            if self._index >= len(files):
                if not self.settings.loop:
                    raise CameraError(
                        f"folder camera: end of folder {self.settings.path} "
                        f"({len(files) - len(self._bad)} images played, loop = false)"
                    )
                self._index = 0
            path, label = files[self._index]
            self._index += 1
            if path in self._bad:
                continue
            with native_stderr() as native:  # libpng/libjpeg warnings: into the event, not stderr
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                if native.lines:
                    log_event(log, "folder_camera_decoder_output", logging.WARNING, file=str(path),
                              said=native.text(), rate_key="decoder")
                return image, label
            self._folder_still_there(skipped)
            self._bad.add(path)
            skipped.append((path, native.text() if native.lines else ""))
            if len(self._bad) == len(files):
                raise CameraAbsent(
                    f"folder camera: none of the {len(files)} files matching "
                    f"{self.settings.pattern!r} in {self.settings.path} could be decoded"
                )

    def _folder_still_there(self, skipped: list[tuple[Path, str]]) -> None:
        """A file that cannot be read: if the folder itself is gone, that is the cause, said
        at once (CameraAbsent, as open() says it), never one skipped-file warning per file."""
        root = Path(self.settings.path)
        if not root.is_dir():
            skipped.clear()  # not bad files: no folder
            raise CameraAbsent(f"folder camera: {root} does not exist" if not root.exists()
                               else f"folder camera: {root} is no longer a folder")

    def _log_skipped(self, skipped: list[tuple[Path, str]]) -> None:
        """One warning for the files one grab found unreadable: a folder emptied or rewritten
        under a running station gives one line with the count, not one line per file; and
        files deleted one by one between grabs (an rm -r in progress) give one line per log
        window, the rest counted (`skipped_total`, and the next line's `suppressed`)."""
        fields: _SkipFields = {}
        said = "; ".join(text for _, text in skipped[:_NAMED] if text)
        if said:
            fields["said"] = said
        assert self._files is not None
        log_event(log, "folder_camera_files_skipped", logging.WARNING, count=len(skipped),
                  files=[str(p) for p, _ in skipped[:_NAMED]], more=max(0, len(skipped) - _NAMED),
                  reason="cannot be read or decoded as an image (deleted, replaced or corrupt); left out until "
                         "the camera is opened again", skipped_total=len(self._bad), in_folder=len(self._files),
                  rate_key="skipped", **fields)

    @property
    def skipped_files(self) -> int:
        """How many files were found undecodable since open()."""
        return len(self._bad)

    def close(self) -> None:
        self._files = None
