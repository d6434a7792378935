"""What flows between the stages: a trigger request and a decision about one frame."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plcbridge.contract import RECIPE_DEFAULT, FaultCode, ResultCode


@dataclass(frozen=True, eq=False)
class Request:
    """One PLC trigger, as the write loop saw it. Identity matters: eq=False on purpose."""

    trigger_seq: int
    part_id: int
    t_seen: float  # time.monotonic() of the read that saw the trigger
    # The trigger was raised after this moment: the request time of the read before the one
    # that saw it (None when unknown, e.g. the first read of a session). Hardware pairing.
    t_after: float | None = None
    # The PLC link session whose read saw it (+1 at every connect): with the decision id, what
    # tells two parts with the same part_id apart across a PLC restart.
    plc_session: int = 0
    # The PLC's recipe_id read with the trigger (latched like part_id): the recipe it is
    # judged with, or answered fail-safe (docs/plc-interface.md "Recipes").
    recipe: int = RECIPE_DEFAULT


@dataclass(frozen=True)
class Decision:
    """The verdict on one frame, or the reason there is none (result FAILSAFE + fault)."""

    result: ResultCode
    fault: FaultCode
    score: float
    t_decided: float
    model_version: int
    frame_seq: int | None = None
    t_capture: float | None = None
    label: str | None = None  # the frame's ground truth where the source knows it
    infer_ms: float | None = None
    request: Request | None = None
    reason: str = ""
    # Triggered flood rule: how many older trigger values this TRIGGER_OVERRUN answer also
    # answers (a collapsed run of skipped or refused values; see inspection.py).
    collapsed: int = 0
    # The camera's identity of the frame (Frame.meta: camera_frame_id, camera_ts_ns, ...).
    frame_meta: dict[str, Any] | None = None
    # The frame judged (a numpy BGR image, the camera's own buffer, never copied), for the
    # side work that keeps or shows it (plcbridge/sinks.py); None when no frame was judged.
    image: Any = field(default=None, repr=False, compare=False)
    # Result details for the PLC's optional outputs (docs/plc-interface.md), by model kind;
    # the defaults say "nothing measured", what a classifier and a fail-safe give.
    # Detection, segmentation: how many defects were counted, and the class id (as the model
    # numbers its classes, 0-based) of the worst one; None: none counted, or no class.
    defect_count: int = 0
    defect_class: int | None = None
    # Anomaly: the anomalous area of the frame, in frame pixels.
    anomaly_area: int = 0
    # Anomaly, detection, segmentation: what the model found and the rules counted, as JSON
    # values for the journal line and the sinks (plcbridge.inference.rules.describe), and the
    # decoded result itself (boxes, map) for the pictures; None for a classifier. (Not named
    # `result`: that is the verdict's ResultCode, the first field.)
    findings: dict[str, Any] | None = None
    decoded: Any = field(default=None, repr=False, compare=False)
    # The recipe that judged the frame (the PLC's result_recipe with a verdict): 0, the
    # station's default recipe, unless the station switches recipes. A fail-safe judged with
    # none: its block says RECIPE_NONE whatever this holds.
    recipe: int = RECIPE_DEFAULT

    @property
    def is_failsafe(self) -> bool:
        return self.result is ResultCode.FAILSAFE


def failsafe(fault: FaultCode, now: float, reason: str, *, model_version: int = 0, request: Request | None = None,
             frame_seq: int | None = None, t_capture: float | None = None, label: str | None = None,
             collapsed: int = 0, frame_meta: dict[str, Any] | None = None, image: Any = None) -> Decision:
    """A fail-safe decision: no verdict, and no result details (a fail-safe measures nothing:
    the PLC's optional outputs read defect_count 0, defect_class none, anomaly_area 0)."""
    return Decision(ResultCode.FAILSAFE, fault, 1.0, now, model_version, frame_seq, t_capture, label, None, request, reason,
                    collapsed, frame_meta, image, defect_count=0, defect_class=None, anomaly_area=0)
