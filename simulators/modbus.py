"""Modbus TCP front-end for the simulated PLC (pymodbus 3.16 async server).

pymodbus 3.16 keeps register memory inside its own SimDevice/SimCore runtime (the old
ModbusDeviceContext/DataBlock classes are deprecated shims that are converted into it, so
overriding their setValues is never called). The supported hook is `SimDevice(action=...)`:
an async callback run on every access, after the address check and before the registers are
read or written, with the live register list and the values to be written. That is exactly
where a PLC program sees a bridge write, so:

- a write inside the output block is decoded (registers as they will be after the write) and
  passed to `program.on_outputs(..., time.monotonic())` before the response is sent; a write
  that covers only part of the output block is stored and passed on all the same, and counted
  as a "partial_block" protocol error (the contract says one request carries the whole
  block), exactly as the OPC UA and EtherNet/IP front-ends treat a partial block;
- every access then copies `program.inputs` into the input block, so a read always returns
  the program's current state (an ack is visible to the bridge's very next read);
- anything else that writes (input block, gap, coils, a block straddling the outputs) is
  refused with ILLEGAL_ADDRESS / ILLEGAL_FUNCTION and counted as a protocol error;
- every exception response, including those pymodbus makes by itself (address outside the
  mapped span), is counted through the `trace_pdu` hook.

FC23 (Read/Write Multiple Registers, one transaction for the bridge's write and read):
pymodbus 3.16 runs it as a write then a read, calling the action twice, each with
func_code 23: first (write_address, write count, the values to write), which is a write like
FC16's and reaches `program.on_outputs` as one block, then (read_address, read_count, None),
which presents `program.inputs` as every read does. So the read part returns the inputs as
they are after this very write (the ack included). A read range outside the mapped span is
refused before the write is applied (pymodbus would apply the write first), as a PLC checks
a request before acting on it. With `[modbus] fc23 = false` FC23 is answered with exception
01 ILLEGAL_FUNCTION whatever it asks, as by a PLC without it (Siemens MB_SERVER, for one),
and counted as "unsupported_function".

Requests are answered one at a time, in the order they arrived, each of them: pymodbus
3.16's own connection handler decodes one request per TCP segment, answers whichever request
it decoded last when its task runs, and empties its receive buffer whenever it sends, so
requests that arrive together (a pipelining client, or the network relay handing over two
at once) would be lost or answered twice. `_InOrderHandler` replaces it.

A background asyncio task calls `program.tick()` about every millisecond. The program is
single-threaded; a lock keeps `summary()` from another thread consistent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import ReadWriteMultipleRegistersRequest
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from .device import DeviceSettings
from .frontend import ThreadedFrontend
from .program import SimulatedPlc

log = logging.getLogger(__name__)

TICK_S = 0.001
FC_READ_WRITE_MULTIPLE = 23
_WRITE_REGISTER_FCS = frozenset({6, 16, 22, FC_READ_WRITE_MULTIPLE})
_WRITE_BIT_FCS = frozenset({5, 15})
_RECEIVE_BUFFER = 1 << 16  # pymodbus's 516 bytes would silently drop a few pipelined requests


class ModbusSimulator(ThreadedFrontend):
    """A SimulatedPlc behind a Modbus TCP server, run on an asyncio loop in its own thread.

    The thread keeps tests and the demo simple (start, talk to it with a blocking client,
    stop) and leaves the caller's main thread free for signals.
    """

    section, title = "modbus", "Modbus"

    def __init__(self, settings: DeviceSettings, program: SimulatedPlc | None = None) -> None:
        super().__init__(settings, program)
        m = settings.modbus
        self._rmap = m.register_map
        self._out_lo = self._rmap.outputs_base
        self._out_hi = self._out_lo + self._rmap.outputs_count
        self._in_lo = self._rmap.inputs_base
        self._in_hi = self._in_lo + self._rmap.inputs_count
        # One contiguous span covering both blocks: writes into the gap still reach the
        # action (and are counted) instead of being refused silently by pymodbus.
        self._span_lo = min(self._out_lo, self._in_lo)
        self._span_hi = max(self._out_hi, self._in_hi)
        self._counted_exception = False
        self._last_request: tuple[int, int] = (0, 0)  # (device_id, function code)
        self._request: ModbusPDU | None = None  # the request being answered

    async def _serve(self) -> None:
        m = self.settings.modbus
        devices = [self._device(m.device_id, self._on_access)]
        if m.device_id != 0:
            # id 0 answers every other unit id; without it pymodbus fails such a request with
            # an internal KeyError and a traceback in the log instead of a clear count.
            devices.append(self._device(0, self._on_wrong_device))
        server = _Server(devices, address=self._bind_address(), trace_pdu=self._trace_pdu, screen=self._screen)
        await server.serve_forever(background=True)
        try:
            await self._run_program(server.transport.sockets[0].getsockname()[1])  # type: ignore[attr-defined]  # a listening pymodbus transport is the asyncio.Server
        finally:
            await server.shutdown()

    def _device(self, device_id: int, action: Any) -> SimDevice:
        span = SimData(self._span_lo, count=self._span_hi - self._span_lo, values=0, datatype=DataType.REGISTERS)
        return SimDevice(device_id, simdata=[span], action=action)

    async def _tick_forever(self) -> None:
        while True:
            with self._lock:
                self.program.tick(time.monotonic())
            await asyncio.sleep(TICK_S)

    async def _on_access(
        self,
        func_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: Sequence[int] | Sequence[bool] | None,
    ) -> ExcCodes | None:
        """SimDevice action: runs before pymodbus reads or writes `registers`."""
        t = time.monotonic()
        with self._lock:
            try:
                if set_values is not None:
                    if func_code == FC_READ_WRITE_MULTIPLE and not self._read_part_fits():
                        return ExcCodes.ILLEGAL_ADDRESS  # counted by _trace_pdu, as pymodbus's own
                    refused = self._take_write(func_code, start_address, address, count, registers, set_values, t)
                    if refused is not None:
                        self._counted_exception = True
                        return refused
                at = self._in_lo - start_address
                registers[at : at + self._rmap.inputs_count] = self._rmap.encode_inputs(self.program.inputs)
            except Exception as e:  # a bad request or a program bug must not kill the server
                log.exception("simulator failed on fc=%s address=%s count=%s", func_code, address, count)
                self.program.protocol_error("internal_error", f"fc {func_code} @{address}+{count}: {e!r}")
                self._counted_exception = True
                return ExcCodes.DEVICE_FAILURE
        return None

    def _read_part_fits(self) -> bool:
        req = self._request
        if not isinstance(req, ReadWriteMultipleRegistersRequest):
            return True
        return self._span_lo <= req.read_address and req.read_address + req.read_count <= self._span_hi

    def _screen(self, request: ModbusPDU) -> ExcCodes | None:
        """Runs before pymodbus sees a request; an exception code refuses it outright."""
        if request.function_code == FC_READ_WRITE_MULTIPLE and not self.settings.modbus.fc23:
            with self._lock:
                self.program.protocol_error(
                    "unsupported_function",
                    f"fc 23 (Read/Write Multiple Registers) for unit {request.dev_id}: "
                    "this PLC does not implement it (modbus.fc23 = false)")
            self._counted_exception = True
            return ExcCodes.ILLEGAL_FUNCTION
        return None

    def _take_write(
        self,
        func_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: Sequence[int] | Sequence[bool],
        t: float,
    ) -> ExcCodes | None:
        where = f"fc {func_code} at {address}..{address + count - 1}"
        if func_code in _WRITE_BIT_FCS or func_code not in _WRITE_REGISTER_FCS:
            self.program.protocol_error("bad_function", f"{where}: the contract has holding registers only")
            return ExcCodes.ILLEGAL_FUNCTION
        if address < self._out_lo or address + count > self._out_hi:
            self.program.protocol_error(
                "write_outside_outputs", f"{where}: the bridge may write only {self._out_lo}..{self._out_hi - 1}"
            )
            return ExcCodes.ILLEGAL_ADDRESS
        if count != self._rmap.outputs_count:
            # Stored and passed on like a whole block, as OPC UA and EtherNet/IP do: the
            # contract says one request carries the whole block.
            self.program.protocol_error(
                "partial_block", f"{where}: one write carried {count} of the {self._rmap.outputs_count} output registers"
            )
        # The action runs before pymodbus stores the values: decode the block as it will be.
        lo = self._out_lo - start_address
        block = list(registers[lo : lo + self._rmap.outputs_count])
        block[address - self._out_lo : address - self._out_lo + count] = [int(v) for v in values]
        self.program.on_outputs(self._rmap.decode_outputs(block), t)
        return None

    async def _on_wrong_device(
        self,
        func_code: int,
        _start_address: int,
        address: int,
        count: int,
        _registers: list[int],
        _set_values: Sequence[int] | Sequence[bool] | None,
    ) -> ExcCodes:
        unit = self._last_request[0]
        with self._lock:
            self.program.protocol_error(
                "wrong_device_id",
                f"fc {func_code} at {address}+{count} for unit {unit}; this PLC is unit {self.settings.modbus.device_id}",
            )
        self._counted_exception = True
        return ExcCodes.GATEWAY_NO_RESPONSE

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        """Counts exception responses pymodbus produced without asking the action.

        `_InOrderHandler` traces a request just before answering it, and from there to the
        response there is no await that yields, so the request recorded here and the flag
        set by the action always belong to the response being sent.
        """
        if not sending:
            self._request = pdu
            self._last_request = (pdu.dev_id, pdu.function_code)
        elif isinstance(pdu, ExceptionResponse):
            if not self._counted_exception:
                dev, fc = self._last_request
                with self._lock:
                    self.program.protocol_error(
                        "modbus_exception", f"fc {fc} unit {dev}: answered with exception {pdu.exception_code}"
                    )
            self._counted_exception = False
        else:
            self._counted_exception = False
        return pdu


class _Server(ModbusTcpServer):
    """pymodbus's TCP server with `_InOrderHandler` for every connection."""

    def __init__(self, *args: Any, screen: Callable[[ModbusPDU], ExcCodes | None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._screen = screen

    def callback_new_connection(self) -> "_InOrderHandler":
        return _InOrderHandler(self, self._screen)


class _InOrderHandler(ServerRequestHandler):
    """One client connection: every complete request in a segment is decoded and queued, and
    one task answers them in arrival order (see the module docstring for why pymodbus 3.16's
    handler cannot). A request is traced (`trace_pdu`) right before it is answered, and
    `screen` may refuse it with an exception code before pymodbus sees it."""

    def __init__(self, owner: _Server, screen: Callable[[ModbusPDU], ExcCodes | None]) -> None:
        super().__init__(owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect)
        self.max_buffer_size = _RECEIVE_BUFFER
        self._screen = screen
        self._queue: deque[tuple[ModbusPDU, Any]] = deque()
        self._worker: asyncio.Task[None] | None = None

    def callback_data(self, data: bytes, addr: tuple | None = None) -> int:
        data = self.trace_packet(False, data)
        used = 0
        while used < len(data):
            try:
                n, pdu = self.framer.handleFrame(data[used:], self.request_dev_id, self.request_transaction_id)
            except ModbusIOException as exc:  # undecodable: answered as pymodbus does, then skipped
                fc = 0 if exc.fcode is None else exc.fcode
                self._queue.append((ExceptionResponse(fc, exception_code=ExcCodes.ILLEGAL_FUNCTION,
                                                      device_id=exc.dev_id, transaction=exc.transaction_id), addr))
                n = self.framer.decode(data[used:])[0] or len(data) - used
                pdu = None
            if not n:
                break  # an incomplete request: wait for the rest
            used += n
            if pdu is not None:
                self._queue.append((pdu, addr))
        if self._queue and (self._worker is None or self._worker.done()):
            self._worker = self.loop.create_task(self._answer_all())
        return used

    def send(self, data: bytes, addr: tuple | None = None) -> None:
        keep = self.recv_buffer  # pymodbus empties it on every send, losing a request in transit
        super().send(data, addr)
        self.recv_buffer = keep

    def callback_disconnected(self, exc: Exception | None) -> None:
        self._queue.clear()
        if self._worker is not None:
            self._worker.cancel()
        super().callback_disconnected(exc)

    async def _answer_all(self) -> None:
        while self._queue:
            pdu, addr = self._queue.popleft()
            if isinstance(pdu, ExceptionResponse):
                self.server_send(pdu, addr)
                continue
            pdu = self.trace_pdu(False, pdu)
            refused = self._screen(pdu)
            if refused is not None:
                self.server_send(ExceptionResponse(pdu.function_code, exception_code=refused, device_id=pdu.dev_id,
                                                   transaction=pdu.transaction_id), addr)
                continue
            self.last_pdu, self.last_addr = pdu, addr
            await self.handle_request()
