"""The PLC link's rules, with a scripted adapter on real threads: slow replies are used and
kept, the newest block is sent with one exchange in flight, the backoff means it, and a
configuration error is retried at the maximum. The same rules over real sockets against a
slow or rude simulator are in test_slow_plc.py; the backoff policy itself (Reconnector,
shared with the camera) in test_backoff.py."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import closed_tcp_port, read_metric, station_config, wait_for

from plcbridge.adapters.plc.base import PlcAdapter, PlcConfigError, PlcError
from plcbridge.contract import Inputs, Outputs
from plcbridge.link import PlcLink
from plcbridge.metrics import Metrics


class Script:
    """What every adapter built for one link does; records connects and exchanges."""

    def __init__(self, reply_s: float = 0.0, fail: PlcError | None = None, connect_error: PlcError | None = None) -> None:
        self.reply_s, self.fail, self.connect_error = reply_s, fail, connect_error
        self.connects: list[float] = []
        self.sent: list[int] = []  # heartbeat of each block sent
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = 0
        self.lock = threading.Lock()

    def factory(self, settings) -> PlcAdapter:
        script = self

        class Scripted(PlcAdapter):
            def connect(self) -> None:
                script.connects.append(time.monotonic())
                if script.connect_error is not None:
                    raise script.connect_error

            def exchange(self, outputs: Outputs, timeout_s: float) -> Inputs:
                with script.lock:
                    script.in_flight += 1
                    script.max_in_flight = max(script.max_in_flight, script.in_flight)
                script.sent.append(outputs.heartbeat)
                try:
                    time.sleep(min(script.reply_s, timeout_s))
                    if script.reply_s > timeout_s:
                        raise PlcError(f"no answer within {timeout_s * 1000:.0f} ms")
                    if script.fail is not None:
                        raise script.fail
                    return Inputs(trigger_seq=outputs.heartbeat)
                finally:
                    with script.lock:
                        script.in_flight -= 1

            def close(self) -> None:
                script.closed += 1

        return Scripted(settings)


def _link(script: Script, **plc) -> tuple[PlcLink, Metrics]:
    cfg = station_config(1, "triggered", plc=plc)
    m = Metrics()
    return PlcLink(cfg.plc, m, cfg.timing.period_ms / 1000, factory=script.factory).start(), m


def _post_every(link: PlcLink, period: float, seconds: float) -> int:
    """Post a block every period for `seconds`, as the write loop does; returns the count."""
    n, t = 0, time.monotonic()
    end = t + seconds
    while t < end:
        link.post(n, Outputs(heartbeat=n & 0xFFFF), token=n)
        n += 1
        t += period
        time.sleep(max(0.0, t - time.monotonic()))
    return n


def test_replies_slower_than_the_period_are_used_and_the_session_kept():
    script = Script(reply_s=0.025)  # 2.5 periods
    link, m = _link(script)
    try:
        n = _post_every(link, 0.01, 1.5)
        wait_for(lambda: link.written is not None and link.written.block_id >= n - 4, 2, "the newest blocks sent")
    finally:
        link.close()
    assert len(script.connects) == 1, "a slow reply is no reason to reconnect"
    assert read_metric(m, "plcbridge_plc_errors", kind="exchange") == 0
    assert script.max_in_flight == 1
    assert 30 <= link.exchanges <= n, link.exchanges
    assert read_metric(m, "plcbridge_plc_late_exchanges") == link.exchanges  # each reply came after more than a period
    # The newest block each time: blocks never go backwards and the skipped ones are counted.
    assert script.sent == sorted(script.sent)
    assert read_metric(m, "plcbridge_plc_blocks_superseded") >= n - len(script.sent) - 2
    assert link.reply is not None and link.reply.inputs.trigger_seq == link.reply.block_id


def test_no_answer_within_the_link_timeout_drops_the_session():
    script = Script(reply_s=10.0)
    link, m = _link(script, link_timeout_ms=100, max_input_age_ms=50, reconnect_min_ms=50, reconnect_max_ms=100)
    try:
        _post_every(link, 0.01, 0.5)
        wait_for(lambda: read_metric(m, "plcbridge_plc_errors", kind="exchange") >= 1, 2, "the silent session dropped")
        assert "no answer within plc.link_timeout_ms = 100" in (link.last_error or ""), link.last_error
    finally:
        link.close()
    assert len(script.connects) >= 2 and script.closed >= 1


def test_backoff_does_not_reset_on_connect_when_every_exchange_fails():
    script = Script(fail=PlcError("connection reset by peer"))
    link, m = _link(script, reconnect_min_ms=20, reconnect_max_ms=320)
    try:
        _post_every(link, 0.01, 2.5)
    finally:
        link.close()
    gaps = [b - a for a, b in zip(script.connects, script.connects[1:])]
    # 20, 40, 80, 160, 320, 320 ms (+-20 %): about 8 connects in 2.5 s, not one per tick.
    assert 4 <= len(script.connects) <= 12, len(script.connects)
    assert gaps[-1] >= 0.8 * 0.320 and max(gaps[:2]) < 0.1, [round(g, 3) for g in gaps]


def test_a_busy_answer_keeps_the_session_and_never_spins():
    script = Script(fail=PlcError("exception 06 DEVICE_BUSY", keep_session=True))
    link, m = _link(script)
    try:
        n = _post_every(link, 0.01, 0.5)
    finally:
        link.close()
    assert len(script.connects) == 1
    assert 10 <= len(script.sent) <= n, (len(script.sent), n)  # at most one request per posted block
    assert read_metric(m, "plcbridge_plc_errors", kind="refused") == len(script.sent)
    assert link.written is None and link.reply is None


def test_configuration_error_is_retried_at_the_maximum_with_the_setting_named():
    script = Script(fail=PlcConfigError("the PLC answered the write of the output block 0..9 with exception 02",
                                        setting="plc.modbus.outputs_base", written=False))
    link, m = _link(script, reconnect_min_ms=10, reconnect_max_ms=400)
    try:
        _post_every(link, 0.01, 1.5)
    finally:
        link.close()
    # Connect, refused, then only every ~400 ms: never at tick rate, never growing from 10 ms.
    assert 2 <= len(script.connects) <= 5, len(script.connects)
    gaps = [b - a for a, b in zip(script.connects, script.connects[1:])]
    assert all(g >= 0.8 * 0.4 - 0.02 for g in gaps), gaps
    assert read_metric(m, "plcbridge_plc_errors", kind="config") == len(script.connects)
    assert "exception 02" in (link.last_error or "")


def test_block_counts_as_written_when_only_the_read_after_it_failed():
    script = Script(fail=PlcError("read timed out", written=True))
    link, _ = _link(script, reconnect_min_ms=1000, reconnect_max_ms=1000)
    try:
        link.post(7, Outputs(heartbeat=7), token="result-7")
        wait_for(lambda: link.written is not None, 2, "the write reported")
        assert (link.written.block_id, link.written.token) == (7, "result-7")
        assert link.reply is None  # nothing was read
    finally:
        link.close()


def test_final_write_reconnects_within_its_budget():
    script = Script(connect_error=PlcError("connection refused"))
    link, _ = _link(script, reconnect_min_ms=5000, reconnect_max_ms=5000)
    try:
        wait_for(lambda: len(script.connects) >= 1, 2, "a first refused connect")
        threading.Timer(0.2, lambda: setattr(script, "connect_error", None)).start()
        t0 = time.monotonic()
        ok = link.final_write(99, Outputs(heartbeat=99), budget_s=1.0)
        took = time.monotonic() - t0
    finally:
        link.close()
    # The backoff said 5 s; the final block does not wait for it, only for the PLC.
    assert ok and took < 1.0, took
    assert script.sent[-1] == 99


def test_final_block_whose_exchange_failed_goes_out_again_after_the_reconnect():
    script = Script(fail=PlcError("connection reset by peer"))
    link, m = _link(script, reconnect_min_ms=5000, reconnect_max_ms=5000)
    try:
        wait_for(lambda: len(script.connects) >= 1, 2, "connected")
        threading.Timer(0.15, lambda: setattr(script, "fail", None)).start()
        ok = link.final_write(42, Outputs(heartbeat=42), budget_s=1.0)
    finally:
        link.close()
    assert ok and len(script.connects) >= 2, script.connects
    assert script.sent.count(42) >= 2 and link.written.block_id == 42


def test_final_write_gives_up_after_its_budget():
    script = Script(connect_error=PlcError("connection refused"))
    link, _ = _link(script)
    try:
        t0 = time.monotonic()
        assert link.final_write(1, Outputs(heartbeat=1), budget_s=0.3) is False
        assert 0.3 <= time.monotonic() - t0 < 1.0
    finally:
        t1 = time.monotonic()
        link.close()
        assert time.monotonic() - t1 < 1.5


def test_final_write_against_a_plc_that_refuses_the_configuration_connects_once_and_says_so_at_once():
    script = Script(connect_error=PlcConfigError("exception 02 for the output block", setting="plc.modbus.outputs_base"))
    link, _ = _link(script, reconnect_min_ms=100, reconnect_max_ms=400)
    try:
        wait_for(lambda: len(script.connects) >= 1, 2, "a first refused configuration")
        before = len(script.connects)
        t0 = time.monotonic()
        ok = link.final_write(5, Outputs(heartbeat=5), budget_s=1.0)
        took = time.monotonic() - t0
        time.sleep(0.3)  # nothing more after it gave up
    finally:
        link.close()
    assert not ok and took < 0.5, took  # no point waiting out the budget
    assert len(script.connects) - before == 1 == link.final_connects, script.connects


def test_final_write_against_a_closed_port_tries_a_few_times_not_a_burst():
    from plcbridge.adapters.plc.base import PlcUnreachable
    from plcbridge.link import FINAL_CONNECTS

    script = Script(connect_error=PlcUnreachable("connection refused"))
    link, _ = _link(script, reconnect_min_ms=50, reconnect_max_ms=400)
    try:
        wait_for(lambda: len(script.connects) >= 2, 2, "refused connects")
        before = len(script.connects)
        ok = link.final_write(5, Outputs(heartbeat=5), budget_s=1.0)
        time.sleep(0.2)
    finally:
        link.close()
    made = len(script.connects) - before
    assert not ok and made == FINAL_CONNECTS == link.final_connects, made  # not one every 50 ms
    gaps = [b - a for a, b in zip(script.connects[before:], script.connects[before + 1:])]
    assert all(g >= 0.2 for g in gaps), gaps


@pytest.mark.parametrize("protocol", ["modbus", "opcua", "enip"])
def test_a_refused_connect_is_retried_at_the_minimum_without_growing_the_backoff(protocol):
    """Nothing listens: each refused connect is tried again after reconnect_min_ms, so a PLC
    that comes back is found within about that; the doubling is for sessions that fail."""
    cfg = station_config(closed_tcp_port(), "triggered", plc={"protocol": protocol, "host": "127.0.0.1",
                                                          "reconnect_min_ms": 100, "reconnect_max_ms": 5000})
    m = Metrics()
    link = PlcLink(cfg.plc, m, cfg.timing.period_ms / 1000).start()
    try:
        time.sleep(1.5)
        attempts = read_metric(m, "plcbridge_plc_errors", kind="connect")
    finally:
        link.close()
    # Doubling would give 0, 0.1, 0.3, 0.7, 1.5 s: 4 or 5 attempts. At the minimum: about 12.
    assert attempts >= 8, attempts
    assert "refused" in (link.last_error or "").lower(), link.last_error


def test_between_ticks_the_inputs_are_read_again_with_the_block_last_sent():
    script = Script()
    link, m = _link(script, poll_ms=5)
    try:
        link.post(0, Outputs(heartbeat=7), token="t0")
        time.sleep(0.1)  # no new block for 100 ms: about one read every 5 ms
        polls = read_metric(m, "plcbridge_plc_polls_total")
    finally:
        link.close()
    assert 8 <= polls <= 25, polls
    assert set(script.sent) == {7}  # the same block each time (the default read_inputs), never anything not posted
    assert link.reply is not None and link.reply.seq >= polls  # every read handed over as a reply


def test_no_reads_between_ticks_with_poll_ms_0_or_after_a_busy_answer():
    for plc, fail in (({"poll_ms": 0}, None), ({"poll_ms": 5}, PlcError("exception 06 DEVICE_BUSY", keep_session=True))):
        script = Script(fail=fail)
        link, m = _link(script, **plc)
        try:
            link.post(0, Outputs(heartbeat=1))
            time.sleep(0.1)
        finally:
            link.close()
        assert len(script.sent) == 1 and read_metric(m, "plcbridge_plc_polls_total") == 0, (plc, script.sent)
