"""The archive on disk: where a frame goes, how it is written whole or not at all, and how
the oldest go when the bounds are passed. Used by the writer (sink.py) and by
`plcbridge archive` (plcbridge/tools/archive.py), so both read one layout.

    <root>/2026-12-06/21/215301.123_FAIL_01M96N04VGAZHG5VYJ438PG01X.png
    <root>/2026-12-06/21/215301.123_FAIL_01M96N04VGAZHG5VYJ438PG01X.json

Folders by UTC date and hour, so `find`, `rsync` and a file browser work; names start with
the UTC time, then the result, then the decision id (a ULID, also ordered by time), so a
plain sort is chronological. The JSON sidecar is the decision's journal record plus what
the archive adds (`image`, `saved_utc`); an entry is the pair, and it counts only once its
sidecar exists.

Atomic: each file is written under a temporary name (`.NAME.tmp`) in its own folder, synced,
then renamed. The image is renamed before the sidecar is written, so a power cut leaves at
worst a temporary file (removed at the next scan) or an image without its sidecar (not an
entry; removed at the next scan), never a half file under a real name. The folder itself is
not synced after each rename (two more syncs a frame, 0.2 ms of CPU and more of the disk's
time): a rename the power cut caught is lost whole, the newest entry or two with it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA = "plcbridge-archive/1"
IMAGE_SUFFIXES = (".png", ".jpg")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_HOUR = re.compile(r"\d{2}")


@dataclass(frozen=True)
class Entry:
    """One archived decision: its sidecar, its image, and their size together."""

    sidecar: Path
    image: Path
    saved: float  # wall-clock seconds (from the name)
    size: int

    @property
    def decision_id(self) -> str:
        return self.sidecar.stem.rsplit("_", 1)[-1]

    @property
    def result(self) -> str:
        """The result the name carries (TIME_RESULT_ID): filters without reading the JSON."""
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


def complete_entries(folder: Path) -> dict[str, Path]:
    """decision id -> image, for each complete entry (image and sidecar) of one hour folder;
    empty when the folder is not there (an hour without entries, a disk that is gone)."""
    try:
        names = {e.name for e in os.scandir(folder) if not e.name.startswith(".")}
    except OSError:
        return {}
    out: dict[str, Path] = {}
    for name in names:
        stem, dot, ext = name.rpartition(".")
        if dot and ext == "json":
            image = next((stem + s for s in IMAGE_SUFFIXES if stem + s in names), None)
            if image is not None:
                out[stem.rsplit("_", 1)[-1]] = folder / image
    return out


def scan(root: Path) -> tuple[list[Entry], int]:
    """Every entry under `root`, oldest first, and the bytes of leftovers removed (temporary
    files and images without a sidecar: what a power cut or a crash mid-write leaves)."""
    entries: list[Entry] = []
    removed = 0
    for hour in folders(root):
        names = {p.name: p for p in hour.iterdir() if p.is_file()}
        for name, path in sorted(names.items()):
            if name.startswith(".") and name.endswith(".tmp"):
                removed += unlink(path)
            elif path.suffix in IMAGE_SUFFIXES and path.with_suffix(".json").name not in names:
                removed += unlink(path)
            elif path.suffix == ".json":
                image = next((path.with_suffix(s) for s in IMAGE_SUFFIXES if path.with_suffix(s).name in names), None)
                if image is None:
                    continue  # a sidecar is written after its image: cannot happen but by hand
                try:
                    entries.append(Entry(path, image, _saved_time(path), path.stat().st_size + image.stat().st_size))
                except (ValueError, OSError):
                    continue  # not ours (a file someone put there): left alone
    return entries, removed


def sidecar_json(record: dict[str, Any], image: Path, saved: float) -> bytes:
    head = {"schema": SCHEMA, "saved_utc": datetime.fromtimestamp(saved, timezone.utc).isoformat(timespec="milliseconds"),
            "image": image.name}
    return (json.dumps({**head, **record}, indent=1, default=str) + "\n").encode()


class Index:
    """The entries the writer knows of, oldest first, with their total size: what eviction
    works from, so that the disk is scanned once, not at every frame."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries: deque[Entry] = deque(entries)
        self.bytes = sum(e.size for e in entries)

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)
        self.bytes += entry.size

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
        try:
            unlink(oldest.sidecar)  # the sidecar first: the image alone is no entry
            unlink(oldest.image)
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
    for sidecar in (p for hour in folders(root) for p in sorted(hour.glob("*.json"))):
        if sidecar.name.startswith("."):
            continue
        image = next((sidecar.with_suffix(s) for s in IMAGE_SUFFIXES if sidecar.with_suffix(s).exists()), None)
        if image is None:
            continue
        try:
            out.append(Entry(sidecar, image, _saved_time(sidecar), sidecar.stat().st_size + image.stat().st_size))
        except (ValueError, OSError):
            continue
    return out
