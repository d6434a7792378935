"""The log pipeline is bounded and never holds anything up: real threads, real pipes.

A stdout nobody reads (a full pipe) must cost dropped-and-counted records, never a blocked
caller or a blocked stop(); once the pipe drains, the journal says how much is missing.
A closed pipe (EPIPE) must be silent. Time bounds are generous: the CI machine is small.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from plcbridge.logs import LogPipeline, get_logger, log_event


def _wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _log_burst(n: int, pipeline: LogPipeline) -> dict:
    """Log n events from a thread; report how long it took, the slowest call and the deepest queue."""
    res: dict = {"max_call_s": 0.0, "max_qsize": 0}
    log = get_logger("writeloop")

    def run() -> None:
        t0 = time.perf_counter()
        for i in range(n):
            c0 = time.perf_counter()
            log_event(log, "burst", logging.INFO, i=i)
            dt = time.perf_counter() - c0
            if dt > res["max_call_s"]:
                res["max_call_s"] = dt
            if i % 64 == 0:
                res["max_qsize"] = max(res["max_qsize"], pipeline.queue.qsize())
        res["total_s"] = time.perf_counter() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    res["finished"] = not t.is_alive()
    return res


class _Drain:
    """Reads a pipe's read end on a thread, into a list of lines."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf = fd, bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while chunk := os.read(self.fd, 65536):
            self.buf += chunk

    def lines(self) -> list[dict]:
        text = bytes(self.buf).decode()
        return [json.loads(x) for x in text.split("\n")[:-1]]  # only complete lines


@pytest.fixture
def pipe():
    r, w = os.pipe()
    stream = os.fdopen(w, "w", encoding="utf-8")
    fds = {"r": r}
    yield fds, stream
    # Close the read end first: a writer still blocked on the pipe gets EPIPE and ends.
    if fds["r"] is not None:
        os.close(fds["r"])
    time.sleep(0.05)
    try:
        stream.close()
    except OSError:
        pass


def test_unread_pipe_drops_and_counts_never_blocks_and_stop_returns(pipe):
    fds, stream = pipe
    p = LogPipeline("json", "info", rate_limit_s=5, stream=stream, max_queued=1000).start()
    n = 100_000
    res = _log_burst(n, p)
    assert res["finished"], "a logging call blocked on the full pipe"
    assert res["total_s"] < 5.0, res
    assert res["max_call_s"] < 1.0, res
    assert res["max_qsize"] <= 1000
    assert p.queue.qsize() <= 1000
    # 64 KiB of pipe holds a few hundred lines and the queue 1000 more: the rest must be counted.
    assert p.dropped > n // 2
    assert p.dropped < n

    # The writer, blocked on the full pipe, holds no lock of the stream object (it writes to the
    # fd): another thread can still flush the stream, as the interpreter does at exit with stdout.
    other = threading.Thread(target=stream.flush, daemon=True)
    other.start()
    other.join(3.0)
    assert not other.is_alive(), "the stream's own lock is held by the blocked writer"

    t0 = time.monotonic()
    p.stop()  # default timeout 0.5 s; the writer is blocked on the full pipe
    took = time.monotonic() - t0
    assert took < 1.5, f"stop() took {took:.2f} s"
    assert p.queue.qsize() > 0  # it really was stuck: the queue was not drained

    t0 = time.monotonic()
    p.stop(timeout=0.1)
    assert time.monotonic() - t0 < 1.0  # and again, with the queue still full


def _check_gaps(lines: list[dict], n: int, dropped: int) -> list[dict]:
    """Every burst event (numbered i = 0..n-1) is written or counted, in order, and each
    "log_events_dropped" line sits exactly where events are missing and says how many."""
    burst = [x["i"] for x in lines if x["event"] == "burst"]
    assert burst == sorted(burst) and len(burst) + dropped == n
    assert burst[0] == 0  # the oldest are kept (they were queued), the newest dropped
    reports, prev, total = [], -1, 0
    for x in lines:
        if x["event"] == "burst":
            assert x["i"] == prev + 1, f"events {prev + 1}..{x['i'] - 1} missing with no report line before {x}"
            prev = x["i"]
        elif x["event"] == "log_events_dropped":
            assert (x["level"], x["part"]) == ("warning", "logs") and x["dropped"] > 0
            total += x["dropped"]
            assert x["dropped_total"] == total
            prev += x["dropped"]
            reports.append(x)
    assert prev == n - 1 and total == dropped
    return reports


@pytest.mark.parametrize("when", ["after_catching_up", "while_still_behind"])
def test_after_draining_the_gap_is_reported_where_it_is(pipe, when):
    fds, stream = pipe
    maxq = 500
    p = LogPipeline("json", "info", rate_limit_s=5, stream=stream, max_queued=maxq).start()
    n = 20_000
    res = _log_burst(n, p)
    assert res["finished"]
    dropped = p.dropped
    assert 0 < dropped < n

    if when == "while_still_behind":
        # Read just enough for the writer to take more off the queue, then log while a backlog
        # is still queued: the report must go between that backlog and the new event.
        got = bytearray()
        assert _wait_for(lambda: got.extend(os.read(fds["r"], 4096)) or p.queue.qsize() < maxq)
        assert p.queue.qsize() > 0
        log_event(get_logger("journal"), "decision", logging.INFO, part_id=7)
        drain = _Drain(fds["r"])
        drain.buf[:0] = got
    else:
        drain = _Drain(fds["r"])
        assert _wait_for(lambda: p.queue.qsize() == 0 and sum(
            x["dropped"] for x in drain.lines() if x["event"] == "log_events_dropped") == dropped)
        log_event(get_logger("journal"), "decision", logging.INFO, part_id=7)
    assert _wait_for(lambda: any(x["event"] == "decision" for x in drain.lines()))
    p.stop(timeout=2.0)
    assert p.dropped == dropped  # nothing more was dropped once the pipe was read
    lines = drain.lines()
    assert [x["event"] for x in lines][-2:] == ["log_events_dropped", "decision"]
    _check_gaps(lines[:-1], n, dropped)


def test_sustained_overload_reports_add_up(pipe):
    """A reader slower than the logger: drops come and go; the report lines account for all."""
    fds, stream = pipe
    p = LogPipeline("json", "info", rate_limit_s=5, stream=stream, max_queued=300).start()
    got = bytearray()
    reading = threading.Event()

    def slow_reader() -> None:
        while not reading.is_set():
            got.extend(os.read(fds["r"], 2048))
            time.sleep(0.005)

    t = threading.Thread(target=slow_reader, daemon=True)
    t.start()
    log = get_logger("writeloop")
    n = 0
    t_end = time.monotonic() + 2.5
    while time.monotonic() < t_end:
        for _ in range(100):
            log_event(log, "burst", logging.INFO, i=n)
            n += 1
        time.sleep(0.001)
    reading.set()
    t.join(5)
    drain = _Drain(fds["r"])
    drain.buf[:0] = got
    p.stop(timeout=5.0)
    assert _wait_for(lambda: p.queue.qsize() == 0 and not p.dropped > sum(
        x["dropped"] for x in drain.lines() if x["event"] == "log_events_dropped"))
    reports = _check_gaps(drain.lines(), n, p.dropped)
    assert len(reports) >= 2  # several separate gaps, each reported where it is


def test_closed_read_end_is_silent(pipe, capfd):
    fds, stream = pipe
    os.close(fds["r"])
    fds["r"] = None
    p = LogPipeline("json", "info", rate_limit_s=5, stream=stream, max_queued=200).start()
    log = get_logger("plc")
    n = 2000
    for i in range(n):
        log_event(log, "after_epipe", logging.WARNING, i=i)
    p.stop(timeout=2.0)
    # Every record is accounted for as dropped (none can have been written).
    assert _wait_for(lambda: p.dropped == n, 5.0), p.dropped
    log_event(log, "after_stop", logging.ERROR)  # still nothing raised
    out, err = capfd.readouterr()
    assert err == "" and out == ""


def test_nothing_is_formatted_on_the_callers_thread():
    seen: list[str] = []

    class Field:
        def __str__(self) -> str:
            seen.append(threading.current_thread().name)
            return "field"

    out = io.StringIO()
    p = LogPipeline("json", "info", stream=out).start()
    log_event(get_logger("model"), "loaded", logging.INFO, thing=Field())
    p.stop(timeout=2.0)
    assert json.loads(out.getvalue().splitlines()[-1])["thing"] == "field"
    assert seen and threading.current_thread().name not in seen


def test_text_format_through_the_fd_keeps_unicode(pipe):
    fds, stream = pipe
    p = LogPipeline("text", "info", stream=stream).start()
    log_event(get_logger("camera"), "camera_grab_failed", logging.ERROR, reason="câble débranché")
    p.stop(timeout=2.0)
    os.set_blocking(fds["r"], False)
    text = os.read(fds["r"], 65536).decode("utf-8")
    assert "camera_grab_failed" in text and 'reason="câble débranché"' in text and text.endswith("\n")


def test_process_exits_while_stdout_is_never_read():
    """The measured failure: with stdout a full pipe, stop() hung (and, past it, logging.shutdown()
    at exit waited on the lock of a handler blocked in its write)."""
    code = textwrap.dedent("""
        import logging, sys, time
        from plcbridge.logs import LogPipeline, get_logger, log_event
        print("printed before", flush=False)
        p = LogPipeline("json", "info").start()
        log = get_logger("writeloop")
        for i in range(50_000):
            log_event(log, "burst", logging.INFO, i=i, pad="x" * 100)
        t0 = time.monotonic()
        p.stop()
        took = time.monotonic() - t0
        sys.stderr.write(f"stopped {took:.3f} dropped {p.dropped}\\n")
        sys.stderr.flush()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # stdout is a pipe nobody reads; stderr takes one short line (fits in the pipe).
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        rc = proc.poll()
        if rc is None:
            proc.kill()
            proc.wait()
            pytest.fail("the process did not exit with its stdout unread")
        err = proc.stderr.read().decode()
    finally:
        proc.stdout.close()
        proc.stderr.close()
    assert rc == 0, err
    words = err.split()
    assert words[0] == "stopped" and float(words[1]) < 1.5 and int(words[3]) > 0, err
