"""The write loop: one fixed-period thread that composes the PLC's output block on time.

Ticks run on absolute deadlines (start + k * period). A tick that starts late is measured
(lateness = actual - scheduled start, into a histogram and a sample ring); a tick that
falls a whole period or more behind is skipped and counted, and the schedule moves
forward: late ticks are never bunched together to catch up.

Nothing in a tick waits on the camera, the model, the log or the network. A tick reads
the mailboxes and what the PLC link last reported (the newest inputs and the newest block
known to have landed), composes one block and posts it to the link, which sends the newest
block whenever its one exchange in flight is done (plcbridge/link.py). The tick knows how
old its newest inputs are: past `plc.max_input_age_ms` the bridge cannot see triggers, so
the block it still writes clears READY, TRIGGER_READY and PLC_INPUTS_OK and says
PLC_INPUTS_STALE.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import numpy as np

from plcbridge.config import Config
from plcbridge.contract import U16_MAX, FaultCode, Outputs, StatusBit, score_to_register
from plcbridge.inspection import FreeRunInspection, Health, TriggeredInspection, status_fault
from plcbridge.link import PlcLink
from plcbridge.logs import get_logger, log_event
from plcbridge.metrics import Metrics

log = get_logger("writeloop")


class Samples:
    """A fixed ring of float samples with percentiles: no allocation on the write loop."""

    def __init__(self, size: int = 200_000) -> None:
        self._buf = np.zeros(size)
        self._n = 0

    def add(self, v: float) -> None:
        self._buf[self._n % len(self._buf)] = v
        self._n += 1

    def values(self) -> np.ndarray:
        return self._buf[: min(self._n, len(self._buf))].copy()

    def summary_ms(self) -> dict[str, float | int | None]:
        v = self.values() * 1000
        if not len(v):
            return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
        p50, p95, p99 = np.percentile(v, [50, 95, 99])
        return {"n": int(self._n), "p50": round(float(p50), 3), "p95": round(float(p95), 3),
                "p99": round(float(p99), 3), "max": round(float(v.max()), 3)}


# How long the final fail-safe block may take to reach the PLC, reconnecting if need be.
# systemd's TimeoutStopSec (10 s) leaves room for it; SIGTERM still exits within about it.
FINAL_WRITE_BUDGET_S = 1.0


class WriteLoop:
    def __init__(self, config: Config, link: PlcLink, inspection: FreeRunInspection | TriggeredInspection,
                 health: Callable[[float], Health], drain_decisions: Callable[[], None], metrics: Metrics,
                 watchdog: Callable[[], object] | None = None, watchdog_interval_s: float | None = None) -> None:
        self.config = config
        self.period = config.timing.period_ms / 1000
        self.max_input_age = config.plc.max_input_age_ms / 1000
        self.link = link
        self.inspection = inspection
        self._health = health
        self._drain = drain_decisions
        self.metrics = metrics
        self.lateness = Samples()
        self.heartbeat = 0
        self.ticks = 0
        self.overruns = 0
        self.last_tick: float | None = None  # monotonic time of the last tick; the watchdog's truth
        self.status = 0
        self.fault = FaultCode.NONE
        self.input_age: float | None = None  # of the newest inputs at the last tick; None: none yet
        self.inputs_ok = False
        self._started = 0.0
        self._reply_seq = -1  # the last link reply handed to the inspection
        self._session = -1  # the link session of that reply
        self._t_prev_sent: float | None = None  # its request time
        self._written_id = -1  # the last delivered block handed to the inspection
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="write-loop", daemon=True)
        self._last_fields = None
        self.final_write_ok: bool | None = None
        # systemd's WATCHDOG=1 is sent from this thread, so it stops when the loop stops.
        self._watchdog = watchdog if watchdog_interval_s else None
        self._watchdog_interval = watchdog_interval_s or 0.0
        self._next_watchdog = 0.0

    def start(self) -> "WriteLoop":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask for the final fail-safe write and wait for the loop to end."""
        self._stop.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        log_event(log, "write_loop_started", logging.INFO, period_ms=self.config.timing.period_ms,
                  max_input_age_ms=self.config.plc.max_input_age_ms, link_timeout_ms=self.config.plc.link_timeout_ms)
        next_t = self._started = time.monotonic()
        while not self._stop.is_set():
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = time.monotonic()
            late = now - next_t
            self.lateness.add(late)
            self.metrics.write_lateness_seconds.observe(late)
            try:
                self._tick(now)
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad tick
                self.metrics.tick_errors.inc()
                log_event(log, "tick_failed", logging.ERROR, rate_key="tick", exc_info=True,
                          reason="no block composed this tick; the PLC's heartbeat watchdog sees the gap")
            next_t += self.period
            behind = time.monotonic() - next_t
            if behind > 0:  # skip ahead: the missed slots are counted, never run in a burst
                missed = int(behind // self.period) + 1
                next_t += missed * self.period
                self.overruns += missed
                self.metrics.write_overruns.inc(missed)
                log_event(log, "write_overrun", logging.WARNING, missed_ticks=missed,
                          behind_ms=round(behind * 1000, 2), rate_key="overrun")
        self._final_write()

    def _take_link_news(self) -> None:
        """Hand the inspection what the link reported since the last tick: the newest block
        that reached the PLC, then the newest inputs (in that order: an ack in a reply
        follows the write that delivered the result)."""
        w = self.link.written
        if w is not None and w.block_id != self._written_id:
            self._written_id = w.block_id
            self.inspection.written(w.token, w.t)
        r = self.link.reply
        if r is not None and r.seq != self._reply_seq:
            self._reply_seq = r.seq
            new_session = r.session != self._session
            self._session = r.session
            # A trigger in this reply was raised after the request of the reply before it.
            self.inspection.on_inputs(r.inputs, r.t_answered, new_session, self._t_prev_sent)
            self._t_prev_sent = r.t_sent

    def _inputs_fresh(self, now: float) -> bool:
        r = self.link.reply
        self.input_age = None if r is None else now - r.t_sent
        age = self.input_age if self.input_age is not None else now - self._started
        self.metrics.plc_input_age_seconds.set(age)
        # Inputs of a session that has ended say nothing about the PLC now, however young.
        fresh = r is not None and r.session == self.link.sessions and age <= self.max_input_age
        if fresh != self.inputs_ok:
            self.inputs_ok = fresh
            self.metrics.plc_inputs_ok.set(1 if fresh else 0)
            if fresh:
                log_event(log, "plc_inputs_fresh", logging.INFO, input_age_ms=round(age * 1000, 1), rate_key="inputs",
                          rate_last=True)
            else:  # only after having been fresh: before the first reply the link says why
                self.metrics.plc_inputs_stale.inc()
                log_event(log, "plc_inputs_stale", logging.WARNING, input_age_ms=round(age * 1000, 1),
                          limit_ms=self.config.plc.max_input_age_ms, fault=FaultCode.PLC_INPUTS_STALE.name,
                          link=self.link.last_error or ("connected, replies late" if self.link.connected else "not connected"),
                          reason="no PLC inputs within plc.max_input_age_ms: triggers cannot be seen; "
                                 "TRIGGER_READY and READY cleared", rate_key="inputs", rate_last=True)
        return fresh

    def _tick(self, now: float) -> None:
        self._drain()
        self._take_link_news()
        h = self._health(now)
        health = Health(h.camera_ok, h.model_ok, h.model_version, self._inputs_fresh(now))
        fields = self.inspection.tick(now, health)
        status = 0
        if health.model_ok and health.camera_ok and health.plc_ok:
            status |= StatusBit.READY
        if self.inspection.trigger_ready(health):
            status |= StatusBit.TRIGGER_READY
        if health.camera_ok:
            status |= StatusBit.CAMERA_OK
        if health.model_ok:
            status |= StatusBit.MODEL_OK
        if health.plc_ok:
            status |= StatusBit.PLC_INPUTS_OK
        if fields.failsafe:
            status |= StatusBit.FAILSAFE_ACTIVE
        if fields.valid:
            status |= StatusBit.RESULT_VALID
        # Blind is said in every block; otherwise a fail-safe's own fault, or the health fault.
        fault = FaultCode.PLC_INPUTS_STALE if not health.plc_ok else FaultCode(fields.fault_code)
        if fault is FaultCode.NONE and not fields.failsafe:
            fault = status_fault(health)
        if status != self.status or fault != self.fault:
            self._log_status(self.status, status, fault)
        self.status = status
        self.fault = fault
        self._last_fields = fields
        self.metrics.ready.set(1 if status & StatusBit.READY else 0)
        self.metrics.camera_ok.set(1 if health.camera_ok else 0)
        outputs = Outputs(self.heartbeat, status, fields.result_seq, fields.result_code, fields.score,
                          fault, fields.latency_ms, fields.model_version, fields.part_id)
        self.link.post(self.ticks, outputs, fields.token)
        self.heartbeat = (self.heartbeat + 1) & U16_MAX
        self.ticks += 1
        self.last_tick = now
        if self._watchdog is not None and now >= self._next_watchdog:
            self._watchdog()
            self._next_watchdog = now + self._watchdog_interval

    def _log_status(self, old: int, new: int, fault: int) -> None:
        changed = old ^ new
        raised = [b.name for b in StatusBit if changed & b and new & b]
        cleared = [b.name for b in StatusBit if changed & b and not new & b]
        level = logging.WARNING if any(n in ("CAMERA_OK", "MODEL_OK", "READY", "PLC_INPUTS_OK") for n in cleared) else logging.INFO
        # Rate-limited per kind of change (which bits moved; a flapping CAMERA_OK raises and
        # clears the same bits), never lost: `status` is the whole word after the change, and
        # the latest suppressed line is written when the window ends, with `suppressed`.
        kind = ",".join(sorted(raised + cleared)) or "fault"
        log_event(log, "status_changed", level, raised=raised, cleared=cleared, fault=FaultCode(fault).name,
                  status=[b.name for b in StatusBit if new & b], rate_key=kind, rate_last=True)

    def _final_write(self) -> None:
        """The last block: READY cleared, fail-safe result, SHUTTING_DOWN; retried through a
        reconnect within FINAL_WRITE_BUDGET_S."""
        fs = self.config.failsafe
        last = self._last_fields
        status = StatusBit.FAILSAFE_ACTIVE
        pending = self.inspection.shutdown(time.monotonic())
        if pending is not None:  # a trigger waits: its own answer, SHUTTING_DOWN
            status |= StatusBit.RESULT_VALID
            outputs = Outputs(self.heartbeat, int(status), pending.result_seq, pending.result_code, pending.score,
                              FaultCode.SHUTTING_DOWN, 0, pending.model_version, pending.part_id)
        else:
            outputs = Outputs(self.heartbeat, int(status), getattr(last, "result_seq", 0), fs.code,
                              score_to_register(fs.score), FaultCode.SHUTTING_DOWN, 0, getattr(last, "model_version", 0), 0)
        ok = self.link.final_write(self.ticks, outputs, FINAL_WRITE_BUDGET_S)
        self.final_write_ok = ok
        self.status = int(status)
        log_event(log, "final_write", logging.INFO if ok else logging.ERROR, written=ok, fault=FaultCode.SHUTTING_DOWN.name,
                  heartbeat=self.heartbeat, reason="shutdown" if ok else f"PLC not reachable: {self.link.last_error}")
