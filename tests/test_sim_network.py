"""The simulated PLC's network relay (simulators/network.py), for every front-end: replies
late by a configured delay (and jitter, in order), a pulled cable (blackhole), a PLC restart
(drop_connections), connection counts, and the CLI flags. Real clients over loopback only;
bounds are generous on purpose (noisy 2-core CI machine)."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import RecordingPlc, wait_for
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from plcbridge import protocols
from plcbridge.contract import Outputs, StatusBit
from plcbridge.contract.enip import INPUT_TAGS
from plcbridge.contract.opcua import node_specs
from plcbridge.simulators.device import DeviceFileError, load_device
from plcbridge.simulators.frontend import ThreadedFrontend

DELAY_MS = 30.0
PLCBRIDGE = Path(sys.executable).with_name("plcbridge")


@pytest.fixture
def start() -> Iterator[Callable[..., ThreadedFrontend]]:
    """start(protocol, reply_delay_ms=..., relay=..., ...): a free-running simulator on 127.0.0.1:0."""
    sims: list[ThreadedFrontend] = []

    def make(protocol: str = "modbus", **network: Any) -> ThreadedFrontend:
        settings = load_device(None, {
            f"{protocol}.host": "127.0.0.1", f"{protocol}.port": 0, "program.mode": "free-run",
            "program.watchdog_ms": 60_000, **{f"network.{k}": v for k, v in network.items()}})
        sim = protocols.frontend_class(protocol)(settings, RecordingPlc(settings.program)).start()
        sims.append(sim)
        return sim

    yield make
    for s in sims:
        s.stop()
    assert all(s.error is None for s in sims), [s.error for s in sims]


def _timed(fn: Callable[[], Any], rtts: list[float]) -> Any:
    t0 = time.perf_counter()
    result = fn()
    rtts.append(time.perf_counter() - t0)
    return result


def _outputs(hb: int) -> Outputs:
    return Outputs(heartbeat=hb, status=int(StatusBit.READY), result_seq=hb, result_code=1, score=1234 + hb,
                   latency_ms=17, part_id=70_000 + hb)


# ---------------------------------------------------------------------- one exchange per protocol
# Each writes the whole output block and reads it back, timing every request; returns the
# round trips and checks that the values arrived (program) and came back (read).


def _modbus_exchanges(sim: ThreadedFrontend, n: int) -> list[float]:
    rmap, unit = sim.settings.modbus.register_map, sim.settings.modbus.device_id
    client = ModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0)
    assert client.connect()
    rtts: list[float] = []
    try:
        for hb in range(1, n + 1):
            regs = rmap.encode_outputs(_outputs(hb))
            rr = _timed(lambda: client.write_registers(rmap.outputs_base, regs, device_id=unit), rtts)
            assert not rr.isError(), rr
            rr = _timed(lambda: client.read_holding_registers(rmap.outputs_base, count=len(regs), device_id=unit), rtts)
            assert not rr.isError(), rr
            assert rmap.decode_outputs(rr.registers) == _outputs(hb)
            assert sim.program.seen[-1][1] == _outputs(hb)
    finally:
        client.close()
    return rtts


def _opcua_exchanges(sim: ThreadedFrontend, n: int) -> list[float]:
    from asyncua import Client, ua

    o = sim.settings.opcua
    outs, _ = node_specs(o.output_nodes, o.input_nodes)

    async def run() -> list[float]:
        rtts: list[float] = []
        client = Client(f"opc.tcp://127.0.0.1:{sim.port}", timeout=5)
        await client.connect()
        try:
            # A client that follows the advertised endpoint must come back through the relay.
            urls = {e.EndpointUrl for e in await client.get_endpoints()}
            assert urls == {f"opc.tcp://127.0.0.1:{sim.port}"}, urls
            ns = await client.get_namespace_index(o.namespace_uri)
            nodes = [client.get_node(ua.NodeId(s.parsed_identifier, ns)) for s in outs]
            vtypes = [getattr(ua.VariantType, s.ua_type) for s in outs]
            for hb in range(1, n + 1):
                block = _outputs(hb).as_dict()
                values = {s.signal.name: block[s.signal.name] for s in outs}  # the nodes the PLC has
                dvs = [ua.DataValue(ua.Variant(values[s.signal.name], t), StatusCode=None) for s, t in zip(outs, vtypes)]
                t0 = time.perf_counter()
                await client.write_values(nodes, dvs)
                rtts.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                back = await client.read_values(nodes)
                rtts.append(time.perf_counter() - t0)
                assert dict(zip([s.signal.name for s in outs], back)) == values
                assert sim.program.seen[-1][1] == _outputs(hb)
        finally:
            await client.disconnect()
        return rtts

    return asyncio.run(run())


def _enip_exchanges(sim: ThreadedFrontend, n: int) -> list[float]:
    from pylogix import PLC

    names = dict(sim.settings.enip.output_tags)  # the tags the simulated controller has
    rtts: list[float] = []
    with PLC() as plc:
        plc.IPAddress, plc.Port, plc.SocketTimeout = "127.0.0.1", sim.port, 5.0
        assert plc.Read(INPUT_TAGS[0].default_name).Status == "Success"  # session and connection set up
        # pylogix looks each tag's type up on its first write of it: one request per tag.
        assert [w.Status for w in plc.Write([(t, 0) for t in names.values()])] == ["Success"] * len(names)
        for hb in range(1, n + 1):
            values = {k: v for k, v in _outputs(hb).as_dict().items() if k in names}
            values["score"] = values["score"] / 10_000  # a REAL tag holds the score itself
            written = _timed(lambda: plc.Write([(names[k], v) for k, v in values.items()]), rtts)
            assert [w.Status for w in written] == ["Success"] * len(values), written
            back = _timed(lambda: plc.Read(list(names.values())), rtts)
            assert {r.TagName: r.Value for r in back} == pytest.approx({names[k]: v for k, v in values.items()})
            assert sim.program.seen[-1][1] == _outputs(hb)
    return rtts


EXCHANGES = {"modbus": _modbus_exchanges, "opcua": _opcua_exchanges, "enip": _enip_exchanges}


@pytest.mark.parametrize("protocol", protocols.SIMULATED)
def test_every_reply_is_late_by_the_delay_and_values_still_round_trip(start, protocol: str) -> None:
    sim = start(protocol, reply_delay_ms=DELAY_MS)
    assert sim.port != 0
    rtts = EXCHANGES[protocol](sim, 4)  # every timed call is one request and its reply
    assert min(rtts) >= DELAY_MS / 1000, rtts
    assert statistics.median(rtts) < 0.2 and max(rtts) < 1.0, rtts
    net = sim.summary()["network"]
    assert net["relay"] is True and net["reply_delay_ms"] == DELAY_MS
    assert net["connections_accepted"] >= 1


@pytest.mark.parametrize("protocol", ["modbus", "enip"])
def test_without_network_settings_there_is_no_relay(start, protocol: str) -> None:
    sim = start(protocol)
    assert sim.summary()["network"] == {"relay": False}
    with pytest.raises(RuntimeError, match="network.relay = true"):
        sim.network.blackhole(True)
    rtts = EXCHANGES[protocol](sim, 3)
    assert statistics.median(rtts) < DELAY_MS / 1000, rtts  # loopback without a relay is fast


# ---------------------------------------------------------------------- raw Modbus TCP


def _fc3(tid: int, address: int, count: int, unit: int = 1) -> bytes:
    return struct.pack(">HHHBBHH", tid, 0, 6, unit, 3, address, count)


def _replies(sock: socket.socket, n: int, timeout: float = 5.0) -> list[tuple[int, int, bytes]]:
    """n Modbus TCP replies as (transaction id, function code, data)."""
    buf, out = b"", []
    end = time.monotonic() + timeout
    while len(out) < n:
        sock.settimeout(max(0.01, end - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(out)} of {n} replies"
        buf += chunk
        while len(buf) >= 6 and len(buf) >= 6 + struct.unpack(">H", buf[4:6])[0]:
            tid, _, length = struct.unpack(">HHH", buf[:6])
            out.append((tid, buf[7], buf[8 : 6 + length]))
            buf = buf[6 + length :]
    return out


def test_jitter_keeps_the_replies_in_order(start) -> None:
    sim = start("modbus", reply_delay_ms=5, reply_jitter_ms=25)
    base = sim.settings.modbus.inputs_base

    def count(tid: int) -> int:  # each reply's size tells which request it answers
        return tid % 4 + 1

    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as s:
        for tid in range(1, 41):  # one at a time, 2 ms apart: ~10 replies in flight, each with its own jitter
            s.sendall(_fc3(tid, base, count(tid)))
            time.sleep(0.002)
        s.sendall(b"".join(_fc3(tid, base, count(tid)) for tid in range(41, 81)))  # and a burst in one segment
        replies = _replies(s, 80)
    assert [r[0] for r in replies] == list(range(1, 81))
    assert all(fc == 3 and len(data) == 1 + 2 * count(tid) for tid, fc, data in replies), replies
    assert sim.summary()["protocol_errors"] == 0


def test_blackhole_swallows_requests_until_lifted(start) -> None:
    sim = start("modbus", relay=True)
    base = sim.settings.modbus.inputs_base
    client = ModbusTcpClient("127.0.0.1", port=sim.port, timeout=0.5, retries=0)
    assert client.connect()
    try:
        assert not client.read_holding_registers(base, count=1, device_id=1).isError()
        sim.network.blackhole(True)
        assert sim.summary()["network"]["blackhole"] is True
        writes = sim.program.writes_seen
        with pytest.raises(ModbusIOException):
            client.write_registers(0, [1], device_id=1)
        with socket.create_connection(("127.0.0.1", sim.port), timeout=0.5) as late:  # accepted, then silence
            late.sendall(_fc3(1, base, 1))
            with pytest.raises(socket.timeout):
                late.recv(100)
        assert sim.program.writes_seen == writes  # nothing reached the PLC
        sim.network.blackhole(False)
    finally:
        client.close()
    fresh = ModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0)
    assert fresh.connect()
    try:
        assert not fresh.write_registers(0, [1], device_id=1).isError()
        assert not fresh.read_holding_registers(base, count=1, device_id=1).isError()
    finally:
        fresh.close()
    assert sim.program.writes_seen == writes + 1


def test_drop_connections_closes_every_client_and_counts_the_reconnect(start) -> None:
    sim = start("modbus", relay=True)
    base = sim.settings.modbus.inputs_base
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as first:
        first.sendall(_fc3(1, base, 1))
        assert _replies(first, 1)[0][0] == 1
        assert sim.network.connections_open == 1
        assert sim.network.drop_connections() == 1
        first.settimeout(5)
        try:
            assert first.recv(100) == b""
        except ConnectionResetError:
            pass  # closed either way
    second = ModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0)
    assert second.connect()
    try:
        assert not second.read_holding_registers(base, count=1, device_id=1).isError()
        net = sim.summary()["network"]  # the relay forwarded that request: it has accepted `second`
    finally:
        second.close()
    assert net["connections_accepted"] == 2 and net["connections_dropped"] == 1 and net["connections_open"] == 1
    wait_for(lambda: sim.network.connections_open == 0, 5, "the second client's close to reach the relay")


def test_reply_delay_can_change_while_running(start) -> None:
    sim = start("modbus", relay=True)
    fast = _modbus_exchanges(sim, 2)
    sim.network.set_reply_delay(DELAY_MS, 5)
    slow = _modbus_exchanges(sim, 2)
    assert min(slow) >= DELAY_MS / 1000 > statistics.median(fast), (fast, slow)
    assert sim.summary()["network"]["reply_jitter_ms"] == 5
    with pytest.raises(ValueError, match="delay_ms"):
        sim.network.set_reply_delay(-1)


# ---------------------------------------------------------------------- settings and CLI


def test_network_settings_are_checked() -> None:
    assert load_device(None, {"network.reply_delay_ms": 12.5}).network.relayed
    assert not load_device().network.relayed
    for field, bad in (("reply_delay_ms", -1), ("reply_jitter_ms", 10_001), ("reply_delay_ms", float("nan"))):
        with pytest.raises(DeviceFileError, match=rf"network\.{field}"):
            load_device(None, {f"network.{field}": bad})


def test_cli_reply_delay_flag(tmp_path: Path) -> None:
    proc = subprocess.Popen([str(PLCBRIDGE), "sim", "modbus", "--host", "127.0.0.1", "--port", "0",
                             "--reply-delay-ms", "20", "--seconds", "1", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        assert client.connect()
        t0 = time.perf_counter()
        assert not client.read_holding_registers(100, count=1, device_id=1).isError()
        rtt = time.perf_counter() - t0
        client.close()
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert rtt >= 0.020
    net = json.loads(stdout)["network"]
    assert net["relay"] is True and net["reply_delay_ms"] == 20 and net["connections_accepted"] == 1


def test_cli_rejects_a_negative_reply_delay_naming_the_field() -> None:
    proc = subprocess.run([str(PLCBRIDGE), "sim", "modbus", "--port", "0", "--reply-delay-ms", "-5"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "network.reply_delay_ms" in proc.stderr and proc.stdout == ""
