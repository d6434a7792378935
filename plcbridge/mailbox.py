"""Latest-value mailboxes between the stages.

A producer never waits for a consumer: `put` replaces what is there. The frame mailbox
keeps a short history so that a trigger can take the *first* frame captured after it was
seen, even when the inference stage comes to it a little later.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Generic, TypeVar

from plcbridge.adapters.camera.base import Frame

T = TypeVar("T")


class FrameMailbox:
    def __init__(self, history: int = 8) -> None:
        self._frames: collections.deque[Frame] = collections.deque(maxlen=history)
        self._cond = threading.Condition()
        self.last_capture: float | None = None  # read lock-free by the write loop (a float swap is atomic)

    def put(self, frame: Frame) -> None:
        with self._cond:
            self._frames.append(frame)
            self.last_capture = frame.t_capture
            self._cond.notify_all()

    def wait_newer(self, than_seq: int, timeout: float) -> Frame | None:
        """The newest frame with seq > than_seq, waiting up to timeout for one."""
        end = time.monotonic() + timeout
        with self._cond:
            while not (self._frames and self._frames[-1].seq > than_seq):
                left = end - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    if not (self._frames and self._frames[-1].seq > than_seq):
                        return None
            return self._frames[-1]

    def first_after(self, t: float, timeout: float, *, after_seq: int = -1, until: float | None = None) -> Frame | None:
        """The first frame captured after monotonic time t with seq > after_seq, waiting up
        to timeout for one. With `until`, a frame captured after it is not the one wanted:
        None at once (the caller's window has closed)."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for f in self._frames:
                    if f.t_capture > t and f.seq > after_seq:
                        return None if until is not None and f.t_capture > until else f
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


    def frame_for(self, trigger: object, timeout: float) -> Frame | None:
        """The frame a software trigger asked for (matched by identity), waiting up to timeout."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for f in self._frames:
                    if f.trigger is trigger:
                        return f
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


class LatestValue(Generic[T]):
    """A one-slot mailbox: the reader always sees the newest value, never a queue of old ones."""

    def __init__(self) -> None:
        self._value: T | None = None
        self._lock = threading.Lock()

    def put(self, value: T) -> None:
        with self._lock:
            self._value = value

    def get(self) -> T | None:
        with self._lock:
            return self._value
