"""What publishing decisions over MQTT costs in CPU, at 30 decisions/s against a local
Mosquitto (tests/mqtt_broker.py): the project's publisher (plcbridge/mqtt: the seam, the
SQLite spool with its fsyncs, paho-mqtt driven by our thread) beside bare clients publishing
the same payloads at QoS 1 with no spool (paho-mqtt's own loop thread; aiomqtt and gmqtt when
importable), each in a fresh process. CPU per message = (the process's CPU while publishing
- its CPU for as long connected and idle) / messages acknowledged. Printed; nothing asserted.

    .venv/bin/python tests/bench_mqtt.py [--rate 30] [--seconds 60]
    PYTHONPATH=/path/with/aiomqtt-and-gmqtt .venv/bin/python tests/bench_mqtt.py   # the asyncio clients too
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mqtt_broker import PASSWORD, USERNAME, Mosquitto  # noqa: E402

TOPIC = "plcbridge/plant/l1/bench/decision"


def _record(i: int) -> Any:
    """A synthetic triggered decision as the journal hands it to the sinks."""
    from plcbridge.contract import FaultCode, ResultCode
    from plcbridge.decision import Decision, Request
    from plcbridge.journal import new_decision_id
    from plcbridge.sinks import DecisionRecord

    t = time.monotonic()
    result = ResultCode.FAIL if i % 10 == 0 else ResultCode.PASS
    d = Decision(result, FaultCode.NONE, 0.9 if result is ResultCode.FAIL else 0.1, t, 3, i, t - 0.02, None, 12.3,
                 Request(i, 100_000 + i, t - 0.025, plc_session=1))
    decision_id = new_decision_id()
    fields = {"decision_id": decision_id, "station": "bench", "result": result.name, "score": d.score, "fault": "NONE",
              "model_version": 3, "trigger_seq": i, "part_id": 100_000 + i, "plc_session": 1,
              "t_trigger_mono": round(t - 0.025, 6), "frame_seq": i, "t_capture_mono": round(t - 0.02, 6),
              "latency_ms": 20.1, "infer_ms": 12.3, "truth": "pass"}
    return DecisionRecord(decision_id, fields, d, None)


def _payload(i: int) -> bytes:
    from plcbridge.mqtt.messages import decision_message, encode

    return encode(decision_message(_record(i).fields, site="plant", line="l1", image="sampled"))


def _paced(rate: float, seconds: float, send: Callable[[int], None]) -> int:
    n = int(rate * seconds)
    t0 = time.monotonic()
    for i in range(n):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        send(i)
    return n


def _cpu() -> float:
    """This process's CPU seconds, every thread (CLOCK_PROCESS_CPUTIME_ID: ns, not clock ticks)."""
    return time.process_time()


class _Facts:
    def facts(self) -> dict[str, Any]:
        return {"ready": True, "readiness": [], "mode": "triggered", "model": {"version": 3, "loaded": True},
                "plc": {"protocol": "modbus", "address": "x", "connected": True, "inputs_ok": True},
                "camera": {"source": "synthetic", "ok": True}}

    def totals(self) -> dict[str, Any]:
        return {"results": {}, "failsafes_by_fault": {}, "write_loop": {}}


def run_sink(port: int, rate: float, seconds: float, folder: Path) -> dict[str, Any]:
    from plcbridge.config import load_config, parse_config
    from plcbridge.metrics import Metrics
    from plcbridge.mqtt.sink import MqttSink
    from plcbridge.sinks import SinkFanout

    raw = load_config(None, env={}).model_dump(mode="json")
    raw["station"]["name"] = "bench"
    raw["mqtt"].update(enabled=True, port=port, username=USERNAME, password_env="BENCH_MQTT_PASSWORD", site="plant", line="l1",
                       spool_path=str(folder / "spool.sqlite"), status_interval_s=30.0, stats_interval_s=60.0)
    cfg = parse_config(raw, "<bench>", env={})
    m = Metrics()
    sink = MqttSink(cfg, m, _Facts(), env={"BENCH_MQTT_PASSWORD": PASSWORD})
    fanout = SinkFanout(m)
    fanout.add(sink, queue_size=cfg.mqtt.queue)
    sink.start()
    while not sink.publisher.connected:
        time.sleep(0.05)
    time.sleep(1.0)
    c0 = _cpu()
    time.sleep(seconds)
    idle = _cpu() - c0
    c0, t0 = _cpu(), time.monotonic()
    n = _paced(rate, seconds, lambda i: fanout.offer(_record(i)))
    while m.registry.get_sample_value("plcbridge_mqtt_published_total", {"topic": "decision"}) < n:
        time.sleep(0.01)
    busy, wall = _cpu() - c0, time.monotonic() - t0
    fanout.close()
    return {"client": "plcbridge publisher + SQLite spool (paho-mqtt 2.2, own loop)", "messages": n, "idle_cpu_s": idle,
            "busy_cpu_s": busy, "wall_s": wall}


def run_paho(port: int, rate: float, seconds: float, _folder: Path) -> dict[str, Any]:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-paho")
    c.username_pw_set(USERNAME, PASSWORD)
    acked = [0]
    c.on_publish = lambda *_a: acked.__setitem__(0, acked[0] + 1)
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    while not c.is_connected():
        time.sleep(0.05)
    time.sleep(1.0)
    c0 = _cpu()
    time.sleep(seconds)
    idle = _cpu() - c0
    c0, t0 = _cpu(), time.monotonic()
    n = _paced(rate, seconds, lambda i: c.publish(TOPIC, _payload(i), qos=1))
    while acked[0] < n:
        time.sleep(0.01)
    busy, wall = _cpu() - c0, time.monotonic() - t0
    c.disconnect()
    c.loop_stop()
    return {"client": "paho-mqtt 2.2 bare (loop_start thread), no spool", "messages": n, "idle_cpu_s": idle,
            "busy_cpu_s": busy, "wall_s": wall}


def run_aiomqtt(port: int, rate: float, seconds: float, _folder: Path) -> dict[str, Any]:
    import aiomqtt

    async def main() -> dict[str, Any]:
        async with aiomqtt.Client("127.0.0.1", port, username=USERNAME, password=PASSWORD, identifier="bench-aiomqtt") as c:
            await asyncio.sleep(1.0)
            c0 = _cpu()
            await asyncio.sleep(seconds)
            idle = _cpu() - c0
            c0, t0 = _cpu(), time.monotonic()
            n = int(rate * seconds)
            for i in range(n):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await c.publish(TOPIC, _payload(i), qos=1)  # returns once the PUBACK came
            return {"messages": n, "idle_cpu_s": idle, "busy_cpu_s": _cpu() - c0, "wall_s": time.monotonic() - t0}

    return {"client": "aiomqtt 2.5 (asyncio over paho), no spool", **asyncio.run(main())}


def run_gmqtt(port: int, rate: float, seconds: float, _folder: Path) -> dict[str, Any]:
    import gmqtt

    async def main() -> dict[str, Any]:
        c = gmqtt.Client("bench-gmqtt")
        c.set_auth_credentials(USERNAME, PASSWORD)
        await c.connect("127.0.0.1", port, version=gmqtt.constants.MQTTv311)
        await asyncio.sleep(1.0)
        c0 = _cpu()
        await asyncio.sleep(seconds)
        idle = _cpu() - c0
        c0, t0 = _cpu(), time.monotonic()
        n = int(rate * seconds)
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            c.publish(TOPIC, _payload(i), qos=1)
        await c._persistent_storage.wait_empty()  # every PUBACK in: gmqtt calls nothing per acknowledgement
        busy, wall = _cpu() - c0, time.monotonic() - t0
        await c.disconnect()
        return {"messages": n, "idle_cpu_s": idle, "busy_cpu_s": busy, "wall_s": wall}

    return {"client": "gmqtt 0.8 (asyncio, own protocol code), no spool", **asyncio.run(main())}


def run_harness(_port: int, rate: float, seconds: float, _folder: Path) -> dict[str, Any]:
    """What every run pays besides the client: the paced loop making each decision's payload."""
    time.sleep(1.0)
    c0 = _cpu()
    time.sleep(seconds)
    idle = _cpu() - c0
    c0, t0 = _cpu(), time.monotonic()
    n = _paced(rate, seconds, _payload)
    return {"client": "harness only (pacing + making the payloads), nothing sent", "messages": n, "idle_cpu_s": idle,
            "busy_cpu_s": _cpu() - c0, "wall_s": time.monotonic() - t0}


MODES = {"harness": run_harness, "sink": run_sink, "paho": run_paho, "aiomqtt": run_aiomqtt, "gmqtt": run_gmqtt}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--mode", choices=sorted(MODES), default=None, help="(internal) one client, in this process")
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    if a.mode is not None:
        _payload(0)  # imports and first calls paid before anything is measured
        _record(0)
        with tempfile.TemporaryDirectory() as folder:  # the spool on this machine's disk (not a tmpfs here)
            print(json.dumps(MODES[a.mode](a.port, a.rate, a.seconds, Path(folder))))
        return
    with tempfile.TemporaryDirectory() as work, Mosquitto(Path(work) / "mosquitto") as broker:
        print(f"{a.rate:g} decisions/s for {a.seconds:g} s per client, Mosquitto on 127.0.0.1:{broker.port}, "
              f"{os.cpu_count()} CPUs; CPU per message = (busy - idle CPU) / messages")
        harness_us = 0.0
        for mode in MODES:
            if mode in ("aiomqtt", "gmqtt"):
                try:
                    __import__(mode)
                except ImportError:
                    print(f"  {mode}: not importable, skipped")
                    continue
            cpu0 = broker.cpu_seconds()
            out = subprocess.run([sys.executable, __file__, "--mode", mode, "--port", str(broker.port), "--rate", str(a.rate),
                                  "--seconds", str(a.seconds)], capture_output=True, text=True, timeout=4 * a.seconds + 60)
            if out.returncode != 0:
                print(f"  {mode}: failed\n{out.stderr[-2000:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            per_msg_us = (r["busy_cpu_s"] - r["idle_cpu_s"]) / r["messages"] * 1e6
            share = (r["busy_cpu_s"] - r["idle_cpu_s"]) / r["wall_s"] * 100
            broker_us = (broker.cpu_seconds() - cpu0) / r["messages"] * 1e6
            if mode == "harness":
                harness_us = per_msg_us
                print(f"  {r['client']}: {per_msg_us:.0f} us per message (subtracted below as 'net')")
                continue
            print(f"  {r['client']}: {r['messages']} messages, {per_msg_us:.0f} us CPU per message, net "
                  f"{per_msg_us - harness_us:.0f} us ({share:.2f} % of one core at {a.rate:g}/s; idle "
                  f"{r['idle_cpu_s'] / a.seconds * 100:.2f} %), broker {broker_us:.0f} us per message")


if __name__ == "__main__":
    main()
