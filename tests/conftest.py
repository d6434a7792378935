"""Shared fixtures: a real Modbus simulator on 127.0.0.1 with a spy on what the PLC saw,
and station configs derived from the embedded default."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pytest

from plcbridge import protocols
from plcbridge.config import Config, load_config, parse_config
from plcbridge.contract import Outputs
from plcbridge.simulators.device import load_device
from plcbridge.simulators.frontend import ThreadedFrontend
from plcbridge.simulators.program import SimulatedPlc


class RecordingPlc(SimulatedPlc):
    """The simulated PLC program, plus a record of every output block and when it arrived."""

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.seen: list[tuple[float, Outputs]] = []

    def on_outputs(self, outputs: Outputs, t: float) -> None:
        self.seen.append((t, outputs))
        super().on_outputs(outputs, t)


def station_config(port: int, mode: str = "triggered", **sections: dict[str, Any]) -> Config:
    """The embedded default pointed at `port`, metrics off, with sections updated."""
    raw = load_config(None, env={}).model_dump(mode="json")
    raw["station"]["mode"] = mode
    raw["plc"]["port"] = port
    raw["metrics"]["enabled"] = False
    if sections.get("plc", {}).get("protocol", "modbus") != "modbus":
        del raw["plc"]["modbus"]  # [plc] carries the chosen protocol's section only
    for name, values in sections.items():
        raw[name].update(values)
    return parse_config(raw, "<test>", env={})


@pytest.fixture
def make_sim() -> Iterator[Callable[..., ThreadedFrontend]]:
    """Start an in-process simulator front-end (Modbus unless `protocol` says otherwise)."""
    sims: list[ThreadedFrontend] = []

    def make(mode: str = "triggered", trigger_hz: float = 10.0, port: int = 0, protocol: str = "modbus",
             device: dict[str, Any] | None = None, **program: Any) -> Any:
        """`device` overrides other device-file fields by dotted name ({"network.reply_delay_ms": 12})."""
        overrides = {f"{protocol}.host": "127.0.0.1", f"{protocol}.port": port, "program.mode": mode,
                     "program.trigger_hz": trigger_hz}
        overrides.update({f"program.{k}": v for k, v in program.items()})
        overrides.update(device or {})
        settings = load_device(None, overrides)
        frontend = protocols.frontend_class(protocol)
        sim = frontend(settings, RecordingPlc(settings.program)).start()
        sims.append(sim)
        return sim

    yield make
    for s in sims:
        s.stop()


@contextmanager
def running(config: Config):
    from plcbridge.daemon import Daemon

    d = Daemon(config).start()
    try:
        yield d
    finally:
        d.stop()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.02) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
