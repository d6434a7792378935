"""What one archived frame costs the archive's writer thread (plcbridge/archive/sink.py), per
format: CPU time of the thread (encoding, the two atomic writes with their fsyncs, the
sidecar, the index), image bytes, for 256x256 synthetic camera frames (the bench's and the
demo's) written under /var/tmp (a disk, as /var/lib/plcbridge/archive is, not a tmpfs).
Median of 3 sittings of the median of 100 entries each; printed, nothing asserted.

    .venv/bin/python tests/bench_archive.py
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_archive import _decision  # noqa: E402  (the test's own decisions)

from plcbridge.adapters.camera.synthetic import render_surface  # noqa: E402
from plcbridge.archive import ArchiveSink  # noqa: E402
from plcbridge.config import ArchiveSettings  # noqa: E402
from plcbridge.contract import ResultCode  # noqa: E402
from plcbridge.journal import new_decision_id  # noqa: E402
from plcbridge.metrics import Metrics  # noqa: E402
from plcbridge.sinks import DecisionRecord  # noqa: E402

FORMATS = {"png (unset: OpenCV's default)": {}, "png_compression = 0": {"png_compression": 0},
           "png_compression = 1": {"png_compression": 1}, "jpeg (quality 90)": {"format": "jpeg"}}
ENTRIES = 100


def sitting(settings: dict[str, object], frames: list[np.ndarray]) -> tuple[float, float]:
    """(median thread CPU ms per entry, mean image KiB) for ENTRIES entries in a fresh folder."""
    root = Path(tempfile.mkdtemp(prefix="bench-archive-", dir="/var/tmp"))
    try:
        sink = ArchiveSink(ArchiveSettings(enabled=True, path=root, pass_every=1, **settings), Metrics())
        records = []
        for i in range(ENTRIES + 1):
            d = _decision(ResultCode.PASS, i, frames[i % len(frames)])
            fields = {"event": "decision", "seq": i, "result": "PASS", "score": 0.1, "model_version": 4}
            records.append(DecisionRecord(new_decision_id(), fields, d, d.image))
        sink.write(records[0])  # the first save scans the (empty) folder
        cpu = []
        for r in records[1:]:
            t0 = time.thread_time()
            sink.write(r)
            cpu.append(time.thread_time() - t0)
        images = [p for p in root.rglob("*") if p.suffix in (".png", ".jpg")]
        return statistics.median(cpu) * 1000, sum(p.stat().st_size for p in images) / len(images) / 1024
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    rng = np.random.default_rng(1)
    frames = [render_surface(rng, 256, 256, i % 5 == 0) for i in range(30)]
    for name, settings in FORMATS.items():
        runs = [sitting(settings, frames) for _ in range(3)]
        cpu = statistics.median(r[0] for r in runs)
        print(f"{name:31s} {cpu:5.2f} ms CPU per entry (3 sittings: {', '.join(f'{r[0]:.2f}' for r in runs)}), "
              f"{statistics.median(r[1] for r in runs):4.0f} KiB per image")


if __name__ == "__main__":
    main()
