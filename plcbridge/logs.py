"""Structured logs that never make the caller wait.

Every event is one JSON object per line on stdout (what journald wants, and what
`journalctl -u plcbridge -o cat` shows), or a readable line for a terminal. Callers log
with `log_event(logger, "event_name", level, **fields)`.

The write loop logs too, so handlers must not block or format on the caller's thread:
records go onto a queue as they are (`put_nowait`), and one writer thread formats,
rate-limits and writes them. A repeated event (same event name and key) inside the
rate-limit window is counted, not printed; its next printed line says how many were
suppressed.

The queue is bounded (`max_queued`, default 4096 records) because stdout can stop being
read: a pipe nobody drains, a stuck journald. An unbounded queue then grows without limit,
and a writer blocked on the full pipe must not hold up the caller or shutdown. So:

* when the queue is full, a record is dropped and counted, never waited for;
* `LogPipeline.dropped` is the running count (for the counter
  `plcbridge_log_events_dropped_total`); and when the writer gets going again it writes a
  warning line, event "log_events_dropped", with `dropped` (since the last such line) and
  `dropped_total`, where the records are missing: before the first record queued after
  them, or after the last one written once it has caught up. So the gap shows in the
  journal itself. Drops happen only with the queue full, so two such lines are about
  `max_queued` records apart at the least;
* the writer writes with `os.write` on the stream's file descriptor, not through
  `sys.stdout`'s buffered object: blocked on a full pipe it holds no Python-level lock, so
  interpreter exit cannot deadlock on it (a stream without a file descriptor, such as a
  StringIO in tests, is written through `write` + `flush`);
* if the output breaks (EPIPE, a closed fd) the writer stops writing for good and counts
  what follows as dropped: nothing is raised, no "--- Logging error ---" on stderr;
* `stop(timeout)` lets the writer finish what is queued for at most `timeout` seconds and
  then returns anyway; the writer is a daemon thread and may be left blocked at exit.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import sys
import threading
import time
from typing import Any, TextIO

LOGGER_NAME = "plcbridge"
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def get_logger(part: str) -> logging.Logger:
    """A logger for one part of the daemon ("writeloop", "camera", "model", "plc", ...)."""
    return logging.getLogger(f"{LOGGER_NAME}.{part}")


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, /, *, exc_info: bool = False, **fields: Any) -> None:
    """Log one structured event. `rate_key` in fields makes it rate-limited per (event, key)."""
    if logger.isEnabledFor(level):
        # A field named like a LogRecord attribute ("name", "msg", ...) would raise: keep it, renamed.
        extra = {(f"{k}_" if k in _RESERVED else k): v for k, v in fields.items()}
        extra["event"] = event
        logger.log(level, event, exc_info=exc_info, extra=extra)


class RateLimiter(logging.Filter):
    """Pass the first record of a (event, rate_key) per window; count the rest.

    Only records that carry `rate_key` are limited: decisions and state changes are never
    suppressed, repeated errors (a reconnect failing every 100 ms) are.
    """

    def __init__(self, window_s: float) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key_field = getattr(record, "rate_key", None)
        if key_field is None or self.window_s <= 0:
            return True
        key = (getattr(record, "event", record.getMessage()), str(key_field))
        now = record.created
        last = self._last.get(key)
        if last is not None and now - last < self.window_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        if n:
            record.suppressed = n
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED and k not in ("event", "rate_key")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "part": record.name.removeprefix(LOGGER_NAME + ".") or LOGGER_NAME,
            "event": getattr(record, "event", None) or record.getMessage(),
        }
        if not hasattr(record, "event") and record.args:
            obj["message"] = record.getMessage()
        obj.update(_fields(record))
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        part = record.name.removeprefix(LOGGER_NAME + ".")
        event = getattr(record, "event", None) or record.getMessage()
        kv = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{stamp} {record.levelname:<7} {part:<10} {event} {kv}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _Enqueue(logging.Handler):
    """The handler on the caller's thread: hands the record over untouched, never waits.

    No formatting here (the writer thread does that), no handler lock (Queue is thread-safe),
    and `put_nowait`: when the queue is full the record is dropped and counted.
    """

    def __init__(self, pipeline: "LogPipeline") -> None:
        super().__init__()
        self._pipeline = pipeline

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        p = self._pipeline
        if p._output_broken:
            p._dropped_callers += 1
            return
        try:
            if p._gap_open:  # mark where the dropped records were, for the writer's report line
                p.queue.put_nowait(_Gap(p._dropped_callers))
                p._gap_open = False
            p.queue.put_nowait(record)
        except queue.Full:
            p._dropped_callers += 1
            p._gap_open = True


def _usable_fd(stream: TextIO) -> int | None:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


class LogPipeline:
    """Owns the bounded queue and the writer thread.

    `dropped` counts every record logged but not written (queue full, or output gone);
    `stop(timeout)` lets the writer finish what is queued for at most `timeout` seconds.
    """

    _BATCH_RECORDS = 256  # records formatted into one os.write ...
    _BATCH_BYTES = 64 * 1024  # ... or this many bytes, whichever comes first

    def __init__(self, fmt: str = "json", level: str = "info", rate_limit_s: float = 5.0, stream: TextIO | None = None,
                 max_queued: int = 4096):
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max_queued)
        self.max_queued = max_queued
        self._stream = stream or sys.stdout
        self._fd = _usable_fd(self._stream)
        self._encoding = getattr(self._stream, "encoding", None) or "utf-8"
        self._formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
        self._limiter = RateLimiter(rate_limit_s)
        self._handler = _Enqueue(self)
        self._level = getattr(logging, level.upper())
        # Two counters, each written by one side only, so an increment is never lost between a
        # caller and the writer. Callers race only among themselves (an int += under the GIL).
        self._dropped_callers = 0  # queue full, or output known broken: on the logging threads
        self._dropped_writer = 0  # output broken while records were queued or being written
        self._reported = 0  # caller drops already announced by a "log_events_dropped" line
        self._output_broken = False
        self._gap_open = False  # records were dropped since the last one queued
        self._lock = threading.Lock()  # guards _thread / _stop_requested; never held during I/O
        self._stop_requested = False
        self._thread: threading.Thread | None = None

    @property
    def dropped(self) -> int:
        """Records logged but never written, since construction (monotonic: a Prometheus counter)."""
        return self._dropped_callers + self._dropped_writer

    def start(self) -> "LogPipeline":
        root = logging.getLogger(LOGGER_NAME)
        root.handlers[:] = [self._handler]
        root.setLevel(self._level)
        root.propagate = False
        # pymodbus logs every refused connect at ERROR; we log our own events for those.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        if self._fd is not None:
            try:  # whatever was printed before goes out before our first os.write
                self._stream.flush()
            except (OSError, ValueError):
                pass
        with self._lock:
            self._stop_requested = False
            if self._thread is None:  # else a writer from before a timed-out stop() carries on
                self._thread = threading.Thread(target=self._run, name="plcbridge-log-writer", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float = 0.5) -> None:
        """Ask the writer to finish what is queued; wait at most `timeout` s, then return regardless.

        A writer still blocked on a full pipe is left behind (a daemon thread that holds no
        Python-level lock), so the process can exit anyway.
        """
        with self._lock:
            self._stop_requested = True
            thread = self._thread
        if thread is None:
            return
        try:
            self.queue.put_nowait(_WAKE)  # wakes a writer idle in get(); full means it is not idle
        except queue.Full:
            pass
        thread.join(timeout)

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        q = self.queue
        while True:
            batch = [q.get()]
            while len(batch) < self._BATCH_RECORDS:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write_batch(batch)
            except Exception:  # pragma: no cover - never let the writer die: a dead writer drops everything
                pass
            if q.empty() and self._stop_requested:
                self._report_drops(self._dropped_callers)  # outside the lock: a write may block
                with self._lock:
                    if self._stop_requested and q.empty():
                        self._thread = None
                        return

    def _write_batch(self, batch: list[Any]) -> None:
        chunks: list[str] = []
        size = 0
        for record in batch:
            if record is _WAKE:
                continue
            if type(record) is _Gap:  # records were dropped right here: say so, in place
                if record.upto > self._reported:
                    if chunks:
                        self._emit(chunks)
                        chunks, size = [], 0
                    self._report_drops(record.upto)
                continue
            if self._output_broken:
                self._dropped_writer += 1
                continue
            try:
                passed = self._limiter.filter(record)
            except Exception:  # a rate_key whose str() raises: better printed than lost
                passed = True
            if not passed:
                continue
            chunks.append(self._format(record))
            size += len(chunks[-1])
            if size >= self._BATCH_BYTES:
                self._emit(chunks)
                chunks, size = [], 0
        if chunks:
            self._emit(chunks)
        if self.queue.empty():  # caught up: drops not yet reported happened after all we wrote
            self._report_drops(self._dropped_callers)

    def _format(self, record: logging.LogRecord) -> str:
        try:
            return self._formatter.format(record) + "\n"
        except Exception as e:  # a field whose str() raises: say so instead of losing the event
            return json.dumps({"ts": round(record.created, 6), "level": record.levelname.lower(),
                               "event": str(getattr(record, "event", "?")), "log_format_error": repr(e)},
                              default=str) + "\n"

    def _report_drops(self, upto: int) -> None:
        """One warning line with the drops since the last such line, up to caller drop number
        `upto`, written where they are missing: the gap shows in the journal itself.

        Drops happen only with the queue full, so two gaps are about `max_queued` records apart
        at the least: these lines are a small fraction of the output, even under sustained overload.
        """
        n = upto - self._reported
        if n <= 0 or self._output_broken:
            return
        self._reported = upto
        total = upto + self._dropped_writer
        if logging.WARNING < self._level:
            return  # counted (the metric has it), not printed below the configured level
        rec = logging.LogRecord(f"{LOGGER_NAME}.logs", logging.WARNING, __file__, 0, "log_events_dropped", (), None)
        rec.event = "log_events_dropped"
        rec.dropped = n
        rec.dropped_total = total
        self._emit([self._format(rec)], records=0)

    def _emit(self, chunks: list[str], records: int | None = None) -> None:
        """Write formatted lines (`records` of them logged records, default one per chunk); on
        any error stop writing for good and count those records as dropped."""
        text = "".join(chunks)
        try:
            if self._fd is None:
                self._stream.write(text)
                self._stream.flush()
            else:
                self._write_fd(text.encode(self._encoding, "backslashreplace"))
        except Exception:  # BrokenPipeError, EBADF, a closed stream ...: never raise, never print
            self._output_broken = True
            self._dropped_writer += len(chunks) if records is None else records

    def _write_fd(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)  # type: ignore[arg-type]
            except BlockingIOError:  # someone made the fd non-blocking: wait until it takes more
                try:
                    select.select([], [self._fd], [], 1.0)
                except (OSError, ValueError):
                    time.sleep(0.01)
                continue
            view = view[n:]


_WAKE = object()  # put (never blocking) by stop() so an idle writer wakes up and sees the request


class _Gap:
    """Put by a caller before the first record it queues after drops: where they are missing."""

    __slots__ = ("upto",)

    def __init__(self, upto: int) -> None:
        self.upto = upto  # the caller drop count at that point
