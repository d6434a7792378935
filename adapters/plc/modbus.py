"""Modbus TCP adapter (pymodbus 3.16 synchronous client).

One exchange per tick: write the output block (FC16), then read the input block (FC3). The
sync client is used because the write loop is a plain thread with a hard per-call deadline;
pymodbus's sync `recv` waits at most `comm_params.timeout_connect`, which we set to the time
left in the tick before each request. Retries are off: a reply that does not come within
the deadline is a failure, and the loop moves on to a fresh client rather than resending
into a confused transaction. A complete exchange that merely finished late is not.
"""

from __future__ import annotations

import socket
import time

from plcbridge.adapters.plc.base import PlcAdapter, PlcError
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from plcbridge.contract import Inputs, Outputs, RegisterMap


class ModbusAdapter(PlcAdapter):
    def __init__(self, settings) -> None:  # settings: plcbridge.config.PlcSettings
        super().__init__(settings)
        m = settings.modbus
        self.map = RegisterMap(m.outputs_base, m.inputs_base, m.word_order)
        self.device_id = m.device_id
        self._client: ModbusTcpClient | None = None

    def connect(self) -> None:
        s = self.settings
        client = ModbusTcpClient(s.host, port=s.port, timeout=s.connect_timeout_ms / 1000, retries=0, reconnect_delay=0)
        if not client.connect():
            client.close()
            raise PlcError(f"cannot connect to modbus://{s.host}:{s.port}")
        assert client.socket is not None
        client.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = client

    def exchange(self, outputs: Outputs, deadline_s: float) -> Inputs:
        client = self._client
        if client is None:
            raise PlcError("not connected")
        end = time.monotonic() + deadline_s
        try:
            client.comm_params.timeout_connect = deadline_s
            wr = client.write_registers(self.map.outputs_base, self.map.encode_outputs(outputs), device_id=self.device_id)
            if wr.isError():
                raise PlcError(f"write of output block at {self.map.outputs_base} refused: {wr}")
            left = end - time.monotonic()
            if left <= 0:
                raise PlcError(f"deadline of {deadline_s * 1000:.1f} ms spent on the write")
            client.comm_params.timeout_connect = left
            rr = client.read_holding_registers(self.map.inputs_base, count=self.map.inputs_count, device_id=self.device_id)
            if rr.isError():
                raise PlcError(f"read of input block at {self.map.inputs_base} refused: {rr}")
            # Finishing after the deadline (this thread was descheduled after the reply came)
            # leaves the connection in a clean state: the link counts it, it is not a failure.
            return self.map.decode_inputs(list(rr.registers))
        except PlcError:
            raise
        except (ModbusException, OSError, ValueError) as e:
            raise PlcError(f"{type(e).__name__}: {e}") from e

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a dead socket must not raise
                pass
            self._client = None
