"""The reconnect policy the camera grab loop and the PLC link share: the backoff doubles
from the minimum to a true maximum, starts over only after a session that answered for long
enough, and its wait is cut short by the loop's event. The loops themselves are tested in
test_link.py (PLC) and test_camera_sources.py / test_pipeline.py (camera)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from plcbridge import backoff
from plcbridge.backoff import Backoff, Reconnector


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A hand-driven time.monotonic for plcbridge.backoff only."""
    now = SimpleNamespace(t=1000.0)
    monkeypatch.setattr(backoff, "time", SimpleNamespace(monotonic=lambda: now.t))
    return now


def _doubled(delay: float, base: float) -> bool:
    return 0.8 * base <= delay <= 1.2 * base


def test_backoff_maximum_is_a_true_maximum():
    b = Backoff(0.1, 5.0)
    delays = [b.next() for _ in range(200)] + [b.maximum() for _ in range(200)]
    assert max(delays) <= 5.0 and min(delays) >= 0.1
    assert min(b.maximum() for _ in range(200)) >= 0.8 * 5.0


def test_failures_without_answers_double_up_to_the_maximum(clock):
    r = Reconnector(0.1, 0.8, threading.Event(), reset_after_s=10.0)
    delays = []
    for _ in range(6):
        r.opened()  # a peer that accepts the connection and fails before answering
        delays.append(r.failed())
    assert all(_doubled(d, b) for d, b in zip(delays, [0.1, 0.2, 0.4, 0.8])), delays
    assert all(0.8 * 0.8 <= d <= 0.8 for d in delays[3:]), delays


def test_an_absent_peer_is_looked_for_at_the_minimum_and_the_doubling_is_kept(clock):
    r = Reconnector(0.1, 5.0, threading.Event(), reset_after_s=10.0)
    for _ in range(4):
        r.opened()  # accepted, then failed: 0.1, 0.2, 0.4, 0.8
        r.failed()
    absent = [r.absent() for _ in range(50)]  # refused connects while it is gone
    assert all(0.1 <= d <= 0.12 for d in absent), absent
    r.opened()  # back, accepting, and failing again: the doubling goes on from 1.6
    assert _doubled(r.failed(), 1.6)


def test_a_long_session_that_ends_with_the_peer_gone_starts_the_doubling_over(clock):
    r = Reconnector(0.1, 5.0, threading.Event(), reset_after_s=10.0)
    for _ in range(4):
        r.failed()  # 0.1 .. 0.8: the next would be 1.6
    r.opened()
    r.answered()
    clock.t += 60  # a minute of frames, then the folder is emptied
    assert 0.1 <= r.absent() <= 0.12
    r.opened()  # back, but failing at once: from the minimum, not from 1.6
    assert _doubled(r.failed(), 0.1)


def test_the_backoff_starts_over_only_after_a_session_answered_for_reset_after(clock):
    r = Reconnector(0.1, 10.0, threading.Event(), reset_after_s=5.0)
    for _ in range(4):
        r.failed()  # 0.1, 0.2, 0.4, 0.8: the next is 1.6
    r.opened()
    r.answered()
    clock.t += 4.9
    assert _doubled(r.failed(), 1.6), "answered, but not for reset_after: no reset"
    r.opened()
    clock.t += 5.0
    assert _doubled(r.failed(), 3.2), "long enough, but never answered: no reset"
    r.opened()
    r.answered()
    assert r.answers == 1 and r.session_s() == 0.0
    clock.t += 5.0
    assert r.session_s() == 5.0
    assert _doubled(r.failed(), 0.1)
    assert (r.answers, r.session_s()) == (0, 0.0), "failed() ends the session"
    assert _doubled(r.failed(), 0.2), "a failure to reopen does not start over again"


def test_one_answer_is_enough_when_reset_after_is_zero(clock):
    r = Reconnector(0.1, 10.0, threading.Event())  # the camera: one frame and the next failure starts small
    for _ in range(3):
        r.failed()
    r.opened()
    assert _doubled(r.failed(), 0.8), "opened but no frame: keeps doubling"
    r.opened()
    r.answered()
    assert _doubled(r.failed(), 0.1)


def test_a_failure_retrying_cannot_cure_waits_the_maximum(clock):
    r = Reconnector(0.01, 0.4, threading.Event(), reset_after_s=0.0)
    assert all(0.8 * 0.4 <= r.failed(at_maximum=True) <= 0.4 for _ in range(50))
    assert _doubled(r.failed(), 0.01), "the maximum does not advance the doubling"


def test_the_wait_is_cut_short_by_its_event():
    wake = threading.Event()
    r = Reconnector(0.1, 60.0, wake)
    assert r.wait(0.01) is False
    threading.Timer(0.05, wake.set).start()
    t0 = time.monotonic()
    assert r.wait(30.0) is True
    assert time.monotonic() - t0 < 5.0
