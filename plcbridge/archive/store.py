"""The archive on disk: where a frame goes, how it is written whole or not at all, and how
the oldest go when the bounds are passed. Used by the writer (sink.py) and by
`plcbridge archive` (plcbridge/tools/archive.py), so both read one layout.

    <root>/2026-12-06/21/215301.123_FAIL_01M96N04VGAZHG5VYJ438PG01X.png
    <root>/2026-12-06/21/215301.123_FAIL_01M96N04VGAZHG5VYJ438PG01X.overlay.jpg
    <root>/2026-12-06/21/215301.123_FAIL_01M96N04VGAZHG5VYJ438PG01X.json

Folders by UTC date and hour, so `find`, `rsync` and a file browser work; names start with
the UTC time, then the result, then the decision id (a ULID, also ordered by time), so a
plain sort is chronological. The JSON sidecar is the decision's journal record plus what
the archive adds (`image`, `overlay`, `saved_utc`); an entry is the image (the frame exactly
as judged), the sidecar, and for a decision with findings (an anomaly, detection or
segmentation model) the overlay: a JPEG of the frame with the findings drawn on it
(plcbridge/overlay.py). An entry counts only once its sidecar exists; its files are counted,
evicted and exported together.

Atomic: each file is written under a temporary name (`.NAME.tmp`) in its own folder, synced,
then renamed. The image and the overlay are renamed before the sidecar is written, so a
power cut leaves at worst a temporary file (removed at the next scan) or an image or overlay
without its sidecar (not an entry; removed at the next scan), never a half file under a real
name. The folder itself is
not synced after each rename (two more syncs a frame, 0.2 ms of CPU and more of the disk's
time): a rename the power cut caught is lost whole, the newest entry or two with it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import deque
from collections.abc import Container, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA = "plcbridge-archive/1"
IMAGE_SUFFIXES = (".png", ".jpg")
# The annotated picture beside an entry's image: STEM.overlay.jpg (its sidecar is STEM.json).
OVERLAY_SUFFIX = ".overlay.jpg"
# A frame the shadow (candidate) model judged differently from the live one (plcbridge/shadow.py):
# named with this tag where a decision's entry has its result, and marked so in its sidecar.
SHADOW_TAG = "SHADOW"
SHADOW_KEPT_FOR = "shadow_disagreement"
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_HOUR = re.compile(r"\d{2}")


@dataclass(frozen=True)
class Entry:
    """One archived decision: its sidecar, its image, its overlay if it has one, and the size
    of all its files together."""

    sidecar: Path
    image: Path
    saved: float  # wall-clock seconds (from the name)
    size: int
    overlay: Path | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        """The entry's files, the sidecar first (what makes it an entry), then the pictures."""
        return (self.sidecar, self.image) if self.overlay is None else (self.sidecar, self.image, self.overlay)

    @property
    def decision_id(self) -> str:
        return self.sidecar.stem.rsplit("_", 1)[-1]

    @property
    def result(self) -> str:
        """The result the name carries (TIME_RESULT_ID): filters without reading the JSON.
        SHADOW for a shadow model's disagreement (its record's `result` is the live verdict)."""
        parts = self.sidecar.stem.split("_")
        return parts[1] if len(parts) >= 3 else ""

    def record(self) -> dict[str, Any]:
        return json.loads(self.sidecar.read_text())


def entry_paths(root: Path, saved: float, result: str, decision_id: str, suffix: str) -> tuple[Path, Path]:
    """(image, sidecar) for a decision saved at wall-clock time `saved`."""
    t = datetime.fromtimestamp(saved, timezone.utc)
    folder = root / t.strftime("%Y-%m-%d") / t.strftime("%H")
    stem = f"{t.strftime('%H%M%S')}.{t.microsecond // 1000:03d}_{result}_{decision_id}"
    return folder / (stem + suffix), folder / (stem + ".json")


def overlay_path(sidecar: Path) -> Path:
    """Where the overlay of the entry with this sidecar is (whether or not it has one)."""
    return sidecar.with_name(sidecar.stem + OVERLAY_SUFFIX)


def _stem(name: str) -> tuple[str, str] | None:
    """(entry stem, what the file is: "sidecar", "overlay", "image") for a file name of the
    layout; None for any other name."""
    if name.endswith(OVERLAY_SUFFIX):
        return name[: -len(OVERLAY_SUFFIX)], "overlay"
    stem, dot, ext = name.rpartition(".")
    if not dot:
        return None
    if ext == "json":
        return stem, "sidecar"
    if "." + ext in IMAGE_SUFFIXES:
        return stem, "image"
    return None


def _saved_time(sidecar: Path) -> float:
    """The wall-clock time an entry's folder and name say (UTC)."""
    day, hour = sidecar.parent.parent.name, sidecar.parent.name
    hms = sidecar.name.split("_", 1)[0]
    if hms[:2] != hour:
        raise ValueError(f"{sidecar} is not in its hour's folder")
    t = datetime.strptime(f"{day} {hms[:6]}", "%Y-%m-%d %H%M%S").replace(tzinfo=timezone.utc)
    return t.timestamp() + int(hms[7:10]) / 1000


def write_atomic(path: Path, data: bytes) -> None:
    """`data` under `path`, whole or not at all (a temporary name, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        unlink(tmp)
        raise


def folders(root: Path) -> list[Path]:
    """The archive's hour folders, oldest first: only names of its own layout (a file
    system's lost+found, or anything else put there, is left alone and never read)."""
    out = []
    try:
        days = sorted(p for p in root.iterdir() if p.is_dir() and _DAY.fullmatch(p.name))
    except OSError:
        return []
    for day in days:
        try:
            out += sorted(p for p in day.iterdir() if p.is_dir() and _HOUR.fullmatch(p.name))
        except OSError:
            continue
    return out


def unlink(path: Path) -> int:
    """Remove a file; its size, or 0 if it was not there."""
    try:
        size = path.stat().st_size
        path.unlink()
        return size
    except FileNotFoundError:
        return 0


@dataclass(frozen=True)
class Pictures:
    """A complete entry's pictures: the frame as judged, and the overlay when it has one."""

    image: Path
    overlay: Path | None = None

    @property
    def shown(self) -> Path:
        """The picture to show a person: the overlay (the findings drawn) when there is one."""
        return self.overlay if self.overlay is not None else self.image


def _entry(sidecar: Path, present: Container[str]) -> Entry | None:
    """The entry of a sidecar, given the names present in its folder; None when it has no
    image or is not of the layout (a file someone put there: left alone)."""
    image = next((sidecar.with_suffix(s) for s in IMAGE_SUFFIXES if sidecar.with_suffix(s).name in present), None)
    if image is None:
        return None  # a sidecar is written after its image: cannot happen but by hand
    overlay = overlay_path(sidecar)
    pictures = (image, overlay) if overlay.name in present else (image,)
    try:
        size = sidecar.stat().st_size + sum(p.stat().st_size for p in pictures)
        return Entry(sidecar, image, _saved_time(sidecar), size, overlay if len(pictures) == 2 else None)
    except (ValueError, OSError):
        return None


def scan(root: Path) -> tuple[list[Entry], int]:
    """Every entry under `root`, oldest first, and the bytes of leftovers removed (temporary
    files, and images and overlays without a sidecar: what a power cut or a crash mid-write
    leaves)."""
    entries: list[Entry] = []
    removed = 0
    for hour in folders(root):
        names = {p.name: p for p in hour.iterdir() if p.is_file()}
        for name, path in sorted(names.items()):
            kind = _stem(name)
            if name.startswith(".") and name.endswith(".tmp"):
                removed += unlink(path)
            elif kind is not None and kind[1] != "sidecar" and kind[0] + ".json" not in names:
                removed += unlink(path)  # an image or overlay whose sidecar never came
            elif kind is not None and kind[1] == "sidecar":
                entry = _entry(path, names)
                if entry is not None:
                    entries.append(entry)
    return entries, removed


def sidecar_json(record: dict[str, Any], image: Path, saved: float, overlay: Path | None = None) -> bytes:
    head = {"schema": SCHEMA, "saved_utc": datetime.fromtimestamp(saved, timezone.utc).isoformat(timespec="milliseconds"),
            "image": image.name}
    if overlay is not None:
        head["overlay"] = overlay.name
    return (json.dumps({**head, **record}, indent=1, default=str) + "\n").encode()


class Index:
    """The entries the writer knows of, oldest first, with their total size: what eviction
    works from, so that the disk is scanned once, not at every frame; and by decision id, for
    the station page's thumbnails (`pictures`), so that it never lists a folder that may hold
    a hundred thousand frames an hour."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries: deque[Entry] = deque(entries)
        self.bytes = sum(e.size for e in entries)
        self._by_id = {e.decision_id: e for e in entries}

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)
        self.bytes += entry.size
        self._by_id[entry.decision_id] = entry

    def pictures(self, decision_id: str) -> Pictures | None:
        """The pictures of an entry the index holds; None for any other id. Called from other
        threads than the writer's, without its lock: one dict lookup, atomic in CPython."""
        entry = self._by_id.get(decision_id)
        return None if entry is None else Pictures(entry.image, entry.overlay)

    def evict(self, max_bytes: int, max_age_s: float, now: float | None = None) -> tuple[int, int]:
        """Delete the oldest entries until both bounds hold; (by quota, by age) counts."""
        now = time.time() if now is None else now
        by_quota = by_age = 0
        while self.entries:
            oldest = self.entries[0]
            if now - oldest.saved > max_age_s:
                by_age += 1
            elif self.bytes > max_bytes:
                by_quota += 1
            else:
                break
            self._delete_oldest()
        return by_quota, by_age

    def free(self, at_least: int) -> int:
        """Delete the oldest entries until `at_least` bytes are freed (a full disk: the newest
        frames matter more than the oldest); how many were deleted."""
        freed = deleted = 0
        while self.entries and freed < at_least:
            freed += self._delete_oldest()
            deleted += 1
        return deleted

    def _delete_oldest(self) -> int:
        oldest = self.entries.popleft()
        self.bytes -= oldest.size
        self._by_id.pop(oldest.decision_id, None)
        try:
            for path in oldest.files:  # the sidecar first: the pictures alone are no entry
                unlink(path)
        except OSError:
            pass  # not ours to delete after all (permissions changed): forgotten, not retried
        _prune(oldest.sidecar.parent)
        return oldest.size


def _prune(hour: Path) -> None:
    """Remove an hour folder, and its day folder, once empty."""
    for folder in (hour, hour.parent):
        try:
            folder.rmdir()
        except OSError:
            return


def iter_entries(root: Path, since: float | None = None, until: float | None = None) -> Iterator[Entry]:
    """Entries saved within [since, until) (wall clock), oldest first; for the tool."""
    for e in _list(root):
        if (since is None or e.saved >= since) and (until is None or e.saved < until):
            yield e


def _list(root: Path) -> list[Entry]:
    """Like scan(), without removing anything (the tool only reads)."""
    out: list[Entry] = []
    for hour in folders(root):
        try:
            names = {e.name for e in os.scandir(hour) if not e.name.startswith(".")}
        except OSError:
            continue
        for name in sorted(names):
            if name.endswith(".json"):
                entry = _entry(hour / name, names)
                if entry is not None:
                    out.append(entry)
    return out
