"""Wiring: one Config in, the running stages out.

    camera grab loop --FrameMailbox--> inference worker --mailbox/queue--> write loop <--> PLC link

`Daemon.start()` starts everything; `Daemon.stop()` cancels a reload in progress, asks the
write loop for its final fail-safe write (READY cleared, SHUTTING_DOWN), then closes the PLC
link and stops the producers. Nothing here is global, so tests and the demo can run a
daemon in-process.

Readiness is one fact, said four ways that agree: the READY status bit (written by the
loop: inputs fresh, model loaded, frames arriving), `/readyz` (the loop ticks and writes
READY), systemd's READY=1 (sent by `poll()` the first time the bridge is ready, never
before) and STATUS= (what it lacks right now, refreshed on every change).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

from plcbridge.config import Config, ConfigError, changed_keys, load_config
from plcbridge.contract import RECIPE_DEFAULT, FaultCode
from plcbridge.decision import Decision
from plcbridge.endpoint import HealthServer
from plcbridge.inference.errors import ModelError
from plcbridge.inspection import FreeRunInspection, Health, TriggeredInspection
from plcbridge.journal import Journal, utc_text
from plcbridge.link import PlcLink
from plcbridge.logs import LogPipeline, get_logger, log_event
from plcbridge.mailbox import FrameMailbox
from plcbridge.metrics import Metrics
from plcbridge.pipeline import GrabLoop, InferenceWorker
from plcbridge.recipes import RecipeBook, station_recipes
from plcbridge.sdnotify import Notifier
from plcbridge.threads import freeze_heap, lower_this_thread, tune_interpreter
from plcbridge.writeloop import WriteLoop

if TYPE_CHECKING:
    from plcbridge.archive import ArchiveSink
    from plcbridge.endpoint import Route
    from plcbridge.inference.session import Model
    from plcbridge.mqtt.sink import MqttSink
    from plcbridge.page import PageSink
    from plcbridge.rollback import ModelWatch, Trip
    from plcbridge.shadow import ShadowRunner

log = get_logger("daemon")


# Sections a SIGHUP may change in a running daemon. Any other section changing means a new
# PLC connection, camera or schedule: that reload is refused whole, never half applied.
HOT_SECTIONS = frozenset({"model", "failsafe", "logging"})
RELOAD_CHECK_PAUSE_S = 0.01
# systemd's STATUS= is refreshed at least this often, and at once when readiness changes.
STATUS_EVERY_S = 5.0


def keys_under(keys: list[str], section: str) -> list[str]:
    """The changed keys in a section and below it ("model.shadow": model.shadow.manifest, ...)."""
    return [k for k in keys if k == section or k.startswith(section + ".")]


def same_model(a: Model, b: Model) -> bool:
    """The same model served: name, version and the bytes behind them."""
    return (a.manifest.name, a.manifest.version, a.manifest.sha256) == (b.manifest.name, b.manifest.version,
                                                                        b.manifest.sha256)


class ReloadCancelled(Exception):
    """The daemon is stopping: the reload's checks end where they are, nothing is applied."""


def reload_changes(keys: list[str], serving: Model | None, checked: Model) -> str:
    """What a reload changes, named: every key of the station file that differs, and the model
    as it is served (name, version; sha256 when the files behind the path changed), since a
    model is replaced under an unchanged model.manifest as often as by pointing it elsewhere."""
    said = f"changed: {', '.join(keys)}" if keys else "no key of the station file changed"
    if serving is None:
        return f"{said}; model {checked.name} v{checked.version} (none was serving)"
    was, now = serving.manifest, checked.manifest
    if same_model(serving, checked):
        return f"{said}; the model is the same ({now.name} v{now.version}, same sha256)"
    model = f"model {was.name} v{was.version} -> {now.name} v{now.version}" if was.name != now.name else \
        f"model {now.name} v{was.version} -> v{now.version}"
    if was.sha256 != now.sha256:
        model += f" (sha256 {was.sha256[:12]} -> {now.sha256[:12]})"
    return f"{said}; {model}"


def _mqtt_module() -> ModuleType:
    """plcbridge.mqtt.sink, or ConfigError naming the extra when paho-mqtt is not installed."""
    try:
        import plcbridge.mqtt.sink as sink
    except ImportError as e:
        if (e.name or "").startswith("paho"):
            raise ConfigError("mqtt.enabled: [mqtt] needs paho-mqtt, which is not installed: "
                              "pip install 'plcbridge[mqtt]'") from None
        raise
    return sink


class Daemon:
    def __init__(self, config: Config, config_path: Path | None = None, notifier: Notifier | None = None,
                 log_pipeline: LogPipeline | None = None) -> None:
        self.config = config
        self.config_path = config_path
        mqtt = _mqtt_module() if config.mqtt.enabled else None  # before anything starts: a missing extra is refused
        self.notifier = notifier or Notifier(env={})
        self._ready_sent = False
        self._not_ok_since: dict[str, float] = {}  # part of readiness -> since when it is not OK
        self._was_ready: bool | None = None
        self._next_status = 0.0
        self._reload_thread: threading.Thread | None = None
        self._cancel_reload = threading.Event()
        self._applied_version: int | None = None  # of the last reload applied, and what it replaced
        self._previous_version: int | None = None
        self._changed: list[str] = []  # the station-file keys the last reload applied changed
        self.last_reload: str | None = None
        self.metrics = Metrics()
        if log_pipeline is not None:
            self.metrics.watch("plcbridge_log_events_dropped", "Log events dropped because the log output was not "
                               "being read fast enough (bounded queue full)", lambda: log_pipeline.dropped)
        self.journal = Journal(self.metrics, config.station.name, carried=config.plc.carried_optional,
                               recipes="recipe_id" in config.plc.carried_optional_inputs)
        archive: ArchiveSink | None = None
        if config.archive.enabled:
            from plcbridge.archive import ArchiveSink  # OpenCV's encoder: only where frames are kept

            archive = ArchiveSink(config.archive, self.metrics)
            self.journal.sinks.add(archive, queue_size=config.archive.queue)
        self._archive = archive  # the shadow's disagreements go there too
        self.page: PageSink | None = None
        self.mqtt: MqttSink | None = None  # made last, below: its status reads the stages
        if config.metrics.enabled:
            from plcbridge.page import PageSink  # the station page, served beside /metrics

            self.page = PageSink()
            self.journal.sinks.add(self.page)
        self.frames = FrameMailbox()
        self.grab = GrabLoop(config, self.frames, self.metrics)
        self.recipes = RecipeBook(config, self.metrics)
        self.worker = InferenceWorker(config, self.frames, self.journal, self.metrics, self.recipes)
        if config.camera.trigger == "software":
            self.worker.request_frame = self.grab.trigger
        self.link = PlcLink(config.plc, self.metrics, config.timing.period_ms / 1000,
                            log_window_s=config.logging.rate_limit_s)
        self.inspection: FreeRunInspection | TriggeredInspection
        if config.station.mode == "free-run":
            # Reads the newest decision itself (worker.latest): nothing to drain.
            self.inspection = FreeRunInspection(
                config.timing, config.failsafe, self.worker.latest.get, self.journal, self.metrics, self.recipes)
            drain: Callable[[], None] = lambda: None
        else:
            triggered = self.inspection = TriggeredInspection(
                config.timing, config.failsafe, self.worker.submit, self.worker.phase_of, self.journal, self.metrics,
                self.recipes)
            drain = lambda: self._drain_decisions(triggered.on_decision)
        self.loop = WriteLoop(config, self.link, self.inspection, self.health, drain, self.metrics,
                              watchdog=self.notifier.watchdog, watchdog_interval_s=self.notifier.watchdog_interval_s)
        self.worker.on_decision = self.loop.wake  # a settled answer goes out without waiting for the tick
        self.loop.on_written = self._written
        # [model.shadow]: a candidate on idle CPU, in a process of its own (plcbridge/shadow.py),
        # started with the daemon and replaced by a reload that changes it.
        self.shadow: ShadowRunner | None = None
        # Model changes (a reload, a rollback) one at a time; the last-known-good session is kept
        # loaded after a change, for the watch to swap back in at once (plcbridge/rollback.py).
        self._model_change = threading.Lock()
        self._last_good: Model | None = None
        self.rolled_back: Trip | None = None
        self._agreement_mark = (0, 0)  # the shadow's (agreed, compared) at the last model change
        self.watch: ModelWatch | None = None
        if config.model.watch.enabled:
            from plcbridge.rollback import ModelWatch

            self.watch = ModelWatch(config.model.watch, config.model.p99_budget_ms, self.metrics, self._rollback,
                                    agreement=self._shadow_agreement, on_pass=self._watch_passed)
            self.journal.sinks.add(self.watch)
        self.worker.on_camera_fault = self.grab.failed
        self.http: HealthServer | None = None
        self.started_at: float | None = None
        self._stall_s = config.camera.stall_timeout_ms / 1000
        if mqtt is not None:  # results to the plant (plcbridge/mqtt): its publisher starts in start()
            self.mqtt = mqtt.MqttSink(config, self.metrics, mqtt.DaemonStation(self))
            self.journal.sinks.add(self.mqtt, queue_size=config.mqtt.queue)
        from plcbridge.drift import DriftSink, serving_reference  # live scores against the manifest's reference

        self.drift: DriftSink | None = None
        if config.drift.enabled:  # docs/drift.md; the model that judged a decision, and its reference:
            self.drift = DriftSink(config.drift, self.metrics,
                                   lambda d: serving_reference(self.recipes.model(d.recipe), d))
            self.journal.sinks.add(self.drift)

    def health(self, now: float) -> Health:
        book = self.recipes
        return Health(self.grab.ok(now, self._stall_s), self.worker.model_ok, self.worker.model_version,
                      recipe_fault=book.station_fault, active_recipe=book.active, rolled_back=self.rolled_back is not None)

    def _drain_decisions(self, answer: Callable[[Decision], None]) -> None:
        """Triggered mode, each write tick: every decision the worker made since the last."""
        while True:
            try:
                d = self.worker.results.get_nowait()
            except queue.Empty:
                return
            answer(d)

    def live(self) -> bool:
        t = self.loop.last_tick
        return self.loop.alive and t is not None and time.monotonic() - t < 1.0

    def ready(self) -> bool:
        return self.live() and self.loop.report.ready

    def readiness(self) -> list[dict[str, Any]]:
        """Each part READY stands for (the write loop, the PLC link and its inputs, the camera,
        the model): whether it is OK now, why not, and since when (seconds, monotonic). For
        /readyz's body, the station page and `plcbridge status`."""
        now = time.monotonic()
        c = self.config
        parts: list[tuple[str, str | None]] = []
        parts.append(("write_loop", None if self.live() else "the write loop is not running (no tick for 1 s)"))
        age = self.loop.input_age
        if not self.link.connected:
            plc = f"not connected to {c.plc.address} ({self.link.last_error or 'connecting'})"
        elif not self.loop.inputs_ok:
            plc = ("no inputs read yet" if age is None else f"inputs {age * 1000:.0f} ms old, above "
                   f"plc.max_input_age_ms = {c.plc.max_input_age_ms}: triggers cannot be seen")
        elif not self.link.delivering:
            plc = "no block has reached the PLC on this session yet"
        else:
            plc = None
        parts.append(("plc", plc))
        camera = None
        if not self.grab.ok(now, self._stall_s):
            last = self.grab.alive_at
            camera = ("no frame yet" if last is None else f"no sign of life for {(now - last) * 1000:.0f} ms "
                      f"(camera.stall_timeout_ms = {c.camera.stall_timeout_ms}), or the source failed")
            camera = f"{c.camera.source} camera: {camera}"
        parts.append(("camera", camera))
        parts.append(("model", None if self.worker.model_ok else f"not loaded: {self.worker.load_error or 'loading'}"))
        if "recipe_id" in c.plc.carried_optional_inputs:
            parts.append(("recipe", self._recipe_problem()))
        out = []
        for name, why in parts:
            since = self._not_ok_since.setdefault(name, now) if why else self._not_ok_since.pop(name, None)
            out.append({"part": name, "ok": why is None, "reason": why,
                        "for_s": None if why is None or since is None else round(now - since, 1)})
        return out

    def reload_view(self) -> dict[str, Any]:
        """Reloads applied and refused since start, what the last one said, and the rollback
        the watch made since the last model change a person applied (None: none)."""
        trip = self.rolled_back
        return {"applied": self._count("plcbridge_reloads_total", result="applied"),
                "refused": self._count("plcbridge_reloads_total", result="refused"),
                "in_progress": self._reload_thread is not None and self._reload_thread.is_alive(),
                "last": self.last_reload,
                "rolled_back": None if trip is None else trip.as_dict()}

    def model_operations(self) -> dict[str, Any]:
        """In short, for the MQTT status topic: the rollback the watch made (None: none), the
        watch's state, and the shadow's agreement since the last model change."""
        shadow = None
        if self.shadow is not None:
            v = self.shadow.view()
            agreement, compared = self._since_change(v) if self.shadow.running else (None, 0)
            shadow = {"manifest": v.get("manifest"), "state": v.get("state"),
                      "agreement": None if agreement is None else round(agreement, 4), "compared": compared,
                      "dropped": sum((v.get("dropped") or {}).values())}
        return {"rolled_back": None if self.rolled_back is None else self.rolled_back.as_dict(),
                "watch": None if self.watch is None else self.watch.state, "shadow": shadow}

    def recipe_view(self) -> dict[str, Any] | None:
        """The recipe book's view for a station that reads recipe_id; None for one that does not."""
        if "recipe_id" not in self.config.plc.carried_optional_inputs:
            return None
        return self.recipes.view()

    def _recipe_problem(self) -> str | None:
        """Why the recipe the PLC asks for does not judge triggers now (None: it does)."""
        book = self.recipes
        wanted = book.wanted
        fault = book.fault_for(wanted)
        if fault is FaultCode.NONE:
            return None
        if fault is FaultCode.RECIPE_UNKNOWN:
            return f"recipe_id {wanted} names no recipe of this station (it has {sorted(book.recipes)})"
        if fault is FaultCode.MODEL_NOT_READY:
            return f"recipe {wanted}: its model did not load: {book.errors.get(wanted)}"
        return f"switching to recipe {wanted} ({book.recipes[wanted].name}): loading its model"

    def readiness_report(self) -> dict[str, Any]:
        """`ready` and `readiness` (each part with `since_utc`, the wall-clock time it stopped
        being OK) as the station page's /api/status and the MQTT status topic both say them."""
        readiness = self.readiness()
        ready = self.ready()
        wall = time.time()
        for part in readiness:
            part["since_utc"] = None if part["for_s"] is None else utc_text(wall - part["for_s"])
        return {"ready": ready, "readiness": readiness}

    def why_not_ready(self) -> list[str]:
        """/readyz's body when it says 503: each part that is not OK, why, and for how long."""
        reasons = [f"{p['part']}: {p['reason']} (for {p['for_s']} s)" for p in self.readiness() if not p["ok"]]
        return reasons or ["READY is not written yet (the first block of a PLC session is on its way)"]

    def status_line(self) -> str:
        """One human line for systemd's STATUS= (what `systemctl status` shows)."""
        j = self.journal.summary()
        late = self.loop.lateness.summary_ms()
        now = time.monotonic()
        model = f"model v{self.worker.model_version}" if self.worker.model_ok else f"NO MODEL ({self.worker.load_error})"
        age = self.loop.input_age
        if not self.link.connected:
            plc = f"PLC DOWN ({self.link.last_error or 'connecting'})"
        elif not self.loop.inputs_ok:
            plc = "PLC INPUTS STALE (" + (f"{age * 1000:.0f} ms old" if age is not None else "none read yet") + ")"
        else:
            plc = "PLC up"
        if "recipe_id" in self.config.plc.carried_optional_inputs:
            problem = self._recipe_problem()
            model += f", recipe {self.recipes.active}" if problem is None else f", RECIPE: {problem}"
        parts = ["ready" if self.ready() else "NOT READY", self.config.station.mode, plc, model,
                 "camera ok" if self.health(now).camera_ok else "CAMERA FAULT",
                 " ".join(f"{k}={v}" for k, v in sorted(j["results"].items())) or "no results yet",
                 f"lateness p99 {late['p99']} ms"]
        if self._reload_thread is not None and self._reload_thread.is_alive():
            parts.append("reload in progress")
        if self.last_reload:
            parts.append(self.last_reload)
        return ", ".join(parts)

    @property
    def ready_sent(self) -> bool:
        """systemd has been told READY=1."""
        return self._ready_sent

    def poll(self) -> None:
        """The main thread's housekeeping, every fraction of a second: systemd's READY=1 the
        first time the bridge is ready, STATUS= on every change of readiness and every
        STATUS_EVERY_S."""
        # Keeps each part's not-OK-since stamp current when nobody asks (no page open, no
        # /readyz scrape), so that the "for N s" a reader gets later is true to within a poll.
        self.readiness()
        ready = self.ready()
        now = time.monotonic()
        if ready and not self._ready_sent:
            self.notifier.ready(self.status_line())
            self._ready_sent = True
        elif ready != self._was_ready or now >= self._next_status:
            self.notifier.status(self.status_line())
        else:
            return
        self._was_ready = ready
        self._next_status = now + STATUS_EVERY_S

    def request_reload(self) -> bool:
        """SIGHUP: start a reload in the background (False if one is running). The main
        thread stays free to see SIGTERM, which cancels the reload's checks."""
        if self._reload_thread is not None and self._reload_thread.is_alive():
            log_event(log, "reload_ignored", logging.WARNING, reason="a reload is already in progress")
            return False
        self._reload_thread = threading.Thread(target=self.reload, name="reload", daemon=True)
        self._reload_thread.start()
        return True

    def reload(self) -> bool:
        """Reload the config and the model; all of it, or nothing. True if applied.

        The checks run inferences at full speed: on a producer-priority thread, so that the
        write loop keeps its core while they run."""
        self.notifier.reloading()
        if threading.current_thread() is not threading.main_thread():
            lower_this_thread()
        try:
            ok, detail = self._reload()
        except ReloadCancelled:
            log_event(log, "reload_cancelled", logging.WARNING, reason="the daemon is stopping; nothing was applied",
                      serving_model_version=self.worker.model_version)
            return False
        except Exception as e:  # noqa: BLE001 - a reload must never take the daemon down
            ok, detail = False, f"unexpected error: {type(e).__name__}: {e}"
            log_event(log, "reload_failed", logging.ERROR, what="reload", reason=detail, exc_info=True)
        self.metrics.reloads.labels("applied" if ok else "refused").inc()
        self.metrics.last_reload_ok.set(1 if ok else 0)
        self.last_reload = "last reload applied" if ok else f"LAST RELOAD REFUSED: {detail}"
        if ok:
            # The worker adopts the new session between two decisions: name the version that
            # was applied, not the one still serving this instant.
            log_event(log, "reload_applied", logging.INFO, detail=detail, changed=self._changed,
                      model_version=self._applied_version, previous_model_version=self._previous_version)
        # systemd's reload protocol ends with READY=1 (only for a unit that was ever ready);
        # STATUS= says whether the bridge is ready now.
        if self._ready_sent:
            self.notifier.ready(self.status_line())
        return ok

    def _refuse(self, what: str, reason: str) -> tuple[bool, str]:
        log_event(log, "reload_failed", logging.ERROR, what=what, reason=reason,
                  serving_model_version=self.worker.model_version)
        return False, reason

    def _reload(self) -> tuple[bool, str]:
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            return self._refuse("config", str(e))
        keys = changed_keys(self.config, new)
        cold = [key for key in keys if key.split(".")[0] not in HOT_SECTIONS]
        if cold:
            sections = sorted({key.split(".")[0] for key in cold})
            return self._refuse("config", f"section(s) {', '.join(sections)} changed ({', '.join(cold)}); they need a "
                                          "restart (systemctl restart plcbridge); nothing was applied")
        # Always rebuild the model: the files behind an unchanged manifest path may be new.
        from plcbridge.inference.validate import validate_model

        m = new.model
        checked: list[Model] = []
        # Paced: between timed runs the reload sleeps, leaving the CPU to the write loop and to
        # the model still serving. The session that passed is the one that will serve.
        def cancelled(_done: int, _total: int) -> None:
            if self._cancel_reload.is_set():
                raise ReloadCancelled

        report = validate_model(m.manifest, runs=m.latency_check_runs, p99_max_ms=m.p99_budget_ms,
                                device=m.device, intra_op_threads=m.intra_op_threads, progress=cancelled,
                                timeout_ms=m.inference_timeout_ms, pause_s=RELOAD_CHECK_PAUSE_S, on_pass=checked.append)
        if self._cancel_reload.is_set():
            for model in checked:
                model.close()
            raise ReloadCancelled
        if not checked:
            return self._refuse("model", f"{m.manifest}: {report.failure}")
        model = checked[0]
        shadow = None
        if new.model.shadow is not None and (keys_under(keys, "model.shadow") or self.shadow is None
                                             or not self.shadow.running):
            try:
                shadow = self._new_shadow(new)  # loaded before anything is applied: all or nothing
            except ModelError as e:
                model.close()
                return self._refuse("model.shadow", str(e))
        with self._model_change:
            serving = self.recipes.model(RECIPE_DEFAULT)
            self._previous_version, self._applied_version = getattr(serving, "version", None), model.version
            self._changed = keys
            self.recipes.recipes = station_recipes(new)  # recipe 0's manifest and fail-safe values; [[recipe]] is cold
            same = serving is not None and same_model(serving, model)
            self._swap_live(model, keep_previous=not same)
            old_shadow = None
            if new.model.shadow is None or shadow is not None:
                old_shadow, self.shadow = self.shadow, shadow if new.model.shadow is not None else None
                self.worker.shadow_offer = None if self.shadow is None else self.shadow.offer
            self.rolled_back = None  # a model change a person asked for clears MODEL_ROLLED_BACK
            if self.watch is not None and not same:
                self._agreement_mark = self._shadow_counts()
                self.watch.changed(self._previous_version or 0, model.version, "reload")
        if old_shadow is not None:
            old_shadow.stop()  # outside the lock: a rollback never waits for the old child to end
        self.inspection.fs = new.failsafe
        self.loop.config = new
        logging.getLogger("plcbridge").setLevel(new.logging.level.upper())
        self.config = new
        return True, (f"model {model.name} v{model.version} checked (p99 {report.latency_ms.get('p99')} ms); "
                      f"{reload_changes(self._changed, serving, model)}")

    def _new_shadow(self, config: Config) -> ShadowRunner:
        """A started shadow runner for config.model.shadow (ModelError if its model does not load)."""
        from plcbridge.shadow import ShadowRunner

        shadow = config.model.shadow
        assert shadow is not None
        keep = self._archive.keep_shadow if self._archive is not None and shadow.archive_disagreements else None
        return ShadowRunner(shadow, config.model, self.metrics, keep, station=config.station.name,
                            after_delivery=True).start()

    def _swap_live(self, model: Model, keep_previous: bool) -> None:
        """Recipe 0's new session in place; the one it replaces is kept as the last-known-good
        (`keep_previous`: a model change the watch may roll back), and the last-known-good kept
        before is retired (the worker closes it between two decisions)."""
        # During a watch the last-known-good stays the model from before it: the one replaced
        # now was never proven, and goes.
        watching = self.watch is not None and self.watch.state == "watching" and self._last_good is not None
        keep = keep_previous and not watching
        previous = self.recipes.replace(RECIPE_DEFAULT, model, retire_old=not keep)
        if keep:
            if self._last_good is not None:
                self.recipes.retire(self._last_good)
            self._last_good = previous
        log_event(log, "model_swapped", logging.INFO, model=model.name, version=model.version,
                  previous_version=getattr(previous, "version", None), manifest=str(model.manifest_path),
                  last_known_good=None if self._last_good is None else self._last_good.version)

    def _watch_passed(self, old_version: int | None, new_version: int | None) -> None:
        """The watch passed: nothing rolls back to the last-known-good now, so its session goes
        (the worker closes it between two decisions) instead of holding its memory until the
        next model change. Not when a newer change began meanwhile: that watch keeps its own."""
        with self._model_change:
            good = self._last_good
            if good is None or good.version != old_version or self.watch is None or self.watch.state != "passed":
                return
            self._last_good = None
            self.recipes.retire(good)
        log_event(log, "last_known_good_released", logging.INFO, version=good.version, serving_version=new_version,
                  reason=f"the watch of model v{new_version} passed: its session is closed")

    def _rollback(self, trip: Trip) -> None:
        """A watch trigger tripped: the last-known-good takes recipe 0's place again, at once
        (its session was kept loaded); MODEL_ROLLED_BACK is set in every block until a person's
        next model change (a reload, promote) or a restart."""
        with self._model_change:
            good, self._last_good = self._last_good, None
            if good is None:
                log_event(log, "model_rollback_impossible", logging.ERROR, trigger=trip.trigger.value,
                          reason="no last-known-good model is kept (the daemon started with this model)")
                return
            bad = self.recipes.replace(RECIPE_DEFAULT, good, retire_old=True)
            self.rolled_back = trip
        self.metrics.model_rollbacks.labels(trip.trigger.value).inc()
        log_event(log, "model_rolled_back", logging.ERROR, trigger=trip.trigger.value, figure=trip.figure,
                  threshold=trip.threshold, rolled_back_version=getattr(bad, "version", None),
                  serving_version=good.version, serving_model=good.name, decisions_watched=trip.decisions_watched,
                  reason=trip.reason + f"; the station file still names {self.config.model.manifest}: "
                  "fix or revert it before the next reload or restart")
        self.last_reload = f"MODEL ROLLED BACK ({trip.trigger.value}) to v{good.version}"

    def start(self) -> "Daemon":
        tune_interpreter()
        self.started_at = time.monotonic()
        c = self.config
        log_event(log, "starting", logging.INFO, station=c.station.name, mode=c.station.mode, protocol=c.plc.protocol,
                  plc=c.plc.address, camera=c.camera.source, model=c.model.manifest, period_ms=c.timing.period_ms)
        if c.metrics.enabled:
            http = self.http = HealthServer(self.metrics, c.metrics.host, c.metrics.port, self.live, self.ready,
                                            why_not_ready=self.why_not_ready, routes=self._page_routes()).start()
            self.metrics.watch("plcbridge_http_connections_refused", "Metrics/health connections closed at once "
                               "because the endpoint's bounded queue was full", lambda: http.connections_refused)
            self.metrics.watch("plcbridge_http_requests_timed_out", "Metrics/health connections closed because the "
                               "request or the response did not complete in time",
                               lambda: http.requests_timed_out + http.responses_timed_out)
            log_event(log, "metrics_listening", logging.INFO, url=f"http://{c.metrics.host}:{self.http.port}/metrics")
        if c.model.shadow is not None:
            self._start_shadow()
        self.worker.start()  # loads the model first: nothing that holds the GIL long runs beside the loop
        self.grab.start()
        self.link.start()
        freeze_heap()
        self.loop.start()
        if self.mqtt is not None:
            self.mqtt.start()  # after the loop: the spool's backlog never delays the first block
        self.poll()
        return self

    def _start_shadow(self) -> None:
        """Start the candidate before the live model; one that does not load is said and left
        out: the station runs without its shadow rather than not at all."""
        try:
            self.shadow = self._new_shadow(self.config)
        except ModelError as e:
            log_event(log, "shadow_not_started", logging.ERROR, reason=str(e),
                      effect="the station runs without its shadow model")
            return
        self.worker.shadow_offer = self.shadow.offer

    def _written(self, token: object) -> None:
        """The write loop: a block reached the PLC. The shadow starts on a live decision's frame
        only once its answer is there (ShadowRunner.delivered)."""
        shadow = self.shadow
        if shadow is not None:
            d = getattr(token, "decision", token)  # a triggered answer's slot, or a free-run Decision
            if isinstance(d, Decision):
                shadow.delivered(d)

    def _shadow_counts(self) -> tuple[int, int]:
        """(agreed, compared) of the shadow since it started; (0, 0) without one."""
        shadow = self.shadow
        if shadow is None:
            return 0, 0
        v = shadow.view()
        return int(v.get("agreed") or 0), int(v.get("compared") or 0)

    def _since_change(self, view: dict[str, Any]) -> tuple[float | None, int]:
        """From a shadow view: its agreement with the live model since the last model change,
        and how many verdicts it compared since."""
        agreed, compared = int(view.get("agreed") or 0), int(view.get("compared") or 0)
        if self._agreement_mark[1] > compared:  # another shadow since the mark: it counts from its start
            self._agreement_mark = (0, 0)
        agreed, compared = agreed - self._agreement_mark[0], compared - self._agreement_mark[1]
        return (agreed / compared if compared else None), compared

    def _shadow_agreement(self) -> tuple[float | None, int]:
        """The watch's agreement trigger: the shadow's agreement since the last model change
        (after promote, the shadow is the previous model)."""
        if self.shadow is None or not self.shadow.running:
            return None, 0
        return self._since_change(self.shadow.view())

    @property
    def archive(self) -> ArchiveSink | None:
        """The image archive's writer (None: `[archive]` is off): the page asks it which
        decisions are archived."""
        return self._archive

    def _page_routes(self) -> dict[str, Route] | None:
        """The station page's routes (plcbridge/page), served beside /metrics."""
        if self.page is None:
            return None
        from plcbridge.page import page_routes

        return page_routes(self, self.page)

    def stop(self) -> None:
        self.notifier.stopping("stopping: writing the fail-safe block")
        log_event(log, "stopping", logging.INFO, reason="stop requested")
        self._cancel_reload.set()
        if self._reload_thread is not None:
            self._reload_thread.join(0.5)  # a check ends within one timed run
        self.loop.stop()
        self.link.close()
        self.worker.stop()
        if self._last_good is not None:
            self._last_good.close()
        if self.shadow is not None:
            self.shadow.stop()  # before the sinks close: its last disagreements reach the archive
        self.grab.stop()
        # The side work finishes what it was handed (bounded), after the final write; MQTT then
        # says offline and disconnects (bounded too), the spool keeping what was not acknowledged.
        self.journal.sinks.close()
        if self.http is not None:
            self.http.stop()
        log_event(log, "stopped", logging.INFO, ticks=self.loop.ticks, overruns=self.loop.overruns,
                  final_write_ok=self.loop.final_write_ok)

    def _count(self, sample: str, **labels: str) -> int:
        return int(self.metrics.registry.get_sample_value(sample, labels) or 0)

    def summary(self) -> dict[str, Any]:
        return {
            **self.journal.summary(),
            "write_loop": {
                "period_ms": self.config.timing.period_ms,
                "ticks": self.loop.ticks,
                "overruns": self.loop.overruns,
                "lateness_ms": self.loop.lateness.summary_ms(),
            },
            "camera": {"source": self.config.camera.source, "trigger": self.config.camera.trigger},
            "frames_captured": self.grab.seq,
            # Frames the inference stage skipped (free-run) and triggers refused for a full queue.
            "queue_drops": {q: self._count("plcbridge_queue_drops_total", queue=q) for q in ("frames", "triggers", "late_decisions")},
            "plc_link": {"reconnects": self._count("plcbridge_plc_reconnects_total"),
                         "exchange_errors": self._count("plcbridge_plc_errors_total", kind="exchange"),
                         "connect_errors": self._count("plcbridge_plc_errors_total", kind="connect"),
                         "config_errors": self._count("plcbridge_plc_errors_total", kind="config"),
                         "exchanges": self.link.exchanges,
                         "late_exchanges": self._count("plcbridge_plc_late_exchanges_total"),
                         "blocks_superseded": self._count("plcbridge_plc_blocks_superseded_total"),
                         "extra_blocks": self._count("plcbridge_plc_extra_blocks_total"),
                         "polls": self._count("plcbridge_plc_polls_total"),
                         "inputs_stale_episodes": self._count("plcbridge_plc_inputs_stale_total")},
            "model": {"name": getattr(self.worker.model, "name", None),
                      "kind": getattr(getattr(self.worker.model, "manifest", None), "kind", None),
                      "version": self.worker.model_version, "loaded": self.worker.model_ok,
                      "providers": getattr(self.worker.model, "providers", None),
                      "shadow": None if self.shadow is None else self.shadow.view(),
                      "watch": None if self.watch is None else self.watch.view()},
        }
