"""The one fixed-rate schedule (write loop, paced cameras, simulated PLC) and the one
percentile helper, on a fake clock: no real sleeping, nothing timed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plcbridge.schedule import FixedRateSchedule, Samples, percentile_summary


class FakeTime:
    """A clock that moves only when slept on, or when the test says so."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.slept.append(dt)
        self.t += dt


def _schedule(period: float, ft: FakeTime, **kw) -> FixedRateSchedule:
    return FixedRateSchedule(period, clock=ft.clock, sleep=ft.sleep, **kw)


def test_first_wait_starts_the_grid_and_on_time_waits_sleep_to_each_slot():
    ft = FakeTime()
    s = _schedule(0.1, ft)
    assert not s.started
    assert s.wait() == 100.0 and ft.slept == []  # slot 0 is now: at once
    assert s.wait() == pytest.approx(100.1)
    assert ft.slept == [pytest.approx(0.1)]
    ft.t += 0.03  # work inside the slot is absorbed by the next sleep, not added to it
    s.wait()
    assert ft.slept[-1] == pytest.approx(0.07) and ft.t == pytest.approx(100.2)
    assert (s.skipped, s.missed, s.index) == (0, 0, 3)


def test_late_by_whole_periods_skips_them_and_goes_at_once_then_stays_on_the_grid():
    ft = FakeTime()
    s = _schedule(0.1, ft)
    s.wait()
    s.wait()  # slot 1 at 100.1
    ft.t += 0.35  # the caller stalls 3.5 periods -> 100.45
    s.wait()  # slots 2 and 3 given up; slot 4 (100.4) taken at once, 50 ms late
    assert len(ft.slept) == 1
    assert (s.missed, s.skipped) == (2, 2) and s.late == pytest.approx(0.05)
    s.wait()  # the next slot is 100.5, on the original grid: no burst of catch-up slots
    assert ft.slept[-1] == pytest.approx(0.05) and ft.t == pytest.approx(100.5)
    assert (s.missed, s.skipped) == (0, 2)


def test_late_by_less_than_a_period_skips_nothing():
    ft = FakeTime()
    s = _schedule(0.01, ft)
    s.wait()
    ft.t += 0.019  # 9 ms past slot 1: late, not a whole period
    s.wait()
    assert (s.missed, s.skipped) == (0, 0) and s.late == pytest.approx(0.009)
    s.wait()  # slot 2 at 100.02, 1 ms later
    assert ft.slept == [pytest.approx(0.001)]


def test_skip_due_gives_up_the_slots_a_late_caller_ran_past():
    ft = FakeTime()
    s = _schedule(0.01, ft)
    s.wait()  # slot 0 at 100.00
    assert s.skip_due(ft.t + 0.005) == 0  # work done within the slot: nothing to give up
    ft.t += 0.0101  # the work ran 0.1 ms past slot 1
    assert s.skip_due(ft.t) == 1 and s.skipped == 1 and s.deadline == pytest.approx(100.02)
    s.wait()  # slot 2 on the grid, ~9.9 ms after the late slot: never right behind it
    assert ft.slept == [pytest.approx(0.0099)] and (s.missed, s.skipped) == (0, 1)
    ft.t += 0.035  # 3.5 periods past slot 2 (100.02): slots 3, 4 and 5 are due
    assert s.skip_due(ft.t) == 3 and s.deadline == pytest.approx(100.06) and s.skipped == 4


def test_a_long_stall_never_bursts():
    """After a stall of many periods, each further call waits for its own slot: the calls
    taken at once number exactly one, whatever the stall."""
    ft = FakeTime()
    s = _schedule(0.01, ft)
    s.wait()
    ft.t += 1.0  # 100 periods
    times = [s.wait() for _ in range(5)]
    gaps = np.diff(times)
    assert s.skipped == 99 and s.missed == 0
    assert gaps == pytest.approx([0.01] * 4)


def test_deadlines_come_from_an_integer_index_not_accumulated_floats():
    """0.1 has no exact float: added 100 000 times it drifts, k * 0.1 does not."""
    s = FixedRateSchedule(0.1)
    s.start(0.0)
    accumulated = 0.0
    for _ in range(100_000):
        s.take(s.deadline)  # each slot taken exactly on time
        accumulated += 0.1
    assert s.index == 100_000 and s.skipped == 0 and s.late == 0.0
    assert s.deadline == 10_000.0
    assert abs(accumulated - 10_000.0) > 1e-9  # where a float accumulator would be instead


def test_clockless_use_start_due_take_and_reset():
    s = FixedRateSchedule(0.5)  # the simulator's way: its front-end passes the time in
    assert not s.due(10.0)  # not started: nothing is due
    s.start(10.5)
    assert not s.due(10.49) and s.due(10.5)
    assert s.take(10.5) == 0 and s.deadline == 11.0
    assert s.take(12.2) == 2 and s.deadline == 12.5  # 11.0 and 11.5 skipped, 12.0 taken
    s.reset()
    assert not s.started and not s.due(1e9)
    with pytest.raises(RuntimeError):
        s.take(13.0)
    s.start(20.0)
    assert s.index == 0 and s.skipped == 2  # the count is kept across restarts


def test_boundary_rounding_takes_the_last_slot_due():
    """(now - t0) // period can round to one slot short or past at an exact boundary; the
    slot taken is still the last one due and the next one is in the future."""
    for period in (0.1, 0.3, 1 / 3, 0.007):
        for k in range(2, 50):
            s = FixedRateSchedule(period)
            s.start(0.0)
            now = 0.0 + k * period
            s.take(now)
            assert s.index - 1 <= k and 0.0 + (s.index - 1) * period <= now < s.deadline, (period, k)


def test_lateness_goes_into_the_ring():
    ft = FakeTime()
    ring = Samples(4)
    s = _schedule(0.1, ft, lateness=ring)
    s.wait()
    ft.t += 0.125  # 25 ms late for slot 1
    s.wait()
    assert ring.values() == pytest.approx([0.0, 0.025])


def test_period_must_be_positive():
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            FixedRateSchedule(bad)


# ---------------------------------------------------------------- samples and percentiles


def test_ring_keeps_the_newest_and_counts_all():
    r = Samples(3)
    for v in (1.0, 2.0, 3.0, 4.0, 5.0):
        r.add(v)
    assert sorted(r.values()) == [3.0, 4.0, 5.0]
    summary = r.summary_ms()
    assert summary["n"] == 5 and summary["max"] == 5000.0
    assert list(summary) == ["n", "p50", "p95", "p99", "max"]
    assert Samples(3).summary_ms() == {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}


def test_percentile_summary_linear_is_numpys_default():
    v = [float(x) for x in range(1, 101)]  # 1..100
    assert percentile_summary(v) == {"p50": 50.5, "p95": 95.05, "p99": 99.01, "max": 100.0}
    rng = np.random.default_rng(1)
    x = rng.exponential(3.0, 1001)
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    assert percentile_summary(x) == {"p50": round(float(p50), 3), "p95": round(float(p95), 3),
                                     "p99": round(float(p99), 3), "max": round(float(x.max()), 3)}


def test_percentile_summary_nearest_rank_is_always_an_observed_value():
    v = [float(x) for x in range(1, 101)]
    assert percentile_summary(v, nearest_rank=True) == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    x = [0.5, 9.25, 3.125]  # unsorted; rank ceil(p/100 * 3): 2, 3, 3
    assert percentile_summary(x, nearest_rank=True) == {"p50": 3.125, "p95": 9.25, "p99": 9.25, "max": 9.25}
    rng = np.random.default_rng(2)
    y = list(rng.normal(10.0, 2.0, 37))
    got = percentile_summary(y, nearest_rank=True)
    ordered = sorted(y)
    for p in (50, 95, 99):
        assert got[f"p{p}"] == round(ordered[max(1, math.ceil(p / 100.0 * len(y))) - 1], 3)


def test_percentile_summary_rounds_and_handles_one_and_none():
    assert percentile_summary([1.23456]) == {"p50": 1.235, "p95": 1.235, "p99": 1.235, "max": 1.235}
    assert percentile_summary([1.23456], ndigits=1)["max"] == 1.2
    assert percentile_summary([]) == {"p50": None, "p95": None, "p99": None, "max": None}
    assert percentile_summary(iter([2.0, 4.0]))["p50"] == 3.0  # any iterable


def test_the_lateness_ring_is_resident_from_the_start_so_filling_it_does_not_grow_rss():
    """A calloc'd ring became resident page by page as the loop filled it: 1.6 MB of RSS creep
    over the first half hour at 100 ticks a second, which reads like a leak in a soak."""
    import re

    def rss_kib() -> int:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    ring = Samples()
    before = rss_kib()
    for _ in range(200_000):
        ring.add(0.001)
    assert rss_kib() - before < 400, rss_kib() - before  # the ring alone is 1,563 KiB
