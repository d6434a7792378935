"""Structured logs: one JSON object per line, never formatted on the caller's thread,
repeated errors rate-limited with a count of what was suppressed."""

import io
import json
import logging

from plcbridge.logs import LogPipeline, get_logger, log_event


def test_json_lines_with_event_part_and_fields():
    out = io.StringIO()
    p = LogPipeline("json", "info", rate_limit_s=5, stream=out).start()
    log_event(get_logger("journal"), "decision", logging.INFO, part_id=42, result="FAIL", score=0.91)
    p.stop()
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert (line["event"], line["part"], line["part_id"], line["result"], line["level"]) == ("decision", "journal", 42, "FAIL", "info")


def test_repeated_errors_are_counted_not_dropped_silently():
    out = io.StringIO()
    p = LogPipeline("json", "info", rate_limit_s=0.2, stream=out).start()
    log = get_logger("plc")
    for _ in range(50):
        log_event(log, "plc_connect_failed", logging.WARNING, reason="refused", rate_key="modbus://x")
    import time

    time.sleep(0.25)
    log_event(log, "plc_connect_failed", logging.WARNING, reason="refused", rate_key="modbus://x")
    log_event(log, "decision", logging.INFO, part_id=1)  # not rate-limited: no rate_key
    p.stop()
    lines = [json.loads(x) for x in out.getvalue().strip().splitlines()]
    fails = [x for x in lines if x["event"] == "plc_connect_failed"]
    assert len(fails) == 2
    assert fails[1]["suppressed"] == 49
    assert any(x["event"] == "decision" for x in lines)


def test_text_format_is_readable():
    out = io.StringIO()
    p = LogPipeline("text", "info", stream=out).start()
    log_event(get_logger("camera"), "camera_grab_failed", logging.ERROR, reason="unplugged")
    p.stop()
    text = out.getvalue()
    assert "ERROR" in text and "camera" in text and "camera_grab_failed" in text and "reason=unplugged" in text


def test_stop_is_idempotent_and_start_again_resumes():
    out = io.StringIO()
    p = LogPipeline("json", "info", stream=out).start()
    log = get_logger("daemon")
    log_event(log, "first", logging.INFO)
    p.stop()
    p.stop()
    p.start()
    log_event(log, "second", logging.INFO)
    p.stop()
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["first", "second"]
    assert p.dropped == 0
