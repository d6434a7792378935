"""EtherNet/IP front-end for the simulated PLC: a Logix-like tag server (cm-ethernetip 0.1.0).

cm-ethernetip is used only in this module, so it can be replaced without touching the rest:
it gives an asyncio EtherNet/IP server (`EipAdapter`) around a `LogixDispatcher` that serves
a `TagDatabase`: session registration, Forward Open, the tag list upload pycomm3 and pylogix
do on connect, Read/Write Tag by name or by symbol instance id, Multiple Service Packets
and bit writes (Read-Modify-Write).

The one hook we need is the dispatcher: every CIP request, including each service inside a
Multiple Service Packet and an Unconnected Send, goes through `dispatch()`. The outermost
call is one request from the wire, so:

- before it runs, `program.inputs` is copied into the PLC-written tags, so a read always
  returns the program's current state (an ack is visible to the bridge's very next read);
- tag services inside it are watched: a write to a PLC-written tag is refused (privilege
  violation) and counted, like any error answer to a tag service;
- after the whole request has been applied, if it wrote output tags, the output block is
  decoded once and passed to `program.on_outputs(..., time.monotonic())`. Decoding per tag
  would show the program half-written blocks. A request that writes only some of the
  output tags ("partial_block", as on OPC UA and Modbus: stored and passed on all the same),
  or a value outside the contract ("out_of_range"), is counted as a protocol error: the
  contract says one request carries the whole block.

The controller identifies itself as revision 32, so pycomm3 addresses tags by symbol
instance id as it does with any v21+ controller; pylogix uses symbolic names. An asyncio
task calls `program.tick()` about every millisecond. The program is single-threaded on the
server's event loop; a lock keeps `summary()` from another thread consistent.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import Any

from ethernetip.cip.identity_info import IdentityInfo
from ethernetip.cip.path import CipPath
from ethernetip.cip.service import CipServiceResponse
from ethernetip.cip.status import CipStatus
from ethernetip.logix import data_types as cip_types
from ethernetip.logix.logix_dispatcher import LogixDispatcher
from ethernetip.logix.tag import Tag
from ethernetip.logix.tag_database import TagDatabase
from ethernetip.protocol.eip_adapter import EipAdapter

from plcbridge.contract.enip import (
    TagSpec,
    carried_input_tags,
    carried_tags,
    decode_outputs,
    encode_inputs,
    out_of_contract,
)

from .device import DeviceSettings
from .frontend import ThreadedFrontend
from .program import SimulatedPlc

log = logging.getLogger(__name__)

TICK_S = 0.001
PRODUCT_NAME = "plcbridge simulated Logix"
REVISION = (32, 11)  # >= 21: clients use symbol instance ids, as with a current controller

_CIP_TYPE = {"DINT": cip_types.DINT, "REAL": cip_types.REAL}
_SYMBOL_CLASS = 0x6B
_GET_INSTANCE_ATTRIBUTE_LIST = 0x55
_SYMBOL_ATTRS = frozenset({1, 2, 3, 5, 6, 8, 10})
_MAX_REPLY = 480  # bytes of tag entries per reply, as cm-ethernetip and small controllers use
_BASE_TAG = 1 << 26  # software control bit: a base tag, not an alias
_READ_WRITE, _READ_ONLY = 0, 2  # External Access values
_NOT_ENOUGH_DATA = 0x13
_ATTRIBUTE_NOT_SUPPORTED = 0x14
_READ_SERVICES = frozenset({0x4C, 0x52})  # Read Tag, Read Tag Fragmented
_WRITE_SERVICES = frozenset({0x4D, 0x53, 0x4E})  # Write Tag, Write Tag Fragmented, Read-Modify-Write
_PARTIAL_TRANSFER = 0x06  # "more data follows": a normal answer to a fragmented transfer
_PRIVILEGE_VIOLATION = 0x0F
_DEVICE_FAILURE = 0x1E  # "embedded service error": what a program bug answers with


class EnipSimulator(ThreadedFrontend):
    """A SimulatedPlc behind an EtherNet/IP tag server, run on an asyncio loop in its own thread."""

    section, title = "enip", "EtherNet/IP"

    def __init__(self, settings: DeviceSettings, program: SimulatedPlc | None = None) -> None:
        super().__init__(settings, program)
        self._outputs: dict[str, tuple[TagSpec, Tag]] = {}  # tag name (lower case) -> spec, tag
        self._inputs: dict[str, tuple[TagSpec, Tag]] = {}
        self._written: set[str] = set()  # output signals written by the request being served
        self._depth = 0
        # What came over the wire, for tests and for anyone checking a client's behaviour.
        self.requests_served = 0  # outermost requests (a Multiple Service Packet counts once)
        self.block_writes = 0  # requests that wrote output tags

    # ------------------------------------------------------------------ asyncio side

    def _build_tags(self) -> TagDatabase:
        db = TagDatabase()
        e = self.settings.enip
        # The base tags and the optional ones its [enip] optional_outputs / optional_inputs
        # list, as a controller programmed for that station would hold them.
        outputs, inputs = carried_tags(e.output_tags), carried_input_tags(e.input_tags)
        for specs, names, table in ((outputs, e.output_tags, self._outputs), (inputs, e.input_tags, self._inputs)):
            for spec in specs:
                name = names[spec.signal.name]
                table[name.lower()] = (spec, db.add_tag(name, _CIP_TYPE[spec.type]))
        return db

    async def _serve(self) -> None:
        identity = IdentityInfo(product_name=PRODUCT_NAME, major_revision=REVISION[0], minor_revision=REVISION[1])
        server = EipAdapter(_ContractDispatcher(self._build_tags(), identity, self), identity)
        await server.listen(*self._bind_address())
        try:
            with self._lock:
                self._publish_inputs()
            await self._run_program(server.port)
        finally:
            await server.close()

    async def _tick_forever(self) -> None:
        while True:
            with self._lock:
                self.program.tick(time.monotonic())
                self._publish_inputs()
            await asyncio.sleep(TICK_S)

    def _publish_inputs(self) -> None:
        values = encode_inputs(self.program.inputs)
        for spec, tag in self._inputs.values():
            _store(tag, spec, values[spec.signal.name])

    # ------------------------------------------------------------------ request hooks

    def _request(self, serve: Any, service_code: int) -> CipServiceResponse:
        """One request from the wire, whole; `serve()` runs it through the dispatcher."""
        t = time.monotonic()
        with self._lock:
            self.requests_served += 1
            self._written.clear()
            try:
                self._publish_inputs()
                response = serve()
                if self._written:
                    self._take_output_block(t)
                return response
            except Exception as e:  # a bad request or a program bug must not kill the server
                log.exception("simulator failed on CIP service 0x%02X", service_code)
                self.program.protocol_error("internal_error", f"service 0x{service_code:02X}: {e!r}")
                return CipServiceResponse.error(service_code, CipStatus.error(_DEVICE_FAILURE))

    def _tag_of(self, path: CipPath, tags: TagDatabase) -> Tag | None:
        if path.symbolic_name is not None:
            return tags.find_by_name(path.symbolic_name)
        if path.class_id == _SYMBOL_CLASS and path.instance_id:
            return tags.find_by_instance_id(path.instance_id)
        return None

    def _before_tag_service(self, service_code: int, name: str) -> CipServiceResponse | None:
        """Refuse what a PLC would refuse the bridge; None lets the service run."""
        if service_code in _WRITE_SERVICES and name.lower() in self._inputs:
            self.program.protocol_error("write_to_input", f"service 0x{service_code:02X} on {name}, which the PLC writes")
            return CipServiceResponse.error(service_code, CipStatus.error(_PRIVILEGE_VIOLATION))
        return None

    def _after_tag_service(self, service_code: int, name: str, response: CipServiceResponse) -> None:
        status = response.status
        if status.is_success or status.general_status == _PARTIAL_TRANSFER:
            out = self._outputs.get(name.lower())
            if out is not None and service_code in _WRITE_SERVICES:
                self._written.add(out[0].signal.name)
            return
        kind = {0x05: "unknown_tag", 0xFF: "tag_service_refused"}.get(status.general_status, "cip_error")
        extra = "".join(f" 0x{s:04X}" for s in status.additional_status)
        self.program.protocol_error(kind, f"service 0x{service_code:02X} on {name}: status 0x{status.general_status:02X}{extra}")

    def _take_output_block(self, t: float) -> None:
        self.block_writes += 1
        raw: dict[str, int | float] = {}
        for spec, tag in self._outputs.values():
            value = tag.read_real(0) if spec.type == "REAL" else tag.read_dint(0)
            raw[spec.signal.name] = value
            why = out_of_contract(spec.signal, value) if spec.signal.name in self._written else None
            if why is not None:
                self.program.protocol_error("out_of_range", f"{tag.name} ({spec.signal.name}): {why}")
        if len(self._written) < len(self._outputs):
            missing = [spec.signal.name for spec, _ in self._outputs.values() if spec.signal.name not in self._written]
            self.program.protocol_error(
                "partial_block", f"one request wrote {len(self._written)} of the {len(self._outputs)} output tags, "
                                 f"leaving {', '.join(missing)} unwritten")
        self.program.on_outputs(decode_outputs(raw), t)


def _store(tag: Tag, spec: TagSpec, value: float) -> None:
    if spec.type == "REAL":
        tag.write_real(0, float(value))
    else:
        tag.write_dint(0, int(value))


class _ContractDispatcher(LogixDispatcher):
    """LogixDispatcher that tells the simulator where a wire request starts and ends and
    which tags its services touch (see the module docstring)."""

    def __init__(self, tags: TagDatabase, identity: IdentityInfo, sim: EnipSimulator) -> None:
        super().__init__(tags, identity)
        self._sim = sim

    def dispatch(self, service_code: int, path: CipPath, data: bytes) -> CipServiceResponse:
        sim = self._sim
        if sim._depth == 0:  # outermost: one request from the wire
            sim._depth = 1
            try:
                return sim._request(lambda: self._service(service_code, path, data), service_code)
            finally:
                sim._depth = 0
        return self._service(service_code, path, data)

    def _service(self, service_code: int, path: CipPath, data: bytes) -> CipServiceResponse:
        if service_code == _GET_INSTANCE_ATTRIBUTE_LIST and path.class_id == _SYMBOL_CLASS:
            return self._browse(path, data)
        # 0x4E is also Forward Close on the Connection Manager: a tag service needs a tag path.
        on_tag = path.symbolic_name is not None or path.class_id == _SYMBOL_CLASS
        if not on_tag or (service_code not in _READ_SERVICES and service_code not in _WRITE_SERVICES):
            return super().dispatch(service_code, path, data)
        tag = self._sim._tag_of(path, self.tags)
        name = tag.name if tag is not None else (path.symbolic_name or f"symbol instance {path.instance_id}")
        if tag is not None:
            refused = self._sim._before_tag_service(service_code, tag.name)
            if refused is not None:
                return refused
        response = super().dispatch(service_code, path, data)
        self._sim._after_tag_service(service_code, name, response)
        return response

    def _browse(self, path: CipPath, data: bytes) -> CipServiceResponse:
        """Get_Instance_Attribute_List on the Symbol class: the tag list upload of pycomm3 and
        pylogix. Answered here, not by cm-ethernetip 0.1.0, whose answer breaks both clients:

        - a continuation names its start instance in the path, which cm routes to an
          instance-level service it does not have ("service not supported"), so any list
          longer than one reply (about ten tags) fails;
        - the start instance is inclusive (both clients ask for last + 1, as real controllers
          expect); cm lists only the instances after it and would skip a tag per reply;
        - cm reports External Access 3, which is "None" (0 is Read/Write, 2 Read Only).

        Output tags are Read/Write; the PLC-written tags are Read Only to clients, as the
        simulator refuses writes to them anyway. Every tag is a base tag, not an alias.
        """
        svc = _GET_INSTANCE_ATTRIBUTE_LIST
        if len(data) < 2 or len(data) < 2 + 2 * struct.unpack_from("<H", data, 0)[0]:
            return CipServiceResponse.error(svc, CipStatus.error(_NOT_ENOUGH_DATA))
        attrs = struct.unpack_from(f"<{struct.unpack_from('<H', data, 0)[0]}H", data, 2)
        if any(a not in _SYMBOL_ATTRS for a in attrs):
            return CipServiceResponse.error(svc, CipStatus.error(_ATTRIBUTE_NOT_SUPPORTED))
        start = path.instance_id or 0
        reply = b""
        for tag in sorted(self.tags.all_tags, key=lambda t: t.instance_id):
            if tag.instance_id < start:
                continue
            entry = self._symbol_entry(tag, attrs)
            if reply and len(reply) + len(entry) > _MAX_REPLY:
                return CipServiceResponse(svc | 0x80, CipStatus.error(_PARTIAL_TRANSFER), reply)
            reply += entry
        return CipServiceResponse.success(svc, reply)

    def _symbol_entry(self, tag: Tag, attrs: tuple[int, ...]) -> bytes:
        access = _READ_ONLY if tag.name.lower() in self._sim._inputs else _READ_WRITE
        values = {
            1: struct.pack("<H", len(tag.name)) + tag.name.encode("ascii"),  # symbol name
            2: struct.pack("<H", tag.symbol_type),
            3: struct.pack("<I", 0),  # symbol address
            5: struct.pack("<I", 0),  # symbol object address
            6: struct.pack("<I", _BASE_TAG),  # software control
            8: struct.pack("<III", tag.element_count if tag.element_count > 1 else 0, 0, 0),  # dimensions
            10: struct.pack("<B", access),  # external access
        }
        return struct.pack("<I", tag.instance_id) + b"".join(values[a] for a in attrs)
