"""Keep every thread pool in the process from taking the write loop's core.

On a 2-core line PC the write loop needs one core's worth of prompt scheduling. ONNX
Runtime is sized by the config (intra_op_threads, no spinning); OpenCV is set to one
thread where preprocessing imports it; BLAS/OpenMP pools are sized from the environment,
which they read once when loaded - so `limit_native_pools()` must run before numpy is
imported, which is why the CLI calls it first thing.
"""

from __future__ import annotations

import gc
import os
import sys
import threading

_POOL_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")

# Producer threads run this much nicer than the write loop (raising niceness needs no privilege).
# Both are relative to the niceness the process was started with: the systemd unit starts it
# at Nice=-10, so the model (then at -5) outranks a browser or an HMI at 0 on the same cores.
PRODUCER_NICENESS = 5
# Side work (the archive's encoder, the station page, /metrics) runs nicer still: on a 2-core
# line PC it gets what the write loop and the producers leave, never an equal share with the
# model (nice 5 against 15 is a CFS weight of 335 against 36).
SIDE_WORK_NICENESS = 15
# The niceness of the process at import: what the write loop (the main thread's child) runs at.
_BASE_NICENESS = os.getpriority(os.PRIO_PROCESS, 0)
# How long a thread may hold the GIL before another waiting thread gets it (CPython default 5 ms).
# Half a millisecond bounds how long pure-Python work elsewhere can delay a write tick.
GIL_SWITCH_INTERVAL_S = 0.0005


def limit_native_pools() -> None:
    for var in _POOL_VARS:
        os.environ.setdefault(var, "1")
    # OpenCV and FFmpeg print on stderr, which journald mixes into our JSON lines: only
    # errors (OpenCV reads this once, when cv2 is imported), and the camera captures those
    # around its calls into OpenCV (plcbridge.logs.native_stderr) and puts them in its events.
    # FFmpeg: OpenCV's default is AV_LOG_ERROR on stderr. Do NOT set OPENCV_FFMPEG_LOGLEVEL:
    # with it OpenCV prints FFmpeg's messages with printf on *stdout*, buffered, into the JSON lines.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


def tune_interpreter() -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def freeze_heap() -> None:
    """Collect once, then move everything alive into the permanent generation.

    A full garbage collection runs on whichever thread trips the threshold and holds the
    GIL throughout: with the start-up heap (onnxruntime, OpenCV, pymodbus/pycomm3 objects)
    that was ~90 ms on the write loop. After freeze() the collector never walks those
    objects again, so later collections only see what the running daemon allocates.
    """
    gc.collect()
    gc.freeze()


def lower_this_thread(niceness: int = PRODUCER_NICENESS) -> None:
    """Put the calling (producer, or with SIDE_WORK_NICENESS side-work) thread `niceness`
    below the write loop, i.e. below the niceness the process started with (at most 19).

    Under the real-time drop-in systemd starts the whole process SCHED_FIFO; a busy
    inference thread must not run at that priority, so it drops back to SCHED_OTHER
    (lowering needs no privilege). Then niceness (Linux: per thread) ranks it below the loop.
    """
    tid = threading.get_native_id()
    try:
        if os.sched_getscheduler(tid) in (os.SCHED_FIFO, os.SCHED_RR):
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, tid, min(19, _BASE_NICENESS + niceness))
    except (OSError, AttributeError):
        pass
