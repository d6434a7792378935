"""Bounded exponential backoff, shared by the camera and PLC reconnect loops."""

from __future__ import annotations

import random


class Backoff:
    """min, 2*min, 4*min ... capped at max, with +-20 % jitter so stations do not reconnect
    in step. The cap holds after the jitter: no delay is ever above max or below min."""

    def __init__(self, min_s: float, max_s: float, jitter: float = 0.2) -> None:
        self.min_s, self.max_s, self.jitter = min_s, max(max_s, min_s), jitter
        self._next = min_s

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.max_s)
        return self._bounded(delay * (1 + random.uniform(-self.jitter, self.jitter)))

    def maximum(self) -> float:
        """The longest delay, jittered downwards only: for retries that cannot help soon."""
        return self._bounded(self.max_s * (1 - random.uniform(0, self.jitter)))

    def reset(self) -> None:
        self._next = self.min_s

    def _bounded(self, delay: float) -> float:
        return min(max(delay, self.min_s), self.max_s)
