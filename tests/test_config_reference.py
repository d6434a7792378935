"""docs/configuration.md's key tables are generated from the schema and kept current; the
first-run station file validates and points at the simulator."""

from __future__ import annotations

import typing
from pathlib import Path

from pydantic import BaseModel

from plcbridge.config import Config, load_config
from plcbridge.tools import config_reference

ROOT = Path(__file__).resolve().parents[1]


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every leaf TOML key of the schema, camera variants merged."""
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        sub = config_reference._model_of(info.annotation)
        if sub is not None:
            keys |= _keys(sub, path)
        elif variants := config_reference._variants(info.annotation):
            for v in variants:
                keys |= _keys(v, path)
        else:
            keys.add(path)
    return keys


def test_configuration_doc_is_current():
    path = ROOT / "docs" / "configuration.md"
    assert path.read_text() == config_reference.render(path), (
        "docs/configuration.md is out of date: run `python -m plcbridge.tools.config_reference` (or `plcbridge docs` "
        "once it renders the config section)")


def test_every_key_is_documented_with_a_meaning():
    text = config_reference.markdown_reference()
    rows = {}
    section = None
    for line in text.splitlines():
        if line.startswith("### `["):
            section = line.split("`")[1].strip("[]")
        elif line.startswith("| `") and section is not None:
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[f"{section}.{cells[0].strip('`')}"] = cells[-1]
    missing = sorted(_keys(Config) - set(rows))
    assert not missing, f"keys missing from the reference: {missing}"
    undocumented = sorted(k for k, meaning in rows.items() if k in _keys(Config) and not meaning)
    assert not undocumented, (f"keys without a meaning: {undocumented}; give the field a comment or "
                              "Field(description=...) in config.py, or an entry in config_reference.EXTRA")


def test_reference_shows_types_defaults_and_constraints():
    text = config_reference.markdown_reference()
    assert '| `mode` | `"triggered"` \\| `"free-run"` | `"triggered"` |' in text
    assert "| `port` | integer | `5020` (modbus), `4840` (opcua), `44 818` (enip), `0` (loop) | >= 1, <= 65 535 |" in text
    assert "| `source` | `\"folder\"` | **required** |" in text
    assert "`PLCBRIDGE_PLC_HOST` | `plc.host`" in text
    assert typing.get_type_hints(config_reference.markdown_reference)["return"] is str


def test_station_sim_runs_against_the_simulator_unedited():
    cfg = load_config(ROOT / "config" / "station-sim.toml", env={})
    assert (cfg.plc.protocol, cfg.plc.host, cfg.plc.port) == ("modbus", "127.0.0.1", 5020)
    assert cfg.camera.source == "synthetic" and cfg.model.manifest == "builtin:demo"
    assert cfg.station.mode == "triggered"


def test_every_example_station_file_validates():
    for path in sorted((ROOT / "config").glob("*.toml")):
        load_config(path, env={})
