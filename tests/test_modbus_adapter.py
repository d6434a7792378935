"""The Modbus adapter names why a connect failed, as the OPC UA and EtherNet/IP adapters do."""

import socket

import pytest
from helpers import station_config

from plcbridge.adapters.plc.base import PlcError
from plcbridge.adapters.plc.modbus import ModbusAdapter


def test_a_refused_connect_says_nothing_listens_and_names_the_setting():
    with socket.socket() as s:  # a port on 127.0.0.1 that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    adapter = ModbusAdapter(station_config(port).plc)
    with pytest.raises(PlcError) as e:
        adapter.connect()
    adapter.close()
    msg = str(e.value)
    assert msg.startswith(f"cannot connect to modbus://127.0.0.1:{port}: connection refused"), msg
    assert "plc.port" in msg
