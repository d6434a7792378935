"""Status bits that agree with the answers: a block that answers CAMERA_FAULT says CAMERA_OK
clear, and so READY and TRIGGER_READY ("READY is cleared, stop triggering", the fault table
says), in that very block and whatever the stall timeout; the same for MODEL_NOT_READY and
MODEL_OK. Over each network protocol, with the PLC recording every block it was written."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import station_config, wait_for
from test_trigger_modes import _recording_daemon

from plcbridge.config import parse_config
from plcbridge.contract import FaultCode, Inputs, Outputs, StatusBit
from plcbridge.contract import loop as wire
from plcbridge.inspection import Health, answer_health

HEALTH_BITS = StatusBit.CAMERA_OK | StatusBit.READY | StatusBit.TRIGGER_READY


def _answers(seen: list[Outputs], fault: FaultCode) -> list[Outputs]:
    """The first block the PLC read of each answer with this fault: the one that brings it.
    (The answer stays on the outputs after that, and the health bits beside it follow the
    station again: a camera that works again is not hidden behind an old answer.)"""
    want = StatusBit.RESULT_VALID | StatusBit.FAILSAFE_ACTIVE
    first: dict[tuple[int, int], Outputs] = {}
    for o in seen:
        if o.status & want == want:
            first.setdefault((o.result_seq, o.part_id), o)
    return [o for o in first.values() if o.fault_code == fault]


def _seen(sim) -> list[Outputs]:
    return [o for _, o in sim.program.seen]


@pytest.mark.parametrize("protocol", ["modbus", "opcua", "enip"])
def test_a_camera_that_says_it_failed_clears_camera_ok_in_the_block_that_answers_camera_fault(
        make_sim, tmp_path: Path, protocol: str):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"part_{i}.png"), np.full((64, 64, 3), 60 * i, np.uint8))
    sim = make_sim("triggered", protocol=protocol, trigger_hz=10, watchdog_ms=5000)
    raw = station_config(sim, "triggered").model_dump(mode="json")
    # Reopened every 50 ms after it failed: it opens (the files are there), then fails again
    # on the next trigger's grab, so the run sees many failures and CAMERA_FAULT answers.
    raw["camera"] = {"source": "folder", "path": str(tmp_path), "fps": 30, "reconnect_min_ms": 50,
                     "reconnect_max_ms": 50}
    d, _ = _recording_daemon(parse_config(raw, "<test>", env={}))
    try:
        wait_for(lambda: sum(sim.program.summary()["results"].values()) >= 3, 60, "answers from good images")
        for p in tmp_path.glob("*.png"):
            p.write_bytes(b"not an image any more")  # the folder camera: none of its files decodes
        wait_for(lambda: len(_answers(_seen(sim), FaultCode.CAMERA_FAULT)) >= 2, 60, "CAMERA_FAULT answers")
    finally:
        d.stop()
    answers = _answers(_seen(sim), FaultCode.CAMERA_FAULT)
    wrong = [o for o in answers if o.status & HEALTH_BITS]
    assert not wrong, wrong[:3]  # it was status 127 (every health bit set) for ~505 ms
    assert all(o.status & StatusBit.MODEL_OK for o in answers)  # only the camera's bits are cleared
    s = sim.program.summary()
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]


class _ManualPlc:
    """A PLC program on a loop channel that triggers when the test says so, READY or not (a
    conveyor does not wait), and records every block it is written."""

    def __init__(self, channel: str) -> None:
        self.section, self.channel = "loop", channel
        self.inputs = Inputs()
        self.seen: list[Outputs] = []
        self.lock = threading.Lock()

    def serve(self, outputs: Outputs | None, t: float) -> Inputs:
        if outputs is not None:
            self.seen.append(outputs)
        return self.inputs


def test_a_station_without_a_model_clears_model_ok_in_the_block_that_answers_model_not_ready(tmp_path: Path):
    plc = _ManualPlc("no-model")
    attachment = wire.attach(plc.channel, plc.serve, plc.lock)
    raw = station_config(plc, "triggered").model_dump(mode="json")
    raw["model"]["manifest"] = str(tmp_path / "no-such-manifest.json")
    d, _ = _recording_daemon(parse_config(raw, "<test>", env={}))
    try:
        wait_for(lambda: len(plc.seen) >= 3, 30, "blocks")
        for seq in (1, 2, 3):
            plc.inputs = Inputs(trigger_seq=seq, part_id=100 + seq, result_ack_seq=seq - 1)
            wait_for(lambda: _answers(plc.seen, FaultCode.MODEL_NOT_READY)[-1:]  # noqa: B023
                     and _answers(plc.seen, FaultCode.MODEL_NOT_READY)[-1].result_seq == seq, 30,  # noqa: B023
                     f"the answer to trigger {seq}")
    finally:
        d.stop()
        attachment.detach()
    answers = _answers(plc.seen, FaultCode.MODEL_NOT_READY)
    assert [(o.result_seq, o.part_id) for o in answers] == [(1, 101), (2, 102), (3, 103)]
    assert not [o for o in answers if o.status & (StatusBit.MODEL_OK | StatusBit.READY | StatusBit.TRIGGER_READY)]


def test_an_answer_states_the_health_its_fault_means():
    ok = Health(True, True, 1)
    assert answer_health(ok, FaultCode.CAMERA_FAULT) == Health(False, True, 1)
    assert answer_health(ok, FaultCode.MODEL_NOT_READY) == Health(True, False, 1)
    for fault in (FaultCode.NONE, FaultCode.INFERENCE_TIMEOUT, FaultCode.NO_FRAME, FaultCode.BAD_FRAME):
        assert answer_health(ok, fault) == ok, fault
