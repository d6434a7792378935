"""The `loop` adapter: a PLC program in this very process, found by channel name
(`[plc.loop] channel`) in the channel table plcbridge/contract/loop.py.

It behaves like the network adapters, so that the link is tested as it runs on a station:
connect() finds the channel (or fails, naming it and the channels there are); one exchange
writes the output block, then reads the input block, as one step of the program (under its
lock, like a Modbus FC23 transaction); a channel whose program stopped or restarted ends the
session with a PlcError, and the link reconnects after its backoff, finding the channel again
once a program is attached. A program that does not free its lock within the link timeout is
a PLC that does not answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plcbridge.adapters.plc.base import PlcAdapter, PlcError, PlcUnreachable
from plcbridge.contract import Inputs, Outputs
from plcbridge.contract import loop as wire

if TYPE_CHECKING:
    from plcbridge.config import LoopPlcSettings


class LoopAdapter(PlcAdapter):
    def __init__(self, settings: LoopPlcSettings) -> None:
        super().__init__(settings)
        self.channel = settings.loop.channel
        self._attachment: wire.Attachment | None = None

    def connect(self) -> None:
        attachment = wire.find(self.channel)
        if attachment is None:
            there = ", ".join(repr(c) for c in wire.channels()) or "none"
            raise PlcUnreachable(f"no PLC program is attached to loop channel {self.channel!r} (plc.loop.channel) "
                           f"in this process; attached: {there}")
        self._attachment = attachment

    def read(self, timeout_s: float) -> Inputs:
        return self._step(None, timeout_s)

    def exchange(self, outputs: Outputs, timeout_s: float) -> Inputs:
        return self._step(outputs, timeout_s)

    def _step(self, outputs: Outputs | None, timeout_s: float) -> Inputs:
        attachment = self._attachment
        if attachment is None:
            raise PlcError("not connected")
        try:
            return attachment.exchange(outputs, timeout_s)
        except wire.ChannelClosed as e:
            raise PlcError(str(e)) from e
        except TimeoutError as e:
            raise PlcError(str(e)) from e
        except wire.InvalidInputs as e:
            raise PlcError(str(e), written=True) from e
        except ValueError as e:  # an output value out of its signal's range, refused before the program saw it
            raise PlcError(f"ValueError: {e}") from e
        except Exception as e:  # noqa: BLE001 - the program failed: a PLC that answers with a device failure
            raise PlcError(f"the PLC program on loop channel {self.channel!r} failed: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        self._attachment = None

    def describe(self) -> str:
        return f"loop://{self.channel}"
