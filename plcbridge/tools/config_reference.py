"""The station file's key reference (docs/configuration.md), generated from the schema.

`markdown_reference()` walks `plcbridge.config.Config`: one table per TOML section (the
camera once per `source`), one row per key with its type, default, constraints and what it
means. The text of a key comes, in this order, from `Field(description=...)`, from the
comment written above (or beside) the field in plcbridge/config.py, or from `EXTRA` below
for the keys that have neither. So the reference cannot drift from the schema: a test
renders it and compares it with the document, like the PLC tables (`plcbridge docs`).
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from plcbridge import protocols
from plcbridge.config import CAMERA_SOURCES, ENV_OVERRIDES, Config

SECTION_NAME = "config"
DEFAULT_PATH = Path("docs/configuration.md")

# TOML path -> text, for keys whose field has neither a description nor a comment.
EXTRA: dict[str, str] = {
    "station.name": "Station name: in log events, `STATUS=` and the bench report.",
    "station.mode": "`triggered`: one result per PLC trigger (discrete parts). `free-run`: every frame is judged, "
                    "each write tick carries the newest decision (continuous web).",
    "camera.source": "Which camera source: " + ", ".join(f"`{c}`" for c in CAMERA_SOURCES)
                     + "; selects the keys below. Unset: synthetic (the embedded demo station); a station file "
                       "must name it.",
    "camera.reconnect_min_ms": "Reconnect backoff of the camera: doubles from min to max.",
    "camera.reconnect_max_ms": "Reconnect backoff of the camera: doubles from min to max.",
    "camera.fps": "Frame rate (synthetic, folder: generated/read at this rate).",
    "camera.width": "Frame width in pixels.",
    "camera.height": "Frame height in pixels.",
    "camera.defect_fraction": "Share of generated frames that show a defect (scratch, spot, crack).",
    "camera.seed": "Random seed of the generated images (reproducible runs).",
    "camera.path": "Folder of images, played in name order; a `pass*`/`fail*` name or a `pass/`/`fail/` subfolder "
                   "gives the label.",
    "camera.pattern": "Glob of the image files in `path`.",
    "camera.loop": "Start over at the end of the folder.",
    "camera.backend": "OpenCV capture backend.",
    "plc.protocol": "Transport to the PLC (plcbridge/protocols.py): "
                    + ", ".join(f"`{p.name}` {p.title}" for p in protocols.PROTOCOLS.values() if p.network)
                    + " (docs/plc-interface.md); `loop`: a PLC program in this process, for tests (`[plc.loop]`).",
    "plc.host": "PLC address (`PLCBRIDGE_PLC_HOST` overrides).",
    "plc.port": "PLC port (`PLCBRIDGE_PLC_PORT` overrides): 502 Modbus, 4840 OPC UA, 44818 EtherNet/IP on a real PLC; "
                "none (0) for loop.",
    "plc.connect_timeout_ms": "How long one connection attempt may take.",
    "plc.modbus.device_id": "Modbus unit / device id.",
    "plc.modbus.outputs_base": "Holding-register address of the first output register (what the bridge writes).",
    "plc.modbus.inputs_base": "Holding-register address of the first input register (what the PLC writes).",
    "plc.modbus.word_order": "Order of the two registers of a 32-bit value (`part_id`).",
    "plc.opcua.output_template": "Identifier of each output node; `{signal}` is the contract name.",
    "plc.opcua.input_template": "Identifier of each input node; `{signal}` is the contract name.",
    "plc.opcua.security_mode": "With Basic256Sha256: sign only, or sign and encrypt.",
    "plc.opcua.password_env": "Environment variable holding the user's password, read at each connect.",
    "plc.enip.output_tags": "signal name -> controller tag, for the signals the bridge writes (renames only; the "
                            "rest keep `PB_<Signal>`).",
    "plc.enip.input_tags": "signal name -> controller tag, for the signals the PLC writes (default `PB_Plc<Signal>`).",
    "timing.period_ms": "Write-loop period: one output block to the PLC per period, on absolute deadlines.",
    "logging.format": "`json`: one object per line (journald); `text` for a terminal.",
    "logging.level": "Lowest level logged.",
    "metrics.enabled": "Serve Prometheus metrics, `/healthz` and `/readyz`.",
    "metrics.host": "Metrics listen address (`PLCBRIDGE_METRICS_HOST` overrides).",
    "metrics.port": "Metrics port (`PLCBRIDGE_METRICS_PORT` overrides).",
    "model.device": "Execution provider: `cuda` falls back to the CPU loudly (`model_loaded` at ERROR, "
                    "`fell_back: true`) if the CUDA provider does not load.",
    "plc.reconnect_max_ms": "Longest reconnect backoff (see reconnect_min_ms); also how often a PLC that refuses "
                            "the configuration is retried.",
    "plc.reconnect_reset_ms": "A session must answer this long before the backoff falls back to reconnect_min_ms.",
    "plc.opcua.namespace_uri": "Namespace of the nodes; its index is looked up at every connect.",
    "plc.opcua.input_nodes": "signal name -> identifier, for the inputs (renames only).",
}

# The marker syntax of plcbridge/tools/docs.py, so that `plcbridge docs` can take this section over.
_SECTION = re.compile(r"(<!-- BEGIN GENERATED: (?P<name>[\w-]+)[^>]*-->)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)", re.S)
_FIELD_LINE = re.compile(r"^(?P<indent>\s+)(?P<name>[a-z_][a-z0-9_]*)\s*:\s*[^=]")


def _source_comments(cls: type[BaseModel]) -> dict[str, str]:
    """field name -> the comment block above it in the class body, or its trailing comment."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    found: dict[str, str] = {}
    block: list[str] = []
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        m = _FIELD_LINE.match(line)
        if m and m.group("name") in cls.model_fields and len(m.group("indent")) == 4:
            text = " ".join(block)
            code, hash_, trailing = line.partition("  #")
            if hash_ and trailing.strip():
                text = f"{text} {trailing.strip()}".strip()
            if text:
                found.setdefault(m.group("name"), text)
        block = []
    return found


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)) and len(args) == 1:
            return args[0], True
    return tp, False


def _unwrap(tp: Any) -> tuple[Any, list[Any]]:
    """Annotated[T, ...] -> (T, metadata)."""
    meta: list[Any] = []
    while typing.get_origin(tp) is typing.Annotated:
        tp, *extra = typing.get_args(tp)
        for m in extra:
            meta.extend(m.metadata if isinstance(m, FieldInfo) else [m])
    return tp, meta


def _type_name(tp: Any) -> str:
    tp, _ = _unwrap(tp)
    tp, optional = _strip_optional(tp)
    tp, _ = _unwrap(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        text = " \\| ".join(f'`"{v}"`' if isinstance(v, str) else f"`{v}`" for v in typing.get_args(tp))
    elif origin is dict:
        text = "table (signal -> name)" if typing.get_args(tp) == (str, str) else "table"
    elif origin is list:
        text = f"array of {_type_name(typing.get_args(tp)[0])}"
    elif origin is tuple:  # a fixed-length array: roi = [x, y, width, height]
        items = typing.get_args(tp)
        names = {_type_name(a) for a in items}
        text = f"array of {len(items)} {names.pop()}s" if len(names) == 1 else "array"
    elif tp is Path:
        text = "path"
    elif isinstance(tp, type) and issubclass(tp, Enum):
        text = " \\| ".join(f'`"{m.name}"`' for m in tp)
    elif isinstance(tp, type):
        text = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(tp.__name__, tp.__name__)
    else:
        text = str(tp)
    return f"{text} (optional)" if optional else text


def _constraints(info: FieldInfo) -> str:
    meta = list(info.metadata)
    inner, _ = _strip_optional(_unwrap(info.annotation)[0])
    meta += _unwrap(inner)[1]
    parts: list[str] = []
    symbols = {annotated_types.Ge: (">=", "ge"), annotated_types.Gt: (">", "gt"),
               annotated_types.Le: ("<=", "le"), annotated_types.Lt: ("<", "lt")}
    for m in meta:
        for kind, (sym, attr) in symbols.items():
            if isinstance(m, kind):
                parts.append(f"{sym} {_number(getattr(m, attr))}")
        if isinstance(m, annotated_types.MinLen) and m.min_length:
            parts.append("not empty" if m.min_length == 1 else f"length >= {m.min_length}")
        if isinstance(m, annotated_types.MaxLen):
            parts.append(f"length <= {m.max_length}")
        pattern = getattr(m, "pattern", None)
        if isinstance(pattern, str):
            parts.append(f"matches `{pattern}`")
    if typing.get_origin(_unwrap(inner)[0]) is tuple:  # each item's own bounds, in order
        items = [_constraints(FieldInfo.from_annotation(a)) for a in typing.get_args(_unwrap(inner)[0])]
        if any(items):
            parts.append("items: " + "; ".join(i or "any" for i in items))
    return ", ".join(parts)


def _number(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):  # as TOML takes it: 44818, and 2_000_000_000 for the long ones
        return f"{v:_}" if abs(v) >= 1_000_000 else str(v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    v = info.get_default(call_default_factory=True)
    if v is None:
        return "unset"
    if isinstance(v, str):
        return f'`"{v}"`'
    if isinstance(v, Enum):
        return f'`"{v.name}"`'
    if isinstance(v, (bool, int, float)):
        return f"`{_number(v) if not isinstance(v, bool) else str(v).lower()}`"
    if isinstance(v, dict):
        return "`{}`" if not v else f"`{v}`"
    if isinstance(v, Path):
        return f'`"{v}"`'
    return f"`{v}`"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _is_array(tp: Any) -> bool:
    """An array of tables ([[recipe]]): list[Model]."""
    tp, _ = _unwrap(tp)
    return typing.get_origin(tp) is list


def _model_of(tp: Any) -> type[BaseModel] | None:
    """The section's model: of a field that is one (or an optional one: [model.shadow]), or
    an array of them ([[recipe]])."""
    tp, _ = _unwrap(tp)
    tp, _ = _strip_optional(tp)
    tp, _ = _unwrap(tp)
    if typing.get_origin(tp) is list:
        tp, _ = _unwrap(typing.get_args(tp)[0])
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _variants(tp: Any) -> list[type[BaseModel]]:
    """The models of a discriminated union (the camera sources)."""
    tp, _ = _unwrap(tp)
    tp, _ = _strip_optional(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [m for a in typing.get_args(tp) if (m := _model_of(a)) is not None]
    return []


def _table(model: type[BaseModel], prefix: str) -> list[str]:
    comments = _source_comments(model)
    for base in model.__mro__[1:]:
        if isinstance(base, type) and issubclass(base, BaseModel) and base is not BaseModel:
            for k, v in _source_comments(base).items():
                comments.setdefault(k, v)
    rows = ["| key | type | default | constraints | meaning |", "|---|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if _model_of(info.annotation) is not None:
            continue  # a sub-section: its own table
        path = f"{prefix}.{name}"
        text = info.description or comments.get(name) or EXTRA.get(path, "")
        rows.append(f"| `{name}` | {_type_name(info.annotation)} | {_default(info)} | {_constraints(info)} | "
                    f"{_escape(text)} |")
    return rows


def _doc(model: type[BaseModel]) -> str:
    doc = inspect.getdoc(model) or ""
    if not doc or model.__doc__ is None or "__doc__" not in model.__dict__:
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def _heading(out: list[str], title: str, doc_of: type[BaseModel] | None) -> None:
    """A section's heading, then the first paragraph of its model's docstring, if any."""
    out += [f"### {title}", ""]
    if doc_of is not None and (doc := _doc(doc_of)):
        out += [doc, ""]


def _sections(model: type[BaseModel], prefix: str, out: list[str], array: bool = False) -> None:
    scalars = [n for n, i in model.model_fields.items() if _model_of(i.annotation) is None and not _variants(i.annotation)]
    if prefix and scalars:
        _heading(out, f"`[[{prefix}]]` (one table per entry)" if array else f"`[{prefix}]`", model)
        out += _table(model, prefix)
        out.append("")
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        if (sub := _model_of(info.annotation)) is not None:
            _sections(sub, path, out, _is_array(info.annotation))
        elif variants := _variants(info.annotation):
            tag = _tag_field(variants)
            if any(_model_of(i.annotation) for v in variants for i in v.model_fields.values()):
                _shared_table_sections(variants, tag, path, out)
                continue
            for v in variants:
                field = v.model_fields[tag]
                default = " (the default)" if not field.is_required() else ""
                _heading(out, f'`[{path}]` with `{tag} = "{_tag_value(v, tag)}"`{default}', v)
                out += _table(v, path)
                out.append("")


def _tag_field(variants: list[type[BaseModel]]) -> str:
    """The discriminator: the field every variant has as a one-value Literal (camera: source)."""
    for name in variants[0].model_fields:
        if all(name in v.model_fields and len(typing.get_args(_unwrap(v.model_fields[name].annotation)[0])) == 1
               and typing.get_origin(_unwrap(v.model_fields[name].annotation)[0]) is Literal for v in variants):
            return name
    raise ValueError(f"no discriminator field common to {', '.join(v.__name__ for v in variants)}")


def _tag_value(variant: type[BaseModel], tag: str) -> str:
    return typing.get_args(_unwrap(variant.model_fields[tag].annotation)[0])[0]


def _shared_table_sections(variants: list[type[BaseModel]], tag: str, path: str, out: list[str]) -> None:
    """A union whose variants share their keys and differ by a sub-section (the PLC protocols):
    one table of the shared keys (a default that differs per variant is listed per variant),
    then each variant's own sections."""
    first = variants[0]
    common = next((b for b in first.__mro__[1:] if all(issubclass(v, b) for v in variants)), None)
    _heading(out, f"`[{path}]`", common)
    rows = _table(first, path)
    tags = [_tag_value(v, tag) for v in variants]
    for i, (name, info) in enumerate((n, f) for n, f in first.model_fields.items() if _model_of(f.annotation) is None):
        if name == tag:
            row = rows[i + 2].split(" | ")
            row[1], row[2] = " / ".join(f'`"{t}"`' for t in tags), f'`"{tags[0]}"`'
            rows[i + 2] = " | ".join(row)
            continue
        defaults = [_default(v.model_fields[name]) for v in variants]
        if len(set(defaults)) > 1:
            row = rows[i + 2].split(" | ")
            row[2] = ", ".join(f"{d} ({t})" for d, t in zip(defaults, tags))
            rows[i + 2] = " | ".join(row)
    out += rows
    out.append("")
    for v in variants:
        for name, info in v.model_fields.items():
            if (sub := _model_of(info.annotation)) is not None:
                _sections(sub, f"{path}.{name}", out)


def markdown_reference() -> str:
    """Every key of the station file, section by section, as Markdown tables."""
    out = [
        "Generated from `plcbridge/config.py` by `plcbridge.tools.config_reference` (do not edit by hand). "
        "Every key is optional unless marked required; a section left out takes all its defaults. "
        "Unknown keys are errors. Durations are in milliseconds (`_ms`) or seconds (`_s`).",
        "",
    ]
    _sections(Config, "", out)
    out += ["### Environment overrides", "",
            "Applied before validation, so they are validated like the file.", "",
            "| variable | overrides |", "|---|---|"]
    out += [f"| `{var}` | `{'.'.join(path)}` |" for var, path in ENV_OVERRIDES.items()]
    return "\n".join(out).rstrip() + "\n"


def render(path: Path = DEFAULT_PATH) -> str:
    """`path` with its `config` generated section rewritten (the rest of the file kept)."""
    text = path.read_text()
    names = [m.group("name") for m in _SECTION.finditer(text)]
    if SECTION_NAME not in names:
        raise ValueError(f"{path}: no generated section for {SECTION_NAME}")

    def sub(m: re.Match) -> str:
        if m.group("name") != SECTION_NAME:
            return m.group(0)
        return f"{m.group(1)}\n\n{markdown_reference().strip()}\n\n{m.group(4)}"

    return _SECTION.sub(sub, text)


if __name__ == "__main__":  # python -m plcbridge.tools.config_reference [--check]
    import sys

    rendered = render()
    if "--check" in sys.argv[1:]:
        sys.exit(0 if DEFAULT_PATH.read_text() == rendered else 1)
    DEFAULT_PATH.write_text(rendered)
    print(f"wrote {DEFAULT_PATH}")
