"""Recipes: the model a trigger is judged with, chosen by the PLC's `recipe_id`.

A station's recipes are its `[model]` (recipe 0, the default, what a station without recipes
has alone) and its `[[recipe]]` tables. The PLC asks for one by number; the bridge answers
with `active_recipe` once that recipe's model is loaded and checked (docs/plc-interface.md,
"Recipes"). This module is the one home of that state:

- `wanted`: the recipe_id the PLC asked for last (read by the write loop: `ask`);
- `active`: the recipe triggers are judged with now, RECIPE_NONE while the switch to
  `wanted` is in progress, while `wanted` names no recipe, or while its model failed to load;
- the loaded sessions, at most `recipes.max_loaded` (the memory bound), least recently used
  evicted first. Unset, every recipe is loaded at start and a switch is a lookup on the
  write loop's thread; a recipe beyond the bound is loaded on demand by the loader thread.

Threads: `ask` runs on the write loop and only looks things up (never loads, never waits on
anything but a lock held for dict updates). The loader thread builds sessions at producer
priority. Only the inference worker closes a session (`close_retired`, between two
decisions), so a session is never closed under a run.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from plcbridge.config import Config, FailsafeSettings, ModelSettings
from plcbridge.contract import RECIPE_DEFAULT, RECIPE_NONE, FaultCode
from plcbridge.inference.errors import ModelError
from plcbridge.logs import get_logger, log_event
from plcbridge.metrics import Metrics
from plcbridge.threads import lower_this_thread

if TYPE_CHECKING:
    from plcbridge.inference.session import Model

log = get_logger("recipes")
model_log = get_logger("model")  # the model's own events, where they were before recipes

# How long the loader waits for the worker to close the sessions it evicted before it builds
# the next one (the memory bound holds if the worker is between decisions within this).
RETIRE_WAIT_S = 2.0


def release_freed_memory() -> None:
    """Hand the memory of closed sessions back to the system (glibc's malloc_trim; the GIL is
    released meanwhile): without it the process keeps the freed arenas, and the memory bound
    (recipes.max_loaded) would bound sessions but not the resident set."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps what it keeps
        pass


@dataclass(frozen=True)
class Recipe:
    """One recipe as the station runs it: the model, its own verdict rule, its fail-safe values."""

    id: int
    name: str
    manifest: str
    threshold: float | None
    failsafe: FailsafeSettings


def station_recipes(config: Config) -> dict[int, Recipe]:
    """Recipe 0 ([model], [failsafe]) and the [[recipe]] tables, by id."""
    table = {RECIPE_DEFAULT: Recipe(RECIPE_DEFAULT, "default", config.model.manifest, None, config.failsafe)}
    for r in config.recipe:
        table[r.id] = Recipe(r.id, r.name or f"recipe {r.id}", r.manifest, r.threshold, r.failsafe or config.failsafe)
    return table


def with_threshold(model: "Model", threshold: float, recipe: Recipe) -> None:
    """Give a loaded model the recipe's own fail threshold (a classifier's `threshold`, an
    anomaly model's `rules.threshold`); ModelError for a kind that counts defects instead."""
    m = model.manifest
    if m.kind == "classifier":
        model.manifest = m.model_copy(update={"threshold": threshold})
    elif m.kind == "anomaly" and m.anomaly is not None:
        rules = m.anomaly.rules.model_copy(update={"threshold": threshold})
        model.manifest = m.model_copy(update={"anomaly": m.anomaly.model_copy(update={"rules": rules})})
    else:
        raise ModelError(f"recipe {recipe.id} ({recipe.manifest}): threshold is a classifier's or an anomaly model's "
                         f"rule; this {m.kind} model counts defects by its manifest's detection.rules")


def build_model(settings: ModelSettings, recipe: Recipe) -> "Model":
    """The recipe's model, loaded and smoke-run (inference.session.Model), with its threshold."""
    from plcbridge.inference.session import Model

    model = Model(recipe.manifest, settings.device, settings.intra_op_threads, settings.inference_timeout_ms)
    if recipe.threshold is not None:
        try:
            with_threshold(model, recipe.threshold, recipe)
        except ModelError:
            model.close()
            raise
    return model


class RecipeBook:
    """Which recipe is active, which is wanted, and the sessions kept loaded (see the module)."""

    def __init__(self, config: Config, metrics: Metrics,
                 build: Callable[[Recipe], "Model"] | None = None) -> None:
        self.recipes = station_recipes(config)
        self.max_loaded = min(config.recipes.max_loaded or len(self.recipes), len(self.recipes))
        self.metrics = metrics
        self._settings = config.model
        self._build = build
        self._lock = threading.Lock()
        self._models: collections.OrderedDict[int, Model] = collections.OrderedDict()  # least recently used first
        self.errors: dict[int, str] = {}  # recipe -> why its model did not load (until it is asked for again)
        self.wanted = RECIPE_DEFAULT
        self.active = RECIPE_NONE
        self._switch_from = RECIPE_NONE
        self._switch_t0: float | None = None
        self.last_switch_ms: float | None = None
        self._retired: list[Model] = []
        self._load_due = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recipe-loader", daemon=True)

    # ------------------------------------------------------------------ start, stop

    def start(self) -> bool:
        """Load the recipes kept loaded (recipe 0 first, then in the station file's order, up to
        the bound) on the caller's thread, before the write loop runs, then start the loader.
        True if recipe 0, what the station judges with until the PLC asks, is loaded."""
        for rid in list(self.recipes)[:self.max_loaded]:
            self._load(rid)
        if RECIPE_DEFAULT in self._models:
            self._activate(RECIPE_DEFAULT)
        self._thread.start()
        return RECIPE_DEFAULT in self._models

    def stop(self) -> None:
        """Stop the loader; close every session (the worker has stopped judging)."""
        self._stop.set()
        self._load_due.set()
        self._thread.join(timeout=5)
        with self._lock:  # (the closed sessions stay named: the summary after stop says what served)
            models = list(self._models.values()) + self._retired
            self._retired = []
        for m in models:
            m.close()

    # ------------------------------------------------------------------ the write loop's side

    def ask(self, recipe_id: int, now: float | None = None) -> None:
        """The PLC's recipe_id, as read (write loop). A new one starts a switch: done at once
        when its session is loaded, else handed to the loader; unknown ids are said once."""
        if recipe_id == self.wanted:
            return
        t = time.monotonic() if now is None else now
        with self._lock:
            previous, self.wanted, self._switch_t0 = self.active, recipe_id, t
            if previous != RECIPE_NONE:
                self._switch_from = previous  # the recipe switched from: the last one active
            self.errors.pop(recipe_id, None)  # asked again: try again (the files may be fixed)
            if recipe_id not in self.recipes:
                self.active = RECIPE_NONE
                loaded = False
            elif recipe_id in self._models:
                self._models.move_to_end(recipe_id)
                self._activate(recipe_id, t)
                return
            else:
                self.active = RECIPE_NONE
                loaded = True
        self.metrics.recipe_active.set(RECIPE_NONE)
        if not loaded:
            self.metrics.recipe_switches.labels("unknown").inc()
            log_event(log, "recipe_unknown", logging.WARNING, recipe_id=recipe_id, previous=previous,
                      known=sorted(self.recipes), fault=FaultCode.RECIPE_UNKNOWN.name,
                      reason=f"recipe_id {recipe_id} names no recipe of this station: every trigger is answered "
                             "fail-safe (RECIPE_UNKNOWN) and READY stays clear until the PLC asks for one it has")
            return
        log_event(log, "recipe_switch_started", logging.INFO, recipe_id=recipe_id, previous=previous,
                  name=self.recipes[recipe_id].name, manifest=self.recipes[recipe_id].manifest,
                  reason="not loaded (recipes.max_loaded): loading its model; triggers asking for it are answered "
                         "RECIPE_CHANGING until it is active")
        self._load_due.set()

    def fault_for(self, recipe_id: int) -> FaultCode:
        """What a trigger read with `recipe_id` gets instead of a judgement now: NONE when that
        recipe is active; RECIPE_UNKNOWN, MODEL_NOT_READY (its model failed to load) or
        RECIPE_CHANGING (its switch, or a switch away from it, is in progress)."""
        if recipe_id not in self.recipes:
            return FaultCode.RECIPE_UNKNOWN
        if recipe_id == self.active:
            return FaultCode.NONE
        if recipe_id in self.errors:
            return FaultCode.MODEL_NOT_READY
        return FaultCode.RECIPE_CHANGING

    @property
    def station_fault(self) -> FaultCode:
        """The recipe's part of the station's health: the fault of the recipe the PLC wants
        (NONE once it is active; MODEL_NOT_READY is said by MODEL_OK, not here)."""
        fault = self.fault_for(self.wanted)
        return FaultCode.NONE if fault is FaultCode.MODEL_NOT_READY else fault

    @property
    def model_ok(self) -> bool:
        """MODEL_OK as far as recipes go: the wanted recipe's model did not fail to load."""
        return self.wanted not in self.errors

    def failsafe_of(self, recipe_id: int, default: FailsafeSettings) -> FailsafeSettings:
        """The fail-safe values for a trigger of `recipe_id` (its own, or the station's)."""
        r = self.recipes.get(recipe_id)
        return default if r is None else r.failsafe

    # ------------------------------------------------------------------ the worker's side

    def model(self, recipe_id: int) -> "Model | None":
        """The loaded session of a recipe, or None (not loaded, evicted, unknown)."""
        return self._models.get(recipe_id)

    @property
    def serving(self) -> "Model | None":
        """The model of the active recipe."""
        return self._models.get(self.active)

    @property
    def load_error(self) -> str | None:
        return self.errors.get(self.wanted)

    def close_retired(self) -> None:
        """Close the sessions evicted or replaced since the last call (the worker, between two
        decisions: never under a run)."""
        if not self._retired:
            return
        with self._lock:
            retired, self._retired = self._retired, []
        for m in retired:
            m.close()
        release_freed_memory()

    def replace(self, recipe_id: int, model: "Model", retire_old: bool = True) -> "Model | None":
        """A checked model takes the recipe's place (a reload, a rollback); returns the session
        it replaced, retired unless the caller keeps it (`retire_old` False: the last-known-good)."""
        with self._lock:
            old = self._models.pop(recipe_id, None)
            if old is not None and retire_old:
                self._retired.append(old)
            self._models[recipe_id] = model
            self.errors.pop(recipe_id, None)
            self._evict_for(0, keep=recipe_id)
            if recipe_id == self.wanted and self.active != recipe_id:
                self._activate(recipe_id)
        self._info()
        self._loaded_gauge()
        return old

    def retire(self, model: "Model") -> None:
        """A session no longer kept (an old last-known-good): the worker closes it."""
        with self._lock:
            self._retired.append(model)

    def loaded(self) -> list[int]:
        return list(self._models)

    def view(self) -> dict[str, object]:
        """For people (the station page, MQTT status, `plcbridge status`): the recipe asked for,
        the one active (None while none is), their names, the sessions loaded, the last switch."""
        active = None if self.active == RECIPE_NONE else self.active
        wanted = self.recipes.get(self.wanted)
        return {"asked": self.wanted, "asked_name": None if wanted is None else wanted.name,
                "active": active, "known": sorted(self.recipes), "loaded": self.loaded(),
                "max_loaded": self.max_loaded, "last_switch_ms": self.last_switch_ms,
                "error": self.errors.get(self.wanted)}

    # ------------------------------------------------------------------ loading

    def _info(self) -> None:
        m = self.serving
        if m is not None:
            self.metrics.model_info.info({"name": m.name, "version": str(m.version), "providers": ",".join(m.providers),
                                          "recipe": str(self.active)})

    def _activate(self, recipe_id: int, now: float | None = None) -> None:
        self.active = recipe_id
        self.metrics.recipe_active.set(recipe_id)
        self._info()
        t0 = self._switch_t0
        if t0 is None:  # the start: no switch to time
            return
        self._switch_t0 = None
        ms = round(((time.monotonic() if now is None else now) - t0) * 1000, 1)
        self.last_switch_ms = ms
        self.metrics.recipe_switches.labels("done").inc()
        self.metrics.recipe_switch_seconds.observe(ms / 1000)
        model = self._models[recipe_id]
        log_event(log, "recipe_switched", logging.INFO, recipe=recipe_id, name=self.recipes[recipe_id].name,
                  previous=self._switch_from, model=model.name, model_version=model.version, switch_ms=ms,
                  loaded_recipes=list(self._models))

    def _loaded_gauge(self) -> None:
        self.metrics.recipe_models_loaded.set(len(self._models))

    def _evict_for(self, room: int, keep: int) -> None:
        """Retire least recently used sessions (not `keep`) until `room` more fit the bound.
        Called with the lock held."""
        while len(self._models) + room > self.max_loaded:
            victim = next((rid for rid in self._models if rid != keep), None)
            if victim is None:
                return
            self._retired.append(self._models.pop(victim))
            if self.active == victim:
                self.active = RECIPE_NONE
            log_event(log, "recipe_unloaded", logging.INFO, recipe=victim, for_recipe=keep,
                      reason=f"recipes.max_loaded = {self.max_loaded}: the least recently used session makes room")

    def _load(self, recipe_id: int) -> bool:
        """Build a recipe's session (start: the caller's thread; later: the loader's)."""
        recipe = self.recipes[recipe_id]
        t0 = time.monotonic()
        try:
            model = self._build(recipe) if self._build is not None else build_model(self._settings, recipe)
        except ModelError as e:
            with self._lock:
                self.errors[recipe_id] = str(e)
            if self._switch_t0 is not None:
                self.metrics.recipe_switches.labels("failed").inc()
            log_event(model_log, "model_load_failed", logging.ERROR, recipe=recipe_id, name=recipe.name,
                      manifest=recipe.manifest, reason=str(e))
            return False
        with self._lock:
            self._evict_for(1, keep=recipe_id)
            self._models[recipe_id] = model
        self._loaded_gauge()
        level = logging.ERROR if model.fell_back else logging.INFO
        log_event(model_log, "model_loaded", level, recipe=recipe_id, name=recipe.name, model=model.name,
                  version=model.version, manifest=str(model.manifest_path),
                  requested_providers=model.requested_providers, providers=model.providers,
                  fell_back=model.fell_back, fallback_reason=model.fallback_reason,
                  threshold=recipe.threshold, load_ms=round((time.monotonic() - t0) * 1000, 1))
        return True

    def _run(self) -> None:
        lower_this_thread()
        while not self._stop.is_set():
            self._load_due.wait()
            self._load_due.clear()
            if self._stop.is_set():
                return
            target = self.wanted
            if target not in self.recipes or target in self._models or target in self.errors:
                continue
            with self._lock:
                self._evict_for(1, keep=target)  # first: the bound holds while the new one loads
            deadline = time.monotonic() + RETIRE_WAIT_S
            while self._retired and time.monotonic() < deadline and not self._stop.is_set():
                time.sleep(0.005)  # the worker closes them between two decisions
            self._loaded_gauge()
            if not self._load(target):
                continue
            with self._lock:
                if self.wanted == target and self.active != target:
                    self._activate(target)
