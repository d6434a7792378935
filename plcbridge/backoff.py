"""Bounded exponential backoff, and the retry policy the camera and PLC reconnect loops share."""

from __future__ import annotations

import random
import threading
import time


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

    def minimum(self) -> float:
        """The shortest delay, jittered upwards only; the doubling is left where it is."""
        return self._bounded(self.min_s * (1 + random.uniform(0, self.jitter)))

    def maximum(self) -> float:
        """The longest delay, jittered downwards only: for retries that cannot help soon."""
        return self._bounded(self.max_s * (1 - random.uniform(0, self.jitter)))

    def reset(self) -> None:
        self._next = self.min_s

    def _bounded(self, delay: float) -> float:
        return min(max(delay, self.min_s), self.max_s)


class Reconnector:
    """The wait-and-retry policy of a reconnect loop (the camera's grab loop, the PLC link).

    The loop says when a session `opened()`, each time it `answered()` (a frame, a reply),
    and when opening or the session `failed()`, which returns how long to wait before the
    next attempt (the loop logs it as retry_in_ms). `wait()` sleeps that long, cut short when
    `wake` is set (stop). The backoff falls back to the minimum only when the failed session
    had answered and had lived for `reset_after_s`: a peer that accepts every connection and
    then fails at once is not reconnected to at the minimum's rate. `reset_after_s` 0: one
    answer is enough.
    """

    def __init__(self, min_s: float, max_s: float, wake: threading.Event, reset_after_s: float = 0.0) -> None:
        self.backoff = Backoff(min_s, max_s)
        self.wake = wake
        self.reset_after_s = reset_after_s
        self.answers = 0  # on the current session
        self._t_opened: float | None = None

    def opened(self) -> None:
        self._t_opened, self.answers = time.monotonic(), 0

    def answered(self) -> None:
        self.answers += 1

    def session_s(self) -> float:
        """How long the current session has lived (0 when none is open)."""
        return 0.0 if self._t_opened is None else time.monotonic() - self._t_opened

    def failed(self, *, at_maximum: bool = False) -> float:
        """The delay before the next attempt; ends the session. `at_maximum`: a failure that
        retrying soon cannot cure (the peer refuses the configuration)."""
        self._end_session()
        return self.backoff.maximum() if at_maximum else self.backoff.next()

    def absent(self) -> float:
        """The delay before looking again for a peer that accepted nothing (or that vanished
        from a session: a camera whose folder was emptied): the minimum. Ends the session
        like `failed()`, so a long one still starts the doubling over."""
        self._end_session()
        return self.backoff.minimum()

    def _end_session(self) -> None:
        if self.answers and self.session_s() >= self.reset_after_s:
            self.backoff.reset()  # a session that answered for a good while: start small again
        self._t_opened, self.answers = None, 0

    def wait(self, delay: float) -> bool:
        """Sleep `delay` seconds or until woken; True if woken."""
        return self.wake.wait(delay)
