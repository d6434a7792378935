"""`plcbridge sim ... --trace FILE`: when each new result first reached the PLC.

One JSON line per output write whose (result_seq, result_code, fault_code) differs from the
previous write's, stamped with the simulator's CLOCK_MONOTONIC time of arrival. That is the
PLC side of every end-to-end latency: `plcbridge bench` joins it with the daemon's
`decision` log events (same sequence number, same clock: CLOCK_MONOTONIC is one clock for
all processes on Linux). A commissioning engineer can `tail -f` it, like pyserial's spy://.

Only changes are written (about one line per result, not one per 10 ms write), each flushed
so that a killed simulator loses nothing; the cost is one small write(2) per result. The
optional outputs the front-end's mapping carries (`optional_outputs`: the result details,
active_recipe, result_recipe) are in each line too, and with recipe_id carried
(`optional_inputs`) the recipe the PLC asked for when the line was written.

A line whose block answered one of this PLC's triggers carries `trigger_to_result_ms`: from
raising the trigger to this block's arrival, the PLC's own figure (the bench's trigger ->
result), per trigger. Percentiles of several runs are then taken over all their triggers
together instead of as a median of each run's p99 (a 30 s run's p99 is its 3rd-largest
trigger).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import TextIO

from plcbridge.contract import OPTIONAL_INPUT_SIGNALS, OPTIONAL_OUTPUT_SIGNALS, FaultCode, Outputs, ResultCode, code_name

from .device import ProgramSettings
from .program import SimulatedPlc


class TracingPlc(SimulatedPlc):
    """The simulated PLC program, also appending each new result to a JSON-lines file."""

    def __init__(self, settings: ProgramSettings, trace: Path, optional_outputs: Collection[str] = (),
                 optional_inputs: Collection[str] = ()) -> None:
        super().__init__(settings)
        self._trace: TextIO | None = open(trace, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._last_key: tuple[int, int, int] | None = None
        self._details = tuple(s.name for s in OPTIONAL_OUTPUT_SIGNALS if s.name in optional_outputs)
        self._inputs = tuple(s.name for s in OPTIONAL_INPUT_SIGNALS if s.name in optional_inputs)

    def on_outputs(self, outputs: Outputs, t: float) -> None:
        key = (outputs.result_seq, outputs.result_code, outputs.fault_code)
        if key == self._last_key or self._trace is None:
            super().on_outputs(outputs, t)
            return
        self._last_key = key
        line = {
            "t": round(t, 6), "result_seq": outputs.result_seq,
            "result": code_name(ResultCode, outputs.result_code) or f"UNKNOWN_{outputs.result_code}",
            "fault": code_name(FaultCode, outputs.fault_code) or f"UNKNOWN_{outputs.fault_code}",
            "part_id": outputs.part_id, "status": outputs.status, "model_version": outputs.model_version,
            "latency_ms": outputs.latency_ms}
        values = outputs.as_dict()
        line.update({name: values[name] for name in self._details})
        asked = self.inputs.as_dict()  # what the PLC asked for when the block arrived
        line.update({name: asked[name] for name in self._inputs})
        answered = len(self.latencies_ms)
        try:
            super().on_outputs(outputs, t)
        finally:  # the line is written even if the program fails on the block (the front-end counts that)
            if len(self.latencies_ms) > answered:  # this block answered a trigger of this PLC's
                line["trigger_to_result_ms"] = round(self.latencies_ms[-1], 3)
            self._trace.write(json.dumps(line) + "\n")

    def close(self) -> None:
        if self._trace is not None:
            self._trace.close()
            self._trace = None
