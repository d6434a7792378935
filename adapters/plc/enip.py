"""EtherNet/IP adapter for Allen-Bradley Logix controllers (pycomm3 1.2.16 LogixDriver).

The contract is carried as controller tags (names and types: plcbridge/contract/enip.py). Per
tick: ONE Multiple Service Packet holding a Write Tag service for every output tag, then a
Read Tag service for every input tag: one round trip, as Modbus FC23. The controller runs
the services in order, so the whole block is written before the inputs are read; it answers
from its tag memory, so an ack the program sets in reaction to this block is read with the
next exchange (as from any PLC that answers between scans). pycomm3's `write()` and `read()`
would send a packet each; the adapter builds the one packet from pycomm3's own request
builders (`_write_build_multi_requests`, `_read_build_multi_requests`) and falls back to the
two packets only where the block does not fit one (long symbolic tag names on a controller
without the large Forward Open). A read between ticks is one packet of Read Tag services.

What pycomm3 1.2.16 does, and how this adapter lives with it (pinned in pyproject):

- A single-tag write puts the Write Tag request into the packet twice; strict servers refuse
  it. Only multi-tag writes are made: the contract has nine base outputs, so `write()` always
  takes its multi-request path. A Micro800 (catalog 2080-) would be sent single requests, so
  it is refused at connect.
- `socket_timeout=` in the constructor is ignored: the attribute is set before `open()`
  (connect timeout), and each exchange sets the live socket's timeout to the time left in
  its deadline. pycomm3 has no public hook for that, so this reaches `driver._sock.sock`.
- After a failure `close()`/`open()` on the same driver is unreliable, and `connected` does
  not drop when the link dies: nothing here is reused or trusted. Any error raises PlcError
  and the link builds a fresh adapter, hence a fresh driver.
- `open()` uploads the controller's tag list (one Get_Instance_Attribute_List round trip
  per ~10 tags, plus UDT templates). Program-scoped tags are uploaded only if a configured
  tag is one; docs/plc-interface.md says what a connect costs.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from pycomm3 import LogixDriver, Tag
from pycomm3.cip_driver import with_forward_open
from pycomm3.const import MULTISERVICE_READ_OVERHEAD
from pycomm3.logix_driver import _tag_return_size
from pycomm3.packets import MultiServiceRequestPacket

from plcbridge.adapters.plc.base import PlcAdapter, PlcConfigError, PlcError
from plcbridge.contract import Inputs, Outputs
from plcbridge.contract.enip import (
    TagSpec,
    carried_input_tags,
    carried_tags,
    decode_inputs,
    encode_outputs,
)

# pycomm3 logs every failed request at ERROR with a traceback, and every request at INFO;
# the link logs its own rate-limited events, and a disabled logger costs nothing per tick.
logging.getLogger("pycomm3").setLevel(logging.CRITICAL)

# Closing sends Forward Close and Unregister Session so the controller frees the CIP
# connection at once; on a dead link that must not hold the connector up for long.
CLOSE_TIMEOUT_S = 0.5
# A Write Tag service's reply in a Multiple Service Packet: its offset, service, reserved,
# general status and additional status size (a refusal may add a status word or two).
_WRITE_REPLY_SIZE = 10

assert len(carried_tags(())) > 1, "a single-tag write would hit pycomm3's duplicated Write Tag request"


class EnipAdapter(PlcAdapter):
    def __init__(self, settings) -> None:  # settings: plcbridge.config.PlcSettings
        super().__init__(settings)
        e = settings.enip
        self.path = f"{settings.host}:{settings.port}/{e.slot}"
        self._driver: LogixDriver | None = None
        # Configured names; replaced at connect by the controller's own spelling.
        self._out_names: dict[str, str] = dict(e.output_tags)
        self._in_names: dict[str, str] = dict(e.input_tags)
        self._in_tags: list[str] = []
        # The base input tags and the optional ones listed in plc.enip.optional_inputs, no others.
        self._in_specs = carried_input_tags(self._in_names)

    def describe(self) -> str:
        return f"enip://{self.settings.host}:{self.settings.port}/slot{self.settings.enip.slot}"

    def connect(self) -> None:
        s = self.settings
        driver = LogixDriver(self.path, init_tags=True, init_program_tags=s.enip.program_scoped)
        driver.socket_timeout = s.connect_timeout_ms / 1000  # the constructor argument is ignored
        self._driver = driver  # so that close() releases it whatever happens below
        try:
            if not driver.open():
                raise PlcError(f"{self.describe()}: the controller refused to register a session")
        except PlcError:
            raise
        except Exception as e:
            raise PlcError(f"cannot connect to {self.describe()}: {_reason(e)}") from e
        if driver._micro800:
            raise PlcError(f"{self.describe()} is a Micro800 ({driver.info.get('product_name')}): pycomm3 would "
                           "send it single-tag writes, which this bridge does not rely on; use a Logix controller")
        # The base tags and the optional ones listed in plc.enip.optional_outputs, no others.
        self._out_names = self._check_tags(driver.tags, carried_tags(self._out_names), self._out_names)
        self._in_names = self._check_tags(driver.tags, self._in_specs, self._in_names)
        self._in_tags = [self._in_names[t.signal.name] for t in self._in_specs]
        assert driver._sock is not None  # open() returned True: pycomm3 made the socket
        driver._sock.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _check_tags(self, tags: dict[str, dict[str, Any]], specs: tuple[TagSpec, ...],
                    names: dict[str, str]) -> dict[str, str]:
        """Every configured tag must exist with its Logix type; returns the controller's spelling.

        Checked once per connect, from the tag list `open()` uploaded: a missing or mistyped
        tag would otherwise surface as a refused write every 10 ms, or worse, as a REAL read
        into a DINT's place. Logix names are case-insensitive, the tag list is not.
        """
        by_lower = {name.lower(): name for name in tags}
        resolved: dict[str, str] = {}
        problems: list[str] = []
        for spec in specs:
            want = names[spec.signal.name]
            what = f"{spec.direction} tag {want!r} ({spec.signal.name})"
            actual = by_lower.get(want.lower())
            if actual is None:
                problems.append(f"{what} does not exist in the controller; create it as {spec.type}")
                continue
            info = tags[actual]
            dtype = info.get("data_type_name") or info.get("data_type")
            if info.get("dim"):
                dims = "][".join(str(d) for d in info.get("dimensions", [])[: info["dim"]])
                problems.append(f"{what} is an array {dtype}[{dims}], expected a single {spec.type}")
            elif info.get("tag_type") != "atomic" or dtype != spec.type:
                problems.append(f"{what} is {dtype} in the controller, expected {spec.type}")
            elif spec.direction == "output" and info.get("external_access") in ("Read Only", "None"):
                problems.append(f"{what} has External Access {info['external_access']!r}; the bridge must write it")
            elif info.get("external_access") == "None":
                problems.append(f"{what} has External Access 'None'; the bridge must read it")
            else:
                resolved[spec.signal.name] = actual
        if problems:
            raise PlcConfigError(f"{self.describe()}: " + "; ".join(problems),
                                 setting="plc.enip.output_tags / plc.enip.input_tags / plc.enip.optional_outputs / "
                                         "plc.enip.optional_inputs or the controller's tags")
        return resolved

    def exchange(self, outputs: Outputs, timeout_s: float) -> Inputs:
        driver = self._driver
        if driver is None or driver._sock is None:
            raise PlcError("not connected")
        pairs = encode_outputs(outputs, self._out_names)
        written = False
        try:
            driver._sock.sock.settimeout(timeout_s)
            packet = self._one_packet(driver, pairs)
            if packet is None:  # does not fit one packet: pycomm3's two
                self._check_written(driver.write(*pairs))
                written = True
                read = driver.read(*self._in_tags)
            else:
                replies = _send(driver, packet)
                self._check_written(replies[:len(pairs)])
                written = True
                read = replies[len(pairs):]
        except PlcError:
            raise
        except Exception as e:
            raise PlcError(_reason(e), written=written) from e
        return self._decode(read, written=True)

    def _one_packet(self, driver: LogixDriver, pairs: list[tuple[str, int | float]]) -> MultiServiceRequestPacket | None:
        """The write services of every output tag, then the read services of every input tag,
        in one Multiple Service Packet; None where that would not fit the connection size, as
        pycomm3 estimates sizes (a reply must fit it too)."""
        to_write = driver._parse_requested_tags([tag for tag, _ in pairs], "w")
        for i, (_, value) in enumerate(pairs):
            to_write[i]["value"] = value
        to_read = driver._parse_requested_tags(self._in_tags, "r")
        writes = driver._write_build_multi_requests(to_write)
        reads = driver._read_build_multi_requests(to_read)
        if len(writes) != 1 or len(reads) != 1 or not all(isinstance(p, MultiServiceRequestPacket) for p in (*writes, *reads)):
            return None
        services = [*writes[0].requests, *reads[0].requests]
        if len(services) != len(pairs) + len(self._in_tags):  # a tag pycomm3 could not parse
            return None
        request_size = MULTISERVICE_READ_OVERHEAD + sum(len(s.message) + 2 for s in services)
        reply_size = (MULTISERVICE_READ_OVERHEAD + _WRITE_REPLY_SIZE * len(pairs)
                      + sum(_tag_return_size(to_read[r.request_id]) + len(r.message) + 2 for r in reads[0].requests))
        if max(request_size, reply_size) > driver.connection_size:
            return None
        return MultiServiceRequestPacket(driver._sequence, services)

    @staticmethod
    def _check_written(results: Any) -> None:
        for tag in results if isinstance(results, list) else [results]:
            if tag.error:
                _raise_refused(f"write of output tag {tag.tag!r} refused: {tag.error}", tag.error, "plc.enip.output_tags")

    def read(self, timeout_s: float) -> Inputs:
        """One Multiple Service Packet reading the input tags, nothing written."""
        driver = self._driver
        if driver is None or driver._sock is None:
            raise PlcError("not connected")
        try:
            driver._sock.sock.settimeout(timeout_s)
            read = driver.read(*self._in_tags)
        except Exception as e:
            raise PlcError(_reason(e)) from e
        return self._decode(read, written=False)

    def _decode(self, read: Any, *, written: bool) -> Inputs:
        results = read if isinstance(read, list) else [read]
        if len(results) != len(self._in_specs):
            raise PlcError(f"read of {len(self._in_specs)} input tags returned {len(results)} results", written=written)
        raw: dict[str, int | float] = {}
        for spec, tag in zip(self._in_specs, results):
            if tag.error or tag.value is None:
                _raise_refused(f"read of input tag {tag.tag!r} failed: {tag.error}", tag.error or "",
                               "plc.enip.input_tags", written=written)
            raw[spec.signal.name] = tag.value
        return decode_inputs(raw)

    def close(self) -> None:
        driver, self._driver = self._driver, None
        if driver is None:
            return
        try:
            if driver._sock is not None:
                driver._sock.sock.settimeout(CLOSE_TIMEOUT_S)
            driver.close()
        except Exception:  # noqa: BLE001 - closing a dead link must not raise
            pass


@with_forward_open
def _send(driver: LogixDriver, packet: MultiServiceRequestPacket) -> list[Tag]:
    """Send one Multiple Service Packet; one Tag per service, in the packet's order, with the
    service's own error (or the packet's, if the controller refused the packet whole)."""
    response = driver.send(packet)
    replies = list(response.responses)
    if len(replies) != len(packet.requests):
        error = response.error or f"{len(replies)} replies to {len(packet.requests)} services"
        return [Tag(r.tag, None, None, error) for r in packet.requests]
    return [Tag(r.tag, r.value if r else None, r.data_type if r else None, None if r else (q.error or r.error))
            for r, q in zip(replies, packet.requests)]


# CIP general status texts (as pycomm3 words them) that say a tag is missing, mistyped or
# not accessible: the tag table does not fit the controller, and no reconnect fixes it.
_CONFIG_ERRORS = ("path segment error", "path destination unknown", "privilege violation", "invalid parameter",
                  "tag", "attribute not supported", "object does not exist", "not supported")


def _raise_refused(text: str, error: str, setting: str, *, written: bool = False) -> None:
    """A refused tag service: the configuration, or a passing refusal (connection kept)."""
    if any(k in error.lower() for k in _CONFIG_ERRORS):
        raise PlcConfigError(text, setting=setting, written=written)
    raise PlcError(text, written=written, keep_session=True)


def _reason(e: BaseException) -> str:
    """pycomm3 wraps the useful cause (refused, timed out) in a CommError: show the chain."""
    parts, seen = [], set()
    link: BaseException | None = e
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        parts.append(f"{type(link).__name__}: {link}")
        link = link.__cause__ or link.__context__
    return " <- ".join(parts)
