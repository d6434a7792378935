"""The fleet run of issue 21: one Mosquitto, many stations' publishers and one real daemon,
a broker outage in the middle; what arrives, how late, how much waits in the spools, what
it costs. Prints a table, writes a JSON report, asserts nothing (pytest does not collect it:
no test_ prefix); its last line says "nothing lost: yes" or "no".

    .venv/bin/python tests/bench_mqtt_fleet.py                       # 50 stations, 300 s, 30 s outage
    .venv/bin/python tests/bench_mqtt_fleet.py --seconds 20 --outage-s 5 --stations 10   # a smoke run

What runs, all on 127.0.0.1:

- one real Mosquitto (tests/mqtt_broker.py: password file, persistence on), stopped (SIGTERM)
  for `--outage-s` in the middle of the run and started again on the same port;
- a historian: tests/mqtt_broker.py's Subscriber (QoS 1, persistent session: what comes
  while it is away waits in the broker) on `plcbridge/fleet/#`, every message kept with its
  receive time (this process, which does nothing else heavy);
- `--stations` stations' publishers, the project's own (plcbridge/mqtt/sink.py's MqttSink:
  the SQLite spool with its fsyncs and the paho-mqtt publisher thread, each station with its
  own config from parse_config, client id, spool file and a small fake Station for the
  status facts) behind the journal's seam exactly as the daemon puts them there
  (plcbridge/sinks.py's SinkFanout: a bounded queue and a "sink-mqtt" thread per station),
  spread over `--processes` processes; one thread per station makes a synthetic decision
  every 1/`--rate` s (tests/bench_mqtt.py's record) and offers it to the seam;
- one real daemon (`plcbridge run`, triggered, the PLC simulator `plcbridge sim modbus`
  raising `--daemon-trigger-hz` triggers a second, builtin:demo model, synthetic camera)
  with `[mqtt]` to the same broker, started after the publisher processes are up (their
  start-up is the bench's, not the daemon's to bear); its metrics endpoint on 127.0.0.1
  gives its backlog each second and, scraped at both ends of the run, its write-loop
  figures for the measured window alone.

Every MQTT setting is the shipped default (reconnect backoff 1 s doubling to 60 s with
+-20 % jitter, 20 in flight, QoS 1) but the broker, the credentials, the site and line and
the spool path: the drain time after the outage is what a plant with defaults sees.

After `--seconds` the stations stop deciding; each process waits (at most `--drain-timeout`)
until its spools are empty, closes its sinks (offline status, DISCONNECT) and reports; the
daemon is stopped (SIGTERM: its sink's goodbye publishes what is left), then the simulator;
the historian is given until nothing more arrives. Then, per station: decisions sent (offered
to the seam, spooled), received (unique decision ids), duplicates, missing (sent, never
received), out of order (a first arrival older than one that arrived before it); the delay
from the decision (the payload's `time_utc`) to the historian, over all, for the decisions
made while the broker was down and for those the outage did not touch; the spools' backlog
(sampled every second); how long after the broker came back each station reconnected and
its backlog arrived; the CPU of the broker, the publisher processes, the daemon and the
historian; the daemon's PLC simulator summary (every trigger answered?) and write-loop
lateness. Figures and what they mean: docs/benchmarks.md, "MQTT fleet".

`--workdir DIR` keeps the broker's log, the daemon's log and summary, the spools and the
publisher processes' reports. SIGINT and SIGTERM stop every process it started.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mqtt_broker import MOSQUITTO, PASSWORD, USERNAME, Mosquitto  # noqa: E402

SITE = "fleet"
DAEMON = "daemon"  # the real daemon's station name (its line: line0)
ENV = "BENCH_MQTT_PASSWORD"
CONNECT_TIMEOUT_S = 60.0
QUIET_S = 10.0  # the historian is done when nothing new arrived for this long (and nothing is missing)
_CONNECT_REASONS = ("lost", "refused", "timeout", "network", "ack_timeout", "auth", "not_authorized", "error")


def station_names(n: int) -> list[str]:
    return [f"st{i + 1:02d}" for i in range(n)]


def pct(values: list[float], digits: int = 1) -> dict[str, Any]:
    """n, p50, p90, p99, max (nearest rank: each a value really observed), rounded; None with no values."""
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    v = sorted(values)

    def at(q: float) -> float:
        return round(v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))], digits)

    return {"n": len(v), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(v[-1], digits)}


# ---------------------------------------------------------------------- a publisher process


class FakeStation:
    """The status and stats facts of a station that is not there (plcbridge/mqtt/sink.py: Station)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.results: Counter[str] = Counter()

    def facts(self) -> dict[str, Any]:
        return {"started_utc": None, "ready": True, "readiness": [], "mode": "triggered",
                "model": {"name": "fleet-bench", "version": 3, "loaded": True, "error": None},
                "plc": {"protocol": "modbus", "address": "127.0.0.1:502", "connected": True, "inputs_ok": True,
                        "last_error": None},
                "camera": {"source": "synthetic", "ok": True}, "software": {"version": "bench"}}

    def totals(self) -> dict[str, Any]:
        return {"results": dict(self.results), "failsafes_by_fault": {}, "write_loop": {}}


def make_record(station: str, i: int) -> Any:
    """A synthetic triggered decision as the journal hands it to the sinks (tests/bench_mqtt.py's)."""
    from plcbridge.contract import FaultCode, ResultCode
    from plcbridge.decision import Decision, Request
    from plcbridge.journal import new_decision_id
    from plcbridge.sinks import DecisionRecord

    t = time.monotonic()
    result = ResultCode.FAIL if i % 10 == 0 else ResultCode.PASS
    d = Decision(result, FaultCode.NONE, 0.9 if result is ResultCode.FAIL else 0.1, t, 3, i, t - 0.02, None, 12.3,
                 Request(i, 100_000 + i, t - 0.025, plc_session=1))
    decision_id = new_decision_id()
    fields = {"decision_id": decision_id, "station": station, "result": result.name, "score": d.score, "fault": "NONE",
              "model_version": 3, "trigger_seq": i, "part_id": 100_000 + i, "plc_session": 1,
              "t_trigger_mono": round(t - 0.025, 6), "frame_seq": i, "t_capture_mono": round(t - 0.02, 6),
              "latency_ms": 20.1, "infer_ms": 12.3, "truth": "pass"}
    return DecisionRecord(decision_id, fields, d, None)


class _Events(logging.Handler):
    """Counts the publishers' log events by name (and prints the first few WARNING+ lines)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()
        self.printed = 0

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", record.getMessage()[:40])
        self.counts[event] += 1
        if record.levelno >= logging.WARNING and self.printed < 20:
            self.printed += 1
            print(f"[{record.threadName}] {event}: {getattr(record, 'reason', record.getMessage())}", file=sys.stderr)


def run_worker(a: argparse.Namespace) -> None:
    """One publisher process: stations a.first .. a.first + a.count - 1; control on stdin, report to a.out."""
    from plcbridge.config import load_config, parse_config
    from plcbridge.metrics import Metrics
    from plcbridge.mqtt.sink import MqttSink
    from plcbridge.sinks import SinkFanout

    events = _Events()
    logging.getLogger("plcbridge").addHandler(events)
    logging.getLogger("plcbridge").setLevel(logging.INFO)
    names = station_names(a.first + a.count)[a.first:]
    spool_dir = Path(a.spool_dir)
    base = load_config(None, env={}).model_dump(mode="json")
    stations: list[dict[str, Any]] = []
    for name in names:
        raw = json.loads(json.dumps(base))
        raw["station"]["name"] = name
        raw["metrics"]["enabled"] = False
        raw["mqtt"].update(enabled=True, host="127.0.0.1", port=a.port, username=USERNAME, password_env=ENV, site=SITE,
                           line=a.line, spool_path=str(spool_dir / f"{name}.sqlite"))
        cfg = parse_config(raw, f"<fleet {name}>", env={})
        metrics = Metrics()
        facts = FakeStation(name)
        sink = MqttSink(cfg, metrics, facts, env={ENV: PASSWORD})
        fanout = SinkFanout(metrics)
        fanout.add(sink, queue_size=cfg.mqtt.queue)
        stations.append({"name": name, "sink": sink, "fanout": fanout, "metrics": metrics, "facts": facts, "ids": [],
                         "late_max_ms": 0.0, "connects": []})
    make_record(names[0], 0)  # imports and first calls paid before anything is measured
    for s in stations:
        s["sink"].start()
    end = time.monotonic() + CONNECT_TIMEOUT_S
    while not all(s["sink"].publisher.connected for s in stations):
        if time.monotonic() > end:
            print("not connected: " + " ".join(s["name"] for s in stations if not s["sink"].publisher.connected), flush=True)
            sys.exit(1)
        time.sleep(0.05)
    print("connected", flush=True)
    t0_wall = float(sys.stdin.readline())
    t0 = time.monotonic() + (t0_wall - time.time())
    stop_at = t0 + a.seconds
    cpu_start: list[float] = []

    done = threading.Event()
    samples: list[list[Any]] = []  # [wall second, [messages], [bytes], [oldest age s], connected]

    def sampler() -> None:
        last_connect = {s["name"]: s["sink"].publisher.connected_at for s in stations}
        while not done.is_set():
            nxt = math.floor(time.time()) + 1
            if done.wait(max(0.0, nxt - time.time())):
                return
            row: list[Any] = [nxt, [], [], [], 0]
            for s in stations:
                b = s["sink"].spool.backlog()
                row[1].append(b.messages)
                row[2].append(b.bytes)
                row[3].append(None if b.oldest_age_s is None else round(b.oldest_age_s, 2))
                pub = s["sink"].publisher
                row[4] += bool(pub.connected)
                if pub.connected_at != last_connect[s["name"]]:
                    last_connect[s["name"]] = pub.connected_at
                    s["connects"].append(pub.connected_at)
            samples.append(row)

    def produce(s: dict[str, Any], phase: float) -> None:
        i = 0
        while True:
            deadline = t0 + phase + i / a.rate
            if deadline >= stop_at:
                return
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                s["late_max_ms"] = max(s["late_max_ms"], -delay * 1000)
            record = make_record(s["name"], i)
            s["facts"].results[record.fields["result"]] += 1
            s["ids"].append(record.decision_id)
            s["fanout"].offer(record)
            i += 1

    sampling = threading.Thread(target=sampler, name="fleet-sampler", daemon=True)
    sampling.start()
    producers = [threading.Thread(target=produce, args=(s, (j / len(stations)) / a.rate), name=f"fleet-{s['name']}",
                                  daemon=True) for j, s in enumerate(stations)]
    time.sleep(max(0.0, t0 - time.monotonic()))
    cpu_start.append(time.process_time())
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    cpu_publish = time.process_time() - cpu_start[0]
    wall_publish = time.monotonic() - t0

    def handed_over(s: dict[str, Any]) -> bool:
        get = s["metrics"].registry.get_sample_value
        seam = sum(get("plcbridge_sink_dropped_total", {"sink": "mqtt", "reason": r}) or 0 for r in ("queue_full", "error"))
        spool = sum(get("plcbridge_mqtt_dropped_total", {"reason": r}) or 0 for r in ("spool_error", "too_large"))
        return (get("plcbridge_mqtt_spooled_total") or 0) + seam + spool >= len(s["ids"])

    t_stop = time.monotonic()
    end = t_stop + a.drain_timeout
    drained = False
    while time.monotonic() < end:
        if all(handed_over(s) and s["sink"].spool.backlog().messages == 0 for s in stations):
            drained = True
            break
        time.sleep(0.05)
    drain_after_stop_s = time.monotonic() - t_stop
    cpu_total = time.process_time() - cpu_start[0]
    done.set()
    sampling.join(2)
    out_stations = []
    for s in stations:
        sink = s["sink"]
        get = s["metrics"].registry.get_sample_value
        backlog = sink.spool.backlog()
        out_stations.append({
            "name": s["name"], "line": a.line, "ids": s["ids"], "late_max_ms": round(s["late_max_ms"], 1),
            "counts": sink.counts(),
            "seam_dropped": {r: int(get("plcbridge_sink_dropped_total", {"sink": "mqtt", "reason": r}) or 0)
                             for r in ("queue_full", "error")},
            "spool_dropped": {r: int(get("plcbridge_mqtt_dropped_total", {"reason": r}) or 0)
                              for r in ("spool_bytes", "spool_age", "spool_error", "too_large", "rejected")},
            "connect_errors": {r: int(v) for r in _CONNECT_REASONS
                               if (v := get("plcbridge_mqtt_connect_errors_total", {"reason": r}) or 0)},
            "sessions": sink.publisher.sessions, "connects_wall": s["connects"],
            "left_in_spool": backlog.messages,
        })
    closers = [threading.Thread(target=s["fanout"].close, args=(2.0,)) for s in stations]
    for c in closers:
        c.start()
    for c in closers:
        c.join(10)
    ru = os.times()
    report = {"line": a.line, "stations": out_stations, "samples": samples, "drained": drained,
              "drain_after_stop_s": round(drain_after_stop_s, 2), "cpu_publish_s": round(cpu_publish, 3),
              "wall_publish_s": round(wall_publish, 3), "cpu_publish_and_drain_s": round(cpu_total, 3),
              "cpu_process_s": round(ru.user + ru.system, 3), "events": dict(events.counts)}
    Path(a.out).write_text(json.dumps(report))
    print("done", flush=True)


# ---------------------------------------------------------------------- the daemon


def daemon_toml(name: str, plc_port: int, metrics_port: int, mqtt_port: int, spool: Path) -> str:
    return "\n".join([
        "# Generated by tests/bench_mqtt_fleet.py.",
        "[station]", f'name = "{name}"', 'mode = "triggered"',
        "[camera]", 'source = "synthetic"', "fps = 30",
        "[model]", 'manifest = "builtin:demo"',
        "[plc]", 'protocol = "modbus"', 'host = "127.0.0.1"', f"port = {plc_port}",
        "[logging]", 'format = "json"', 'level = "info"',
        "[metrics]", 'host = "127.0.0.1"', f"port = {metrics_port}",
        "[mqtt]", "enabled = true", 'host = "127.0.0.1"', f"port = {mqtt_port}", f'username = "{USERNAME}"',
        f'password_env = "{ENV}"', f'site = "{SITE}"', 'line = "line0"', f"spool_path = {json.dumps(str(spool))}", "",
    ])


def scrape(port: int) -> dict[str, float]:
    """Every sample of a daemon's /metrics, by its name with labels as exposed ({} when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1.0) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def window(m0: dict[str, float], m1: dict[str, float], prefix: str) -> float:
    """How much the samples named `prefix` (every label) grew between two scrapes."""
    return sum(v for k, v in m1.items() if k.startswith(prefix)) - sum(v for k, v in m0.items() if k.startswith(prefix))


# ---------------------------------------------------------------------- the analysis


def parse_utc(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def analyse_station(name: str, sent: list[str], msgs: list[Any], down: float, up: float) -> dict[str, Any]:
    """One station's decisions as the historian got them, against the ids it sent, in order."""
    index = {k: i for i, k in enumerate(sent)}
    first: dict[str, tuple[float, float, bytes]] = {}  # id -> (decided, received, payload)
    dup = dup_differ = foreign = 0
    out_of_order = 0
    newest = -1
    for m in msgs:
        p = json.loads(m.payload)
        key = p["decision_id"]
        if key in first:
            dup += 1
            dup_differ += first[key][2] != m.payload
            continue
        first[key] = (parse_utc(p["time_utc"]), m.received, m.payload)
        i = index.get(key)
        if i is None:
            foreign += 1
            continue
        if i < newest:
            out_of_order += 1
        newest = max(newest, i)
    missing = [k for k in sent if k not in first]
    delays = [(r - d) * 1000 for k, (d, r, _) in first.items() if k in index]
    during = [(r - d) * 1000 for k, (d, r, _) in first.items() if k in index and down <= d < up]
    before_up = [r for k, (d, r, _) in first.items() if k in index and d < up]
    settled = max(before_up) if before_up else up
    # Untouched by the outage: received before the broker went, or decided after the last of
    # this station's outage backlog had arrived.
    steady = [(r - d) * 1000 for k, (d, r, _) in first.items() if k in index and (r < down or d > settled)]
    return {"station": name, "sent": len(sent), "received": sum(1 for k in first if k in index), "duplicates": dup,
            "duplicates_with_other_bytes": dup_differ, "not_sent_here": foreign, "missing": len(missing),
            "missing_ids": missing[:5], "out_of_order": out_of_order, "delay_ms": pct(delays),
            "delay_outage_ms": pct(during), "delay_steady_ms": pct(steady), "last_pre_up_received_wall": max(before_up) if before_up else None,
            "_delays": delays, "_during": during, "_steady": steady}


# ---------------------------------------------------------------------- the run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=300.0, help="how long the stations decide (default 300)")
    p.add_argument("--outage-s", type=float, default=30.0, help="the broker is down this long in the middle (default 30)")
    p.add_argument("--stations", type=int, default=50, help="synthetic stations (default 50), besides the daemon")
    p.add_argument("--processes", type=int, default=5, help="publisher processes they are spread over (default 5)")
    p.add_argument("--rate", type=float, default=10.0, help="decisions per second per station (default 10)")
    p.add_argument("--daemon-trigger-hz", type=float, default=10.0, help="the simulator's trigger rate (default 10)")
    p.add_argument("--no-daemon", action="store_true", help="the synthetic stations only")
    p.add_argument("--daemon-niceness", type=int, default=0, help="start the daemon at this niceness (default 0; "
                   "systemd/plcbridge.service starts it at -10, which needs root)")
    p.add_argument("--drain-timeout", type=float, default=180.0, help="at most this long for the spools to drain")
    p.add_argument("--out", type=Path, default=None, help="the JSON report (default bench-out/mqtt-fleet-*.json)")
    p.add_argument("--workdir", type=Path, default=None, help="a new folder to run in, kept afterwards (default: a temporary one)")
    # internal: one publisher process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--line", default="line1", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--spool-dir", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        run_worker(a)
        return
    if MOSQUITTO is None:
        sys.exit("mosquitto is not installed (as root: make mqtt-test-deps)")

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # SIGINT and SIGTERM (a background job ignores SIGINT) end the run through `finally`: the
    # broker, the daemon, the simulator and the publisher processes are stopped, never left behind.
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    out = a.out or Path("bench-out") / f"mqtt-fleet-{a.stations}x{a.rate:g}-{a.seconds:g}s-outage{a.outage_s:g}s.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if a.workdir is not None:  # kept: the broker's log, the daemon's log, the spools, the processes' reports
        a.workdir.mkdir(parents=True, exist_ok=False)
        report = run(a, a.workdir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="mqtt-fleet-") as work:
            report = run(a, Path(work))
    report["meta"]["command"] = shlex.join([".venv/bin/python", "tests/bench_mqtt_fleet.py", *sys.argv[1:]])
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"report: {out}")
    print(f"nothing lost: {'yes' if report['nothing_lost'] else 'no'}")


def say(msg: str) -> None:
    print(f"fleet: {msg}", file=sys.stderr, flush=True)


def run(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    import paho.mqtt

    from plcbridge.simulators.process import start_simulator, stop_simulator
    from plcbridge.tools.bench.run import _DaemonLog, _free_tcp_port, _proc_sample

    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    spool_dir = work / "spools"
    spool_dir.mkdir()
    broker = Mosquitto(work / "mosquitto")
    broker.start()
    version = next((line.split("version", 1)[1].split()[0] for line in broker.log().splitlines() if "version" in line), None)
    sub = broker.subscriber(f"plcbridge/{SITE}/#", client_id="fleet-historian")
    env = {**os.environ, ENV: PASSWORD, "PYTHONUNBUFFERED": "1"}
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "PLCBRIDGE_PLC_HOST", "PLCBRIDGE_PLC_PORT"):
        env.pop(var, None)
    sim = daemon = None
    workers: list[subprocess.Popen[str]] = []
    daemon_backlog: list[list[Any]] = []
    log: Any = None
    metrics_port = 0
    m0: dict[str, float] = {}
    m1: dict[str, float] = {}
    try:
        # -- the publisher processes (first)
        per = math.ceil(a.stations / a.processes)
        for k in range(a.processes):
            first, count = k * per, min(per, a.stations - k * per)
            if count <= 0:
                break
            cmd = [sys.executable, __file__, "--worker", "--first", str(first), "--count", str(count), "--line",
                   f"line{k + 1}", "--port", str(broker.port), "--spool-dir", str(spool_dir), "--rate", str(a.rate),
                   "--seconds", str(a.seconds), "--drain-timeout", str(a.drain_timeout), "--out", str(work / f"worker{k}.json")]
            workers.append(subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=open(work / f"worker{k}.err", "w"), text=True))
        for k, w in enumerate(workers):
            line = w.stdout.readline().strip() if w.stdout else ""
            if line != "connected":
                raise RuntimeError(f"publisher process {k}: {line or 'exited'}; {(work / f'worker{k}.err').read_text()[-3000:]}")
        # Started before the daemon: their start-up (interpreters importing, spools opened, all at
        # once) is the bench's, and must not land on the daemon's write loop.
        say(f"{a.stations} stations in {len(workers)} processes connected")

        # -- the daemon and its PLC simulator
        if not a.no_daemon:
            sim, plc_port = start_simulator("triggered", a.daemon_trigger_hz, protocol="modbus")
            metrics_port = _free_tcp_port()
            cfg = work / "daemon.toml"
            cfg.write_text(daemon_toml(DAEMON, plc_port, metrics_port, broker.port, spool_dir / f"{DAEMON}.sqlite"))
            daemon = subprocess.Popen([sys.executable, "-m", "plcbridge", "run", "--config", str(cfg), "--summary-json",
                                       str(work / "daemon-summary.json")], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True,
                                      preexec_fn=(lambda: os.nice(a.daemon_niceness)) if a.daemon_niceness else None)
            log = _DaemonLog(daemon.stdout, work / "daemon-log.jsonl")
            end = time.monotonic() + CONNECT_TIMEOUT_S
            while not scrape(metrics_port).get("plcbridge_mqtt_connected"):
                if daemon.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"the daemon did not connect to the broker; its log: {work / 'daemon-log.jsonl'}:\n"
                                       + (work / "daemon-log.jsonl").read_text()[-3000:])
                time.sleep(0.1)
            say(f"daemon up, {DAEMON!r} publishing (the simulator at {a.daemon_trigger_hz:g} triggers/s)")

        # -- the run
        time.sleep(3.0)  # the daemon's own start-up done
        say(f"{a.stations} stations, {a.rate:g} decisions/s each for {a.seconds:g} s, the broker down for "
            f"{a.outage_s:g} s in the middle")
        t0 = math.floor(time.time()) + 1.0
        for w in workers:
            assert w.stdin is not None
            w.stdin.write(f"{t0}\n")
            w.stdin.flush()
        time.sleep(max(0.0, t0 - time.time()))
        broker_cpu0, me_cpu0 = broker.cpu_seconds(), time.process_time()
        d0 = _proc_sample(daemon.pid) if daemon is not None else None
        m0 = scrape(metrics_port) if metrics_port else {}
        down_at = t0 + (a.seconds - a.outage_s) / 2
        t_down = t_up = None
        next_tick = t0 + 1
        while True:
            now = time.time()
            if t_down is None and now >= down_at:
                broker.stop()
                t_down = time.time()
                say(f"broker stopped at +{t_down - t0:.1f} s")
            elif t_down is not None and t_up is None and now >= t_down + a.outage_s:
                broker.start()
                t_up = time.time()
                say(f"broker started again at +{t_up - t0:.1f} s (down {t_up - t_down:.1f} s)")
            if now >= next_tick:
                if metrics_port:
                    m = scrape(metrics_port)
                    daemon_backlog.append([round(next_tick), m.get("plcbridge_mqtt_backlog_messages"),
                                           m.get("plcbridge_mqtt_backlog_bytes")])
                if round(next_tick - t0) % 10 == 0:
                    say(f"+{next_tick - t0:.0f} s: {sub.count()} messages at the historian, load {os.getloadavg()[0]:.2f}")
                next_tick += 1
            if t_up is not None and now >= t0 + a.seconds:
                break
            time.sleep(0.05)
        t_end = time.time()
        broker_cpu_run, me_cpu_run = broker.cpu_seconds() - broker_cpu0, time.process_time() - me_cpu0
        d1 = _proc_sample(daemon.pid) if daemon is not None else None
        m1 = scrape(metrics_port) if metrics_port else {}
        say("stations stopped deciding; waiting for the spools to drain")
        results = []
        for k, w in enumerate(workers):
            try:
                w.wait(a.drain_timeout + 60)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
            err = (work / f"worker{k}.err").read_text()
            try:
                results.append(json.loads((work / f"worker{k}.json").read_text()))
            except (OSError, json.JSONDecodeError):
                raise RuntimeError(f"publisher process {k} left no report (exit code {w.returncode}): {err[-3000:]}") from None
        t_workers_done = time.time()
        sim_summary: dict[str, Any] | None = None
        daemon_summary: dict[str, Any] | None = None
        daemon_ids: list[str] = []
        daemon_left: list[str] = []
        daemon_events: list[list[Any]] = []
        daemon_rc = None
        if daemon is not None and sim is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon_rc = daemon.wait(20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon_rc = daemon.wait()
            log.join(5)
            sim_summary = stop_simulator(sim)
            sim = None
            try:
                daemon_summary = json.loads((work / "daemon-summary.json").read_text())
            except (OSError, json.JSONDecodeError):
                daemon_summary = None
            daemon_ids = [e["decision_id"] for e in log.events if e.get("event") == "decision"]
            for text in (work / "daemon-log.jsonl").read_text().splitlines():  # its whole log, copied by _DaemonLog
                try:
                    e = json.loads(text) if text.startswith("{") else {}
                except json.JSONDecodeError:
                    continue
                if "ts" in e and (e.get("result") == "FAILSAFE" or e.get("event") != "decision" and e.get("level") in
                                  ("warning", "error", "critical")) and not e.get("event", "").startswith("mqtt_"):
                    daemon_events.append([round(e["ts"] - t0, 2), e.get("event"), *[
                        e[k] for k in ("missed_ticks", "behind_ms", "result", "fault", "reason", "suppressed") if k in e]])
            from plcbridge.mqtt.spool import Spool

            spool = Spool(spool_dir / f"{DAEMON}.sqlite", 10**9, 10**9)
            daemon_left = [m.key for m in spool.after(0, 1_000_000)]
            spool.close()

        # -- the historian: until every sent id arrived, or nothing new for QUIET_S
        sent: dict[str, list[str]] = {s["name"]: s["ids"] for r in results for s in r["stations"]}
        if daemon is not None:
            sent[DAEMON] = daemon_ids
        wanted = {k for ids in sent.values() for k in ids}
        got: set[str] = set()
        seen, last_change = 0, time.monotonic()
        while True:
            new = sub.messages()[seen:]
            if new:
                seen += len(new)
                last_change = time.monotonic()
                got.update(json.loads(m.payload)["decision_id"] for m in new if m.topic.endswith("/decision"))
            if wanted <= got or time.monotonic() - last_change > QUIET_S:
                break
            time.sleep(1.0)
        broker_cpu_total = broker.cpu_seconds()
        messages = sub.messages()
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if sim is not None:
            stop_simulator(sim)
        sub.close()
        broker.close()
    assert t_down is not None and t_up is not None

    # -- counting
    by_station: dict[str, list[Any]] = {}
    kinds: Counter[str] = Counter()
    wills: list[float] = []  # when the historian got a last will ("offline", connection_lost), s after the start
    statuses: dict[str, list[list[Any]]] = {}  # station -> [[received s after the start, online | stopped | connection_lost]]
    for m in messages:
        parts = m.topic.split("/")
        kind = parts[-1]
        station = parts[-2]
        if kind == "decision":
            by_station.setdefault(station, []).append(m)
        elif kind == "status":
            j = m.json()
            kinds[f"status {j.get('state')}" + (f" ({j['reason']})" if j.get("reason") else "")] += 1
            if j.get("reason") == "connection_lost":
                wills.append(round(m.received - t0, 1))
            statuses.setdefault(station, []).append([round(m.received - t0, 2), j.get("reason") or j.get("state")])
        else:
            kinds[kind] += 1
    info = {s["name"]: s for r in results for s in r["stations"]}
    rows = []
    for name in [*station_names(a.stations), *([DAEMON] if daemon_ids or not a.no_daemon else [])]:
        row = analyse_station(name, sent.get(name, []), by_station.get(name, []), t_down, t_up)
        s = info.get(name)
        if s is not None:
            row.update(spooled=s["counts"]["spooled"], seam_dropped=sum(s["seam_dropped"].values()),
                       spool_dropped=sum(s["spool_dropped"].values()), left_in_spool=s["left_in_spool"],
                       sessions=s["sessions"], connect_errors=s["connect_errors"], producer_late_max_ms=s["late_max_ms"])
            after = [c for c in s["connects_wall"] if c is not None and c >= t_up - 1]
            row["reconnected_after_s"] = round(min(after) - t_up, 2) if after else None
        else:
            row.update(left_in_spool=len(daemon_left), left_in_spool_ids=daemon_left[:5])
        row["statuses"] = statuses.get(name, [])
        last = row.pop("last_pre_up_received_wall")
        row["backlog_arrived_after_s"] = None if last is None else round(last - t_up, 2)
        rows.append(row)
    fleet = [r for r in rows if r["station"] != DAEMON]
    all_delays = [d for r in rows for d in r.pop("_delays")]
    all_during = [d for r in rows for d in r.pop("_during")]
    all_steady = [d for r in rows for d in r.pop("_steady")]

    # -- the spools' backlog, second by second (the fleet's processes sampled at whole wall seconds)
    total: dict[int, list[int]] = {}
    per_station_max_msgs, per_station_max_bytes = 0, 0
    steady_age: dict[int, float] = {}
    for r in results:
        for t, msgs, byts, ages, _conn in r["samples"]:
            cell = total.setdefault(int(t), [0, 0, 0])
            cell[0] += sum(msgs)
            cell[1] += sum(byts)
            cell[2] += 1
            per_station_max_msgs = max(per_station_max_msgs, max(msgs, default=0))
            per_station_max_bytes = max(per_station_max_bytes, max(byts, default=0))
            oldest = max((x for x in ages if x is not None), default=0.0)
            steady_age[int(t)] = max(steady_age.get(int(t), 0.0), oldest)
    complete = {t: v for t, v in total.items() if v[2] == len(results)}
    peak_t = max(complete, key=lambda t: complete[t][0]) if complete else None
    pre = [v[0] for t, v in complete.items() if t0 + 5 <= t < t_down]
    steady = sorted(pre)[len(pre) // 2] if pre else None
    # Drained: the first second after the broker came back from which on no station's spool holds a
    # message older than 1 s (in steady state each holds the decision or two whose PUBACK it has
    # not read yet: LAZY_ACK_S), through the end of the run.
    after_up = sorted(t for t in complete if t_up <= t <= t_end)
    drained_at = None
    for t in after_up:
        if all(steady_age.get(u, 0.0) < 1.0 for u in after_up if u >= t):
            drained_at = t
            break
    daemon_peak = max(daemon_backlog, key=lambda x: x[1] or 0) if daemon_backlog else None

    # -- CPU
    wall_run = t_end - t0
    pub_cpu = sum(r["cpu_publish_s"] for r in results)
    sent_in_run = sum(len(s["ids"]) for r in results for s in r["stations"])
    daemon_cpu = (d1[0] - d0[0]) if d0 and d1 else None

    lost = sum(r["missing"] for r in rows)
    report: dict[str, Any] = {
        "meta": {"date": started.isoformat(timespec="seconds"), "host": {"cpus": os.cpu_count(),
                 "load_avg_before": [round(x, 2) for x in load_before],
                 "load_avg_after": [round(x, 2) for x in os.getloadavg()]},
                 "versions": {"python": sys.version.split()[0], "mosquitto": version, "paho-mqtt": paho.mqtt.__version__}},
        "options": {"stations": a.stations, "processes": len(workers), "rate_per_station": a.rate, "seconds": a.seconds,
                    "outage_s": a.outage_s, "daemon": not a.no_daemon, "daemon_trigger_hz": a.daemon_trigger_hz,
                    "daemon_niceness": a.daemon_niceness,
                    "mqtt_settings": "defaults (QoS 1, inflight 20, reconnect 1 s doubling to 60 s, +-20 % jitter)"},
        "timeline_s": {"broker_down": round(t_down - t0, 2), "broker_up": round(t_up - t0, 2), "down_for": round(t_up - t_down, 2),
                       "stations_stopped": round(t_end - t0, 2), "spools_drained_and_closed": round(t_workers_done - t0, 2)},
        "nothing_lost": lost == 0 and all(r["drained"] for r in results),
        "totals": {
            "sent": sum(r["sent"] for r in rows), "received": sum(r["received"] for r in rows),
            "duplicates": sum(r["duplicates"] for r in rows),
            "duplicates_with_other_bytes": sum(r["duplicates_with_other_bytes"] for r in rows),
            "missing": lost, "out_of_order": sum(r["out_of_order"] for r in rows),
            "seam_dropped": sum(r.get("seam_dropped", 0) for r in rows),
            "spool_dropped": sum(r.get("spool_dropped", 0) for r in rows),
            "left_in_spools": sum(r.get("left_in_spool", 0) for r in rows),
            "other_messages": dict(sorted(kinds.items())), "last_wills_received_at_s": sorted(wills),
            "delay_ms": pct(all_delays), "delay_outage_ms": pct(all_during), "delay_steady_ms": pct(all_steady),
            "fleet_decisions_per_s": round(sent_in_run / wall_run, 1),
        },
        "spool": {
            "steady_total_backlog_messages": steady,
            "peak_total_backlog_messages": complete[peak_t][0] if peak_t else None,
            "peak_total_backlog_bytes": complete[peak_t][1] if peak_t else None,
            "peak_at_s": round(peak_t - t0, 1) if peak_t else None,
            "peak_station_backlog_messages": per_station_max_msgs, "peak_station_backlog_bytes": per_station_max_bytes,
            "daemon_peak_backlog": None if daemon_peak is None else {"messages": daemon_peak[1], "bytes": daemon_peak[2],
                                                                     "at_s": round(daemon_peak[0] - t0, 1)},
            "drained_after_broker_up_s": None if drained_at is None else round(drained_at - t_up, 1),
            "drain_definition": "the first whole second after the broker came back from which no station's spool "
                                "held a message older than 1 s (sampled once a second)",
            "reconnected_after_broker_up_s": pct([r["reconnected_after_s"] for r in fleet
                                                  if r.get("reconnected_after_s") is not None], 2),
            "backlog_arrived_after_broker_up_s": pct([r["backlog_arrived_after_s"] for r in fleet
                                                      if r.get("backlog_arrived_after_s") is not None], 2),
            "after_stop_drained_in_s": max((r["drain_after_stop_s"] for r in results), default=None),
            "series": [[round(t - t0), v[0], v[1]] for t, v in sorted(complete.items())],
            "daemon_series": [[round(t - t0), m, b] for t, m, b in daemon_backlog],
        },
        "cpu": {
            "wall_s": round(wall_run, 1),
            "broker_s": round(broker_cpu_run, 2), "broker_cores": round(broker_cpu_run / wall_run, 3),
            "broker_us_per_message": round(broker_cpu_run / max(1, sent_in_run) * 1e6, 1),
            "broker_total_s": round(broker_cpu_total, 2),
            "publishers_s": round(pub_cpu, 2), "publishers_cores": round(pub_cpu / wall_run, 3),
            "publishers_us_per_message": round(pub_cpu / max(1, sent_in_run) * 1e6, 1),
            "publishers_per_process_cores": [round(r["cpu_publish_s"] / r["wall_publish_s"], 3) for r in results],
            "daemon_s": None if daemon_cpu is None else round(daemon_cpu, 2),
            "daemon_cores": None if daemon_cpu is None else round(daemon_cpu / wall_run, 3),
            "historian_s": round(me_cpu_run, 2), "historian_cores": round(me_cpu_run / wall_run, 3),
        },
        "daemon": None if daemon_summary is None else {
            "exit_code": daemon_rc, "decisions_journaled": len(daemon_ids),
            # The measured window (t0 .. the stations' stop, the outage inside it), from its metrics
            # scraped at both ends and its lateness samples (one per tick, in order) between them.
            "window": daemon_window(m0, m1, daemon_summary),
            "results": daemon_summary.get("results"), "write_loop": daemon_summary.get("write_loop"),
            "plc_link": daemon_summary.get("plc_link"), "queue_drops": daemon_summary.get("queue_drops"),
            "simulator": None if sim_summary is None else {
                k: sim_summary.get(k) for k in ("triggers_sent", "results", "failsafe_faults", "outstanding", "missing",
                                                "skipped", "collapsed", "unaccounted", "heartbeat_alarms",
                                                "heartbeat_longest_gap_ms", "protocol_errors", "latency_ms")},
            # When the write loop fell behind or answered fail-safe, s after the start (the broker: down
            # and up in timeline_s): does it follow the outage, the drain, or neither?
            "events_at_s": daemon_events,
        },
        "publisher_events": dict(sum((Counter(r["events"]) for r in results), Counter())),
        "stations": rows,
    }
    print_table(report)
    return report


def daemon_window(m0: dict[str, float], m1: dict[str, float], summary: dict[str, Any]) -> dict[str, Any] | None:
    if not m0 or not m1:
        return None
    n0, n1 = int(m0.get("plcbridge_write_lateness_seconds_count", 0)), int(m1.get("plcbridge_write_lateness_seconds_count", 0))
    late = summary.get("lateness_samples_ms", [])[n0:n1]
    return {"ticks": n1 - n0, "lateness_ms": pct(late, 3) if late else None,
            "overruns": int(window(m0, m1, "plcbridge_write_overruns_total")),
            "failsafes": int(window(m0, m1, "plcbridge_failsafe_total")),
            "decisions": int(window(m0, m1, "plcbridge_decisions_total")),
            "plc_inputs_stale": int(window(m0, m1, "plcbridge_plc_inputs_stale_total")),
            "plc_late_exchanges": int(window(m0, m1, "plcbridge_plc_late_exchanges_total")),
            "sink_dropped": int(window(m0, m1, "plcbridge_sink_dropped_total"))}


def print_table(r: dict[str, Any]) -> None:
    def f(x: Any) -> str:
        return "-" if x is None else (f"{x:g}" if isinstance(x, float) else str(x))

    o, t, s, c = r["options"], r["totals"], r["spool"], r["cpu"]
    print(f"\nMQTT fleet: {o['stations']} stations x {o['rate_per_station']:g}/s in {o['processes']} processes"
          f"{' + 1 daemon' if o['daemon'] else ''}, {o['seconds']:g} s, broker down {r['timeline_s']['down_for']:g} s "
          f"(+{r['timeline_s']['broker_down']:g} .. +{r['timeline_s']['broker_up']:g} s)")
    print(f"{'station':8} {'sent':>6} {'recv':>6} {'dup':>4} {'miss':>4} {'ooo':>4} {'p50 ms':>7} {'p99 ms':>8} "
          f"{'outage p50':>10} {'reconn s':>8} {'drained s':>9}")
    for row in r["stations"]:
        print(f"{row['station']:8} {row['sent']:6} {row['received']:6} {row['duplicates']:4} {row['missing']:4} "
              f"{row['out_of_order']:4} {f(row['delay_ms']['p50']):>7} {f(row['delay_ms']['p99']):>8} "
              f"{f(row['delay_outage_ms']['p50']):>10} {f(row.get('reconnected_after_s')):>8} "
              f"{f(row.get('backlog_arrived_after_s')):>9}")
    print(f"{'all':8} {t['sent']:6} {t['received']:6} {t['duplicates']:4} {t['missing']:4} {t['out_of_order']:4} "
          f"{f(t['delay_ms']['p50']):>7} {f(t['delay_ms']['p99']):>8} {f(t['delay_outage_ms']['p50']):>10}")
    print(f"delay decision -> historian: p50 {f(t['delay_ms']['p50'])} ms, p99 {f(t['delay_ms']['p99'])} ms, "
          f"max {f(t['delay_ms']['max'])} ms over {t['delay_ms']['n']} decisions; decided during the outage "
          f"({t['delay_outage_ms']['n']}): p50 {f(t['delay_outage_ms']['p50'])} ms, p99 {f(t['delay_outage_ms']['p99'])} ms; "
          f"with nothing waiting on the outage ({t['delay_steady_ms']['n']}): p50 {f(t['delay_steady_ms']['p50'])} ms, "
          f"p99 {f(t['delay_steady_ms']['p99'])} ms, max {f(t['delay_steady_ms']['max'])} ms")
    print(f"spools: steady total backlog {f(s['steady_total_backlog_messages'])} messages; peak total "
          f"{f(s['peak_total_backlog_messages'])} messages / {f(s['peak_total_backlog_bytes'])} bytes at "
          f"+{f(s['peak_at_s'])} s; peak one station {s['peak_station_backlog_messages']} / "
          f"{s['peak_station_backlog_bytes']} bytes; daemon peak {s['daemon_peak_backlog']}")
    rc, ba = s["reconnected_after_broker_up_s"], s["backlog_arrived_after_broker_up_s"]
    print(f"after the broker came back: stations reconnected after p50 {f(rc['p50'])} s, max {f(rc['max'])} s; "
          f"their outage backlog all arrived after p50 {f(ba['p50'])} s, max {f(ba['max'])} s; spools back to steady "
          f"state after {f(s['drained_after_broker_up_s'])} s")
    print(f"CPU over {c['wall_s']:g} s: broker {c['broker_cores']:g} cores ({c['broker_us_per_message']:g} us/message), "
          f"publishers {c['publishers_cores']:g} cores ({c['publishers_us_per_message']:g} us/message; per process "
          f"{c['publishers_per_process_cores']}), daemon {f(c['daemon_cores'])} cores, historian {c['historian_cores']:g} cores")
    d = r["daemon"]
    if d:
        sim = d["simulator"] or {}
        late = (d["write_loop"] or {}).get("lateness_ms", {})
        print(f"daemon: {d['decisions_journaled']} decisions, simulator: {sim.get('triggers_sent')} triggers, missing "
              f"{sim.get('missing')}, skipped {sim.get('skipped')}, unaccounted {sim.get('unaccounted')}, heartbeat alarms "
              f"{sim.get('heartbeat_alarms')}; write-loop lateness p99 {late.get('p99')} ms, overruns "
              f"{(d['write_loop'] or {}).get('overruns')} (the daemon's whole life)")
        w = d.get("window")
        if w:
            print(f"daemon in the measured window: {w['decisions']} decisions, {w['failsafes']} fail-safe, lateness "
                  f"p50/p99/max {w['lateness_ms'] and w['lateness_ms']['p50']}/{w['lateness_ms'] and w['lateness_ms']['p99']}/"
                  f"{w['lateness_ms'] and w['lateness_ms']['max']} ms, overruns {w['overruns']}, inputs stale "
                  f"{w['plc_inputs_stale']}, late exchanges {w['plc_late_exchanges']}")
    print(f"seam dropped {t['seam_dropped']}, spool dropped {t['spool_dropped']}, left in spools {t['left_in_spools']}, "
          f"duplicates {t['duplicates']} (other bytes {t['duplicates_with_other_bytes']}), other messages {t['other_messages']}")


if __name__ == "__main__":
    main()
