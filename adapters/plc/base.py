"""The PLC adapter interface, and the registry that picks a protocol by name.

An adapter is one connection. The write loop never repairs one: after any failure the
connection is dropped and `plcbridge.link.PlcLink` builds a *fresh* adapter, because a
client that has seen a dead connection cannot be trusted (half-read responses, stale
transaction ids, drivers whose `connected` flag lies).
"""

from __future__ import annotations

import abc
from typing import Any

from plcbridge.adapters.registry import resolve

from plcbridge.contract import Inputs, Outputs


class PlcError(RuntimeError):
    """The exchange or connect failed; the connection is dropped and rebuilt."""


class PlcAdapter(abc.ABC):
    """One connection to one PLC, carrying the signal contract."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection; may block up to the connect timeout. Raise PlcError."""

    @abc.abstractmethod
    def exchange(self, outputs: Outputs, deadline_s: float) -> Inputs:
        """Write the output block, then read the input block, within deadline_s seconds.

        Raise PlcError on any failure, including a blown deadline. Called only from the
        write loop's thread.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; must not raise."""

    def describe(self) -> str:
        """Where this adapter connects to, for logs (never credentials)."""
        return f"{self.settings.protocol}://{self.settings.host}:{self.settings.port}"


# protocol name -> "module:Class", imported only when chosen.
REGISTRY: dict[str, str] = {
    "modbus": "plcbridge.adapters.plc.modbus:ModbusAdapter",
    "opcua": "plcbridge.adapters.plc.opcua:OpcUaAdapter",
    "enip": "plcbridge.adapters.plc.enip:EnipAdapter",
}


def adapter_class(protocol: str) -> type[PlcAdapter]:
    return resolve(REGISTRY, protocol, "PLC protocol")
