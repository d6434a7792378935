"""The archive's writer: a sink on the journal's seam (plcbridge/sinks.py), so it runs on a
thread of its own behind a bounded queue and never holds the control path up.

What it keeps (`[archive]`): every FAIL, every fail-safe that judged a frame, a sample of
PASS (one in `pass_every`, at most one per `pass_min_interval_s`). Decisions without a
frame (NO_FRAME, a result timeout, a free-run fail-safe episode) have nothing to keep. The
frame is kept exactly as judged (PNG by default: what retraining needs); a decision with
findings (an anomaly, detection or segmentation model) also gets its overlay, a JPEG of the
frame with the findings drawn on it (plcbridge/overlay.py), written before the sidecar. A
picture that cannot be drawn (a bug, an odd result) costs the overlay only, logged
(`archive_overlay_failed`), never the frame.

What goes wrong is counted by reason (`plcbridge_archive_dropped_total{reason}`) and logged
once per log window, and the frame is let go: `disk_full` (ENOSPC, EDQUOT), `read_only`
(EROFS), `missing_folder` (the root is gone: an unmounted disk; it is never created in its
place, and saving resumes by itself when it is back), `permission`, `error`. A writer that
cannot keep up (a slow USB stick) loses frames at the seam instead: its queue is full
(`plcbridge_sink_dropped_total{sink="archive", reason="queue_full"}`).

Shadow disagreements (plcbridge/shadow.py): `keep_shadow(record)` hands over a frame the
shadow (candidate) model judged differently from the live one. It is kept whatever the policy
above says of its live result, named with the tag SHADOW instead of the result and marked
`kept_for: "shadow_disagreement"` in its sidecar, among the other entries (same bounds, same
eviction). They travel on a second feed of this sink, its own thread and bounded queue
(`archive.queue`; full: `plcbridge_sink_dropped_total{sink="archive_shadow"}`), made at the
first one, and are written under the same lock as the decisions' frames.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2

from plcbridge.archive.store import (
    SHADOW_KEPT_FOR,
    SHADOW_TAG,
    Entry,
    Index,
    Pictures,
    entry_paths,
    overlay_path,
    scan,
    sidecar_json,
    unlink,
    write_atomic,
)
from plcbridge.contract import ResultCode
from plcbridge.logs import get_logger, log_event
from plcbridge.metrics import Metrics
from plcbridge.overlay import annotate, jpeg_params
from plcbridge.sinks import DecisionRecord, SinkFanout

if TYPE_CHECKING:
    from plcbridge.config import ArchiveSettings

log = get_logger("archive")

AGE_CHECK_S = 60.0  # age eviction runs this often, whether frames are saved or not
OVERLAY_QUALITY = 85  # JPEG quality of the overlays: for people to look at, not to retrain on
_REASONS = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EROFS: "read_only",
            errno.EACCES: "permission", errno.EPERM: "permission", errno.ENOENT: "missing_folder"}


def png_params(level: int | None) -> list[int]:
    """cv2.imencode's parameters for a PNG at `level` (None: OpenCV's default). Level 0
    stores the pixels, so it also turns libpng's row filters off: they only prepare rows for
    compression, and choosing one per row was 85 % of level 0's CPU (1.7 of 2.0 ms for a
    256x256 frame; 0.2 ms without, the same bytes)."""
    if level is None:
        return []
    params = [cv2.IMWRITE_PNG_COMPRESSION, level]
    no_filter = getattr(cv2, "IMWRITE_PNG_FILTER", None)  # OpenCV 4.11 and later
    if level == 0 and no_filter is not None:
        params += [no_filter, cv2.IMWRITE_PNG_FILTER_NONE]
    return params


def retention(settings: ArchiveSettings, result: ResultCode) -> str:
    """What the archive does with a judged frame of this result: "kept" (every one: FAIL,
    FAILSAFE as configured; unless the disk fails, which is counted), "sampled" (PASS: one in
    `pass_every`) or "not_kept" (the archive is off, or keeps no frame of this result). The
    one statement of the policy; the MQTT decision message says it too."""
    return _policy(settings, result) if settings.enabled else "not_kept"


def _policy(settings: ArchiveSettings, result: ResultCode) -> str:
    if result is ResultCode.FAIL:
        return "kept" if settings.save_fail else "not_kept"
    if result is ResultCode.FAILSAFE:
        return "kept" if settings.save_failsafe else "not_kept"
    return "sampled" if settings.pass_every else "not_kept"


class ArchiveSink:
    name = "archive"

    def __init__(self, settings: ArchiveSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.root = Path(settings.path)
        self._index: Index | None = None  # scanned at the first save, on this sink's thread
        self._passes = 0
        self._last_pass = -float("inf")
        self._next_age_check = 0.0
        self._suffix = ".png" if settings.format == "png" else ".jpg"
        if settings.format == "jpeg":
            self._params = [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality]
        else:  # OpenCV's default unless a level is set: faster than any level but 0 (config.py)
            self._params = png_params(settings.png_compression)
        # The folder, the index and eviction are shared by the two feeds (decisions, shadow disagreements).
        self._lock = threading.Lock()
        self._shadow: SinkFanout | None = None  # the shadow disagreements' feed, made at the first one
        self._shadow_lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ the seam

    def write(self, record: DecisionRecord) -> None:
        with self._lock:
            if self._index is not None and time.monotonic() >= self._next_age_check:
                self._evict(self._index, time.time())  # frames age also while none is saved
            if not self.wanted(record):
                return
            reason = self._save(record)
            if reason is not None:
                self.metrics.archive_dropped.labels(reason).inc()

    def close(self) -> None:
        with self._shadow_lock:
            self._closed = True
            shadow, self._shadow = self._shadow, None
        if shadow is not None:
            shadow.close()  # what is queued is written first (within its timeout)

    # ------------------------------------------------------------------ shadow disagreements

    def keep_shadow(self, record: DecisionRecord) -> None:
        """Keep a frame the shadow model judged differently from the live one (plcbridge/shadow.py):
        `record` is the live decision's record (a fresh id, the journal's fields) with the
        shadow's verdict under `shadow`. Never blocks: a full queue leaves it out, counted as
        plcbridge_sink_dropped_total{sink="archive_shadow", reason="queue_full"}."""
        if not self.settings.enabled or record.image is None:
            return
        with self._shadow_lock:
            if self._closed:
                self.metrics.sink_dropped.labels(_ShadowFeed.name, "closed").inc()
                return
            if self._shadow is None:
                self._shadow = SinkFanout(self.metrics)
                self._shadow.add(_ShadowFeed(self), queue_size=self.settings.queue)
            shadow = self._shadow
        shadow.offer(record)

    def _write_shadow(self, record: DecisionRecord) -> None:
        """On the shadow feed's thread: one disagreement to disk, whatever the policy says of its live result."""
        with self._lock:
            if self._index is not None and time.monotonic() >= self._next_age_check:
                self._evict(self._index, time.time())
            marked = replace(record, fields={"kept_for": SHADOW_KEPT_FOR, **record.fields})
            reason = self._save(marked, SHADOW_TAG)
            if reason is not None:
                self.metrics.archive_dropped.labels(reason).inc()

    def pictures(self, decision_id: str) -> Pictures | None:
        """An archived decision's pictures (None: not in the archive, or not known yet): for
        the station page's thumbnails, from any thread, without waiting for the writer."""
        index = self._index
        return None if index is None else index.pictures(decision_id)

    def wanted(self, record: DecisionRecord) -> bool:
        """Does this decision keep its frame? (Counts PASS frames for the sample.)"""
        if record.image is None:
            return False
        s, kept = self.settings, _policy(self.settings, record.decision.result)
        if kept != "sampled":
            return kept == "kept"
        self._passes += 1
        now = time.monotonic()
        if self._passes % s.pass_every or now - self._last_pass < s.pass_min_interval_s:
            return False
        self._last_pass = now
        return True

    # ------------------------------------------------------------------ disk

    def _save(self, record: DecisionRecord, tag: str | None = None) -> str | None:
        """Keep one frame, named by its result (or by `tag`: SHADOW); the drop reason if it could not be kept."""
        saved = time.time()
        result = tag or record.decision.result.name
        image, sidecar = entry_paths(self.root, saved, result, record.decision_id, self._suffix)
        data = None
        overlay: bytes | None = None
        written: list[Path] = []
        try:
            if not self.root.is_dir():
                raise FileNotFoundError(errno.ENOENT, "the archive folder does not exist (an unmounted disk?)",
                                        str(self.root))
            index = self._ensure_index()
            ok, data = cv2.imencode(self._suffix, record.image, self._params)
            if not ok:
                raise ValueError(f"the frame could not be encoded as {self.settings.format}")
            overlay = self._overlay(record)
            # Day, then hour, never with parents: a root that vanished meanwhile is not recreated.
            image.parent.parent.mkdir(exist_ok=True)
            image.parent.mkdir(exist_ok=True)
            overlay_file = overlay_path(sidecar) if overlay is not None else None
            try:
                write_atomic(image, data.tobytes())
                written.append(image)
                if overlay_file is not None and overlay is not None:
                    write_atomic(overlay_file, overlay)
                    written.append(overlay_file)
                write_atomic(sidecar, sidecar_json(record.fields, image, saved, overlay_file))
            except BaseException:
                for path in written:  # pictures without their sidecar are no entry: never left taking space
                    unlink(path)
                raise
        except OSError as e:
            reason = _REASONS.get(e.errno or 0, "error")
            if reason == "disk_full" and self._index is not None:
                self._make_room(self._index, 2 * (len(data) + len(overlay or b"")) if data is not None else 1)
            return self._failed(record, e, reason, image)
        except Exception as e:  # noqa: BLE001 - an odd frame must not stop the archive
            return self._failed(record, e, "error", image)
        index.add(Entry(sidecar, image, saved, len(data) + len(overlay or b"") + sidecar.stat().st_size, overlay_file))
        self.metrics.archive_saved.labels(result).inc()
        self._evict(index, saved)
        return None

    def _overlay(self, record: DecisionRecord) -> bytes | None:
        """The overlay JPEG of a decision with findings; None without findings, or when it
        cannot be drawn (logged: the frame is kept all the same)."""
        if not record.fields.get("findings"):
            return None
        try:
            picture = annotate(record.image, record.fields, getattr(record.decision, "decoded", None))
            ok, data = cv2.imencode(".jpg", picture, jpeg_params(OVERLAY_QUALITY))
            if not ok:
                raise ValueError("the overlay could not be encoded as JPEG")
            return bytes(data.tobytes())
        except Exception as e:  # noqa: BLE001 - a picture must never cost the frame
            self.metrics.archive_overlays_failed.inc()
            log_event(log, "archive_overlay_failed", logging.WARNING, decision_id=record.decision_id,
                      reason=f"{type(e).__name__}: {e}: the frame is kept without its overlay", rate_key="archive-overlay")
            return None

    def _make_room(self, index: Index, at_least: int) -> None:
        """The disk is full before max_bytes is reached: the oldest frames make room for the
        next ones, so the archive keeps the newest rejects rather than none."""
        deleted = index.free(at_least)
        if deleted:
            self.metrics.archive_evicted.labels("disk_full").inc(deleted)
            self.metrics.archive_bytes.set(index.bytes)

    def _ensure_index(self) -> Index:
        if self._index is None:
            entries, removed = scan(self.root)
            self._index = Index(entries)
            self.metrics.archive_bytes.set(self._index.bytes)
            log_event(log, "archive_opened", logging.INFO, path=str(self.root), entries=len(entries),
                      bytes=self._index.bytes, leftovers_removed_bytes=removed or None)
        return self._index

    def _evict(self, index: Index, now: float) -> None:
        self._next_age_check = time.monotonic() + AGE_CHECK_S
        s = self.settings
        by_quota, by_age = index.evict(s.max_bytes, s.max_age_days * 86400, now)
        if by_quota:
            self.metrics.archive_evicted.labels("quota").inc(by_quota)
        if by_age:
            self.metrics.archive_evicted.labels("age").inc(by_age)
        self.metrics.archive_bytes.set(index.bytes)

    def _failed(self, record: DecisionRecord, e: Exception, reason: str, image: Path) -> str:
        if reason == "missing_folder":
            self._index = None  # a disk mounted again may hold other entries: scan it again
        what = {"disk_full": "the disk is full", "read_only": "the file system is read-only",
                "missing_folder": f"{self.root} does not exist (an unmounted disk?); it is not created in its place",
                "permission": "no permission to write there"}.get(reason, f"{type(e).__name__}: {e}")
        log_event(log, "archive_write_failed", logging.WARNING, path=str(image), decision_id=record.decision_id,
                  reason=f"{what}: this frame is not kept; the bridge goes on deciding and writing the PLC",
                  drop=reason, setting="archive.path", rate_key=f"archive-{reason}")
        return reason


class _ShadowFeed:
    """The archive's second feed (a sink of a SinkFanout of its own): the shadow model's
    disagreements, written by the archive under its lock, on this feed's thread."""

    name = "archive_shadow"

    def __init__(self, archive: ArchiveSink) -> None:
        self.archive = archive

    def write(self, record: DecisionRecord) -> None:
        self.archive._write_shadow(record)

    def close(self) -> None:
        pass
