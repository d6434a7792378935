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

import contextlib
import json
import logging
import os
import queue
import re
import select
import sys
import tempfile
import threading
import time
from typing import Any, Iterator, TextIO

LOGGER_NAME = "plcbridge"
# The event of a record logged without log_event (a library's logger, Python warnings, or a
# plain `log.warning("...")`): the text goes in `message`, `part` names the logger.
LOG_MESSAGE = "log_message"
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def get_logger(part: str) -> logging.Logger:
    """A logger for one part of the daemon ("writeloop", "camera", "model", "plc", ...)."""
    return logging.getLogger(f"{LOGGER_NAME}.{part}")


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, /, *, exc_info: bool = False, **fields: Any) -> None:
    """Log one structured event. `rate_key` in fields makes it rate-limited per (event, key);
    `rate_last=True` with it marks a state change whose latest suppressed record is still
    written when its window ends (see RateLimiter), so the journal always ends on the current state."""
    if logger.isEnabledFor(level):
        # A field named like a LogRecord attribute ("name", "msg", ...) would raise: keep it, renamed.
        extra = {(f"{k}_" if k in _RESERVED else k): v for k, v in fields.items()}
        extra["event"] = event
        logger.log(level, event, exc_info=exc_info, extra=extra)


class RateLimiter(logging.Filter):
    """Pass the first record of a (event, rate_key) per window; count the rest.

    Only records that carry `rate_key` are limited: decisions are never suppressed, repeated
    errors (a reconnect failing every 100 ms) and flapping states (plc_inputs_stale/fresh) are.
    (status_changed is limited where it is made, plcbridge/writeloop.py StatusLog: each of
    its lines must state its change from the line before, which a suppressing filter breaks.)
    The next line printed for that key carries `suppressed`, the number not printed.

    A record that also carries `rate_last=True` is a state change: the latest suppressed one
    is kept and `due()` hands it back once its window has ended (with `suppressed` = the
    others not printed), so a flapping camera gives one line per window and the last line
    always shows the state it ended in. The writer thread calls `due()`.
    """

    def __init__(self, window_s: float) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._pending: dict[tuple[str, str], logging.LogRecord] = {}  # latest suppressed state record

    def filter(self, record: logging.LogRecord) -> bool:
        key_field = getattr(record, "rate_key", None)
        if key_field is None or self.window_s <= 0:
            return True
        key = (getattr(record, "event", record.getMessage()), str(key_field))
        now = record.created
        last = self._last.get(key)
        if last is not None and now - last < self.window_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            if getattr(record, "rate_last", False):
                self._pending[key] = record
            return False
        self._last[key] = now
        self._pending.pop(key, None)  # cannot happen when due() ran first; never print it twice
        n = self._suppressed.pop(key, 0)
        if n:
            record.suppressed = n
        return True

    def next_due(self) -> float | None:
        """When (time.time()) the earliest kept state record becomes due, or None."""
        if not self._pending:
            return None
        return min(self._last[k] for k in self._pending) + self.window_s

    def due(self, now: float, everything: bool = False, before: float | None = None) -> list[logging.LogRecord]:
        """Kept state records whose window has ended by `now` (all of them if `everything`),
        oldest first, each with `suppressed` = the records of its key not printed before it.
        Kept records older than one of those, or than `before` (a state record about to be
        written), come along: the journal stays in time order, so its last line is the state now."""
        keys = [k for k in self._pending if everything or now - self._last[k] >= self.window_s]
        upto = max([self._pending[k].created for k in keys] + ([before] if before is not None else []), default=None)
        if upto is not None:
            keys += [k for k in self._pending if k not in keys and self._pending[k].created <= upto]
        out = []
        for key in keys:
            record = self._pending.pop(key)
            n = self._suppressed.pop(key, 0) - 1  # the record itself is printed now
            if n > 0:
                record.suppressed = n
            self._last[key] = max(now, record.created)
            out.append(record)
        out.sort(key=lambda r: r.created)
        return out


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED and k not in ("event", "rate_key", "rate_last")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "part": record.name.removeprefix(LOGGER_NAME + ".") or LOGGER_NAME,
            "event": getattr(record, "event", None) or LOG_MESSAGE,
        }
        if not getattr(record, "event", None):  # a plain logger call (ours or a library's): text in `message`
            obj["message"] = record.getMessage()
        obj.update(_fields(record))
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        part = record.name.removeprefix(LOGGER_NAME + ".")
        event = getattr(record, "event", None) or LOG_MESSAGE
        fields = _fields(record)
        if not getattr(record, "event", None):
            fields = {"message": record.getMessage(), **fields}
        kv = " ".join(f"{k}={text_value(v)}" for k, v in fields.items())
        line = f"{stamp} {record.levelname:<7} {part:<10} {event} {kv}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def text_value(v: Any, nested: bool = False) -> str:
    """A field value as a terminal reader wants it, not a Python repr: lists comma-joined
    (``READY,CAMERA_OK``; empty ``-``), dicts ``k:v,k:v``, None ``-``, booleans ``true``/``false``,
    floats rounded (3 decimals from 1 up, 3 significant digits below), strings bare unless
    empty or holding a blank, ``"`` or ``=`` (then double-quoted, JSON escapes)."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        if abs(v) >= 1:
            return ("%.3f" % v).rstrip("0").rstrip(".")
        return "%.3g" % v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        s = ",".join(f"{text_value(k, True)}:{text_value(x, True)}" for k, x in v.items())
        return _quote(s) if not nested else s
    if isinstance(v, (list, tuple, set, frozenset)):
        items = sorted(v, key=str) if isinstance(v, (set, frozenset)) else v
        s = ",".join(text_value(x, True) for x in items) or "-"
        return _quote(s) if not nested else s
    name = getattr(v, "name", None) if hasattr(v, "name") and hasattr(v, "value") else None  # an Enum
    return _quote(str(v) if name is None else str(name))


def _quote(s: str) -> str:
    if s == "" or any(c.isspace() or c in '"=' for c in s):
        return json.dumps(s, ensure_ascii=False)
    return s


class _Enqueue(logging.Handler):
    """The handler on the caller's thread: hands the record over untouched, never waits.

    No formatting here (the writer thread does that), no handler lock (Queue is thread-safe),
    and `put_nowait`: when the queue is full the record is dropped and counted.
    """

    def __init__(self, pipeline: "LogPipeline") -> None:
        super().__init__()
        self._pipeline = pipeline

    def handle(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return False
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
        self._library_handler = _Enqueue(self)
        self._library_handler.setLevel(max(self._level_of(level), logging.WARNING))
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

    @staticmethod
    def _level_of(level: str) -> int:
        return getattr(logging, level.upper())

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
        # Other loggers (inference.session, asyncua, pycomm3, ...) and warnings.warn would reach
        # Python's last-resort handler: plain text on stderr, in the middle of the JSON lines.
        # Their warnings and errors come through here instead, as event "log_message".
        top = logging.getLogger()
        top.handlers[:] = [h for h in top.handlers if not isinstance(h, _Enqueue)] + [self._library_handler]
        logging.captureWarnings(True)
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
            due = self._limiter.next_due()
            try:
                first = q.get() if due is None else q.get(timeout=max(0.0, due - time.time()))
            except queue.Empty:  # a kept state record's window ended: write it
                self._write_batch([])
                continue
            batch = [first]
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
                self._emit_due(time.time(), everything=True)  # stopping: the last state is written
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
            for kept in self._due(record.created):  # state records due before this one
                chunks.append(self._format(kept))
                size += len(chunks[-1])
            try:
                passed = self._limiter.filter(record)
            except Exception:  # a rate_key whose str() raises: better printed than lost
                passed = True
            if not passed:
                continue
            if getattr(record, "rate_last", False):  # older kept state lines go first
                for kept in self._due(record.created, before=record.created):
                    chunks.append(self._format(kept))
                    size += len(chunks[-1])
            chunks.append(self._format(record))
            size += len(chunks[-1])
            if size >= self._BATCH_BYTES:
                self._emit(chunks)
                chunks, size = [], 0
        if chunks:
            self._emit(chunks)
        self._emit_due(time.time())
        if self.queue.empty():  # caught up: drops not yet reported happened after all we wrote
            self._report_drops(self._dropped_callers)

    def _due(self, now: float, everything: bool = False, before: float | None = None) -> list[logging.LogRecord]:
        try:
            return self._limiter.due(now, everything, before)
        except Exception:  # pragma: no cover - never let the writer die
            return []

    def _emit_due(self, now: float, everything: bool = False) -> None:
        kept = self._due(now, everything)
        if not kept:
            return
        if self._output_broken:
            self._dropped_writer += len(kept)
            return
        self._emit([self._format(r) for r in kept])

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
        fd = self._fd
        assert fd is not None  # called only when the stream has a usable descriptor
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:  # someone made the fd non-blocking: wait until it takes more
                try:
                    select.select([], [fd], [], 1.0)
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


# --- native (C/C++) stderr ------------------------------------------------------------------

_native_lock = threading.RLock()
_native_file: Any = None  # one reusable temporary file, truncated after each capture
_native_depth = 0


class NativeOutput:
    """What native code wrote to fd 2 inside `native_stderr()`: `.lines` (stripped, non-empty)."""

    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: list[str] = []

    def text(self, last: int = 4, limit: int = 400) -> str:
        """The last `last` lines joined by " | ", at most `limit` characters: for a reason field."""
        s = " | ".join(self.lines[-last:])
        return s if len(s) <= limit else "..." + s[-(limit - 3):]


@contextlib.contextmanager
def native_stderr() -> Iterator[NativeOutput]:
    """Capture what native libraries (OpenCV, FFmpeg, libpng) print on fd 2 during the block.

    journald mixes the unit's stderr into the journal, so a bare "[ WARN:0@0.1] ..." or
    "[tcp @ 0x..] Connection refused" line between our JSON lines breaks `jq`. Wrap the
    calls into such libraries (VideoCapture open/read, imread) and put what they said into
    the event that reports the outcome instead. fd 2 is redirected process-wide for the
    block's duration (serialised by a lock; nested use on one thread is a pass-through), so
    anything another thread writes to stderr meanwhile is captured too, not lost.
    """
    global _native_file, _native_depth
    out = NativeOutput()
    with _native_lock:
        if _native_depth:
            yield out
            return
        try:
            if _native_file is None:
                _native_file = tempfile.TemporaryFile()
            saved = os.dup(2)
        except OSError:  # no fd 2, no tmp: run the block uncaptured
            yield out
            return
        tmp = _native_file.fileno()
        _native_depth = 1
        try:
            os.dup2(tmp, 2)
            try:
                yield out
            finally:
                os.dup2(saved, 2)
                os.close(saved)
        finally:
            _native_depth = 0
            try:
                size = os.lseek(tmp, 0, os.SEEK_END)
                if size:
                    os.lseek(tmp, max(0, size - 16384), os.SEEK_SET)
                    data = os.read(tmp, 16384)
                    os.ftruncate(tmp, 0)
                    os.lseek(tmp, 0, os.SEEK_SET)
                    text = _ANSI.sub("", data.decode("utf-8", "replace"))
                    out.lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            except OSError:
                pass


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
