"""Prometheus metrics.

Metrics live in a registry per daemon (not the process-global one) so that tests and the
demo can run several daemons in one process. The HTTP endpoint that serves them, with
/healthz and /readyz, is plcbridge/endpoint.py.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily

from plcbridge.contract import FaultCode

_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1)
# A PLC exchange: sub-millisecond on loopback, 5-30 ms from a real PLC, up to the link timeout.
_EXCHANGE = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0)
_LATENCY = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.045, 0.075, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.inference_seconds = Histogram("plcbridge_inference_seconds", "Model run time (preprocess + ORT run)", buckets=_LATENCY, registry=r)
        self.capture_to_write_seconds = Histogram(
            "plcbridge_capture_to_write_seconds", "Frame capture to the PLC write that first carried its result", buckets=_LATENCY, registry=r
        )
        self.trigger_to_result_seconds = Histogram(
            "plcbridge_trigger_to_result_seconds", "Trigger seen to the PLC write that carried its result", buckets=_LATENCY, registry=r
        )
        self.write_lateness_seconds = Histogram(
            "plcbridge_write_lateness_seconds", "Write tick start minus its scheduled start", buckets=_FAST, registry=r
        )
        self.write_overruns = Counter("plcbridge_write_overruns", "Write slots given up because the loop was late: a tick ran past the next slot, or woke a period or more behind", registry=r)
        self.tick_errors = Counter("plcbridge_tick_errors", "Write ticks that raised (no block written that tick)", registry=r)
        self.plc_exchange_seconds = Histogram("plcbridge_plc_exchange_seconds", "One answered PLC exchange (write outputs + read inputs), request to reply",
                                              buckets=_EXCHANGE, registry=r)
        self.failsafes = Counter("plcbridge_failsafe", "Fail-safe results written, by fault", ["fault"], registry=r)
        for f in FaultCode:
            if f is not FaultCode.NONE:
                self.failsafes.labels(f.name)
        self.decisions = Counter("plcbridge_decisions", "Decisions journaled, by result", ["result"], registry=r)
        self.queue_drops = Counter("plcbridge_queue_drops", "Items overwritten or refused by a bounded queue", ["queue"], registry=r)
        self.triggers_collapsed = Counter("plcbridge_triggers_collapsed", "Trigger values answered by a collapsed "
                                          "TRIGGER_OVERRUN answer for a newer value (flood rule), not one of their own", registry=r)
        self.result_holds_cut = Counter("plcbridge_result_holds_cut", "Answers taken off the outputs before their ack "
                                        "or result_hold_ms, after being written, because the answer behind them "
                                        "was due (result_timeout_ms)", registry=r)
        self.results_discarded = Counter("plcbridge_results_discarded", "Answers held for a PLC session that ended "
                                         "(the PLC restarted) before they were delivered", registry=r)
        self.plc_late_exchanges = Counter("plcbridge_plc_late_exchanges", "PLC replies that came more than one period after the request (used, not fatal)", registry=r)
        self.plc_polls = Counter("plcbridge_plc_polls", "Exchanges between two ticks that only read the inputs again (the newest block sent again, plc.poll_ms)", registry=r)
        self.plc_extra_blocks = Counter("plcbridge_plc_extra_blocks", "Blocks posted between two ticks because an answer settled (a verdict, an ack that lets the next answer out): at most one per period", registry=r)
        self.plc_blocks_superseded = Counter("plcbridge_plc_blocks_superseded", "Output blocks replaced by a newer one before an exchange was free to send them", registry=r)
        self.plc_input_age_seconds = Gauge("plcbridge_plc_input_age_seconds", "Age of the newest PLC inputs at the last write tick (since their request was sent)", registry=r)
        self.plc_inputs_ok = Gauge("plcbridge_plc_inputs_ok", "1 while the PLC inputs are younger than plc.max_input_age_ms", registry=r)
        self.plc_inputs_stale = Counter("plcbridge_plc_inputs_stale", "Episodes of PLC inputs older than plc.max_input_age_ms (PLC_INPUTS_STALE)", registry=r)
        self.plc_connected = Gauge("plcbridge_plc_connected", "1 while the PLC connection is up", registry=r)
        self.plc_reconnects = Counter("plcbridge_plc_reconnects", "PLC connections established after a loss", registry=r)
        self.plc_errors = Counter("plcbridge_plc_errors", "PLC failures by kind: connect, exchange (session dropped), "
                                  "config (the PLC says the configuration does not fit), refused (busy; session kept)", ["kind"], registry=r)
        for kind in ("connect", "exchange", "config", "refused"):
            self.plc_errors.labels(kind)
        self.camera_errors = Counter("plcbridge_camera_errors", "Camera source failures, by kind (open, grab)", ["kind"], registry=r)
        self.archive_saved = Counter("plcbridge_archive_saved", "Frames kept in the image archive, by result",
                                     ["result"], registry=r)
        self.archive_dropped = Counter("plcbridge_archive_dropped", "Frames the archive should have kept and could "
                                       "not: disk_full, read_only, missing_folder, permission, error (a full queue "
                                       "is plcbridge_sink_dropped_total{sink=\"archive\"})", ["reason"], registry=r)
        self.archive_evicted = Counter("plcbridge_archive_evicted", "Archived frames deleted to stay within "
                                       "archive.max_bytes (quota) or archive.max_age_days (age), or to make room on a "
                                       "full disk (disk_full)", ["reason"], registry=r)
        self.archive_bytes = Gauge("plcbridge_archive_bytes", "Bytes the image archive holds", registry=r)
        self.archive_overlays_failed = Counter("plcbridge_archive_overlays_failed", "Overlays (the frame with the "
                                               "findings drawn) that could not be drawn or encoded; the frame itself "
                                               "was kept", registry=r)
        self.mqtt_published = Counter("plcbridge_mqtt_published", "MQTT messages the broker acknowledged (PUBACK), "
                                      "by topic: decision, status, stats", ["topic"], registry=r)
        self.mqtt_spooled = Counter("plcbridge_mqtt_spooled", "Decisions written (committed) to the MQTT spool, "
                                    "which happens before they are published", registry=r)
        self.mqtt_dropped = Counter("plcbridge_mqtt_dropped", "Decisions that will not be published, by reason: "
                                    "spool_bytes, spool_age (the spool's bounds, oldest first), spool_error (could not "
                                    "be spooled: disk full, read-only, missing folder), too_large (above "
                                    "mqtt.spool_max_bytes alone), rejected (the broker refused it: MQTT 5). A full "
                                    "sink queue is plcbridge_sink_dropped_total{sink=\"mqtt\"}", ["reason"], registry=r)
        for reason in ("spool_bytes", "spool_age", "spool_error", "too_large", "rejected"):
            self.mqtt_dropped.labels(reason)
        self.mqtt_backlog_messages = Gauge("plcbridge_mqtt_backlog_messages", "Decisions in the MQTT spool, not yet "
                                           "acknowledged by the broker", registry=r)
        self.mqtt_backlog_bytes = Gauge("plcbridge_mqtt_backlog_bytes", "Bytes of the decisions in the MQTT spool "
                                        "(topics and payloads)", registry=r)
        self.mqtt_backlog_age_seconds = Gauge("plcbridge_mqtt_backlog_age_seconds", "Age of the oldest decision in "
                                              "the MQTT spool (0 when empty)", registry=r)
        self.mqtt_inflight = Gauge("plcbridge_mqtt_inflight", "Decisions published and not yet acknowledged "
                                   "(at most mqtt.inflight)", registry=r)
        self.mqtt_connected = Gauge("plcbridge_mqtt_connected", "1 while connected to the MQTT broker (CONNACK "
                                    "accepted)", registry=r)
        self.mqtt_connect_errors = Counter("plcbridge_mqtt_connect_errors", "MQTT connections that failed or ended, by "
                                           "reason: refused, timeout, dns, network, tls_certificate, tls, auth, "
                                           "not_authorized, broker_refused, credentials, lost, ack_timeout",
                                           ["reason"], registry=r)
        self.mqtt_spool_corrupt = Counter("plcbridge_mqtt_spool_corrupt", "MQTT spool files found corrupt, moved "
                                          "aside (renamed with a timestamp) and started anew", registry=r)
        self.sink_dropped = Counter("plcbridge_sink_dropped", "Decision records a side-work sink (archive, page, "
                                    "MQTT) left out: its queue was full, or it failed", ["sink", "reason"], registry=r)
        self.camera_frames_unpaired = Counter("plcbridge_camera_frames_unpaired", "Hardware-triggered frames that "
                                              "came with no trigger to pair them with (extra pulses)", registry=r)
        self.camera_reconnects = Counter("plcbridge_camera_reconnects", "Camera source reopened after a failure", registry=r)
        self.camera_buffers_failed = Counter("plcbridge_camera_buffers_failed", "Camera buffers that arrived "
                                             "incomplete or failed (genicam), by Aravis buffer status", ["status"], registry=r)
        self.camera_packets = Counter("plcbridge_camera_packets", "GigE Vision stream packet events (genicam): "
                                      "resent, missing, resend_requests", ["kind"], registry=r)
        for kind in ("resent", "missing", "resend_requests"):
            self.camera_packets.labels(kind)
        self.camera_ok = Gauge("plcbridge_camera_ok", "1 while frames arrive within the stall limit", registry=r)
        self.model_ok = Gauge("plcbridge_model_ok", "1 while a model session is loaded and healthy", registry=r)
        self.model_info = Info("plcbridge_model", "The model serving now", registry=r)
        # Recipes (plcbridge/recipes.py): a station without [[recipe]] has recipe 0 alone.
        self.recipe_active = Gauge("plcbridge_recipe_active", "The recipe triggers are judged with now (the PLC's "
                                   "active_recipe); 65535 while a switch is in progress or recipe_id is unknown",
                                   registry=r)
        self.recipe_active.set(65535)
        self.recipe_switches = Counter("plcbridge_recipe_switches", "Recipe switches the PLC asked for, by outcome: "
                                       "done, unknown (no such recipe), failed (its model did not load)", ["outcome"],
                                       registry=r)
        for outcome in ("done", "unknown", "failed"):
            self.recipe_switches.labels(outcome)
        self.recipe_switch_seconds = Histogram("plcbridge_recipe_switch_seconds", "recipe_id read -> the recipe active",
                                               buckets=(.001, .005, .02, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
                                               registry=r)
        self.model_rollbacks = Counter("plcbridge_model_rollbacks", "Automatic rollbacks to the last-known-good model "
                                       "after a model change, by the watch trigger that tripped ([model.watch])",
                                       ["trigger"], registry=r)
        self.recipe_models_loaded = Gauge("plcbridge_recipe_models_loaded", "Recipe model sessions loaded now "
                                          "(at most recipes.max_loaded)", registry=r)
        self.reloads = Counter("plcbridge_reloads", "SIGHUP reloads, by outcome", ["result"], registry=r)
        self.last_reload_ok = Gauge("plcbridge_last_reload_ok", "0 if the last reload was refused; 1 if it was applied or none was asked for", registry=r)
        self.last_reload_ok.set(1)
        self.ready = Gauge("plcbridge_ready", "1 while the READY status bit is written", registry=r)
        # What is running, and what it costs: process_resident_memory_bytes,
        # process_cpu_seconds_total, process_open_fds, process_start_time_seconds, ... (Linux /proc).
        self.build_info = Info("plcbridge_build", "The plcbridge build running", registry=r)
        self.build_info.info(build_info())
        ProcessCollector(registry=r)
        self.threads = Gauge("process_threads", "Threads in this process, native ones included (/proc/self/task)", registry=r)
        self.threads.set_function(_thread_count)
        # Drift (plcbridge/drift.py, docs/drift.md): live scores against the model's reference, per full window.
        self.drift_psi = Gauge("plcbridge_drift_psi", "Population stability index of the last full window of live "
                               "scores against the model's reference score distribution (docs/drift.md)",
                               ["model", "version"], registry=r)
        self.drift_windows = Counter("plcbridge_drift_windows", "Full windows of live scores (drift.window verdicts "
                                     "each) compared with the model's reference", ["model", "version"], registry=r)
        self.drift_warnings = Counter("plcbridge_drift_warnings", "Windows whose PSI reached drift.warn_psi (each one "
                                      "a drift_warning log line)", ["model", "version"], registry=r)
        self.drift_warn_psi = Gauge("plcbridge_drift_warn_psi", "drift.warn_psi: the PSI from which a window is a "
                                    "warning (0 while drift is off)", registry=r)
        # The shadow model ([model.shadow], plcbridge/shadow.py): a candidate judged on the frames the live
        # model judged, on idle CPU, deciding nothing: the confusion matrix, score differences, latency, drops.
        self.shadow_decisions = Counter("plcbridge_shadow_decisions", "Frames the shadow (candidate) model judged, by "
                                        "the live verdict (PASS, FAIL) and the shadow's (PASS, FAIL, or TIMEOUT, ERROR, "
                                        "BAD_FRAME: no verdict): the confusion matrix", ["live", "shadow"], registry=r)
        for live in ("PASS", "FAIL"):
            for shadow in ("PASS", "FAIL", "TIMEOUT", "ERROR", "BAD_FRAME"):
                self.shadow_decisions.labels(live, shadow)
        self.shadow_offered = Counter("plcbridge_shadow_offered", "Frames with a live verdict offered to the shadow "
                                      "model (fail-safes and decisions without a frame are not offered)", registry=r)
        self.shadow_dropped = Counter("plcbridge_shadow_dropped", "Frames offered to the shadow model and never judged, "
                                      "by reason: queue_full (it was busy with model.shadow.queue frames waiting), "
                                      "not_running (not started, failed or stopped)", ["reason"], registry=r)
        for reason in ("queue_full", "not_running"):
            self.shadow_dropped.labels(reason)
        self.shadow_seconds = Histogram("plcbridge_shadow_seconds", "The shadow model's time per frame (preprocess + "
                                        "run + decoding), wall clock on idle CPU: waiting for the CPU included",
                                        buckets=_LATENCY + (2.5, 5.0, 10.0), registry=r)
        self.shadow_score_diff = Histogram("plcbridge_shadow_score_diff", "Shadow score minus live score, per frame "
                                           "both gave a verdict on", buckets=(-1.0, -0.5, -0.25, -0.1, -0.05, -0.01, 0.01,
                                                                              0.05, 0.1, 0.25, 0.5, 1.0), registry=r)
        self.shadow_running = Gauge("plcbridge_shadow_running", "1 while the shadow model is loaded and judging",
                                    registry=r)
        self.shadow_model = Info("plcbridge_shadow_model", "The shadow (candidate) model", registry=r)

    def camera_counts(self, counts: dict) -> None:
        """Add a camera source's counts since its previous frame: {"buffers_failed": {status: n},
        "packets": {kind: n}} (the "counts" entry of a genicam frame's meta)."""
        for status, n in (counts.get("buffers_failed") or {}).items():
            if n > 0:
                self.camera_buffers_failed.labels(str(status)).inc(n)
        for kind, n in (counts.get("packets") or {}).items():
            if n > 0:
                self.camera_packets.labels(str(kind)).inc(n)

    def watch(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """Export a counter kept elsewhere (the log pipeline, the HTTP endpoint) as
        NAME_total, read when scraped, so its owner needs no reference to the metrics."""
        self.registry.register(_ReadCounter(name, documentation, read))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@functools.lru_cache(maxsize=1)
def build_info() -> dict[str, str]:
    """{"version": the installed package version, "commit": the short git commit of the
    source tree when it is a checkout, else "unknown"}; computed once per process."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ver = version("plcbridge")
        except PackageNotFoundError:
            ver = "unknown"
    except Exception:  # pragma: no cover
        ver = "unknown"
    commit = "unknown"
    src = Path(__file__).resolve().parent.parent
    if (src / ".git").exists():
        try:
            out = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, timeout=2.0, check=False)
            if out.returncode == 0 and out.stdout.strip():
                commit = out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return {"version": ver, "commit": commit}


def _thread_count() -> float:
    import os
    import threading

    try:
        return float(len(os.listdir(f"/proc/{os.getpid()}/task")))  # native threads too (ORT, OpenCV)
    except OSError:
        return float(threading.active_count())


class _ReadCounter:
    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self.name, self.documentation, self.read = name, documentation, read

    def collect(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.name, self.documentation, value=self.read())]

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.name, self.documentation)]
