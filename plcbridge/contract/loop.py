"""The `loop` protocol's wire: named channels inside one process, where a PLC program is
attached and the bridge's adapter finds it (python-can's VirtualBus, pyserial's loop://).

    simulators/loop.py  --attach(channel, serve, lock)-->  [channel table]  <--find(channel)--  adapters/plc/loop.py

Both ends import only this module, so the adapter never imports the simulator (the layering
plcbridge.tools.imports checks). What crosses a channel is what crosses a real wire: a copy of
the output block and of the input block, every signal checked against its type
(`check_range`), never a reference to either side's objects.

One exchange is one step of the attached program, under the lock the program runs under:
the output block is handed over first (the write), then the input block is read (the read),
so the inputs returned already reflect this very write, as with a Modbus FC23. An exchange
without an output block (None) is a read alone, as a session's first read is. A channel
stays attached until its owner detaches it (the simulated PLC stopped) or renews it (the PLC
restarted: a fresh attachment under the same name). Either way the old attachment is closed
and every exchange on it raises `ChannelClosed`: a session on a PLC that went away is over,
and the adapter's client (the link) reconnects, finding the channel again when it is back.

Thread-safe: attach, find, renew and detach may be called from any thread, and `detach` /
`renew` also from inside the owner's lock (a restart runs there). The table's own lock is never
held while a program runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from plcbridge.contract import INPUT_SIGNALS, OUTPUT_SIGNALS, Inputs, Outputs, check_range

#: What an owner attaches: (the output block, or None for a read alone; time.monotonic() of
#: its arrival) -> the input block.
Serve = Callable[[Outputs | None, float], Inputs]


class ChannelBusy(ValueError):
    """The channel name has a program attached already."""


class ChannelClosed(RuntimeError):
    """The attachment was detached or renewed: the session on it is over."""


class InvalidInputs(ValueError):
    """The program's input block does not fit the contract; the output block was delivered."""


def _wire_outputs(outputs: Outputs) -> Outputs:
    return Outputs(**{s.name: check_range(s, getattr(outputs, s.name)) for s in OUTPUT_SIGNALS})


def _wire_inputs(inputs: Inputs) -> Inputs:
    return Inputs(**{s.name: check_range(s, getattr(inputs, s.name)) for s in INPUT_SIGNALS})


class Attachment:
    """One program attached under one channel name, until it is detached or renewed."""

    def __init__(self, channel: str, serve: Serve, lock: threading.Lock, generation: int) -> None:
        self.channel = channel
        self.generation = generation  # 1 for the first attachment of this program, +1 per renew
        self._serve = serve
        self._lock = lock
        self._open = True

    @property
    def attached(self) -> bool:
        return self._open

    def exchange(self, outputs: Outputs | None, timeout_s: float) -> Inputs:
        """Hand the output block to the program (None: none, a read alone), then return its
        input block, as one step under the program's lock. Raises ChannelClosed when this
        attachment is over, TimeoutError when the program's lock is not free within
        `timeout_s`, ValueError for an output value out of its signal's range (nothing
        delivered), InvalidInputs for such an input value (the outputs were delivered);
        whatever the program raises is raised as is."""
        block = None if outputs is None else _wire_outputs(outputs)
        if not self._open:
            raise ChannelClosed(self._closed_text())
        if not self._lock.acquire(timeout=max(timeout_s, 0.0)):
            raise TimeoutError(f"the PLC program on loop channel {self.channel!r} did not answer within {timeout_s:g} s")
        try:
            # Checked under the lock a restart runs under: a block never reaches the program of
            # a session that ended while it waited.
            if not self._open:
                raise ChannelClosed(self._closed_text())
            inputs = self._serve(block, time.monotonic())
        finally:
            self._lock.release()
        try:
            return _wire_inputs(inputs)
        except ValueError as e:
            raise InvalidInputs(f"the PLC program's input block: {e}") from e

    def renew(self) -> "Attachment":
        """Close this attachment and attach the same program afresh under the same name (a
        PLC restart: every session on the old one ends). Returns the new attachment; this one
        is returned unchanged when it was closed already (its owner detached it)."""
        with _table_lock:
            if not self._open or _table.get(self.channel) is not self:
                return self
            self._open = False
            fresh = Attachment(self.channel, self._serve, self._lock, self.generation + 1)
            _table[self.channel] = fresh
            return fresh

    def detach(self) -> None:
        """Close this attachment and free its channel name; idempotent."""
        with _table_lock:
            self._open = False
            if _table.get(self.channel) is self:
                del _table[self.channel]

    def _closed_text(self) -> str:
        return f"loop channel {self.channel!r} was detached (the PLC program stopped or restarted)"

    def __repr__(self) -> str:
        state = "attached" if self._open else "closed"
        return f"<loop Attachment {self.channel!r} #{self.generation} {state}>"


_table: dict[str, Attachment] = {}
_table_lock = threading.Lock()


def attach(channel: str, serve: Serve, lock: threading.Lock) -> Attachment:
    """Attach a program under `channel`: `serve(outputs, t)` runs with `lock` held, the lock
    the program's clock runs under too. Raises ChannelBusy if the name is taken."""
    if not channel:
        raise ValueError("a loop channel needs a name")
    with _table_lock:
        if channel in _table:
            raise ChannelBusy(f"loop channel {channel!r} has a PLC program attached already")
        attachment = _table[channel] = Attachment(channel, serve, lock, 1)
        return attachment


def find(channel: str) -> Attachment | None:
    """The attachment under `channel` now, or None."""
    with _table_lock:
        return _table.get(channel)


def channels() -> tuple[str, ...]:
    """The names with a program attached now, sorted (for messages)."""
    with _table_lock:
        return tuple(sorted(_table))
