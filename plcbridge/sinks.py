"""The one seam between the control path and the side work: decisions fan out from the
journal to sinks (the image archive, the station page, MQTT), each a package of its own.

    journal.decision() --record--> [bounded queue] --> sink thread --> sink.write(record)
                                   [bounded queue] --> sink thread --> ...

The journal is called on the write loop's thread (triggered answers) or the inference
thread (free-run decisions): handing a record over is an append to each sink's bounded queue
and nothing else. Each sink has its own thread (at SIDE_WORK_NICENESS, below the producers);
a record that finds its queue full is dropped and counted
(`plcbridge_sink_dropped_total{sink, reason="queue_full"}`), never waited for. A sink that
raises is counted (`reason="error"`) and logged once per log window; its thread goes on
with the next record. So a full disk, a dead broker or a stalled browser changes nothing the
PLC sees: at worst that sink misses records, and says how many.

The producer never wakes a sink's thread: the thread looks at its queue every SINK_POLL_S
and takes all that is there. Waking a sleeping thread (queue.Queue's notify) is a futex
wake-up made with the GIL held, and on the 2-core line PC's VM it took 50 us at p50 and
120 us at p99 (a cross-core interrupt); `py-spy --gil` found the inference thread spending
a fifth to a quarter of its GIL time there with two or three sinks, each sink adding one
wake-up per decision (docs/benchmarks.md, sittings 23-24). That
is the GIL the write loop waits for at its deadline. The price is up to SINK_POLL_S more on
the way to the archive, the page and MQTT, and a few idle wake-ups a second per sink.

A sink that never looks at the frame (MQTT: `images = False`) is handed the record without it
(`DecisionRecord.without_image`, one copy per decision shared by all such sinks, made only
for a decision that judged a frame): its queue, however far behind, then pins no frames in
memory (256 records of 5-megapixel frames would be gigabytes).

A sink thread starts on a record no sooner than SINK_HOLD_S after it was offered. The
moments after a decision belong to the control path: the write loop composes and posts the
block that carries it, and the link's exchange delivers it (p99 about 2 ms on a 2-core line
PC). Side work started at once competes with both for the GIL and the cores: with the
archive keeping every frame, decision -> PLC p99 was 3.4 ms against 2.1 ms without it; held
3 ms, 2.1 ms (docs/benchmarks.md, seventeenth sitting). A sink that is behind is not held
again: its older records are past the hold already.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from plcbridge.decision import Decision
from plcbridge.logs import get_logger, log_event
from plcbridge.metrics import Metrics
from plcbridge.threads import SIDE_WORK_NICENESS, lower_this_thread

log = get_logger("sinks")

DEFAULT_QUEUE = 64  # records a sink may lag behind before it drops
SINK_HOLD_S = 0.003  # a record waits this long after its decision before a sink starts on it
SINK_POLL_S = 0.05  # how often a sink's thread looks for records (nothing wakes it)


@dataclass(frozen=True)
class DecisionRecord:
    """One journaled decision as the sinks get it: its id, the journal line's fields (what
    `journalctl` shows, exactly), the decision itself and the frame it judged, if any."""

    decision_id: str
    fields: dict[str, Any]
    decision: Decision
    image: Any = field(default=None, repr=False, compare=False)  # numpy BGR frame, never copied here
    had_image: bool = False  # a frame was judged, and left out of this copy (without_image)

    @property
    def judged_frame(self) -> bool:
        """The decision judged a frame (whether or not this record carries it)."""
        return self.image is not None or self.had_image

    def without_image(self) -> "DecisionRecord":
        """This record without the frame, nor the decision's frame and decoded result (boxes,
        anomaly maps): what a sink that never draws or keeps pictures gets (`images = False`)."""
        d = self.decision
        if self.image is None and d.image is None and d.decoded is None:
            return self
        return DecisionRecord(self.decision_id, self.fields, replace(d, image=None, decoded=None), None,
                              had_image=self.judged_frame)


class Sink(Protocol):
    """What a side-work package plugs in: a name (for metrics and logs) and `write`, called on
    the sink's own thread, one record at a time. `close` is called once at shutdown, after
    the last record."""

    name: str
    # Optional: `images = False` says the sink never looks at the frame (see the module docstring).

    def write(self, record: DecisionRecord) -> None: ...

    def close(self) -> None: ...


class _Feed:
    """One sink's bounded queue and thread."""

    def __init__(self, sink: Sink, metrics: Metrics, size: int, hold_s: float, poll_s: float) -> None:
        self.sink = sink
        self.metrics = metrics
        self.size = size
        self.hold_s = hold_s
        self.poll_s = poll_s
        # (when offered, record), oldest first. Appended by the producers, taken by the sink's
        # thread; a deque's append, popleft and len are atomic, and nothing here blocks. Producers
        # on different threads (the write loop, the inference thread) may pass offer's length
        # check at once: the bound can be passed by one record per such producer; no lock is
        # taken to prevent it.
        self.queue: deque[tuple[float, DecisionRecord]] = deque()
        self._closing = threading.Event()
        self.images = bool(getattr(sink, "images", True))
        self.thread = threading.Thread(target=self._run, name=f"sink-{sink.name}", daemon=True)

    def offer(self, record: DecisionRecord) -> None:
        if len(self.queue) < self.size:
            self.queue.append((time.monotonic(), record))
            return
        self.metrics.sink_dropped.labels(self.sink.name, "queue_full").inc()
        log_event(log, "sink_dropped", logging.WARNING, sink=self.sink.name, decision_id=record.decision_id,
                  reason=f"the {self.sink.name} sink is {self.size} records behind: this one is "
                         "left out (the PLC and the journal are not affected)", rate_key=f"drop-{self.sink.name}")

    def _run(self) -> None:
        lower_this_thread(SIDE_WORK_NICENESS)
        while True:
            closing = self._closing.wait(self.poll_s)
            while self.queue:
                offered, record = self.queue.popleft()
                hold = self.hold_s - (time.monotonic() - offered)
                if hold > 0 and not closing:
                    time.sleep(hold)
                self._write(record)
            if closing:
                return

    def _write(self, record: DecisionRecord) -> None:
        try:
            self.sink.write(record)
        except Exception as e:  # noqa: BLE001 - a sink's failure must never reach the control path
            self.metrics.sink_dropped.labels(self.sink.name, "error").inc()
            log_event(log, "sink_failed", logging.ERROR, sink=self.sink.name, decision_id=record.decision_id,
                      reason=f"{type(e).__name__}: {e}", rate_key=f"fail-{self.sink.name}")

    def close(self, timeout: float) -> None:
        """Write what is queued (within `timeout`), then close the sink. A sink still stuck
        in a write after that is left to it: its thread is a daemon, the process ends anyway."""
        self._closing.set()
        self.thread.join(timeout)
        try:
            self.sink.close()
        except Exception:  # noqa: BLE001 - closing must not raise
            pass


class SinkFanout:
    """The journal's side of the seam: offers each record to every sink, never blocking."""

    def __init__(self, metrics: Metrics, hold_s: float = SINK_HOLD_S, poll_s: float = SINK_POLL_S) -> None:
        self.metrics = metrics
        self.hold_s = hold_s
        self.poll_s = poll_s
        self._feeds: list[_Feed] = []

    def add(self, sink: Sink, queue_size: int = DEFAULT_QUEUE) -> None:
        feed = _Feed(sink, self.metrics, queue_size, self.hold_s, self.poll_s)
        self._feeds.append(feed)
        feed.thread.start()

    @property
    def names(self) -> list[str]:
        return [f.sink.name for f in self._feeds]

    def offer(self, record: DecisionRecord) -> None:
        light: DecisionRecord | None = None  # made once, only when a sink wants no frames
        for feed in self._feeds:
            if feed.images:
                feed.offer(record)
            else:
                if light is None:
                    light = record.without_image()
                feed.offer(light)

    def close(self, timeout: float = 2.0) -> None:
        """Let each sink finish what it has queued (within `timeout` each), then close it."""
        for feed in self._feeds:
            feed.close(timeout)
        self._feeds.clear()
