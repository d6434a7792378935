"""PLC simulators: one protocol-agnostic PLC program (program.py) behind protocol front-ends
(modbus.py, opcua.py, enip.py; frontend.py), optionally behind a network relay that delays
replies or drops the link on purpose (network.py), configured by an editable device file
(devices/*.toml, device.py), whose [program] section also holds the scenarios to rehearse
(early first trigger, waiting for TRIGGER_READY, a PLC restart, a stuck trigger edge)."""
