"""Bounded exponential backoff, shared by the camera and PLC reconnect loops."""

from __future__ import annotations

import random


class Backoff:
    """min, 2*min, 4*min ... capped at max, with +-20 % jitter so stations do not reconnect in step."""

    def __init__(self, min_s: float, max_s: float, jitter: float = 0.2) -> None:
        self.min_s, self.max_s, self.jitter = min_s, max(max_s, min_s), jitter
        self._next = min_s

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.max_s)
        return delay * (1 + random.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self._next = self.min_s
