"""The MQTT topics and payloads (plcbridge/mqtt/messages.py) against their JSON Schemas: the
examples docs/mqtt.md shows, real journal records of every kind, and the status and stats of
a running daemon; every field a decision carries is declared; docs/mqtt.md embeds the schemas
exactly. Validation is a small checker of the draft 2020-12 keywords the schemas use (it
refuses any other keyword, so a schema cannot lean on one it does not check); the reference
validator (`jsonschema`) also runs when it is installed."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import Recorder, closed_tcp_port, running, station_config, wait_for

from plcbridge.contract import FaultCode, ResultCode
from plcbridge.decision import Decision, Request, failsafe
from plcbridge.journal import Journal
from plcbridge.metrics import Metrics
from plcbridge.mqtt import messages
from plcbridge.mqtt.messages import SCHEMAS, TopicError, Topics, decision_message, encode, examples, expand
from plcbridge.sinks import DecisionRecord, SinkFanout

ROOT = Path(__file__).resolve().parents[1]
DRAFT = "https://json-schema.org/draft/2020-12/schema"
_ANNOTATIONS = {"$schema", "$id", "title", "description", "format"}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def problems(value: Any, schema: dict[str, Any], at: str = "$") -> list[str]:
    """Where `value` breaks `schema` (empty: valid)."""
    out: list[str] = []
    for key, rule in schema.items():
        if key in _ANNOTATIONS or key in ("then", "else"):
            if key == "format" and rule == "date-time" and isinstance(value, str) and not _DATE_TIME.match(value):
                out.append(f"{at}: {value!r} is not a date-time")
            continue
        if key == "type":
            kinds = rule if isinstance(rule, list) else [rule]
            if not any(_is(value, k) for k in kinds):
                out.append(f"{at}: {value!r} is not of type {rule}")
        elif key == "const":
            if value != rule or type(value) is not type(rule):
                out.append(f"{at}: {value!r} is not {rule!r}")
        elif key == "enum":
            if value not in rule:
                out.append(f"{at}: {value!r} not in {rule}")
        elif key in ("minimum", "maximum"):
            if _is(value, "number") and (value < rule if key == "minimum" else value > rule):
                out.append(f"{at}: {value} is beyond {key} {rule}")
        elif key == "pattern":
            if isinstance(value, str) and not re.search(rule, value):
                out.append(f"{at}: {value!r} does not match {rule}")
        elif key in ("minItems", "maxItems"):
            if isinstance(value, list) and (len(value) < rule if key == "minItems" else len(value) > rule):
                out.append(f"{at}: {len(value)} items, {key} {rule}")
        elif key == "items":
            if isinstance(value, list):
                for i, item in enumerate(value):
                    out += problems(item, rule, f"{at}[{i}]")
        elif key == "required":
            if isinstance(value, dict):
                out += [f"{at}: {name!r} is required" for name in rule if name not in value]
        elif key in ("properties", "patternProperties", "additionalProperties"):
            if isinstance(value, dict) and key == "properties":
                for name, sub in rule.items():
                    if name in value:
                        out += problems(value[name], sub, f"{at}.{name}")
            elif isinstance(value, dict) and key == "patternProperties":
                for pattern, sub in rule.items():
                    for name in value:
                        if re.search(pattern, name):
                            out += problems(value[name], sub, f"{at}.{name}")
            elif isinstance(value, dict):
                known = set(schema.get("properties", {}))
                pats = list(schema.get("patternProperties", {}))
                for name in value:
                    if name in known or any(re.search(p, name) for p in pats):
                        continue
                    if rule is False:
                        out.append(f"{at}: {name!r} is not allowed")
                    elif isinstance(rule, dict):
                        out += problems(value[name], rule, f"{at}.{name}")
        elif key == "oneOf":
            fits = [i for i, sub in enumerate(rule) if not problems(value, sub, at)]
            if len(fits) != 1:
                out.append(f"{at}: {value!r} fits {len(fits)} of the oneOf schemas, not exactly one")
        elif key == "if":
            branch = "then" if not problems(value, rule, at) else "else"
            if branch in schema:
                out += problems(value, schema[branch], at)
        else:
            raise AssertionError(f"{at}: keyword {key!r} is not one this checker knows: teach it, or do not use it")
    return out


def valid(kind: str, payload: Any) -> None:
    found = problems(payload, SCHEMAS[kind])
    assert not found, f"{kind}: " + "; ".join(found[:5])


def test_every_schema_is_draft_2020_12_names_its_version_and_uses_known_keywords():
    for kind, schema in SCHEMAS.items():
        assert schema["$schema"] == DRAFT
        assert schema["properties"]["schema"]["const"] == f"plcbridge-mqtt-{kind}/1"
        assert "schema" in schema["required"]
        problems({}, schema)  # raises on a keyword the checker does not know, anywhere it walks
        for example in examples()[kind]:
            valid(kind, example)
            assert json.loads(encode(example)) == example


def test_the_reference_validator_agrees_when_installed():
    jsonschema = pytest.importorskip("jsonschema", reason="the reference validator is optional (pip install jsonschema)")
    for kind, schema in SCHEMAS.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        for example in examples()[kind]:
            jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(example)


def test_the_checker_catches_what_the_schemas_forbid():
    good = examples()["decision"][0]
    assert problems({**good, "result": "MAYBE"}, SCHEMAS["decision"])
    assert problems({**good, "decision_id": "not-a-ulid"}, SCHEMAS["decision"])
    assert problems({**good, "image": {"archive": "kept", "pixels": "..."}}, SCHEMAS["decision"])
    assert problems({k: v for k, v in good.items() if k != "fault"}, SCHEMAS["decision"])
    offline = examples()["status"][1]
    assert problems({k: v for k, v in offline.items() if k != "reason"}, SCHEMAS["status"])
    assert problems({**examples()["status"][0], "ready": None}, SCHEMAS["status"])


def _records() -> list[DecisionRecord]:
    """Real journal records: triggered PASS with a frame, FAIL with findings and the optional
    outputs, a fail-safe without a frame, a free-run episode, a camera's own frame identity."""
    m = Metrics()
    fanout = SinkFanout(m)
    sink = Recorder()
    fanout.add(sink)
    journal = Journal(m, "st-07", fanout)
    t = time.monotonic()
    req = Request(12, 3456, t, plc_session=2)
    journal.decision(Decision(ResultCode.PASS, FaultCode.NONE, 0.12, t + 0.02, 3, 99, t, "pass", 11.5, req,
                              frame_meta={"camera_frame_id": 7, "camera_ts_ns": 123456789}, image=object()))
    findings = {"kind": "detection", "count": 2, "note": "2 defects", "box": [1, 2, 30, 40], "area_px": 1200,
                "worst_class": 1, "worst_class_name": "scratch",
                "detections": [{"class": 1, "name": "scratch", "score": 0.91, "box": [1, 2, 30, 40], "counted": True}]}
    journal.decision(Decision(ResultCode.FAIL, FaultCode.NONE, 0.97, t + 0.03, 3, 100, t, "fail", 12.0,
                              Request(13, 3457, t, plc_session=2), defect_count=2, defect_class=1, findings=findings,
                              image=object()))
    journal.decision(failsafe(FaultCode.NO_FRAME, t, "no frame within 100 ms", model_version=3,
                              request=Request(14, 3458, t, plc_session=2)))
    journal.decision(failsafe(FaultCode.TRIGGER_OVERRUN, t, "queue full", model_version=3, collapsed=3,
                              request=Request(18, 3462, t, plc_session=2)))
    journal.failsafe_episode(FaultCode.STALE_RESULT, "the newest decision is 300 ms old", model_version=3, frame_seq=101)
    fanout.close()
    return sink.records


def test_real_decisions_of_every_kind_validate_and_every_field_is_declared():
    declared = set(SCHEMAS["decision"]["properties"])
    records = _records()
    assert len(records) == 5
    for record in records:
        image = None if record.image is None else "kept"
        message = decision_message(record.fields, site="plant-a", line=None, image=image)
        valid("decision", message)
        undeclared = {k for k in message if k not in declared and not k.startswith("camera_")}
        assert not undeclared, f"the journal writes {sorted(undeclared)}: declare them in DECISION_SCHEMA"
        assert {k: message[k] for k in record.fields} == record.fields, "the journal's fields, exactly"
        assert message["time_utc"].endswith("Z") and message["line"] is None
        again = json.loads(encode(message))
        assert again == message
    assert decision_message(records[0].fields, site=None, line=None, image="sampled")["image"] == {"archive": "sampled"}
    assert decision_message(records[2].fields, site=None, line=None, image=None)["image"] is None


def test_a_non_finite_number_becomes_null_not_invalid_json():
    record = _records()[0]
    message = decision_message({**record.fields, "score": math.nan, "latency_ms": math.inf}, site=None, line=None, image=None)
    text = encode(message).decode()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["score"] is None


def test_topics_take_their_placeholders_and_refuse_what_cannot_be_a_topic():
    values = {"site": "plant-a", "line": "line-3", "station": "st-07"}
    t = Topics.build("plcbridge/{site}/{line}/{station}", values)
    assert (t.decision, t.status, t.stats) == ("plcbridge/plant-a/line-3/st-07/decision",
                                               "plcbridge/plant-a/line-3/st-07/status", "plcbridge/plant-a/line-3/st-07/stats")
    assert Topics.build("acme/{{raw}}/{station}", values).prefix == "acme/{raw}/st-07"
    cases = {
        "plcbridge/{plant}/{station}": "unknown placeholder {plant}",
        "plcbridge/{site!r}": "is not a placeholder",
        "plcbridge/{site": "literal brace",
        "plcbridge//{station}": "empty level",
        "plcbridge/{station}/": "empty level",
        "plcbridge/+/{station}": "wildcard",
        "$SYS/{station}": "belong to the broker",
    }
    for template, why in cases.items():
        with pytest.raises(TopicError, match=re.escape(why)):
            Topics.build(template, values)
    with pytest.raises(TopicError, match=r"mqtt.site is not set"):
        expand("x/{site}", {**values, "site": None}, "mqtt.topic_prefix")
    with pytest.raises(TopicError, match=r"station.name = 'a/b' cannot be one level"):
        expand("x/{station}", {**values, "station": "a/b"}, "mqtt.topic_prefix")


def test_the_docs_are_generated_and_embed_every_schema_exactly():
    from plcbridge.tools.docs import render_interface_doc

    path = ROOT / "docs" / "mqtt.md"
    text = path.read_text()
    assert text == render_interface_doc(path), "run `plcbridge docs` to regenerate docs/mqtt.md"
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", text, re.S)]
    for schema in SCHEMAS.values():
        assert schema in blocks, f"docs/mqtt.md lacks the schema {schema['$id']}"
    for payloads in examples().values():
        for example in payloads:
            assert example in blocks


def test_status_and_stats_of_a_running_daemon_validate_and_the_page_shows_mqtt(make_sim, tmp_path: Path):
    pytest.importorskip("paho.mqtt", reason="the MQTT sink needs paho-mqtt (pip install 'plcbridge[mqtt]')")
    from plcbridge.tools.status import render

    sim = make_sim("triggered", trigger_hz=20)
    mqtt = {"enabled": True, "port": closed_tcp_port(), "site": "plant", "line": "l1", "reconnect_min_ms": 200,
            "spool_path": str(tmp_path / "spool.sqlite")}
    cfg = station_config(sim, "triggered", mqtt=mqtt, metrics={"enabled": True, "port": 0})
    with running(cfg) as d:
        wait_for(lambda: d.ready() and d.mqtt.spool.backlog().messages >= 10, 30, "READY and a backlog (no broker)")
        status = json.loads(d.mqtt.status())
        stats = json.loads(d.mqtt.stats())
        offline = json.loads(d.mqtt.offline("connection_lost", time.time()))
        base = f"http://127.0.0.1:{d.http.port}"
        api = json.loads(urllib.request.urlopen(base + "/api/status", timeout=10).read())
        decisions = json.loads(urllib.request.urlopen(base + "/api/decisions?limit=5", timeout=10).read())["decisions"]
    valid("status", status)
    valid("stats", stats)
    valid("status", offline)
    assert status["ready"] is True and [p["part"] for p in status["readiness"]] == ["write_loop", "plc", "camera", "model"]
    assert [(p["part"], p["ok"]) for p in status["readiness"]] == [(p["part"], p["ok"]) for p in api["readiness"]]
    assert status["mqtt"]["backlog_messages"] >= 10 and status["plc"]["connected"] and status["camera"]["ok"]
    assert stats["counts"]["since_start"]["PASS"] + stats["counts"]["since_start"]["FAIL"] >= 10
    assert stats["latency_ms"]["n"] >= 10 and stats["latency_ms"]["p50"] is not None
    m = api["mqtt"]
    assert m["connected"] is False and m["backlog_messages"] >= 10 and "refused" in m["last_error"]
    assert m["broker"] == f"127.0.0.1:{mqtt['port']}" and m["topic_prefix"] == "plcbridge/plant/l1/demo"
    screen = render(api, decisions, base)
    assert "MQTT" in screen and "NOT CONNECTED" in screen and "backlog" in screen


def test_the_status_screen_without_mqtt_says_nothing_of_it():
    from plcbridge.tools.status import render

    status = examples()["status"][0]
    api = {"station": {"name": "st", "mode": "triggered", "protocol": "modbus", "plc": "x:502", "camera": "synthetic"},
           "ready": True, "uptime_s": 1.0, "time_utc": status["time_utc"], "readiness": status["readiness"],
           "plc": {"link": {"connected": True, "sessions": 1, "reply_age_ms": 1.0, "exchanges": 1, "late_exchanges": 0,
                            "reconnects": 0, "inputs_ok": True, "last_error": None}, "outputs": None, "inputs": None},
           "counts": {"since_start": {}, "last_hour": {}}, "yield": {"since_start": None, "last_hour": None},
           "model": {"loaded": True, "version": 1, "manifest": "builtin:demo"},
           "write_loop": {"period_ms": 10, "ticks": 1, "overruns": 0, "lateness_ms": {}}, "mqtt": None}
    assert "MQTT" not in render(api, [], "http://x")
    assert messages.PLACEHOLDERS == ("site", "line", "station")


def test_a_sink_that_wants_no_frames_gets_records_without_them():
    """The MQTT sink's queue, however far behind, pins no frames (plcbridge/sinks.py)."""
    import numpy as np

    class Light(Recorder):
        name = "light"
        images = False

    m = Metrics()
    fanout = SinkFanout(m)
    heavy, light = Recorder(), Light()
    fanout.add(heavy)
    fanout.add(light)
    journal = Journal(m, "st", fanout)
    t = time.monotonic()
    frame = np.zeros((8, 8, 3), np.uint8)
    journal.decision(Decision(ResultCode.PASS, FaultCode.NONE, 0.1, t, 1, 1, t, image=frame, decoded=object()))
    journal.decision(failsafe(FaultCode.NO_FRAME, t, "no frame", request=Request(2, 2, t)))
    fanout.close()
    assert heavy.records[0].image is frame and heavy.records[0].decision.image is frame
    with_frame, without = light.records
    assert with_frame.image is None and with_frame.decision.image is None and with_frame.decision.decoded is None
    assert with_frame.judged_frame and with_frame.fields is heavy.records[0].fields
    assert not without.judged_frame and without is heavy.records[1], "nothing to leave out: the same record"
