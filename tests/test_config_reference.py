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
    assert "| `port` | integer | `5020` (modbus), `4840` (opcua), `44818` (enip), `0` (loop) | >= 1, <= 65535 |" in text
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


def _rows(text: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in text.splitlines() if line.startswith("| `")]
    return [r for r in rows if len(r) == 5]  # the key tables (not the environment overrides)


def test_types_read_as_words_and_numbers_paste_into_toml():
    import re
    import tomllib

    text = config_reference.markdown_reference()
    assert "typing." not in text and "FieldInfo" not in text and "Annotated" not in text
    roi = next(r for r in _rows(text) if r[0] == "`roi`")
    assert roi[1] == "array of 4 integers (optional)" and ">= 1" in roi[3], roi
    for key, _type, default, constraints, _meaning in _rows(text):
        # Every number shown as a default or a bound is one a station file can hold as written.
        for number in re.findall(r"(?<![\w.])-?\d[\d_ ]*(?:\.\d+)?(?:e[+-]?\d+)?(?![\w.])", f"{default} {constraints}"):
            number = number.strip()
            assert tomllib.loads(f"x = {number}")["x"] is not None, (key, number)
    source = next(r for r in _rows(text) if r[0] == "`source`")
    assert all(f"`{s}`" in source[4] for s in ("synthetic", "folder", "opencv", "genicam")), source
