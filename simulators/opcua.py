"""OPC UA front-end for the simulated PLC (asyncua 2.1 server).

The address space holds the contract's nodes in the configured namespace, under
Objects/PlcBridge/Outputs and Objects/PlcBridge/Inputs, typed from the contract
(plcbridge/contract/opcua.py), each with the contract's meaning as its Description, so a
commissioning engineer browsing with UaExpert sees what every value is. The optional output
and input nodes exist only where the device file's `[opcua] optional_outputs` /
`optional_inputs` list them, as in a PLC programmed for such a station.

- Output nodes are writable; input nodes are read-only to clients (the PLC owns them, as the
  contract says), so a client's write to one is refused by the server and counted.
- asyncua's PostWrite server callback runs after a Write request has been applied, inside
  the request, before the response goes out. If the request wrote output nodes, the whole
  output block is read back from the address space and decoded once, so the program never
  sees a half-written block, then passed to `program.on_outputs(..., time.monotonic())`,
  and the program's inputs are written back at once: the read that follows in the same
  session (asyncua answers a session's requests in order) already sees the ack.
- A Write that carries only some of the output nodes ("partial_block", as on Modbus and
  EtherNet/IP: applied and passed on all the same), a refused write (wrong type, input
  node) and a written value carrying timestamps (an S7-1200/1500 refuses that with
  BadWriteNotSupported) are protocol errors.
- An asyncio task calls `program.tick()` every 2 ms and writes the input nodes
  when the program changed them (never otherwise, so a subscribed generic client sees one
  data change per real change).

Security: the endpoints listed in the device file (None, Basic256Sha256 Sign /
SignAndEncrypt) with the simulator's certificate; with a username, only username/password
sessions are accepted. Any client certificate is accepted (a real PLC makes you trust the
bridge's certificate first).

The thread handle (start/stop/port/summary/network) is simulators/frontend.py's, as for
every front-end; the program runs on the server's event loop under its lock. Behind the
network relay (a reply delay, simulators/network.py) the endpoints advertise the relay's
address, the one clients connect to. `Server.init()` builds asyncua's standard address space, which
takes a few seconds of CPU; start() returns once the port is bound.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from asyncua import Server, ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager

from plcbridge.contract import Inputs, Outputs
from plcbridge.contract.opcua import NodeSpec, node_specs

from .device import DeviceSettings
from .frontend import ThreadedFrontend
from .program import SimulatedPlc

log = logging.getLogger(__name__)

# The program's clock. 2 ms keeps trigger timing and latency resolution far below the
# bridge's 10 ms period, and leaves the line PC's CPU to the bridge (asyncua's server is
# pure Python: each tick that wakes the loop costs what a request costs on a 2-core PC).
TICK_S = 0.002
_POLICIES = {
    "None": ua.SecurityPolicyType.NoSecurity,
    "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
}
_FLOATS = (ua.VariantType.Float, ua.VariantType.Double)


class _OneUser(UserManager):
    """Accepts exactly one username/password; every other identity is BadUserAccessDenied."""

    def __init__(self, username: str, password: str) -> None:
        self._username, self._password = username, password

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username == self._username and hmac.compare_digest((password or "").encode(), self._password.encode()):
            return User(role=UserRole.User, name=username)
        return None


class OpcUaSimulator(ThreadedFrontend):
    """A SimulatedPlc behind an OPC UA server, run on an asyncio loop in its own thread.

    `data_types` ({"outputs.score": "Float"}) declares single nodes with another OPC UA type
    than the contract's: a PLC program with a mistake in it, for proving the bridge refuses it.
    """

    section, title = "opcua", "OPC UA"

    def __init__(self, settings: DeviceSettings, program: SimulatedPlc | None = None,
                 *, data_types: Mapping[str, str] | None = None) -> None:
        super().__init__(settings, program)
        o = settings.opcua
        self._outs, self._ins = node_specs(o.output_nodes, o.input_nodes)
        types = dict(data_types or {})
        unknown = set(types) - {n.key for n in (*self._outs, *self._ins)}
        if unknown:
            raise ValueError(f"data_types for unknown nodes: {sorted(unknown)}")
        self._vtypes: dict[str, ua.VariantType] = {
            n.key: getattr(ua.VariantType, types.get(n.key, n.ua_type)) for n in (*self._outs, *self._ins)
        }
        self._server: Server | None = None
        self._out_ids: list[ua.NodeId] = []
        self._in_ids: list[ua.NodeId] = []
        self._keys: dict[ua.NodeId, NodeSpec] = {}
        self._presented: Inputs | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}"

    def close_sessions(self, timeout: float = 5.0) -> int:
        """Close every client session and keep the sockets open, as a PLC does that resets its
        OPC UA server or times a session out: a client learns it on its next request
        (BadSessionIdInvalid). Callable from any thread; returns how many were closed."""
        server, loop = self._server, self._loop
        if server is None or loop is None or not self.running:
            raise RuntimeError("the OPC UA simulator is not running")

        async def close() -> int:
            sessions = list(server.iserver._external_sessions.values())  # asyncua has no public list
            for session in sessions:
                await session.close_session()
            return len(sessions)

        return asyncio.run_coroutine_threadsafe(close(), loop).result(timeout)

    # ------------------------------------------------------------------ asyncio side

    async def _serve(self) -> None:
        server = await self._make_server()
        await server.start()
        try:
            assert server.bserver is not None
            await self._expose(server.bserver.port)
            self._advertise(server)
            await self._present(self.program.inputs)
            await self._run_program()
        finally:
            await server.stop()

    async def _make_server(self) -> Server:
        o = self.settings.opcua
        users = None
        if o.username:
            password = os.environ.get(o.password_env)
            if not password:
                raise RuntimeError(f"opcua.username is set but ${o.password_env} (opcua.password_env) is empty or unset")
            users = _OneUser(o.username, password)
        server = Server(user_manager=users)
        await server.init()
        host, port = self._bind_address()  # behind the network relay: an internal one
        server.set_endpoint(f"opc.tcp://{host}:{port}")
        server.set_server_name("plcbridge PLC simulator")
        # A written value is stored as sent (the bridge sends no timestamps); stamping each
        # one costs a dataclass copy per node per tick.
        server.set_force_server_timestamp(False)
        await server.set_application_uri(o.application_uri)
        server.set_security_policy([_POLICIES[e] for e in o.endpoints])
        server.set_identity_tokens([ua.UserNameIdentityToken] if users else [ua.AnonymousIdentityToken])
        if o.certificate is not None and o.private_key is not None:
            await server.load_certificate(str(o.certificate))
            await server.load_private_key(str(o.private_key))
        ns = await server.register_namespace(o.namespace_uri)
        await self._add_nodes(server, ns)
        server.subscribe_server_callback(CallbackType.PostWrite, self._on_post_write)
        self._server = server
        return server

    async def _add_nodes(self, server: Server, ns: int) -> None:
        root = await server.nodes.objects.add_object(ns, "PlcBridge")
        for title, specs, ids in (("Outputs", self._outs, self._out_ids), ("Inputs", self._ins, self._in_ids)):
            folder = await root.add_folder(ns, title)
            for spec in specs:
                vtype = self._vtypes[spec.key]
                node_id = ua.NodeId(spec.parsed_identifier, ns)  # type: ignore[arg-type]  # asyncua accepts str/int; its stubs say String/Int32, Int16
                var = await folder.add_variable(node_id, ua.QualifiedName(spec.signal.name, ns),
                                                ua.Variant(_cast(0, vtype), vtype))
                await var.write_attribute(ua.AttributeIds.Description,
                                          ua.DataValue(ua.Variant(ua.LocalizedText(spec.signal.meaning))))
                if spec.direction == "output":
                    await var.set_writable()
                ids.append(node_id)
                self._keys[node_id] = spec

    def _advertise(self, server: Server) -> None:
        """The endpoints were described before the port was known (port 0) and, behind the
        network relay, with the internal address: advertise the one clients connect to, or
        a client that follows the endpoint URL would bypass the relay."""
        url = self.endpoint
        server.set_endpoint(url)
        for edp in server.iserver.endpoints:
            edp.EndpointUrl = url
            edp.Server.DiscoveryUrls = [url]

    async def _tick_forever(self) -> None:
        while True:
            with self._lock:
                self.program.tick(time.monotonic())
                inputs = self.program.inputs
            if inputs != self._presented:
                await self._present(inputs)
            await asyncio.sleep(TICK_S)

    async def _present(self, inputs: Inputs) -> None:
        """Write the program's inputs into the input nodes (server side: no access checks)."""
        server = self._server
        assert server is not None
        now = datetime.now(timezone.utc)
        values = inputs.as_dict()
        for node_id, spec in zip(self._in_ids, self._ins):
            vtype = self._vtypes[spec.key]
            dv = ua.DataValue(ua.Variant(_cast(values[spec.signal.name], vtype), vtype),
                              SourceTimestamp=now, ServerTimestamp=now)  # type: ignore[arg-type]  # asyncua takes any datetime; its stubs say its ua.DateTime marker subclass
            await server.write_attribute_value(node_id, dv)
        self._presented = inputs

    async def _on_post_write(self, event: ServerItemCallback, _dispatcher: Any) -> None:
        """One client Write request, already applied to the address space."""
        if not event.is_external:
            return
        t = time.monotonic()
        inputs = None
        with self._lock:
            try:
                if self._take_write(event.request_params.NodesToWrite, event.response_params, t):
                    inputs = self.program.inputs
            except Exception as e:  # a bad request or a program bug must not kill the server
                log.exception("simulator failed on a Write request")
                self.program.protocol_error("internal_error", f"write: {e!r}")
        if inputs is not None and inputs != self._presented:
            await self._present(inputs)

    def _take_write(self, writes: list[ua.WriteValue], results: list[ua.StatusCode], t: float) -> bool:
        """Count what is wrong with the request; pass a written output block to the program."""
        outputs_written = 0
        for wv, status in zip(writes, results):
            spec = self._keys.get(wv.NodeId)
            name = spec.key if spec is not None else wv.NodeId.to_string()
            if not status.is_good():
                self.program.protocol_error("write_refused", f"{name}: {status.name}")
                continue
            if spec is None or wv.AttributeId != ua.AttributeIds.Value:
                continue
            if wv.Value.SourceTimestamp is not None or wv.Value.ServerTimestamp is not None:
                self.program.protocol_error(
                    "write_with_timestamp", f"{name}: an S7-1200/1500 refuses this with BadWriteNotSupported")
            if spec.direction == "output":
                outputs_written += 1
        if not outputs_written:
            return False
        if outputs_written != len(self._outs):
            self.program.protocol_error(
                "partial_block", f"one Write carried {outputs_written} of the {len(self._outs)} output nodes")
        self.program.on_outputs(self._read_outputs(), t)
        return True

    def _read_outputs(self) -> Outputs:
        server = self._server
        assert server is not None
        values = {}
        for node_id, spec in zip(self._out_ids, self._outs):
            v = server.read_attribute_value(node_id).Value
            values[spec.signal.name] = int(v.Value) if v is not None and v.Value is not None else 0
        return Outputs(**values)


def _cast(value: int, vtype: ua.VariantType) -> int | float:
    return float(value) if vtype in _FLOATS else int(value)
