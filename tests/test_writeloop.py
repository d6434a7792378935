"""The write loop's schedule: absolute deadlines, a late tick counted and skipped, never bunched."""

import time

from conftest import station_config

from plcbridge.contract import Inputs, StatusBit
from plcbridge.inspection import Health, TriggeredInspection
from plcbridge.journal import Journal
from plcbridge.metrics import Metrics
from plcbridge.writeloop import WriteLoop


class StallingLink:
    """A PLC link double that answers at once, except once where the exchange takes 35 ms."""

    connected = True
    last_error = None

    def __init__(self, stall_at: int, stall_s: float) -> None:
        self.times: list[float] = []
        self.blocks = []
        self.stall_at, self.stall_s = stall_at, stall_s

    def exchange(self, outputs, deadline_s):
        self.times.append(time.monotonic())
        self.blocks.append(outputs)
        if len(self.times) == self.stall_at:
            time.sleep(self.stall_s)
        return Inputs()


def test_late_tick_is_counted_and_the_schedule_skips_ahead():
    cfg = station_config(1, "triggered")
    m = Metrics()
    ins = TriggeredInspection(cfg.timing, cfg.failsafe, lambda r: None, lambda r: None, Journal(m, "t"), m)
    link = StallingLink(stall_at=20, stall_s=0.035)
    loop = WriteLoop(cfg, link, ins, lambda now: Health(True, True, 1), lambda: None, m).start()
    time.sleep(0.6)
    loop.stop()
    assert loop.overruns >= 3, "a 35 ms exchange at a 10 ms period skips at least 3 ticks"
    assert m.write_overruns._value.get() == loop.overruns
    gaps = [b - a for a, b in zip(link.times[19:23], link.times[20:24])]
    # After the stall the next tick waits for its own slot: no burst of catch-up ticks.
    assert all(g > 0.004 for g in gaps[1:]), [round(g * 1000, 2) for g in gaps]
    # Heartbeat +1 per written tick, and the last block is the shutdown block.
    beats = [b.heartbeat for b in link.blocks]
    assert beats[:-1] == list(range(len(beats) - 1))
    assert not link.blocks[-1].status & StatusBit.READY
