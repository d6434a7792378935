"""The signal contract as Modbus holding registers: the register layout and its settings.

The one place that says how `plcbridge.contract` maps onto Modbus TCP. The adapter
(adapters/plc/modbus.py), the simulator front-end (simulators/modbus.py), the bridge's
`[plc.modbus]` and the simulator's `[modbus]` settings (both extend `ModbusMap`) and the docs
use it, so the two ends of a link cannot lay the registers out differently.

Optional outputs (`optional_outputs`) have fixed offsets after the base block, in contract
order (10 defect_count, 11 defect_class, 12-13 anomaly_area at the default layout), so the
base block never moves and a signal's address never depends on which others are listed. The
output block stays one contiguous block, written by one request: with optional outputs it
runs on to the end of the last one listed, and an optional signal before that one is
written too (with its value: 0, or none, where the model gives none). The recipe outputs
follow them (14 active_recipe, 15 result_recipe).

Optional inputs (`optional_inputs`: recipe_id) likewise have fixed offsets after the base
input block (4 recipe_id at the default layout): a station that lists none reads the four
registers it always read, one that lists recipe_id reads five, still in one request.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, model_validator

from plcbridge.contract import (
    BASE_INPUT_SIGNALS,
    BASE_OUTPUT_SIGNALS,
    INPUT_SIGNALS,
    OPTIONAL_INPUT_SIGNALS,
    OPTIONAL_OUTPUT_SIGNALS,
    OUTPUT_SIGNALS,
    U16_MAX,
    Inputs,
    OptionalInput,
    OptionalOutput,
    Outputs,
    Signal,
    carried_inputs,
    carried_outputs,
    check_range,
    code_tables,
)
from plcbridge.schema import FieldsError, Strict

WordOrder = Literal["high_first", "low_first"]


@dataclass(frozen=True)
class RegisterMap:
    """The Modbus holding-register layout of the contract.

    Outputs are one contiguous block from `outputs_base`, inputs one block from `inputs_base`,
    in the order of OUTPUT_SIGNALS / INPUT_SIGNALS. A u32 takes two registers in `word_order`.
    The output block is the base signals, then the optional ones up to the last one
    `optional_outputs` lists (none listed: the base block alone); the input block likewise
    with `optional_inputs`. The signal lists and counts are worked out once per map (the map
    is frozen): the link uses them on every exchange, holding the GIL the write loop waits for.
    """

    outputs_base: int = 0
    inputs_base: int = 100
    word_order: WordOrder = "high_first"
    optional_outputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()

    @cached_property
    def output_signals(self) -> tuple[Signal, ...]:
        """The signals of the output block, in register order."""
        last = max(OUTPUT_SIGNALS.index(s) for s in carried_outputs(self.optional_outputs))
        return OUTPUT_SIGNALS[: last + 1]

    @cached_property
    def outputs_count(self) -> int:
        return sum(s.words for s in self.output_signals)

    @cached_property
    def input_signals(self) -> tuple[Signal, ...]:
        """The signals of the input block, in register order."""
        last = max(INPUT_SIGNALS.index(s) for s in carried_inputs(self.optional_inputs))
        return INPUT_SIGNALS[: last + 1]

    @cached_property
    def inputs_count(self) -> int:
        return sum(s.words for s in self.input_signals)

    def offsets(self, signals: tuple[Signal, ...]) -> dict[str, int]:
        out, at = {}, 0
        for s in signals:
            out[s.name] = at
            at += s.words
        return out

    def _pack(self, signals: tuple[Signal, ...], values: dict[str, int]) -> list[int]:
        regs: list[int] = []
        for s in signals:
            v = check_range(s, values[s.name])
            if s.words == 2:
                hi, lo = v >> 16, v & U16_MAX
                regs += [hi, lo] if self.word_order == "high_first" else [lo, hi]
            else:
                regs.append(v)
        return regs

    def _unpack(self, signals: tuple[Signal, ...], regs: list[int]) -> dict[str, int]:
        need = sum(s.words for s in signals)
        if len(regs) != need:
            raise ValueError(f"expected {need} registers, got {len(regs)}")
        values, at = {}, 0
        for s in signals:
            if s.words == 2:
                a, b = regs[at], regs[at + 1]
                values[s.name] = (a << 16 | b) if self.word_order == "high_first" else (b << 16 | a)
            else:
                values[s.name] = regs[at]
            at += s.words
        return values

    def encode_outputs(self, o: Outputs) -> list[int]:
        return self._pack(self.output_signals, o.as_dict())

    def decode_outputs(self, regs: list[int]) -> Outputs:
        """The block's values; a signal outside the block keeps its default (nothing measured)."""
        return Outputs(**self._unpack(self.output_signals, regs))

    def encode_inputs(self, i: Inputs) -> list[int]:
        return self._pack(self.input_signals, i.as_dict())

    def decode_inputs(self, regs: list[int]) -> Inputs:
        """The block's values; a signal outside the block keeps its default (recipe_id: the default recipe)."""
        return Inputs(**self._unpack(self.input_signals, regs))


class ModbusMap(Strict):
    """Where the contract's two register blocks live: the part of the settings both ends share."""

    device_id: Annotated[int, Field(ge=0, le=255)] = 1
    outputs_base: Annotated[int, Field(ge=0, le=65535)] = 0
    inputs_base: Annotated[int, Field(ge=0, le=65535)] = 100
    word_order: WordOrder = "high_first"
    # Optional outputs this station carries (detection, segmentation, anomaly models; recipes).
    # They follow the base block at fixed offsets (10 defect_count, 11 defect_class, 12-13
    # anomaly_area, 14 active_recipe, 15 result_recipe from outputs_base), so nothing of the
    # base block moves; the output block then runs to the last one listed, and an optional
    # signal before it is written too.
    optional_outputs: list[OptionalOutput] = []
    # Optional inputs this station reads (recipes: recipe_id). They follow the base input
    # block at fixed offsets (4 recipe_id from inputs_base), so nothing of it moves.
    optional_inputs: list[OptionalInput] = []

    @property
    def register_map(self) -> RegisterMap:
        return RegisterMap(self.outputs_base, self.inputs_base, self.word_order, tuple(self.optional_outputs),
                           tuple(self.optional_inputs))

    @model_validator(mode="after")
    def _blocks_fit_and_do_not_overlap(self) -> "ModbusMap":
        # An overlap would make the bridge's writes clobber the PLC's inputs.
        rmap = self.register_map
        out = range(rmap.outputs_base, rmap.outputs_base + rmap.outputs_count)
        inp = range(rmap.inputs_base, rmap.inputs_base + rmap.inputs_count)
        where = ("outputs_base", "inputs_base", *(("optional_outputs",) if self.optional_outputs else ()),
                 *(("optional_inputs",) if self.optional_inputs else ()))
        if out.stop > 65536 or inp.stop > 65536:
            raise FieldsError(where, "a register block runs past address 65535")
        if out.start < inp.stop and inp.start < out.stop:
            raise FieldsError(where, f"output block {out.start}..{out.stop - 1} overlaps input block {inp.start}..{inp.stop - 1}")
        return self


def markdown_tables(rmap: RegisterMap | None = None) -> str:
    """The register tables and the code lists as Markdown, for docs/plc-interface.md."""
    rmap = rmap or RegisterMap()
    lines: list[str] = []

    def table(title: str, signals: tuple[Signal, ...], base: int, every: tuple[Signal, ...], intro: str = "") -> None:
        offs = rmap.offsets(every)
        lines.append(f"### {title}\n")
        if intro:
            lines.append(f"{intro}\n")
        lines.append("| register | offset | signal | type | meaning |")
        lines.append("|---|---|---|---|---|")
        for s in signals:
            o = offs[s.name]
            reg = f"{base + o}" if s.words == 1 else f"{base + o}-{base + o + 1}"
            off = f"{o}" if s.words == 1 else f"{o}-{o + 1}"
            lines.append(f"| {reg} | {off} | `{s.name}` | {s.type} | {s.meaning} |")
        lines.append("")

    table(f"Outputs, bridge -> PLC (holding registers from outputs_base = {rmap.outputs_base})", BASE_OUTPUT_SIGNALS,
          rmap.outputs_base, OUTPUT_SIGNALS)
    every = RegisterMap(rmap.outputs_base, rmap.inputs_base, rmap.word_order, tuple(s.name for s in OPTIONAL_OUTPUT_SIGNALS),
                        tuple(s.name for s in OPTIONAL_INPUT_SIGNALS))
    table("Optional outputs, bridge -> PLC (only with `plc.modbus.optional_outputs`)", OPTIONAL_OUTPUT_SIGNALS,
          rmap.outputs_base, OUTPUT_SIGNALS,
          "Written only by a station that lists them in `plc.modbus.optional_outputs` (the simulator: `[modbus] "
          "optional_outputs`); without it the output block is the table above and nothing here exists. Their "
          "addresses are fixed, right after the block above, whichever of them are listed: the output block then "
          "runs on, still one write, to the end of the last one listed, and an optional signal before that one is "
          "written too (with its value). All of them make the block "
          f"{every.outputs_count} registers ({rmap.outputs_base}..{rmap.outputs_base + every.outputs_count - 1}); "
          "keep the input block clear of it.")
    table(f"Inputs, PLC -> bridge (holding registers from inputs_base = {rmap.inputs_base})", BASE_INPUT_SIGNALS,
          rmap.inputs_base, INPUT_SIGNALS)
    table("Optional inputs, PLC -> bridge (only with `plc.modbus.optional_inputs`)", OPTIONAL_INPUT_SIGNALS,
          rmap.inputs_base, INPUT_SIGNALS,
          "Read only by a station that lists them in `plc.modbus.optional_inputs` (the simulator: `[modbus] "
          "optional_inputs`); without it the input block is the table above. Their addresses are fixed, right after "
          "the block above: the input block then runs on, still one read, to the end of the last one listed. All of "
          f"them make the block {every.inputs_count} registers ({rmap.inputs_base}.."
          f"{rmap.inputs_base + every.inputs_count - 1}); keep the output block clear of it.")
    lines.append(code_tables())
    return "\n".join(lines)
