"""PLC simulators: one protocol-agnostic PLC program (program.py) behind protocol front-ends
(modbus.py), configured by an editable device file (devices/*.toml, device.py)."""
