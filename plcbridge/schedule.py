"""One fixed-rate schedule, and the percentiles every latency figure in plcbridge is given in.

Three things run at a fixed rate: the write loop (plcbridge/writeloop.py), the camera sources
that would otherwise run as fast as they can (adapters/camera/: folder, video files,
synthetic) and the simulated PLC's trigger clock (simulators/program.py). They keep time
the same way, with `FixedRateSchedule`:

- Absolute deadlines. Slot k is due at t0 + k * period, k an integer: each deadline is
  computed from its index, never by adding the period to a float again and again. So the
  mean rate is exact over any run: neither the work done in a slot, nor the sleep's own
  overshoot, nor float rounding adds up into drift (a relative `sleep(period)` after the
  work runs slow by the work time).
- Skip ahead, never catch up. A caller late by one or more whole periods gives those slots
  up (counted in `skipped`) and takes the latest slot due at once, less than a period late;
  the next slot is on the original grid. python-can's ThreadBasedCyclicSendTask keeps its
  due time instead and sends without sleeping until it has caught up: after a 35 ms stall
  at a 10 ms period, three messages back to back. A PLC watching a heartbeat, an inference
  stage taking frames or a bridge being triggered would each see a burst that no real
  device produces, and learn nothing from it; here they see one late slot, and the count.
  (A paced camera gives up time slots, never images: the next frame is served late.)

The clock and the sleep are injectable so that tests run on a fake clock.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable

import numpy as np

PERCENTILES = (50, 95, 99)


def percentile_summary(values: Iterable[float] | np.ndarray, *, nearest_rank: bool = False,
                       ndigits: int = 3) -> dict[str, float | None]:
    """p50, p95, p99 and max of `values`, each rounded to `ndigits`; all None when empty.

    numpy's default percentile (linear interpolation between the two nearest samples) unless
    `nearest_rank`: then each figure is a value that was really observed, the ceil(p/100 * n)-th
    smallest (the simulator's figures). Counts, means and units are the caller's business.
    """
    v = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.float64)
    if not len(v):
        empty: dict[str, float | None] = {f"p{p}": None for p in PERCENTILES}
        empty["max"] = None
        return empty
    if nearest_rank:
        v = np.sort(v)
        figures = [v[max(1, math.ceil(p / 100.0 * len(v))) - 1] for p in PERCENTILES]
    else:
        figures = list(np.percentile(v, PERCENTILES))
    out: dict[str, float | None] = {f"p{p}": round(float(x), ndigits) for p, x in zip(PERCENTILES, figures)}
    out["max"] = round(float(v.max()), ndigits)
    return out


class Samples:
    """A fixed ring of float samples (the newest `size`), allocated once: adding one on a
    loop's hot path allocates nothing.

    The ring is written through once when it is made: np.zeros' pages come from calloc and
    become resident only as samples land in them, which made the daemon's RSS creep up by the
    ring's 1.6 MB over its first half hour (at 100 ticks a second), like a slow leak."""

    def __init__(self, size: int = 200_000) -> None:
        self._buf = np.full(size, 0.0)
        self._n = 0

    def add(self, v: float) -> None:
        self._buf[self._n % len(self._buf)] = v
        self._n += 1

    def values(self) -> np.ndarray:
        return self._buf[: min(self._n, len(self._buf))].copy()

    def summary_ms(self) -> dict[str, float | int | None]:
        """Samples in seconds, figures in ms: n (all samples ever added), p50, p95, p99, max."""
        return {"n": int(self._n), **percentile_summary(self.values() * 1000)}


class FixedRateSchedule:
    """Slot k due at t0 + k * period; a caller late by whole periods skips them, never bursts.

    `wait()` sleeps to the next slot and takes it (a thread's loop: the write loop, a paced
    camera). A caller with a clock of its own (the simulator, given `t` by its front-end)
    uses `start(t0)`, `due(now)` and `take(now)` instead, and never sleeps.

    After each slot taken: `late` is how late it was taken (seconds, under one period),
    `missed` how many slots were given up just before it; `skipped` counts all slots given
    up; `lateness`, if given, receives every `late`.
    """

    def __init__(self, period_s: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, lateness: Samples | None = None) -> None:
        if not period_s > 0:
            raise ValueError(f"a fixed-rate schedule needs a period > 0, got {period_s!r}")
        self.period = period_s
        self._clock = clock
        self._sleep = sleep
        self.lateness = lateness
        self.t0: float | None = None  # when slot 0 is due; None: not started
        self.index = 0  # the next slot to take
        self.late = 0.0
        self.missed = 0
        self.skipped = 0

    @property
    def started(self) -> bool:
        return self.t0 is not None

    @property
    def deadline(self) -> float:
        """When the next slot is due."""
        if self.t0 is None:
            raise RuntimeError("schedule not started")
        return self.t0 + self.index * self.period

    def start(self, t0: float | None = None) -> float:
        """Put slot 0 at t0 (default: now) and make it the next; counts are kept. Returns t0."""
        self.t0 = self._clock() if t0 is None else t0
        self.index = 0
        return self.t0

    def reset(self) -> None:
        """Stop keeping time: the next `start()`, or `wait()`, starts the grid afresh."""
        self.t0 = None

    def due(self, now: float) -> bool:
        """The next slot is due at `now` (False while not started)."""
        return self.t0 is not None and now >= self.t0 + self.index * self.period

    def take(self, now: float) -> int:
        """Take a slot at `now`: the latest one due, giving up the older ones still untaken
        (skip ahead), or the next one if none is due yet. Returns how many were given up."""
        if self.t0 is None:
            raise RuntimeError("schedule not started")
        t0, period, k = self.t0, self.period, self.index
        if t0 + (k + 1) * period <= now:  # the slot after is due too: a whole period late or more
            k = max(k + 1, int((now - t0) // period))
            # The division may round either way at a boundary: take the last slot due.
            while t0 + (k + 1) * period <= now:
                k += 1
            while t0 + k * period > now:
                k -= 1
        self.missed = k - self.index
        self.skipped += self.missed
        self.late = now - (t0 + k * period)
        self.index = k + 1
        if self.lateness is not None:
            self.lateness.add(self.late)
        return self.missed

    def skip_due(self, now: float) -> int:
        """Give up every slot already due at `now`, so that the next one is in the future;
        returns how many (counted in `skipped`). A caller whose work ran past the next slot
        calls it after the work: its next run then keeps the grid instead of following the
        late one at once (the write loop: a late tick is never bunched with the next)."""
        if self.t0 is None:
            raise RuntimeError("schedule not started")
        t0, period, k = self.t0, self.period, self.index
        if t0 + k * period > now:
            return 0
        k = max(k, int((now - t0) // period))
        while t0 + k * period <= now:  # past the rounding of the division, to the first future slot
            k += 1
        while k - 1 > self.index and t0 + (k - 1) * period > now:
            k -= 1
        missed = k - self.index
        self.index = k
        self.skipped += missed
        return missed

    def wait(self) -> float:
        """Sleep until the next slot is due, take it, and return the time it was taken. The
        first call (and the first after `reset()`) starts the grid: slot 0 is now."""
        if self.t0 is None:
            self.start()
        now = self._clock()
        delay = self.deadline - now
        if delay > 0:
            self._sleep(delay)
            now = self._clock()
        self.take(now)
        return now
