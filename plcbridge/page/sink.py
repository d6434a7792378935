"""The station page's sink on the journal's seam (plcbridge/sinks.py): what the page shows
of the decisions, kept bounded, on the sink's own thread.

It keeps three things, each of fixed size whatever the line rate:

- the newest record that judged a frame, with that frame (a reference to the array the
  camera made, never copied or drawn on here: the live image is drawn on a copy, at most a
  few times a second, when a browser asks for it) and the decision's decoded result (boxes,
  anomaly map: what the live image draws besides the journal line's findings);
- the newest KEEP decision records (their journal fields), for the page's list;
- counts per result for each of the last 60 minutes, for the last hour's yield. The counts
  since start are the journal's (`Journal.summary()`): one count of every decision, which a
  sink that dropped a record (its queue full, counted) would not have.

`write` does a few dict and deque operations per record: cheap enough for a free-run
station at frame rate. Readers (the endpoint's worker threads) take snapshots under the
same lock, held for a copy of at most KEEP references.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable

from plcbridge.sinks import DecisionRecord

KEEP = 200  # decision records kept: the most /api/decisions serves
HOUR_MINUTES = 60


@dataclass(frozen=True)
class Kept:
    """One decision as the page keeps it."""

    decision_id: str
    fields: dict[str, Any]  # the journal line's fields (never changed after the journal made them)
    has_image: bool
    seq: int  # +1 per record the sink took: tells a newer frame from the same one


class PageSink:
    """The page's side of the seam (`name = "page"`). Never raises for a record it cannot
    use: a record without a frame only leaves the live image as it was."""

    name = "page"

    def __init__(self, keep: int = KEEP, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: deque[Kept] = deque(maxlen=keep)
        self._frame: tuple[Kept, Any, Any] | None = None
        self._minutes: deque[tuple[int, Counter[str]]] = deque(maxlen=HOUR_MINUTES)
        self._seq = 0

    # ------------------------------------------------------------------ the seam (sink thread)

    def write(self, record: DecisionRecord) -> None:
        minute = int(self._clock() // 60)
        result = str(record.fields.get("result") or record.decision.result.name)
        with self._lock:
            self._seq += 1
            kept = Kept(record.decision_id, record.fields, record.image is not None, self._seq)
            self._recent.appendleft(kept)
            if record.image is not None:
                self._frame = (kept, record.image, getattr(record.decision, "decoded", None))
            if not self._minutes or self._minutes[-1][0] != minute:
                self._minutes.append((minute, Counter()))
            self._minutes[-1][1][result] += 1

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ readers (endpoint threads)

    def recent(self, limit: int) -> list[Kept]:
        """The newest `limit` records, newest first."""
        with self._lock:
            n = min(limit, len(self._recent))
            return [self._recent[i] for i in range(n)]

    def newest(self) -> Kept | None:
        with self._lock:
            return self._recent[0] if self._recent else None

    def frame(self) -> tuple[Kept, Any, Any] | None:
        """The newest record that judged a frame, the frame, and the decision's decoded
        result (None for a classifier or a fail-safe)."""
        return self._frame  # one tuple replaced whole: no lock needed

    def last_hour(self) -> dict[str, int]:
        """Results counted in the current minute and the 59 before it."""
        now = int(self._clock() // 60)
        total: Counter[str] = Counter()
        with self._lock:
            for minute, counts in self._minutes:
                if minute > now - HOUR_MINUTES:
                    total.update(counts)
        return dict(total)
