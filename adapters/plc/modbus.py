"""Modbus TCP adapter (pymodbus 3.16 synchronous client).

One exchange writes the output block and reads the input block:

- `fc23`: one Read/Write Multiple Registers transaction (the write is applied before the
  read, by the standard), one round trip;
- `fc16+fc3`: Write Multiple Registers, then Read Holding Registers, two round trips;
- `auto`: FC23 on the first exchange of each connection; a PLC that answers exception 01
  (ILLEGAL_FUNCTION) gets FC16 + FC3 for the rest of that connection, starting with the
  same exchange. A fresh connection probes again (the PLC may have been replaced).

The sync client is used because the link's I/O thread is a plain thread; pymodbus's sync
`recv` waits at most `comm_params.timeout_connect`, which is set to the link timeout, so a
slow reply is waited for. pymodbus matches every reply's transaction id against its request
and raises on a mismatch, and a reply is never abandoned while the connection is kept: a
stale reply cannot be taken for a fresh one. Retries are off: a request that gets no reply
within the link timeout ends the session, and the next one is a fresh client.

Exception responses are sorted by what they mean: 01/02/03 and the gateway codes say the
configuration does not fit this PLC (`PlcConfigError` naming the register range and the
setting), 05/06 say "busy, try again" (the session is kept), anything else drops the session.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from pymodbus.client import ModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from plcbridge.adapters.plc.base import PlcAdapter, PlcConfigError, PlcError, PlcUnreachable, unreachable
from plcbridge.contract import Inputs, Outputs
from plcbridge.logs import get_logger, log_event

if TYPE_CHECKING:
    from plcbridge.config import ModbusPlcSettings

log = get_logger("plc")

_BUSY = frozenset({ExcCodes.ACKNOWLEDGE, ExcCodes.DEVICE_BUSY})


def _no_connection(host: str, port: int, timeout_s: float) -> PlcError:
    """pymodbus's connect() says only False: find the cause (name, refused, timeout) the way
    the OPC UA and EtherNet/IP drivers report it. Runs only after a failed connect. Nothing
    listening, or no route, is `PlcUnreachable` (the link looks again soon)."""
    where = f"cannot connect to modbus://{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return PlcError(f"{where}: cannot resolve the host name {host!r} ({e.strerror}); check plc.host / PLCBRIDGE_PLC_HOST")
    try:
        family, kind, proto, _, addr = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.settimeout(timeout_s)
            probe.connect(addr)
    except TimeoutError:
        return PlcError(f"{where}: no answer within plc.connect_timeout_ms = {round(timeout_s * 1000)} (host down, or a firewall drops it)")
    except ConnectionRefusedError:
        return PlcUnreachable(f"{where}: connection refused: nothing listens on that port (is the PLC's Modbus server enabled? plc.port)")
    except OSError as e:
        cls = PlcUnreachable if unreachable(e) else PlcError
        return cls(f"{where}: {e.strerror or type(e).__name__}")
    return PlcError(f"{where}: it refused this client, then accepted a plain TCP connection (a server with no free connection slot?)")


class ModbusAdapter(PlcAdapter):
    def __init__(self, settings: ModbusPlcSettings) -> None:
        super().__init__(settings)
        m = settings.modbus
        self.map = m.register_map
        self.device_id = m.device_id
        self.mode = m.exchange
        # None: not known yet (auto probes on the first exchange); True/False: FC23 or FC16+FC3.
        self.fc23: bool | None = {"fc23": True, "fc16+fc3": False}.get(m.exchange)
        self._client: ModbusTcpClient | None = None
        out, inp = self.map.outputs_count, self.map.inputs_count
        self._out_range = f"{m.outputs_base}..{m.outputs_base + out - 1}"
        self._in_range = f"{m.inputs_base}..{m.inputs_base + inp - 1}"

    def connect(self) -> None:
        s = self.settings
        client = ModbusTcpClient(s.host, port=s.port, timeout=s.connect_timeout_ms / 1000, retries=0, reconnect_delay=0)
        if not client.connect():
            client.close()
            raise _no_connection(s.host, s.port, s.connect_timeout_ms / 1000)
        assert client.socket is not None
        client.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = client
        # One read of the input block proves the unit id and the input addresses before the
        # first tick relies on them; a refusal names the setting to fix.
        try:
            self._check(client.read_holding_registers(self.map.inputs_base, count=self.map.inputs_count,
                                                      device_id=self.device_id), "read", 3)
        except PlcError:
            raise
        except (ModbusException, OSError, ValueError) as e:
            raise PlcError(f"no answer to the first read of the input block: {type(e).__name__}: {e}") from e

    def read(self, timeout_s: float) -> Inputs:
        """FC3 of the input block alone."""
        client = self._client
        if client is None:
            raise PlcError("not connected")
        try:
            client.comm_params.timeout_connect = timeout_s
            rr = client.read_holding_registers(self.map.inputs_base, count=self.map.inputs_count, device_id=self.device_id)
            self._check(rr, "read", 3)
            return self.map.decode_inputs(list(rr.registers))
        except PlcError:
            raise
        except (ModbusException, OSError, ValueError) as e:
            raise PlcError(f"{type(e).__name__}: {e}") from e

    def exchange(self, outputs: Outputs, timeout_s: float) -> Inputs:
        client = self._client
        if client is None:
            raise PlcError("not connected")
        regs = self.map.encode_outputs(outputs)
        written = False
        try:
            client.comm_params.timeout_connect = timeout_s
            if self.fc23 is not False:
                rr = client.readwrite_registers(read_address=self.map.inputs_base, read_count=self.map.inputs_count,
                                                write_address=self.map.outputs_base, values=regs,
                                                device_id=self.device_id)
                if self.fc23 is None and isinstance(rr, ExceptionResponse) and rr.exception_code == ExcCodes.ILLEGAL_FUNCTION:
                    self.fc23 = False
                    log_event(log, "plc_modbus_fc23_unsupported", 20, target=self.describe(),
                              reason="the PLC answered FC23 with exception 01 (illegal function); "
                                     "this connection uses FC16 + FC3", rate_key=self.describe())
                else:
                    self._check(rr, "read/write (FC23)", 23)
                    self.fc23 = True
                    return self.map.decode_inputs(list(rr.registers))
            self._check(client.write_registers(self.map.outputs_base, regs, device_id=self.device_id), "write", 16)
            written = True
            rr = client.read_holding_registers(self.map.inputs_base, count=self.map.inputs_count, device_id=self.device_id)
            self._check(rr, "read", 3, written=True)
            return self.map.decode_inputs(list(rr.registers))
        except PlcError:
            raise
        except (ModbusException, OSError, ValueError) as e:
            raise PlcError(f"{type(e).__name__}: {e}", written=written) from e

    def _check(self, pdu: ModbusPDU, what: str, fc: int, *, written: bool = False) -> None:
        """Raise what an exception response means, in the terms of the settings."""
        if not isinstance(pdu, ExceptionResponse):
            if pdu.isError():
                raise PlcError(f"{what} failed: {pdu}", written=written)
            return
        code = pdu.exception_code
        try:
            name = ExcCodes(code).name
        except ValueError:
            name = f"code {code}"
        out_setting = "plc.modbus.outputs_base" + (", plc.modbus.optional_outputs" if self.map.optional_outputs else "")
        in_setting = "plc.modbus.inputs_base" + (", plc.modbus.optional_inputs" if self.map.optional_inputs else "")
        where = {3: f"input block {self._in_range} ({in_setting})",
                 16: f"output block {self._out_range} ({out_setting})",
                 23: f"output block {self._out_range} / input block {self._in_range} "
                     f"({out_setting}, {in_setting})"}[fc]
        text = f"the PLC answered the {what} of the {where} with exception {code:02d} {name}"
        if code == ExcCodes.ILLEGAL_FUNCTION:
            setting = "plc.modbus.exchange" if fc == 23 else "plc.modbus (this PLC does not serve holding registers)"
            raise PlcConfigError(f"{text}; set plc.modbus.exchange = \"fc16+fc3\" or \"auto\"" if fc == 23 else text,
                                 setting=setting, written=written)
        if code in (ExcCodes.ILLEGAL_ADDRESS, ExcCodes.ILLEGAL_VALUE):
            # FC23: the input block was read at connect, so it is the output block that does not fit.
            setting = in_setting if fc == 3 else out_setting
            raise PlcConfigError(f"{text}: the PLC does not map these registers", setting=setting, written=written)
        if code in (ExcCodes.GATEWAY_PATH_UNAVIABLE, ExcCodes.GATEWAY_NO_RESPONSE):
            raise PlcConfigError(f"{text}: no device answers unit id {self.device_id} behind this gateway",
                                 setting="plc.modbus.device_id", written=written)
        raise PlcError(text, written=written, keep_session=code in _BUSY)

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a dead socket must not raise
                pass
            self._client = None
