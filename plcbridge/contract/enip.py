"""The signal contract as Logix controller tags: names, Logix types and value encoding.

The one place that says how `plcbridge.contract` maps onto EtherNet/IP tags. The adapter
(adapters/plc/enip.py), the simulator front-end (simulators/enip.py), the bridge's
`[plc.enip]` and the simulator's `[enip]` settings (both extend `EnipTagMap`) and the
generated docs use it, so they cannot disagree.

Types. Logix's native integer is the 32-bit DINT; INT is *signed* 16-bit, so a u16 counter
would read -1 at 65535 and PLC code would need conversions everywhere. So:

- u16 and bits signals are DINT holding 0..65535. Values the PLC writes (trigger_seq,
  result_ack_seq) are taken modulo 65536, so a DINT that goes past 65535 does not fail the
  read; but a trigger counter must still count 1..65535 and wrap to 1 itself, since 65536
  taken modulo 65536 is 0, which is idle (a PLC restart), not a trigger.
- u32 signals (part_id) are DINT holding the same 32 bits, two's complement: part ids from
  2^31 up read as negative numbers in the PLC. Equality, which is all the handshake needs,
  is unaffected, and the bridge echoes the bits it read.
- score is REAL, the defect score itself in 0.0..1.0 (not x10000), so the PLC does not have
  to rescale it. The contract carries it as score x SCORE_SCALE; the conversion is here.
- optional outputs are DINT like the rest: defect_count and defect_class hold 0..65535,
  anomaly_area holds the u32 area two's complement, like part_id (an area from 2^31 pixels
  up reads negative; no camera frame has that many).

Optional outputs (`optional_outputs`) are tags like the others (default names PB_DefectCount,
PB_DefectClass, PB_AnomalyArea; renamed in `output_tags`), but only a station that lists them
has them: without it the bridge writes, and checks at connect, the base tags alone, so a
controller needs no tag it did not have. OUTPUT_TAGS is the table of every output tag;
`carried_tags()` picks a station's. The recipe outputs (PB_ActiveRecipe, PB_ResultRecipe) are
DINT holding 0..65535. The optional input recipe_id (PB_PlcRecipeId, `optional_inputs`) is a
PLC-written tag on the same terms (`carried_input_tags()`); a value outside 0..65535 is not
taken modulo 65536 like the counters (65536 would read as 0, the default recipe): it reads as
65535, which names no recipe (RECIPE_UNKNOWN).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import model_validator

from plcbridge.contract import (
    INPUT_SIGNALS,
    OUTPUT_SIGNALS,
    RECIPE_NONE,
    SCORE_SCALE,
    U16_MAX,
    U32_MAX,
    Inputs,
    OptionalInput,
    OptionalOutput,
    Outputs,
    Signal,
    carried_inputs,
    carried_outputs,
)
from plcbridge.schema import Strict

LogixType = Literal["DINT", "REAL"]
Direction = Literal["output", "input"]

# The only per-protocol deviation from "an integer signal is a DINT": signal -> (type, meaning
# in the docs, replacing the contract's, which describes the x10000 integer).
_TYPE_OVERRIDES: dict[str, tuple[LogixType, str]] = {
    "score": ("REAL", f"the defect score itself, 0.0..1.0 (the contract's integer / {SCORE_SCALE})"),
}

# Default names: bridge-written tags are PB_<Name>; PLC-written tags are PB_Plc<Name>, which
# also keeps the two part_id signals apart. All of them sort together in the tag browser.
OUTPUT_PREFIX = "PB_"
INPUT_PREFIX = "PB_Plc"

# A controller-scoped tag, or a program-scoped one ("Program:MainProgram.PB_Status").
# Logix names: a letter or underscore first, at most 40 characters.
_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,39}"
TAG_NAME_RE = re.compile(rf"^(Program:{_NAME}\.)?{_NAME}$")

_DINT_MIN, _DINT_MAX = -(1 << 31), (1 << 31) - 1


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def logix_type(signal: Signal) -> LogixType:
    return _TYPE_OVERRIDES[signal.name][0] if signal.name in _TYPE_OVERRIDES else "DINT"


@dataclass(frozen=True)
class TagSpec:
    signal: Signal
    direction: Direction
    default_name: str

    @property
    def type(self) -> LogixType:
        return logix_type(self.signal)


OUTPUT_TAGS: tuple[TagSpec, ...] = tuple(TagSpec(s, "output", OUTPUT_PREFIX + _camel(s.name)) for s in OUTPUT_SIGNALS)
INPUT_TAGS: tuple[TagSpec, ...] = tuple(TagSpec(s, "input", INPUT_PREFIX + _camel(s.name)) for s in INPUT_SIGNALS)


def carried_tags(signals: Collection[str]) -> tuple[TagSpec, ...]:
    """The output tags of a station, in contract order: every base tag, and the optional ones
    whose signal `signals` names (a complete output_tags map, or the optional_outputs list)."""
    return tuple(t for t in OUTPUT_TAGS if not t.signal.optional or t.signal.name in signals)


def carried_input_tags(signals: Collection[str]) -> tuple[TagSpec, ...]:
    """The input tags of a station, in contract order: every base tag, and the optional ones
    whose signal `signals` names (a complete input_tags map, or the optional_inputs list)."""
    return tuple(t for t in INPUT_TAGS if not t.signal.optional or t.signal.name in signals)


def default_names(specs: tuple[TagSpec, ...]) -> dict[str, str]:
    return {t.signal.name: t.default_name for t in specs}


def resolve_names(output_tags: Mapping[str, str], input_tags: Mapping[str, str],
                  optional_outputs: Collection[str] = (), optional_inputs: Collection[str] = ()
                  ) -> tuple[dict[str, str], dict[str, str]]:
    """Configured names over the defaults, checked: known signals, valid and distinct names.

    Returns complete (signal -> tag name) maps for outputs (the base signals and the optional
    ones `optional_outputs` lists) and inputs (likewise with `optional_inputs`); raises
    ValueError with every problem named, for the config schemas to report against the field.
    """
    problems: list[str] = []
    resolved: list[dict[str, str]] = []
    carried = carried_tags([s.name for s in carried_outputs(optional_outputs)])
    carried_in = carried_input_tags([s.name for s in carried_inputs(optional_inputs)])
    for what, specs, given, every in (("output", carried, output_tags, OUTPUT_TAGS),
                                      ("input", carried_in, input_tags, INPUT_TAGS)):
        names = default_names(specs)
        for signal, name in given.items():
            if signal not in names and any(t.signal.name == signal for t in every):
                problems.append(f"{what}_tags: {signal!r} is an optional {what}: list it in optional_{what}s to carry it")
            elif signal not in names:
                problems.append(f"{what}_tags: {signal!r} is not a contract signal (known: {', '.join(names)})")
            elif not isinstance(name, str) or not TAG_NAME_RE.match(name):
                problems.append(f"{what}_tags.{signal}: {name!r} is not a Logix tag name (Tag or Program:Prog.Tag)")
            else:
                names[signal] = name
        resolved.append(names)
    seen: dict[str, str] = {}
    for what, names in (("output", resolved[0]), ("input", resolved[1])):
        for signal, name in names.items():
            key = name.lower()  # Logix tag names are case-insensitive
            if key in seen:
                problems.append(f"tag {name!r} is used for both {seen[key]} and {what} {signal}")
            seen[key] = f"{what} {signal}"
    if problems:
        raise ValueError("; ".join(problems))
    return resolved[0], resolved[1]


def complete_tag_names(data: Any) -> Any:
    """Fill in the default names and check them (EnipTagMap's before-validator), so both ends
    of a link resolve names the same way."""
    if not isinstance(data, dict):
        return data
    given = data.get("output_tags", {}), data.get("input_tags", {})
    optional = data.get("optional_outputs", [])
    optional_in = data.get("optional_inputs", [])
    if not all(isinstance(g, dict) for g in given) or not isinstance(optional, (list, tuple)) \
            or not isinstance(optional_in, (list, tuple)):
        return data  # the field's own type check reports it
    outputs, inputs = resolve_names(*given, optional_outputs=[n for n in optional if isinstance(n, str)],
                                    optional_inputs=[n for n in optional_in if isinstance(n, str)])
    return {**data, "output_tags": outputs, "input_tags": inputs}


class EnipTagMap(Strict):
    """Which tags carry the contract: the part of the settings both ends share.

    After validation both maps are complete (signal -> tag name, defaults filled in)."""

    # signal name -> tag name ("PB_Status" or "Program:MainProgram.PB_Status").
    output_tags: dict[str, str] = {}
    input_tags: dict[str, str] = {}
    # Optional outputs this station carries (detection, segmentation, anomaly models): DINT
    # tags PB_DefectCount, PB_DefectClass, PB_AnomalyArea (or as renamed in output_tags),
    # written in the same request. Unlisted ones need no tag in the controller.
    optional_outputs: list[OptionalOutput] = []
    # Optional inputs this station reads (recipes: recipe_id): DINT tag PB_PlcRecipeId (or as
    # renamed in input_tags), read in the same request. Unlisted ones need no tag.
    optional_inputs: list[OptionalInput] = []

    @model_validator(mode="before")
    @classmethod
    def _complete_tag_names(cls, data: Any) -> Any:
        return complete_tag_names(data)

    @property
    def program_scoped(self) -> bool:
        """True if any tag is program-scoped: only then must a connect upload program tags."""
        return any(n.startswith("Program:") for n in (*self.output_tags.values(), *self.input_tags.values()))


# ---------------------------------------------------------------------- values


def to_logix(signal: Signal, value: int) -> int | float:
    """A contract value (as in Outputs/Inputs) -> the value of its Logix tag."""
    if logix_type(signal) == "REAL":
        return value / SCORE_SCALE
    if signal.type == "u32" and value > _DINT_MAX:
        return value - (1 << 32)  # same 32 bits, two's complement
    return value


# Signals whose DINT is never taken modulo 65536: a value outside 0..65535 reads as this one.
_OUT_OF_RANGE_READS_AS = {"recipe_id": RECIPE_NONE}  # 65536 must not ask for recipe 0


def from_logix(signal: Signal, raw: float) -> int:
    """A Logix tag value -> the contract value; integer signals keep their low 16/32 bits
    (recipe_id: a value outside 0..65535 reads as 65535, no recipe)."""
    if logix_type(signal) == "REAL":
        f = float(raw)
        if math.isnan(f):
            return SCORE_SCALE  # fail closed, as contract.score_to_register does
        return int(round(min(max(f, 0.0), 1.0) * SCORE_SCALE))
    if signal.name in _OUT_OF_RANGE_READS_AS and not 0 <= int(raw) <= U16_MAX:
        return _OUT_OF_RANGE_READS_AS[signal.name]
    return int(raw) & (U32_MAX if signal.type == "u32" else U16_MAX)


def out_of_contract(signal: Signal, raw: float) -> str | None:
    """Why a value the bridge wrote is outside the contract, or None. The simulator counts these."""
    if logix_type(signal) == "REAL":
        f = float(raw)
        return None if 0.0 <= f <= 1.0 else f"{f!r} is outside 0.0..1.0"
    v = int(raw)
    if signal.type == "u32":
        return None if _DINT_MIN <= v <= _DINT_MAX else f"{v} does not fit a DINT"
    return None if 0 <= v <= U16_MAX else f"{v} is outside 0..{U16_MAX}"


def encode_outputs(outputs: Outputs, names: Mapping[str, str]) -> list[tuple[str, int | float]]:
    """(tag, value) pairs for one multi-tag write, in contract order: the signals `names`
    (signal -> tag) carries, which are every base signal and the optional ones it names."""
    values = outputs.as_dict()
    return [(names[t.signal.name], to_logix(t.signal, values[t.signal.name])) for t in carried_tags(names)]


def decode_outputs(raw: Mapping[str, int | float]) -> Outputs:
    """Outputs from {signal name: tag value} (the simulator's side): every base signal, and
    the optional ones `raw` holds; the others keep their defaults (nothing measured)."""
    return Outputs(**{t.signal.name: from_logix(t.signal, raw[t.signal.name]) for t in carried_tags(raw)})


def encode_inputs(inputs: Inputs) -> dict[str, int | float]:
    """{signal name: tag value} for every PLC-written tag (the simulator's side: it stores
    those its controller holds)."""
    values = inputs.as_dict()
    return {t.signal.name: to_logix(t.signal, values[t.signal.name]) for t in INPUT_TAGS}


def decode_inputs(raw: Mapping[str, int | float]) -> Inputs:
    """Inputs from {signal name: tag value}, as read by the bridge: every base signal, and
    the optional ones `raw` holds; the others keep their defaults (recipe_id: the default recipe)."""
    return Inputs(**{t.signal.name: from_logix(t.signal, raw[t.signal.name]) for t in carried_input_tags(raw)})


# ---------------------------------------------------------------------- docs

_ENCODING = {
    ("DINT", "u16"): "0..65535",
    ("DINT", "bits"): "bit mask, 0..65535",
    ("DINT", "u32"): "all 32 bits, two's complement (ids from 2^31 read negative)",
    ("REAL", "u16"): "0.0..1.0",
}
# Signals whose value in the tag reads otherwise than their type's row above says.
_SIGNAL_ENCODING = {
    "anomaly_area": "all 32 bits, two's complement (an area from 2^31 pixels up would read negative)",
    "recipe_id": "0..65534; a value outside 0..65535 reads as 65535 (no recipe), never modulo 65536",
}


def markdown_tables() -> str:
    """The tag table for docs/plc-interface.md (`plcbridge docs`)."""
    lines: list[str] = []
    optional_intro = (
        "Written only by a station that lists them in `plc.enip.optional_outputs` (the simulator: `[enip] "
        "optional_outputs`); without it the bridge neither writes nor checks them, and the controller needs no such "
        "tags. A listed one is a tag like those above: checked at connect, renamed in `[plc.enip.output_tags]`, "
        "written in the same request.")
    optional_in_intro = (
        "Read only by a station that lists them in `plc.enip.optional_inputs` (the simulator: `[enip] "
        "optional_inputs`); without it the bridge neither reads nor checks them, and the controller needs no such "
        "tags. A listed one is a tag like those above: checked at connect, renamed in `[plc.enip.input_tags]`, read "
        "in the same request.")
    for title, specs, writer, intro in (
        ("Outputs, bridge -> PLC (the bridge writes them)", carried_tags(()), "bridge", ""),
        ("Optional outputs, bridge -> PLC (only with `plc.enip.optional_outputs`)",
         tuple(t for t in OUTPUT_TAGS if t.signal.optional), "bridge", optional_intro),
        ("Inputs, PLC -> bridge (the PLC writes them)", carried_input_tags(()), "PLC", ""),
        ("Optional inputs, PLC -> bridge (only with `plc.enip.optional_inputs`)",
         tuple(t for t in INPUT_TAGS if t.signal.optional), "PLC", optional_in_intro),
    ):
        lines.append(f"### {title}\n")
        if intro:
            lines.append(f"{intro}\n")
        lines.append("| default tag name | Logix type | signal | contract type | value in the tag | meaning |")
        lines.append("|---|---|---|---|---|---|")
        for t in specs:
            enc = _SIGNAL_ENCODING.get(t.signal.name) or _ENCODING[(t.type, t.signal.type)]
            if writer == "PLC" and t.signal.type == "u16" and t.signal.name not in _SIGNAL_ENCODING:
                enc += "; the bridge uses the value modulo 65536"
            meaning = _TYPE_OVERRIDES[t.signal.name][1] if t.signal.name in _TYPE_OVERRIDES else t.signal.meaning
            lines.append(f"| `{t.default_name}` | {t.type} | `{t.signal.name}` | {t.signal.type} | {enc} | {meaning} |")
        lines.append("")
    lines.append(
        "Config keys: `[plc.enip.output_tags]` and `[plc.enip.input_tags]` map a signal to a tag name "
        "(`Tag` or `Program:Prog.Tag`); signals left out keep the default names above. Status bits, "
        "result codes and fault codes are those of the tables in the Modbus section."
    )
    lines.append("")
    return "\n".join(lines)
