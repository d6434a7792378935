"""What drawing a decision's findings costs (plcbridge/overlay.py), on the frame sizes a
station sees: median of 3 sittings of best-of-20, printed; nothing asserted.

    .venv/bin/python tests/bench_overlay.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_overlay import _anomaly, _detections  # noqa: E402  (the test's own cases)

from plcbridge.overlay import annotate  # noqa: E402


def best_of(fn, n: int = 20) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    for size in ((256, 256), (1280, 1024), (4096, 3000)):
        frame = np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3), np.uint8)
        for name, (result, fields) in {"20 boxes": _detections(size, 20), "anomaly": _anomaly(size)}.items():
            runs = [best_of(lambda: annotate(frame, fields, result)) * 1000 for _ in range(3)]
            print(f"annotate {size[0]}x{size[1]} {name}: median {statistics.median(runs):.2f} ms "
                  f"(best of 20, 3 sittings: {', '.join(f'{r:.2f}' for r in runs)})")


if __name__ == "__main__":
    main()
