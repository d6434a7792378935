"""The PLC adapter interface. Which class serves which protocol is a column of the protocol
table (plcbridge/protocols.py).

An adapter is one connection. The link never repairs one: after a failure that leaves the
session in doubt, the connection is dropped and `plcbridge.link.PlcLink` builds a *fresh*
adapter, because a client that has seen a dead connection cannot be trusted (half-read
responses, stale transaction ids, drivers whose `connected` flag lies). A reply is never
abandoned on a short deadline while the session is kept, so a stale reply cannot be taken
for the answer to a later request.
"""

from __future__ import annotations

import abc
import errno
from typing import Any

from plcbridge.contract import Inputs, Outputs


class PlcError(RuntimeError):
    """The exchange or connect failed.

    `written`: the output block of this exchange is known to have reached the PLC (its write
    was answered) although the rest failed; the bridge counts that block as delivered.
    `keep_session`: the PLC answered, refusing this one request for a passing reason (busy);
    the session is sound and the next exchange goes on it. Otherwise the session is dropped
    and a fresh adapter is built after the backoff.
    """

    def __init__(self, message: str, *, written: bool = False, keep_session: bool = False) -> None:
        super().__init__(message)
        self.written = written
        self.keep_session = keep_session


class PlcConfigError(PlcError):
    """The PLC answered that the bridge's configuration does not fit it (illegal address or
    function, unknown node, missing tag, wrong type). Reconnecting cannot fix that: the link
    logs it once per window and retries at the backoff's maximum, never per tick.
    `setting` names what to change."""

    def __init__(self, message: str, *, setting: str, written: bool = False) -> None:
        super().__init__(message, written=written)
        self.setting = setting


class PlcUnreachable(PlcError):
    """Nothing accepted the connection (refused, no route to the host, no program on the
    loop channel): no session was opened on the PLC, so looking for it again soon costs it
    nothing. The link retries these every `plc.reconnect_min_ms`, without growing the
    backoff, so that a PLC that comes back is found at once (`unreachable()` also
    recognises the refusals a driver wraps in errors of its own)."""


# connect(2) errors that mean nobody accepted: the PLC saw at most a SYN.
_NOT_ACCEPTED = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})


def unreachable(e: BaseException) -> bool:
    """Did this connect fail before anything accepted it? A `PlcUnreachable`, or a refused or
    unroutable connect anywhere in the exception's chain (drivers wrap the OSError, and
    `raise ... from None` still keeps it as the context)."""
    seen: set[int] = set()
    link: BaseException | None = e
    while link is not None and id(link) not in seen:
        if isinstance(link, PlcUnreachable) or (isinstance(link, OSError) and link.errno in _NOT_ACCEPTED):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


class PlcAdapter(abc.ABC):
    """One connection to one PLC, carrying the signal contract. Used by one thread only
    (the link's), which connects it, makes its exchanges and closes it."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection; may block up to the connect timeout. Raise PlcError."""

    @abc.abstractmethod
    def exchange(self, outputs: Outputs, timeout_s: float) -> Inputs:
        """Write the output block, then read the input block; give up after timeout_s.

        timeout_s is the link timeout, not the period: a slow PLC's reply is waited for, and
        the session is sound as long as replies come. Raise PlcError (with `written` set when
        the write is known to have landed) on any failure.
        """

    def read(self, timeout_s: float) -> Inputs | None:
        """Read the input block and write nothing. The link makes this read first on every
        new session, before its first write, so that the first block a PLC is shown on a
        session is composed from what that PLC says now (a restarted PLC is never shown an
        answer meant for its previous run, nor a block saying the inputs are stale). None:
        this adapter cannot read without writing; the session's first exchange reads."""
        return None

    def read_inputs(self, outputs: Outputs, timeout_s: float) -> Inputs:
        """Read the input block between two ticks (plc.poll_ms). `outputs` is the block last
        sent: the default sends it again in an ordinary exchange, the same values, which is
        one round trip where the protocol reads and writes in one request (Modbus FC23). An
        adapter whose write costs a request of its own reads alone (OPC UA). Raise PlcError."""
        return self.exchange(outputs, timeout_s)

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; must not raise."""

    def describe(self) -> str:
        """Where this adapter connects to, for logs (never credentials)."""
        return f"{self.settings.protocol}://{self.settings.host}:{self.settings.port}"
