"""The page's images: the live frame with its verdict and findings drawn on it (boxes, masks,
the anomaly outline: plcbridge/overlay.py, shared with the archive's overlays), and
thumbnails of archived decisions (of the overlay when the entry has one). Both run on the
endpoint's worker threads (below the write loop) and spend their time in OpenCV, which
releases the GIL; the Python around each call is a few lines, and what they make is cached,
so a browser polling twice a second (or several browsers) costs at most a few encodes a
second.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import cv2

from plcbridge.archive.store import Pictures
from plcbridge.overlay import annotate, jpeg_params, scaled, verdict_lines
from plcbridge.page.sink import Kept, PageSink

__all__ = ["ArchivedPictures", "LiveImage", "Thumbs", "no_archive", "verdict_lines"]

# An archived decision's pictures by decision id, None when it is not in the archive: the
# archive writer's own index (ArchiveSink.pictures), never a folder listing.
ArchivedPictures = Callable[[str], Pictures | None]


def no_archive(decision_id: str) -> Pictures | None:
    """The station without an archive: nothing is archived."""
    return None


LIVE_MIN_INTERVAL_S = 0.25  # the live JPEG is made again at most 4 times a second
LIVE_MAX_WIDTH = 800  # wider frames are scaled down first: the page shows them smaller anyway
LIVE_QUALITY = 80
THUMB_WIDTH = 160
THUMB_QUALITY = 70
THUMBS_CACHED = 64


class LiveImage:
    """The newest judged frame as a JPEG with its verdict and findings drawn on it (a copy, no
    wider than `max_width`: plcbridge.overlay.annotate); made again only when a newer frame
    is there and the last one is at least `min_interval_s` old. Concurrent requests share
    one encode (the second waits for the first, then takes its bytes)."""

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
            kept, image, decoded = newest
            img = annotate(image, kept.fields, decoded, self.max_width)
            ok, data = cv2.imencode(".jpg", img, jpeg_params(LIVE_QUALITY))
            if not ok:
                raise ValueError("the frame could not be encoded as JPEG")
            self._made = (kept.seq, now, data.tobytes())
            self.encodes += 1
            return kept, self._made[2]


class Thumbs:
    """Small JPEGs of archived decisions (of the overlay, the findings drawn, when the entry has
    one; else of the frame), the newest THUMBS_CACHED of them kept in memory."""

    def __init__(self, pictures: ArchivedPictures, width: int = THUMB_WIDTH) -> None:
        self.pictures = pictures
        self.width = width
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, bytes] = OrderedDict()

    def jpeg(self, decision_id: str) -> bytes | None:
        """The thumbnail, or None when the decision is not (or no longer) in the archive."""
        with self._lock:
            data = self._cache.get(decision_id)
        if data is not None:
            return data
        pictures = self.pictures(decision_id)
        if pictures is None:
            return None
        img = cv2.imread(str(pictures.shown), cv2.IMREAD_COLOR)  # the overlay, when the entry has one
        if img is None:  # evicted meanwhile, or unreadable
            return None
        ok, enc = cv2.imencode(".jpg", scaled(img, self.width), [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
        if not ok:
            return None
        data = enc.tobytes()
        with self._lock:
            self._cache[decision_id] = data
            while len(self._cache) > THUMBS_CACHED:
                self._cache.popitem(last=False)
        return data
