"""Test helpers (conftest.py keeps only fixtures): the recording PLC program, station configs
derived from the embedded default, a running daemon, polling, and metric reads through the
daemon's own Prometheus registry (never a client library's private attributes)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from plcbridge import protocols
from plcbridge.config import Config, load_config, parse_config
from plcbridge.contract import Outputs
from plcbridge.simulators.program import SimulatedPlc


class RecordingPlc(SimulatedPlc):
    """The simulated PLC program, plus a record of every output block and when it arrived."""

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.seen: list[tuple[float, Outputs]] = []

    def on_outputs(self, outputs: Outputs, t: float) -> None:
        self.seen.append((t, outputs))
        super().on_outputs(outputs, t)


def plc_answers(seen: list[tuple[float, Outputs]]) -> dict[tuple[int, int], set[str]]:
    """What the PLC read as the answer to each (trigger_seq, part_id): the result names of
    every block with RESULT_VALID set for it, FAILSAFE for a fail-safe whatever result_code it
    carried. One name per key, or the PLC was told two things."""
    from plcbridge.contract import ResultCode, StatusBit

    answers: dict[tuple[int, int], set[str]] = {}
    for _, o in seen:
        if o.status & StatusBit.RESULT_VALID:
            name = "FAILSAFE" if o.status & StatusBit.FAILSAFE_ACTIVE else ResultCode(o.result_code).name
            answers.setdefault((o.result_seq, o.part_id), set()).add(name)
    return answers


def station_config(target: Any, mode: str = "triggered", **sections: dict[str, Any]) -> Config:
    """The embedded default pointed at `target`, metrics off, with sections updated.

    `target` is a port (of the protocol `plc={"protocol": ...}` names; Modbus by default) or a
    started simulator front-end (the `make_sim` fixture's): its protocol and port, or for the
    in-process `loop` front-end its channel, so `station_config(sim)` fits any of them.
    """
    raw = load_config(None, env={}).model_dump(mode="json")
    raw["station"]["mode"] = mode
    raw["camera"].pop("trigger")  # resolved for this mode: software for triggered, unless a test says otherwise
    raw["metrics"]["enabled"] = False
    where: dict[str, Any]
    if isinstance(target, int):
        where = {"port": target}
    elif target.section == "loop":
        where = {"protocol": "loop", "loop": {"channel": target.channel}}
    else:
        where = {"protocol": target.section, "port": target.port}
    protocol = sections.get("plc", {}).get("protocol", where.get("protocol", raw["plc"]["protocol"]))
    if protocol != raw["plc"]["protocol"]:
        # [plc] carries the chosen protocol's section only, and the loop has no port.
        raw["plc"] = {k: v for k, v in raw["plc"].items() if k not in protocols.NAMES and not (k == "port" and protocol == "loop")}
    raw["plc"].update(where)
    for name, values in sections.items():
        raw[name].update(values)
    return parse_config(raw, "<test>", env={})


@contextmanager
def running(config: Config) -> Iterator[Any]:
    from plcbridge.daemon import Daemon

    d = Daemon(config).start()
    try:
        yield d
    finally:
        d.stop()


def closed_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound once by us, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.02) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def read_metric(source: Any, name: str, **labels: str) -> float:
    """A metric's value as a Prometheus scrape shows it, read through the registry's public
    `get_sample_value`. Metrics live in a registry per daemon (plcbridge/metrics.py), so
    `source` is a Daemon, a `Metrics` or a CollectorRegistry.

    `name` is the exposed sample name ("plcbridge_plc_errors_total"); a counter may be named
    without its `_total`. A labelled series never touched reads 0; a name the registry does not
    have is a KeyError, so a typo can never pass for a count of 0.
    """
    registry = getattr(getattr(source, "metrics", source), "registry", source)
    for sample in (name, f"{name}_total"):
        value = registry.get_sample_value(sample, labels)
        if value is not None:
            return value
    families = {family.name for family in registry.collect()}
    if name in families or name.removesuffix("_total") in families:
        return 0.0
    raise KeyError(f"no metric {name!r} in this registry")


class Recorder:
    """A sink beside the daemon's own: every journaled decision's record, in journal order."""

    name = "recorder"

    def __init__(self) -> None:
        self.records: list[Any] = []

    @property
    def ids(self) -> list[str]:
        return [r.decision_id for r in self.records]

    def write(self, record: Any) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


class Running:
    """A daemon in this process with a Recorder on its seam before it starts:
    `with Running(config) as d:`; `run.recorder.records` after."""

    def __init__(self, config: Config) -> None:
        from plcbridge.daemon import Daemon

        self.recorder = Recorder()
        self.daemon = Daemon(config)
        self.daemon.journal.sinks.add(self.recorder)

    def __enter__(self) -> Any:
        return self.daemon.start()

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()
