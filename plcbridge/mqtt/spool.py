"""The MQTT disk spool: every decision message is committed here before it is published, and
deleted only when the broker has acknowledged it (PUBACK, QoS 1). So what the broker has not
acknowledged survives a broker outage, a daemon restart, SIGKILL and a power cut, and is
published again afterwards, oldest first.

One SQLite file (stdlib sqlite3), one table:

    spool(seq INTEGER PRIMARY KEY AUTOINCREMENT, created REAL, key TEXT, topic TEXT, payload BLOB, size INTEGER)

- `seq` orders the messages: publishing follows it, and AUTOINCREMENT never hands out a seq
  again, even when the spool has been emptied (a plain rowid would start over at 1, behind
  the publisher's cursor);
- WAL journal with `synchronous=FULL` for the inserts: a commit returns only once the WAL is
  on disk (fsync), so a power cut keeps every message `put` returned for, not only a crash
  of the process (NORMAL would keep those, but lose the newest commits to a power cut).
  Deletes commit with `synchronous=NORMAL`: a delete lost to a power cut means that message
  is published once more, which QoS 1 allows (at least once), and the next insert's fsync
  carries the deletes before it to disk anyway. Half the fsyncs of a drained line;
- `locking_mode=EXCLUSIVE`: the daemon holds the file for as long as it runs, so a second
  daemon pointed at the same spool is refused at start instead of publishing it twice (and
  no -shm file is made);
- bounded by bytes (`max_bytes`: topics and payloads) and by age (`max_age_s`): past them the
  oldest messages go first, counted (`plcbridge_mqtt_dropped_total{reason="spool_bytes"|"spool_age"}`)
  and logged;
- a file that is not a database, fails `PRAGMA quick_check`, is of a format this version does
  not know, or turns out corrupt while in use is moved aside (renamed `NAME.corrupt-YYYYmmddTHHMMSSZ`,
  its -wal with it) and a new spool is started: loudly (`mqtt_spool_corrupt` at ERROR,
  `plcbridge_mqtt_spool_corrupt_total`), and the daemon goes on. The messages in the old file
  are not published (they are kept there for whoever wants to look).

Every other failure (a full disk, a read-only one, a missing folder, another process holding
the file) is a SpoolError with a short `reason` and a sentence: the caller counts and logs it;
nothing here raises anything else. Opening is retried at most every REOPEN_EVERY_S.

The spool is used by two threads: the sink's (puts) and the publisher's (reads and deletes).
One connection, one lock: each call is one short transaction.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from plcbridge.logs import get_logger, log_event

if TYPE_CHECKING:
    from plcbridge.metrics import Metrics

log = get_logger("mqtt")

FORMAT_VERSION = 1  # PRAGMA user_version of a spool this code writes
BUSY_TIMEOUT_S = 0.5  # another process holding the file: refused after this, never waited on longer
REOPEN_EVERY_S = 5.0  # a spool that could not be opened is tried again at most this often
_FETCH = 256  # rows read at a time when the oldest are dropped

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xff).
_CORRUPT, _NOTADB = 11, 26
_REASONS = {13: "disk_full", 8: "read_only", 14: "cannot_open", 5: "locked", 6: "locked", 10: "io_error", 3: "permission"}
_SAY = {"disk_full": "the disk is full", "read_only": "the file system or the file is read-only",
        "cannot_open": "the file cannot be opened (permissions? a missing folder?)",
        "locked": "another process holds the spool (a second daemon with the same mqtt.spool_path?)",
        "io_error": "a disk I/O error", "permission": "no permission"}

_CREATE = """CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    key TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL
)"""

T = TypeVar("T")


class SpoolError(Exception):
    """The spool cannot do what was asked: `reason` is a short word for metrics and logs
    (disk_full, read_only, missing_folder, locked, cannot_open, io_error, too_large, closed,
    error), str() a sentence."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Unusable(Exception):
    """The file is not a spool this code can use (corrupt, not a database, unknown format)."""


@dataclass(frozen=True)
class Spooled:
    """One message in the spool."""

    seq: int
    key: str  # the decision id
    topic: str
    payload: bytes
    created: float  # wall-clock seconds, when it was spooled

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.topic.encode())


@dataclass(frozen=True)
class Backlog:
    """What the spool holds: for the metrics, the page, the status topic."""

    messages: int
    bytes: int
    oldest_age_s: float | None  # None when empty

    def as_dict(self) -> dict[str, int | float | None]:
        return {"backlog_messages": self.messages, "backlog_bytes": self.bytes,
                "backlog_oldest_age_s": None if self.oldest_age_s is None else round(self.oldest_age_s, 1)}


def _code(e: sqlite3.Error) -> int:
    return int(getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF


class Spool:
    """The spool file at `path` (opened at the first call that needs it, on whichever thread)."""

    def __init__(self, path: Path | str, max_bytes: int, max_age_s: float, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.metrics = metrics
        self._clock = clock
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._count = 0
        self._bytes = 0
        self._oldest: float | None = None  # created of the oldest message
        self._retry_at = 0.0
        self._error: SpoolError | None = None  # why the last open failed
        self.moved_aside: list[Path] = []  # corrupt files moved aside by this instance

    # ------------------------------------------------------------------ the API

    def open(self) -> None:
        """Open now (the publisher does at start: a backlog is drained before the first new
        decision). SpoolError when it cannot be."""
        with self._lock:
            self._open()

    def put(self, key: str, topic: str, payload: bytes) -> int:
        """Append one message, committed (on disk) when this returns; its seq. The oldest
        messages are dropped first when the byte bound would be passed (counted, logged)."""
        size = len(payload) + len(topic.encode())
        if size > self.max_bytes:
            raise SpoolError("too_large", f"a message of {size} bytes is larger than the whole spool "
                                          f"(mqtt.spool_max_bytes = {self.max_bytes})")

        now = self._clock()

        def op(conn: sqlite3.Connection) -> tuple[int, list[tuple[int, int, float]]]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                dropped = self._oldest_over(conn, self._bytes + size - self.max_bytes)
                if dropped:
                    conn.execute("DELETE FROM spool WHERE seq <= ?", (dropped[-1][0],))
                cur = conn.execute("INSERT INTO spool (created, key, topic, payload, size) VALUES (?, ?, ?, ?, ?)",
                                   (now, key, topic, payload, size))
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return int(cur.lastrowid or 0), dropped

        with self._lock:
            seq, dropped = self._run(op)
            self._count += 1
            self._bytes += size
            if self._oldest is None:
                self._oldest = now
            if dropped:
                self._forget(dropped)
                self._dropped("spool_bytes", dropped)
            return seq

    def after(self, seq: int, limit: int) -> list[Spooled]:
        """Up to `limit` messages with a seq above `seq`, oldest first."""
        def op(conn: sqlite3.Connection) -> list[Spooled]:
            rows = conn.execute("SELECT seq, key, topic, payload, created FROM spool WHERE seq > ? ORDER BY seq LIMIT ?",
                                (seq, limit)).fetchall()
            return [Spooled(int(s), str(k), str(t), bytes(p), float(c)) for s, k, t, p, c in rows]

        with self._lock:
            return self._run(op)

    def delete(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged messages (those still there: one dropped meanwhile by a bound is
        not counted twice); how many were deleted."""
        wanted = sorted(set(seqs))
        if not wanted:
            return 0

        def op(conn: sqlite3.Connection) -> list[tuple[int, int, float]]:
            conn.execute("PRAGMA synchronous=NORMAL")  # see the module docstring: a lost delete is a duplicate
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    gone: list[tuple[int, int, float]] = []
                    for i in range(0, len(wanted), 500):  # SQLite's variable limit, with room
                        chunk = wanted[i:i + 500]
                        gone += conn.execute(f"DELETE FROM spool WHERE seq IN ({','.join('?' * len(chunk))}) "
                                             "RETURNING seq, size, created", chunk).fetchall()
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            finally:
                conn.execute("PRAGMA synchronous=FULL")
            return gone

        with self._lock:
            gone = self._run(op)
            self._forget(gone)
            return len(gone)

    def expire(self) -> int:
        """Drop the messages older than the age bound (counted, logged); how many."""
        cutoff = self._clock() - self.max_age_s
        with self._lock:
            if self._oldest is None or self._oldest >= cutoff:
                return 0

            def op(conn: sqlite3.Connection) -> list[tuple[int, int, float]]:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    gone = conn.execute("DELETE FROM spool WHERE created < ? RETURNING seq, size, created",
                                        (cutoff,)).fetchall()
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
                return gone

            gone = self._run(op)
            gone.sort()
            self._forget(gone)
            if gone:
                self._dropped("spool_age", gone)
            return len(gone)

    def backlog(self) -> Backlog:
        """What the spool holds now (kept in memory: no disk access)."""
        oldest = self._oldest
        return Backlog(self._count, self._bytes, None if oldest is None else max(0.0, self._clock() - oldest))

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    @property
    def error(self) -> SpoolError | None:
        """Why the spool could not be opened the last time it was tried (None once open)."""
        return self._error

    def close(self) -> None:
        """Close the file (SQLite checkpoints the WAL into it); what is in it stays for the next start."""
        with self._lock:
            self._closed = True
            self._close_conn()

    # ------------------------------------------------------------------ inside

    def _run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """`op` on the open connection; a corrupt file found on the way is moved aside and `op`
        tried once more on a new one. Every other sqlite3 error becomes a SpoolError."""
        for attempt in (1, 2):
            conn = self._open()
            try:
                return op(conn)
            except sqlite3.Error as e:
                code = _code(e)
                if code in (_CORRUPT, _NOTADB) and attempt == 1:
                    self._close_conn()
                    self._move_aside(f"{type(e).__name__}: {e} (found while in use)")
                    continue
                if code not in (13, 8, 5, 6):  # a full disk, a read-only one, a lock: the connection is fine
                    self._close_conn()
                reason = _REASONS.get(code, "error")
                raise SpoolError(reason, f"{self.path}: {_SAY.get(reason, f'{type(e).__name__}: {e}')}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _open(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if self._closed:
            raise SpoolError("closed", f"{self.path}: the spool is closed (the daemon is stopping)")
        now = time.monotonic()
        if self._error is not None and now < self._retry_at:
            raise self._error
        try:
            try:
                conn = self._connect()
            except _Unusable as e:
                self._move_aside(str(e))
                conn = self._connect()
        except (_Unusable, SpoolError) as e:
            err = e if isinstance(e, SpoolError) else SpoolError("error", f"{self.path}: a new spool is unusable too: {e}")
            self._error, self._retry_at = err, now + REOPEN_EVERY_S
            raise err from None
        self._conn, self._error = conn, None
        return conn

    def _connect(self) -> sqlite3.Connection:
        """The file opened, checked and counted; _Unusable when it is no spool we can use."""
        if not self.path.parent.is_dir():
            raise SpoolError("missing_folder", f"{self.path.parent} (the folder of mqtt.spool_path) does not exist; "
                                               "it is not created here (the systemd unit's StateDirectory makes "
                                               "/var/lib/plcbridge)")
        try:
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            reason = _REASONS.get(_code(e), "cannot_open")
            raise SpoolError(reason, f"{self.path}: {_SAY.get(reason, str(e))}") from None
        try:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SpoolError("error", f"{self.path}: SQLite cannot keep a write-ahead log there (journal_mode "
                                          f"{mode}): put mqtt.spool_path on a local disk")
            conn.execute("PRAGMA synchronous=FULL")
            check = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
            if check != ["ok"]:
                raise _Unusable(f"PRAGMA quick_check: {'; '.join(check[:3])}")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version not in (0, FORMAT_VERSION):
                raise _Unusable(f"spool format {version}, but this plcbridge reads format {FORMAT_VERSION} "
                                "(written by a newer plcbridge?)")
            # Takes the write lock now, and (EXCLUSIVE) keeps it: a second daemon is refused here.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_CREATE)
            conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
            conn.execute("COMMIT")
            count, total = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool").fetchone()
            first = conn.execute("SELECT created FROM spool ORDER BY seq LIMIT 1").fetchone()
            oldest = None if first is None else first[0]
        except (SpoolError, _Unusable):
            conn.close()
            raise
        except sqlite3.Error as e:
            conn.close()
            code = _code(e)
            if code in (_CORRUPT, _NOTADB):
                raise _Unusable(f"{type(e).__name__}: {e}") from None
            reason = _REASONS.get(code, "error")
            raise SpoolError(reason, f"{self.path}: {_SAY.get(reason, f'{type(e).__name__}: {e}')}") from None
        self._count, self._bytes = int(count), int(total)
        self._oldest = None if oldest is None else float(oldest)
        if self._oldest is not None:
            log_event(log, "mqtt_spool_opened", logging.INFO, path=str(self.path), backlog_messages=self._count,
                      backlog_bytes=self._bytes, oldest_age_s=round(self._clock() - self._oldest, 1))
        return conn

    def _move_aside(self, why: str) -> None:
        """Rename the unusable file (and its WAL) out of the way, loudly."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            for suffix in ("", "-wal", "-shm", "-journal"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    os.replace(src, Path(f"{aside}{suffix}"))
        except OSError as e:
            raise SpoolError("cannot_open", f"{self.path} is corrupt ({why}) and cannot be moved aside: "
                                            f"{e.strerror or e}") from None
        self.moved_aside.append(aside)
        self._count, self._bytes, self._oldest = 0, 0, None
        if self.metrics is not None:
            self.metrics.mqtt_spool_corrupt.inc()
        log_event(log, "mqtt_spool_corrupt", logging.ERROR, path=str(self.path), moved_to=str(aside), reason=why,
                  effect="the decisions in it are not published (the file is kept, renamed); a new spool is "
                         "started and publishing goes on; the PLC is not affected")

    def _oldest_over(self, conn: sqlite3.Connection, excess: int) -> list[tuple[int, int, float]]:
        """The oldest rows whose sizes add up to `excess` bytes at least (none when <= 0)."""
        out: list[tuple[int, int, float]] = []
        freed = 0
        if excess <= 0:
            return out
        cur = conn.execute("SELECT seq, size, created FROM spool ORDER BY seq")
        while freed < excess:
            rows = cur.fetchmany(_FETCH)
            if not rows:
                break
            for row in rows:
                out.append((int(row[0]), int(row[1]), float(row[2])))
                freed += int(row[1])
                if freed >= excess:
                    break
        cur.close()
        return out

    def _forget(self, gone: list[tuple[int, int, float]]) -> None:
        """Take deleted rows (seq, size, created) off the totals."""
        if not gone:
            return
        self._count = max(0, self._count - len(gone))
        self._bytes = max(0, self._bytes - sum(size for _, size, _ in gone))
        if self._count == 0:
            self._oldest = None
        elif self._oldest is not None and min(created for _, _, created in gone) <= self._oldest:
            self._oldest = self._first_created()

    def _first_created(self) -> float | None:
        """When the oldest message was spooled: the first by seq (a primary-key lookup, never a
        scan of a large backlog at every acknowledgement; a wall clock set back meanwhile makes
        it only approximate)."""
        conn = self._conn
        row = conn.execute("SELECT created FROM spool ORDER BY seq LIMIT 1").fetchone() if conn is not None else None
        return None if row is None else float(row[0])

    def _dropped(self, reason: str, gone: list[tuple[int, int, float]]) -> None:
        if self.metrics is not None:
            self.metrics.mqtt_dropped.labels(reason).inc(len(gone))
        age = round(self._clock() - min(created for _, _, created in gone), 1)
        why = (f"the spool holds mqtt.spool_max_bytes = {self.max_bytes}" if reason == "spool_bytes"
               else f"they are older than mqtt.spool_max_age_days ({self.max_age_s / 86400:g})")
        log_event(log, "mqtt_spool_dropped", logging.WARNING, path=str(self.path), dropped=len(gone), drop=reason,
                  oldest_age_s=age, reason=f"{why}: the oldest unacknowledged decisions are dropped first and will "
                                           "not be published", rate_key=f"mqtt-spool-{reason}")

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass
