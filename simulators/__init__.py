"""PLC simulators: one protocol-agnostic PLC program (program.py) behind protocol front-ends
(modbus.py, opcua.py, enip.py; frontend.py), optionally behind a network relay that delays
replies or drops the link on purpose (network.py), configured by an editable device file
(devices/*.toml, device.py)."""
