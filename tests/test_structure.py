"""The structure the README promises: one protocol table from which every list of names
derives, no import cycles, and the layering plcbridge.tools.imports checks."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import typing

import pytest

from plcbridge import protocols
from plcbridge.adapters.plc.base import PlcAdapter
from plcbridge.cli import build_parser
from plcbridge.config import PlcCommon, PlcSettings, parse_config
from plcbridge.registry import load
from plcbridge.simulators.device import DeviceSettings
from plcbridge.simulators.frontend import ThreadedFrontend
from plcbridge.tools import docs, imports


def _union_tags() -> list[str]:
    union = typing.get_args(PlcSettings)[0]
    return [typing.get_args(variant)[1].tag for variant in typing.get_args(union)]


def test_every_protocol_row_resolves_to_its_parts():
    assert protocols.NAMES and len(set(protocols.NAMES)) == len(protocols.NAMES)
    for p in protocols.PROTOCOLS.values():
        assert issubclass(protocols.adapter_class(p.name), PlcAdapter), p
        if p.frontend is not None:
            front = protocols.frontend_class(p.name)
            assert issubclass(front, ThreadedFrontend) and front.section == p.name, p
        if p.wire is not None and p.name in docs.DOCUMENTED:
            assert load(f"{p.wire}:markdown_tables")().startswith("### "), p
        elif p.wire is not None:  # a wire with nothing to document (the in-process loop): it imports
            assert not hasattr(importlib.import_module(p.wire), "markdown_tables"), p


def test_config_simulator_cli_and_docs_take_their_names_from_the_table():
    assert _union_tags() == list(protocols.NAMES)
    for name in protocols.NAMES:
        plc = parse_config({"plc": {"protocol": name}}, "<t>", env={}).plc
        assert isinstance(plc, PlcCommon) and plc.protocol == name and plc.port == protocols.get(name).default_port
        assert set(type(plc).model_fields) - set(PlcCommon.model_fields) == {name}, "one protocol section per variant"
    assert set(protocols.SIMULATED) <= set(DeviceSettings.model_fields)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    sim = next(a for a in sub.choices["sim"]._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sim.choices) == list(protocols.SIMULATED)
    demo_protocol = next(a for a in sub.choices["demo"]._actions if a.dest == "protocol")
    assert list(demo_protocol.choices) == list(protocols.SIMULATED)
    # SIMULATED: the network simulators only; every network protocol has its section of the
    # PLC interface document, and the in-process loop none.
    assert list(protocols.SIMULATED) == [p.name for p in protocols.PROTOCOLS.values() if p.network and p.frontend]
    assert "loop" in protocols.NAMES and "loop" not in protocols.SIMULATED
    assert docs.DOCUMENTS[docs.DEFAULT_PATH] == docs.DOCUMENTED
    assert set(docs.DOCUMENTED) == {p.name for p in protocols.PROTOCOLS.values() if p.network}


def test_an_unknown_protocol_and_a_broken_module_are_different_errors(monkeypatch):
    with pytest.raises(protocols.UnknownProtocol, match="unknown PLC protocol 'profinet'; known: modbus"):
        protocols.adapter_class("profinet")
    broken = protocols.Protocol("broken", "Broken", 1, "plcbridge.adapters.plc.no_such_module:Adapter", None, None)
    monkeypatch.setitem(protocols.PROTOCOLS, "broken", broken)
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        protocols.adapter_class("broken")


def test_no_import_cycles_and_no_forbidden_imports():
    # The same check as the README's command, run as a user would.
    r = subprocess.run([sys.executable, "-m", "plcbridge.tools.imports"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
    assert "0 problem(s)" in r.stderr


def test_the_import_check_sees_a_cycle_and_a_forbidden_import():
    g = imports.graph()
    assert "plcbridge.contract" in g["plcbridge.config"], "the checker must see real edges"
    g["plcbridge.contract"] = {**g["plcbridge.contract"], "plcbridge.config": 1}
    assert any("plcbridge.config" in c and "plcbridge.contract" in c for c in imports.cycles(g))
    assert any(src == "plcbridge.config" and dst == "plcbridge.adapters" for src, dst, _ in imports.FORBIDDEN)
