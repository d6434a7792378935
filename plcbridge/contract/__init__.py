"""The PLC signal contract: the one definition of every signal the bridge and the PLC share.

Everything that talks about the PLC interface comes from this package: the adapters, the
docs (`plcbridge docs` writes `docs/plc-interface.md`), the PLC simulator and the tests.
Change a signal here and all of them change together.

This module holds the protocol-free part: the signals, codes and the `Outputs` / `Inputs`
values adapters carry. Each protocol's wire form (how those values become registers, nodes or
tags, and the mapping model the bridge's config and the simulator's device file share) is a
module beside it: `modbus.py`, `opcua.py`, `enip.py`, listed in plcbridge/protocols.py.

Optional signals. The outputs a classifier station writes are the base block; the result
details of other model kinds (detection, segmentation: `defect_count`, `defect_class`;
anomaly: `anomaly_area`) are *optional* outputs, after the base block in OUTPUT_SIGNALS. A
station carries one only when its mapping lists it (`optional_outputs` of each protocol's
map; `carried_outputs()` says which), so a station that lists none keeps its register map,
node set and tag list exactly as they were. The in-process `loop` carries every signal.

Recipes. A multi-product line changes the station's recipe (its model and rules: Cognex
In-Sight's Job ID, LandingEdge's sub-configuration index) with a number the PLC writes: the
optional *input* `recipe_id` (an input block that grows after its base signals, listed in each
mapping's `optional_inputs`; `carried_inputs()`), answered by two optional outputs:
`active_recipe`, the station's state (the recipe a trigger is judged with now: the PLC's
handshake waits until it equals recipe_id), and `result_recipe`, the recipe the result of its
own block was judged with (like score: it stays with its result). Recipe ids are 0..65534;
0 is the station's default recipe (what a station without recipes has, and what a PLC that
asks nothing gets), and 65535 (RECIPE_NONE) is no recipe: never a recipe of a station.
Fault codes RECIPE_CHANGING and RECIPE_UNKNOWN answer triggers the station cannot judge with
the recipe asked. docs/plc-interface.md "Recipes" has the handshake.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass, fields
from typing import Literal, get_args

U16_MAX = 0xFFFF
U32_MAX = 0xFFFFFFFF
SCORE_SCALE = 10000  # score register = defect score x 10000
# defect_class when there is no class to give: no defect counted, a fail-safe, no result yet.
# Not 0: class ids are the model's own, 0-based, so 0 is the model's first class.
DEFECT_CLASS_NONE = U16_MAX
# Recipes: recipe_id 0 asks for the station's default recipe (its [model]; a station without
# recipes has that one alone); ids run 0..65534. RECIPE_NONE is no recipe: active_recipe while
# none is active (a switch in progress, or recipe_id unknown), result_recipe of an answer no
# recipe judged (a fail-safe, no result). A PLC that writes it asks for no recipe the station
# has (RECIPE_UNKNOWN).
RECIPE_DEFAULT = 0
RECIPE_NONE = U16_MAX


class StatusBit(enum.IntFlag):
    """Bits of the `status` output word."""

    # The bridge can inspect now: PLC_INPUTS_OK, MODEL_OK and CAMERA_OK all set, and, on a station
    # that reads recipe_id, the recipe the PLC asks for is active (active_recipe == recipe_id).
    READY = 1 << 0
    TRIGGER_READY = 1 << 1  # triggered mode: a new trigger would be seen and accepted now
    CAMERA_OK = 1 << 2  # frames are arriving within the stall limit
    MODEL_OK = 1 << 3  # a verified model session is loaded (or, recipes: the one asked for is loading)
    FAILSAFE_ACTIVE = 1 << 4  # the result fields carry the configured fail-safe output
    RESULT_VALID = 1 << 5  # result_seq/result_code/score/part_id describe a real decision
    PLC_INPUTS_OK = 1 << 6  # the bridge's copy of the PLC inputs is younger than plc.max_input_age_ms
    # A model change tripped its watch ([model.watch]) and the last-known-good model judges again:
    # verdicts are trustworthy (READY is unaffected), but someone must look at the model change.
    MODEL_ROLLED_BACK = 1 << 7


class ResultCode(enum.IntEnum):
    NONE = 0  # no result yet (start-up, or triggered mode before the first trigger)
    PASS = 1
    FAIL = 2
    FAILSAFE = 3  # no trustworthy verdict: treat the part as the plant's fail-safe says


class FaultCode(enum.IntEnum):
    NONE = 0
    INFERENCE_TIMEOUT = 1  # the model did not answer within its budget
    INFERENCE_ERROR = 2  # the model raised an error
    STALE_RESULT = 3  # the newest decision is older than max_result_age_ms
    CAMERA_FAULT = 4  # no frame within the stall limit, or the source failed
    MODEL_NOT_READY = 5  # no model session loaded
    TRIGGER_OVERRUN = 6  # a trigger arrived while the trigger queue was full, or was skipped
    SHUTTING_DOWN = 7  # the daemon is stopping; this is its last write
    BAD_FRAME = 8  # the frame is not what the model expects (shape, dtype, empty)
    PLC_INPUTS_STALE = 9  # the newest PLC inputs the bridge has are older than plc.max_input_age_ms
    NO_FRAME = 10  # triggered: no frame of the trigger's own within timing.frame_window_ms
    RECIPE_CHANGING = 11  # recipes: a trigger arrived while the switch to the recipe asked was in progress
    RECIPE_UNKNOWN = 12  # recipes: recipe_id names no recipe of this station


FAULT_MEANING: dict[FaultCode, str] = {
    FaultCode.NONE: "no fault",
    FaultCode.INFERENCE_TIMEOUT: "the model did not answer within inference_timeout_ms / result_timeout_ms",
    FaultCode.INFERENCE_ERROR: "the model session raised an error for this frame",
    FaultCode.STALE_RESULT: "free-run: the newest decision's frame is older than max_result_age_ms",
    FaultCode.CAMERA_FAULT: "no frame arrived within the camera stall limit, or the source failed",
    FaultCode.MODEL_NOT_READY: "no model session is loaded",
    FaultCode.TRIGGER_OVERRUN: "triggered: the trigger queue was full, or trigger_seq skipped a value",
    FaultCode.SHUTTING_DOWN: "the daemon is stopping; this is its final write",
    FaultCode.BAD_FRAME: "the frame does not match the model's input (shape, dtype, empty)",
    FaultCode.PLC_INPUTS_STALE: "the bridge has had no answer from the PLC for longer than plc.max_input_age_ms: "
                                "it cannot see triggers or acks (written in every block while it lasts); as a "
                                "result's fault: the trigger was read too late to tie it to a frame",
    FaultCode.NO_FRAME: "triggered: no frame captured within timing.frame_window_ms after the trigger was free for it "
                        "(each frame judges at most one trigger)",
    FaultCode.RECIPE_CHANGING: "recipes: the trigger came with a recipe_id whose switch was still in progress: answered "
                               "fail-safe, never judged by the previous recipe's model; as a health fault: a switch is "
                               "in progress (active_recipe 65535, READY and TRIGGER_READY clear)",
    FaultCode.RECIPE_UNKNOWN: "recipes: recipe_id names no recipe of this station (65535 never does): every trigger is "
                              "answered fail-safe with it, and READY stays clear (active_recipe 65535), until "
                              "recipe_id names one it has",
}

# What a PLC program should do when it reads each fault code: the docs' table comes from here.
FAULT_PLC_ACTION: dict[FaultCode, str] = {
    FaultCode.NONE: "nothing",
    FaultCode.INFERENCE_TIMEOUT: "treat the part as the fail-safe says (reject); alarm if it repeats (3 fail-safe "
                                 "answers in a row)",
    FaultCode.INFERENCE_ERROR: "reject the part; alarm (the model or the frame is broken)",
    FaultCode.STALE_RESULT: "free-run: stop trusting verdicts; stop or divert the line until FAILSAFE_ACTIVE clears",
    FaultCode.CAMERA_FAULT: "reject the part; alarm and check the camera (READY is cleared, stop triggering)",
    FaultCode.MODEL_NOT_READY: "reject the part; do not trigger until READY returns (a model is being loaded or failed)",
    FaultCode.TRIGGER_OVERRUN: "reject the parts it answers; trigger slower or wait for TRIGGER_READY",
    FaultCode.SHUTTING_DOWN: "reject the part it answers; stop triggering; the heartbeat stops next",
    FaultCode.BAD_FRAME: "reject the part; check the camera's format, resolution and exposure",
    FaultCode.PLC_INPUTS_STALE: "reject the part it answers; stop triggering until READY returns; check the network "
                                "and the PLC's communication load",
    FaultCode.NO_FRAME: "reject the part; alarm if it repeats (3 fail-safe answers in a row): triggers come faster "
                        "than the camera delivers frames, or the camera lags",
    FaultCode.RECIPE_CHANGING: "reject the part; after writing a new recipe_id, trigger only once active_recipe == "
                               "recipe_id and READY is set (see \"Recipes\")",
    FaultCode.RECIPE_UNKNOWN: "reject the part; stop triggering; alarm: write a recipe id the station has (its station "
                              "file lists them; 0 is its default recipe)",
}
assert set(FAULT_PLC_ACTION) == set(FaultCode) == set(FAULT_MEANING)


def code_name(code: type[ResultCode] | type[FaultCode], value: int) -> str | None:
    """The name of `value` as a `code` (ResultCode.PASS's "PASS"), or None when `value` is no
    such code: a register read from a PLC or written by someone else may hold anything."""
    try:
        return code(value).name
    except ValueError:
        return None


# trigger_seq and result_seq count 1..65535 and wrap to 1: 0 means "idle" (a PLC that has
# not triggered since it started) and is never a trigger.
SEQ_MAX = U16_MAX


def next_seq(seq: int) -> int:
    """The trigger_seq after `seq`: 65535 -> 1, and 0 (idle) -> 1."""
    return seq % SEQ_MAX + 1


def seq_delta(old: int, new: int) -> int:
    """How many increments lead from `old` to `new` (1..65535 wrapping to 1; old may be 0)."""
    if new == 0:
        return 0
    if old == 0:
        return new
    return (new - old) % SEQ_MAX

SignalType = Literal["u16", "u32", "bits"]


@dataclass(frozen=True)
class Signal:
    name: str
    type: SignalType
    meaning: str
    # An optional output: carried only where the station's mapping lists it (optional_outputs).
    optional: bool = False

    @property
    def words(self) -> int:
        """How many 16-bit registers the signal takes."""
        return 2 if self.type == "u32" else 1


OUTPUT_SIGNALS: tuple[Signal, ...] = (
    Signal("heartbeat", "u16", "+1 every write tick, wraps 65535 -> 0 (an extra block between ticks repeats it); "
                               "starts again at 0 when the daemon starts; a PLC alarms when it stops changing"),
    Signal("status", "bits", ", ".join(f"b{int(b).bit_length() - 1} {b.name}" for b in StatusBit)),
    Signal("result_seq", "u16", "the trigger_seq (triggered) or frame sequence mod 65536 (free-run) this result answers"),
    Signal("result_code", "u16", "0 NONE, 1 PASS, 2 FAIL, 3 FAILSAFE"),
    Signal("score", "u16", f"defect score x {SCORE_SCALE} (0..{SCORE_SCALE})"),
    Signal("fault_code", "u16", "PLC_INPUTS_STALE while the bridge is blind; else why FAILSAFE_ACTIVE is set; else "
                                "the current health fault, 0 when healthy (codes below)"),
    Signal("latency_ms", "u16", "capture of the frame judged -> decision, milliseconds (saturates at 65535); 0 when "
                                "the answer judged no frame"),
    Signal("model_version", "u16", "model version from the model manifest"),
    Signal("part_id", "u32", "echo of the PLC's part_id for this result (triggered); 0 in free-run"),
    # Optional result details, after the base block (nothing of a classifier station moves).
    # Each describes the result of its own block (same result_seq), like score; with a
    # FAILSAFE or NONE result they say "nothing measured".
    Signal("defect_count", "u16", "optional (detection, segmentation models): how many defects the model counted in "
                                  "the frame judged, saturating at 65535; 0 with a FAILSAFE or NONE result and for "
                                  "other model kinds", optional=True),
    Signal("defect_class", "u16", f"optional (detection, segmentation models): the class id of the worst counted "
                                  f"defect as the model numbers its classes (0 is its first class, no +1), "
                                  f"0..{DEFECT_CLASS_NONE - 1}; {DEFECT_CLASS_NONE} = none: no defect counted "
                                  f"(always with defect_count 0), no class given, a FAILSAFE or NONE result, other "
                                  f"model kinds", optional=True),
    Signal("anomaly_area", "u32", "optional (anomaly models): the anomalous area of the frame judged, in frame pixels, "
                                  f"saturating at {U32_MAX}; 0 with a FAILSAFE or NONE result and for other model "
                                  "kinds", optional=True),
    # Recipes (a station that reads recipe_id): the station's state, then the result's own.
    Signal("active_recipe", "u16", f"optional (recipes): the recipe the station judges triggers with now, "
                                   f"0..{RECIPE_NONE - 1} (0: its default recipe); equal to recipe_id once the switch "
                                   f"to it is done; {RECIPE_NONE} = none: a switch in progress, or recipe_id names no "
                                   "recipe of the station. Station state, like the health bits, not the result's",
           optional=True),
    Signal("result_recipe", "u16", f"optional (recipes): the recipe the result in this block was judged with (0: the "
                                   "default recipe; triggered: always the recipe_id read with its trigger); "
                                   f"{RECIPE_NONE} = none: a FAILSAFE or NONE result (no recipe judged it)", optional=True),
)

#: The outputs every station carries (a classifier station's whole block), in contract order.
BASE_OUTPUT_SIGNALS: tuple[Signal, ...] = tuple(s for s in OUTPUT_SIGNALS if not s.optional)
#: The optional outputs, in contract order: after the base block, never between its signals.
OPTIONAL_OUTPUT_SIGNALS: tuple[Signal, ...] = tuple(s for s in OUTPUT_SIGNALS if s.optional)
assert OUTPUT_SIGNALS == BASE_OUTPUT_SIGNALS + OPTIONAL_OUTPUT_SIGNALS

#: The name of an optional output, as the mappings' `optional_outputs` lists it.
OptionalOutput = Literal["defect_count", "defect_class", "anomaly_area", "active_recipe", "result_recipe"]
assert get_args(OptionalOutput) == tuple(s.name for s in OPTIONAL_OUTPUT_SIGNALS)


def carried_outputs(optional_outputs: Collection[str] = ()) -> tuple[Signal, ...]:
    """The output signals a station carries, in contract order: every base signal, then the
    optional ones `optional_outputs` lists (names that are no optional signal are ignored:
    the settings' own validation names them)."""
    return tuple(s for s in OUTPUT_SIGNALS if not s.optional or s.name in optional_outputs)

INPUT_SIGNALS: tuple[Signal, ...] = (
    Signal("trigger_seq", "u16", "the PLC increments it by 1 to ask for one inspection: 1..65535, wrapping to 1; "
                                 "0 means idle (nothing asked since the PLC started) and is never a trigger"),
    Signal("part_id", "u32", "the PLC's identity of the part under the camera; latched with the trigger"),
    Signal("result_ack_seq", "u16", "the PLC copies result_seq here once it has taken the result"),
    # Optional inputs, after the base block (nothing of a station without recipes moves).
    Signal("recipe_id", "u16", f"optional (recipes): the recipe the PLC asks for, 0..{RECIPE_NONE - 1}; 0 = the "
                               "station's default recipe (also when the PLC writes nothing here); latched with each "
                               "trigger: a trigger is judged with the recipe_id read with it, or answered fail-safe "
                               f"(RECIPE_CHANGING, RECIPE_UNKNOWN; {RECIPE_NONE} names no recipe)", optional=True),
)

#: The inputs every station reads (a station without recipes reads these alone), in contract order.
BASE_INPUT_SIGNALS: tuple[Signal, ...] = tuple(s for s in INPUT_SIGNALS if not s.optional)
#: The optional inputs, in contract order: after the base block, never between its signals.
OPTIONAL_INPUT_SIGNALS: tuple[Signal, ...] = tuple(s for s in INPUT_SIGNALS if s.optional)
assert INPUT_SIGNALS == BASE_INPUT_SIGNALS + OPTIONAL_INPUT_SIGNALS

#: The name of an optional input, as the mappings' `optional_inputs` lists it.
OptionalInput = Literal["recipe_id"]
assert get_args(OptionalInput) == tuple(s.name for s in OPTIONAL_INPUT_SIGNALS)


def carried_inputs(optional_inputs: Collection[str] = ()) -> tuple[Signal, ...]:
    """The input signals a station reads, in contract order: every base signal, then the
    optional ones `optional_inputs` lists (other names are ignored, as in carried_outputs)."""
    return tuple(s for s in INPUT_SIGNALS if not s.optional or s.name in optional_inputs)


@dataclass(frozen=True)
class Outputs:
    """One write tick's values, bridge -> PLC."""

    heartbeat: int = 0
    status: int = 0
    result_seq: int = 0
    result_code: int = ResultCode.NONE
    score: int = 0
    fault_code: int = FaultCode.NONE
    latency_ms: int = 0
    model_version: int = 0
    part_id: int = 0
    # Optional outputs (carried only where the mapping lists them); "nothing measured" by default.
    defect_count: int = 0
    defect_class: int = DEFECT_CLASS_NONE
    anomaly_area: int = 0
    # Recipes: the default recipe active (a station without recipes), no recipe judged (no result).
    active_recipe: int = RECIPE_DEFAULT
    result_recipe: int = RECIPE_NONE

    def as_dict(self) -> dict[str, int]:
        # Field by field, not dataclasses.asdict (a deep copy, 4x slower): the link encodes a
        # block this way on every exchange, holding the GIL the write loop waits for.
        return {s.name: int(getattr(self, s.name)) for s in OUTPUT_SIGNALS}


@dataclass(frozen=True)
class Inputs:
    """One tick's values read from the PLC."""

    trigger_seq: int = 0
    part_id: int = 0
    result_ack_seq: int = 0
    # Optional input (read only where the mapping lists it): the default recipe otherwise.
    recipe_id: int = RECIPE_DEFAULT

    def as_dict(self) -> dict[str, int]:
        return {s.name: int(getattr(self, s.name)) for s in INPUT_SIGNALS}


assert [f.name for f in fields(Outputs)] == [s.name for s in OUTPUT_SIGNALS]
assert [f.name for f in fields(Inputs)] == [s.name for s in INPUT_SIGNALS]


def check_range(signal: Signal, value: int) -> int:
    """Return value if it fits the signal's type, else raise ValueError naming the signal."""
    top = U32_MAX if signal.type == "u32" else U16_MAX
    if not 0 <= int(value) <= top:
        raise ValueError(f"{signal.name}={value} is out of range 0..{top} for {signal.type}")
    return int(value)


def score_to_register(score: float) -> int:
    """Defect score in [0, 1] -> u16 register; NaN or out-of-range scores are clamped to 1 (fail closed)."""
    if not score == score:  # NaN
        return SCORE_SCALE
    return int(round(min(max(score, 0.0), 1.0) * SCORE_SCALE))


def defect_count_register(count: int) -> int:
    """A defect count -> its u16 register, saturating at 65535 (a negative count is 0)."""
    return min(max(int(count), 0), U16_MAX)


def defect_class_register(class_id: int | None, count: int) -> int:
    """The class id of the worst counted defect -> its u16 register: DEFECT_CLASS_NONE when
    no defect was counted (`count` 0) or there is no class (None, negative); an id beyond
    DEFECT_CLASS_NONE - 1 saturates there, so it never reads as "none"."""
    if count <= 0 or class_id is None or class_id < 0:
        return DEFECT_CLASS_NONE
    return min(int(class_id), DEFECT_CLASS_NONE - 1)


def area_register(pixels: int) -> int:
    """An area in frame pixels -> its u32 value, saturating at 2^32 - 1 (negative is 0)."""
    return min(max(int(pixels), 0), U32_MAX)


def code_tables() -> str:
    """The status bits, result codes and fault codes as Markdown: the same numbers on every
    protocol (each wire form's tables refer to these)."""
    lines = ["### Status bits\n", "| bit | mask | name |", "|---|---|---|"]
    for b in StatusBit:
        lines.append(f"| b{int(b).bit_length() - 1} | {int(b)} | {b.name} |")
    lines += ["\n### Result codes\n", "| code | name |", "|---|---|"]
    for r in ResultCode:
        lines.append(f"| {int(r)} | {r.name} |")
    lines += ["\n### Fault codes\n", "| code | name | meaning | what the PLC should do |", "|---|---|---|---|"]
    for f in FaultCode:
        lines.append(f"| {int(f)} | {f.name} | {FAULT_MEANING[f]} | {FAULT_PLC_ACTION[f]} |")
    lines.append("")
    return "\n".join(lines)
