"""Keep every thread pool in the process from taking the write loop's core.

On a 2-core line PC the write loop needs one core's worth of prompt scheduling. ONNX
Runtime is sized by the config (intra_op_threads, no spinning); OpenCV is set to one
thread where preprocessing imports it; BLAS/OpenMP pools are sized from the environment,
which they read once when loaded - so `limit_native_pools()` must run before numpy is
imported, which is why the CLI calls it first thing. Producer and side-work threads lower
their own niceness; the write loop shortens its own time slice, so that it preempts them
when it wakes instead of queuing behind them (`shorten_this_threads_slice`).
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import sys
import threading

_POOL_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")

# Producer threads run this much nicer than the write loop (raising niceness needs no privilege).
# Both are relative to the niceness the process was started with: the systemd unit starts it
# at Nice=-10, so the model (then at -5) outranks a process at 0 in the daemon's control group
# (niceness ranks threads within one group only: a desktop's browser, in user.slice, it does not).
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


# The write loop's time slice under Linux's EEVDF scheduler (6.12 and later). The default slice
# (0.7 ms x (1 + log2 CPUs): 1.4 ms on 2 cores) is also how long a running thread is protected
# from a waking one of the same class: the write loop, waking for its tick on the core where
# the inference thread had just started a 3 ms session.run, waited up to that slice (1.2-1.8 ms
# late, measured with `perf sched`) although its niceness was 5 better. A slice this short
# lets it preempt at once (PREEMPT_SHORT); it needs no privilege, and the loop runs ~0.2 ms a tick.
WRITE_LOOP_SLICE_S = 0.0001
# (sched_setattr, sched_getattr) by architecture; os has neither.
_SCHED_ATTR_CALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}.get(platform.machine())


class _SchedAttr(ctypes.Structure):
    """struct sched_attr, SCHED_ATTR_SIZE_VER0 (48 bytes: no utilization clamps)."""

    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32), ("sched_flags", ctypes.c_uint64),
                ("sched_nice", ctypes.c_int32), ("sched_priority", ctypes.c_uint32),
                ("sched_runtime", ctypes.c_uint64), ("sched_deadline", ctypes.c_uint64),
                ("sched_period", ctypes.c_uint64)]


def _sched_attr_call(which: int, *args: object) -> bool:
    """sched_setattr (`which` 0) or sched_getattr (1) through libc's syscall(); False where
    this architecture has no number for it, or the call fails."""
    if _SCHED_ATTR_CALLS is None:
        return False
    try:
        return ctypes.CDLL(None).syscall(_SCHED_ATTR_CALLS[which], *args) == 0
    except (OSError, AttributeError):
        return False


def thread_slice_s(tid: int) -> float | None:
    """The time slice the kernel gives SCHED_OTHER thread `tid`, in seconds; None where it
    reports none (kernels before 6.12, other architectures) or cannot be asked."""
    attr = _SchedAttr()
    if not _sched_attr_call(1, tid, ctypes.byref(attr), ctypes.sizeof(attr), 0):
        return None
    return attr.sched_runtime / 1e9 if attr.sched_policy == os.SCHED_OTHER and attr.sched_runtime else None


def shorten_this_threads_slice(seconds: float = WRITE_LOOP_SLICE_S) -> float | None:
    """Ask for a `seconds` time slice for the calling SCHED_OTHER thread (its niceness kept),
    and return the slice the kernel then reports for it.

    None where it does not apply: a kernel that ignores the request (before 6.12), not Linux
    on x86_64/aarch64, a real-time thread (the realtime drop-in's SCHED_FIFO already preempts
    at once), or a refusal."""
    if _SCHED_ATTR_CALLS is None:
        return None
    tid = threading.get_native_id()
    try:
        if os.sched_getscheduler(tid) != os.SCHED_OTHER:
            return None
        attr = _SchedAttr(size=ctypes.sizeof(_SchedAttr), sched_policy=os.SCHED_OTHER,
                          sched_nice=os.getpriority(os.PRIO_PROCESS, tid), sched_runtime=round(seconds * 1e9))
    except (OSError, AttributeError):  # AttributeError: no os.sched_getscheduler (not Linux)
        return None
    if not _sched_attr_call(0, tid, ctypes.byref(attr), 0):
        return None
    granted = thread_slice_s(tid)
    return granted if granted is not None and abs(granted - seconds) < 1e-6 else None
