"""PLC protocol adapters, chosen by name from a registry and imported lazily (see base.py)."""
