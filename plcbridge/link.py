"""The PLC link: the one thread that talks to the PLC, so the write loop never waits on it.

    write loop --post(newest block)--> [one slot] --> link thread: connect, exchange, repeat
    write loop <--reply (inputs + when they were asked for) / written (which block landed)--

The write loop composes a block on time every period and `post()`s it: that only replaces
the block in a one-place slot. The link thread takes the newest block whenever the previous
exchange is complete, so at most one exchange is in flight and a block that was superseded
before it could be sent is skipped (counted), never queued. A reply that comes later than
one period is used, counted and its age measured, and said once per log window
(`plc_exchanges_late`, naming timing.period_ms); it is no reason to drop the session.

Between two ticks, once no exchange has started for `plc.poll_ms` (default half a period),
the inputs are read again (`PlcAdapter.read_inputs`: the block last sent, the same values,
goes out again where reading and writing is one request), so that a trigger is seen within
about half a period instead of a whole one.

The session is dropped only on a transport error, a protocol state it cannot recover from
(`PlcError` without `keep_session`), or when the PLC has answered nothing for
`plc.link_timeout_ms`. Then the adapter is closed and, after the backoff, a *fresh* one is
built. The backoff doubles from `reconnect_min_ms` to `reconnect_max_ms` (a true maximum,
jitter included) and falls back to the minimum only once a session has been answering for
`reconnect_reset_ms`: a PLC that accepts connections and then fails every exchange is not
reconnected to at tick rate. A connect that nothing accepted (refused, no route: see
`unreachable()`) cost the PLC nothing and is retried every `reconnect_min_ms` without
touching the backoff, so a PLC that comes back is found within about that. A PLC that says
the configuration does not fit it (`PlcConfigError`: illegal address, unknown node, missing
tag) is retried at the maximum.
Every log event of the link is rate-limited per target, with a suppressed count.

Every session begins with a read (`PlcAdapter.read`: the input block, nothing written), before
its first write. A block carries the link session whose inputs the write loop had read when it
composed it, and a block composed before the current session's first read (the write loop had
not yet seen what the PLC on the other end says) is not sent: the read wakes the write loop,
which composes a block from it at once (or at the next tick), and that is the session's first
write. So the first block a PLC is shown on a session is composed from its own inputs: no
answer held for a previous run of a restarted PLC, and no PLC_INPUTS_STALE that is not true.
Only the final block is never held back; if it was composed before the read, or the adapter
cannot read alone, it goes out as `session_start` makes it: on a triggered station without
any answer, since the PLC may have restarted and an answer held for its previous run must
never reach the new one (docs/plc-interface.md, "Start, reconnect and PLC restart").

What the write loop reads are two immutable records, replaced whole (an attribute
assignment is atomic), so it never takes a lock the link thread could hold:

- `reply`: the newest inputs, with the time the request that fetched them was sent (the
  inputs are at least that fresh), and a sequence number that changes with every reply;
- `written`: the newest block known to have reached the PLC, with the token the write loop
  attached to it (what it was presenting), so the inspection logic learns what the PLC got.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from plcbridge.adapters.plc.base import PlcAdapter, PlcConfigError, PlcError, unreachable
from plcbridge.backoff import Reconnector
from plcbridge.contract import Inputs, Outputs
from plcbridge.logs import get_logger, log_event
from plcbridge.metrics import Metrics
from plcbridge.protocols import adapter_class

log = get_logger("plc")

# The final block's own reconnect policy, inside the final write's budget: the backoff is not
# waited for, but a PLC that cannot take the block is not stormed either (a PLC that refused
# our configuration is not tried again; one that refuses connections is tried FINAL_CONNECTS
# times, FINAL_RETRY_S apart).
FINAL_CONNECTS = 3
FINAL_RETRY_S = 0.25
# plc.poll_ms unset: the inputs are read again half a period after the last exchange, but not
# sooner than this (at a 4 ms period and less, once per tick is often enough).
MIN_DEFAULT_POLL_S = 0.002


@dataclass(frozen=True)
class Reply:
    """The newest inputs read from the PLC."""

    seq: int  # +1 with every reply: the write loop hands each reply to the inspection once
    session: int  # +1 with every connection: the first reply of a session starts the handshake anew
    inputs: Inputs
    t_sent: float  # time.monotonic() when the request went out: the inputs are no older
    t_answered: float
    block_id: int  # the block written by the same exchange


@dataclass(frozen=True)
class Written:
    """The newest block known to have reached the PLC."""

    block_id: int
    token: Any
    t: float


@dataclass(frozen=True)
class _Posted:
    block_id: int
    outputs: Outputs
    token: Any
    # The link session whose inputs the write loop had read when it composed it (-1: none
    # yet); None: the sender does not track sessions, and the block is sent as it is.
    session: int | None


@dataclass
class _LateExchanges:
    """Exchanges slower than the period since the last plc_exchanges_late line."""

    count: int = 0
    slowest: float = 0.0
    next_line: float = 0.0  # monotonic: when the next line may be written
    exchanges_before: int = 0  # PlcLink.exchanges at the last line


class PlcLink:
    def __init__(self, settings: Any, metrics: Metrics, period_s: float,
                 factory: Callable[[Any], PlcAdapter] | None = None, log_window_s: float = 5.0) -> None:
        self.settings = settings
        self.metrics = metrics
        self.period = period_s
        # Late exchanges are said once per log window (logging.rate_limit_s), counted in between.
        self.log_window_s = log_window_s
        self._late = _LateExchanges()
        self.link_timeout = settings.link_timeout_ms / 1000
        self._factory = factory or adapter_class(settings.protocol)
        self._adapter: PlcAdapter | None = None  # used by the link thread only
        self._slot: _Posted | None = None
        self._posted = threading.Condition(threading.Lock())
        self._stop = threading.Event()
        self._wake = threading.Event()  # cuts a backoff wait short: stop, or the final write
        self._retry = Reconnector(settings.reconnect_min_ms / 1000, settings.reconnect_max_ms / 1000, self._wake,
                                  reset_after_s=settings.reconnect_reset_ms / 1000)
        self._final_id: int | None = None
        # Reading the inputs between ticks: the block last sent goes out again once no exchange
        # has started for `poll_s` (plc.poll_ms; default half a period, at least 2 ms; 0: never).
        default_poll_s = max(period_s / 2, MIN_DEFAULT_POLL_S)
        self.poll_s = default_poll_s if settings.poll_ms is None else settings.poll_ms / 1000
        self._sent: _Posted | None = None  # the block last sent
        self._t_sent = 0.0  # when the last exchange started
        self._answered = False  # the last exchange brought a reply
        self._final_connects = 0  # connects made for the final block
        self._final_hopeless = False  # the final block cannot be delivered: final_write stops waiting
        self._delivered = threading.Condition(threading.Lock())
        self._ever_connected = False
        self.sessions = 0
        self._written_session = 0  # the last session on which a block reached the PLC
        self._last_sent_id = -1
        self.reply: Reply | None = None
        self.written: Written | None = None
        self._last_block: tuple[Outputs, float] | None = None  # see last_block
        # What a block composed before the current session's first reply becomes on the wire
        # (the write loop sets it from its inspection: TriggeredInspection.session_start).
        self.session_start: Callable[[Outputs], Outputs] | None = None
        # Called on the link thread after a reply whose inputs changed (a trigger, an ack) or
        # that began a session: the write loop's wake-up, so that it acts on it at once. Replies
        # that say nothing new wait for the next tick: no work between ticks for them.
        self.on_news: Callable[[], None] = lambda: None
        self.last_error: str | None = None
        self.exchanges = 0
        self._thread = threading.Thread(target=self._run, name="plc-link", daemon=True)

    @property
    def connected(self) -> bool:
        return self._adapter is not None

    @property
    def delivering(self) -> bool:
        """A block has reached the PLC on the current session (its write was answered). A
        session's first read comes before its first write: until the write is answered, the
        bridge does not know that this PLC takes its blocks (one that refuses the output
        addresses answers reads all the same), and READY is not reported as written."""
        return self._adapter is not None and self._written_session == self.sessions

    @property
    def last_block(self) -> tuple[Outputs, float] | None:
        """The newest output block known to have reached the PLC (its write was answered), as
        it went on the wire, and when (monotonic); None before any. Kept when the session is
        lost: it is what the PLC last got. For the station page and `plcbridge status`; one
        tuple replaced whole, so a reader on another thread never sees half of it."""
        return self._last_block

    @property
    def adapter(self) -> PlcAdapter | None:
        """The adapter of the current session (None between sessions), for diagnostics and
        tests: read its state (describe(), ModbusAdapter.fc23); only the link thread calls it."""
        return self._adapter

    def start(self) -> "PlcLink":
        self._thread.start()
        return self

    # ------------------------------------------------------------------ write loop side

    def post(self, block_id: int, outputs: Outputs, token: Any = None, session: int | None = None) -> None:
        """Offer the newest block, composed knowing the inputs of link session `session` (the
        `Reply.session` of the newest reply the write loop had taken; -1 before any). Never
        blocks beyond a lock held for a few instructions."""
        with self._posted:
            self._slot = _Posted(block_id, outputs, token, session)
            self._posted.notify()

    def final_write(self, block_id: int, outputs: Outputs, budget_s: float, session: int | None = None) -> bool:
        """Deliver the last block within `budget_s`, reconnecting at once if need be.
        True once it is known to have reached the PLC (its write was answered)."""
        end = time.monotonic() + budget_s
        self._final_id = block_id
        self.post(block_id, outputs, None, session)
        self._wake.set()
        with self._delivered:
            while not self._is_written(block_id):
                left = end - time.monotonic()
                if left <= 0 or self._final_hopeless:
                    return False
                self._delivered.wait(left)
        return True

    @property
    def final_connects(self) -> int:
        """Connections opened (or tried) for the final block: at most FINAL_CONNECTS."""
        return self._final_connects

    def _is_written(self, block_id: int) -> bool:
        w = self.written
        return w is not None and w.block_id >= block_id

    def close(self) -> None:
        """Stop the link thread and close the connection; returns within about a second
        even if a connect or an exchange is in progress (the thread is a daemon)."""
        self._stop.set()
        self._wake.set()
        with self._posted:
            self._posted.notify()
        self._thread.join(timeout=1.0)
        if not self._thread.is_alive():
            self._drop_adapter()
        self.metrics.plc_connected.set(0)

    # ------------------------------------------------------------------ link thread

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            if self._adapter is None:
                if self._final_id is None and delay > 0:
                    self._retry.wait(delay)  # cut short by the final write, or stop
                if self._stop.is_set():
                    break
                if self._final_id is not None and not self._final_connect_allowed(delay):
                    continue
                delay = self._connect()
                continue
            taken = self._take()
            if taken is None:
                continue
            delay = self._exchange(*taken)

    def _final_connect_allowed(self, delay: float) -> bool:
        """The final block's reconnect policy (FINAL_CONNECTS, FINAL_RETRY_S); when it is used
        up, final_write is told at once instead of waiting out its budget."""
        if self._final_hopeless or self._final_connects >= FINAL_CONNECTS:
            self._give_up_final()
            self._stop.wait(0.1)
            return False
        if self._final_connects and delay > 0:
            self._stop.wait(FINAL_RETRY_S)
        self._final_connects += 1
        return True

    def _give_up_final(self) -> None:
        with self._delivered:
            self._final_hopeless = True
            self._delivered.notify_all()

    def _take(self) -> tuple[_Posted, bool] | None:
        """The newest posted block; waits for one (checking for stop now and then). With no
        new block by the poll time, the block last sent and True: read the inputs."""
        # Only after an exchange that was answered: a PLC that says it is busy is not asked more.
        last = self._sent
        poll_at = self._t_sent + self.poll_s if self.poll_s > 0 and last is not None and self._answered else None
        with self._posted:
            if self._slot is None or self._slot.block_id <= self._last_sent_id:
                wait = 0.1 if poll_at is None else min(0.1, max(0.0, poll_at - time.monotonic()))
                self._posted.wait(wait)
            posted, self._slot = self._slot, None
            if posted is not None and self._before_first_read(posted):
                posted = None  # superseded by the block composed from this session's read, next
        if posted is None or posted.block_id <= self._last_sent_id:
            if last is not None and poll_at is not None and time.monotonic() >= poll_at and self._final_id is None:
                self.metrics.plc_polls.inc()
                return last, True
            return None
        if self._last_sent_id >= 0 and posted.block_id > self._last_sent_id + 1:
            self.metrics.plc_blocks_superseded.inc(posted.block_id - self._last_sent_id - 1)
        self._last_sent_id = posted.block_id
        self._sent = posted
        return posted, False

    def _before_first_read(self, posted: _Posted) -> bool:
        """Composed before this session's first read, which has been made: held back (not the
        final block, which has nothing newer to wait for)."""
        r = self.reply
        return (posted.session is not None and posted.session != self.sessions and posted.block_id != self._final_id
                and r is not None and r.session == self.sessions)

    def _connect(self) -> float:
        """Build and connect a fresh adapter; the delay before the next attempt if it failed."""
        adapter = self._factory(self.settings)
        target = adapter.describe()
        try:
            adapter.connect()
        except Exception as e:  # noqa: BLE001 - any failure to connect is retried
            self._close(adapter)
            config = isinstance(e, PlcConfigError)
            # Refused: nothing was opened on the PLC, so it is looked for again at the
            # minimum (found within about reconnect_min_ms once it is back); accepted and
            # then failed: the backoff, which protects the PLC's connection slots.
            absent = not config and unreachable(e)
            delay = self._retry.absent() if absent else self._retry.failed(at_maximum=config)
            if config and self._final_id is not None:
                self._give_up_final()  # the PLC refuses our configuration: no second try
            self.last_error = f"connect failed: {e}"
            self.metrics.plc_errors.labels("config" if config else "connect").inc()
            log_event(log, "plc_config_error" if config else "plc_connect_failed", logging.ERROR if config else logging.WARNING,
                      target=target, reason=str(e), setting=getattr(e, "setting", None), refused=absent,
                      retry_in_ms=round(delay * 1000), rate_key=target)
            return delay
        self._adapter = adapter
        self.sessions += 1
        self._retry.opened()
        self.last_error = None
        self.metrics.plc_connected.set(1)
        if self._ever_connected:
            self.metrics.plc_reconnects.inc()
        log_event(log, "plc_connected", logging.INFO, target=target, reconnect=self._ever_connected, rate_key=target)
        self._ever_connected = True
        self._sent, self._answered = None, False  # no reads between ticks before this session's first write
        return self._first_read(adapter)

    def _first_read(self, adapter: PlcAdapter) -> float:
        """The session's first request: read the inputs, write nothing (see the module's
        docstring); the reconnect delay if the session ended."""
        t0 = time.monotonic()
        try:
            inputs = adapter.read(self.link_timeout)
        except PlcError as e:
            if e.keep_session:  # busy: the session's first exchange reads instead
                self.metrics.plc_errors.labels("refused").inc()
                log_event(log, "plc_request_refused", logging.WARNING, target=adapter.describe(), reason=str(e),
                          rate_key=adapter.describe())
                return 0.0
            return self._drop(adapter, e, time.monotonic() - t0)
        if inputs is not None:
            self._retry.answered()
            self._replied(inputs, t0, time.monotonic(), self._last_sent_id)
        return 0.0

    def _exchange(self, posted: _Posted, poll: bool = False) -> float:
        """One exchange of the newest block (`poll`: a read of the inputs between ticks, the
        block already delivered); the reconnect delay if the session ended."""
        adapter = self._adapter
        assert adapter is not None
        if posted.session is not None and posted.session != self.sessions and self.session_start is not None:
            # The final block composed before this session's inputs were read (or an adapter
            # that cannot read alone): the PLC on the other end may have restarted, so nothing
            # decided for an earlier session goes out on it.
            posted = _Posted(posted.block_id, self.session_start(posted.outputs), None, posted.session)
        t0 = self._t_sent = time.monotonic()
        self._answered = False
        try:
            if poll:
                inputs = adapter.read_inputs(posted.outputs, self.link_timeout)
            else:
                inputs = adapter.exchange(posted.outputs, self.link_timeout)
        except PlcError as e:
            t1 = time.monotonic()
            if e.written and not poll:
                self._mark_written(posted, t1)
            if e.keep_session:  # the next tick's block goes out next, as after any reply
                self.metrics.plc_errors.labels("refused").inc()
                log_event(log, "plc_request_refused", logging.WARNING, target=adapter.describe(), reason=str(e),
                          rate_key=adapter.describe())
                return 0.0
            if not e.written and not poll:
                self._requeue(posted)
            return self._drop(adapter, e, t1 - t0)
        t1 = time.monotonic()
        took = t1 - t0
        self.exchanges += 1
        self._retry.answered()
        self.metrics.plc_exchange_seconds.observe(took)
        if took > self.period:
            self._late_exchange(adapter, took, t1)
        if not poll:
            self._mark_written(posted, t1)
        self._replied(inputs, t0, t1, posted.block_id)
        self._answered = True
        return 0.0

    def _late_exchange(self, adapter: PlcAdapter, took: float, now: float) -> None:
        """An exchange slower than the period: used and counted, never a reason to reconnect,
        and said once per log window: a PLC that answers in 30 ms at a 10 ms period works,
        but not as the PLC programmer expects, and the log must say why."""
        self.metrics.plc_late_exchanges.inc()
        late = self._late
        late.count += 1
        late.slowest = max(late.slowest, took)
        if now < late.next_line:
            return
        period_ms = self.period * 1000
        log_event(log, "plc_exchanges_late", logging.WARNING, target=adapter.describe(), late=late.count,
                  exchanges=self.exchanges - late.exchanges_before, slowest_ms=round(late.slowest * 1000, 1),
                  last_ms=round(took * 1000, 1), period_ms=period_ms, setting="timing.period_ms",
                  reason=f"PLC exchanges take longer than timing.period_ms = {period_ms:g} ms (the write period): a "
                         "block is composed every period but only one exchange is in flight, so the PLC gets the "
                         "newest block when the last exchange is done; its heartbeat advances by more than one "
                         "between two updates, and answers and triggers wait for the exchange in flight. A PLC that "
                         "answers within the period, or a longer timing.period_ms, avoids it")
        self._late = _LateExchanges(next_line=now + self.log_window_s, exchanges_before=self.exchanges)

    def _replied(self, inputs: Inputs, t0: float, t1: float, block_id: int) -> None:
        previous = self.reply
        seq = previous.seq + 1 if previous is not None else 0
        self.reply = Reply(seq, self.sessions, inputs, t0, t1, block_id)
        if previous is None or previous.inputs != inputs or previous.session != self.sessions:
            self.on_news()  # a trigger, an ack, a new session: the write loop acts on it now

    def _requeue(self, posted: _Posted) -> None:
        """A block that did not reach the PLC goes out again on the next exchange (after a
        reconnect if need be) unless a newer one was posted meanwhile: the final block
        above all must not be lost to one failed attempt."""
        with self._posted:
            if self._slot is None:
                self._slot = posted
                self._last_sent_id = posted.block_id - 1

    def _mark_written(self, posted: _Posted, t: float) -> None:
        self._written_session = self.sessions
        self._last_block = (posted.outputs, t)
        with self._delivered:
            self.written = Written(posted.block_id, posted.token, t)
            self._delivered.notify_all()

    def _drop(self, adapter: PlcAdapter, e: PlcError, took: float) -> float:
        target = adapter.describe()
        config = isinstance(e, PlcConfigError)
        lived, answered = self._retry.session_s(), self._retry.answers
        delay = self._retry.failed(at_maximum=config)  # from the minimum again after reconnect_reset_ms of answers
        if config and self._final_id is not None:
            self._give_up_final()
        why = str(e) if took < self.link_timeout else f"no answer within plc.link_timeout_ms = {self.settings.link_timeout_ms} ({e})"
        self.last_error = why
        self._drop_adapter()
        self.metrics.plc_connected.set(0)
        self.metrics.plc_errors.labels("config" if config else "exchange").inc()
        if isinstance(e, PlcConfigError):
            log_event(log, "plc_config_error", logging.ERROR, target=target, reason=why, setting=e.setting,
                      retry_in_ms=round(delay * 1000), rate_key=target)
        else:
            log_event(log, "plc_connection_lost", logging.WARNING, target=target, reason=why,
                      session_s=round(lived, 3), answered=answered, retry_in_ms=round(delay * 1000), rate_key=target)
        return delay

    def _drop_adapter(self) -> None:
        adapter, self._adapter = self._adapter, None
        if adapter is not None:
            self._close(adapter)

    @staticmethod
    def _close(adapter: PlcAdapter) -> None:
        try:
            adapter.close()
        except Exception:  # noqa: BLE001 - closing must never take the link down
            pass


__all__ = ["PlcLink", "PlcError", "Reply", "Written"]
