"""The write loop: one fixed-period thread that writes the PLC's output block on time.

Ticks run on a `FixedRateSchedule` (plcbridge/schedule.py): absolute deadlines, start + k *
period. A tick that starts late is measured (lateness = actual - scheduled start, into a
histogram and a sample ring); a slot already due when the tick before it ends (a tick that
ran past it, or a wake-up a whole period behind) is given up and counted as an overrun: late
ticks are never bunched together to catch up.

Between two ticks the loop sleeps on an event that the link (a reply with new inputs: a
trigger, an ack, a new session) and the inference stage (a decision) set. Woken, it takes
the news at once (a trigger goes to the model now, not at the next tick) and, when an answer
settled (a verdict, the next answer after an ack, a new free-run decision), posts it as an
extra block: the last tick's heartbeat, at most one per period, not within EXTRA_MARGIN_S
before a tick. The grid (heartbeat,
status, staleness, lateness) is the ticks' alone.

Nothing in a tick waits on the camera, the model, the log or the network. A tick reads the
mailboxes and what the PLC link last reported (the newest inputs and the newest block known
to have landed), has the inspection compose the block's result (plcbridge/inspection.py),
stamps the heartbeat and the status word, and posts the block to the link, which sends the
newest block whenever its one exchange in flight is done (plcbridge/link.py). The tick knows
how old its newest inputs are: past `plc.max_input_age_ms` the bridge cannot see triggers,
so the block it still writes clears READY, TRIGGER_READY and PLC_INPUTS_OK and says
PLC_INPUTS_STALE; the log says why once per log window while it lasts, a PLC that was never
fast enough included (StatusReport). Every change of the status word is a status_changed
line, rate-limited here without losing a transition (StatusLog).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable

from plcbridge.config import Config
from plcbridge.contract import U16_MAX, FaultCode, Outputs, ResultCode, StatusBit
from plcbridge.inspection import FreeRunInspection, Health, TriggeredInspection
from plcbridge.link import PlcLink
from plcbridge.logs import get_logger, log_event
from plcbridge.metrics import Metrics
from plcbridge.schedule import FixedRateSchedule, Samples
from plcbridge.threads import WRITE_LOOP_SLICE_S, shorten_this_threads_slice

log = get_logger("writeloop")

# How long the final fail-safe block may take to reach the PLC, reconnecting if need be.
# systemd's TimeoutStopSec (10 s) leaves room for it; SIGTERM still exits within about it.
FINAL_WRITE_BUDGET_S = 1.0

# An extra block (an answer that settled between two ticks) is not posted this close to the
# next tick (or within a quarter period of it, if that is less): the tick carries it.
EXTRA_MARGIN_S = 0.0005

# The status bits a result carries of its own; the loop adds the others.
RESULT_BITS = StatusBit.RESULT_VALID | StatusBit.FAILSAFE_ACTIVE


def status_word(health: Health, trigger_ready: bool, result_status: int) -> int:
    """A block's status word in service: the station's health, whether a trigger would be
    taken now, and the result's own bits (RESULT_VALID, FAILSAFE_ACTIVE). READY also needs
    the recipe the PLC asks for to be active (no recipe fault)."""
    status = result_status & RESULT_BITS
    if health.model_ok and health.camera_ok and health.plc_ok and health.recipe_fault is FaultCode.NONE:
        status |= StatusBit.READY
    if trigger_ready:
        status |= StatusBit.TRIGGER_READY
    if health.camera_ok:
        status |= StatusBit.CAMERA_OK
    if health.model_ok:
        status |= StatusBit.MODEL_OK
    if health.plc_ok:
        status |= StatusBit.PLC_INPUTS_OK
    if health.rolled_back:
        status |= StatusBit.MODEL_ROLLED_BACK
    return int(status)


def change_kind(old: int, new: int) -> str:
    """Which bits moved ("CAMERA_OK,READY,TRIGGER_READY"), or "fault" when only the fault did:
    a flapping CAMERA_OK raises and clears the same bits, one kind."""
    return ",".join(sorted(b.name for b in StatusBit if (old ^ new) & b)) or "fault"  # type: ignore[misc]  # iterating a Flag gives single bits, all named; typeshed says str | None


@dataclasses.dataclass
class _Merged:
    """Status changes not yet written: how many, when the first and the last were composed,
    and their kinds."""

    count: int
    t_first: float
    t_last: float
    kinds: set[str]


class StatusLog:
    """The status_changed lines: every change of the status word (or the fault) is accounted
    for, and the last line always shows the state now.

    Rate-limited here, at the source, not by the log pipeline's limiter: a line that limiter
    held back would describe its change from a state no line showed (a READY raised between
    two "cleared READY" lines was never seen), and it came out after later decision lines
    with nothing to order it by. So a change of a kind (the bits that moved) already written
    within `window_s` is merged into the next line, which is written at once for a change of
    another kind, else at the first block after the window. Every line says the net change
    since the line before it (`raised`/`cleared` against that line's `status`), `merged` (the
    changes it stands for, when more than one), and `t_block_mono`: the monotonic time of the
    block whose state it reports, the clock of the decision lines' `t_trigger_mono` and
    `t_capture_mono`, so a reader can order it among them. log_event only queues: the write
    loop never waits on the log.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._shown = 0  # the status word of the last line written
        self._status = 0  # and of the last block composed
        self._fault = FaultCode.NONE
        self._written_at: dict[str, float] = {}  # kind -> when a line last carried a change of that kind
        self._merged: _Merged | None = None

    def change(self, old: int, new: int, fault: int, t: float, force: bool = False) -> None:
        """A block composed at `t` (monotonic) changed the status word from `old` to `new` (or
        the fault); `force`: written now whatever the window (the final block)."""
        self._status, self._fault = new, FaultCode(fault)
        kind = change_kind(old, new)
        m = self._merged
        if m is None:
            m = self._merged = _Merged(0, t, t, set())
        m.count += 1
        m.t_last = t
        m.kinds.add(kind)
        last = self._written_at.get(kind)
        if force or last is None or t - last >= self.window_s:
            self._write(t)

    def due(self, now: float) -> None:
        """At every block: merged changes are written once the window of the first has ended."""
        m = self._merged
        if m is not None and now - m.t_first >= self.window_s:
            self._write(now)

    def _write(self, now: float) -> None:
        m = self._merged
        assert m is not None
        self._merged = None
        old, new = self._shown, self._status
        self._shown = new
        for kind in m.kinds:
            self._written_at[kind] = now
        changed = old ^ new
        raised = [b.name for b in StatusBit if changed & b and new & b]
        cleared = [b.name for b in StatusBit if changed & b and not new & b]
        lost = any(n in ("CAMERA_OK", "MODEL_OK", "READY", "PLC_INPUTS_OK") for n in cleared)
        level = logging.WARNING if lost and self._fault is not FaultCode.SHUTTING_DOWN else logging.INFO  # stopping: asked for
        extra: dict[str, Any] = {}
        if m.count > 1:
            extra = {"merged": m.count, "t_first_mono": round(m.t_first, 6),
                     "note": f"rate-limited: {m.count} status changes since the previous status_changed line, the "
                             "first at t_first_mono; raised/cleared are the net change, status the state at t_block_mono"}
        log_event(log, "status_changed", level, raised=raised, cleared=cleared, fault=self._fault.name,
                  status=[b.name for b in StatusBit if new & b], t_block_mono=round(m.t_last, 6), **extra)


class StatusReport:
    """What the loop tells people: the gauges, and a log line when something changes (never
    one per tick), or once per log window while the bridge is blind. Keeps the state the
    daemon reads: the status word and fault last written, and whether the PLC inputs are fresh."""

    def __init__(self, metrics: Metrics, link: PlcLink, max_input_age_ms: int, log_window_s: float = 5.0) -> None:
        self.metrics = metrics
        self._link = link
        self._limit_ms = max_input_age_ms
        self._window_s = log_window_s
        self._status_log = StatusLog(log_window_s)
        self._next_blind_line = 0.0  # monotonic: the next "still blind" line is due
        self.status = 0
        self.fault = FaultCode.NONE
        self.inputs_ok = False

    def inputs(self, fresh: bool, age: float, now: float, exchange_s: float | None = None) -> None:
        """The age of the newest inputs at this tick, and the time the exchange that brought
        them took (None: no reply on the current session yet). Blindness is said when it
        begins (after fresh inputs), and once per log window for as long as it lasts on a
        session that answers: a PLC too slow for plc.max_input_age_ms has never given fresh
        inputs, and must not be silent."""
        self.metrics.plc_input_age_seconds.set(age)
        if fresh != self.inputs_ok:
            self.inputs_ok = fresh
            self.metrics.plc_inputs_ok.set(1 if fresh else 0)
            if fresh:
                log_event(log, "plc_inputs_fresh", logging.INFO, input_age_ms=round(age * 1000, 1), rate_key="inputs",
                          rate_last=True)
                return
            self.metrics.plc_inputs_stale.inc()
        elif fresh or now < self._next_blind_line or exchange_s is None or age * 1000 <= self._limit_ms:
            return  # before a session answers, the link's own lines say why there are no inputs
        self._next_blind_line = now + self._window_s
        self._log_stale(age, exchange_s)

    def _log_stale(self, age: float, exchange_s: float | None) -> None:
        link = self._link
        age_ms = round(age * 1000, 1)
        if age_ms > self._limit_ms:
            reason = f"inputs {age_ms:g} ms old, above plc.max_input_age_ms = {self._limit_ms}"
        else:  # young, but from a session that has ended
            reason = "no inputs yet on the new PLC session (the newest are from the session that ended)"
        reason += ": triggers cannot be seen; READY and TRIGGER_READY cleared"
        fields: dict[str, Any] = {}
        if exchange_s is not None:
            fields["exchange_ms"] = round(exchange_s * 1000, 1)
            if exchange_s * 1000 > self._limit_ms / 2:
                reason += (f". The PLC answers an exchange in {exchange_s * 1000:.0f} ms, so its inputs are at least "
                           f"that old when they arrive: make the PLC answer faster, or raise plc.max_input_age_ms "
                           f"(and plc.link_timeout_ms, which must not be below it) well above {exchange_s * 1000:.0f} ms")
        log_event(log, "plc_inputs_stale", logging.WARNING, input_age_ms=age_ms, limit_ms=self._limit_ms,
                  setting="plc.max_input_age_ms", fault=FaultCode.PLC_INPUTS_STALE.name,
                  link=link.last_error or ("connected, replies late" if link.connected else "not connected"),
                  reason=reason, rate_key="inputs", rate_last=True, **fields)

    def block(self, status: int, fault: int, camera_ok: bool, now: float) -> None:
        """A block composed at `now` (monotonic): its status word and fault, logged when they change."""
        self._status_log.due(now)
        if status != self.status or fault != self.fault:
            self._status_log.change(self.status, status, fault, now)
        self.status = status
        self.fault = FaultCode(fault)
        self.metrics.ready.set(1 if self.ready else 0)
        self.metrics.camera_ok.set(1 if camera_ok else 0)

    def final(self, status: int, fault: int, now: float) -> None:
        """The final block: its change is written at once, with any changes merged before it."""
        if status != self.status or fault != self.fault:
            self._status_log.change(self.status, status, fault, now, force=True)
        else:
            self._status_log.due(now + self._window_s)
        self.status = status
        self.fault = FaultCode(fault)

    @property
    def ready(self) -> bool:
        """READY is written: the last block composed says READY, and blocks reach the PLC on
        this session (the first read of a session comes before its first write, and a PLC
        may answer reads and refuse writes)."""
        return bool(self.status & StatusBit.READY) and self._link.delivering

    def overrun(self, missed: int, behind_s: float) -> None:
        self.metrics.write_overruns.inc(missed)
        log_event(log, "write_overrun", logging.WARNING, missed_ticks=missed, behind_ms=round(behind_s * 1000, 2),
                  rate_key="overrun")


class WriteLoop:
    """The thread: wait for the slot, tick, repeat; the final fail-safe write on stop."""

    def __init__(self, config: Config, link: PlcLink, inspection: FreeRunInspection | TriggeredInspection,
                 health: Callable[[float], Health], drain_decisions: Callable[[], None], metrics: Metrics,
                 watchdog: Callable[[], object] | None = None, watchdog_interval_s: float | None = None) -> None:
        self.config = config
        self.max_input_age = config.plc.max_input_age_ms / 1000
        self.link = link
        self.inspection = inspection
        link.session_start = inspection.session_start
        self._health = health
        self._drain = drain_decisions
        self.metrics = metrics
        self.lateness = Samples()
        self.schedule = FixedRateSchedule(config.timing.period_ms / 1000, lateness=self.lateness)
        self.report = StatusReport(metrics, link, config.plc.max_input_age_ms, config.logging.rate_limit_s)
        self.heartbeat = 0
        self.ticks = 0
        self.last_tick: float | None = None  # monotonic time of the last tick; the watchdog's truth
        self.input_age: float | None = None  # of the newest inputs at the last tick; None: none yet
        self._started = 0.0
        self._reply_seq = -1  # the last link reply handed to the inspection
        self._session = -1  # the link session of that reply
        self._t_prev_sent: float | None = None  # its request time
        self._written_id = -1  # the last delivered block handed to the inspection
        self._stop = threading.Event()
        # Set by the link (a reply with new inputs) and the inference stage (a decision):
        # between two ticks the loop wakes on it, takes the news at once and, if an answer
        # settled, posts it as an extra block (at most one per period, see _between_ticks).
        self._news = threading.Event()
        link.on_news = self._news.set
        self._block_id = 0  # every block posted, ticks and extras: the link sends the newest
        self._heartbeat_posted = 0  # the heartbeat of the last tick: an extra block repeats it
        self._token_posted: object = None  # what the last block posted presented
        self._session_posted = -1  # the link session whose inputs the last block posted was composed from
        self._extra_due = True  # no extra block posted since the last tick
        self._thread = threading.Thread(target=self._run, name="write-loop", daemon=True)
        # Told what the newest block known to have reached the PLC presented (its token: a
        # free-run Decision, a triggered answer's slot): the shadow model's cue. Must be cheap.
        self.on_written: Callable[[object], None] | None = None
        self.final_write_ok: bool | None = None
        # systemd's WATCHDOG=1 is sent from this thread, so it stops when the loop stops.
        self._watchdog = watchdog if watchdog_interval_s else None
        self._watchdog_interval = watchdog_interval_s or 0.0
        self._next_watchdog = 0.0

    # The daemon's view: what the last block said, and how the schedule has kept up.
    @property
    def status(self) -> int:
        return self.report.status

    @property
    def fault(self) -> FaultCode:
        return self.report.fault

    @property
    def inputs_ok(self) -> bool:
        return self.report.inputs_ok

    @property
    def overruns(self) -> int:
        return self.schedule.skipped

    def start(self) -> "WriteLoop":
        self._thread.start()
        return self

    def wake(self) -> None:
        """News for the loop (the inference stage's decision): acted on now, not at the next tick."""
        self._news.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask for the final fail-safe write and wait for the loop to end."""
        self._stop.set()
        self._news.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        # Preempt whatever runs on the core at each wake-up, instead of waiting out its slice.
        granted = shorten_this_threads_slice(WRITE_LOOP_SLICE_S)
        log_event(log, "write_loop_started", logging.INFO, period_ms=self.config.timing.period_ms,
                  max_input_age_ms=self.config.plc.max_input_age_ms, link_timeout_ms=self.config.plc.link_timeout_ms,
                  slice_ms=None if granted is None else round(granted * 1000, 3))
        schedule = self.schedule
        self._started = schedule.start()
        # Extra blocks stop this long before a tick: the tick carries the answer instead of
        # following an extra block at once.
        margin = min(EXTRA_MARGIN_S, schedule.period / 4)
        while not self._stop.is_set():
            delay = schedule.deadline - time.monotonic()
            if delay > 0:
                if self._news.wait(delay):
                    self._news.clear()
                    if not self._stop.is_set() and time.monotonic() < schedule.deadline - margin:
                        self._guarded(self._between_ticks)
                    continue
            now = time.monotonic()
            schedule.take(now)
            if schedule.missed:  # skipped ahead: the missed slots are counted, never run in a burst
                self.report.overrun(schedule.missed, schedule.late + schedule.missed * schedule.period)
            self.metrics.write_lateness_seconds.observe(schedule.late)
            self._news.clear()  # the tick takes whatever news there is
            self._guarded(lambda: self._tick(now))
            # A tick that ran past the next slot gives it up: the next block keeps the grid
            # instead of following this late one at once (never bunched).
            end = time.monotonic()
            behind = end - schedule.deadline
            missed = schedule.skip_due(end)
            if missed:
                self.report.overrun(missed, behind)
        self._final_write()

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception:  # noqa: BLE001 - the loop must outlive any one bad tick
            self.metrics.tick_errors.inc()
            log_event(log, "tick_failed", logging.ERROR, rate_key="tick", exc_info=True,
                      reason="no block composed this tick; the PLC's heartbeat watchdog sees the gap")

    def _compose(self, now: float) -> tuple[Outputs, object]:
        """The block of this moment (without its heartbeat), after taking every decision and
        everything the link reported since the last look."""
        self._drain()
        self._take_link_news()
        health = dataclasses.replace(self._health(now), plc_ok=self._inputs_fresh(now))
        result, token = self.inspection.tick(now, health)
        health = self.inspection.stated_health(health)
        status = status_word(health, self.inspection.trigger_ready(health), result.status)
        self.report.block(status, result.fault_code, health.camera_ok, now)
        return dataclasses.replace(result, status=status, active_recipe=health.active_recipe), token

    def _post(self, block: Outputs, token: object, heartbeat: int) -> None:
        self.link.post(self._block_id, dataclasses.replace(block, heartbeat=heartbeat), token, self._session)
        self._block_id += 1
        self._token_posted = token
        self._session_posted = self._session

    def _tick(self, now: float) -> None:
        block, token = self._compose(now)
        self._post(block, token, self.heartbeat)
        self._heartbeat_posted = self.heartbeat
        self.heartbeat = (self.heartbeat + 1) & U16_MAX
        self._extra_due = True
        self.ticks += 1
        self.last_tick = now
        if self._watchdog is not None and now >= self._next_watchdog:
            self._watchdog()
            self._next_watchdog = now + self._watchdog_interval

    def _between_ticks(self) -> None:
        """Woken by news between two ticks: a trigger read is handed to the inference stage
        now, and an answer that settled (a verdict, the next answer after an ack, a new
        free-run decision) goes out now as an extra block instead of at the next tick, and
        so does the first block of a new link session (the link holds back the blocks
        composed before its first read). The grid is untouched: an extra block repeats the
        last tick's heartbeat, at most one goes out per period, and the link still sends
        only the newest block, one exchange at a time."""
        now = time.monotonic()
        block, token = self._compose(now)
        settled = token is not None and token is not self._token_posted
        if not self._extra_due or not (settled or self._session != self._session_posted):
            return
        self._post(block, token, self._heartbeat_posted)
        self._extra_due = False
        self.metrics.plc_extra_blocks.inc()

    def _take_link_news(self) -> None:
        """Hand the inspection what the link reported since the last tick: the newest block
        that reached the PLC, then the newest inputs (in that order: an ack in a reply
        follows the write that delivered the result)."""
        w = self.link.written
        if w is not None and w.block_id != self._written_id:
            self._written_id = w.block_id
            self.inspection.written(w.token, w.t)
            if self.on_written is not None:
                self.on_written(w.token)
        r = self.link.reply
        if r is not None and r.seq != self._reply_seq:
            self._reply_seq = r.seq
            new_session = r.session != self._session
            self._session = r.session
            # A trigger in this reply was raised after the request of the reply before it.
            self.inspection.on_inputs(r.inputs, r.t_answered, new_session, self._t_prev_sent, r.session)
            self._t_prev_sent = r.t_sent

    def _inputs_fresh(self, now: float) -> bool:
        r = self.link.reply
        self.input_age = None if r is None else now - r.t_sent
        age = self.input_age if self.input_age is not None else now - self._started
        # Inputs of a session that has ended say nothing about the PLC now, however young.
        fresh = r is not None and r.session == self.link.sessions and age <= self.max_input_age
        exchange = r.t_answered - r.t_sent if r is not None and r.session == self.link.sessions else None
        self.report.inputs(fresh, age, now, exchange)
        return fresh

    def _final_write(self) -> None:
        """The last block: READY cleared, fail-safe result, SHUTTING_DOWN (the inspection's
        shutdown block); retried through a reconnect within FINAL_WRITE_BUDGET_S."""
        now = time.monotonic()
        outputs = dataclasses.replace(self.inspection.shutdown(now), heartbeat=self.heartbeat)
        self.report.final(outputs.status, outputs.fault_code, now)
        ok = self.link.final_write(self._block_id, outputs, FINAL_WRITE_BUDGET_S, self._session)
        self.final_write_ok = ok
        # What the final block answered, as the PLC reads it: with the decision lines, the
        # journal says what the PLC received for every trigger, the last one included.
        answer = {"trigger_seq": outputs.result_seq, "part_id": outputs.part_id,
                  "result": ResultCode(outputs.result_code).name} if outputs.status & StatusBit.RESULT_VALID else {}
        log_event(log, "final_write", logging.INFO if ok else logging.ERROR, written=ok, fault=FaultCode.SHUTTING_DOWN.name,
                  heartbeat=self.heartbeat, answered=answer or None, connects=self.link.final_connects,
                  reason="shutdown" if ok else f"PLC not reachable: {self.link.last_error}")
