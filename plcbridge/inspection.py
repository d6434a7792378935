"""The two inspection modes: what the output block says on each write tick.

These classes are the rules of the handshake in `docs/plc-interface.md`, and nothing else:
no threads, no I/O, the clock passed in. The write loop calls, on its own thread:

  tick(now, health) -> (block, token)  the output block: every field but the heartbeat, and
                                       of the status word only the result's own bits
                                       (RESULT_VALID, FAILSAFE_ACTIVE: the write loop owns
                                       the heartbeat and the health bits); `token` is what
                                       the block presents, handed back to written()
  written(token, t)                    when the link reports that a block carrying `token`
                                       reached the PLC at time t (the PLC has the result)
  on_inputs(inputs, t, new_session)    with each new reply the link read, t its arrival;
                                       new_session on the first reply of a link session,
                                       `session` its number (in each request it makes)
  shutdown(now) -> block               the final block (READY cleared, SHUTTING_DOWN),
                                       answering the trigger that waits for one, if any,
                                       with its journaled answer (or the fail-safe, if it
                                       was undecided); the write loop stamps its heartbeat

Fail-safe values come from the config (`FailsafeSettings`), never from code paths here.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from plcbridge.config import FailsafeSettings, TimingSettings
from plcbridge.contract import (
    RECIPE_DEFAULT,
    RECIPE_NONE,
    U16_MAX,
    FaultCode,
    Inputs,
    Outputs,
    StatusBit,
    area_register,
    defect_class_register,
    defect_count_register,
    next_seq,
    score_to_register,
    seq_delta,
)
from plcbridge.decision import Decision, Request, failsafe
from plcbridge.journal import Journal
from plcbridge.logs import get_logger, log_event
from plcbridge.metrics import Metrics

log = get_logger("inspection")

# A trigger_seq jump larger than this is a PLC restart or a reset counter, not lost triggers.
MAX_SKIPPED_TRIGGERS = 16
# A flood run closes (is journaled, takes no newer values) after this long without a new
# value, or this long after it opened: the journal lags a flood by at most RUN_MAX_S.
RUN_QUIET_S = 0.1
RUN_MAX_S = 1.0


@dataclass(frozen=True)
class Health:
    camera_ok: bool
    model_ok: bool
    model_version: int
    plc_ok: bool = True  # the PLC inputs are younger than plc.max_input_age_ms
    # Recipes: NONE while the recipe the PLC asks for is active; RECIPE_CHANGING while the
    # switch to it is in progress, RECIPE_UNKNOWN while it names no recipe of the station.
    recipe_fault: FaultCode = FaultCode.NONE
    active_recipe: int = RECIPE_DEFAULT  # the PLC's active_recipe (RECIPE_NONE: none)
    rolled_back: bool = False  # the last-known-good model judges again after a watch tripped (MODEL_ROLLED_BACK)


class Recipes(Protocol):
    """The inspection's view of the recipe book (plcbridge/recipes.py)."""

    def ask(self, recipe_id: int, now: float | None = None) -> None: ...

    def fault_for(self, recipe_id: int) -> FaultCode: ...

    def failsafe_of(self, recipe_id: int, default: FailsafeSettings) -> FailsafeSettings: ...


class OneRecipe:
    """A station without a recipe book (tests of the handshake alone): recipe 0, always active."""

    def ask(self, recipe_id: int, now: float | None = None) -> None:
        pass

    def fault_for(self, recipe_id: int) -> FaultCode:
        return FaultCode.NONE if recipe_id == RECIPE_DEFAULT else FaultCode.RECIPE_UNKNOWN

    def failsafe_of(self, recipe_id: int, default: FailsafeSettings) -> FailsafeSettings:
        return default


def health_fault(h: Health) -> FaultCode:
    """What stops a result from being trustworthy now (why a fail-safe is written)."""
    if not h.model_ok:
        return FaultCode.MODEL_NOT_READY
    if not h.camera_ok:
        return FaultCode.CAMERA_FAULT
    return h.recipe_fault


def answer_health(h: Health, fault: FaultCode) -> Health:
    """The health stated beside an answer with this fault: CAMERA_FAULT with CAMERA_OK clear
    (so READY and TRIGGER_READY too), MODEL_NOT_READY with MODEL_OK clear. The fault table
    promises the PLC exactly that ("READY is cleared, stop triggering")."""
    if fault is FaultCode.CAMERA_FAULT and h.camera_ok:
        return dataclasses.replace(h, camera_ok=False)
    if fault is FaultCode.MODEL_NOT_READY and h.model_ok:
        return dataclasses.replace(h, model_ok=False)
    return h


def status_fault(h: Health) -> FaultCode:
    """The fault a block reports when it carries no fail-safe of its own."""
    if not h.plc_ok:
        return FaultCode.PLC_INPUTS_STALE
    return health_fault(h)


def block_fault(h: Health, own: FaultCode | None = None) -> FaultCode:
    """A block's fault_code: blind (PLC_INPUTS_STALE) is said in every block; otherwise the
    fault of the fail-safe it presents (`own`), or what stops results from being trusted now."""
    if own is None or not h.plc_ok:
        return status_fault(h)
    return own


def block_for(d: Decision, seq: int, part_id: int, fs: FailsafeSettings, health: Health) -> Outputs:
    """The block presenting a decision; a fail-safe decision gets the configured fail-safe values,
    and the optional outputs' "nothing measured" (Outputs' defaults). A verdict's result
    details go out in the same block as its result_seq, saturated to their registers."""
    latency = 0
    if d.t_capture is not None:
        latency = min(U16_MAX, max(0, round((d.t_decided - d.t_capture) * 1000)))
    if d.is_failsafe:
        return Outputs(0, int(StatusBit.RESULT_VALID | StatusBit.FAILSAFE_ACTIVE), seq & U16_MAX, fs.code,
                       score_to_register(fs.score), block_fault(health, d.fault), latency, d.model_version, part_id)
    count = defect_count_register(d.defect_count)
    return Outputs(0, int(StatusBit.RESULT_VALID), seq & U16_MAX, d.result, score_to_register(d.score),
                   block_fault(health), latency, d.model_version, part_id, defect_count=count,
                   defect_class=defect_class_register(d.defect_class, count), anomaly_area=area_register(d.anomaly_area),
                   result_recipe=d.recipe)


def shutdown_block(fs: FailsafeSettings, result_seq: int, model_version: int, part_id: int = 0,
                   answers: bool = False) -> Outputs:
    """The final block: fail-safe values, FAILSAFE_ACTIVE and SHUTTING_DOWN; RESULT_VALID
    when it `answers` the trigger result_seq (part_id), the oldest one still waiting. No
    recipe is active any more (active_recipe RECIPE_NONE)."""
    status = StatusBit.FAILSAFE_ACTIVE | (StatusBit.RESULT_VALID if answers else 0)
    return Outputs(0, int(status), result_seq & U16_MAX, fs.code, score_to_register(fs.score), FaultCode.SHUTTING_DOWN,
                   0, model_version, part_id, active_recipe=RECIPE_NONE)


def final_answer_block(d: Decision, seq: int, part_id: int, fs: FailsafeSettings) -> Outputs:
    """The final block answering trigger `seq` with the decision journaled for it: a verdict
    goes out as the verdict (the PLC reads what the journal says), a fail-safe as the
    fail-safe values. Either way READY and the health bits are clear and fault_code is
    SHUTTING_DOWN: the PLC's sign that the heartbeat stops next."""
    if d.is_failsafe:
        return shutdown_block(fs, seq, d.model_version, part_id, answers=True)
    health = Health(camera_ok=False, model_ok=False, model_version=d.model_version)
    return dataclasses.replace(block_for(d, seq, part_id, fs, health), fault_code=FaultCode.SHUTTING_DOWN,
                               active_recipe=RECIPE_NONE)


def session_start_block(o: Outputs) -> Outputs:
    """A triggered block as it goes out on a PLC session whose inputs the bridge has not read
    yet: nothing decided for an earlier session (no answer, result_seq 0, part_id 0) and
    blind (PLC_INPUTS_STALE; READY, TRIGGER_READY and PLC_INPUTS_OK clear), the heartbeat
    and the camera and model bits (MODEL_ROLLED_BACK too) and active_recipe as composed. A final block still says
    SHUTTING_DOWN."""
    status = o.status & (StatusBit.CAMERA_OK | StatusBit.MODEL_OK | StatusBit.MODEL_ROLLED_BACK)
    fault = FaultCode.SHUTTING_DOWN if o.fault_code == FaultCode.SHUTTING_DOWN else FaultCode.PLC_INPUTS_STALE
    return Outputs(heartbeat=o.heartbeat, status=int(status), fault_code=fault, model_version=o.model_version,
                   active_recipe=o.active_recipe)


class FreeRunInspection:
    """Each tick writes the newest decision, or the fail-safe output once it is too old."""

    def __init__(self, timing: TimingSettings, fs: FailsafeSettings, decisions: Callable[[], Decision | None],
                 journal: Journal, metrics: Metrics, recipes: Recipes | None = None) -> None:
        self.max_age = timing.max_result_age_ms / 1000
        self.fs = fs
        self.recipes: Recipes = recipes if recipes is not None else OneRecipe()
        self._latest = decisions
        self.journal = journal
        self.metrics = metrics
        self._written: Decision | None = None  # the last decision the PLC has received
        self._episode: FaultCode | None = None  # the fault of the fail-safe episode in progress
        self._last = Outputs()  # the last block composed

    def trigger_ready(self, health: Health) -> bool:
        return False  # free-run takes no triggers

    @staticmethod
    def session_start(block: Outputs) -> Outputs:
        """Free-run blocks answer no trigger of any session: the newest verdict (never older
        than max_result_age_ms) goes out on a new session as it is."""
        return block

    def on_inputs(self, inputs: Inputs, now: float, new_session: bool = False, t_after: float | None = None,
                  session: int = 0) -> None:
        self.recipes.ask(inputs.recipe_id, now)

    @staticmethod
    def stated_health(health: Health) -> Health:
        """A free-run fail-safe says CAMERA_FAULT or MODEL_NOT_READY only when the health does."""
        return health

    def shutdown(self, now: float) -> Outputs:
        return shutdown_block(self.fs, self._last.result_seq, self._last.model_version)  # no trigger waits

    def tick(self, now: float, health: Health) -> tuple[Outputs, Any]:
        block, token = self._compose(now, health)
        self._last = block
        return block, token

    def _compose(self, now: float, health: Health) -> tuple[Outputs, Any]:
        d = self._latest()
        # A verdict of another recipe than the active one (judged before a switch) is no
        # verdict for the PLC's recipe: the fail-safe goes out instead, however fresh it is.
        other_recipe = d is not None and not d.is_failsafe and d.recipe != health.active_recipe
        if d is None or d.t_capture is None or now - d.t_capture > self.max_age or other_recipe:
            fault = health_fault(health)
            if fault is FaultCode.NONE:
                fault = FaultCode.RECIPE_CHANGING if other_recipe else FaultCode.STALE_RESULT
            if d is None or d.t_capture is None:
                reason = "no decision yet"
            elif other_recipe:
                reason = (f"newest decision was judged with recipe {d.recipe}; recipe "
                          f"{'none' if health.active_recipe == RECIPE_NONE else health.active_recipe} is active")
            else:
                reason = f"newest decision is {(now - d.t_capture) * 1000:.0f} ms old (limit {self.max_age * 1000:.0f} ms)"
            if fault != self._episode:  # counted once per episode, not once per tick
                self.journal.failsafe_episode(fault, reason, model_version=health.model_version,
                                              frame_seq=None if d is None else d.frame_seq)
                self._episode = fault
            d = failsafe(fault, now, reason, model_version=health.model_version, frame_seq=None if d is None else d.frame_seq)
            return block_for(d, d.frame_seq or 0, 0, self._fs(health.active_recipe), health), None
        if self._episode is not None:
            log_event(log, "failsafe_cleared", logging.INFO, previous=self._episode.name)
            self._episode = None
        # A fail-safe decision from the worker (BAD_FRAME, INFERENCE_*) was journaled there.
        return block_for(d, d.frame_seq or 0, 0, self._fs(d.recipe), health), d

    def _fs(self, recipe_id: int) -> FailsafeSettings:
        return self.recipes.failsafe_of(recipe_id, self.fs)

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
    journaled: bool = False
    # A flood run (TRIGGER_OVERRUN beyond the backlog limit) stays open to newer values and
    # is journaled once, when it closes: RUN_QUIET_S without a new value, RUN_MAX_S after it
    # opened, or when it is presented, discarded or shut down.
    t_opened: float = 0.0
    t_grown: float = 0.0


class TriggeredInspection:
    """Every trigger gets exactly one answer, in trigger order; the rules of
    docs/plc-interface.md "Triggered mode", in one place:

    - trigger_seq counts 1..65535 and wraps to 1; 0 is idle, never a trigger. A change is a
      trigger; a jump of k > 1 answers the k-1 values in between with TRIGGER_OVERRUN
      (part_id 0); a jump of more than MAX_SKIPPED_TRIGGERS is a counter reset, one trigger.
    - Session start (the first read of every PLC link session): 0 or a value the PLC has
      acked is nothing to answer; another value the bridge has not answered was raised while
      it could not see it: FAILSAFE + PLC_INPUTS_STALE at once. A PLC restart (the counter
      back to 0, or moved while the link was down) discards answers held for the PLC's
      previous session: they are never presented to the new one.
    - A trigger read while unhealthy (including right after the inputs were stale) gets a
      fail-safe with that fault at once, never a judgement on a later frame.
    - Answers wait in order; one is presented at a time, until the PLC acks it
      (result_ack_seq) or result_hold_ms after it was first written, or, once written, as
      soon as the answer behind it would otherwise go out later than result_timeout_ms
      after its trigger (a PLC that does not ack, after a flood). At most
      1 + trigger_queue answers wait: a trigger beyond that is TRIGGER_OVERRUN, and
      consecutive TRIGGER_OVERRUN answers beyond it collapse into one for the newest value
      (flood rule), so memory and backlog are bounded whatever the PLC does.
    """

    def __init__(self, timing: TimingSettings, fs: FailsafeSettings, submit: Callable[[Request], None],
                 worker_phase: Callable[[Request], str | None], journal: Journal, metrics: Metrics,
                 recipes: Recipes | None = None) -> None:
        self.timing = timing
        self.fs = fs
        self.recipes: Recipes = recipes if recipes is not None else OneRecipe()
        self._submit = submit
        self._phase = worker_phase
        self.journal = journal
        self.metrics = metrics
        self.timeout = timing.result_timeout_ms / 1000
        self.hold = timing.result_hold_ms / 1000
        # An answer waiting this long after its trigger cuts the hold of the one on the
        # outputs short (once that one was written), so that it still goes out within
        # result_timeout_ms: two periods to be composed and written.
        self.due_after = max(0.0, self.timeout - 2 * timing.period_ms / 1000)
        self.capacity = 1 + timing.trigger_queue
        self.last_seq: int | None = None
        self.ack_seq: int | None = None
        self.slots: collections.deque[_Slot] = collections.deque()
        self.presenting: _Slot | None = None
        self._health = Health(False, False, 0)
        self._t_after: float | None = None
        self._session = 0  # the PLC link session of the newest inputs
        self._recipe = RECIPE_DEFAULT  # the recipe_id of the newest inputs: latched with a trigger
        self._last = Outputs()  # the last block composed

    def trigger_ready(self, health: Health) -> bool:
        return status_fault(health) is FaultCode.NONE and len(self.slots) < self.capacity

    session_start = staticmethod(session_start_block)

    # ------------------------------------------------------------------ inputs

    def on_inputs(self, inputs: Inputs, now: float, new_session: bool = False, t_after: float | None = None,
                  session: int = 0) -> None:
        self.ack_seq = inputs.result_ack_seq
        self._session = session
        self._t_after = None if new_session else t_after
        self._recipe = inputs.recipe_id
        self.recipes.ask(inputs.recipe_id, now)  # before the trigger: a switch it asks for has begun
        seq = inputs.trigger_seq
        if self.last_seq is None or new_session:
            self._start_session(inputs, now)
            return
        if seq == 0 and self.last_seq != 0:
            self._plc_restarted(now, f"trigger_seq went from {self.last_seq} to 0 (idle)")
            self.last_seq = 0
            return
        self._advance(seq, inputs.part_id, now)

    def _start_session(self, inputs: Inputs, now: float) -> None:
        """The first read of a PLC session: decide the pending trigger from the PLC's own
        handshake registers, and drop what was held for a PLC session that has ended."""
        seq, ack = inputs.trigger_seq, inputs.result_ack_seq
        previous = self.last_seq
        if previous is not None:
            if seq == previous:  # the same PLC session after a link blip: nothing changed
                return
            delta = seq_delta(previous, seq)
            if seq != 0 and delta <= MAX_SKIPPED_TRIGGERS:  # it went on counting: answer as usual
                self._advance(seq, inputs.part_id, now)
                return
            self._plc_restarted(now, f"trigger_seq went from {previous} to {seq} while the link was down")
        self.last_seq = seq
        if seq == 0 or seq == ack:
            log_event(log, "trigger_seq_adopted", logging.INFO, trigger_seq=seq, result_ack_seq=ack,
                      reason="idle" if seq == 0 else "the PLC has taken its last answer: nothing pending")
            return
        self._settle_new(Request(seq, inputs.part_id, now, plc_session=self._session, recipe=self._recipe),
                         FaultCode.PLC_INPUTS_STALE, now,
                         f"trigger {seq} was pending (result_ack_seq {ack}) when the bridge's session began: "
                         "raised while the bridge could not see it, its frame cannot be identified")

    def _plc_restarted(self, now: float, why: str) -> None:
        """Answers held for the PLC's previous session are never shown to the next one."""
        held = ([self.presenting] if self.presenting is not None and self.presenting.t_first_written is None else []) + list(self.slots)
        for slot in held:
            if slot.decision is None:  # journal its one answer: it ends here
                self._settle(slot, failsafe(FaultCode.PLC_INPUTS_STALE, now, f"discarded: {why} before it was answered",
                                            model_version=self._health.model_version, request=slot.request))
            elif not slot.journaled:
                self._journal(slot)
        if held:
            self.metrics.results_discarded.inc(len(held))
        log_event(log, "results_discarded" if held else "plc_restarted", logging.WARNING, reason=why,
                  trigger_seqs=[s.request.trigger_seq for s in held], rate_key="restart")
        self.slots.clear()
        self.presenting = None

    def _advance(self, seq: int, part_id: int, now: float) -> None:
        assert self.last_seq is not None
        delta = seq_delta(self.last_seq, seq)
        if delta == 0:
            return
        if delta > MAX_SKIPPED_TRIGGERS:
            log_event(log, "trigger_seq_resync", logging.WARNING, previous=self.last_seq, trigger_seq=seq,
                      reason=f"trigger_seq jumped by {delta}: PLC restart or counter reset; taken as one trigger",
                      rate_key="resync")
            skipped: list[int] = []
        else:
            skipped, s = [], self.last_seq
            for _ in range(delta - 1):
                s = next_seq(s)
                skipped.append(s)
        before = self.last_seq
        self.last_seq = seq
        for s in skipped:
            self._overrun(Request(s, 0, now, plc_session=self._session, recipe=self._recipe), now,
                          f"trigger_seq went from {before} to {seq}: this value was never seen on its own")
        req = Request(seq, part_id, now, self._t_after, self._session, self._recipe)
        # The health of the last tick, with the recipe's state now (the switch this very read
        # asked for included): a trigger is judged with its own recipe or not at all.
        fault = status_fault(dataclasses.replace(self._health, recipe_fault=self.recipes.fault_for(req.recipe)))
        if len(self.slots) >= self.capacity:
            self._overrun(req, now, f"{len(self.slots)} answers already waiting (1 + timing.trigger_queue = {self.capacity})")
            self.metrics.queue_drops.labels("triggers").inc()
        elif fault is FaultCode.PLC_INPUTS_STALE:
            # Read after the inputs were stale: it may have been raised long ago.
            self._settle_new(req, fault, now, "read after the bridge had been blind to its inputs for longer than "
                                              "plc.max_input_age_ms: the part may have moved on")
        elif fault in (FaultCode.RECIPE_CHANGING, FaultCode.RECIPE_UNKNOWN):
            self._settle_new(req, fault, now, f"recipe_id {req.recipe} read with the trigger " + (
                "names no recipe of this station" if fault is FaultCode.RECIPE_UNKNOWN else
                "is not active yet: the switch to it is in progress"))
        elif fault is not FaultCode.NONE:
            self._settle_new(req, fault, now, "not healthy when the trigger arrived")
        else:
            self.slots.append(_Slot(req))
            self._submit(req)

    def _overrun(self, req: Request, now: float, reason: str) -> None:
        """A TRIGGER_OVERRUN answer. Within the backlog limit each value gets its own; beyond
        it, values join the open run at the end of the queue, which answers the newest."""
        last = self.slots[-1] if self.slots else None
        flooding = len(self.slots) >= self.capacity
        if flooding and last is not None and last.decision is not None and not last.journaled:
            d = last.decision
            last.request, last.t_grown = req, now
            last.decision = failsafe(FaultCode.TRIGGER_OVERRUN, now, f"flood: answers trigger_seq {req.trigger_seq} "
                                     f"and the {d.collapsed + 1} older value(s) of its run ({reason})",
                                     model_version=self._health.model_version, request=req, collapsed=d.collapsed + 1)
            self.metrics.triggers_collapsed.inc()
            return
        slot = _Slot(req, failsafe(FaultCode.TRIGGER_OVERRUN, now, reason, model_version=self._health.model_version,
                                   request=req), t_opened=now, t_grown=now)
        self.slots.append(slot)
        if not flooding:
            self._journal(slot)

    def _settle_new(self, req: Request, fault: FaultCode, now: float, reason: str) -> None:
        slot = _Slot(req)
        self.slots.append(slot)
        self._settle(slot, failsafe(fault, now, reason, model_version=self._health.model_version, request=req))

    def _settle(self, slot: _Slot, d: Decision) -> None:
        slot.decision = d
        self._journal(slot)

    def _journal(self, slot: _Slot) -> None:
        assert slot.decision is not None
        slot.journaled = True
        self.journal.decision(slot.decision)

    # ------------------------------------------------------------------ decisions

    def on_decision(self, d: Decision) -> None:
        for slot in self.slots:
            if slot.request is d.request:
                if slot.decision is None:
                    self._settle(slot, d)
                    return
                break
        # Too late: the trigger already got its fail-safe result, or was discarded with the
        # PLC's previous session. Journal, never write.
        self.metrics.queue_drops.labels("late_decisions").inc()
        req = d.request
        log_event(log, "late_decision", logging.WARNING, trigger_seq=req.trigger_seq if req else None,
                  part_id=req.part_id if req else None, result=d.result.name, score=round(d.score, 4),
                  reason="this trigger had already been answered (result timeout) or discarded (PLC restart)")

    # ------------------------------------------------------------------ outputs

    def tick(self, now: float, health: Health) -> tuple[Outputs, Any]:
        block, token = self._compose(now, health)
        self._last = block
        return block, token

    def _compose(self, now: float, health: Health) -> tuple[Outputs, Any]:
        self._health = health
        for i, slot in enumerate(self.slots):  # a flood run closes: journaled even if the PLC never takes it
            if not slot.journaled and slot.decision is not None and (
                    i < len(self.slots) - 1 or now - slot.t_grown >= RUN_QUIET_S or now - slot.t_opened >= RUN_MAX_S):
                self._journal(slot)
        for slot in self.slots:
            if slot.decision is None and now - slot.request.t_seen > self.timeout:
                phase = self._phase(slot.request)
                fault = health_fault(health)
                if fault is FaultCode.NONE:
                    fault = FaultCode.CAMERA_FAULT if phase == "waiting_frame" else FaultCode.INFERENCE_TIMEOUT
                self._settle(slot, failsafe(fault, now, f"no decision within result_timeout_ms={self.timing.result_timeout_ms} (stage: {phase or 'queued'})",
                                            model_version=health.model_version, request=slot.request))
        p = self.presenting
        nxt = self.slots[0] if self.slots and self.slots[0].decision is not None else None
        done = p is None or (p.t_first_written is not None and (
            self.ack_seq == p.request.trigger_seq or now - p.t_first_written >= self.hold))
        if not done and p is not None and p.t_first_written is not None and nxt is not None \
                and now - nxt.request.t_seen >= self.due_after:
            done = True  # written once; the answer behind it would miss result_timeout_ms
            self.metrics.result_holds_cut.inc()
            log_event(log, "result_hold_cut", logging.WARNING, trigger_seq=p.request.trigger_seq,
                      next_trigger_seq=nxt.request.trigger_seq, held_ms=round((now - p.t_first_written) * 1000, 1),
                      reason="no ack, and the next answer is due within timing.result_timeout_ms: this one was "
                             "on the outputs for less than timing.result_hold_ms", rate_key="hold_cut")
        if done and nxt is not None:
            self.presenting = p = self.slots.popleft()
            if not p.journaled:  # a collapsed run is journaled once, when it stops growing
                self._journal(p)
        if p is None or p.decision is None:
            return Outputs(fault_code=block_fault(health), model_version=health.model_version), None
        return block_for(p.decision, p.request.trigger_seq, p.request.part_id, self._fs(p.request), health), p

    def _fs(self, req: Request) -> FailsafeSettings:
        """The fail-safe values for a trigger: its recipe's, or the station's."""
        return self.recipes.failsafe_of(req.recipe, self.fs)

    def stated_health(self, health: Health) -> Health:
        """The health the block just composed states: the station's, except while an answer
        not yet delivered says CAMERA_FAULT or MODEL_NOT_READY (answer_health). The camera's
        own failures clear CAMERA_OK at once (GrabLoop.failed), but a CAMERA_FAULT this class
        settles at the result timeout may come before the stall timeout has said so: the
        block that first brings the PLC the answer still says it. Later blocks follow the
        station again, so a camera that works again is not hidden behind an old answer."""
        p = self.presenting
        if p is None or p.decision is None or p.t_first_written is not None:
            return health
        return answer_health(health, p.decision.fault)

    def written(self, token: Any, t: float) -> None:
        p = token
        if isinstance(p, _Slot) and p.t_first_written is None:
            p.t_first_written = t
            self.metrics.trigger_to_result_seconds.observe(t - p.request.t_seen)
            if p.decision is not None and p.decision.t_capture is not None:
                self.metrics.capture_to_write_seconds.observe(t - p.decision.t_capture)

    def shutdown(self, now: float) -> Outputs:
        """The final block: the oldest trigger not yet delivered gets its answer with its own
        result_seq and part_id: the one journaled for it if it was decided, else FAILSAFE +
        SHUTTING_DOWN (journaled so). Every other answer still held is journaled (if it was
        not) and logged as not delivered."""
        held = ([self.presenting] if self.presenting is not None and self.presenting.t_first_written is None else []) + list(self.slots)
        if not held:
            return shutdown_block(self.fs, self._last.result_seq, self._last.model_version)
        first, rest = held[0], held[1:]
        if first.decision is None:
            self._settle(first, failsafe(FaultCode.SHUTTING_DOWN, now, "the daemon is stopping: answered by the final block",
                                         model_version=self._health.model_version, request=first.request))
        elif not first.journaled:
            self._journal(first)
        for slot in rest:
            if slot.decision is None:
                self._settle(slot, failsafe(FaultCode.SHUTTING_DOWN, now, "the daemon stopped before this trigger "
                                            "could be answered; not delivered", model_version=self._health.model_version,
                                            request=slot.request))
            elif not slot.journaled:
                self._journal(slot)
        if rest:
            log_event(log, "results_not_delivered", logging.WARNING, trigger_seqs=[s.request.trigger_seq for s in rest],
                      reason="the daemon stopped; the final block can carry one answer")
        self.slots.clear()
        self.presenting = None
        req = first.request
        assert first.decision is not None  # settled above
        return final_answer_block(first.decision, req.trigger_seq, req.part_id, self._fs(req))
