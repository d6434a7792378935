"""The PLC protocols: one table, from which every list of protocol names derives.

Like python-can's backend table (`can/interfaces/__init__.py`), each row names where a
protocol's parts live, as "module:attribute" strings imported only when that protocol is
chosen: a Modbus-only station never loads asyncua or pycomm3. The config's `plc.protocol`,
the simulator's `plcbridge sim NAME` commands, the demo's and the benchmark's `--protocol`
choices and the generated docs all come from here.

Adding a protocol (README "Adding a protocol"): its wire form `plcbridge/contract/NAME.py`,
its adapter `adapters/plc/NAME.py`, its simulator front-end `simulators/NAME.py`, one row
below, and its settings section in plcbridge/config.py (the schema's one home) and in
simulators/device.py.

An unknown name and a module that fails to import are different errors: the first is a
typo (`UnknownProtocol`, listing the known names), the second a broken installation
(the module's own ImportError, raised as is; plcbridge/registry.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plcbridge.registry import load


@dataclass(frozen=True)
class Protocol:
    name: str  # as in plc.protocol and `plcbridge sim NAME`
    title: str  # for people: logs, help, docs
    default_port: int  # the protocol's usual TCP port on a PLC (the simulator listens there by default)
    adapter: str  # "module:Class" of the PlcAdapter (adapters/plc/)
    frontend: str | None  # "module:Class" of the simulator front-end; None: nothing listens (in-process)
    wire: str | None  # module of the contract's wire form, with markdown_tables(); None: no wire


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("modbus", "Modbus TCP", 5020, "plcbridge.adapters.plc.modbus:ModbusAdapter",
             "plcbridge.simulators.modbus:ModbusSimulator", "plcbridge.contract.modbus"),
    Protocol("opcua", "OPC UA", 4840, "plcbridge.adapters.plc.opcua:OpcUaAdapter",
             "plcbridge.simulators.opcua:OpcUaSimulator", "plcbridge.contract.opcua"),
    Protocol("enip", "EtherNet/IP", 44818, "plcbridge.adapters.plc.enip:EnipAdapter",
             "plcbridge.simulators.enip:EnipSimulator", "plcbridge.contract.enip"),
)}

#: Every protocol name, in table order.
NAMES: tuple[str, ...] = tuple(PROTOCOLS)
#: The protocols a network PLC simulator can stand in for (`plcbridge sim NAME`, demo, bench).
SIMULATED: tuple[str, ...] = tuple(n for n, p in PROTOCOLS.items() if p.frontend is not None)


class UnknownProtocol(ValueError):
    """A name that is not in the table."""


def get(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise UnknownProtocol(f"unknown PLC protocol {name!r}; known: {', '.join(NAMES)}") from None


def adapter_class(name: str) -> Any:
    """The PlcAdapter class of protocol `name`."""
    return load(get(name).adapter)


def frontend_class(name: str) -> Any:
    """The simulator front-end class of protocol `name`."""
    frontend = get(name).frontend
    if frontend is None:
        raise UnknownProtocol(f"PLC protocol {name!r} has no network simulator; simulated: {', '.join(SIMULATED)}")
    return load(frontend)
