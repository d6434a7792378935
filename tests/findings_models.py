"""Models with findings for the tests of the pictures (plcbridge/overlay.py), the journal line,
the archive and the station page: the bundled anomaly model (`builtin:anomaly`, trained on
the synthetic camera) and a YOLO detect or segment export from tests/export_fixtures.py with
a manifest written by hand (inference/manifest.py's docstring), plus the frames that steer
them and a way to get a real Decision (the inference worker's own `judge`).

The YOLO fixture cuts the 320x320 input into 32 px cells; a cell's class-c score is the mean
of input channel c % 3 (R, G, B) over it, its box the cell. A 320x320 frame is its input as
is (no letterbox padding, whose grey would score 0.45 in every cell). So a red cell is a
"scratch" (class 0) with score 1.0, a green cell half covered is a "dent" (class 1) with
score 0.5, which the rules here do not count (dent: min_score 0.9).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from export_fixtures import yolo_detect, yolo_segment
from helpers import station_config

from plcbridge.adapters.camera.base import Frame
from plcbridge.adapters.camera.synthetic import render_surface
from plcbridge.decision import Decision
from plcbridge.journal import Journal
from plcbridge.mailbox import FrameMailbox
from plcbridge.metrics import Metrics
from plcbridge.pipeline import InferenceWorker

NAMES = ("scratch", "dent")
SIZE = 320  # the fixture's input side, and the frames' (so no letterbox padding)
CELL = 32
RULES = {"classes": {"dent": {"min_score": 0.9}}}
RED, GREEN, WHITE = (0, 0, 255), (0, 255, 0), (255, 255, 255)  # BGR

# The frame the detection tests use: a red cell (a counted scratch at [64, 96, 32, 32]) and a
# half-green cell (a dent scoring 0.5: found, not counted) at [192, 160, 32, 32].
SCRATCH_BOX = [64, 96, 32, 32]
DENT_BOX = [192, 160, 32, 32]


def detection_manifest(directory: Path, *, segment: bool = False, rules: dict[str, Any] | None = None,
                       version: int = 3) -> Path:
    """A YOLO detect (or segment) fixture and its manifest.json in `directory`; the manifest's path."""
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = (yolo_segment if segment else yolo_detect)(directory, imgsz=(SIZE, SIZE), names=NAMES)
    cells = (SIZE // CELL) ** 2
    outputs = [{"name": "output0", "shape": [1, 4 + len(NAMES) + (32 if segment else 0), cells], "dtype": "float32"}]
    if segment:
        outputs.append({"name": "output1", "shape": [1, 32, SIZE // 4, SIZE // 4], "dtype": "float32"})
    manifest = {
        "name": "yolo-fixture-seg" if segment else "yolo-fixture",
        "version": version,
        "kind": "segmentation" if segment else "detection",
        "file": onnx_path.name,
        "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "opset": 17,
        "input": {"name": "images", "shape": [1, 3, SIZE, SIZE], "dtype": "float32"},
        "outputs": outputs,
        "preprocessing": {"resize": [SIZE, SIZE], "color": "rgb", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0],
                          "std": [1.0, 1.0, 1.0], "layout": "nchw", "letterbox": {}},
        "detection": {"layout": "yolov8-seg" if segment else "yolov8", "class_names": list(NAMES),
                      "rules": RULES if rules is None else rules},
    }
    path = directory / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


def paint(frame: np.ndarray, box: list[int], colour: tuple[int, int, int]) -> np.ndarray:
    x, y, w, h = box
    frame[y:y + h, x:x + w] = colour
    return frame


def detection_frame() -> np.ndarray:
    """Black, with a red cell (scratch, counted) and the left half of a cell green (dent, 0.5, not counted)."""
    frame = np.zeros((SIZE, SIZE, 3), np.uint8)
    paint(frame, SCRATCH_BOX, RED)
    x, y, w, h = DENT_BOX
    return paint(frame, [x, y, w // 2, h], GREEN)


def anomaly_frames(seed: int = 7170) -> tuple[np.ndarray, np.ndarray]:
    """(clean, with a defect): the same synthetic surface without and with one scratch, 256x256."""
    rng = np.random.default_rng(seed)
    state = rng.bit_generator.state
    clean = render_surface(rng, 256, 256, False)
    rng.bit_generator.state = state
    return clean, render_surface(rng, 256, 256, True, "scratch")


class Judge:
    """The inference worker of a station with `manifest`, loaded: `decide(frame)` is its own
    judge() (model, rules, the pipeline's result details), a Decision as the journal gets it."""

    def __init__(self, manifest: str | Path, journal: Journal | None = None) -> None:
        metrics = Metrics()
        cfg = station_config(1, "free-run", model={"manifest": str(manifest)})
        self.journal = journal if journal is not None else Journal(metrics, "test-station")
        self.worker = InferenceWorker(cfg, FrameMailbox(), self.journal, metrics)
        assert self.worker._load(), self.worker.load_error
        self.seq = 0

    def decide(self, image: np.ndarray) -> Decision:
        self.seq += 1
        return self.worker.judge(Frame(image, self.seq, time.monotonic(), None, None, None), None)

    def close(self) -> None:
        if self.worker.model is not None:
            self.worker.model.close()
