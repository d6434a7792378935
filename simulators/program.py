"""The simulated PLC program: the handshake logic a real PLC would run, without any I/O.

Protocol front-ends (Modbus today, OPC UA / EtherNet/IP later) own the transport and call
into one `SimulatedPlc` from a single thread:

- `on_outputs(outputs, t)` whenever the bridge wrote its output block,
- `tick(t)` often (about every millisecond) to raise triggers and run the timers,
- `inputs` to learn what to present to the bridge,
- `protocol_error(kind, detail)` for transport-level misuse (bad address, wrong unit id).

Time is passed in rather than read, so unit tests run on a fake clock and the front-ends
pass time.monotonic(): CLOCK_MONOTONIC is one clock for all processes on Linux, so a latency
measured here is comparable with the daemon's own timestamps.

The accounting is kept closed on purpose: every trigger sent ends up in exactly one of
results / missing / skipped / outstanding, so a summary that does not add up is itself a
finding.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from plcbridge.contract import (
    U16_MAX,
    U32_MAX,
    FaultCode,
    Inputs,
    Outputs,
    ResultCode,
    StatusBit,
)

from .device import ProgramSettings

# Triggers given up on are remembered this long (by count) to tell a late result from a
# result for a seq that was never raised.
_EXPIRED_MEMORY = 256
_RECENT_ERRORS = 10


@dataclass(frozen=True)
class _Trigger:
    seq: int
    part_id: int
    t: float


def _percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile: always a value that was really observed."""
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def _code_name(enum_type: type[ResultCode] | type[FaultCode], value: int) -> str | None:
    try:
        return enum_type(value).name
    except ValueError:
        return None


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
        self._next_trigger_t: float | None = None
        # Handshake bookkeeping: outstanding triggers oldest first, and recently given-up ones.
        self._pending: OrderedDict[int, _Trigger] = OrderedDict()
        self._expired: OrderedDict[int, _Trigger] = OrderedDict()
        self._last_result_key: tuple[int, ...] | None = None
        # Bridge liveness.
        self._last_outputs: Outputs | None = None
        self._hb_value: int | None = None
        self._hb_changed_t = 0.0
        self._hb_alarm_active = False
        self._shutdown_announced = False
        # Clock.
        self._t_first: float | None = None
        self._t_now = 0.0
        # Counters.
        self.writes_seen = 0
        self.triggers_sent = 0
        self.missing = 0
        self.skipped = 0
        self.results: Counter[str] = Counter()
        self.failsafe_faults: Counter[str] = Counter()
        self.protocol_errors: Counter[str] = Counter()
        self._recent_errors: deque[str] = deque(maxlen=_RECENT_ERRORS)
        self.latencies_ms: list[float] = []
        self.heartbeat_alarms = 0
        self._hb_longest_gap_s = 0.0

    # ------------------------------------------------------------------ front-end API

    @property
    def inputs(self) -> Inputs:
        """The PLC -> bridge block as the PLC presents it right now."""
        return Inputs(trigger_seq=self._trigger_seq, part_id=self._part_id, result_ack_seq=self._ack_seq)

    def on_outputs(self, outputs: Outputs, t: float) -> None:
        """The bridge wrote its output block at time t."""
        self._touch(t)
        self.writes_seen += 1
        self._watch_heartbeat(outputs, t)
        if self.settings.mode == "triggered":
            self._take_triggered_result(outputs, t)
        else:
            self._take_free_run_result(outputs)
        self._last_outputs = outputs

    def tick(self, t: float) -> None:
        """Advance the program to time t: watchdog, result timeouts, next trigger."""
        self._touch(t)
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
            self._maybe_trigger(t)

    def protocol_error(self, kind: str, detail: str) -> None:
        """Count a misuse of the interface; `kind` groups them, `detail` is for humans."""
        self.protocol_errors[kind] += 1
        self._recent_errors.append(f"{kind}: {detail}")

    # ------------------------------------------------------------------ reporting

    def summary(self) -> dict[str, Any]:
        """Everything a commissioning run proves, as JSON-able data."""
        lat = sorted(self.latencies_ms)
        latency: dict[str, Any] = {"count": len(lat)}
        if lat:
            latency.update(
                p50=round(_percentile(lat, 50), 3),
                p95=round(_percentile(lat, 95), 3),
                p99=round(_percentile(lat, 99), 3),
                max=round(lat[-1], 3),
            )
        return {
            "mode": self.settings.mode,
            "duration_s": round(self._t_now - self._t_first, 3) if self._t_first is not None else 0.0,
            "writes_seen": self.writes_seen,
            "triggers_sent": self.triggers_sent,
            "results": dict(sorted(self.results.items())),
            "failsafe_faults": dict(sorted(self.failsafe_faults.items())),
            "outstanding": len(self._pending),
            "missing": self.missing,
            "skipped": self.skipped,
            "protocol_errors": sum(self.protocol_errors.values()),
            "protocol_errors_by_kind": dict(sorted(self.protocol_errors.items())),
            "recent_protocol_errors": list(self._recent_errors),
            "latency_ms": latency,
            "heartbeat_alarms": self.heartbeat_alarms,
            "heartbeat_longest_gap_ms": round(self._longest_gap_s() * 1000.0, 3),
            "bridge_state": self._bridge_state(),
        }

    def status_line(self) -> str:
        """One line for a live display; cheap enough to call every second."""
        r = self.results
        last = f"{self.latencies_ms[-1]:.1f}ms" if self.latencies_ms else "-"
        worst = f"{max(self.latencies_ms):.1f}ms" if self.latencies_ms else "-"
        dur = self._t_now - self._t_first if self._t_first is not None else 0.0
        return (
            f"{self.settings.mode} {dur:6.0f}s bridge={self._bridge_state()} writes={self.writes_seen} "
            f"trig={self.triggers_sent} pass={r['PASS']} fail={r['FAIL']} failsafe={r['FAILSAFE']} "
            f"missing={self.missing} skipped={self.skipped} proto_err={sum(self.protocol_errors.values())} "
            f"lat={last} max={worst} hb_alarms={self.heartbeat_alarms}"
        )

    # ------------------------------------------------------------------ internals

    def _touch(self, t: float) -> None:
        if self._t_first is None:
            self._t_first = t
        self._t_now = max(self._t_now, t)

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
        return o is not None and bool(o.status & StatusBit.READY) and not self._hb_alarm_active

    def _maybe_trigger(self, t: float) -> None:
        # Like a real line, send no parts to a bridge that is not READY or whose heartbeat is
        # lost. Overload is deliberately NOT gated on TRIGGER_READY: a conveyor does not wait,
        # and max_outstanding > 1 is how an overrun is provoked.
        if not self._bridge_ready():
            self._next_trigger_t = None
            return
        if self._next_trigger_t is None:
            # First trigger one period after READY, so the bridge has read the idle
            # trigger_seq at least once and takes the next change as a trigger.
            self._next_trigger_t = t + self._period_s
            return
        if t < self._next_trigger_t or len(self._pending) >= self.settings.max_outstanding:
            return
        self._trigger_seq = (self._trigger_seq + 1) & U16_MAX
        self._part_id = self._next_part_id
        self._next_part_id = (self._next_part_id + 1) & U32_MAX
        self._pending[self._trigger_seq] = _Trigger(self._trigger_seq, self._part_id, t)
        self.triggers_sent += 1
        nxt = self._next_trigger_t + self._period_s
        # Keep the rate when on time; after a wait (bridge busy) do not fire a burst.
        self._next_trigger_t = nxt if nxt > t else t + self._period_s

    def _expire_pending(self, t: float) -> None:
        limit_s = self.settings.result_timeout_ms / 1000.0
        while self._pending:
            trig = next(iter(self._pending.values()))
            if t - trig.t <= limit_s:
                break
            del self._pending[trig.seq]
            self._remember_expired(trig)
            self.missing += 1

    def _remember_expired(self, trig: _Trigger) -> None:
        self._expired[trig.seq] = trig
        while len(self._expired) > _EXPIRED_MEMORY:
            self._expired.popitem(last=False)

    def _take_triggered_result(self, outputs: Outputs, t: float) -> None:
        if not outputs.status & StatusBit.RESULT_VALID:
            return
        seq = outputs.result_seq
        # The bridge keeps presenting a result until it sees the ack (or its hold time runs
        # out): the same result written again is not a new one.
        if self._last_result_key == (seq,):
            return
        self._last_result_key = (seq,)
        self._ack_seq = seq  # always take what is presented, so the bridge can move on
        if seq in self._pending:
            older = []
            for s in self._pending:
                if s == seq:
                    break
                older.append(s)
            if older:
                self.skipped += len(older)
                for s in older:
                    self._remember_expired(self._pending.pop(s))
                self.protocol_error(
                    "out_of_order", f"result for seq {seq} while older trigger(s) {older} were unanswered"
                )
            trig = self._pending.pop(seq)
            self.latencies_ms.append((t - trig.t) * 1000.0)
            if outputs.part_id != trig.part_id:
                self.protocol_error(
                    "part_id_mismatch", f"seq {seq}: bridge echoed part_id {outputs.part_id}, PLC sent {trig.part_id}"
                )
            self._count_result(outputs, triggered=True)
        elif seq in self._expired:
            del self._expired[seq]
            self.protocol_error("late_result", f"result for seq {seq} came after result_timeout_ms or was skipped")
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

    def _count_result(self, outputs: Outputs, *, triggered: bool) -> None:
        code = _code_name(ResultCode, outputs.result_code)
        if code is None or (triggered and outputs.result_code == ResultCode.NONE):
            self.protocol_error("bad_result_code", f"seq {outputs.result_seq}: result_code {outputs.result_code}")
        self.results[code or f"UNKNOWN_{outputs.result_code}"] += 1
        if outputs.result_code != ResultCode.FAILSAFE:
            return
        fault = _code_name(FaultCode, outputs.fault_code)
        if fault is None:
            self.protocol_error("bad_fault_code", f"seq {outputs.result_seq}: fault_code {outputs.fault_code}")
        elif outputs.fault_code == FaultCode.NONE:
            self.protocol_error("failsafe_without_fault", f"seq {outputs.result_seq}: FAILSAFE with fault_code NONE")
        self.failsafe_faults[fault or f"UNKNOWN_{outputs.fault_code}"] += 1
