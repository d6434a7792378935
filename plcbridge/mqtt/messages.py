"""The MQTT topics and payloads: one truth for the publisher, the tests and docs/mqtt.md.

Three topics under one prefix (`mqtt.topic_prefix`, default `plcbridge/{site}/{line}/{station}`,
with `{site}`, `{line}` and `{station}` replaced by `mqtt.site`, `mqtt.line` and `station.name`):

    {prefix}/decision   every decision, as the journal records it; QoS 1, spooled, not retained
    {prefix}/status     the station's health; QoS 1, retained; on change, every
                        mqtt.status_interval_s, and as the last will ("offline")
    {prefix}/stats      counts, yield, latency percentiles; QoS 1, every mqtt.stats_interval_s

Every payload is one JSON object (UTF-8) with a `schema` field naming its kind and version
("plcbridge-mqtt-decision/1"); each kind has a JSON Schema (draft 2020-12) here, which
docs/mqtt.md embeds (`plcbridge docs` generates it) and the tests validate real payloads
against. A change that a consumer could trip over (a field removed, renamed or retyped) is
a new version; a new optional field is not (the schemas allow properties they do not name,
so a consumer validating with them keeps working).

Only the standard library and the contract are imported: plcbridge.config validates the
prefix with `expand`, without the optional paho-mqtt.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plcbridge.contract import FaultCode, ResultCode
from plcbridge.journal import decision_time, utc_text

DECISION = "plcbridge-mqtt-decision/1"
STATUS = "plcbridge-mqtt-status/1"
STATS = "plcbridge-mqtt-stats/1"

PLACEHOLDERS = ("site", "line", "station")
# What a topic level may not hold: the separator, the wildcards (a publisher's topic never has
# them), and NUL (MQTT 3.1.1 section 4.7.3). A leading `$` is the broker's ($SYS).
_FORBIDDEN = {"/": "a '/'", "+": "a '+' (wildcard)", "#": "a '#' (wildcard)", "\0": "a NUL character"}
MAX_TOPIC_BYTES = 65_535
ARCHIVE_STATES = ("kept", "sampled", "not_kept")
_RESULTS = [r.name for r in ResultCode if r is not ResultCode.NONE]
_FAULTS = [f.name for f in FaultCode]
_DECISION_ID = "^[0-9A-HJKMNP-TV-Z]{26}$"  # a ULID (plcbridge/journal.py)


class TopicError(ValueError):
    """A topic prefix or client id template that cannot be used; the text says why."""


def placeholders_in(template: str) -> list[str]:
    """The `{name}` placeholders of a template, in order; TopicError for any other use of
    braces (`{0}`, `{site!r}`, `{site:>4}`, an unclosed `{`): `{{` and `}}` are literal braces."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise TopicError(f"{template!r}: {e} (write a literal brace as {{{{ or }}}})") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or name.isdigit() or spec or conversion:
            raise TopicError(f"{template!r}: {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}} "
                             f"is not a placeholder; the placeholders are {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
        names.append(name)
    return names


def level_problem(value: str) -> str | None:
    """Why `value` cannot be one level of a topic (a site, line or station name), or None."""
    if not value:
        return "it is empty"
    bad = [what for ch, what in _FORBIDDEN.items() if ch in value]
    return f"it holds {', '.join(bad)}" if bad else None


def expand(template: str, values: Mapping[str, str | None], setting: str) -> str:
    """`template` with its placeholders replaced; TopicError naming the placeholder and the
    setting that gives it when one is unknown, unset or cannot be a topic level. `values`:
    placeholder -> value (None: unset), and for the error, which setting sets it."""
    for name in placeholders_in(template):
        if name not in PLACEHOLDERS:
            raise TopicError(f"{setting} = {template!r}: unknown placeholder {{{name}}}; the placeholders are "
                             f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
        value = values.get(name)
        where = "station.name" if name == "station" else f"mqtt.{name}"
        if value is None:
            raise TopicError(f"{setting} = {template!r} uses {{{name}}}, but {where} is not set: set it, or take "
                             f"{{{name}}} out of {setting}")
        why = level_problem(value)
        if why is not None:
            raise TopicError(f"{where} = {value!r} cannot be one level of an MQTT topic ({setting} puts it there): {why}")
    return template.format_map({p: values.get(p) for p in PLACEHOLDERS})


def prefix_problem(prefix: str) -> str | None:
    """Why an expanded topic prefix cannot be published to, or None."""
    levels = prefix.split("/")
    if any(level == "" for level in levels):
        return (f"{prefix!r} has an empty level (a leading, trailing or doubled '/'); "
                "write the levels without empty ones, e.g. plcbridge/{site}/{line}/{station}")
    for level in levels:
        why = level_problem(level)
        if why is not None:
            return f"{prefix!r}: level {level!r}: {why}"
    if prefix.startswith("$"):
        return f"{prefix!r} starts with '$': such topics belong to the broker ($SYS)"
    if len(prefix.encode()) + len("/decision") > MAX_TOPIC_BYTES:
        return f"{prefix!r} is longer than an MQTT topic may be ({MAX_TOPIC_BYTES} bytes)"
    return None


@dataclass(frozen=True)
class Topics:
    """The three topics of one station."""

    prefix: str

    @property
    def decision(self) -> str:
        return f"{self.prefix}/decision"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def stats(self) -> str:
        return f"{self.prefix}/stats"

    @classmethod
    def build(cls, template: str, values: Mapping[str, str | None]) -> "Topics":
        prefix = expand(template, values, "mqtt.topic_prefix")
        why = prefix_problem(prefix)
        if why is not None:
            raise TopicError(f"mqtt.topic_prefix = {template!r} gives {why}")
        return cls(prefix)


# ---------------------------------------------------------------------- payloads


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: such a number becomes null (a model gone wrong must not
    make a message no consumer can parse)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def encode(message: Mapping[str, Any]) -> bytes:
    """A payload as compact UTF-8 JSON."""
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:  # a NaN or an infinity somewhere: rare, so only then walked
        text = json.dumps(_finite(dict(message)), separators=(",", ":"), ensure_ascii=False, default=str)
    return text.encode()


def _where(site: str | None, line: str | None, station: str) -> dict[str, Any]:
    return {"site": site, "line": line, "station": station}


def decision_message(fields: Mapping[str, Any], *, site: str | None, line: str | None,
                     image: str | None) -> dict[str, Any]:
    """The decision topic's payload: the journal line's fields exactly (plcbridge/journal.py:
    decision_id, station, result, score, fault, reason, model_version, trigger_seq, part_id,
    plc_session, timestamps, findings, ...), plus `time_utc` (when the decision was made,
    read from its id), where the station is, and `image`: None when no frame was judged,
    else what the image archive does with the frame (`archive`: "kept", "sampled" or
    "not_kept"; an archived entry is found by its decision id: `plcbridge archive show ID`).
    The image itself never travels."""
    decision_id = str(fields["decision_id"])
    head = {"schema": DECISION, "decision_id": decision_id, "time_utc": utc_text(decision_time(decision_id)),
            **_where(site, line, str(fields.get("station", "")))}
    return {**head, **{k: v for k, v in fields.items() if k not in head},
            "image": None if image is None else {"archive": image}}


def status_message(facts: Mapping[str, Any], *, site: str | None, line: str | None, station: str,
                   now: float) -> dict[str, Any]:
    """The status topic's payload while the station runs (`state` "online"). `facts`: ready and
    readiness (Daemon.readiness_report(), what the station page shows), mode, model, plc,
    camera, mqtt (the spool's backlog), software, started_utc."""
    return {"schema": STATUS, **_where(site, line, station), "state": "online", "time_utc": utc_text(now), **facts}


def offline_message(*, site: str | None, line: str | None, station: str, reason: str,
                    now: float | None = None) -> dict[str, Any]:
    """The status topic's payload when the station is gone: `reason` "stopped" (a clean stop,
    published by the station, `time_utc` then) or "connection_lost" (the last will, which the
    broker publishes when the connection dies without a DISCONNECT; it was written at connect
    time, so it carries `connected_utc`, when the connection that died was made)."""
    out: dict[str, Any] = {"schema": STATUS, **_where(site, line, station), "state": "offline", "reason": reason}
    if now is not None:
        out["time_utc" if reason == "stopped" else "connected_utc"] = utc_text(now)
    return out


def stats_message(figures: Mapping[str, Any], *, site: str | None, line: str | None, station: str,
                  now: float) -> dict[str, Any]:
    """The stats topic's payload: `figures` from the sink's window (plcbridge/mqtt/sink.py)."""
    return {"schema": STATS, **_where(site, line, station), "time_utc": utc_text(now), **figures}


# ---------------------------------------------------------------------- JSON Schemas

_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_TIME: dict[str, Any] = {"type": "string", "format": "date-time", "description": "UTC, ISO 8601 with milliseconds and Z"}
_NULLABLE_TEXT: dict[str, Any] = {"type": ["string", "null"]}
_WHERE: dict[str, Any] = {
    "site": {**_NULLABLE_TEXT, "description": "mqtt.site (null when unset)"},
    "line": {**_NULLABLE_TEXT, "description": "mqtt.line (null when unset)"},
    "station": {"type": "string", "description": "station.name"},
}
_COUNTS: dict[str, Any] = {"type": "object", "required": _RESULTS, "additionalProperties": False,
           "properties": {r: {"type": "integer", "minimum": 0} for r in _RESULTS}}
_YIELD: dict[str, Any] = {"type": ["number", "null"], "minimum": 0, "maximum": 1,
          "description": "PASS / (PASS + FAIL); null before any (FAILSAFE is no verdict)"}
_BACKLOG: dict[str, Any] = {
    "type": "object",
    "required": ["backlog_messages", "backlog_bytes", "backlog_oldest_age_s"],
    "properties": {
        "backlog_messages": {"type": "integer", "minimum": 0, "description": "decisions spooled, not yet acknowledged"},
        "backlog_bytes": {"type": "integer", "minimum": 0},
        "backlog_oldest_age_s": {"type": ["number", "null"], "minimum": 0},
    },
}
_PERCENTILES: dict[str, Any] = {
    "type": "object",
    "required": ["n"],
    "properties": {"n": {"type": "integer", "minimum": 0},
                   **{k: {"type": ["number", "null"]} for k in ("p50", "p90", "p99", "max")}},
}

DECISION_SCHEMA: dict[str, Any] = {
    "$schema": _DRAFT,
    "$id": "urn:plcbridge:mqtt:decision:1",
    "title": "plcbridge decision",
    "description": "One decision of one station, as its journal records it. Published once per decision with QoS 1; "
                   "a message the broker did not acknowledge is sent again (the same bytes, the same decision_id): "
                   "consumers deduplicate by decision_id.",
    "type": "object",
    "required": ["schema", "decision_id", "time_utc", "site", "line", "station", "result", "fault", "image"],
    "properties": {
        "schema": {"const": DECISION},
        "decision_id": {"type": "string", "pattern": _DECISION_ID,
                        "description": "ULID: unique on the station across restarts, sorts by time; the key in the "
                                       "journal, the image archive and the station page"},
        "time_utc": {**_TIME, "description": "when the decision was made (the decision id's time)"},
        **_WHERE,
        "result": {"enum": _RESULTS, "description": "the verdict, or FAILSAFE: no verdict (fault says why)"},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "fault": {"enum": _FAULTS, "description": "NONE, or why this is a fail-safe (docs/plc-interface.md)"},
        "reason": {"type": "string", "description": "a fail-safe's cause in words"},
        "model_version": {"type": "integer", "minimum": 0},
        "trigger_seq": {"type": "integer", "minimum": 0, "description": "triggered: the PLC's trigger this answers"},
        "part_id": {"type": "integer", "minimum": 0, "description": "triggered: the PLC's part id"},
        "plc_session": {"type": "integer", "minimum": 0,
                        "description": "triggered: the PLC link session that saw the trigger (+1 per connect)"},
        "t_trigger_mono": {"type": "number", "description": "CLOCK_MONOTONIC of the station: trigger seen"},
        "frame_seq": {"type": "integer", "minimum": 0},
        "t_capture_mono": {"type": "number", "description": "CLOCK_MONOTONIC of the station: frame captured"},
        "latency_ms": {"type": "number", "minimum": 0, "description": "frame captured -> decided"},
        "infer_ms": {"type": "number", "minimum": 0},
        "truth": {"type": "string", "description": "the frame's ground truth where the camera knows it (synthetic)"},
        "collapsed": {"type": "integer", "minimum": 0,
                      "description": "older trigger values this TRIGGER_OVERRUN answer also stands for"},
        "episode": {"const": True, "description": "free-run: a fail-safe episode, not one frame's decision"},
        "defect_count": {"type": "integer", "minimum": 0, "description": "as the PLC's optional output got it"},
        "defect_class": {"type": "integer", "minimum": 0, "description": "as the PLC's optional output got it"},
        "anomaly_area": {"type": "integer", "minimum": 0, "description": "as the PLC's optional output got it"},
        "recipe": {"type": "integer", "minimum": 0, "maximum": 65535,
                   "description": "stations with recipes: the recipe_id read with the trigger (free-run: the recipe "
                                  "that judged); a verdict was judged with it"},
        "findings": {
            "type": "object",
            "description": "anomaly, detection and segmentation models: what the model found and the rules counted",
            "properties": {"kind": {"enum": ["anomaly", "detection"]}, "count": {"type": "integer", "minimum": 0},
                           "note": {"type": "string"}, "area_px": {"type": "integer", "minimum": 0},
                           "box": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4},
                           "detections": {"type": "array", "items": {"type": "object"}}},
        },
        "image": {
            "description": "null: no frame was judged. Else what the image archive does with the frame (the image "
                           "never travels; an archived one is found on the station by decision_id)",
            "oneOf": [{"type": "null"},
                      {"type": "object", "required": ["archive"], "additionalProperties": False,
                       "properties": {"archive": {"enum": list(ARCHIVE_STATES)}}}],
        },
    },
    "patternProperties": {"^camera_": {"description": "the camera's own identity of the frame (genicam)"}},
}

_READINESS_PART: dict[str, Any] = {
    "type": "object",
    "required": ["part", "ok", "reason", "for_s", "since_utc"],
    "properties": {
        "part": {"enum": ["write_loop", "plc", "camera", "model", "recipe"],
                 "description": "what READY stands for (Daemon.readiness); recipe: stations that read recipe_id"},
        "ok": {"type": "boolean"},
        "reason": {**_NULLABLE_TEXT, "description": "why not OK, in words; null when OK"},
        "for_s": {"type": ["number", "null"], "minimum": 0},
        "since_utc": {"oneOf": [{"type": "null"}, _TIME]},
    },
}

STATUS_SCHEMA: dict[str, Any] = {
    "$schema": _DRAFT,
    "$id": "urn:plcbridge:mqtt:status:1",
    "title": "plcbridge station status",
    "description": "Retained. online: published on every change of readiness, model, PLC link or camera state, "
                   "and every mqtt.status_interval_s. offline: published by the station when it stops "
                   "(reason stopped), or by the broker as the last will when the connection dies "
                   "(reason connection_lost).",
    "type": "object",
    "required": ["schema", "site", "line", "station", "state"],
    "properties": {
        "schema": {"const": STATUS},
        **_WHERE,
        "state": {"enum": ["online", "offline"]},
        "time_utc": _TIME,
        "reason": {"enum": ["stopped", "connection_lost"], "description": "offline: why"},
        "connected_utc": {**_TIME, "description": "the last will: when the connection that died was made"},
        "started_utc": _TIME,
        "ready": {"type": "boolean", "description": "the READY bit the PLC reads"},
        "readiness": {"type": "array", "items": _READINESS_PART,
                      "description": "each part READY stands for, as the station page shows it"},
        "mode": {"enum": ["triggered", "free-run"]},
        "model": {"type": "object", "required": ["version", "loaded"],
                  "properties": {"version": {"type": ["integer", "null"]}, "loaded": {"type": "boolean"},
                                 "name": _NULLABLE_TEXT, "error": _NULLABLE_TEXT,
                                 "rolled_back": {"description": "null, or the watch trigger that rolled the last model "
                                                                "change back ([model.watch]; the PLC's "
                                                                "MODEL_ROLLED_BACK bit): trigger, figure, threshold, "
                                                                "old_version (serving again), new_version, reason",
                                                 "type": ["object", "null"]},
                                 "watch": {"enum": [None, "idle", "watching", "passed", "tripped"],
                                           "description": "the watch after the last model change; null: off"},
                                 "shadow": {"description": "null, or [model.shadow]: its agreement with the live "
                                                           "model since the last model change, verdicts compared, "
                                                           "frames dropped (busy)",
                                            "type": ["object", "null"]}}},
        "plc": {"type": "object", "required": ["protocol", "address", "connected", "inputs_ok"],
                "properties": {"protocol": {"type": "string"}, "address": {"type": "string"},
                               "connected": {"type": "boolean"}, "inputs_ok": {"type": "boolean"},
                               "last_error": _NULLABLE_TEXT}},
        "camera": {"type": "object", "required": ["source", "ok"],
                   "properties": {"source": {"type": "string"}, "ok": {"type": "boolean"}}},
        "recipe": {"description": "null: the station does not read recipe_id. Else the recipe the PLC asks for and "
                                  "the one active (null while a switch is in progress or the one asked is unknown)",
                   "oneOf": [{"type": "null"},
                             {"type": "object", "required": ["asked", "active", "known", "loaded"],
                              "properties": {"asked": {"type": "integer"}, "asked_name": _NULLABLE_TEXT,
                                             "active": {"type": ["integer", "null"]},
                                             "known": {"type": "array", "items": {"type": "integer"}},
                                             "loaded": {"type": "array", "items": {"type": "integer"}},
                                             "max_loaded": {"type": "integer"},
                                             "last_switch_ms": {"type": ["number", "null"]},
                                             "error": _NULLABLE_TEXT}}]},
        "mqtt": _BACKLOG,
        "software": {"type": "object", "properties": {"version": {"type": "string"}, "commit": {"type": "string"}}},
    },
    "if": {"properties": {"state": {"const": "online"}}},
    "then": {"required": ["time_utc", "ready", "readiness", "mode", "model", "plc", "camera", "mqtt"]},
    "else": {"required": ["reason"]},
}

STATS_SCHEMA: dict[str, Any] = {
    "$schema": _DRAFT,
    "$id": "urn:plcbridge:mqtt:stats:1",
    "title": "plcbridge station stats",
    "description": "Every mqtt.stats_interval_s while connected (an outage's stats are not sent later: the "
                   "counts since start carry on). The interval's figures are over the decisions the MQTT "
                   "sink saw in interval_s (a sink that fell behind says so in dropped).",
    "type": "object",
    "required": ["schema", "site", "line", "station", "time_utc", "interval_s", "counts", "yield", "latency_ms",
                 "mqtt"],
    "properties": {
        "schema": {"const": STATS},
        **_WHERE,
        "time_utc": _TIME,
        "interval_s": {"type": "number", "minimum": 0, "description": "the seconds the interval figures cover"},
        "counts": {"type": "object", "required": ["since_start", "interval"],
                   "properties": {"since_start": _COUNTS, "interval": _COUNTS}},
        "yield": {"type": "object", "required": ["since_start", "interval"],
                  "properties": {"since_start": _YIELD, "interval": _YIELD}},
        "failsafes_by_fault": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
                               "description": "since start"},
        "latency_ms": {**_PERCENTILES, "description": "the interval's decisions: frame captured -> decided"},
        "infer_ms": {**_PERCENTILES, "description": "the interval's decisions: preprocessing + model run"},
        "write_loop": {"type": "object", "properties": {"overruns": {"type": "integer", "minimum": 0},
                                                        "lateness_ms": {"type": "object"}}},
        "mqtt": {**_BACKLOG, "properties": {**_BACKLOG["properties"],
                                            "published": {"type": "integer", "minimum": 0},
                                            "spooled": {"type": "integer", "minimum": 0},
                                            "dropped": {"type": "integer", "minimum": 0}}},
    },
}

SCHEMAS: dict[str, dict[str, Any]] = {"decision": DECISION_SCHEMA, "status": STATUS_SCHEMA, "stats": STATS_SCHEMA}


# ---------------------------------------------------------------------- examples and the docs

_T = 1_796_594_581.123  # 2026-12-06T22:03:01.123Z
_EXAMPLE_ID = "01M96P3FM328T5CY4GNF6YY4HM"  # made at _T
_EXAMPLE_ID_2 = "01M96P3FMJ28T5CY4GNF6YZ6CS"  # 15 ms later
_WHERE_EXAMPLE = {"site": "plant-a", "line": "line-3", "station": "st-07"}


def examples() -> dict[str, list[dict[str, Any]]]:
    """Example payloads of each topic, made by the same functions as the real ones (docs/mqtt.md
    shows them; the tests validate them against the schemas)."""
    fields = {"decision_id": _EXAMPLE_ID, "station": "st-07", "result": "FAIL", "score": 0.9731, "fault": "NONE",
              "model_version": 3, "trigger_seq": 4711, "part_id": 120034, "plc_session": 2,
              "t_trigger_mono": 81234.512345, "frame_seq": 50211, "t_capture_mono": 81234.514001,
              "latency_ms": 21.4, "infer_ms": 12.9}
    failsafe = {"decision_id": _EXAMPLE_ID_2, "station": "st-07", "result": "FAILSAFE", "score": 1.0,
                "fault": "NO_FRAME", "model_version": 3, "trigger_seq": 4712, "part_id": 120035, "plc_session": 2,
                "t_trigger_mono": 81235.011, "reason": "no frame captured within 100 ms after the trigger"}
    readiness = [{"part": p, "ok": True, "reason": None, "for_s": None, "since_utc": None}
                 for p in ("write_loop", "plc", "camera", "model")]
    backlog = {"backlog_messages": 0, "backlog_bytes": 0, "backlog_oldest_age_s": None}
    facts = {"started_utc": utc_text(_T - 3600), "ready": True, "readiness": readiness, "mode": "triggered",
             "model": {"name": "demo-defects", "version": 3, "loaded": True, "error": None},
             "plc": {"protocol": "modbus", "address": "10.0.3.7:502", "connected": True, "inputs_ok": True,
                     "last_error": None},
             "camera": {"source": "genicam", "ok": True}, "recipe": None, "mqtt": backlog,
             "software": {"version": "0.1.0", "commit": "9d0b6de"}}
    counts = {"PASS": 1712, "FAIL": 31, "FAILSAFE": 2}
    figures = {"interval_s": 60.0, "counts": {"since_start": counts, "interval": {"PASS": 58, "FAIL": 1, "FAILSAFE": 0}},
               "yield": {"since_start": 0.9822, "interval": 0.9831}, "failsafes_by_fault": {"NO_FRAME": 2},
               "latency_ms": {"n": 59, "p50": 19.8, "p90": 23.1, "p99": 30.2, "max": 31.0},
               "infer_ms": {"n": 59, "p50": 12.1, "p90": 13.0, "p99": 15.2, "max": 15.9},
               "write_loop": {"overruns": 0, "lateness_ms": {"n": 360000, "p50": 0.08, "p95": 0.2, "p99": 0.4, "max": 1.9}},
               "mqtt": {**backlog, "published": 1745, "spooled": 1745, "dropped": 0}}
    return {
        "decision": [decision_message(fields, image="kept", **{k: _WHERE_EXAMPLE[k] for k in ("site", "line")}),
                     decision_message(failsafe, image=None, **{k: _WHERE_EXAMPLE[k] for k in ("site", "line")})],
        "status": [status_message(facts, now=_T, **_WHERE_EXAMPLE),
                   offline_message(reason="connection_lost", now=_T - 3600, **_WHERE_EXAMPLE)],
        "stats": [stats_message(figures, now=_T, **_WHERE_EXAMPLE)],
    }


def markdown_reference() -> str:
    """docs/mqtt.md's generated section: per topic, its JSON Schema and examples."""
    ex = examples()
    out = ["Generated from `plcbridge/mqtt/messages.py` by `plcbridge docs` (do not edit by hand).", ""]
    for name, schema in SCHEMAS.items():
        out += [f"### `{{prefix}}/{name}`: `{schema['properties']['schema']['const']}`", "", schema["description"], "",
                "JSON Schema (draft 2020-12):", "", "```json", json.dumps(schema, indent=2), "```", ""]
        for i, example in enumerate(ex[name]):
            out += [f"Example{'' if len(ex[name]) == 1 else f' {i + 1}'}:", "", "```json",
                    json.dumps(example, indent=2, ensure_ascii=False), "```", ""]
    return "\n".join(out).rstrip() + "\n"
