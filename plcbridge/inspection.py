"""The two inspection modes: what the result fields say on each write tick.

These classes are the rules of the handshake in `docs/plc-interface.md`, and nothing else:
no threads, no I/O, the clock passed in. The write loop calls, on its own thread:

  tick(now, health) -> ResultFields   to build the output block; `token` says what it carries
  written(token, t)                   when the link reports that a block carrying `token`
                                      reached the PLC at time t (the PLC has the result)
  on_inputs(inputs, t)                with each new reply the link read, t its arrival

Fail-safe values come from the config (`FailsafeSettings`), never from code paths here.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from plcbridge.config import FailsafeSettings, TimingSettings
from plcbridge.contract import U16_MAX, FaultCode, Inputs, ResultCode, score_to_register
from plcbridge.decision import Decision, Request, failsafe
from plcbridge.journal import Journal
from plcbridge.logs import get_logger, log_event
from plcbridge.metrics import Metrics

log = get_logger("inspection")

# A trigger_seq jump larger than this is a PLC restart or a reset counter, not lost triggers.
MAX_SKIPPED_TRIGGERS = 16


@dataclass(frozen=True)
class Health:
    camera_ok: bool
    model_ok: bool
    model_version: int
    plc_ok: bool = True  # the PLC inputs are younger than plc.max_input_age_ms


@dataclass(frozen=True)
class ResultFields:
    result_seq: int = 0
    result_code: int = ResultCode.NONE
    score: int = 0
    fault_code: int = FaultCode.NONE
    latency_ms: int = 0
    model_version: int = 0
    part_id: int = 0
    valid: bool = False
    failsafe: bool = False
    # What this block presents (a trigger's slot, a free-run decision), handed back to
    # written() once the link reports the block delivered. Not part of the block itself.
    token: Any = field(default=None, compare=False)


def health_fault(h: Health) -> FaultCode:
    """What stops a result from being trustworthy now (why a fail-safe is written)."""
    if not h.model_ok:
        return FaultCode.MODEL_NOT_READY
    if not h.camera_ok:
        return FaultCode.CAMERA_FAULT
    return FaultCode.NONE


def status_fault(h: Health) -> FaultCode:
    """The fault a block reports when it carries no fail-safe of its own."""
    if not h.plc_ok:
        return FaultCode.PLC_INPUTS_STALE
    return health_fault(h)


def fields_for(d: Decision, seq: int, part_id: int, fs: FailsafeSettings) -> ResultFields:
    """Output fields for a decision; a fail-safe decision gets the configured fail-safe values."""
    latency = 0
    if d.t_capture is not None:
        latency = min(U16_MAX, max(0, round((d.t_decided - d.t_capture) * 1000)))
    if d.is_failsafe:
        return ResultFields(seq & U16_MAX, fs.code, score_to_register(fs.score), d.fault, latency, d.model_version, part_id, True, True)
    return ResultFields(seq & U16_MAX, d.result, score_to_register(d.score), FaultCode.NONE, latency, d.model_version, part_id, True, False)


class FreeRunInspection:
    """Each tick writes the newest decision, or the fail-safe output once it is too old."""

    def __init__(self, timing: TimingSettings, fs: FailsafeSettings, decisions: Callable[[], Decision | None],
                 journal: Journal, metrics: Metrics) -> None:
        self.max_age = timing.max_result_age_ms / 1000
        self.fs = fs
        self._latest = decisions
        self.journal = journal
        self.metrics = metrics
        self._written: Decision | None = None  # the last decision the PLC has received
        self._episode: FaultCode | None = None  # the fault of the fail-safe episode in progress

    def trigger_ready(self, health: Health) -> bool:
        return False  # free-run takes no triggers

    def on_inputs(self, inputs: Inputs, now: float) -> None:
        pass

    def tick(self, now: float, health: Health) -> ResultFields:
        d = self._latest()
        if d is None or d.t_capture is None or now - d.t_capture > self.max_age:
            fault = health_fault(health)
            if fault is FaultCode.NONE:
                fault = FaultCode.STALE_RESULT
            if d is None or d.t_capture is None:
                reason = "no decision yet"
            else:
                reason = f"newest decision is {(now - d.t_capture) * 1000:.0f} ms old (limit {self.max_age * 1000:.0f} ms)"
            if fault != self._episode:  # counted once per episode, not once per tick
                self.journal.failsafe_episode(fault, reason)
                self._episode = fault
            d = failsafe(fault, now, reason, model_version=health.model_version, frame_seq=None if d is None else d.frame_seq)
            return fields_for(d, d.frame_seq or 0, 0, self.fs)
        if self._episode is not None:
            log_event(log, "failsafe_cleared", logging.INFO, previous=self._episode.name)
            self._episode = None
        # A fail-safe decision from the worker (BAD_FRAME, INFERENCE_*) was journaled there.
        return replace(fields_for(d, d.frame_seq or 0, 0, self.fs), token=d)

    def written(self, token: Any, t: float) -> None:
        d = token
        if isinstance(d, Decision) and d is not self._written:
            self._written = d
            if d.t_capture is not None:
                self.metrics.capture_to_write_seconds.observe(t - d.t_capture)


@dataclass(eq=False)
class _Slot:
    request: Request
    decision: Decision | None = None
    t_first_written: float | None = None


class TriggeredInspection:
    """Every trigger gets exactly one result, in trigger order, none skipped.

    A change of trigger_seq is a trigger. A jump of k > 1 means the PLC raised k-1 triggers
    the bridge never saw separately: each gets FAILSAFE + TRIGGER_OVERRUN. Up to
    1 + trigger_queue triggers may wait for a decision; one more gets TRIGGER_OVERRUN. A
    result stays on the outputs until the PLC acks it (result_ack_seq) or result_hold_ms
    has passed since it was first written, then the next settled result follows.
    """

    def __init__(self, timing: TimingSettings, fs: FailsafeSettings, submit: Callable[[Request], None],
                 worker_phase: Callable[[Request], str | None], journal: Journal, metrics: Metrics) -> None:
        self.timing = timing
        self.fs = fs
        self._submit = submit
        self._phase = worker_phase
        self.journal = journal
        self.metrics = metrics
        self.timeout = timing.result_timeout_ms / 1000
        self.hold = timing.result_hold_ms / 1000
        self.capacity = 1 + timing.trigger_queue
        self.last_seq: int | None = None
        self.ack_seq: int | None = None
        self.slots: collections.deque[_Slot] = collections.deque()
        self.presenting: _Slot | None = None
        self._health = Health(False, False, 0)

    def _undecided(self) -> int:
        return sum(1 for s in self.slots if s.decision is None)

    def trigger_ready(self, health: Health) -> bool:
        return status_fault(health) is FaultCode.NONE and self._undecided() < self.capacity

    def on_inputs(self, inputs: Inputs, now: float) -> None:
        self.ack_seq = inputs.result_ack_seq
        seq = inputs.trigger_seq
        if self.last_seq is None:  # first read: adopt the PLC's counter, it is not a trigger
            self.last_seq = seq
            log_event(log, "trigger_seq_adopted", logging.INFO, trigger_seq=seq)
            return
        delta = (seq - self.last_seq) & U16_MAX
        if delta == 0:
            return
        if delta > MAX_SKIPPED_TRIGGERS:
            log_event(log, "trigger_seq_resync", logging.WARNING, previous=self.last_seq, trigger_seq=seq,
                      reason=f"trigger_seq jumped by {delta}: PLC restart or counter reset; taken as one trigger")
            skipped: list[int] = []
        else:
            skipped = [(self.last_seq + i) & U16_MAX for i in range(1, delta)]
        self.last_seq = seq
        for s in skipped:
            self._settle_new(Request(s, 0, now), FaultCode.TRIGGER_OVERRUN, now,
                             f"trigger_seq went from {(seq - delta) & U16_MAX} to {seq}: this value was never seen on its own")
        req = Request(seq, inputs.part_id, now)
        # Unhealthy on the last tick, including blind (inputs stale): this trigger may have
        # been raised long ago, and the frame it asked about is gone.
        fault = status_fault(self._health)
        if fault is FaultCode.PLC_INPUTS_STALE:
            self._settle_new(req, fault, now, "read after the bridge had been blind to its inputs for longer than "
                                              "plc.max_input_age_ms: the part may have moved on")
        elif fault is not FaultCode.NONE:
            self._settle_new(req, fault, now, "not healthy when the trigger arrived")
        elif self._undecided() >= self.capacity:
            self._settle_new(req, FaultCode.TRIGGER_OVERRUN, now, f"trigger queue full ({self.capacity} waiting)")
            self.metrics.queue_drops.labels("triggers").inc()
        else:
            self.slots.append(_Slot(req))
            self._submit(req)

    def _settle_new(self, req: Request, fault: FaultCode, now: float, reason: str) -> None:
        slot = _Slot(req)
        self.slots.append(slot)
        self._settle(slot, failsafe(fault, now, reason, model_version=self._health.model_version, request=req))

    def _settle(self, slot: _Slot, d: Decision) -> None:
        slot.decision = d
        self.journal.decision(d)

    def on_decision(self, d: Decision) -> None:
        for slot in self.slots:
            if slot.request is d.request:
                if slot.decision is None:
                    self._settle(slot, d)
                    return
                break
        # Too late: the trigger already got its fail-safe result. Journal, never write.
        self.metrics.queue_drops.labels("late_decisions").inc()
        req = d.request
        log_event(log, "late_decision", logging.WARNING, trigger_seq=req.trigger_seq if req else None,
                  part_id=req.part_id if req else None, result=d.result.name, score=round(d.score, 4),
                  reason="the result timeout had already written a fail-safe for this trigger")

    def tick(self, now: float, health: Health) -> ResultFields:
        self._health = health
        for slot in self.slots:
            if slot.decision is None and now - slot.request.t_seen > self.timeout:
                phase = self._phase(slot.request)
                fault = health_fault(health)
                if fault is FaultCode.NONE:
                    fault = FaultCode.CAMERA_FAULT if phase == "waiting_frame" else FaultCode.INFERENCE_TIMEOUT
                self._settle(slot, failsafe(fault, now, f"no decision within result_timeout_ms={self.timing.result_timeout_ms} (stage: {phase or 'queued'})",
                                            model_version=health.model_version, request=slot.request))
        p = self.presenting
        done = p is None or (p.t_first_written is not None and (
            self.ack_seq == p.request.trigger_seq or now - p.t_first_written >= self.hold))
        if done and self.slots and self.slots[0].decision is not None:
            self.presenting = p = self.slots.popleft()
        if p is None or p.decision is None:
            return ResultFields(fault_code=health_fault(health), model_version=health.model_version)
        return replace(fields_for(p.decision, p.request.trigger_seq, p.request.part_id, self.fs), token=p)

    def written(self, token: Any, t: float) -> None:
        p = token
        if isinstance(p, _Slot) and p.t_first_written is None:
            p.t_first_written = t
            self.metrics.trigger_to_result_seconds.observe(t - p.request.t_seen)
            if p.decision is not None and p.decision.t_capture is not None:
                self.metrics.capture_to_write_seconds.observe(t - p.decision.t_capture)
