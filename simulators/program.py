"""The simulated PLC program: the handshake logic a real PLC would run, without any I/O.

Protocol front-ends (Modbus, OPC UA, EtherNet/IP) own the transport and call into one
`SimulatedPlc` from a single thread:

- `on_outputs(outputs, t)` whenever the bridge wrote its output block,
- `tick(t)` often (about every millisecond) to raise triggers and run the timers,
- `inputs` to learn what to present to the bridge,
- `protocol_error(kind, detail)` for transport-level misuse (bad address, wrong unit id),
- `restart(t)` for a PLC restart on demand (front-ends: `restart_plc()`, which takes their
  lock and, behind the network relay, drops the client connections as a real restart does).

Time is passed in rather than read, so unit tests run on a fake clock and the front-ends
pass time.monotonic(): CLOCK_MONOTONIC is one clock for all processes on Linux, so a latency
measured here is comparable with the daemon's own timestamps.

The handshake (triggered mode), as the bridge plays it:

- trigger_seq counts 1..65535 and wraps to 1 (contract.next_seq); 0 is idle, never a
  trigger: after a start or a restart trigger_seq and result_ack_seq are 0 and the next
  trigger is 1.
- Every trigger gets exactly one answer, in trigger order: a verdict (PASS/FAIL with
  RESULT_VALID) or a fail-safe. A fail-safe is recognised by the FAILSAFE_ACTIVE bit (or
  result_code FAILSAFE), never by result_code alone, since a plant may configure the bridge's
  failsafe.result_code = "FAIL": it is counted in results["FAILSAFE"] and under its fault code
  in failsafe_faults, and the result code it arrived with in failsafe_result_codes.
- A trigger_seq that moved by more than one between two bridge reads: each skipped value is
  answered with TRIGGER_OVERRUN and part_id 0 (the bridge never saw its part id), which is
  not a part_id mismatch.
- Flood rule: a TRIGGER_OVERRUN answer for seq N also answers, as rejected, every older
  outstanding trigger that got no answer of its own (the bridge collapses a run of overruns
  into one answer when its queue is full); those count as "collapsed", not as protocol
  errors. Any other answer that jumps over outstanding triggers is an out_of_order error and
  the triggers jumped over count as "skipped".
- On shutdown the bridge's last block (fault SHUTTING_DOWN) answers the oldest pending
  trigger: with its verdict if it was decided, else with FAILSAFE + SHUTTING_DOWN
  (FAILSAFE_ACTIVE set; taken as an answer even without RESULT_VALID).

Optional outputs (result details: defect_count, defect_class, anomaly_area) are read from
every block like the rest (a front-end whose mapping does not carry them hands over their
defaults, "nothing measured"). Each result taken is checked against the contract: a fail-safe
says nothing was measured (0, none, 0), and defect_class is none when defect_count is 0
("failsafe_details", "defect_class_mismatch" protocol errors). `result_details(carried)` reports
them for the signals a front-end's mapping carries (its summary's "result_details").

The accounting is kept closed on purpose: every trigger sent ends up in exactly one of
results / collapsed / missing / skipped / lost_in_restart / outstanding, so a summary that
does not add up (its "unaccounted" is not 0) is itself a finding.

Recipes (a mapping that carries recipe_id and active_recipe: `set_mapping()`, which every
front-end calls). The PLC presents `recipe` in recipe_id and, like a real line at a product
change, with `recipe_change_every_s` writes the next id of `recipe_sequence` (cycling) that
often, timed from the bridge's first write: once a change is due it sends no new part, and
writes the new recipe_id when every trigger of the old product has its answer. It raises a
trigger only while the bridge's latest block shows active_recipe == recipe_id (and READY):
after a change it waits for the switch (`wait_active_recipe` false: a PLC that does not: it
raises the first trigger of the new product in the same scan as the new recipe_id, and then
triggers whenever READY is set). Each trigger remembers the recipe asked with it: a verdict
judged with another recipe is a "wrong_recipe" protocol error (by its result_recipe where the
mapping carries it, else by the active_recipe of the block that brings it, which is the same
while recipe_id does not change with triggers outstanding), and a fail-safe with a
result_recipe but 65535 (none) a "failsafe_details" one. `recipe_summary()` has
the counts and the switch times as the PLC sees them (new recipe_id written -> the first block
with active_recipe equal to it and READY).

Scenarios a commissioning engineer can rehearse ([program] in the device file, `plcbridge
sim` flags): `early_first_trigger` (the first trigger as soon as TRIGGER_READY is seen),
`wait_trigger_ready` (a line that triggers only while TRIGGER_READY is set), `restart_after_s`
(one PLC restart), `stuck_trigger_after_s`/`stuck_trigger_for_s` (a stuck trigger edge: one
new trigger_seq value per program tick, whatever the answers), and `trigger_hz` with
`max_outstanding` > 1 (triggers faster than the camera), `recipe_change_every_s` with
`recipe_sequence` (a product change every few seconds).
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from plcbridge.contract import (
    DEFECT_CLASS_NONE,
    OPTIONAL_OUTPUT_SIGNALS,
    RECIPE_NONE,
    U32_MAX,
    FaultCode,
    Inputs,
    Outputs,
    ResultCode,
    StatusBit,
    code_name,
    next_seq,
)
from plcbridge.schedule import FixedRateSchedule, percentile_summary

from .device import ProgramSettings

# Triggers given up on (or forgotten in a restart) are remembered this long (by count) to tell
# a late result from a result for a seq that was never raised.
_EXPIRED_MEMORY = 256
_RECENT_ERRORS = 10

FAILSAFE_COUNTING = (
    "an answer with FAILSAFE_ACTIVE set (or result_code FAILSAFE) is a fail-safe, whatever result_code it "
    "carries (a plant may configure failsafe.result_code = FAIL): it counts in results['FAILSAFE'], under its "
    "fault code in failsafe_faults and under the result code it arrived with in failsafe_result_codes; "
    "results['PASS'] and results['FAIL'] are real verdicts only"
)


@dataclass(frozen=True)
class Trigger:
    """A trigger the PLC raised and is waiting to see answered."""

    seq: int
    part_id: int
    t: float
    recipe: int = 0  # the recipe_id presented with it


def is_failsafe(outputs: Outputs) -> bool:
    """A fail-safe answer: FAILSAFE_ACTIVE set, or (leniently) result_code FAILSAFE."""
    return bool(outputs.status & StatusBit.FAILSAFE_ACTIVE) or outputs.result_code == ResultCode.FAILSAFE


def _remember(memory: OrderedDict[int, Trigger], trig: Trigger) -> None:
    memory.pop(trig.seq, None)
    memory[trig.seq] = trig
    while len(memory) > _EXPIRED_MEMORY:
        memory.popitem(last=False)


class SimulatedPlc:
    """Protocol-agnostic PLC program; single-threaded, clock passed in (seconds)."""

    def __init__(self, settings: ProgramSettings | None = None) -> None:
        self.settings = settings or ProgramSettings()
        self._period_s = 1.0 / self.settings.trigger_hz
        # What the PLC presents to the bridge.
        self._trigger_seq = 0
        self._part_id = 0
        self._ack_seq = 0
        self._next_part_id = self.settings.first_part_id
        # The line's part clock: started one period after the bridge is READY, reset when it is not.
        self._triggers = FixedRateSchedule(self._period_s)
        self._first_after_ready = False  # no trigger raised yet since the bridge became READY
        # Handshake bookkeeping: outstanding triggers oldest first, recently given-up ones, and
        # the ones forgotten in a restart.
        self._pending: OrderedDict[int, Trigger] = OrderedDict()
        self._expired: OrderedDict[int, Trigger] = OrderedDict()
        self._lost: OrderedDict[int, Trigger] = OrderedDict()
        self._last_result: tuple[int, int] | None = None  # (result_seq, part_id) last taken
        self._last_result_key: tuple[int, ...] | None = None  # free-run: (seq, code, fault)
        # Bridge liveness.
        self._last_outputs: Outputs | None = None
        self._hb_value: int | None = None
        self._hb_changed_t = 0.0
        self._hb_alarm_active = False
        self._shutdown_announced = False
        self._trigger_ready_seen = False  # a triggered bridge sets TRIGGER_READY; a free-run one never
        # After a restart the bridge counts as alive only once its heartbeat has changed: one
        # block proves nothing (it may be the last request of a connection the restart killed).
        self._hb_proven = True
        # Clock.
        self._t_first: float | None = None
        self._t_first_write: float | None = None  # scenarios are timed from the bridge's first write
        self._t_now = 0.0
        self._scheduled_restart_done = False
        self._restart_listeners: list[Callable[[], None]] = []
        self._trigger_listeners: list[Callable[[int, float], None]] = []
        # Counters.
        self.writes_seen = 0
        self.triggers_sent = 0
        self.missing = 0
        self.skipped = 0
        self.collapsed = 0
        self.lost_in_restart = 0
        self.answers_after_restart = 0
        self.restarts = 0
        self.stuck_edge_values = 0
        self._answered = 0  # triggers answered by an answer of their own (triggered mode)
        self.results: Counter[str] = Counter()
        self.failsafe_faults: Counter[str] = Counter()
        self.failsafe_result_codes: Counter[str] = Counter()
        self.protocol_errors: Counter[str] = Counter()
        self._recent_errors: deque[str] = deque(maxlen=_RECENT_ERRORS)
        self.latencies_ms: list[float] = []
        self.heartbeat_alarms = 0
        self._hb_longest_gap_s = 0.0
        # Optional outputs of the results taken (reported by result_details()).
        self._last_details: dict[str, int] = {}
        self.defects_counted = 0  # defect_count summed over the verdicts
        self.defect_classes: Counter[str] = Counter()  # verdicts with a defect, by defect_class
        self.anomaly_area_max = 0
        # Recipes: which recipe signals the front-end's mapping carries (set_mapping), what the
        # PLC asks for, its product changes and the bridge's switches as the PLC sees them.
        self._recipe_signals: frozenset[str] = frozenset()
        self._show_recipes = False
        self._recipe = self.settings.recipe
        self._recipe_changes_made = 0
        self._recipe_next_change: float | None = None  # when the next change is due
        self._recipe_change_due = False  # due, waiting for the old product's last answers
        self._recipe_t_asked: float | None = None  # a change waiting for its echo, since then
        self.recipe_switch_ms: list[float] = []
        self.triggers_by_recipe: Counter[str] = Counter()
        self.verdicts_by_recipe: Counter[str] = Counter()  # by the result_recipe they came with

    # ------------------------------------------------------------------ front-end API

    @property
    def pending(self) -> dict[int, Trigger]:
        """The outstanding triggers, oldest first (trigger_seq -> Trigger): a copy."""
        return dict(self._pending)

    @property
    def inputs(self) -> Inputs:
        """The PLC -> bridge block as the PLC presents it right now."""
        return Inputs(trigger_seq=self._trigger_seq, part_id=self._part_id, result_ack_seq=self._ack_seq,
                      recipe_id=self._recipe)

    def on_outputs(self, outputs: Outputs, t: float) -> None:
        """The bridge wrote its output block at time t."""
        self._touch(t)
        if self._t_first_write is None:
            self._t_first_write = t
        self.writes_seen += 1
        self._watch_heartbeat(outputs, t)
        self._watch_recipe(outputs, t)
        if outputs.status & StatusBit.TRIGGER_READY:
            self._trigger_ready_seen = True
        if self.settings.mode == "triggered":
            self._take_triggered_result(outputs, t)
        else:
            self._take_free_run_result(outputs)
        self._last_outputs = outputs
        if (
            self.settings.mode == "triggered"
            and self.settings.early_first_trigger
            and (not self._triggers.started or self._first_after_ready)
            and not self._stuck(t)
        ):
            # As soon as TRIGGER_READY is seen: within this very write (a Modbus FC23's read
            # part, the read that follows) rather than at the next tick.
            self._maybe_trigger(t)

    def tick(self, t: float) -> None:
        """Advance the program to time t: watchdog, result timeouts, scenarios, next trigger."""
        self._touch(t)
        if self._restart_due(t):
            self._scheduled_restart_done = True
            self.restart(t)
        self._maybe_change_recipe(t)
        if (
            self._hb_value is not None
            and not self._shutdown_announced
            and not self._hb_alarm_active
            and (t - self._hb_changed_t) * 1000.0 > self.settings.watchdog_ms
        ):
            # Rising edge only: one alarm per stall episode, however long it lasts.
            self._hb_alarm_active = True
            self.heartbeat_alarms += 1
        self._expire_pending(t)
        if self.settings.mode == "triggered":
            if self._stuck(t):
                # A PLC bug: the trigger rung fires on every scan, whatever the bridge says.
                self._raise_trigger(t, new_part=False)
                self.stuck_edge_values += 1
            else:
                self._maybe_trigger(t)

    def protocol_error(self, kind: str, detail: str) -> None:
        """Count a misuse of the interface; `kind` groups them, `detail` is for humans."""
        self.protocol_errors[kind] += 1
        self._recent_errors.append(f"{kind}: {detail}")

    def restart(self, t: float | None = None) -> None:
        """A PLC restart at time t (default: the latest time seen).

        trigger_seq, part_id and result_ack_seq go to 0 (the next trigger is 1); outstanding
        triggers are forgotten and counted as lost_in_restart (their answers, if they still
        come, as answers_after_restart); the watchdog and the bridge's last block are
        forgotten, so triggering resumes only after the bridge has written READY again with a
        heartbeat that has changed since the restart, as a PLC program checks its partner's
        heartbeat toggles: the last request of a connection the restart killed may still reach
        the restarted program (a proxy's buffers, or a real PLC's retained output area), and
        one stale READY must not start a trigger the bridge never had a chance to read. Part ids
        keep counting, so no part id is reused. Restart listeners (a front-end dropping its
        client connections) run last.
        """
        t = self._t_now if t is None else t
        self._touch(t)
        self.restarts += 1
        for trig in self._pending.values():
            _remember(self._lost, trig)
        self.lost_in_restart += len(self._pending)
        self._pending.clear()
        self._trigger_seq = self._part_id = self._ack_seq = 0
        self._triggers.reset()
        self._first_after_ready = False
        if self._hb_value is not None and not self._shutdown_announced:
            self._hb_longest_gap_s = max(self._hb_longest_gap_s, t - self._hb_changed_t)
        self._hb_value = None
        self._hb_proven = False
        self._hb_alarm_active = False
        self._shutdown_announced = False
        self._last_outputs = None
        for listener in list(self._restart_listeners):
            listener()

    def set_mapping(self, optional_inputs: Collection[str], optional_outputs: Collection[str], *,
                    show: bool = False) -> None:
        """The optional signals the front-end's mapping carries (every one for the loop): the
        recipe checks run on those that reach the bridge and come back from it. `show`: the
        summary and the status line report recipes even while the program uses none (the
        mapping lists recipe signals)."""
        carried = {*optional_inputs, *optional_outputs}
        self._recipe_signals = frozenset(n for n in ("recipe_id", "active_recipe", "result_recipe") if n in carried)
        self._show_recipes = show

    @property
    def shows_recipes(self) -> bool:
        """The summary has "recipes" and the status line the recipe asked."""
        return self._show_recipes or self.settings.uses_recipes

    @property
    def recipe_signals(self) -> frozenset[str]:
        """The recipe signals the mapping carries (recipe_id, active_recipe, result_recipe)."""
        return self._recipe_signals

    def add_trigger_listener(self, listener: Callable[[int, float], None]) -> None:
        """Call `listener(trigger_seq, t)` (on the program's thread) as each trigger is raised:
        the PLC output wired to a hardware-triggered camera (simulators/camera_line.py)."""
        self._trigger_listeners.append(listener)

    def add_restart_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` (on the program's thread, inside restart()) after every restart."""
        self._restart_listeners.append(listener)

    # ------------------------------------------------------------------ reporting

    def summary(self) -> dict[str, Any]:
        """Everything a commissioning run proves, as JSON-able data."""
        latency: dict[str, Any] = {"count": len(self.latencies_ms)}
        if self.latencies_ms:  # nearest rank: each figure a latency that was really observed
            latency.update(percentile_summary(self.latencies_ms, nearest_rank=True))
        s = self.settings
        return {
            "mode": s.mode,
            "duration_s": round(self._t_now - self._t_first, 3) if self._t_first is not None else 0.0,
            "writes_seen": self.writes_seen,
            "triggers_sent": self.triggers_sent,
            "results": dict(sorted(self.results.items())),
            "failsafe_faults": dict(sorted(self.failsafe_faults.items())),
            "failsafe_result_codes": dict(sorted(self.failsafe_result_codes.items())),
            "failsafe_counting": FAILSAFE_COUNTING,
            "outstanding": len(self._pending),
            "missing": self.missing,
            "skipped": self.skipped,
            "collapsed": self.collapsed,
            "lost_in_restart": self.lost_in_restart,
            "unaccounted": self._unaccounted(),
            "answers_after_restart": self.answers_after_restart,
            "restarts": self.restarts,
            "stuck_edge_values": self.stuck_edge_values,
            "protocol_errors": sum(self.protocol_errors.values()),
            "protocol_errors_by_kind": dict(sorted(self.protocol_errors.items())),
            "recent_protocol_errors": list(self._recent_errors),
            "latency_ms": latency,
            "heartbeat_alarms": self.heartbeat_alarms,
            "heartbeat_longest_gap_ms": round(self._longest_gap_s() * 1000.0, 3),
            "bridge_state": self._bridge_state(),
            "scenario": {
                "trigger_hz": s.trigger_hz,
                "max_outstanding": s.max_outstanding,
                "early_first_trigger": s.early_first_trigger,
                "wait_trigger_ready": s.wait_trigger_ready,
                "restart_after_s": s.restart_after_s,
                "stuck_trigger_after_s": s.stuck_trigger_after_s,
                "stuck_trigger_for_s": s.stuck_trigger_for_s if s.stuck_trigger_after_s is not None else None,
            },
        }

    def recipe_summary(self) -> dict[str, Any]:
        """Recipes as this PLC saw them: the recipe it asks for now, its changes, the switch
        times (new recipe_id written -> first block with active_recipe equal to it and READY),
        whether it still waits for one, the triggers raised per recipe asked and, where
        result_recipe is carried, the verdicts per recipe they were judged with."""
        s = self.settings
        switch: dict[str, Any] = {"count": len(self.recipe_switch_ms)}
        if self.recipe_switch_ms:
            switch["min"] = round(min(self.recipe_switch_ms), 3)
            switch.update(percentile_summary(self.recipe_switch_ms, nearest_rank=True))
        out: dict[str, Any] = {
            "carried": sorted(self._recipe_signals),
            "recipe_id": self._recipe,
            "changes": self._recipe_changes_made,
            "waiting_for_switch": self._recipe_waiting(),
            "switch_ms": switch,
            "triggers_by_recipe": dict(sorted(self.triggers_by_recipe.items(), key=lambda kv: int(kv[0]))),
            "wrong_recipe": self.protocol_errors["wrong_recipe"],
            "sequence": list(s.recipe_sequence),
            "change_every_s": s.recipe_change_every_s,
            "wait_active_recipe": s.wait_active_recipe,
        }
        if "result_recipe" in self._recipe_signals:
            out["verdicts_by_recipe"] = dict(sorted(self.verdicts_by_recipe.items(), key=lambda kv: int(kv[0])))
        return out

    def result_details(self, carried: Collection[str]) -> dict[str, Any]:
        """The optional outputs `carried` names (those the front-end's mapping carries), as the
        results taken brought them: the last result's values and, over the verdicts (fail-safes
        measure nothing), the defects counted, the verdicts with a defect by defect_class, and
        the largest anomaly_area."""
        names = [s.name for s in OPTIONAL_OUTPUT_SIGNALS if s.name in carried]
        out: dict[str, Any] = {"carried": names, "last": {n: self._last_details[n] for n in names if n in self._last_details}}
        if "defect_count" in names:
            out["defects_counted"] = self.defects_counted
        if "defect_class" in names:
            out["defect_classes"] = dict(sorted(self.defect_classes.items(), key=lambda kv: int(kv[0])))
        if "anomaly_area" in names:
            out["anomaly_area_max"] = self.anomaly_area_max
        return out

    def status_line(self) -> str:
        """One line for a live display; cheap enough to call every second. `trigger->result`
        is this PLC's own measure: from raising a trigger to reading its answer (the bridge's
        latency_ms register is capture -> decision, a part of it)."""
        r = self.results
        last = f"{self.latencies_ms[-1]:.1f}ms" if self.latencies_ms else "-"
        worst = f"{max(self.latencies_ms):.1f}ms" if self.latencies_ms else "-"
        dur = self._t_now - self._t_first if self._t_first is not None else 0.0
        extra = ""
        if self.restarts:
            extra += f" restarts={self.restarts} lost={self.lost_in_restart}"
        if self.stuck_edge_values:
            extra += f" stuck_values={self.stuck_edge_values}"
        if self.shows_recipes:
            extra += f" recipe={self._recipe}" + (" WAITING-SWITCH" if self._recipe_waiting() else "")
        return (
            f"{self.settings.mode} {dur:6.0f}s bridge={self._bridge_state()} writes={self.writes_seen} "
            f"trig={self.triggers_sent} pass={r['PASS']} fail={r['FAIL']} failsafe={r['FAILSAFE']} "
            f"missing={self.missing} skipped={self.skipped} collapsed={self.collapsed}{extra} "
            f"proto_err={sum(self.protocol_errors.values())} "
            f"trigger->result={last} max={worst} hb_alarms={self.heartbeat_alarms}"
        )

    # ------------------------------------------------------------------ internals

    def _unaccounted(self) -> int:
        """Triggers sent that ended nowhere; 0 unless the program itself has a bug."""
        ended = (self._answered + self.collapsed + self.missing + self.skipped + self.lost_in_restart
                 + len(self._pending))
        return self.triggers_sent - ended

    def _touch(self, t: float) -> None:
        if self._t_first is None:
            self._t_first = t
        self._t_now = max(self._t_now, t)

    def _restart_due(self, t: float) -> bool:
        after = self.settings.restart_after_s
        return (
            after is not None
            and not self._scheduled_restart_done
            and self._t_first_write is not None
            and t >= self._t_first_write + after
        )

    def _stuck(self, t: float) -> bool:
        """Inside the stuck-trigger-edge window (timed from the bridge's first write)?"""
        after = self.settings.stuck_trigger_after_s
        if after is None or self._t_first_write is None:
            return False
        start = self._t_first_write + after
        return start <= t < start + self.settings.stuck_trigger_for_s

    def _bridge_state(self) -> str:
        if self._last_outputs is None:
            return "waiting"
        if self._shutdown_announced:
            return "shut-down"
        if self._hb_alarm_active:
            return "HEARTBEAT-LOST"
        return "ready" if self._last_outputs.status & StatusBit.READY else "not-ready"

    def _longest_gap_s(self) -> float:
        ongoing = 0.0
        if self._hb_value is not None and not self._shutdown_announced:
            ongoing = self._t_now - self._hb_changed_t
        return max(self._hb_longest_gap_s, ongoing)

    def _watch_heartbeat(self, outputs: Outputs, t: float) -> None:
        if self._hb_value is None or outputs.heartbeat != self._hb_value:
            # A gap that spans an announced shutdown is a restart, not a stall.
            if self._hb_value is not None and not self._shutdown_announced:
                self._hb_longest_gap_s = max(self._hb_longest_gap_s, t - self._hb_changed_t)
            if self._hb_value is not None:
                self._hb_proven = True
            self._hb_value = outputs.heartbeat
            self._hb_changed_t = t
            self._hb_alarm_active = False
        # The bridge's last write says it is stopping on purpose: its heartbeat will stop,
        # and that is not a fault episode. A changing heartbeat afterwards re-arms the watchdog.
        self._shutdown_announced = (
            outputs.fault_code == FaultCode.SHUTTING_DOWN and not outputs.status & StatusBit.READY
        )

    def _bridge_ready(self) -> bool:
        o = self._last_outputs
        return (o is not None and bool(o.status & StatusBit.READY) and self._hb_proven and not self._hb_alarm_active
                and not self._recipe_change_due
                and (not self.settings.wait_active_recipe or o.active_recipe == self._recipe))

    def _judged_with(self, outputs: Outputs) -> tuple[int, str] | None:
        """The recipe a verdict says it was judged with, and which signal says so: its
        result_recipe, or (a mapping without it) the active_recipe of the block that brings
        it; None when neither is carried."""
        if "result_recipe" in self._recipe_signals:
            return outputs.result_recipe, "result_recipe"
        if "active_recipe" in self._recipe_signals:
            return outputs.active_recipe, "active_recipe"
        return None

    def _recipe_waiting(self) -> bool:
        """The bridge's latest block does not show the recipe asked as active (with READY)."""
        o = self._last_outputs
        return o is None or o.active_recipe != self._recipe or not o.status & StatusBit.READY

    def _maybe_change_recipe(self, t: float) -> None:
        """The product change scenario: the next recipe of the sequence, on its grid from the
        bridge's first write. Like a real line, once a change is due no new part is sent, and
        recipe_id is written when the last part of the old product has its answer (nothing
        outstanding: the bridge latches recipe_id with trigger_seq, so a trigger it had not read
        yet would be read with the new recipe). A change that comes due while the last one
        still waits for its switch is made all the same."""
        every = self.settings.recipe_change_every_s
        if every is None or self._t_first_write is None:
            return
        if self._recipe_next_change is None:
            self._recipe_next_change = self._t_first_write + every
        if t < self._recipe_next_change:
            return
        self._recipe_change_due = True
        if self._pending:
            return
        seq = self.settings.recipe_sequence
        self._recipe = seq[self._recipe_changes_made % len(seq)]
        self._recipe_changes_made += 1
        self._recipe_t_asked = t
        self._recipe_change_due = False
        while self._recipe_next_change <= t:
            self._recipe_next_change += every
        if not self.settings.wait_active_recipe and self.settings.mode == "triggered" and self._bridge_ready():
            # A PLC that does not wait: the first part of the new product comes in the same scan.
            self._raise_trigger(t, new_part=True)

    def _watch_recipe(self, outputs: Outputs, t: float) -> None:
        """A change waits for its echo: the first block with active_recipe == recipe_id and READY."""
        if self._recipe_t_asked is not None and outputs.active_recipe == self._recipe \
                and outputs.status & StatusBit.READY:
            self.recipe_switch_ms.append((t - self._recipe_t_asked) * 1000.0)
            self._recipe_t_asked = None

    def _maybe_trigger(self, t: float) -> None:
        # Like a real line, send no parts to a bridge that is not READY or whose heartbeat is
        # lost. Overload is deliberately NOT gated on TRIGGER_READY unless wait_trigger_ready
        # says so: a conveyor does not wait, and max_outstanding > 1 is how an overrun is provoked.
        clock = self._triggers
        if not self._bridge_ready():
            clock.reset()
            return
        assert self._last_outputs is not None
        trigger_ready = bool(self._last_outputs.status & StatusBit.TRIGGER_READY)
        early = self.settings.early_first_trigger
        if not clock.started:
            # First trigger one period after READY, so the bridge has read the idle
            # trigger_seq at least once and takes the next change as a trigger; with
            # early_first_trigger, as soon as TRIGGER_READY is seen instead.
            clock.start(t + self._period_s)
            self._first_after_ready = True
            if not early:
                return
        if early and self._first_after_ready and trigger_ready and t < clock.deadline:
            clock.start(t)  # the first trigger now; the clock runs from it
        if not clock.due(t) or len(self._pending) >= self.settings.max_outstanding:
            return
        if self.settings.wait_trigger_ready and not trigger_ready:
            return  # a well-behaved line holds the part until the bridge can take it
        self._raise_trigger(t, new_part=True)
        self._first_after_ready = False
        # On the grid when on time. A part held a whole period or more (bridge busy) is
        # never followed by a burst: the line, which waited, restarts its clock from it.
        if clock.take(t):
            clock.start(t + self._period_s)

    def _raise_trigger(self, t: float, *, new_part: bool) -> None:
        """trigger_seq + 1 (65535 -> 1); a new part id unless the edge is stuck on the same part."""
        seq = next_seq(self._trigger_seq)
        old = self._pending.pop(seq, None)
        if old is not None:  # the counter came all the way round to a trigger still unanswered
            _remember(self._expired, old)
            self.missing += 1
        self._trigger_seq = seq
        if new_part:
            self._part_id = self._next_part_id
            self._next_part_id = (self._next_part_id + 1) & U32_MAX
        self._pending[seq] = Trigger(seq, self._part_id, t, self._recipe)
        self.triggers_sent += 1
        self.triggers_by_recipe[str(self._recipe)] += 1
        for listener in self._trigger_listeners:
            listener(seq, t)

    def _expire_pending(self, t: float) -> None:
        limit_s = self.settings.result_timeout_ms / 1000.0
        while self._pending:
            trig = next(iter(self._pending.values()))
            if t - trig.t <= limit_s:
                break
            del self._pending[trig.seq]
            _remember(self._expired, trig)
            self.missing += 1

    def _take_triggered_result(self, outputs: Outputs, t: float) -> None:
        status = outputs.status
        seq, part_id = outputs.result_seq, outputs.part_id
        # An answer: RESULT_VALID, or a fail-safe block (the bridge's shutdown block) naming a seq.
        if not (status & StatusBit.RESULT_VALID or (status & StatusBit.FAILSAFE_ACTIVE and seq != 0)):
            return
        # The bridge keeps presenting a result until it sees the ack (or its hold time runs
        # out): the same result written again is not a new one. The same seq with another part
        # id is new only when a trigger with that number is outstanding (after a wrap or a
        # restart the numbers come round again).
        if self._last_result is not None:
            last_seq, last_part = self._last_result
            if seq == last_seq and (part_id == last_part or seq not in self._pending):
                return
        self._last_result = (seq, part_id)
        if self.settings.ack:
            self._ack_seq = seq  # take what is presented, so the bridge can move on at once
        failsafe = is_failsafe(outputs)
        overrun = failsafe and outputs.fault_code == FaultCode.TRIGGER_OVERRUN
        trig = self._pending.get(seq)
        if trig is not None and part_id not in (trig.part_id, 0):
            earlier = self._lost.get(seq) or self._expired.get(seq)
            if earlier is not None and earlier.part_id == part_id:
                trig = None  # the answer to an earlier trigger with the same number
        if trig is not None:
            older = []
            for s in self._pending:
                if s == seq:
                    break
                older.append(s)
            if older:
                for s in older:
                    _remember(self._expired, self._pending.pop(s))
                if overrun:
                    # The flood rule: one TRIGGER_OVERRUN answer for the newest of a run.
                    self.collapsed += len(older)
                else:
                    self.skipped += len(older)
                    self.protocol_error(
                        "out_of_order", f"result for seq {seq} while older trigger(s) {older} were unanswered"
                    )
            del self._pending[seq]
            self._answered += 1
            self.latencies_ms.append((t - trig.t) * 1000.0)
            if part_id != trig.part_id and not (overrun and part_id == 0):
                self.protocol_error(
                    "part_id_mismatch", f"seq {seq}: bridge echoed part_id {part_id}, PLC sent {trig.part_id}"
                )
            judged = self._judged_with(outputs)
            if not failsafe and judged is not None and judged[0] != trig.recipe:
                self.protocol_error(
                    "wrong_recipe", f"seq {seq}: a verdict with {judged[1]} {judged[0]}, but the PLC asked for "
                                    f"recipe {trig.recipe} with the trigger")
            self._count_result(outputs, triggered=True)
        elif seq == 0:
            self.protocol_error("unexpected_seq", "result for seq 0, which is never a trigger (0 means idle)")
        elif seq in self._lost:
            # Outstanding when the PLC restarted: an answer meant for the PLC's previous session.
            # plcbridge discards those (docs/plc-interface.md), so this stays 0 against it.
            del self._lost[seq]
            self.answers_after_restart += 1
        elif seq in self._expired:
            del self._expired[seq]
            self.protocol_error("late_result", f"result for seq {seq} came after result_timeout_ms or was skipped")
        elif not self._pending:
            self.protocol_error(
                "unexpected_seq", f"result for seq {seq}, but no trigger is outstanding: is the bridge in free-run mode?"
            )
        elif not self._trigger_ready_seen:
            self.protocol_error(
                "unexpected_seq", f"result for seq {seq}, which is not an outstanding trigger, from a bridge that "
                                  "has never set TRIGGER_READY: is the bridge in free-run mode?"
            )
        else:
            self.protocol_error("unexpected_seq", f"result for seq {seq}, which is not an outstanding trigger")

    def _take_free_run_result(self, outputs: Outputs) -> None:
        if outputs.result_code == ResultCode.NONE:
            return
        # A result that turns stale keeps its seq but changes code: that change is news too.
        key = (outputs.result_seq, outputs.result_code, outputs.fault_code)
        if key == self._last_result_key:
            return
        self._last_result_key = key
        self._count_result(outputs, triggered=False)

    def _take_details(self, outputs: Outputs, failsafe: bool) -> None:
        """The optional outputs of a result taken: recorded, and checked against the contract."""
        count, cls, area = outputs.defect_count, outputs.defect_class, outputs.anomaly_area
        self._last_details = {s.name: getattr(outputs, s.name) for s in OPTIONAL_OUTPUT_SIGNALS}
        recipe = outputs.result_recipe if "result_recipe" in self._recipe_signals else None
        if failsafe:
            if (count, cls, area) != (0, DEFECT_CLASS_NONE, 0):
                self.protocol_error("failsafe_details", f"seq {outputs.result_seq}: a fail-safe measures nothing, but "
                                                        f"defect_count={count} defect_class={cls} anomaly_area={area}")
            if recipe is not None and recipe != RECIPE_NONE:
                self.protocol_error("failsafe_details", f"seq {outputs.result_seq}: no recipe judges a fail-safe, but "
                                                        f"result_recipe={recipe} (none is {RECIPE_NONE})")
            return
        if recipe is not None:
            self.verdicts_by_recipe[str(recipe)] += 1
        if count == 0 and cls != DEFECT_CLASS_NONE:
            self.protocol_error("defect_class_mismatch", f"seq {outputs.result_seq}: defect_class={cls} with no defect "
                                                         f"counted (defect_count 0 has defect_class {DEFECT_CLASS_NONE}, none)")
        self.defects_counted += count
        if count:
            self.defect_classes[str(cls)] += 1
        self.anomaly_area_max = max(self.anomaly_area_max, area)

    def _count_result(self, outputs: Outputs, *, triggered: bool) -> None:
        self._take_details(outputs, is_failsafe(outputs))
        code = code_name(ResultCode, outputs.result_code)
        if code is None or (triggered and outputs.result_code == ResultCode.NONE):
            self.protocol_error("bad_result_code", f"seq {outputs.result_seq}: result_code {outputs.result_code}")
        name = code or f"UNKNOWN_{outputs.result_code}"
        if not is_failsafe(outputs):
            self.results[name] += 1
            return
        # A fail-safe, whatever result_code the plant configured for it (see FAILSAFE_COUNTING).
        self.results[ResultCode.FAILSAFE.name] += 1
        self.failsafe_result_codes[name] += 1
        if outputs.result_code == ResultCode.PASS:
            self.protocol_error("failsafe_pass", f"seq {outputs.result_seq}: a fail-safe must never pass the part")
        fault = code_name(FaultCode, outputs.fault_code)
        if fault is None:
            self.protocol_error("bad_fault_code", f"seq {outputs.result_seq}: fault_code {outputs.fault_code}")
        elif outputs.fault_code == FaultCode.NONE:
            self.protocol_error("failsafe_without_fault", f"seq {outputs.result_seq}: FAILSAFE with fault_code NONE")
        self.failsafe_faults[fault or f"UNKNOWN_{outputs.fault_code}"] += 1
