"""The two producer stages: the camera grab loop and the inference worker.

Both are plain threads that feed the write loop through mailboxes and never wait for it.
The grab loop owns camera reconnects (a fresh source each time, bounded backoff); the
worker owns the model session; a model that fails to load leaves it answering every
trigger with MODEL_NOT_READY (READY cleared) instead of taking the daemon down.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from plcbridge.adapters.camera.base import CameraAbsent, CameraError, CameraSource, Frame, open_camera
from plcbridge.backoff import Reconnector
from plcbridge.config import Config
from plcbridge.contract import RECIPE_DEFAULT, FaultCode, ResultCode
from plcbridge.decision import Decision, Request, failsafe
from plcbridge.inference.errors import (
    BadFrame,
    InferenceError,
    InferenceTimeout,
)
from plcbridge.inference.rules import describe
from plcbridge.journal import Journal
from plcbridge.logs import get_logger, log_event
from plcbridge.mailbox import FrameMailbox, LatestValue
from plcbridge.metrics import Metrics
from plcbridge.recipes import RecipeBook
from plcbridge.threads import lower_this_thread

if TYPE_CHECKING:
    from plcbridge.inference.session import Model, Verdict

cam_log = get_logger("camera")
model_log = get_logger("model")


class GrabLoop:
    """Grabs frames into the mailbox; reopens a fresh source with backoff after a failure,
    or every camera.reconnect_min_ms while the source says there is no camera (CameraAbsent).

    `camera.trigger = "free-run"`: grabs as fast as the source delivers. "software": grabs
    exactly one frame per `trigger(request)`, stamped with that request, so the worker
    pairs frame and trigger by identity.
    """

    def __init__(self, config: Config, frames: FrameMailbox, metrics: Metrics) -> None:
        self.settings = config.camera
        self.software = config.camera.trigger == "software"
        self.triggered = config.camera.trigger != "free-run"
        self.frames = frames
        self.metrics = metrics
        self.seq = 0
        self._first: CameraSource | None = None
        self._stop = threading.Event()
        self._asked: queue.Queue[object] = queue.Queue(maxsize=1 + config.timing.trigger_queue)
        self._alive_at: float | None = None  # software: the source was last seen working (idle or grabbing)
        self._failed_at = -math.inf  # the source (or a trigger's missing frame) last said the camera failed
        self._give_up_s = config.timing.result_timeout_ms / 1000  # a request older than this has its fail-safe
        self._thread = threading.Thread(target=self._run, name="camera-grab", daemon=True)

    @property
    def alive_at(self) -> float | None:
        """When the camera last showed it works: its last frame (free-run), or also its last
        idle wait for a trigger while open (software: no trigger, no frame, still healthy)."""
        if not self.triggered:
            return self.frames.last_capture
        seen = [t for t in (self._alive_at, self.frames.last_capture) if t is not None]
        return max(seen) if seen else None

    def failed(self, t: float | None = None) -> None:
        """The camera failed: its source said so (open or grab raised), or a trigger got no
        frame from it. CAMERA_OK clears now, not at the stall timeout, until the camera shows
        again that it works (a frame, or an idle wait of a source reopened)."""
        self._failed_at = time.monotonic() if t is None else t

    def ok(self, now: float, stall_s: float) -> bool:
        """CAMERA_OK: the camera showed it works within `stall_s` and since it last failed."""
        alive = self.alive_at
        return alive is not None and alive > self._failed_at and now - alive < stall_s

    def trigger(self, request: object) -> bool:
        """Software trigger: ask for one frame for `request` (never blocks). False if the
        camera already has as many requests as the trigger queue allows."""
        try:
            self._asked.put_nowait(request)
            return True
        except queue.Full:
            return False

    def start(self) -> "GrabLoop":
        """Construct the first source on the caller's thread (before the write loop runs:
        a constructor may precompute, e.g. the synthetic camera's textures), open it on ours."""
        self._first = open_camera(self.settings)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        lower_this_thread()
        s = self.settings
        retry = Reconnector(s.reconnect_min_ms / 1000, s.reconnect_max_ms / 1000, self._stop)
        opened_before = False
        while not self._stop.is_set():
            source, self._first = self._first or open_camera(s), None
            try:
                source.open()
            except Exception as e:  # noqa: BLE001 - any open failure is retried
                self.failed()
                self.metrics.camera_errors.labels("open").inc()
                delay = retry.absent() if isinstance(e, CameraAbsent) else retry.failed()
                log_event(cam_log, "camera_open_failed", logging.ERROR, source=s.source, reason=str(e),
                          retry_in_ms=round(delay * 1000), rate_key=s.source)
                source.close()
                retry.wait(delay)
                continue
            retry.opened()
            if opened_before:
                self.metrics.camera_reconnects.inc()
            log_event(cam_log, "camera_opened", logging.INFO, source=s.source, reopen=opened_before,
                      **source.opened_fields())
            opened_before = True
            try:
                while not self._stop.is_set():
                    request = None
                    if self.software:
                        try:
                            request = self._asked.get(timeout=0.1)
                        except queue.Empty:
                            self._alive_at = time.monotonic()
                            continue
                        if time.monotonic() > getattr(request, "t_seen", 0.0) + self._give_up_s:
                            continue  # asked for while the camera was reconnecting: its part is long gone
                    got = source.grab()
                    now = time.monotonic()
                    if got is None:  # hardware trigger: no pulse for a while, the camera is fine
                        self._alive_at = now
                        continue
                    image, label, *extra = got
                    meta = dict(extra[0]) if extra and extra[0] else None
                    if meta is not None and "counts" in meta:
                        self.metrics.camera_counts(meta.pop("counts"))
                    self.frames.put(Frame(image, self.seq, now, label, request, meta))
                    self._alive_at = now
                    self.seq += 1
                    retry.answered()  # a frame: the next failure starts the backoff from the minimum
            except Exception as e:  # noqa: BLE001 - CameraError or a driver's own exception
                self.failed()
                self.metrics.camera_errors.labels("grab").inc()
                delay = retry.absent() if isinstance(e, CameraAbsent) else retry.failed()
                kind = "camera_grab_failed" if isinstance(e, CameraError) else "camera_crashed"
                log_event(cam_log, kind, logging.ERROR, source=s.source, reason=f"{type(e).__name__}: {e}",
                          frame_seq=self.seq, retry_in_ms=round(delay * 1000), rate_key=s.source)
                retry.wait(delay)
            finally:
                source.close()


class InferenceWorker:
    """Judges frames: every new frame (free-run) or the first frame after each trigger.

    Free-run decisions go to a latest-value mailbox (older ones are simply replaced, and
    counted as drops when the worker skipped frames). Triggered decisions go to a queue
    the write loop drains each tick: each one answers one trigger and must not be lost.

    The models are the recipe book's (plcbridge/recipes.py): a trigger is judged with the
    session of the recipe read with it, a free-run frame with the active recipe's; a station
    without recipes has recipe 0, its [model], alone.
    """

    def __init__(self, config: Config, frames: FrameMailbox, journal: Journal, metrics: Metrics,
                 recipes: RecipeBook | None = None) -> None:
        self.config = config
        self.mode = config.station.mode
        self.frames = frames
        self.journal = journal
        self.metrics = metrics
        self.recipes = recipes if recipes is not None else RecipeBook(config, metrics)
        self.latest: LatestValue[Decision] = LatestValue()
        self.requests: queue.Queue[Request] = queue.Queue(maxsize=1 + config.timing.trigger_queue)
        self.results: queue.SimpleQueue[Decision] = queue.SimpleQueue()
        self.crashed = False
        metrics.model_ok.set_function(lambda: 1 if self.model_ok else 0)
        self.phase: tuple[Request | None, str] = (None, "loading")  # read lock-free by the write loop
        self._last_judged = -1  # seq of the last frame a trigger was judged on: a frame judges one trigger
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        # camera.trigger = "software": asks the grab loop for the request's own frame
        self.request_frame: Callable[[Request], bool] | None = None
        # Called after every decision is handed over: the write loop's wake-up, so that a
        # settled answer goes out without waiting for the next tick.
        self.on_decision: Callable[[], None] = lambda: None
        # Called with the time of a CAMERA_FAULT answer (no frame came for a trigger): the grab
        # loop's failed(), so that CAMERA_OK clears before the answer goes out.
        self.on_camera_fault: Callable[[float], None] = lambda t: None
        # [model.shadow]: the candidate's offer (ShadowRunner.offer: a put_nowait), called after
        # the live verdict is handed over, never before; only recipe 0's decisions, its model's.
        self.shadow_offer: Callable[[Decision], object] | None = None

    def _offer_shadow(self, d: Decision) -> None:
        if self.shadow_offer is not None and d.recipe == RECIPE_DEFAULT:
            self.shadow_offer(d)

    @property
    def model(self) -> Model | None:
        """The model of the active recipe (None while a switch is in progress)."""
        return self.recipes.serving

    @property
    def model_ok(self) -> bool:
        """MODEL_OK: the inference stage runs and the recipe the PLC wants did not fail to load."""
        return not self.crashed and self.recipes.model_ok

    @property
    def model_version(self) -> int:
        m = self.recipes.serving
        return 0 if m is None else m.version

    @property
    def load_error(self) -> str | None:
        if self.crashed:
            return "the inference stage crashed"
        return self.recipes.load_error

    def _deliver(self, d: Decision) -> None:
        """A triggered decision, to the write loop (which drains them), woken at once."""
        if d.fault is FaultCode.CAMERA_FAULT:
            self.on_camera_fault(d.t_decided)
        self.results.put(d)
        self.on_decision()
        self._offer_shadow(d)

    def start(self) -> "InferenceWorker":
        """Load the model here, on the caller's thread, then start judging.

        Daemon.start() calls this before the write loop runs: building a session holds the
        GIL for tens of milliseconds, which would otherwise land on the loop's first ticks.
        """
        self._load()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.recipes.stop()

    def phase_of(self, req: Request) -> str | None:
        cur, phase = self.phase
        return phase if cur is req else None

    def submit(self, req: Request) -> None:
        """Called by the write loop; the inspection logic bounds the count, so this never blocks."""
        try:
            self.requests.put_nowait(req)
        except queue.Full:  # cannot happen while TriggeredInspection bounds the queue; fail closed if it does
            self._deliver(failsafe(FaultCode.TRIGGER_OVERRUN, time.monotonic(), "inference request queue full",
                                      model_version=self.model_version, request=req))

    def _load(self) -> bool:
        """Load the recipes' models kept loaded (recipe 0 first); False if recipe 0 failed."""
        return self.recipes.start()

    def _run(self) -> None:
        lower_this_thread()
        try:
            self._serve()
        except Exception:  # noqa: BLE001 - a crashed stage must be loud; the write loop fails closed
            self.phase = (None, "crashed")
            self.crashed = True
            log_event(model_log, "inference_stage_crashed", logging.CRITICAL, exc_info=True,
                      reason="the inference thread died: triggers will time out with INFERENCE_TIMEOUT")

    def _serve(self) -> None:
        last_seq = -1
        while not self._stop.is_set():
            self.recipes.close_retired()
            if self.mode == "free-run":
                last_seq = self._free_run_step(last_seq)
            else:
                self._triggered_step()

    def _free_run_step(self, last_seq: int) -> int:
        frame = self.frames.wait_newer(last_seq, timeout=0.1)
        if frame is None:
            return last_seq
        if last_seq >= 0 and frame.seq > last_seq + 1:
            self.metrics.queue_drops.labels("frames").inc(frame.seq - last_seq - 1)
        if self.recipes.serving is None:  # a switch in progress, or no model: the outputs say why
            self.phase = (None, "no_model")
            return frame.seq
        d = self.judge(frame, None)
        self.phase = (None, "idle")
        self.latest.put(d)
        self.on_decision()
        self.journal.decision(d)
        self._offer_shadow(d)
        return frame.seq

    def _software_triggered_step(self, req: Request) -> None:
        """camera.trigger = "software": one frame taken for this trigger and no other."""
        assert self.request_frame is not None
        timing = self.config.timing
        frame = None
        if self.request_frame(req):
            deadline = req.t_seen + timing.result_timeout_ms / 1000
            frame = self.frames.frame_for(req, timeout=max(0.0, deadline - time.monotonic()))
        if frame is not None:
            self._last_judged = frame.seq
            d = self.judge(frame, req)
        else:
            d = failsafe(FaultCode.CAMERA_FAULT, time.monotonic(), "the camera did not deliver the frame this "
                         "trigger asked for (software trigger) within timing.result_timeout_ms",
                         model_version=self.model_version, request=req)
        self.phase = (None, "idle")
        self._deliver(d)

    def _hardware_triggered_step(self, req: Request) -> None:
        """camera.trigger = "hardware": the camera took one frame per edge of the PLC's output.
        Trigger k was raised after `req.t_after` (the read before the one that saw it) and
        seen at `req.t_seen`; its frame reached us after t_after and no later than t_seen +
        camera.trigger_latency_ms. Frames pair with triggers in order: the first frame no
        trigger took, inside that window. A frame from before the window had no trigger
        (counted, left); no frame in the window is NO_FRAME, and the next part's frame is
        never taken instead."""
        cam = self.config.camera
        after = req.t_after if req.t_after is not None else req.t_seen - self.config.plc.max_input_age_ms / 1000
        until = req.t_seen + cam.trigger_latency_ms / 1000
        while True:
            frame = self.frames.first_after(-math.inf, timeout=max(0.0, until - time.monotonic()),
                                            after_seq=self._last_judged, until=until)
            if frame is None or frame.t_capture > after:
                break
            self._last_judged = frame.seq  # before the window: a pulse no trigger stands for
            self.metrics.camera_frames_unpaired.inc()
            log_event(cam_log, "camera_frame_unpaired", logging.WARNING, frame_seq=frame.seq, rate_key="unpaired",
                      reason="a hardware-triggered frame came with no trigger to pair it with (an extra pulse)")
        if frame is not None:
            self._last_judged = frame.seq
            d = self.judge(frame, req)
        else:
            d = failsafe(FaultCode.NO_FRAME, time.monotonic(), "no frame from the camera between the trigger's "
                         f"edge and camera.trigger_latency_ms = {cam.trigger_latency_ms} after it was seen "
                         "(a lost pulse, or a camera that did not fire)", model_version=self.model_version, request=req)
            self.metrics.queue_drops.labels("no_frame").inc()
        self.phase = (None, "idle")
        self._deliver(d)

    def _triggered_step(self) -> None:
        """One trigger, one frame: the first frame captured after the trigger was seen that no
        earlier trigger took, captured within timing.frame_window_ms and before the next
        trigger was seen (a later frame may show the next part). None: NO_FRAME, or
        CAMERA_FAULT when no frame at all came after the trigger."""
        try:
            req = self.requests.get(timeout=0.1)
        except queue.Empty:
            return
        if self.recipes.model(req.recipe) is None:  # answered at once, no frame taken
            self.phase = (None, "no_model")
            self._deliver(self._without_model(req, None))
            return
        self.phase = (req, "waiting_frame")
        if self.request_frame is not None:
            self._software_triggered_step(req)
            return
        if self.config.camera.trigger == "hardware":
            self._hardware_triggered_step(req)
            return
        timing = self.config.timing
        until = req.t_seen + timing.frame_window_ms / 1000
        nxt = self._next_request()
        if nxt is not None:
            until = min(until, nxt.t_seen)
        deadline = min(until, req.t_seen + timing.result_timeout_ms / 1000)
        frame = self.frames.first_after(req.t_seen, timeout=max(0.0, deadline - time.monotonic()),
                                        after_seq=self._last_judged, until=until)
        nxt = self._next_request()  # seen while we waited? then a frame after it is its part's
        if frame is not None and nxt is not None and frame.t_capture > nxt.t_seen:
            frame = None
        cut_short = nxt is not None and nxt.t_seen < req.t_seen + timing.frame_window_ms / 1000
        now = time.monotonic()
        if frame is not None:
            self._last_judged = frame.seq
            d = self.judge(frame, req)
        elif not cut_short and (self.frames.last_capture or 0.0) <= req.t_seen:  # the camera gave nothing
            d = failsafe(FaultCode.CAMERA_FAULT, now, "no frame captured after the trigger",
                         model_version=self.model_version, request=req)
        else:
            d = failsafe(FaultCode.NO_FRAME, now, f"no frame of its own within timing.frame_window_ms = "
                         f"{timing.frame_window_ms} after the trigger{' and before the next one' if nxt else ''} "
                         f"(frames up to seq {self._last_judged} judged earlier triggers)",
                         model_version=self.model_version, request=req)
            self.metrics.queue_drops.labels("no_frame").inc()
        self.phase = (None, "idle")
        self._deliver(d)

    def _next_request(self) -> Request | None:
        """The trigger queued after the current one, if the write loop has seen it yet."""
        with self.requests.mutex:
            return self.requests.queue[0] if self.requests.queue else None

    def _without_model(self, req: Request | None, frame: Frame | None) -> Decision:
        """The answer for a trigger whose recipe has no session now: the recipe book says why
        (its switch in progress or evicted for one, unknown, or its model failed to load)."""
        recipe = req.recipe if req is not None else self.recipes.active
        fault = self.recipes.fault_for(recipe)
        if fault is FaultCode.NONE:  # active, but its session is gone: a switch is under way
            fault = FaultCode.RECIPE_CHANGING
        why = {FaultCode.RECIPE_UNKNOWN: f"recipe {recipe} is no recipe of this station",
               FaultCode.MODEL_NOT_READY: f"model not loaded: {self.recipes.errors.get(recipe) or self.load_error}"}.get(
            fault, f"the model of recipe {recipe} is not loaded: a recipe switch is in progress")
        return failsafe(fault, time.monotonic(), why, model_version=self.model_version, request=req,
                        frame_seq=None if frame is None else frame.seq)

    def judge(self, frame: Frame, req: Request | None) -> Decision:
        """Judge a frame with the model of the trigger's recipe (free-run: the active one)."""
        recipe = req.recipe if req is not None else self.recipes.active
        model = self.recipes.model(recipe)
        if model is None:
            return self._without_model(req, frame)
        self.phase = (req, "judging")
        t0 = time.monotonic()
        try:
            v = model.judge(frame.image)
        except (BadFrame, InferenceTimeout, InferenceError) as e:
            fault = {BadFrame: FaultCode.BAD_FRAME, InferenceTimeout: FaultCode.INFERENCE_TIMEOUT}.get(type(e), FaultCode.INFERENCE_ERROR)
            log_event(model_log, "inference_failed", logging.ERROR, fault=fault.name, reason=str(e), frame_seq=frame.seq,
                      rate_key=fault.name)
            return failsafe(fault, time.monotonic(), str(e), model_version=model.version, request=req,
                            frame_seq=frame.seq, t_capture=frame.t_capture, label=frame.label, frame_meta=frame.meta,
                            image=frame.image)
        now = time.monotonic()
        self.metrics.inference_seconds.observe(now - t0)
        result = ResultCode.FAIL if v.label == "fail" else ResultCode.PASS
        return Decision(result, FaultCode.NONE, v.score, now, model.version, frame.seq, frame.t_capture,
                        frame.label, v.preprocess_ms + v.infer_ms + v.postprocess_ms, req, frame_meta=frame.meta,
                        image=frame.image, recipe=recipe, **self._details(v, model))

    def _details(self, v: Verdict, model: Model) -> dict[str, Any]:
        """The Decision's result details from a verdict: the PLC's optional outputs by model
        kind (detection: defect_count and defect_class; anomaly: anomaly_area) and the findings."""
        if v.findings is None or v.result is None:
            return {}
        m = model.manifest
        names = m.detection.class_names if m.detection is not None else None
        findings = describe(v.result, v.findings, names)
        findings["post_ms"] = round(v.postprocess_ms, 3)  # decoding + rules, inside infer_ms
        details: dict[str, Any] = {"findings": findings, "decoded": v.result}
        if m.kind == "anomaly":
            details["anomaly_area"] = round(v.findings.area_px)
        else:
            details.update(defect_count=v.findings.count, defect_class=v.findings.worst_class)
        return details
