"""OPC UA end to end over real loopback sockets: asyncua adapter in the real daemon -> asyncua
simulator front-end running the simulated PLC program. Secured sessions use self-signed
certificates generated here. Bounds are generous on purpose (noisy 2-core CI machine).

asyncua's server builds its standard address space in a few seconds of CPU, so simulators
are few: the daemon tests run the simulator in its own process (as the demo does, so its
Python work does not share the daemon's GIL), and the secured tests share one simulator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from helpers import RecordingPlc, read_metric, running, station_config, wait_for

from plcbridge.adapters.plc.base import PlcError
from plcbridge.adapters.plc.opcua import OpcUaAdapter
from plcbridge.config import Config, ConfigError
from plcbridge.contract import BASE_INPUT_SIGNALS, BASE_OUTPUT_SIGNALS, Outputs, StatusBit
from plcbridge.contract.opcua import OpcUaNodeMap, markdown_tables, node_specs, resolve_nodes
from plcbridge.simulators.device import DeviceFileError, load_device
from plcbridge.simulators.opcua import OpcUaSimulator
from plcbridge.simulators.process import start_simulator, stop_simulator

SIM_PASSWORD = "sim-pw-Zq8!"  # what the simulator accepts
WRONG_PASSWORD = "wrong-pw-Xk3?"


def opcua_config(port: int, mode: str = "triggered", plc: dict[str, Any] | None = None, **opcua: Any) -> Config:
    return station_config(port, mode, plc={"protocol": "opcua", "opcua": opcua, **(plc or {})})


class _Records(logging.Handler):
    """Every plcbridge record down to DEBUG, and whatever else reaches the root logger
    (asyncua's warnings), formatted with all their fields."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._level = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.__dict__}")

    def __enter__(self) -> "_Records":
        ours = logging.getLogger("plcbridge")
        self._level = ours.level
        ours.setLevel(logging.DEBUG)
        for name in ("plcbridge", ""):
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *_: object) -> None:
        logging.getLogger("plcbridge").setLevel(self._level)
        for name in ("plcbridge", ""):
            logging.getLogger(name).removeHandler(self)

    def events(self, event: str) -> list[str]:
        return [line for line in self.lines if f"'event': '{event}'" in line]


# ---------------------------------------------------------------------- nodes and settings


def test_nodes_are_the_contract_with_its_types():
    outs, ins = node_specs(*resolve_nodes("plcbridge.outputs.{signal}", "plcbridge.inputs.{signal}", {}, {}))
    assert [n.signal for n in outs] == list(BASE_OUTPUT_SIGNALS)  # optional nodes only when listed
    assert [n.signal for n in ins] == list(BASE_INPUT_SIGNALS)  # optional nodes only when listed
    types = {n.key: n.ua_type for n in (*outs, *ins)}
    assert types["outputs.part_id"] == types["inputs.part_id"] == "UInt32"
    assert types["outputs.status"] == types["outputs.score"] == types["inputs.trigger_seq"] == "UInt16"
    assert outs[0].expanded("urn:x") == "nsu=urn:x;s=plcbridge.outputs.heartbeat"
    table = markdown_tables()
    assert "`plcbridge.outputs.score`" in table and "| UInt32 | UDINT |" in table


def test_node_settings_are_checked_and_completed():
    cfg = opcua_config(4840, output_template='"InspectionDB"."out"."{signal}"', output_nodes={"score": "i=1005"})
    assert cfg.plc.opcua.output_nodes["heartbeat"] == '"InspectionDB"."out"."heartbeat"'
    assert cfg.plc.opcua.output_nodes["score"] == "i=1005"
    assert cfg.plc.opcua.input_nodes["part_id"] == "plcbridge.inputs.part_id"
    for bad, words in (
        ({"output_template": "DB1.fixed"}, ["output_template", "{signal}"]),
        ({"input_nodes": {"trigger": "x"}}, ["'trigger' is not a contract signal"]),
        ({"output_nodes": {"score": "plcbridge.outputs.status"}}, ["used for both", "status", "score"]),
        ({"security_policy": "Basic256Sha256"}, ["needs certificate, private_key, server_certificate"]),
        ({"certificate": "c.der"}, ["certificate set but security_policy is \"None\""]),
    ):
        with pytest.raises(ConfigError) as e:
            opcua_config(4840, **bad)
        assert "plc.opcua" in str(e.value) and all(w in str(e.value) for w in words), str(e.value)
    with pytest.raises(DeviceFileError, match="need certificate and private_key"):
        load_device(None, {"opcua.endpoints": ["None", "Basic256Sha256_Sign"]})


# ---------------------------------------------------------------------- the daemon over OPC UA


def _answered(summary: dict[str, Any]) -> int:
    return sum(summary["results"].values())


def test_triggered_every_trigger_answered_and_verdicts_match_ground_truth():
    proc, port = start_simulator("triggered", 10.0, protocol="opcua")
    # The station of a busy line PC: on a 2-core CI runner under `-n 4`, one OPC UA exchange
    # once took longer than the default link_timeout_ms (200), and the trigger raised in that
    # gap was rightly answered FAILSAFE + PLC_INPUTS_STALE. This test is about verdicts in
    # service; the stale-input path has its own (test_slow_plc.py, test_writeloop.py).
    cfg = opcua_config(port, "triggered", plc={"link_timeout_ms": 1000, "max_input_age_ms": 500})
    try:
        with running(cfg) as d:
            wait_for(lambda: d.journal.summary()["accuracy"]["labelled"] >= 40, 40, "40 judged triggers")
            time.sleep(0.3)  # the last result reaches the PLC
        s = stop_simulator(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _answered(s) >= 40, s
    assert s["missing"] == 0 and s["skipped"] == 0, s
    # result_seq and part_id echo matched; no timestamped, partial or mistyped writes.
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]
    # No fail-safe in service; a trigger still undecided at stop is answered by the final block.
    assert s["results"].get("FAILSAFE", 0) == s["failsafe_faults"].get("SHUTTING_DOWN", 0) <= 1, s["failsafe_faults"]
    assert s["latency_ms"]["count"] == _answered(s)
    acc = d.journal.summary()["accuracy"]
    assert acc["agreement"] >= 0.9, acc
    assert d.loop.final_write_ok is not None


def test_free_run_writes_newest_verdicts_matching_ground_truth():
    proc, port = start_simulator("free-run", 10.0, protocol="opcua")
    try:
        with running(opcua_config(port, "free-run")) as d:
            wait_for(lambda: d.journal.summary()["accuracy"]["labelled"] >= 60, 40, "60 judged frames")
        s = stop_simulator(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert s["results"].get("PASS", 0) + s["results"].get("FAIL", 0) >= 30, s
    assert s["protocol_errors"] == 0, s["recent_protocol_errors"]
    acc = d.journal.summary()["accuracy"]
    assert acc["agreement"] >= 0.9, acc


def test_server_restart_fresh_session_and_heartbeat_resumes():
    proc, port = start_simulator("triggered", 10.0, protocol="opcua")
    try:
        cfg = opcua_config(port, "triggered", plc={"reconnect_min_ms": 50, "reconnect_max_ms": 400})
        with running(cfg) as d:
            wait_for(lambda: d.link.connected and d.worker.model_ok, 30, "connected with the model loaded")
            proc.kill()  # SIGKILL: the session is never closed
            proc.wait()
            wait_for(lambda: not d.link.connected, 5, "the dead session to be noticed")
            ticks = d.loop.ticks
            time.sleep(1.0)
            assert d.loop.alive and d.loop.ticks - ticks >= 50, "the write loop kept its cadence"
            proc, _ = start_simulator("triggered", 10.0, ["--port", str(port)], protocol="opcua")
            wait_for(lambda: d.link.connected, 20, "a reconnect with a fresh client")
            time.sleep(1.5)
            assert d.loop.alive
            assert read_metric(d, "plcbridge_plc_reconnects_total") >= 1
        s = stop_simulator(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert s["writes_seen"] >= 80, s  # the restarted PLC sees the bridge again ...
    assert s["heartbeat_longest_gap_ms"] < 1000, s  # ... with a changing heartbeat
    assert _answered(s) >= 3 and s["missing"] == 0, s


# ---------------------------------------------------------------------- a PLC program that is wrong


def test_node_of_the_wrong_type_is_refused_and_the_daemon_stays_failsafe():
    settings = load_device(None, {"opcua.port": 0, "program.mode": "free-run"})
    sim = OpcUaSimulator(settings, RecordingPlc(settings.program), data_types={"outputs.score": "Float"}).start()
    try:
        cfg = opcua_config(sim.port, "free-run", plc={"reconnect_min_ms": 50, "reconnect_max_ms": 200})
        adapter = OpcUaAdapter(cfg.plc)
        try:
            with pytest.raises(PlcError) as e:
                adapter.connect()
        finally:
            adapter.close()
        msg = str(e.value)
        assert "outputs.score" in msg and "nsu=urn:plcbridge:plc;s=plcbridge.outputs.score" in msg
        assert "data type Float" in msg and "needs UInt16" in msg
        with _Records() as logs, running(cfg) as d:
            # A node map that does not fit is a configuration error: retried at reconnect_max_ms.
            wait_for(lambda: read_metric(d, "plcbridge_plc_errors_total", kind="config") >= 3, 15, "repeated refusals")
            assert d.loop.alive and not d.link.connected
            assert "data type Float" in (d.link.last_error or "")
        assert sim.program.writes_seen == 0  # the PLC sees no heartbeat: its watchdog keeps it safe
        failed = logs.events("plc_config_error")
        assert failed and "data type Float" in failed[0] and "retry_in_ms" in failed[0] and "setting" in failed[0]
    finally:
        sim.stop()


# ---------------------------------------------------------------------- security


def _self_signed(dir: Path, name: str, uri: str, usage: x509.ObjectIdentifier) -> tuple[Path, Path]:
    from asyncua.crypto import cert_gen

    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key, name, {}, [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")], extended=[usage], days=2)
    cert_path, key_path = dir / f"{name}-cert.der", dir / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One simulator with a Basic256Sha256 SignAndEncrypt endpoint and a user, and the bridge's files."""
    d = tmp_path_factory.mktemp("pki")
    sim_cert, sim_key = _self_signed(d, "sim", "urn:plcbridge:simulator", ExtendedKeyUsageOID.SERVER_AUTH)
    bridge_cert, bridge_key = _self_signed(d, "bridge", "urn:plcbridge:bridge", ExtendedKeyUsageOID.CLIENT_AUTH)
    other_cert, _ = _self_signed(d, "other", "urn:plcbridge:simulator", ExtendedKeyUsageOID.SERVER_AUTH)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLCBRIDGE_SIM_OPCUA_PASSWORD", SIM_PASSWORD)
        settings = load_device(None, {
            "opcua.port": 0, "program.mode": "free-run", "opcua.endpoints": ["Basic256Sha256_SignAndEncrypt"],
            "opcua.certificate": str(sim_cert), "opcua.private_key": str(sim_key), "opcua.username": "bridge"})
        sim = OpcUaSimulator(settings, RecordingPlc(settings.program)).start()
    try:
        yield {"sim": sim, "opcua": {"security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt",
                                      "certificate": str(bridge_cert), "private_key": str(bridge_key),
                                      "server_certificate": str(sim_cert), "username": "bridge"},
               "other_cert": str(other_cert)}
    finally:
        sim.stop()


def test_secured_session_carries_typed_value_only_writes(secured, monkeypatch):
    sim = secured["sim"]
    monkeypatch.setenv("PLCBRIDGE_OPCUA_PASSWORD", SIM_PASSWORD)
    cfg = opcua_config(sim.port, "free-run", **secured["opcua"])
    adapter = OpcUaAdapter(cfg.plc)
    try:
        adapter.connect()
        assert adapter._client.security_policy.Mode.name == "SignAndEncrypt"
        sent: list[Any] = []
        proto = adapter._client.uaclient.protocol
        send_request = proto._send_request

        def spy(request, *args, **kw):  # what goes on the wire, encrypted after this
            if isinstance(request, ua.WriteRequest):
                sent.extend(wv.Value for wv in request.Parameters.NodesToWrite)
            return send_request(request, *args, **kw)

        proto._send_request = spy
        before = sim.program.writes_seen
        for hb in range(5):
            inputs = adapter.exchange(Outputs(heartbeat=hb, status=int(StatusBit.READY), part_id=70000), 0.5)
        assert inputs.trigger_seq == 0
    finally:
        adapter.close()
    assert sim.program.writes_seen - before == 5
    assert len(sent) == 5 * len(BASE_OUTPUT_SIGNALS)
    assert {dv.Value.VariantType.name for dv in sent} == {"UInt16", "UInt32"}
    assert all(dv.SourceTimestamp is None and dv.ServerTimestamp is None and dv.StatusCode is None for dv in sent)
    assert sim.summary()["protocol_errors"] == 0, sim.summary()["recent_protocol_errors"]


def test_daemon_runs_over_the_secured_session_and_never_logs_the_password(secured, monkeypatch):
    sim = secured["sim"]
    monkeypatch.setenv("PLCBRIDGE_OPCUA_PASSWORD", SIM_PASSWORD)
    cfg = opcua_config(sim.port, "free-run", **secured["opcua"])
    before = sim.program.writes_seen
    with _Records() as logs, running(cfg):
        wait_for(lambda: sim.program.writes_seen - before >= 100, 20, "100 blocks over the secured session")
        assert any("SignAndEncrypt" in line for line in logs.events("plc_connected"))  # the session's target
    assert logs.events("plc_connected")
    assert not any(SIM_PASSWORD in line for line in logs.lines)
    assert SIM_PASSWORD not in cfg.model_dump_json()


def test_wrong_credentials_and_wrong_server_certificate_are_refused_clearly(secured, monkeypatch):
    sim = secured["sim"]
    monkeypatch.setenv("PLCBRIDGE_OPCUA_PASSWORD", WRONG_PASSWORD)
    cfg = opcua_config(sim.port, "free-run", **secured["opcua"])
    adapter = OpcUaAdapter(cfg.plc)
    try:
        with pytest.raises(PlcError) as e:
            adapter.connect()
    finally:
        adapter.close()
    msg = str(e.value)
    assert "refused user 'bridge'" in msg and "PLCBRIDGE_OPCUA_PASSWORD" in msg and "BadUserAccessDenied" in msg, msg
    assert WRONG_PASSWORD not in msg and WRONG_PASSWORD not in adapter.describe()
    assert adapter.describe() == f"opc.tcp://127.0.0.1:{sim.port} (Basic256Sha256/SignAndEncrypt, user bridge)"

    # Through the daemon: refused again and again, rate-limited, never with the password.
    cfg = opcua_config(sim.port, "free-run", plc={"reconnect_min_ms": 50, "reconnect_max_ms": 100}, **secured["opcua"])
    with _Records() as logs, running(cfg) as d:
        wait_for(lambda: read_metric(d, "plcbridge_plc_errors_total", kind="connect") >= 2, 15, "refused connects")
        assert d.loop.alive and not d.link.connected
    assert logs.events("plc_connect_failed")
    assert not any(WRONG_PASSWORD in line for line in logs.lines)

    monkeypatch.delenv("PLCBRIDGE_OPCUA_PASSWORD")
    with pytest.raises(PlcError, match="PLCBRIDGE_OPCUA_PASSWORD .* is empty or unset"):
        OpcUaAdapter(cfg.plc).connect()

    monkeypatch.setenv("PLCBRIDGE_OPCUA_PASSWORD", SIM_PASSWORD)
    renamed = opcua_config(sim.port, "free-run", **{**secured["opcua"], "application_uri": "urn:other"})
    with pytest.raises(PlcError, match=r"names the application URI\(s\) \['urn:plcbridge:bridge'\], not .*'urn:other'"):
        OpcUaAdapter(renamed.plc).connect()

    pinned = opcua_config(sim.port, "free-run", **{**secured["opcua"], "server_certificate": secured["other_cert"]})
    adapter = OpcUaAdapter(pinned.plc)
    try:
        with pytest.raises(PlcError, match="server_certificate"):
            adapter.connect()
    finally:
        adapter.close()


def test_simulator_counts_what_a_plc_would_refuse(secured):
    """Partial blocks, timestamped or mistyped values and writes to PLC-owned nodes, sent by
    a client of our own that is not the bridge's adapter (asyncua directly)."""
    from datetime import datetime, timezone

    from asyncua import Client, ua
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    sim, files = secured["sim"], secured["opcua"]
    outs, ins = node_specs(OpcUaNodeMap().output_nodes, OpcUaNodeMap().input_nodes)
    before = dict(sim.summary()["protocol_errors_by_kind"])

    async def rude_writes() -> list[ua.StatusCode]:
        client = Client(sim.endpoint, timeout=5)
        client.application_uri = "urn:plcbridge:bridge"
        await client.set_security(SecurityPolicyBasic256Sha256, files["certificate"], files["private_key"],
                                  server_certificate=files["server_certificate"],
                                  mode=ua.MessageSecurityMode.SignAndEncrypt)
        client.set_user("bridge")
        client.set_password(SIM_PASSWORD)
        async with client:
            ns = (await client.get_namespace_array()).index(OpcUaNodeMap().namespace_uri)
            heartbeat = client.get_node(ua.NodeId(outs[0].parsed_identifier, ns))
            trigger = client.get_node(ua.NodeId(ins[0].parsed_identifier, ns))
            uint16 = ua.Variant(7, ua.VariantType.UInt16)
            results = []
            for node, dv in ((trigger, ua.DataValue(uint16, StatusCode=None)),
                             (heartbeat, ua.DataValue(ua.Variant(7, ua.VariantType.Int64))),
                             (heartbeat, ua.DataValue(uint16, SourceTimestamp=datetime.now(timezone.utc)))):
                results += await client.write_values([node], [dv], raise_on_partial_error=False)
            return results

    refused_trigger, mistyped, stamped = asyncio.run(rude_writes())
    assert refused_trigger.name == "BadUserAccessDenied" and mistyped.name == "BadTypeMismatch" and stamped.is_good()
    after = sim.summary()["protocol_errors_by_kind"]
    grew = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert grew == {"write_refused": 2, "write_with_timestamp": 1, "partial_block": 1}, after


def test_session_the_server_drops_is_a_plc_error_on_the_next_exchange(secured, monkeypatch):
    """The socket stays open, the session is gone (a PLC reset its OPC UA server, a session
    timeout): the next exchange must fail, so that PlcLink builds a fresh session."""
    sim = secured["sim"]
    monkeypatch.setenv("PLCBRIDGE_OPCUA_PASSWORD", SIM_PASSWORD)
    adapter = OpcUaAdapter(opcua_config(sim.port, "free-run", **secured["opcua"]).plc)
    try:
        adapter.connect()
        adapter.exchange(Outputs(heartbeat=1), 0.5)

        assert sim.close_sessions() >= 1
        with pytest.raises(PlcError, match="BadSession"):
            adapter.exchange(Outputs(heartbeat=2), 0.5)
    finally:
        adapter.close()
