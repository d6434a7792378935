"""OPC UA adapter (asyncua 2.1 client), carrying the signal contract as typed nodes.

Threading. asyncua is asyncio-only and the link's I/O thread is a plain thread. Each adapter
(one per connection, see base.py) owns one asyncio event loop in its own thread, created in
connect() and stopped in close(). exchange() hands one coroutine to that loop and waits for
it up to the link timeout: a slow server (5-30 ms is ordinary for a PLC) is waited for and
the session kept. Only no answer within `plc.link_timeout_ms` ends the session. asyncua
matches every response to its request by request id, and a request is never abandoned
while the session is kept, so a late response cannot be taken for a fresh one.

One tick is one Write request carrying all output nodes and one Read request for all input
nodes. Both are sent back to back before waiting for either (one network round trip instead
of two); the server answers a session's requests in order, so the read still sees the
PLC's reaction to the write whenever the PLC has already made it (asyncua does; a real PLC
answers from its last scan either way, exactly as over Modbus).

The two requests are built once per session (the node ids never change; only the written
values and the request header do) and handed straight to asyncua's socket protocol
(`UASocketProtocol._send_request`, which encodes, sends and returns the response's future
at once), instead of through `Client.write_values` / `read_attributes`: those rebuild every
WriteValue and ReadValueId, and wrap each request in a task, a timeout and a semaphore that
the link's own deadline makes redundant: 0.79 -> 0.72 ms of the bridge's CPU per exchange
on the 2-core line PC (tests/bench_exchange.py, median of 3). asyncua is pinned to 2.1 for
this private call; test_opcua.py exercises it on every run.

Writes are typed and bare: each DataValue carries a Variant with an explicit VariantType and
nothing else, no timestamps and no status. S7-1200/1500 refuse a write that carries
timestamps with BadWriteNotSupported (asyncua's own `write_values(values)` adds a
SourceTimestamp), and a guessed Python int would be Int64, which every PLC refuses as
BadTypeMismatch.

Connect checks every node against the contract (exists, data type, access level) in one Read
and refuses the PLC with all mismatches named, so a PLC program with `score : REAL` fails at
connect with a message a PLC programmer can act on, instead of refusing every write.

Reconnect. asyncua 2.1 can reconnect by itself (`auto_reconnect`), re-using the session;
this adapter turns that off and fails instead: PlcLink then builds a fresh adapter with
bounded backoff, as for every protocol. A socket closed by the server, a session the server
dropped (BadSessionIdInvalid, BadSessionClosed), a request timing out: each is a PlcError
on the exchange that meets it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.common.node import Node
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.ua_binary import struct_from_binary
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from plcbridge.adapters.plc.base import PlcAdapter, PlcConfigError, PlcError
from plcbridge.checks import unreadable_pki
from plcbridge.contract import Inputs, Outputs, check_range
from plcbridge.contract.opcua import node_specs

# asyncua logs every lost connection, failed close and revised session timeout, at WARNING
# or ERROR with tracebacks, to its own loggers, and a certificate warning at every secured
# connect; none of it is JSON. The adapter reports each failure as a PlcError that PlcLink
# logs (rate-limited) with the target and the reason.
logging.getLogger("asyncua").setLevel(logging.ERROR)
logging.getLogger("asyncua.client").setLevel(logging.CRITICAL)

# asyncua's own liveness probe (a Read of ServerStatus) runs this often; the per-tick
# exchange already proves the session every 10 ms, so the probe only has to be rare.
_WATCHDOG_S = 10.0
# Closing politely frees the PLC's session slot at once; it is bounded because the connector
# closes the old connection before it builds the next one.
_CLOSE_TIMEOUT_S = 0.5
_ACCESS_WRITE = int(ua.AccessLevelType.CurrentWrite)  # masks (ua.AccessLevel holds bit numbers)
_ACCESS_READ = int(ua.AccessLevelType.CurrentRead)


class OpcUaAdapter(PlcAdapter):
    def __init__(self, settings: Any) -> None:  # settings: plcbridge.config.PlcSettings
        super().__init__(settings)
        o = settings.opcua
        self.url = f"opc.tcp://{settings.host}:{settings.port}{o.endpoint_path}"
        # The base signals and the optional ones listed in plc.opcua.optional_outputs /
        # optional_inputs, no others.
        self._outs, self._ins = node_specs(o.output_nodes, o.input_nodes)
        self._out_names = tuple(n.signal.name for n in self._outs)
        self._in_names = tuple(n.signal.name for n in self._ins)
        self._out_vtypes = tuple(getattr(ua.VariantType, n.ua_type) for n in self._outs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        self._out_nodes: list[Node] = []
        self._in_nodes: list[Node] = []
        # Built at connect, re-sent every exchange (see the module docstring).
        self._write_request = ua.WriteRequest()
        self._read_request = ua.ReadRequest()
        self._ready = False
        self._secret: str | None = None  # only to scrub it from any text that leaves the adapter

    def describe(self) -> str:
        """Endpoint, security and user: what a log line needs; never a password."""
        o = self.settings.opcua
        security = "None" if o.security_policy == "None" else f"{o.security_policy}/{o.security_mode}"
        user = f", user {o.username}" if o.username else ""
        return f"{self.url} ({security}{user})"

    # ------------------------------------------------------------------ connect

    def connect(self) -> None:
        o = self.settings.opcua
        password = self._read_env(o.password_env, "plc.opcua.username is set") if o.username else None
        self._secret = password
        pki = None
        if o.security_policy != "None":
            pki = _load_pki(o)
            _check_application_uri(pki.certificate, o)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="plc-opcua-loop", daemon=True)
        self._thread.start()
        timeout_s = self.settings.connect_timeout_ms / 1000
        fut = asyncio.run_coroutine_threadsafe(self._connect(password, pki, timeout_s), self._loop)
        try:
            fut.result(timeout_s)
        except TimeoutError:
            fut.cancel()
            hint = ""
            if self.settings.opcua.security_policy != "None":
                # A server that cannot decrypt the OpenSecureChannel request (encrypted for
                # another certificate) drops it without an answer.
                hint = ("; a secured server that cannot decrypt the request stays silent: check that "
                        "plc.opcua.server_certificate is this PLC's current certificate")
            raise PlcError(f"no OPC UA session with {self.url} within connect_timeout_ms = "
                           f"{self.settings.connect_timeout_ms}{hint}") from None
        except PlcConfigError as e:
            raise PlcConfigError(self._scrub(str(e)), setting=e.setting) from None
        except PlcError as e:
            raise PlcError(self._scrub(str(e))) from None
        except Exception as e:  # noqa: BLE001 - every failure to connect is a PlcError, explained
            raise PlcError(self._scrub(self._explain(e))) from None
        self._ready = True

    @staticmethod
    def _read_env(var: str, why: str) -> str:
        value = os.environ.get(var)
        if not value:
            raise PlcError(f"{why} but the environment variable {var} holding the password is empty or unset")
        return value

    async def _connect(self, password: str | None, pki: _Pki | None, timeout_s: float) -> None:
        o = self.settings.opcua
        client = Client(self.url, timeout=timeout_s, watchdog_intervall=_WATCHDOG_S)
        client.application_uri = o.application_uri
        client.name = client.description = "plcbridge"
        client.session_timeout = o.session_timeout_ms
        if pki is not None:
            # What Client.set_security() does, with key material parsed once per process.
            policy = SecurityPolicyBasic256Sha256(pki.server_certificate, pki.certificate, pki.private_key,
                                                  getattr(ua.MessageSecurityMode, o.security_mode))
            client.security_policy = policy  # type: ignore[assignment]  # asyncua infers the attribute from its SecurityPolicyNone default
            client.uaclient.set_security(policy)
        if o.username:
            client.set_user(o.username)
            client.set_password(password or "")
        self._client = client
        await client.connect(auto_reconnect=False)
        namespaces = await client.get_namespace_array()
        if o.namespace_uri not in namespaces:
            raise PlcConfigError(f"the server has no namespace {o.namespace_uri!r} (plc.opcua.namespace_uri); "
                                 f"its namespaces are {namespaces}", setting="plc.opcua.namespace_uri")
        ns = namespaces.index(o.namespace_uri)
        self._out_nodes = [client.get_node(ua.NodeId(n.parsed_identifier, ns)) for n in self._outs]  # type: ignore[arg-type]  # asyncua accepts str/int; its stubs say String/Int32, Int16
        self._in_nodes = [client.get_node(ua.NodeId(n.parsed_identifier, ns)) for n in self._ins]  # type: ignore[arg-type]  # as above
        await self._check_nodes()
        self._write_request.Parameters.NodesToWrite = [
            ua.WriteValue(NodeId=n.nodeid, AttributeId=ua.AttributeIds.Value) for n in self._out_nodes]
        self._read_request.Parameters.NodesToRead = [
            ua.ReadValueId(NodeId=n.nodeid, AttributeId=ua.AttributeIds.Value) for n in self._in_nodes]

    async def _check_nodes(self) -> None:
        """One Read of DataType and UserAccessLevel for every node; all mismatches in one error."""
        specs = [*self._outs, *self._ins]
        nodes = [*self._out_nodes, *self._in_nodes]
        params = ua.ReadParameters()
        for node in nodes:
            for attr in (ua.AttributeIds.DataType, ua.AttributeIds.UserAccessLevel):
                params.NodesToRead.append(ua.ReadValueId(NodeId=node.nodeid, AttributeId=attr))
        assert self._client is not None
        results = await self._client.uaclient.read(params)
        uri = self.settings.opcua.namespace_uri
        problems: list[str] = []
        for i, spec in enumerate(specs):
            dtype, access = results[2 * i], results[2 * i + 1]
            where = f"node {spec.key} ({spec.expanded(uri)})"
            if not _good(dtype):
                problems.append(f"{where} is not readable as a variable: {_status_name(dtype)}")
                continue
            want = ua.NodeId(getattr(ua.ObjectIds, spec.ua_type))
            got = dtype.Value.Value if dtype.Value is not None else None
            if got != want:
                problems.append(f"{where} has data type {_type_name(got)}, but the contract needs "
                                f"{spec.ua_type} ({spec.signal.type} signal)")
            need = _ACCESS_WRITE if spec.direction == "output" else _ACCESS_READ
            level = access.Value.Value if _good(access) and access.Value is not None else None
            if level is not None and not int(level) & need:
                problems.append(f"{where} is not {'writable' if need == _ACCESS_WRITE else 'readable'} "
                                "for this session's user (UserAccessLevel)")
        if problems:
            raise PlcConfigError("PLC refused: " + "; ".join(problems),
                                 setting="plc.opcua node map (namespace_uri, *_template, *_nodes, optional_outputs, "
                                         "optional_inputs) or the PLC program")

    def _explain(self, e: BaseException) -> str:
        """A connect failure, in the terms of the settings that fix it."""
        o = self.settings.opcua
        text = str(e) or type(e).__name__
        if isinstance(e, (ua.uaerrors.BadUserAccessDenied, ua.uaerrors.BadIdentityTokenRejected,
                          ua.uaerrors.BadIdentityTokenInvalid)):
            who = f"user {o.username!r} with the password from ${o.password_env}" if o.username else "an anonymous session"
            return f"{self.url} refused {who}: {text}"
        if isinstance(e, ua.uaerrors.BadSecurityChecksFailed) or "certificate" in text.lower():
            return (f"secure channel to {self.url} failed ({text}); check plc.opcua.server_certificate is the "
                    "PLC's certificate and that the PLC trusts plc.opcua.certificate")
        if isinstance(e, ua.UaError) and "No matching endpoints" in text:
            return f"{self.url} offers no endpoint with {o.security_policy}/{o.security_mode}: {text}"
        if isinstance(e, ConnectionRefusedError):
            return f"cannot connect to {self.url}: connection refused: nothing listens on that port (is the PLC's OPC UA server enabled? plc.port)"
        if isinstance(e, OSError):
            return f"cannot connect to {self.url}: {text}"
        return f"{type(e).__name__} while connecting to {self.url}: {text}"

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    # ------------------------------------------------------------------ exchange

    def exchange(self, outputs: Outputs, timeout_s: float) -> Inputs:
        values = [getattr(outputs, name) for name in self._out_names]
        try:
            for spec, v in zip(self._outs, values):
                check_range(spec.signal, v)
        except ValueError as e:
            raise PlcError(str(e)) from None
        return self._run(lambda written: self._exchange(values, written), timeout_s)

    def read(self, timeout_s: float) -> Inputs:
        """The Read request of the input nodes alone."""
        return self._run(lambda _written: self._read(), timeout_s)

    def read_inputs(self, outputs: Outputs, timeout_s: float) -> Inputs:
        """The Read request alone: a read between ticks costs one OPC UA request, not two."""
        return self.read(timeout_s)

    def _run(self, step: Callable[[list[bool]], Coroutine[Any, Any, tuple[int, ...]]], timeout_s: float) -> Inputs:
        loop = self._loop
        if not self._ready or loop is None:
            raise PlcError("not connected")
        written: list[bool] = []
        fut = asyncio.run_coroutine_threadsafe(step(written), loop)
        try:
            return Inputs(**dict(zip(self._in_names, fut.result(timeout_s))))
        except TimeoutError:
            fut.cancel()
            raise PlcError(f"no answer within {timeout_s * 1000:.0f} ms", written=bool(written)) from None
        except PlcError as e:
            e.written = e.written or bool(written)
            raise
        except Exception as e:  # noqa: BLE001 - any failure on the wire ends this session
            raise PlcError(self._scrub(f"{type(e).__name__}: {e}"), written=bool(written)) from None

    async def _exchange(self, values: list[int], written: list[bool]) -> tuple[int, ...]:
        proto = self._protocol()
        request = self._write_request
        for wv, v, t in zip(request.Parameters.NodesToWrite, values, self._out_vtypes):
            wv.Value = ua.DataValue(ua.Variant(v, t), StatusCode=None)
        # Both requests go out before either answer is awaited: write first, then read.
        write = self._send(proto, request)
        try:
            read_ = self._send(proto, self._read_request)
        except BaseException:
            write.cancel()  # nobody will await it: the session ends with this error
            raise
        answers: tuple[Any, Any] = await asyncio.gather(write, read_, return_exceptions=True)
        wrote, read = answers
        if isinstance(wrote, BaseException):
            raise wrote
        uri = self.settings.opcua.namespace_uri
        for spec, status in zip(self._outs, _response(proto, ua.WriteResponse, wrote).Results):
            if not status.is_good():
                _raise_refused(f"write of {spec.key} ({spec.expanded(uri)}) refused: {status.name}", status.name,
                               "plc.opcua.output_nodes / output_template")
        written.append(True)
        if isinstance(read, BaseException):
            raise read
        return self._decode(_response(proto, ua.ReadResponse, read).Results)

    async def _read(self) -> tuple[int, ...]:
        proto = self._protocol()
        return self._decode(_response(proto, ua.ReadResponse, await self._send(proto, self._read_request)).Results)

    def _protocol(self) -> Any:  # asyncua.client.ua_client.UASocketProtocol
        client = self._client
        assert client is not None
        state = client.uaclient.state
        if state is not UaClientState.CONNECTED:
            raise PlcError(f"session lost (client {state.value})")
        proto = client.uaclient.protocol
        if proto is None or proto.transport is None:
            raise PlcError("session lost (socket closed)")
        return proto

    def _send(self, proto: Any, request: Any) -> asyncio.Future[Any]:
        """Encode and send `request` now (synchronously, so the order on the wire is the order
        of the calls); the future of its response body, for `_response`."""
        request.RequestHeader.Timestamp = datetime.now(timezone.utc)
        future: asyncio.Future[Any] = proto._send_request(request, self.settings.link_timeout_ms / 1000)
        return future

    def _decode(self, read: list[ua.DataValue]) -> tuple[int, ...]:
        uri = self.settings.opcua.namespace_uri
        got: list[int] = []
        for spec, dv in zip(self._ins, read):
            if not _good(dv) or dv.Value is None or not isinstance(dv.Value.Value, int):
                text = (f"read of {spec.key} ({spec.expanded(uri)}) gave {_status_name(dv)}, "
                        f"value {getattr(dv.Value, 'Value', None)!r}")
                if not _good(dv):
                    _raise_refused(text, _status_name(dv), "plc.opcua.input_nodes / input_template", written=True)
                raise PlcConfigError(text + f": the contract needs {spec.ua_type}",
                                     setting="plc.opcua.input_nodes / input_template", written=True)
            got.append(check_range(spec.signal, dv.Value.Value))
        return tuple(got)

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        self._ready = False
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        try:
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            fut.result(_CLOSE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - closing a dead session must not raise
            pass
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(_CLOSE_TIMEOUT_S)
        if thread is None or not thread.is_alive():
            loop.close()
        self._loop = self._thread = self._client = None

    async def _shutdown(self) -> None:
        """Close the session politely if it is alive (frees the PLC's session slot at once),
        then cancel whatever asyncua left running on this loop."""
        client = self._client
        if client is not None:
            try:
                if client.uaclient.state is UaClientState.CONNECTED:
                    await asyncio.wait_for(client.disconnect(), _CLOSE_TIMEOUT_S / 2)
                else:
                    client.uaclient.request_disconnect()
                    client.disconnect_socket()
            except Exception:  # noqa: BLE001
                pass
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)


def _response(proto: Any, kind: type[Any], data: Any) -> Any:
    """The decoded response of `kind`, or the service's failure raised, as asyncua's own
    request path does: a ServiceFault (BadSessionIdInvalid, BadTooManyOperations) or a
    bad ServiceResult in the response header."""
    proto.check_answer(data, f" in response to {kind.__name__.removesuffix('Response')}Request")
    response = struct_from_binary(kind, data)
    response.ResponseHeader.ServiceResult.check()
    return response


@dataclass(frozen=True)
class _Pki:
    certificate: x509.Certificate
    private_key: PrivateKeyTypes
    server_certificate: x509.Certificate


_pki_cache: dict[tuple[Any, ...], _Pki] = {}
_pki_lock = threading.Lock()


def _load_pki(o: Any) -> _Pki:
    """The bridge's certificate and key and the trusted PLC certificate, parsed once per
    file content (path, size, mtime) for the whole process.

    Parsing an RSA private key validates it, which takes tens of milliseconds (64 ms on the
    2-core line PC) with the GIL held: done at every reconnect it would stall the write loop
    each time.
    """
    files = {"certificate": o.certificate, "private_key": o.private_key, "server_certificate": o.server_certificate}
    try:
        stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files.values())
        with _pki_lock:
            if stamp in _pki_cache:
                return _pki_cache[stamp]
        raw = {k: Path(p).read_bytes() for k, p in files.items()}
    except OSError as e:
        raise PlcError(f"cannot read the OPC UA security files: {e}") from None
    cert, server_cert = (_certificate(raw[k], files[k], k) for k in ("certificate", "server_certificate"))
    password = None
    if o.private_key_password_env:
        password = OpcUaAdapter._read_env(o.private_key_password_env, "plc.opcua.private_key_password_env is set").encode()
    load = serialization.load_pem_private_key if raw["private_key"].startswith(b"-----") else serialization.load_der_private_key
    try:
        key = load(raw["private_key"], password=password)
    except TypeError as e:  # encrypted without a password, or a password for a plain key
        raise PlcError(f"plc.opcua.private_key {files['private_key']}: {e}") from None
    except ValueError as e:
        raise PlcError(f"plc.opcua.private_key: {unreadable_pki(files['private_key'], 'a private key', e)}") from None
    pki = _Pki(cert, key, server_cert)
    with _pki_lock:
        _pki_cache.clear()  # one station, one set of files: keep only the newest
        _pki_cache[stamp] = pki
    return pki


def _certificate(data: bytes, path: Any, field: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data) if data.startswith(b"-----") else x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise PlcError(f"plc.opcua.{field}: {unreadable_pki(path, 'an X.509 certificate', e)}") from None


def _check_application_uri(cert: x509.Certificate, o: Any) -> None:
    """PLCs refuse a client whose certificate does not name its application URI
    (BadCertificateUriInvalid); say so before connecting, in the settings' terms."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if o.application_uri not in uris:
        raise PlcError(f"plc.opcua.certificate {o.certificate} names the application URI(s) {uris or 'none'}, not "
                       f"plc.opcua.application_uri {o.application_uri!r}: the PLC would refuse it")


# Status codes that say the node configuration does not fit this server: no reconnect fixes them.
_CONFIG_STATUS = frozenset({"BadNodeIdUnknown", "BadNodeIdInvalid", "BadTypeMismatch", "BadUserAccessDenied",
                            "BadNotWritable", "BadNotReadable", "BadAttributeIdInvalid", "BadWriteNotSupported",
                            "BadOutOfRange"})


def _raise_refused(text: str, status: str, setting: str, *, written: bool = False) -> None:
    """A Bad status for one node: the configuration, or a passing refusal (session kept)."""
    if status in _CONFIG_STATUS:
        raise PlcConfigError(text, setting=setting, written=written)
    raise PlcError(text, written=written, keep_session=True)


def _good(dv: ua.DataValue) -> bool:
    return dv.StatusCode is None or dv.StatusCode.is_good()


def _status_name(dv: ua.DataValue) -> str:
    return "Good" if dv.StatusCode is None else dv.StatusCode.name


def _type_name(nodeid: Any) -> str:
    if isinstance(nodeid, ua.NodeId) and nodeid.NamespaceIndex == 0 and isinstance(nodeid.Identifier, int):
        return ua.ObjectIdNames.get(nodeid.Identifier, nodeid.to_string())
    return nodeid.to_string() if isinstance(nodeid, ua.NodeId) else repr(nodeid)


__all__ = ["OpcUaAdapter"]
