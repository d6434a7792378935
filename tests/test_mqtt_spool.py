"""The MQTT disk spool (plcbridge/mqtt/spool.py) without a broker, on real SQLite files: order
kept across reopening, nothing committed lost to a SIGKILL mid-stream, the byte and age
bounds dropping the oldest first (counted), a corrupt or foreign file moved aside loudly and a
new spool started, a second holder refused, and failures that are SpoolErrors, never crashes."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import read_metric

from plcbridge.metrics import Metrics
from plcbridge.mqtt import spool as spool_module
from plcbridge.mqtt.spool import Spool, SpoolError

TOPIC = "plcbridge/site/line/st/decision"


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def _keys(spool: Spool) -> list[str]:
    return [m.key for m in spool.after(0, 1_000_000)]


def test_messages_come_back_in_order_across_reopening_and_acks_delete_them(tmp_path: Path):
    path = tmp_path / "spool.sqlite"
    s = Spool(path, 10_000_000, 3600)
    seqs = [s.put(f"D{i:03d}", TOPIC, f'{{"n":{i}}}'.encode()) for i in range(50)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 50
    assert s.backlog().messages == 50 and s.backlog().bytes == sum(len(f'{{"n":{i}}}') + len(TOPIC) for i in range(50))
    first = s.after(0, 10)
    assert [m.key for m in first] == [f"D{i:03d}" for i in range(10)] and first[0].payload == b'{"n":0}'
    assert [m.key for m in s.after(first[-1].seq, 5)] == [f"D{i:03d}" for i in range(10, 15)]
    assert s.delete([m.seq for m in first[:4]] + [first[6].seq]) == 5
    assert s.delete([first[0].seq]) == 0  # already gone: not counted twice
    s.close()

    again = Spool(path, 10_000_000, 3600)
    keys = _keys(again)
    assert keys == [f"D{i:03d}" for i in range(50) if i not in (0, 1, 2, 3, 6)]
    assert again.backlog().messages == 45 and again.backlog().oldest_age_s is not None
    again.close()


def test_an_emptied_spool_never_hands_out_a_seq_again(tmp_path: Path):
    """The publisher reads `after(cursor)`: a seq reused after the spool was drained would sit
    behind the cursor, unpublished (AUTOINCREMENT)."""
    s = Spool(tmp_path / "s.sqlite", 1_000_000, 3600)
    last = max(s.put(f"K{i}", TOPIC, b"x") for i in range(5))
    assert s.delete(range(1, last + 1)) == 5 and s.backlog().messages == 0 and s.backlog().oldest_age_s is None
    s.close()
    s = Spool(tmp_path / "s.sqlite", 1_000_000, 3600)
    assert s.put("new", TOPIC, b"y") > last
    assert [m.key for m in s.after(last, 10)] == ["new"]
    s.close()


_WRITER = textwrap.dedent("""
    import sys
    from plcbridge.mqtt.spool import Spool
    s = Spool(sys.argv[1], 50_000_000, 3600)
    i = 0
    while True:
        s.put(f"D{i:06d}", "t/decision", b"p" * 300 + str(i).encode())
        if i % 7 == 6:
            s.delete([m.seq for m in s.after(0, 3)])  # acknowledged: the oldest go, as the publisher deletes them
        print(i, flush=True)  # after the commit: this one is on disk
        i += 1
""")


def test_a_writer_sigkilled_mid_stream_loses_nothing_it_committed_and_order_holds(tmp_path: Path):
    path = tmp_path / "spool.sqlite"
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    committed = -1
    try:
        while committed < 300:
            line = child.stdout.readline()
            assert line, "the writer died on its own"
            committed = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    s = Spool(path, 50_000_000, 3600)
    keys = _keys(s)
    numbers = [int(k[1:]) for k in keys]
    assert numbers == sorted(numbers), "order"
    assert numbers == list(range(numbers[0], numbers[-1] + 1)), "no gap between the oldest kept and the newest"
    assert numbers[-1] >= committed, f"committed up to {committed}, reopened up to {numbers[-1]}"
    deleted = 3 * ((committed + 1) // 7)  # acknowledged ones, deleted before the kill
    assert numbers[0] <= deleted, "nothing unacknowledged is missing at the old end"
    assert s.backlog().messages == len(keys)
    assert s.after(0, 1)[0].payload.startswith(b"p" * 300)
    s.close()


def test_the_byte_bound_drops_the_oldest_first_and_counts_them(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="plcbridge")
    m = Metrics()
    payload = b"x" * (1000 - len(TOPIC))  # 1000 bytes a message, topic included
    s = Spool(tmp_path / "s.sqlite", 10_500, 3600, m)
    for i in range(25):
        s.put(f"K{i:02d}", TOPIC, payload)
    assert _keys(s) == [f"K{i:02d}" for i in range(15, 25)]
    assert s.backlog().bytes == 10_000 and s.backlog().messages == 10
    assert read_metric(m, "plcbridge_mqtt_dropped_total", reason="spool_bytes") == 15
    event = _events(caplog, "mqtt_spool_dropped")[0]
    assert event.drop == "spool_bytes" and "oldest" in event.reason and event.levelno == logging.WARNING
    with pytest.raises(SpoolError) as e:
        s.put("huge", TOPIC, b"y" * 20_000)
    assert e.value.reason == "too_large" and "mqtt.spool_max_bytes" in str(e.value)
    assert len(_keys(s)) == 10
    s.close()
    s = Spool(tmp_path / "s.sqlite", 10_500, 3600, m)
    s.open()
    assert s.backlog().bytes == 10_000, "the totals are read back from the file"
    s.close()


def test_the_age_bound_drops_what_is_too_old(tmp_path: Path):
    m = Metrics()
    now = [1_000_000.0]
    s = Spool(tmp_path / "s.sqlite", 1_000_000, 60, m, clock=lambda: now[0])
    for i in range(6):
        s.put(f"K{i}", TOPIC, b"x")
        now[0] += 20
    assert s.backlog().oldest_age_s == pytest.approx(120)
    assert s.expire() == 3  # spooled at -120, -100, -80 s; -60 and younger stay
    assert _keys(s) == ["K3", "K4", "K5"] and s.backlog().oldest_age_s == pytest.approx(60)
    assert read_metric(m, "plcbridge_mqtt_dropped_total", reason="spool_age") == 3
    assert s.expire() == 0
    s.close()


def _corrupt_a_page(path: Path) -> None:
    """Overwrite the middle of a real database (past its header and schema)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(8192))


@pytest.mark.parametrize("damage", ["garbage", "page", "format"])
def test_a_corrupt_spool_is_moved_aside_loudly_and_a_new_one_started(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                   damage: str):
    caplog.set_level(logging.INFO, logger="plcbridge")
    path = tmp_path / "spool.sqlite"
    s = Spool(path, 50_000_000, 3600)
    for i in range(400):
        s.put(f"K{i}", TOPIC, os.urandom(500))
    s.close()
    if damage == "garbage":
        path.write_bytes(b"this is not a database, " * 100)
    elif damage == "page":
        _corrupt_a_page(path)
    else:
        c = sqlite3.connect(path)
        c.execute("PRAGMA user_version=99")  # a newer plcbridge's format
        c.close()
    m = Metrics()
    s = Spool(path, 50_000_000, 3600, m)
    s.put("fresh", TOPIC, b"ok")  # never raises: the daemon goes on
    assert _keys(s) == ["fresh"] and s.backlog().messages == 1
    assert len(s.moved_aside) == 1
    aside = s.moved_aside[0]
    assert aside.exists() and aside.name.startswith("spool.sqlite.corrupt-20") and aside.parent == tmp_path
    assert read_metric(m, "plcbridge_mqtt_spool_corrupt_total") == 1
    event = _events(caplog, "mqtt_spool_corrupt")[0]
    assert event.levelno == logging.ERROR and event.moved_to == str(aside) and "not published" in event.effect
    if damage == "format":
        assert "format 99" in event.reason
    s.close()


def test_a_second_holder_is_refused_and_the_file_left_alone(tmp_path: Path):
    path = tmp_path / "spool.sqlite"
    first = Spool(path, 1_000_000, 3600)
    first.put("K", TOPIC, b"x")
    second = Spool(path, 1_000_000, 3600)
    with pytest.raises(SpoolError) as e:
        second.put("L", TOPIC, b"y")
    assert e.value.reason == "locked" and "another process" in str(e.value)
    assert second.moved_aside == [] and _keys(first) == ["K"]
    first.close()
    second.close()


def test_a_missing_folder_is_an_error_that_clears_when_the_folder_is_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(spool_module, "REOPEN_EVERY_S", 0.0)
    folder = tmp_path / "gone"
    s = Spool(folder / "spool.sqlite", 1_000_000, 3600)
    with pytest.raises(SpoolError) as e:
        s.put("K", TOPIC, b"x")
    assert e.value.reason == "missing_folder" and not folder.exists(), "never created in place of a missing disk"
    assert s.error is not None and not s.is_open
    folder.mkdir()
    s.put("K", TOPIC, b"x")
    assert _keys(s) == ["K"] and s.error is None
    s.close()
    with pytest.raises(SpoolError) as e:
        s.put("L", TOPIC, b"y")
    assert e.value.reason == "closed"


def test_reopening_is_tried_at_most_every_few_seconds(tmp_path: Path):
    s = Spool(tmp_path / "gone" / "spool.sqlite", 1_000_000, 3600)
    with pytest.raises(SpoolError):
        s.open()
    (tmp_path / "gone").mkdir()
    t = time.monotonic()
    with pytest.raises(SpoolError):  # within REOPEN_EVERY_S: the same error, no disk access
        s.open()
    assert time.monotonic() - t < 0.1
