"""The signal contract as OPC UA nodes: identifiers, data types, the generated node table.

The one place that says how `plcbridge.contract` maps onto OPC UA. The adapter
(adapters/plc/opcua.py), the simulator front-end (simulators/opcua.py), the bridge's
`[plc.opcua]` and the simulator's `[opcua]` settings (both extend `OpcUaNodeMap`) and the docs
use it, so they cannot disagree.

Addressing. A node is its namespace *URI* plus an identifier, never a bare namespace index:
a server assigns indexes when it starts (an S7-1500 after a download, a TwinCAT runtime after
an activation) and may hand out different ones next time. The bridge looks the index up in
the server's NamespaceArray at every connect.

Identifiers come from two templates, `{signal}` replaced by the contract name, so a PLC's
data block layout is one line of config:

- default `plcbridge.outputs.{signal}` / `plcbridge.inputs.{signal}` (the simulator's);
- S7-1500 `"InspectionDB"."outputs"."{signal}"` in namespace `http://www.siemens.com/simatic-s7-opcua`;
- TwinCAT `MAIN.fbBridge.outputs.{signal}` in namespace `urn:BeckhoffAutomation:Ua:PLC1`.

Single signals can be renamed; `i=1234` is a numeric identifier, `s=...` forces a string,
anything else is a string identifier.

Types. Each signal keeps its contract type: u16 is UInt16, u32 is UInt32 and the status bits
word is UInt16 (IEC 61131-3 UINT / UDINT / WORD, which S7-1500 and TwinCAT expose as exactly
these). `score` stays the u16 defect score x 10000, as over Modbus, so one PLC program
handles both transports.

Optional outputs (`optional_outputs`) are nodes like the others, from the same template
and renamed the same way, but only a station that lists them has them: without it the node
set is the base signals' alone, and neither the bridge nor the simulator knows the others.
A listed one is written in the same Write as the rest and checked at connect like the rest.
Optional inputs (`optional_inputs`: recipe_id) are input nodes on the same terms: from
`input_template`, read in the same Read request, only where listed.

This module does not import asyncua: the config schema uses it, and a Modbus-only station
never loads asyncua. Types are named here ("UInt16"); the adapter resolves them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from plcbridge.contract import (
    BASE_INPUT_SIGNALS,
    BASE_OUTPUT_SIGNALS,
    INPUT_SIGNALS,
    OPTIONAL_INPUT_SIGNALS,
    OPTIONAL_OUTPUT_SIGNALS,
    OUTPUT_SIGNALS,
    OptionalInput,
    OptionalOutput,
    Signal,
    SignalType,
    carried_inputs,
    carried_outputs,
)
from plcbridge.schema import Strict

Direction = Literal["output", "input"]

DEFAULT_NAMESPACE_URI = "urn:plcbridge:plc"
DEFAULT_OUTPUT_TEMPLATE = "plcbridge.outputs.{signal}"
DEFAULT_INPUT_TEMPLATE = "plcbridge.inputs.{signal}"
PLACEHOLDER = "{signal}"

# contract type -> OPC UA built-in data type (the name of ua.VariantType / ua.ObjectIds member).
UA_TYPES: dict[SignalType, str] = {"u16": "UInt16", "u32": "UInt32", "bits": "UInt16"}
# ... and what a PLC programmer declares for it.
IEC_TYPES: dict[SignalType, str] = {"u16": "UINT", "u32": "UDINT", "bits": "WORD"}


@dataclass(frozen=True)
class NodeSpec:
    """One contract signal as one OPC UA variable."""

    signal: Signal
    direction: Direction
    identifier: str  # as configured: "plcbridge.outputs.heartbeat", "i=1001", "s=..."

    @property
    def key(self) -> str:
        """"outputs.heartbeat": unique, unlike the signal name (part_id goes both ways)."""
        return f"{self.direction}s.{self.signal.name}"

    @property
    def ua_type(self) -> str:
        return UA_TYPES[self.signal.type]

    @property
    def parsed_identifier(self) -> str | int:
        return parse_identifier(self.identifier)

    def expanded(self, namespace_uri: str) -> str:
        """The node as an expanded node id string (`nsu=URI;s=ID`), which generic clients accept."""
        ident = self.parsed_identifier
        return f"nsu={namespace_uri};" + (f"i={ident}" if isinstance(ident, int) else f"s={ident}")


def parse_identifier(text: str) -> str | int:
    """`i=1234` -> 1234; `s=Name` -> "Name"; anything else is a string identifier as written."""
    if text.startswith("i=") and text[2:].isdigit():
        return int(text[2:])
    if text.startswith("s="):
        return text[2:]
    return text


def _defaults(template: str, signals: tuple[Signal, ...]) -> dict[str, str]:
    return {s.name: template.replace(PLACEHOLDER, s.name) for s in signals}


def resolve_nodes(
    output_template: str, input_template: str, output_nodes: Mapping[str, str], input_nodes: Mapping[str, str],
    optional_outputs: Collection[str] = (), optional_inputs: Collection[str] = (),
) -> tuple[dict[str, str], dict[str, str]]:
    """Per-signal identifiers over the templates' defaults, checked; complete maps back: every
    base output, the optional outputs `optional_outputs` lists, every base input, the optional
    inputs `optional_inputs` lists.

    Raises ValueError naming every problem: a template without `{signal}`, an unknown
    signal, an optional one renamed but not listed, an empty identifier, two signals on one node.
    """
    problems: list[str] = []
    resolved: list[dict[str, str]] = []
    for what, template, signals, given, optional in (
        ("output", output_template, carried_outputs(optional_outputs), output_nodes, OPTIONAL_OUTPUT_SIGNALS),
        ("input", input_template, carried_inputs(optional_inputs), input_nodes, OPTIONAL_INPUT_SIGNALS),
    ):
        if PLACEHOLDER not in template:
            problems.append(f"{what}_template {template!r} has no {PLACEHOLDER}: every signal would share one node")
        names = _defaults(template, signals)
        for signal, ident in given.items():
            if signal not in names and any(s.name == signal for s in optional):
                problems.append(f"{what}_nodes: {signal!r} is an optional {what}: list it in optional_{what}s "
                                "to carry it")
            elif signal not in names:
                problems.append(f"{what}_nodes: {signal!r} is not a contract signal (known: {', '.join(names)})")
            elif not isinstance(ident, str) or not parse_identifier(ident):
                problems.append(f"{what}_nodes.{signal}: {ident!r} is not a node identifier")
            else:
                names[signal] = ident
        resolved.append(names)
    seen: dict[str | int, str] = {}
    for what, names in (("output", resolved[0]), ("input", resolved[1])):
        for signal, ident in names.items():
            key = parse_identifier(ident)
            if key in seen:
                problems.append(f"node {ident!r} is used for both {seen[key]} and {what} {signal}")
            seen[key] = f"{what} {signal}"
    if problems:
        raise ValueError("; ".join(problems))
    return resolved[0], resolved[1]


def complete_node_names(data: Any) -> Any:
    """Fill in the per-signal identifiers from the templates (OpcUaNodeMap's before-validator),
    so `check-config` shows every node, and both ends of a link resolve names the same way."""
    if not isinstance(data, dict):
        return data
    templates = data.get("output_template", DEFAULT_OUTPUT_TEMPLATE), data.get("input_template", DEFAULT_INPUT_TEMPLATE)
    given = data.get("output_nodes", {}), data.get("input_nodes", {})
    optional = data.get("optional_outputs", [])
    optional_in = data.get("optional_inputs", [])
    if not all(isinstance(t, str) for t in templates) or not all(isinstance(g, dict) for g in given) \
            or not isinstance(optional, (list, tuple)) or not isinstance(optional_in, (list, tuple)):
        return data  # the fields' own type checks report it
    outputs, inputs = resolve_nodes(*templates, *given, optional_outputs=[n for n in optional if isinstance(n, str)],
                                    optional_inputs=[n for n in optional_in if isinstance(n, str)])
    return {**data, "output_nodes": outputs, "input_nodes": inputs}


class OpcUaNodeMap(Strict):
    """Which nodes carry the contract: the part of the settings both ends share.

    After validation the node maps are complete (every signal, templates applied)."""

    namespace_uri: Annotated[str, Field(min_length=1)] = DEFAULT_NAMESPACE_URI
    output_template: str = DEFAULT_OUTPUT_TEMPLATE
    input_template: str = DEFAULT_INPUT_TEMPLATE
    # signal name -> identifier ("s=..." string, "i=1234" numeric; plain text is a string id).
    output_nodes: dict[str, str] = {}
    input_nodes: dict[str, str] = {}
    # Optional outputs this station carries (detection, segmentation, anomaly models): nodes
    # from output_template (or output_nodes) like the rest, written in the same Write request.
    # Unlisted ones have no node: the base node set is what it was.
    optional_outputs: list[OptionalOutput] = []
    # Optional inputs this station reads (recipes: recipe_id): nodes from input_template (or
    # input_nodes), read in the same Read request. Unlisted ones have no node.
    optional_inputs: list[OptionalInput] = []

    @model_validator(mode="before")
    @classmethod
    def _complete_node_names(cls, data: Any) -> Any:
        return complete_node_names(data)

    def specs(self) -> tuple[tuple[NodeSpec, ...], tuple[NodeSpec, ...]]:
        """The nodes in contract order."""
        return node_specs(self.output_nodes, self.input_nodes)


def node_specs(output_nodes: Mapping[str, str], input_nodes: Mapping[str, str]) -> tuple[tuple[NodeSpec, ...], tuple[NodeSpec, ...]]:
    """The nodes in contract order (the order of Outputs / Inputs fields): every base signal,
    and the optional ones the maps name (a complete map names those listed)."""
    return (
        tuple(NodeSpec(s, "output", output_nodes[s.name]) for s in OUTPUT_SIGNALS if not s.optional or s.name in output_nodes),
        tuple(NodeSpec(s, "input", input_nodes[s.name]) for s in INPUT_SIGNALS if not s.optional or s.name in input_nodes),
    )


def markdown_tables() -> str:
    """The node table for docs/plc-interface.md, with the default identifiers."""
    every, every_in = node_specs(_defaults(DEFAULT_OUTPUT_TEMPLATE, OUTPUT_SIGNALS),
                                 _defaults(DEFAULT_INPUT_TEMPLATE, INPUT_SIGNALS))
    outs = tuple(n for n in every if n.signal in BASE_OUTPUT_SIGNALS)
    optional = tuple(n for n in every if n.signal in OPTIONAL_OUTPUT_SIGNALS)
    ins = tuple(n for n in every_in if n.signal in BASE_INPUT_SIGNALS)
    optional_in = tuple(n for n in every_in if n.signal in OPTIONAL_INPUT_SIGNALS)
    lines: list[str] = []

    def table(title: str, specs: tuple[NodeSpec, ...], writer: str, intro: str = "") -> None:
        lines.append(f"### {title}\n")
        if intro:
            lines.append(f"{intro}\n")
        lines.append(f"| node (namespace `{DEFAULT_NAMESPACE_URI}`) | signal | OPC UA type | declare as | written by | meaning |")
        lines.append("|---|---|---|---|---|---|")
        for n in specs:
            lines.append(
                f"| `{n.identifier}` | `{n.signal.name}` | {n.ua_type} | {IEC_TYPES[n.signal.type]} | {writer} | {n.signal.meaning} |"
            )
        lines.append("")

    table("Output nodes, bridge -> PLC (written together in one Write request per tick)", outs, "bridge")
    table("Optional output nodes, bridge -> PLC (only with `plc.opcua.optional_outputs`)", optional, "bridge",
          "Written only by a station that lists them in `plc.opcua.optional_outputs` (the simulator: `[opcua] "
          "optional_outputs`, which creates them); without it the bridge neither writes nor checks them, and the "
          "PLC needs no such variables. A listed one is a node like those above: from `output_template` (or "
          "renamed in `[plc.opcua.output_nodes]`), checked at connect, written in the same Write request.")
    table("Input nodes, PLC -> bridge (read together in one Read request per tick)", ins, "PLC")
    table("Optional input nodes, PLC -> bridge (only with `plc.opcua.optional_inputs`)", optional_in, "PLC",
          "Read only by a station that lists them in `plc.opcua.optional_inputs` (the simulator: `[opcua] "
          "optional_inputs`, which creates them); without it the bridge neither reads nor checks them. A listed one "
          "is a node like those above: from `input_template` (or renamed in `[plc.opcua.input_nodes]`), checked at "
          "connect, read in the same Read request.")
    lines.append(
        "Status bits, result codes and fault codes are the same numbers as in the Modbus tables above."
    )
    return "\n".join(lines)
