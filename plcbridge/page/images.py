"""The page's images: the live frame with its verdict drawn on it, and thumbnails of archived
decisions. Both run on the endpoint's worker threads (below the write loop) and spend their
time in OpenCV, which releases the GIL; the Python around each call is a few lines, and what
they make is cached, so a browser polling twice a second (or several browsers) costs at most
a few encodes a second.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from plcbridge.archive.store import complete_entries, entry_paths
from plcbridge.journal import decision_time
from plcbridge.page.sink import Kept, PageSink

LIVE_MIN_INTERVAL_S = 0.25  # the live JPEG is made again at most 4 times a second
LIVE_MAX_WIDTH = 800  # wider frames are scaled down first: the page shows them smaller anyway
LIVE_QUALITY = 80
THUMB_WIDTH = 160
THUMB_QUALITY = 70
THUMBS_CACHED = 64
# The archive saves a frame after its decision (its writer may lag behind, on a slow disk):
# an entry is looked for in the hour folders of the decision's time and of this much later.
ARCHIVE_LAG_S = 300.0
FOLDER_TTL_S = 1.0  # an hour folder's listing is read again after this long
FOLDERS_CACHED = 16

_COLOURS = {"PASS": (40, 160, 40), "FAIL": (40, 40, 220), "FAILSAFE": (0, 140, 255)}  # BGR


def _as_bgr8(image: Any) -> np.ndarray:
    """The frame as 8-bit BGR, a new array (the camera's own is never drawn on)."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img.copy()


def _scaled(img: np.ndarray, width: int) -> np.ndarray:
    h, w = img.shape[:2]
    if w <= width:
        return img
    return cv2.resize(img, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def _label(img: np.ndarray, lines: list[str], colour: tuple[int, int, int]) -> None:
    """Lines of text at the top left, on a dark band, sized to the image."""
    scale = max(0.5, img.shape[1] / 900)
    thick = max(1, round(scale * 2))
    y = 0
    for i, text in enumerate(lines):
        s = scale if i == 0 else scale * 0.7
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, s, thick)
        cv2.rectangle(img, (0, y), (w + 16, y + h + base + 12), (0, 0, 0), -1)
        cv2.putText(img, text, (8, y + h + 6), cv2.FONT_HERSHEY_SIMPLEX, s, colour if i == 0 else (230, 230, 230),
                    thick, cv2.LINE_AA)
        y += h + base + 12


def verdict_lines(fields: dict[str, Any]) -> list[str]:
    """What is drawn on the live image: the verdict and score, then what the decision was about."""
    result = str(fields.get("result", "?"))
    head = f"{result}  score {fields['score']:.4f}" if isinstance(fields.get("score"), (int, float)) else result
    if fields.get("fault") not in (None, "NONE"):
        head += f"  {fields['fault']}"
    about = [f"{k} {fields[k]}" for k in ("part_id", "trigger_seq", "frame_seq") if fields.get(k) is not None]
    return [head, "  ".join(about)] if about else [head]


class LiveImage:
    """The newest judged frame as a JPEG with its verdict drawn on it; made again only when
    a newer frame is there and the last one is at least `min_interval_s` old. Concurrent
    requests share one encode (the second waits for the first, then takes its bytes)."""

    def __init__(self, sink: PageSink, min_interval_s: float = LIVE_MIN_INTERVAL_S, max_width: int = LIVE_MAX_WIDTH) -> None:
        self.sink = sink
        self.min_interval_s = min_interval_s
        self.max_width = max_width
        self._lock = threading.Lock()
        self._made: tuple[int, float, bytes] | None = None  # (record seq, when, JPEG)
        self.encodes = 0

    def jpeg(self) -> tuple[Kept, bytes] | None:
        """(the record drawn, JPEG bytes), or None before any frame was judged."""
        newest = self.sink.frame()
        if newest is None:
            return None
        with self._lock:
            made, now = self._made, time.monotonic()
            if made is not None and (made[0] == newest[0].seq or now - made[1] < self.min_interval_s):
                return newest[0], made[2]
            kept, image = newest
            img = _scaled(_as_bgr8(image), self.max_width)
            _label(img, verdict_lines(kept.fields), _COLOURS.get(str(kept.fields.get("result")), (255, 255, 255)))
            ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, LIVE_QUALITY])
            if not ok:
                raise ValueError("the frame could not be encoded as JPEG")
            self._made = (kept.seq, now, data.tobytes())
            self.encodes += 1
            return kept, self._made[2]


class ArchiveLookup:
    """Which decisions are in the image archive, and where their image is: from the archive's
    own layout (plcbridge/archive/store.py: folders by UTC date and hour, names ending in the
    decision id). Only the one or two hour folders a decision can be in are listed, and each
    listing is kept for FOLDER_TTL_S, so a page listing 50 decisions costs a few `scandir`s."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._folders: OrderedDict[Path, tuple[float, dict[str, Path]]] = OrderedDict()

    def image(self, decision_id: str) -> Path | None:
        if self.root is None:
            return None
        try:
            t = decision_time(decision_id)
        except ValueError:
            return None
        folders = dict.fromkeys(entry_paths(self.root, when, "", decision_id, ".json")[1].parent
                                for when in (t, t + ARCHIVE_LAG_S))
        for folder in folders:
            found = self._listing(folder).get(decision_id)
            if found is not None:
                return found
        return None

    def _listing(self, folder: Path) -> dict[str, Path]:
        now = time.monotonic()
        with self._lock:
            cached = self._folders.get(folder)
            if cached is not None and now - cached[0] < FOLDER_TTL_S:
                return cached[1]
        found = complete_entries(folder)
        with self._lock:
            self._folders[folder] = (now, found)
            self._folders.move_to_end(folder)
            while len(self._folders) > FOLDERS_CACHED:
                self._folders.popitem(last=False)
        return found


class Thumbs:
    """Small JPEGs of archived decisions, the newest THUMBS_CACHED of them kept in memory."""

    def __init__(self, lookup: ArchiveLookup, width: int = THUMB_WIDTH) -> None:
        self.lookup = lookup
        self.width = width
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, bytes] = OrderedDict()

    def jpeg(self, decision_id: str) -> bytes | None:
        """The thumbnail, or None when the decision is not (or no longer) in the archive."""
        with self._lock:
            data = self._cache.get(decision_id)
        if data is not None:
            return data
        path = self.lookup.image(decision_id)
        if path is None:
            return None
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:  # evicted meanwhile, or unreadable
            return None
        ok, enc = cv2.imencode(".jpg", _scaled(img, self.width), [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
        if not ok:
            return None
        data = enc.tobytes()
        with self._lock:
            self._cache[decision_id] = data
            while len(self._cache) > THUMBS_CACHED:
                self._cache.popitem(last=False)
        return data
