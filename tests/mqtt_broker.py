"""MQTT test infrastructure: a real Mosquitto on 127.0.0.1, a collecting subscriber, and rude
brokers (Python TCP servers that speak just enough MQTT 3.1.1 and 5 to misbehave on purpose).

Use it from a test module with

    pytest_plugins = ["mqtt_broker"]       # the fixtures below, and the broker log on failure
    from mqtt_broker import Mosquitto, Subscriber, SilentBroker, ...

Fixtures: `mosquitto` (started, password only), `mosquitto_tls` (plus a TLS listener),
`make_mosquitto(**options)` (any options, several brokers), `make_subscriber(broker, *topics)`.
They skip the test, saying how to enable it, when Debian's mosquitto or paho-mqtt is missing
(`make mqtt-test-deps` as root; `make test` does it by itself as root with apt). The rude
brokers need neither.

A Mosquitto of a test never touches the system one that Debian's package may have started on
1883: its own config in its own folder, its own ports chosen free on 127.0.0.1 (never 1883),
its own password file, persistence folder and log, `-c` so /etc/mosquitto is never read.
Certificates are made at test time with the `cryptography` package (asyncua, a base dependency,
requires it): nothing is downloaded.

Test modules import this module before pytest_plugins registers it, too late for pytest to
rewrite its asserts (which carry their own messages): PYTEST_DONT_REWRITE says so, and keeps
pytest from warning about it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import pwd
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
except ImportError:  # the tests that need it skip with HINT
    mqtt = None  # type: ignore[assignment]

HINT = "as root run 'make mqtt-test-deps' (apt: mosquitto mosquitto-clients; pip: .[mqtt])"
HOST = "127.0.0.1"
# Debian puts the broker in /usr/sbin, which a non-root PATH may lack.
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
MOSQUITTO = shutil.which("mosquitto", path=_SEARCH)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd", path=_SEARCH)
USERNAME = "station"
RUNNING = re.compile(r"mosquitto version \S+ running")
PASSWORD = "correct horse battery staple"


def require_paho() -> None:
    """Skip (module level too) when paho-mqtt is not installed."""
    if mqtt is None:
        pytest.skip(f"paho-mqtt is not installed, the MQTT broker tests are skipped: {HINT}", allow_module_level=True)


def require_mosquitto() -> None:
    """Skip (module level too) when Debian's mosquitto or paho-mqtt is missing."""
    if MOSQUITTO is None:
        pytest.skip(f"mosquitto is not installed, the MQTT broker tests are skipped: {HINT}", allow_module_level=True)
    require_paho()


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on now (the kernel's choice: never 1883)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.02) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


# ---------------------------------------------------------------- passwords and certificates


def password_hash(password: str, salt: bytes | None = None, iterations: int = 101) -> str:
    """Mosquitto 2's password-file hash, as `mosquitto_passwd` writes it: `$7$` is
    PBKDF2-HMAC-SHA512 with the iteration count, the salt and the hash in base64."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_password_file(path: Path, users: Mapping[str, str], tool: bool = True) -> None:
    """`users` (name -> password) hashed with mosquitto_passwd when it is there and `tool`,
    else with password_hash (the same format). Mode 0600."""
    path.write_text("")
    path.chmod(0o600)
    if tool and MOSQUITTO_PASSWD:
        for name, pw in users.items():
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(path), name, pw], check=True, capture_output=True, timeout=30)
    else:
        path.write_text("".join(f"{name}:{password_hash(pw)}\n" for name, pw in users.items()))


@dataclass(frozen=True)
class Pki:
    """Certificates made at test time (PEM files, keys mode 0600). `ca` signed `server_*`
    (for 127.0.0.1 and localhost) and `client_*`; `other_ca` signed only `rogue_client_*`:
    a client that trusts `other_ca` must refuse the server, and a broker that requires a
    certificate must refuse the rogue client."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path


def make_pki(folder: Path, hosts: Sequence[str] = (HOST, "localhost"), days: int = 2) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "plcbridge tests"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: Any, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        path.chmod(0o600)

    def issue(cn: str, key: Any, issuer: tuple[x509.Name, Any] | None, *, ca: bool = False,
              server: bool = False) -> x509.Certificate:
        issuer_name, issuer_key = issuer if issuer else (name(cn), key)
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer_name).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now)
             .not_valid_after(now + datetime.timedelta(days=days))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False))
        if ca:
            b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                              encipher_only=False, decipher_only=False), critical=True)
        else:
            b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                              data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                                              encipher_only=False, decipher_only=False), critical=True)
            usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            alt: list[x509.GeneralName] = []
            for h in hosts:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(h)))
                except ValueError:
                    alt.append(x509.DNSName(h))
            b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def pem(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    paths: dict[str, Path] = {}
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = issue("plcbridge test CA", ca_key, None, ca=True)
    other_cert = issue("plcbridge other CA", other_key, None, ca=True)
    paths["ca"] = pem(ca_cert, folder / "ca.pem")
    paths["other_ca"] = pem(other_cert, folder / "other-ca.pem")
    for stem, cn, issuer, server in (("server", "mosquitto", (ca_cert.subject, ca_key), True),
                                     ("client", "station", (ca_cert.subject, ca_key), False),
                                     ("rogue_client", "rogue", (other_cert.subject, other_key), False)):
        key = ec.generate_private_key(ec.SECP256R1())
        file = stem.replace("_", "-")
        paths[f"{stem}_cert"] = pem(issue(cn, key, issuer, server=server), folder / f"{file}.pem")
        write_key(key, folder / f"{file}.key")
        paths[f"{stem}_key"] = folder / f"{file}.key"
    return Pki(dir=folder, **paths)


# ---------------------------------------------------------------- Mosquitto


class Mosquitto:
    """A real mosquitto process of this test: 127.0.0.1 only, ports chosen free, its own
    folder (`workdir`) with mosquitto.conf, the password file, the persistence database and
    mosquitto.log (every start appended). `allow_anonymous false`: every client needs one of
    `users` (default {USERNAME: PASSWORD}). With `tls`, a second listener on `tls_port` with
    certificates from make_pki (`pki`); `require_certificate` makes it ask for a client
    certificate signed by `pki.ca`, and the password is still required.

    Persistence is on: `stop()` (SIGTERM) saves retained messages, persistent sessions and
    their queued messages, and `start()` brings them back on the same ports; `kill()` (SIGKILL)
    loses what changed since the last autosave (`autosave_interval` seconds); `freeze()` /
    `thaw()` (SIGSTOP/SIGCONT) make a broker that accepts TCP connections and answers nothing.
    `max_queued_messages` per offline client is raised from Mosquitto's 1000 so that a
    subscriber's gap in a long test does not drop messages.
    """

    host = HOST

    def __init__(self, workdir: Path, *, users: Mapping[str, str] | None = None, tls: bool = False,
                 require_certificate: bool = False, autosave_interval: int = 60, max_queued_messages: int = 1_000_000,
                 verbose: bool = False, extra_config: str = "", hash_with_tool: bool = True) -> None:
        if MOSQUITTO is None:
            raise RuntimeError(f"mosquitto is not installed: {HINT}")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users = dict(users) if users is not None else {USERNAME: PASSWORD}
        self.username, self.password = next(iter(self.users.items())) if self.users else (None, None)
        self.tls = tls
        self.require_certificate = require_certificate
        self.autosave_interval = autosave_interval
        self.max_queued_messages = max_queued_messages
        self.verbose = verbose
        self.extra_config = extra_config
        self.config_file = self.workdir / "mosquitto.conf"
        self.password_file = self.workdir / "passwd"
        self.data_dir = self.workdir / "data"
        self.log_file = self.workdir / "mosquitto.log"
        self.data_dir.mkdir(exist_ok=True)
        write_password_file(self.password_file, self.users, tool=hash_with_tool)
        self.pki: Pki | None = make_pki(self.workdir / "pki") if tls else None
        self.port = 0
        self.tls_port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._cpu_done = 0.0

    # -- life cycle

    def _write_config(self) -> None:
        log_types = ["all"] if self.verbose else ["error", "warning", "notice", "information"]
        lines = [
            "# written by tests/mqtt_broker.py for one test; /etc/mosquitto is never read",
            # As root, Mosquitto 2 drops to the `mosquitto` user before reading the password file
            # and certificates, which would not reach pytest's 0700 tmp folders: stay who we are.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {self.password_file}",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            f"autosave_interval {self.autosave_interval}",
            f"max_queued_messages {self.max_queued_messages}",
            "set_tcp_nodelay true",
            "log_dest stderr",
            *(f"log_type {t}" for t in log_types),
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            f"listener {self.port} {self.host}",
        ]
        if self.tls and self.pki is not None:
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.pki.ca}",
                f"certfile {self.pki.server_cert}",
                f"keyfile {self.pki.server_key}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        self.config_file.write_text("\n".join(lines) + "\n" + self.extra_config + "\n")

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Start (the first time on new free ports, later on the same ones) and wait until it runs."""
        if self.running:
            return self
        first = self.port == 0
        for attempt in range(3 if first else 1):
            if first:
                self.port = free_port()
                self.tls_port = free_port() if self.tls else None
                while self.tls_port == self.port:
                    self.tls_port = free_port()
            self._write_config()
            offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            with open(self.log_file, "ab") as log:
                self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config_file)], stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, cwd=self.workdir)
            self.starts += 1
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                text = self._log_bytes(offset).decode(errors="replace")
                if RUNNING.search(text):
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
            text = self._log_bytes(offset).decode(errors="replace")
            self._reap(kill=True)
            if first and "in use" in text and attempt < 2:  # a port taken between the choice and the bind
                continue
            raise RuntimeError(f"mosquitto did not start on {self.host}:{self.port}; its log:\n{text}")
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: a clean shutdown, the persistence database saved."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing saved since the last autosave."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections (the kernel's backlog), nothing answers."""
        assert self.proc is not None and self.running, "mosquitto is not running"
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def _signal(self, sig: int, timeout: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self._cpu_done += self._cpu_now()
        self.proc.send_signal(signal.SIGCONT)  # a frozen broker must see the SIGTERM
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._reap(kill=True)
            raise AssertionError(f"mosquitto did not stop within {timeout} s on {signal.Signals(sig).name}:\n{self.log_tail()}")

    def _reap(self, kill: bool) -> None:
        if self.proc is not None and self.proc.poll() is None and kill:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running and self.proc is not None else None

    def _cpu_now(self) -> float:
        if not self.running or self.proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self) -> float:
        """User + system CPU of every process this broker has been so far (Linux /proc)."""
        return self._cpu_done + self._cpu_now()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.running:
            try:
                self.stop(timeout=5)
            except AssertionError:
                pass
        self._reap(kill=True)

    # -- logs

    def _log_bytes(self, offset: int = 0) -> bytes:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return b""

    def log(self) -> str:
        """Everything every start of this broker logged."""
        return self._log_bytes().decode(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, text: str, timeout: float = 10.0, count: int = 1) -> str:
        """Wait until `text` appears `count` times in the log (e.g. "as station-1" for a client
        id that connected, "Client station-1 disconnected", "not authorised")."""
        wait_until(lambda: self.log().count(text) >= count, timeout, f"{text!r} x{count} in the mosquitto log:\n{self.log_tail()}")
        return self.log()

    # -- clients

    def client(self, client_id: str = "", *, tls: bool = False, username: str | None = None, password: str | None = None,
               ca: Path | str | None = None, certfile: Path | str | None = None, keyfile: Path | str | None = None,
               clean_session: bool = True, protocol: int | None = None) -> Any:
        """A paho-mqtt Client (callback API 2) with this broker's credentials (`username` and
        `password` override them; "" for none) and, with `tls`, its CA (or `ca`) and the client
        certificate when the broker requires one (`certfile=""`: none even then). Not connected:
        `.connect(b.host, b.tls_port or b.port)`, or connect_and_wait."""
        require_paho()
        proto = protocol if protocol is not None else mqtt.MQTTv311
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        clean_session=None if proto == mqtt.MQTTv5 else clean_session, protocol=proto)
        user = self.username if username is None else username
        if user:
            c.username_pw_set(user, self.password if password is None else password)
        if tls:
            assert self.pki is not None, "this broker has no TLS listener (Mosquitto(tls=True))"
            if certfile is None and self.require_certificate:
                certfile, keyfile = self.pki.client_cert, self.pki.client_key
            c.tls_set(ca_certs=str(ca or self.pki.ca), certfile=str(certfile) if certfile else None,
                      keyfile=str(keyfile) if keyfile else None)
        return c

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False, timeout: float = 10.0) -> None:
        """Publish one message with a short-lived client and wait for the broker's PUBACK."""
        c = self.client()
        c.connect(self.host, self.port, keepalive=30)
        c.loop_start()
        try:
            info = c.publish(topic, payload, qos=qos, retain=retain)
            info.wait_for_publish(timeout)
            assert info.is_published(), f"no PUBACK for {topic} within {timeout} s:\n{self.log_tail()}"
        finally:
            c.disconnect()
            c.loop_stop()

    def subscriber(self, *topics: str, tls: bool = False, **kw: Any) -> Subscriber:
        """A connected Subscriber on this broker (see Subscriber for `kw`)."""
        if tls:
            assert self.pki is not None and self.tls_port is not None, "this broker has no TLS listener"
            kw.setdefault("ca", self.pki.ca)
            if self.require_certificate:
                kw.setdefault("certfile", self.pki.client_cert)
                kw.setdefault("keyfile", self.pki.client_key)
        kw.setdefault("username", self.username)
        kw.setdefault("password", self.password)
        return Subscriber(self.host, self.tls_port if tls and self.tls_port else self.port, topics, **kw)


def connect_and_wait(client: Any, host: str, port: int, timeout: float = 5.0, keepalive: int = 10) -> Any:
    """Connect a paho client, start its network loop and wait for the CONNACK: its ReasonCode
    (`.is_failure`, `.value`: 3.1.1 return codes come as MQTT 5 reasons, 4 -> 0x86, 5 -> 0x87),
    the exception connect() raised (a TLS handshake that failed), or None when no CONNACK came
    (the broker closed the connection, or never answered within `timeout`). It sets the
    client's on_connect and on_disconnect. The loop is left running when it started:
    `client.loop_stop()` (paho retries a refused connection by itself meanwhile)."""
    result: queue.Queue[Any] = queue.Queue()
    client.on_connect = lambda c, userdata, flags, reason, props: result.put(reason)
    client.on_disconnect = lambda c, userdata, flags, reason, props: result.put(None)
    try:
        client.connect(host, port, keepalive=keepalive)
    except Exception as e:  # ssl.SSLError, ConnectionRefusedError...
        return e
    client.loop_start()
    try:
        return result.get(timeout=timeout)
    except queue.Empty:
        return None


# ---------------------------------------------------------------- subscriber


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    received: float  # time.time() when the subscriber got it

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho-mqtt subscriber that collects every message, per topic, thread-safely.

    QoS 1 and a persistent session by default (`clean_session=False`, a fixed client id; on
    MQTT 5 a session that never expires): messages published while it is disconnected, or
    while the broker was restarted, are queued by the broker and delivered when it is back.
    It subscribes only when the broker has no session for it (a resubscription would make the
    broker send the retained messages again). It reconnects by itself (0.2..2 s) after the
    broker went away; `disconnect()` / `connect()` make a gap on purpose.
    """

    _ids = iter(range(1, 1 << 30))

    def __init__(self, host: str, port: int, topics: Sequence[str] | str, *, client_id: str | None = None,
                 username: str | None = None, password: str | None = None, ca: Path | str | None = None,
                 certfile: Path | str | None = None, keyfile: Path | str | None = None, qos: int = 1,
                 clean_session: bool = False, protocol: int | None = None, connect: bool = True, timeout: float = 10.0) -> None:
        require_paho()
        self.host, self.port = host, port
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.qos = qos
        self.client_id = client_id or f"test-subscriber-{os.getpid()}-{next(self._ids)}"
        self.clean_session = clean_session
        self.protocol = protocol if protocol is not None else mqtt.MQTTv311
        self._cond = threading.Condition()
        self._messages: list[Message] = []
        self._ready = False
        self._error: str | None = None
        self.connections = 0  # successful CONNACKs so far
        v5 = self.protocol == mqtt.MQTTv5
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  clean_session=None if v5 else clean_session, protocol=self.protocol)
        if username:
            self.client.username_pw_set(username, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca), certfile=str(certfile) if certfile else None, keyfile=str(keyfile) if keyfile else None)
        self.client.reconnect_delay_set(min_delay=0.2, max_delay=2)  # type: ignore[arg-type]  # a float works
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        if connect:
            self.connect(timeout)

    # -- paho callbacks (its network thread)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._cond:
            if reason.is_failure:
                self._error = f"connection refused: {reason}"
                self._cond.notify_all()
                return
            self.connections += 1
            if flags.session_present:
                self._ready = True
                self._cond.notify_all()
                return
        client.subscribe([(t, self.qos) for t in self.topics])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        with self._cond:
            bad = [str(r) for r in reasons if r.is_failure]
            if bad:
                self._error = f"subscription refused: {bad}"
            else:
                self._ready = True
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        m = Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), time.time())
        with self._cond:
            self._messages.append(m)
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._cond:
            self._ready = False
            self._cond.notify_all()

    # -- control

    def connect(self, timeout: float = 10.0) -> Subscriber:
        """Connect and wait until subscribed (or the broker kept the session)."""
        with self._cond:
            self._ready, self._error = False, None
        props = None
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if self.clean_session else 0xFFFFFFFF
        self.client.connect(self.host, self.port, keepalive=10,
                            clean_start=self.clean_session if self.protocol == mqtt.MQTTv5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                            properties=props)
        self.client.loop_start()
        with self._cond:
            ok = self._cond.wait_for(lambda: self._ready or self._error is not None, timeout)
            error = self._error
        if error or not ok:
            self.client.loop_stop()
            self.client.disconnect()
            raise AssertionError(f"subscriber {self.client_id} on {self.host}:{self.port}: {error or f'not subscribed within {timeout} s'}")
        return self

    def wait_connected(self, timeout: float = 10.0) -> None:
        """After a broker restart: wait until the subscriber is back (it reconnects by itself)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready, timeout):
                raise AssertionError(f"subscriber {self.client_id} not reconnected within {timeout} s")

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._ready

    def disconnect(self) -> None:
        """A clean DISCONNECT: with a persistent session the broker queues what comes meanwhile."""
        self.client.disconnect()
        self.client.loop_stop()
        with self._cond:
            self._ready = False

    close = disconnect

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what it got

    def messages(self, topic: str | None = None) -> list[Message]:
        """Every message so far in arrival order (duplicates included), or those of one topic."""
        with self._cond:
            return [m for m in self._messages if topic is None or m.topic == topic]

    def by_topic(self) -> dict[str, list[Message]]:
        out: dict[str, list[Message]] = {}
        for m in self.messages():
            out.setdefault(m.topic, []).append(m)
        return out

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [m.payload for m in self.messages(topic)]

    def json(self, topic: str | None = None) -> list[Any]:
        return [m.json() for m in self.messages(topic)]

    def count(self, topic: str | None = None) -> int:
        return len(self.messages(topic))

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait_for(self, count: int, timeout: float, topic: str | None = None) -> list[Message]:
        """Wait until at least `count` messages (of `topic`) arrived; returns them all."""
        def enough() -> bool:
            return sum(1 for m in self._messages if topic is None or m.topic == topic) >= count
        with self._cond:
            if not self._cond.wait_for(enough, timeout):
                got = {t: len(ms) for t, ms in self._by_topic_locked().items()}
                raise AssertionError(f"subscriber {self.client_id}: {count} messages{f' on {topic}' if topic else ''} "
                                     f"expected within {timeout} s, got {got}")
        return self.messages(topic)

    def _by_topic_locked(self) -> dict[str, list[Message]]:
        out: dict[str, list[Message]] = {}
        for m in self._messages:
            out.setdefault(m.topic, []).append(m)
        return out


# ---------------------------------------------------------------- rude brokers

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14
# CONNACK refusals: (MQTT 3.1.1 return code, MQTT 5 reason code)
REFUSALS = {"bad_credentials": (4, 0x86), "not_authorized": (5, 0x87)}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: int, body: bytes, flags: int = 0) -> bytes:
    return bytes([kind << 4 | flags]) + _varint(len(body)) + body


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("packet too short")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("!H", self.take(2))[0])

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            b = self.u8()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 21:
                raise ValueError("bad variable byte integer")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def text(self) -> str:
        return self.binary().decode("utf-8", errors="replace")

    def properties(self, v5: bool) -> bytes:
        return self.take(self.varint()) if v5 else b""

    def rest(self) -> bytes:
        return self.data[self.pos:]


@dataclass(frozen=True)
class ConnectInfo:
    """One CONNECT as the rude broker read it."""

    at: float  # time.monotonic()
    connection: int
    protocol_level: int  # 4: MQTT 3.1.1, 5: MQTT 5
    client_id: str
    clean: bool
    keepalive: int
    username: str | None
    password: bytes | None
    will_topic: str | None
    will_payload: bytes | None
    will_retain: bool


@dataclass(frozen=True)
class Published:
    at: float  # time.monotonic()
    connection: int
    topic: str
    payload: bytes
    qos: int
    packet_id: int | None
    dup: bool
    retain: bool


class _Connection:
    def __init__(self, broker: FakeBroker, sock: socket.socket, index: int) -> None:
        self.broker, self.sock, self.index = broker, sock, index
        self.buf = bytearray()
        self.v5 = False
        self.unacked: set[int] = set()
        self.lock = threading.Lock()
        self.closed = False
        self.acks: queue.Queue[tuple[float, int] | None] = queue.Queue()
        self.deadline = time.monotonic() + broker.drop_after_s if broker.drop_after_s else None

    def send(self, data: bytes) -> None:
        with self.lock:
            if self.closed:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.sock.close()

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            if self.broker._stopping.is_set() or self.closed:
                return False
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.broker._count("drops")
                return False
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return False
            if not chunk:
                return False
            self.buf += chunk
        return True

    def read_packet(self) -> tuple[int, int, bytes] | None:
        if not self._fill(2):
            return None
        length, shift, i = 0, 0, 1
        while True:
            if not self._fill(i + 1):
                return None
            b = self.buf[i]
            length |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:
                return None
        if not self._fill(i + length):
            return None
        first = self.buf[0]
        body = bytes(self.buf[i:i + length])
        del self.buf[:i + length]
        return first >> 4, first & 0x0F, body

    def ack_later(self, packet_id: int) -> None:
        self.acks.put((time.monotonic() + self.broker.puback_delay_ms / 1000.0, packet_id))

    def acker(self) -> None:
        """Sends the delayed PUBACKs in the order the PUBLISHes came."""
        while True:
            item = self.acks.get()
            if item is None:
                return
            due, pid = item
            while not self.closed and time.monotonic() < due:
                time.sleep(min(0.01, max(0.0, due - time.monotonic())))
            if self.closed:
                return
            self.broker._puback(self, pid)


class FakeBroker:
    """A minimal MQTT 3.1.1 / 5 server on 127.0.0.1 (a free port) for misbehaving on purpose.

    It answers CONNECT with CONNACK (or a refusal: `refuse` = "bad_credentials" or
    "not_authorized", then closes), PINGREQ with PINGRESP, SUBSCRIBE with SUBACK (or not, with
    `suback=False`), UNSUBSCRIBE with UNSUBACK, and records every PUBLISH. QoS 1 is
    acknowledged with PUBACK unless `puback=False`, after `puback_delay_ms` (in order) when set;
    QoS 2 gets PUBREC, then PUBCOMP. `drop_after_s` closes every connection that long after it
    was accepted. It keeps no session and sends nothing to subscribers.

    Counters (read them under no lock; lists are appended to): `connections` (TCP accepts),
    `connects` (ConnectInfo), `published` (Published, every PUBLISH packet, resends with DUP
    included), `acked` (PUBACKs sent), `in_flight` (QoS>0 PUBLISHes received and not yet
    acknowledged, on open connections), `max_in_flight` (its highest on any one connection),
    `drops` (connections it closed on schedule), `pings`, `subscriptions` (topic filters).
    A context manager: `with SilentBroker() as b: ... b.port ...`.
    """

    host = HOST

    def __init__(self, *, puback: bool = True, puback_delay_ms: float = 0.0, drop_after_s: float | None = None,
                 refuse: str | None = None, suback: bool = True, keep_payloads: bool = True) -> None:
        if refuse is not None and refuse not in REFUSALS:
            raise ValueError(f"refuse: one of {sorted(REFUSALS)}")
        self.puback, self.puback_delay_ms, self.drop_after_s = puback, puback_delay_ms, drop_after_s
        self.refuse, self.suback, self.keep_payloads = refuse, suback, keep_payloads
        self.port = 0
        self.connections = 0
        self.connects: list[ConnectInfo] = []
        self.published: list[Published] = []
        self.acked = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.drops = 0
        self.pings = 0
        self.disconnects = 0  # DISCONNECT packets received
        self.subscriptions: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open: list[_Connection] = []
        self._server: socket.socket | None = None

    # -- life cycle

    def start(self) -> FakeBroker:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(64)
        s.settimeout(0.1)
        self._server = s
        self.port = s.getsockname()[1]
        self._stopping.clear()
        self._spawn(self._accept_loop, "accept")
        return self

    def stop(self) -> None:
        """Close the port and every connection (a later start() reopens the same port)."""
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        with self._lock:
            conns = list(self._open)
        for c in conns:
            c.acks.put(None)
            c.close()
        while self._threads:
            self._threads.pop().join(5)

    def __enter__(self) -> FakeBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=f"{type(self).__name__}-{name}", daemon=True)
        self._threads.append(t)
        t.start()

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    # -- the server

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            try:
                sock, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(0.05)
            with self._lock:
                self.connections += 1
                conn = _Connection(self, sock, self.connections)
                self._open.append(conn)
            self._spawn(self._serve, f"conn{conn.index}", conn)

    def _serve(self, conn: _Connection) -> None:
        if self.puback and self.puback_delay_ms > 0:
            self._spawn(conn.acker, f"acker{conn.index}")
        try:
            while True:
                packet = conn.read_packet()
                if packet is None:
                    return
                if not self._handle(conn, *packet):
                    return
        except ValueError:  # a malformed packet: close, as a broker would
            return
        finally:
            conn.acks.put(None)
            conn.close()
            with self._lock:
                self.in_flight -= len(conn.unacked)
                conn.unacked.clear()
                if conn in self._open:
                    self._open.remove(conn)

    def _handle(self, conn: _Connection, kind: int, flags: int, body: bytes) -> bool:
        r = _Reader(body)
        if kind == CONNECT:
            return self._on_connect(conn, r)
        if kind == PUBLISH:
            qos = (flags >> 1) & 3
            topic = r.text()
            pid = r.u16() if qos else None
            r.properties(conn.v5)
            payload = r.rest()
            p = Published(time.monotonic(), conn.index, topic, payload if self.keep_payloads else b"", qos, pid,
                          bool(flags & 8), bool(flags & 1))
            with self._lock:
                self.published.append(p)
                if pid is not None and pid not in conn.unacked:
                    conn.unacked.add(pid)
                    self.in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, len(conn.unacked))
            if qos == 1 and pid is not None and self.puback:
                if self.puback_delay_ms > 0:
                    conn.ack_later(pid)
                else:
                    self._puback(conn, pid)
            elif qos == 2 and pid is not None and self.puback:
                conn.send(_packet(PUBREC, struct.pack("!H", pid)))
            return True
        if kind == PUBREL:
            pid = r.u16()
            self._settle(conn, pid)
            conn.send(_packet(PUBCOMP, struct.pack("!H", pid)))
            return True
        if kind == PINGREQ:
            self._count("pings")
            conn.send(_packet(PINGRESP, b""))
            return True
        if kind == SUBSCRIBE:
            pid = r.u16()
            r.properties(conn.v5)
            granted = bytearray()
            while r.pos < len(r.data):
                topic = r.text()
                granted.append(r.u8() & 3)
                with self._lock:
                    self.subscriptions.append(topic)
            if self.suback:
                conn.send(_packet(SUBACK, struct.pack("!H", pid) + (b"\x00" if conn.v5 else b"") + bytes(granted)))
            return True
        if kind == UNSUBSCRIBE:
            pid = r.u16()
            r.properties(conn.v5)
            n = 0
            while r.pos < len(r.data):
                r.text()
                n += 1
            conn.send(_packet(UNSUBACK, struct.pack("!H", pid) + (b"\x00" + b"\x00" * n if conn.v5 else b"")))
            return True
        if kind == DISCONNECT:
            self._count("disconnects")
            return False
        return True  # PUBACK and the rest: we never send QoS>0 to clients

    def _on_connect(self, conn: _Connection, r: _Reader) -> bool:
        r.text()  # "MQTT" (or "MQIsdp")
        level = r.u8()
        cflags = r.u8()
        keepalive = r.u16()
        conn.v5 = level == 5
        r.properties(conn.v5)
        client_id = r.text()
        will_topic = will_payload = None
        if cflags & 0x04:
            r.properties(conn.v5)
            will_topic, will_payload = r.text(), r.binary()
        username = r.text() if cflags & 0x80 else None
        password = r.binary() if cflags & 0x40 else None
        with self._lock:
            self.connects.append(ConnectInfo(time.monotonic(), conn.index, level, client_id, bool(cflags & 0x02), keepalive,
                                             username, password, will_topic, will_payload, bool(cflags & 0x20)))
        if self.refuse is not None:
            v3_code, v5_code = REFUSALS[self.refuse]
            conn.send(_packet(CONNACK, bytes([0, v5_code, 0]) if conn.v5 else bytes([0, v3_code])))
            return False
        conn.send(_packet(CONNACK, b"\x00\x00\x00" if conn.v5 else b"\x00\x00"))
        return True

    def _puback(self, conn: _Connection, pid: int) -> None:
        self._settle(conn, pid)
        conn.send(_packet(PUBACK, struct.pack("!H", pid)))
        self._count("acked")

    def _settle(self, conn: _Connection, pid: int) -> None:
        with self._lock:
            if pid in conn.unacked:
                conn.unacked.discard(pid)
                self.in_flight -= 1

    # -- reading it

    @property
    def publish_count(self) -> int:
        return len(self.published)

    def topics(self) -> dict[str, list[Published]]:
        out: dict[str, list[Published]] = {}
        for p in list(self.published):
            out.setdefault(p.topic, []).append(p)
        return out

    def wait_for(self, predicate: Callable[[FakeBroker], Any], timeout: float, what: str = "the condition") -> Any:
        """Poll `predicate(self)` until true, e.g. `b.wait_for(lambda b: b.publish_count >= 10, 5)`."""
        return wait_until(lambda: predicate(self), timeout, f"{what} on {self}")

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"connections": self.connections, "connects": len(self.connects), "published": len(self.published),
                    "acked": self.acked, "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
                    "drops": self.drops, "pings": self.pings, "disconnects": self.disconnects}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.host}:{self.port} {self.stats()})"


class SilentBroker(FakeBroker):
    """Accepts, CONNACKs, records every PUBLISH and never acknowledges one (no PUBACK, no
    PUBREC): `max_in_flight` is how many unacknowledged messages a client let itself have out
    at once on one connection."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(puback=False, **kw)


class DroppingBroker(FakeBroker):
    """A working broker (PUBACKs) that closes every connection `every_s` after accepting it."""

    def __init__(self, every_s: float = 1.0, **kw: Any) -> None:
        super().__init__(drop_after_s=every_s, **kw)


class RefusingBroker(FakeBroker):
    """Refuses every CONNECT: `reason` "bad_credentials" (3.1.1 return code 4, MQTT 5 reason
    0x86) or "not_authorized" (5, 0x87), then closes. `connects[i].at` are the attempts' times."""

    def __init__(self, reason: str = "bad_credentials", **kw: Any) -> None:
        super().__init__(refuse=reason, **kw)


class SlowBroker(FakeBroker):
    """Acknowledges every QoS 1 PUBLISH `delay_ms` after it came, in order."""

    def __init__(self, delay_ms: float = 500.0, **kw: Any) -> None:
        super().__init__(puback_delay_ms=delay_ms, **kw)


# ---------------------------------------------------------------- fixtures

_BROKERS = pytest.StashKey[list[Mosquitto]]()


@pytest.fixture
def make_mosquitto(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """`make_mosquitto(**Mosquitto options)` -> a started broker; all are stopped after the test,
    and a failed test's report gets each one's log."""
    require_mosquitto()
    brokers = request.node.stash.setdefault(_BROKERS, [])

    def make(**kw: Any) -> Mosquitto:
        b = Mosquitto(tmp_path / f"mosquitto{len(brokers) + 1}", **kw)
        brokers.append(b)
        return b.start()

    yield make
    for b in brokers:
        b.close()


@pytest.fixture
def mosquitto(make_mosquitto: Callable[..., Mosquitto]) -> Mosquitto:
    """A started Mosquitto: password (USERNAME / PASSWORD), no TLS, persistence on."""
    return make_mosquitto()


@pytest.fixture
def mosquitto_tls(make_mosquitto: Callable[..., Mosquitto]) -> Mosquitto:
    """As `mosquitto`, plus a TLS listener on `.tls_port` (`.pki`; no client certificate required)."""
    return make_mosquitto(tls=True)


@pytest.fixture
def make_subscriber() -> Iterator[Callable[..., Subscriber]]:
    """`make_subscriber(broker, *topics, **Subscriber options)` -> a connected Subscriber,
    disconnected after the test."""
    require_paho()
    subs: list[Subscriber] = []

    def make(broker: Mosquitto, *topics: str, **kw: Any) -> Subscriber:
        s = broker.subscriber(*topics, **kw)
        subs.append(s)
        return s

    yield make
    for s in subs:
        s.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """A failed test's report gets the log of each Mosquitto it started."""
    report = yield
    if report.failed:
        for b in item.stash.get(_BROKERS, []):
            report.sections.append((f"mosquitto log ({b.host}:{b.port}, {b.workdir})", b.log_tail(80)))
    return report
