"""Structured logs that never make the caller wait.

Every event is one JSON object per line on stdout (what journald wants, and what
`journalctl -u plcbridge -o cat` shows), or a readable line for a terminal. Callers log
with `log_event(logger, "event_name", level, **fields)`.

The write loop logs too, so handlers must not block or format on the caller's thread:
records go onto an unbounded queue as they are, and one listener thread formats, rate-limits
and writes them. A repeated event (same event name and key) inside the rate-limit window is
counted, not printed; its next printed line says how many were suppressed.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
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


class _EnqueueRaw(logging.handlers.QueueHandler):
    """QueueHandler that enqueues the record untouched: formatting happens on the listener."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


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


class LogPipeline:
    """Owns the queue and the listener thread; `stop()` flushes what is queued."""

    def __init__(self, fmt: str = "json", level: str = "info", rate_limit_s: float = 5.0, stream: TextIO | None = None):
        self.queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        out = logging.StreamHandler(stream or sys.stdout)
        out.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
        out.addFilter(RateLimiter(rate_limit_s))
        self._listener = logging.handlers.QueueListener(self.queue, out, respect_handler_level=False)
        self._handler = _EnqueueRaw(self.queue)
        self._level = getattr(logging, level.upper())
        self._lock = threading.Lock()
        self._running = False

    def start(self) -> "LogPipeline":
        root = logging.getLogger(LOGGER_NAME)
        root.handlers[:] = [self._handler]
        root.setLevel(self._level)
        root.propagate = False
        # pymodbus logs every refused connect at ERROR; we log our own events for those.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        with self._lock:
            if not self._running:
                self._listener.start()
                self._running = True
        return self

    def stop(self) -> None:
        with self._lock:
            if self._running:
                self._listener.stop()  # drains the queue before returning
                self._running = False
