"""The shadow model (`[model.shadow]`): a candidate judged on the frames the live model judged,
on idle CPU only, deciding nothing, so that its agreement with the live model is known before
it is promoted.

    inference thread --offer(decision)--> [bounded queue] --> shadow thread --frame--> shadow process
      (put_nowait: a full queue            (model.shadow.queue)  (SIDE_WORK_NICENESS,     (SCHED_IDLE: the
       drops the frame, counted)                                   statistics, metrics,     candidate's Model,
                                                                   log, archive hand-off) <--verdict-- ONNX Runtime)

`offer()` is called on the inference thread right after the live verdict went out: a
non-blocking put into a queue of `queue` frames, nothing else. In the daemon
(`after_delivery`), the shadow thread then holds the frame until the write loop says the
block with that live answer reached the PLC (`delivered()`, at most DELIVERY_WAIT_S): on the
2-core VM any SCHED_IDLE process's CPU time slows the live path (a busy loop at SCHED_IDLE
does too, docs/benchmarks.md), so the candidate's run is placed after the answer's exchange,
between parts, instead of in it. A full queue drops the frame
and counts it (`plcbridge_shadow_dropped_total{reason="queue_full"}`); fail-safes and
decisions without a frame are not offered (skipped).

**Why a process.** The candidate runs in a child process at SCHED_IDLE (nice 19 where the
kernel refuses that), not in a low-priority thread of the daemon. A thread of the daemon
that holds the GIL and is preempted cannot let go of it until the kernel runs it again, and
a SCHED_IDLE (or very nice) thread on a busy CPU runs again late. Measured on the 2-core dev
VM, everything on one core beside a busy nice-0 process, a 10 ms loop in the daemon's
process (GIL switch interval 0.5 ms) with a nice-5 thread standing in for the live model:
without a shadow, p99 4-6 ms and max 12-20 ms late; the demo model judging frames in a
nice-15 thread of the same process, p99 0.3 s and max 0.6 s; in a SCHED_IDLE thread, max
16 s (preprocessing, decoding and the Python around the run hold the GIL); in this child
process, p99 5-12 ms and max 13-17 ms, like no shadow (one run of eight, with the VM loaded
by other work, 0.17 s). The child has its own GIL: the daemon's threads never wait for it.
What stays in the daemon is one thread at SIDE_WORK_NICENESS (like the sinks') that hands a
frame over (a socket pair: the kernel copies the frame, the GIL released), waits for the
verdict with the GIL released, and keeps the figures: tens of microseconds of Python a frame.

The child loads the candidate (`plcbridge.inference.session.Model`, with [model] device,
intra_op_threads and inference_timeout_ms) at nice 19 and switches all its threads to
SCHED_IDLE once it is loaded (an unprivileged thread can lower itself, never raise itself
back, so it cannot load at SCHED_IDLE and risk never loading on a busy machine). `start()`
waits for the load: a candidate that does not load raises ModelError with the reason.
A child that dies later (a crash in ONNX Runtime) stops the shadow: `shadow_failed` is
logged with the end of its stderr, `view()` says `failed`, and offers are dropped
(`reason="not_running"`); the station goes on as if there were no shadow.

What it keeps (`view()`, the `shadow_summary` log line every `summary_every_s` and at stop,
and the `plcbridge_shadow_*` metrics): the confusion matrix live PASS/FAIL x shadow
PASS/FAIL/TIMEOUT/ERROR/BAD_FRAME, agreement (of the frames both gave a verdict on), score
differences (shadow - live: mean; p50, p99 and max of |diff|), the shadow's time per frame
(wall clock, waiting for idle CPU included; and its CPU time, what the candidate costs)
p50/p99 over the newest SAMPLES frames, and how many frames were offered, judged, dropped
and skipped. A disagreement (one says PASS, the other FAIL) is logged as
`shadow_disagreement` (rate-limited: one per log window, then `suppressed`) and, with
`archive_disagreements`, handed to the image archive (ArchiveSink.keep_shadow: tag SHADOW,
`kept_for: "shadow_disagreement"`; docs/archive.md).

Read the figures knowing that: the shadow's time per frame is wall clock at SCHED_IDLE, so on
a busy machine it includes the wait for idle CPU, and a frame that waits past [model]
inference_timeout_ms counts as TIMEOUT (`cpu_ms` is what the candidate costs, whatever the
load); with `device = "cuda"` the candidate runs on the live model's GPU, which knows nothing
of SCHED_IDLE: there the two share the GPU's time.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing import BufferTooShort
from multiprocessing.connection import Connection, Pipe
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from plcbridge.contract import ResultCode
from plcbridge.decision import Decision
from plcbridge.inference.errors import ModelError
from plcbridge.journal import decision_fields, new_decision_id
from plcbridge.logs import get_logger, log_event
from plcbridge.metrics import Metrics
from plcbridge.schedule import Samples, percentile_summary
from plcbridge.sinks import DecisionRecord
from plcbridge.threads import SIDE_WORK_NICENESS, lower_this_thread

if TYPE_CHECKING:
    from plcbridge.config import ModelSettings, ShadowSettings

log = get_logger("shadow")

LIVE = ("PASS", "FAIL")
# The shadow's outcomes: a verdict, or none (the fault it would have been live).
SHADOW = ("PASS", "FAIL", "TIMEOUT", "ERROR", "BAD_FRAME")
SAMPLES = 10_000  # the newest frames the percentiles are taken over (latency, |score diff|)
LOAD_TIMEOUT_S = 120.0  # the candidate must load within this (at nice 19), or start() raises ModelError
STDERR_TAIL = 2000  # characters of the child's stderr a shadow_failed line carries
COURIER_NICENESS = SIDE_WORK_NICENESS  # the shadow thread: tens of microseconds of Python per frame
_POLL_S = 0.25  # how often the shadow thread looks at its stop flag and the summary clock
# The longest the shadow waits for the live answer to reach the PLC before it judges the frame
# anyway (a PLC that is down, a free-run decision a newer one replaced before it was written).
DELIVERY_WAIT_S = 0.5
_CHILD = ("import sys\n"
          "from plcbridge.shadow import child_main\n"
          "child_main(sys.argv[1:])\n")


class ShadowRunner:
    """The shadow model of one station: `start()`, `offer(decision)` per live verdict,
    `view()` at any time from any thread, `stop()`.

    `archive`, if given (and `settings.archive_disagreements`), is handed each disagreeing
    frame as a DecisionRecord (ArchiveSink.keep_shadow): it must not block. `station` names
    the station in those records, as the journal does."""

    def __init__(self, settings: ShadowSettings, model: ModelSettings, metrics: Metrics,
                 archive: Callable[[DecisionRecord], object] | None = None, *, station: str = "",
                 after_delivery: bool = False, delivery_wait_s: float = DELIVERY_WAIT_S) -> None:
        self.settings = settings
        self.model_settings = model
        self.metrics = metrics
        self.archive = archive if settings.archive_disagreements else None
        self.station = station
        self._queue: queue.Queue[Decision] = queue.Queue(maxsize=settings.queue)
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._stop = threading.Event()
        self._loaded = threading.Event()
        self._accepting = False  # offers are queued only while the candidate judges
        self._state = "not_started"  # starting, running, failed, stopped
        self._reason: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._stderr: IO[bytes] | None = None
        self._candidate: dict[str, Any] = {}
        self._seq = 0
        self._summarised = False
        # The live answer's way to the PLC comes first: the candidate starts on a frame only
        # once the block with the live decision was written (delivered(), from the write loop).
        # `after_delivery`: whoever offers also calls delivered() (the daemon's write loop).
        self._after_delivery = after_delivery
        self._delivery_wait_s = delivery_wait_s
        self._delivered = threading.Event()
        self._last_delivered: Decision | None = None
        # offer()'s counts (the inference thread; the write loop's thread for fail-safes it answers)
        self._offer_lock = threading.Lock()
        self._offered = 0
        self._skipped = 0
        self._dropped = {"queue_full": 0, "not_running": 0}
        # the shadow thread's figures, read by view() from any thread
        self._lock = threading.Lock()
        self._matrix = {live: dict.fromkeys(SHADOW, 0) for live in LIVE}
        self._diff_sum = 0.0
        self._diff_n = 0
        self._diff_max = 0.0
        self._abs_diff = Samples(SAMPLES)
        self._latency = Samples(SAMPLES)
        self._cpu = Samples(SAMPLES)
        self._archived = 0
        self._live_version: int | None = None
        self._t_start: float | None = None

    # ------------------------------------------------------------------ the daemon's side

    def start(self) -> "ShadowRunner":
        """Load the candidate (in its own process, at nice 19) and start judging; returns once
        it is loaded. Raises ModelError naming the manifest and the reason when it cannot load."""
        if self._state != "not_started":
            raise RuntimeError(f"the shadow model was already started ({self._state})")
        self._state = "starting"
        self._thread.start()
        if not self._loaded.wait(LOAD_TIMEOUT_S + 10.0):
            self._reason = f"no answer from the shadow process within {LOAD_TIMEOUT_S + 10.0:g} s"
        if self._reason is not None:
            self._stop.set()
            self._thread.join(5.0)
            self._close_child()
            self._state = "failed"
            log_event(log, "shadow_failed", logging.ERROR, manifest=self.settings.manifest, reason=self._reason)
            raise ModelError(f"[model.shadow] manifest {self.settings.manifest}: {self._reason}")
        c = self._candidate
        log_event(log, "shadow_started", logging.ERROR if c.get("fell_back") else logging.INFO, model=c.get("name"),
                  version=c.get("version"), manifest=c.get("manifest"), providers=c.get("providers"),
                  fell_back=c.get("fell_back"), fallback_reason=c.get("fallback_reason"),
                  scheduling=c.get("scheduling"), queue=self.settings.queue, pid=c.get("pid"))
        return self

    def offer(self, d: Decision) -> bool:
        """The live verdict `d` and its frame, for the candidate to judge too. Never blocks:
        True when queued; False when skipped (a fail-safe, no frame) or dropped (busy, not running)."""
        if d.image is None or d.result not in (ResultCode.PASS, ResultCode.FAIL):
            with self._offer_lock:
                self._skipped += 1
            return False
        self.metrics.shadow_offered.inc()
        reason = None
        if not self._accepting:
            reason = "not_running"
        else:
            try:
                self._queue.put_nowait(d)
            except queue.Full:
                reason = "queue_full"
        with self._offer_lock:
            self._offered += 1
            if reason is not None:
                self._dropped[reason] += 1
        if reason is not None:
            self.metrics.shadow_dropped.labels(reason).inc()
            return False
        return True

    def delivered(self, d: Decision) -> None:
        """The write loop: a block carrying decision `d` reached the PLC. Two attribute writes
        and an Event.set(): the candidate may start on that frame now."""
        self._last_delivered = d
        self._delivered.set()

    def _wait_for_delivery(self, d: Decision) -> None:
        """Hold the frame until the live answer it belongs to is on the PLC (or DELIVERY_WAIT_S):
        the candidate's CPU time then falls between parts, not in the exchange that brings the
        answer. Measured on the 2-core VM, a SCHED_IDLE process's CPU time slows the live path
        however it is scheduled (docs/benchmarks.md), so the time it runs is what is chosen."""
        deadline = time.monotonic() + self._delivery_wait_s
        while self._last_delivered is not d and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._delivered.clear()
            if self._last_delivered is d:
                return
            self._delivered.wait(left)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop judging (a frame being judged is abandoned), end the child process, and log
        the last `shadow_summary`. Safe to call more than once, and after a failed start()."""
        self._accepting = False
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():  # stuck handing a frame to a starved child: ending it frees the thread
                self._kill_child()
                self._thread.join(2.0)
        self._close_child()
        self._drain("not_running")
        if self._state in ("starting", "running"):
            self._state = "stopped"
        self.metrics.shadow_running.set(0)
        if self._t_start is not None and not self._summarised:
            self._summarised = True
            log_event(log, "shadow_summary", logging.INFO, final=True, **self.view())

    @property
    def running(self) -> bool:
        return self._state == "running"

    def view(self) -> dict[str, Any]:
        """Everything the shadow knows, as JSON values (the station page, MQTT, `plcbridge status`):
        state, the candidate, the counts, the confusion matrix, agreement, score differences and
        the shadow's time per frame."""
        with self._offer_lock:
            offered, skipped, dropped = self._offered, self._skipped, dict(self._dropped)
        with self._lock:
            matrix = {live: dict(row) for live, row in self._matrix.items()}
            diff_n, diff_sum, diff_max, archived = self._diff_n, self._diff_sum, self._diff_max, self._archived
            abs_diff, latency, cpu = self._abs_diff.values(), _ms(self._latency), _ms(self._cpu)
            live_version = self._live_version
        judged = sum(sum(row.values()) for row in matrix.values())
        agreed = matrix["PASS"]["PASS"] + matrix["FAIL"]["FAIL"]
        compared = agreed + matrix["PASS"]["FAIL"] + matrix["FAIL"]["PASS"]
        d = percentile_summary(abs_diff, ndigits=4)
        return {
            "state": self._state,
            "reason": self._reason,
            "manifest": self.settings.manifest,
            "candidate": dict(self._candidate) or None,
            "live_model_version": live_version,
            "running_s": round(time.monotonic() - self._t_start, 1) if self._t_start is not None else None,
            "offered": offered,
            "judged": judged,
            "dropped": dropped,
            "skipped": skipped,
            "queued": self._queue.qsize(),
            "confusion": matrix,
            "compared": compared,
            "agreed": agreed,
            "agreement": round(agreed / compared, 4) if compared else None,
            "disagreements": {"live_pass_shadow_fail": matrix["PASS"]["FAIL"],
                              "live_fail_shadow_pass": matrix["FAIL"]["PASS"]},
            "archived": archived,
            "score_diff": {"n": diff_n, "mean": round(diff_sum / diff_n, 4) if diff_n else None,
                           "abs_p50": d["p50"], "abs_p99": d["p99"], "max_abs": round(diff_max, 4) if diff_n else None},
            "latency_ms": latency,
            "cpu_ms": cpu,
        }

    # ------------------------------------------------------------------ the shadow thread

    def _run(self) -> None:
        lower_this_thread(COURIER_NICENESS)  # the child inherits this thread's niceness and policy
        try:
            self._spawn()
        except Exception as e:  # noqa: BLE001 - any failure to load is start()'s ModelError
            self._reason = self._reason or (str(e) if isinstance(e, ModelError) else f"{type(e).__name__}: {e}")
            self._loaded.set()
            return
        self._t_start = time.monotonic()
        self._state = "running"
        self.metrics.shadow_running.set(1)
        self.metrics.shadow_model.info({k: str(self._candidate.get(k)) for k in ("name", "version", "manifest", "scheduling")})
        self._accepting = True
        self._loaded.set()
        next_summary = time.monotonic() + self.settings.summary_every_s
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_summary:
                    next_summary = time.monotonic() + self.settings.summary_every_s
                    log_event(log, "shadow_summary", logging.INFO, final=False, **self.view())
                try:
                    d = self._queue.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if self._after_delivery:
                    self._wait_for_delivery(d)
                self._judge(d)
        except (EOFError, OSError) as e:
            if not self._stop.is_set():
                self._failed(f"the shadow process ended ({type(e).__name__}: {e}); exit status "
                             f"{self._proc.poll() if self._proc is not None else None}")
        except Exception as e:  # noqa: BLE001 - the shadow must never take the daemon down
            self._failed(f"{type(e).__name__}: {e}")

    def _spawn(self) -> None:
        """Start the child, hand it the candidate, wait for it to load (ModelError's text on failure)."""
        m = self.model_settings
        parent, child = Pipe(duplex=True)
        try:  # the child's stderr, for the shadow_failed line: a traceback, ONNX Runtime's last words
            self._stderr = tempfile.TemporaryFile(prefix="plcbridge-shadow-")
        except OSError:
            self._stderr = None
        argv = [str(child.fileno()), self.settings.manifest, m.device, str(m.intra_op_threads), str(m.inference_timeout_ms)]
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", _CHILD, *argv], pass_fds=(child.fileno(),),
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=self._stderr if self._stderr is not None else subprocess.DEVNULL)
        finally:
            child.close()
        self._conn = parent
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while not parent.poll(_POLL_S):
            if self._stop.is_set():
                raise ModelError("stopped while loading")
            if self._proc.poll() is not None:
                raise ModelError(f"the shadow process exited ({self._proc.returncode}) while loading: {self._stderr_tail()}")
            if time.monotonic() > deadline:
                raise ModelError(f"it did not load within {LOAD_TIMEOUT_S:g} s")
        try:
            kind, payload = parent.recv()
        except EOFError:
            raise ModelError(f"the shadow process exited ({self._proc.wait(5)}) while loading: {self._stderr_tail()}") from None
        if kind != "ready":
            self._reason = str(payload)
            raise ModelError(self._reason)
        self._candidate = dict(payload)

    def _judge(self, d: Decision) -> None:
        conn = self._conn
        assert conn is not None
        image = np.ascontiguousarray(d.image)
        self._seq += 1
        conn.send((self._seq, image.shape, image.dtype.str))
        conn.send_bytes(image.data.cast("B"))  # the frame's own bytes, no copy in Python
        while not conn.poll(_POLL_S):
            if self._stop.is_set():
                return  # stopping: this frame is abandoned
            if self._proc is not None and self._proc.poll() is not None:
                raise EOFError("no verdict")
        seq, outcome, score, wall_ms, cpu_ms, reason = conn.recv()
        if seq != self._seq:
            raise EOFError(f"the shadow process answered frame {seq}, expected {self._seq}")
        self._account(d, outcome, score, wall_ms, cpu_ms, reason)

    def _account(self, d: Decision, outcome: str, score: float | None, wall_ms: float, cpu_ms: float,
                 reason: str | None) -> None:
        live = d.result.name
        verdict = outcome in LIVE and score is not None
        diff = score - d.score if verdict and score is not None else None
        with self._lock:
            self._matrix[live][outcome] += 1
            self._live_version = d.model_version
            if diff is not None:
                self._diff_sum += diff
                self._diff_n += 1
                self._diff_max = max(self._diff_max, abs(diff))
                self._abs_diff.add(abs(diff))
            if outcome != "BAD_FRAME":  # refused before running: no time of the model's
                self._latency.add(wall_ms / 1000)
                self._cpu.add(cpu_ms / 1000)
        self.metrics.shadow_decisions.labels(live, outcome).inc()
        if outcome != "BAD_FRAME":
            self.metrics.shadow_seconds.observe(wall_ms / 1000)
        if diff is not None:
            self.metrics.shadow_score_diff.observe(diff)
        if not verdict:
            log_event(log, "shadow_no_verdict", logging.WARNING, shadow=outcome, frame_seq=d.frame_seq,
                      reason=reason, rate_key=f"shadow-{outcome}")
        elif outcome != live:
            self._disagreement(d, outcome, float(score or 0.0), wall_ms)

    def _disagreement(self, d: Decision, shadow: str, score: float, wall_ms: float) -> None:
        entry_id = None
        if self.archive is not None:
            entry_id = new_decision_id()
            record = DecisionRecord(entry_id, self._record_fields(d, entry_id, shadow, score, wall_ms), d, d.image)
            try:
                self.archive(record)
                with self._lock:
                    self._archived += 1
            except Exception as e:  # noqa: BLE001 - the archive's failure is the archive's, never the shadow's
                entry_id = None
                log_event(log, "shadow_archive_failed", logging.WARNING, reason=f"{type(e).__name__}: {e}",
                          rate_key="shadow-archive")
        req = d.request
        with self._lock:
            count = self._matrix["PASS"]["FAIL"] + self._matrix["FAIL"]["PASS"]
        log_event(log, "shadow_disagreement", logging.INFO, frame_seq=d.frame_seq,
                  trigger_seq=req.trigger_seq if req else None, part_id=req.part_id if req else None,
                  live=d.result.name, live_score=round(d.score, 4), live_model_version=d.model_version,
                  shadow=shadow, shadow_score=round(score, 4), shadow_model_version=self._candidate.get("version"),
                  archive_id=entry_id, disagreements=count, rate_key="shadow_disagreement")

    def _record_fields(self, d: Decision, entry_id: str, shadow: str, score: float, wall_ms: float) -> dict[str, Any]:
        """The archive sidecar's record: the live decision's journal fields (as plcbridge/journal.py
        writes them; the id is the archive entry's own) and the shadow's verdict."""
        f = decision_fields(d, entry_id, self.station)
        c = self._candidate
        f["shadow"] = {"result": shadow, "score": round(score, 4), "score_diff": round(score - d.score, 4),
                       "model": c.get("name"), "model_version": c.get("version"), "manifest": c.get("manifest"),
                       "infer_ms": round(wall_ms, 2)}
        return f

    def _failed(self, reason: str) -> None:
        self._accepting = False
        self._state = "failed"
        self._reason = reason
        self.metrics.shadow_running.set(0)
        log_event(log, "shadow_failed", logging.ERROR, manifest=self.settings.manifest, reason=reason,
                  stderr=self._stderr_tail() or None)
        self._drain("not_running")

    def _drain(self, reason: str) -> None:
        """Frames still queued when judging ends: dropped, counted."""
        n = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            n += 1
        if n:
            with self._offer_lock:
                self._dropped[reason] += n
            self.metrics.shadow_dropped.labels(reason).inc(n)

    # ------------------------------------------------------------------ the child process, from here

    def _close_child(self) -> None:
        """Ask the child to end (it exits at EOF too), then end it if it does not."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.send(None)
            except OSError:
                pass
            conn.close()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self._kill_child()
        if self._stderr is not None and proc is not None and proc.poll() is not None:
            self._stderr.close()
            self._stderr = None

    def _kill_child(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:
                pass

    def _stderr_tail(self) -> str:
        f = self._stderr
        if f is None:
            return ""
        try:
            f.flush()
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - STDERR_TAIL))
            return f.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""


def _ms(samples: Samples) -> dict[str, float | int | None]:
    """n (all frames timed), and p50, p99, max in ms over the newest SAMPLES of them."""
    s = samples.summary_ms()
    return {k: s[k] for k in ("n", "p50", "p99", "max")}


# ---------------------------------------------------------------------- the child process

def _lowest_priority() -> str:
    """Every thread of this process to SCHED_IDLE (Linux); where refused, they stay at nice 19.
    Returns what they run at, as checked."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
        for tid in tids:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        if all(os.sched_getscheduler(tid) == os.SCHED_IDLE for tid in tids):
            return "SCHED_IDLE"
    except (OSError, AttributeError, ValueError):
        pass
    return f"nice {os.getpriority(os.PRIO_PROCESS, 0)}"


def child_main(argv: Sequence[str]) -> None:
    """The shadow process (`python -c ... FD MANIFEST DEVICE THREADS TIMEOUT_MS`): load the
    candidate, say so, then judge each frame the pipe brings until it closes or says None."""
    fd, spec, device, threads, timeout_ms = argv
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)  # before anything heavy: the load runs at nice 19
    except OSError:
        pass
    # Ctrl-C in a terminal and systemd's stop signal reach the whole process group / cgroup: the
    # daemon ends this process itself (a closed pipe), so a normal stop is not a shadow_failed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(int(fd))
    try:
        import onnxruntime as ort

        from plcbridge.inference.errors import BadFrame, InferenceError, InferenceTimeout
        from plcbridge.inference.session import Model

        ort.set_default_logger_severity(3)
        model = Model(spec, "cuda" if device == "cuda" else "cpu", int(threads), float(timeout_ms))
    except Exception as e:  # noqa: BLE001 - every reason goes back to start()
        conn.send(("error", str(e) if isinstance(e, ModelError) else f"{type(e).__name__}: {e}"))
        return
    scheduling = _lowest_priority()
    conn.send(("ready", {"name": model.name, "version": model.version, "manifest": str(model.manifest_path),
                         "kind": model.manifest.kind, "providers": model.providers, "fell_back": model.fell_back,
                         "fallback_reason": model.fallback_reason, "scheduling": scheduling, "pid": os.getpid()}))
    buf = bytearray(1 << 20)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        seq, shape, dtype = msg
        try:
            n = conn.recv_bytes_into(buf)
        except BufferTooShort as e:
            buf = bytearray(e.args[0])
            n = len(buf)
        image = np.frombuffer(buf, np.dtype(dtype), count=n // np.dtype(dtype).itemsize).reshape(shape)
        t0, c0 = time.perf_counter(), time.process_time()
        reply: tuple[int, str, float | None, str | None]
        try:
            v = model.judge(image)
            reply = (seq, "FAIL" if v.label == "fail" else "PASS", v.score, None)
        except BadFrame as e:
            reply = (seq, "BAD_FRAME", None, str(e))
        except InferenceTimeout as e:
            reply = (seq, "TIMEOUT", None, str(e))
        except InferenceError as e:
            reply = (seq, "ERROR", None, str(e))
        except Exception as e:  # noqa: BLE001 - an odd frame is this frame's error, not the process's end
            reply = (seq, "ERROR", None, f"{type(e).__name__}: {e}")
        wall_ms, cpu_ms = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
        try:
            conn.send((reply[0], reply[1], reply[2], wall_ms, cpu_ms, reply[3]))
        except OSError:
            break
    model.close()
