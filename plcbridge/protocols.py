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

One row is no network protocol: `loop`, a PLC program in this very process (python-can's
VirtualBus, pyserial's loop://). Its "wire" is a table of named channels
(plcbridge/contract/loop.py) where the front-end simulators/loop.py attaches a program and the
adapter finds it; nothing listens, so it has no port (0), no device-file section and no
`plcbridge sim` command: `network` is False and it is not in SIMULATED. Tests use it where the
PLC is only the handshake partner.

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
    default_port: int  # the usual TCP port on a PLC (the simulator listens there by default); 0: no port
    adapter: str  # "module:Class" of the PlcAdapter (adapters/plc/)
    frontend: str | None  # "module:Class" of the simulator front-end (ThreadedFrontend); None: none
    wire: str | None  # module of the contract's wire form (with markdown_tables() if it is documented); None: no wire
    # Over a network: the front-end serves a port (`plcbridge sim NAME`, demo, bench). False: in-process (loop).
    network: bool = True


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("modbus", "Modbus TCP", 5020, "plcbridge.adapters.plc.modbus:ModbusAdapter",
             "plcbridge.simulators.modbus:ModbusSimulator", "plcbridge.contract.modbus"),
    Protocol("opcua", "OPC UA", 4840, "plcbridge.adapters.plc.opcua:OpcUaAdapter",
             "plcbridge.simulators.opcua:OpcUaSimulator", "plcbridge.contract.opcua"),
    Protocol("enip", "EtherNet/IP", 44818, "plcbridge.adapters.plc.enip:EnipAdapter",
             "plcbridge.simulators.enip:EnipSimulator", "plcbridge.contract.enip"),
    Protocol("loop", "in-process loop", 0, "plcbridge.adapters.plc.loop:LoopAdapter",
             "plcbridge.simulators.loop:LoopSimulator", "plcbridge.contract.loop", network=False),
)}

#: Every protocol name, in table order.
NAMES: tuple[str, ...] = tuple(PROTOCOLS)
#: The protocols a network PLC simulator can stand in for (`plcbridge sim NAME`, demo, bench).
SIMULATED: tuple[str, ...] = tuple(n for n, p in PROTOCOLS.items() if p.frontend is not None and p.network)


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
    """The simulator front-end class of protocol `name` (for `loop`, the in-process one: not
    in SIMULATED, which lists the network simulators)."""
    frontend = get(name).frontend
    if frontend is None:
        raise UnknownProtocol(f"PLC protocol {name!r} has no simulator front-end; simulated: {', '.join(SIMULATED)}")
    return load(frontend)
