"""Modbus TCP front-end for the simulated PLC (pymodbus 3.16 async server).

pymodbus 3.16 keeps register memory inside its own SimDevice/SimCore runtime (the old
ModbusDeviceContext/DataBlock classes are deprecated shims that are converted into it, so
overriding their setValues is never called). The supported hook is `SimDevice(action=...)`:
an async callback run on every access, after the address check and before the registers are
read or written, with the live register list and the values to be written. That is exactly
where a PLC program sees a bridge write, so:

- a write inside the output block is decoded (registers as they will be after the write) and
  passed to `program.on_outputs(..., time.monotonic())` before the response is sent;
- every access then copies `program.inputs` into the input block, so a read always returns
  the program's current state (an ack is visible to the bridge's very next read);
- anything else that writes (input block, gap, coils, a block straddling the outputs) is
  refused with ILLEGAL_ADDRESS / ILLEGAL_FUNCTION and counted as a protocol error;
- every exception response, including those pymodbus makes by itself (address outside the
  mapped span), is counted through the `trace_pdu` hook.

A background asyncio task calls `program.tick()` about every millisecond. The program is
single-threaded; a lock keeps `summary()` from another thread consistent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from .device import DeviceSettings
from .frontend import ThreadedFrontend
from .program import SimulatedPlc

log = logging.getLogger(__name__)

TICK_S = 0.001
_WRITE_REGISTER_FCS = frozenset({6, 16, 22, 23})
_WRITE_BIT_FCS = frozenset({5, 15})


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

    async def _serve(self) -> None:
        m = self.settings.modbus
        devices = [self._device(m.device_id, self._on_access)]
        if m.device_id != 0:
            # id 0 answers every other unit id; without it pymodbus fails such a request with
            # an internal KeyError and a traceback in the log instead of a clear count.
            devices.append(self._device(0, self._on_wrong_device))
        server = ModbusTcpServer(devices, address=(m.host, m.port), trace_pdu=self._trace_pdu)
        await server.serve_forever(background=True)
        try:
            await self._run_program(server.transport.sockets[0].getsockname()[1])
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

        Between the action and the response there is no await that yields, so the flag set
        by the action always belongs to the response being sent here.
        """
        if not sending:
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
