"""Shared fixtures: a simulated PLC started in-process with a spy on what it saw (a network
front-end on 127.0.0.1, or the in-process `loop` one). The helpers (station_config, running,
wait_for, RecordingPlc, read_metric) live in tests/helpers.py."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
from helpers import RecordingPlc

from plcbridge import protocols
from plcbridge.simulators.device import load_device
from plcbridge.simulators.frontend import ThreadedFrontend


@pytest.fixture
def make_sim() -> Iterator[Callable[..., ThreadedFrontend]]:
    """Start a simulator front-end (Modbus unless `protocol` says otherwise; "loop" is the
    in-process PLC, found by its `channel`: point a station at it with `station_config(sim)`)."""
    sims: list[ThreadedFrontend] = []

    def make(mode: str = "triggered", trigger_hz: float = 10.0, port: int = 0, protocol: str = "modbus",
             device: dict[str, Any] | None = None, channel: str | None = None, **program: Any) -> Any:
        """`device` overrides other device-file fields by dotted name ({"network.reply_delay_ms": 12});
        `channel` names the loop front-end's channel (default: a fresh one)."""
        overrides: dict[str, Any] = {"program.mode": mode, "program.trigger_hz": trigger_hz}
        if protocols.get(protocol).network:
            overrides.update({f"{protocol}.host": "127.0.0.1", f"{protocol}.port": port})
        elif port:
            raise ValueError(f"the {protocol} PLC has no port")
        kwargs = {} if channel is None else {"channel": channel}
        overrides.update({f"program.{k}": v for k, v in program.items()})
        overrides.update(device or {})
        settings = load_device(None, overrides)
        frontend = protocols.frontend_class(protocol)
        sim = frontend(settings, RecordingPlc(settings.program), **kwargs).start()
        sims.append(sim)
        return sim

    yield make
    for s in sims:
        s.stop()
