"""Pacing for sources that would otherwise run as fast as they can (files, the synthetic camera)."""

from __future__ import annotations

import time
from typing import Callable


class Pacer:
    """Holds a source to `fps` on absolute deadlines: slot k is at t0 + k / fps.

    Absolute slots keep the mean rate exact however long each decode or sleep took (a
    relative `sleep(1 / fps)` drifts slow by the work time). When the caller is late by one
    or more whole slots, those slots are dropped and the frame goes out at once: the
    consumer then sees one late frame, never a burst of catch-up frames, which a real
    camera would never produce either. Only time slots are dropped, never images.
    """

    def __init__(
        self,
        fps: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.period = 1.0 / fps
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None
        self.skipped_slots = 0  # slots given up because the caller was late

    def wait(self) -> None:
        """Return at the next slot (at once for the first call, or when already late)."""
        now = self._clock()
        if self._next is None:
            self._next = now
        elif now < self._next:
            self._sleep(self._next - now)
        else:
            missed = int((now - self._next) // self.period)
            self._next += missed * self.period
            if self._next + self.period <= now:  # float rounding in the division
                self._next += self.period
                missed += 1
            self.skipped_slots += missed
        self._next += self.period
