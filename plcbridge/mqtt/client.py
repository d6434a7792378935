"""The connection to the plant's broker: paho-mqtt 2.x (CallbackAPIVersion.VERSION2), on a
thread of its own ("mqtt", at side-work niceness), driven by this module rather than by
paho's own `loop_start()` thread, so that one thread owns the connection, the spool cursor
and the status and stats timers, and nothing else ever waits on the network.

What it does, per connection:

1. reads the password and the TLS files (plcbridge/mqtt/auth.py), builds a *fresh* paho
   client (a dead connection's client is never reused: paho would resend its in-memory queue,
   while the spool already holds everything unacknowledged), sets the last will (a retained
   "offline" status) and connects, then waits for the CONNACK up to `connect_timeout_ms`;
2. publishes the retained "online" status, then the spool from its oldest message, at most
   `mqtt.inflight` decisions unacknowledged at a time (QoS 1): memory holds that window and
   no more, however slow or silent the broker; each PUBACK deletes its message from the
   spool. After a reconnect the spool is read from its oldest message again, so what was in
   flight on the dead connection is sent again, in order, with the same bytes (at least once);
3. the status on change (checked every STATUS_CHECK_S) and every `status_interval_s`, the
   stats every `stats_interval_s`, the spool's age bound every EXPIRE_EVERY_S; PUBACKs are
   read with the next decision's wake-up while the window has room (LAZY_ACK_S);
4. a connection whose oldest message has waited `ack_timeout_s` for its PUBACK is dropped
   (a broker that accepts and never acknowledges).

Every failure is one log line saying what failed, to which broker and why, in words (a wrong
password names the user and where the password came from, never the password; a broker
certificate that is not trusted names mqtt.tls.ca), a count in
`plcbridge_mqtt_connect_errors_total{reason}`, and a retry after a backoff that doubles from
`reconnect_min_ms` to `reconnect_max_ms` with jitter, and falls back only after a connection
lived `reconnect_reset_ms` (plcbridge/backoff.py): a broker that drops every connection after
a second, or a plant's worth of stations after a broker restart, never makes a storm.

At stop: the "offline" status (reason stopped), waited for up to STOP_ACK_S, then a clean
DISCONNECT; what was not acknowledged stays in the spool for the next start.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from plcbridge.backoff import Reconnector
from plcbridge.logs import get_logger, log_event
from plcbridge.mqtt.auth import CredentialsError, read_password, tls_context
from plcbridge.mqtt.spool import Spool, SpoolError
from plcbridge.threads import SIDE_WORK_NICENESS, lower_this_thread

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    from plcbridge.config import MqttSettings
    from plcbridge.metrics import Metrics
    from plcbridge.mqtt.messages import Topics

log = get_logger("mqtt")

POLL_S = 1.0  # the loop runs at least this often (paho's keep-alive bookkeeping, the timers)
STATUS_CHECK_S = 0.5  # the status is compared with the last one published this often
EXPIRE_EVERY_S = 60.0  # the spool's age bound is applied this often
STOP_ACK_S = 0.5  # at stop, the offline status waits this long for its PUBACK
# While the window has room, PUBACKs are read when the next decision wakes the thread, or once
# the oldest unacknowledged message is this old: one wake-up per decision instead of two (a
# wake-up is most of what a message costs here; README, "Results to the plant over MQTT"). A
# full window, a backlog draining, is read at once.
LAZY_ACK_S = 0.2
CONNACK_POLL_S = 0.05

# CONNACK reason codes (MQTT 5 numbering; paho maps MQTT 3.1.1's return codes onto them).
_BAD_PASSWORD, _NOT_AUTHORIZED, _BAD_CLIENT_ID, _UNAVAILABLE = 134, 135, 133, 136


class Feeds(Protocol):
    """What the publisher publishes besides the spool (plcbridge/mqtt/sink.py provides it)."""

    def status_key(self) -> Hashable:
        """Changes exactly when the status must be published at once (readiness, model, link, camera)."""
        ...

    def status(self) -> bytes: ...

    def stats(self) -> bytes: ...

    def offline(self, reason: str, at: float) -> bytes: ...


class _Dropped(Exception):
    """The connection is over (lost, refused, timed out): `reason` for the metric, `text` for the log."""

    def __init__(self, reason: str, text: str, level: int = logging.WARNING, setting: str | None = None) -> None:
        super().__init__(text)
        self.reason, self.text, self.level, self.setting = reason, text, level, setting


class Publisher:
    """The MQTT connection's thread. `wake()` (any thread) says the spool has news."""

    def __init__(self, settings: MqttSettings, topics: Topics, client_id: str, spool: Spool, metrics: Metrics,
                 feeds: Feeds, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.topics = topics
        self.client_id = client_id
        self.spool = spool
        self.metrics = metrics
        self.feeds = feeds
        self.env = env
        self._stop = threading.Event()
        self._reconnector = Reconnector(settings.reconnect_min_ms / 1000, settings.reconnect_max_ms / 1000, self._stop,
                                        reset_after_s=settings.reconnect_reset_ms / 1000)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        # Set by paho's callbacks, which run on this thread inside client.loop().
        self._connack: ReasonCode | None = None
        self._up = False
        self._gone: tuple[bool, ReasonCode] | None = None  # (DISCONNECT sent by the broker, reason)
        self._acks: list[tuple[int, ReasonCode]] = []
        # For the page and `plcbridge status` (read from other threads: plain values).
        self.state = "starting"
        self.connected = False
        self.sessions = 0
        self.last_error: str | None = None
        self.connected_at: float | None = None  # wall clock
        self._down_since: float | None = time.monotonic()
        self.inflight = 0

    # ------------------------------------------------------------------ other threads

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Cheap and never blocking: one byte on a socket pair the thread selects on."""
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full (the thread is behind and will read the spool anyway) or closed (stopping)

    def stop(self, timeout: float) -> bool:
        """Offline status, clean disconnect, thread ended, within about `timeout`; False if the
        thread did not end in time (blocked in a connect: it is a daemon thread)."""
        self._stop.set()
        self.wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        done = not self._thread.is_alive()
        if done:
            for s in (self._wake_r, self._wake_w):
                s.close()
        return done

    def view(self) -> dict[str, Any]:
        return {"broker": self.settings.broker, "client_id": self.client_id, "state": self.state,
                "connected": self.connected, "sessions": self.sessions, "last_error": self.last_error,
                "inflight": self.inflight}

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        lower_this_thread(SIDE_WORK_NICENESS)
        try:
            self.spool.open()  # a backlog from before the start goes out first
        except SpoolError as e:
            log_event(log, "mqtt_spool_failed", logging.ERROR, path=str(self.spool.path), drop=e.reason,
                      reason=f"{e}: decisions cannot be spooled, so none is published until it can be opened "
                             f"(tried again every few seconds); status and stats still are", setting="mqtt.spool_path",
                      rate_key="mqtt-spool-open")
        while not self._stop.is_set():
            client: paho.Client | None = None
            try:
                client = self._connect()
                self._session(client)
            except _Dropped as d:
                self._failed(d)
            except Exception as e:  # noqa: BLE001 - a bug here must not end publishing for good
                self._failed(_Dropped("error", f"unexpected {type(e).__name__}: {e}", logging.ERROR))
                log.debug("mqtt thread error", exc_info=True)
            finally:
                if client is not None:
                    self._close(client)
                self._down()
        self.state = "stopped"

    def _failed(self, d: _Dropped) -> None:
        self.metrics.mqtt_connect_errors.labels(d.reason).inc()
        self.last_error = d.text
        if self._stop.is_set():
            return
        at_max = d.reason == "credentials"  # a missing file or variable: retrying soon cannot help
        delay = self._reconnector.failed(at_maximum=at_max)
        self.state = "waiting"
        fields: dict[str, Any] = {"broker": self.settings.broker, "error": d.reason, "reason": d.text,
                                  "retry_in_ms": round(delay * 1000)}
        if d.setting:
            fields["setting"] = d.setting
        backlog = self.spool.backlog()
        fields.update(backlog_messages=backlog.messages, backlog_oldest_age_s=backlog.as_dict()["backlog_oldest_age_s"])
        event = "mqtt_connection_lost" if d.reason in ("lost", "ack_timeout", "taken_over") else "mqtt_connect_failed"
        log_event(log, event, d.level, **fields, rate_key=f"mqtt-{d.reason}")
        self._reconnector.wait(delay)

    def _down(self) -> None:
        if self.connected:
            self._down_since = time.monotonic()
        self.connected, self._up, self.inflight = False, False, 0
        self.metrics.mqtt_connected.set(0)
        self.metrics.mqtt_inflight.set(0)

    # ------------------------------------------------------------------ connecting

    def _new_client(self) -> paho.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
                             clean_session=None if v5 else True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_timeout = s.connect_timeout_ms / 1000
        # Our window plus the status and stats: paho refuses more (MQTT_ERR_QUEUE_SIZE) rather
        # than queue them in memory; we never ask for more anyway.
        client.max_inflight_messages_set(s.inflight + 2)
        client.max_queued_messages_set(s.inflight + 2)
        try:
            if s.username is not None:
                client.username_pw_set(s.username, read_password(s, self.env))
            if s.tls.enabled:
                client.tls_set_context(tls_context(s.tls))
        except CredentialsError as e:
            raise _Dropped("credentials", f"{e.field}: {e}", logging.ERROR, e.field) from None
        client.will_set(self.topics.status, self.feeds.offline("connection_lost", time.time()), qos=1, retain=True)
        return client

    def _connect(self) -> paho.Client:
        """A connected client (CONNACK accepted), or _Dropped saying why not (the client closed)."""
        self.state = "connecting"
        self._connack, self._gone, self._acks = None, None, []
        client = self._new_client()
        try:
            return self._handshake(client)
        except BaseException:
            self._close(client)
            raise

    def _handshake(self, client: paho.Client) -> paho.Client:
        s = self.settings
        broker = s.broker
        tls = "TLS" if s.tls.enabled else "plain TCP"
        try:
            if s.protocol == "5":
                rc = client.connect(s.host, s.broker_port, s.keepalive_s, clean_start=True)
            else:
                rc = client.connect(s.host, s.broker_port, s.keepalive_s)
        except ssl.SSLCertVerificationError as e:
            ca = f"mqtt.tls.ca = {s.tls.ca}" if s.tls.ca is not None else "the system's CAs (mqtt.tls.ca unset)"
            why = e.verify_message or e.reason or str(e)
            raise _Dropped("tls_certificate", f"TLS: the certificate of {broker} is not accepted: {why} (trusted: {ca}; "
                                              f"its name must match mqtt.host = {s.host!r})", logging.ERROR,
                           "mqtt.tls.ca") from None
        except ssl.SSLError as e:
            raise _Dropped("tls", f"TLS handshake with {broker} failed: {e.reason or e} (a plain-TCP port? a client "
                                  "certificate the broker does not accept?)", logging.ERROR, "mqtt.tls") from None
        except ConnectionRefusedError:
            raise _Dropped("refused", f"nothing accepts connections at {broker} (connection refused: the broker is "
                                      "down or restarting, or the port is wrong)") from None
        except socket.gaierror as e:
            raise _Dropped("dns", f"cannot resolve mqtt.host = {s.host!r}: {e.strerror or e}", setting="mqtt.host") from None
        except (TimeoutError, socket.timeout):
            raise _Dropped("timeout", f"no {tls} connection to {broker} within connect_timeout_ms = "
                                      f"{s.connect_timeout_ms} (a firewall? the host down?)") from None
        except OSError as e:
            raise _Dropped("network", f"cannot connect to {broker}: {e.strerror or e}") from None
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise _Dropped("network", f"cannot connect to {broker}: {paho.error_string(rc)}")
        deadline = time.monotonic() + s.connect_timeout_ms / 1000
        while self._connack is None:
            if self._stop.is_set():
                return client  # the session sees the stop and ends it
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Dropped("timeout", f"{broker} accepted the {tls} connection but sent no CONNACK within "
                                          f"connect_timeout_ms = {s.connect_timeout_ms} (not an MQTT broker? TLS spoken "
                                          "to a plain port, or the other way round?)")
            rc = client.loop(min(left, CONNACK_POLL_S))
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and self._connack is None:
                raise _Dropped("lost", f"{broker} closed the {tls} connection before its CONNACK "
                                       f"({paho.error_string(rc)}; a client certificate it does not accept? "
                                       "TLS spoken to a plain port?)")
        if self._connack.is_failure:
            raise self._refused(self._connack)
        self._reconnector.opened()
        self._reconnector.answered()  # the broker answered: the session's age decides the backoff's reset
        self._up = self.connected = True
        self.sessions += 1
        self.connected_at = time.time()
        self.state = "connected"
        self.last_error = None
        self.metrics.mqtt_connected.set(1)
        backlog = self.spool.backlog()
        down = None if self._down_since is None else round(time.monotonic() - self._down_since, 1)
        log_event(log, "mqtt_connected", logging.INFO, broker=broker, client_id=self.client_id, protocol=s.protocol,
                  tls=s.tls.enabled, user=s.username, session=self.sessions, down_s=down if self.sessions > 1 else None,
                  backlog_messages=backlog.messages, backlog_oldest_age_s=backlog.as_dict()["backlog_oldest_age_s"])
        return client

    def _refused(self, rc: ReasonCode) -> _Dropped:
        """The CONNACK said no: one sentence that names what to fix."""
        s = self.settings
        what = f"{s.broker} refused the connection: {rc.getName()} (CONNACK {rc.value})"
        if rc.value == _BAD_PASSWORD:
            if s.username is None:
                return _Dropped("auth", f"{what}: the broker wants a user name and password; set mqtt.username and "
                                        "mqtt.password_file or mqtt.password_env", logging.ERROR, "mqtt.username")
            return _Dropped("auth", f"{what}: user {s.username!r} with the password from {s.password_source or 'nowhere'}",
                            logging.ERROR, "mqtt.username, mqtt.password_file, mqtt.password_env")
        if rc.value == _NOT_AUTHORIZED:
            if s.username is None:
                return _Dropped("not_authorized", f"{what}: an anonymous client (client id {self.client_id!r}) may not "
                                                  "connect; set mqtt.username and mqtt.password_file or "
                                                  "mqtt.password_env", logging.ERROR, "mqtt.username")
            # Over MQTT 3.1.1 Mosquitto (and others) answer a wrong password with this code, not 134.
            return _Dropped("not_authorized", f"{what}: user {s.username!r} with the password from "
                                              f"{s.password_source or 'nowhere'}, client id {self.client_id!r}: a wrong "
                                              "user name or password, or the broker's access rules refuse this client",
                            logging.ERROR, "mqtt.username, mqtt.password_file, mqtt.password_env")
        if rc.value == _BAD_CLIENT_ID:
            return _Dropped("broker_refused", f"{what}: client id {self.client_id!r}", logging.ERROR, "mqtt.client_id")
        return _Dropped("broker_refused", what, logging.ERROR if rc.value != _UNAVAILABLE else logging.WARNING)

    # ------------------------------------------------------------------ one connection

    def _session(self, client: paho.Client) -> None:
        s = self.settings
        window = s.inflight
        inflight: dict[int, tuple[int, float]] = {}  # mid -> (spool seq, sent at)
        side: dict[int, tuple[str, float]] = {}  # mid -> (status | stats, sent at)
        cursor = 0  # the highest seq published on this connection
        status_key: Hashable = object()
        now = time.monotonic()
        next_status = next_check = now  # the online status goes out first
        next_stats = now + s.stats_interval_s
        next_expire = now
        while True:
            if self._stop.is_set():
                self._goodbye(client, inflight, side, cursor)
                return
            self._settle(inflight, side)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + STATUS_CHECK_S
                key = self.feeds.status_key()
                if (key != status_key or now >= next_status) and not any(k == "status" for k, _ in side.values()):
                    self._publish(client, side, "status", self.topics.status, self.feeds.status(), retain=True)
                    status_key, next_status = key, now + s.status_interval_s
            if now >= next_stats:
                next_stats = now + s.stats_interval_s
                if not any(k == "stats" for k, _ in side.values()):
                    self._publish(client, side, "stats", self.topics.stats, self.feeds.stats())
            if now >= next_expire:
                next_expire = now + EXPIRE_EVERY_S
                self._spool_call(self.spool.expire)
            if len(inflight) < window:
                rows = self._spool_call(lambda: self.spool.after(cursor, window - len(inflight))) or []
                for m in rows:
                    info = client.publish(m.topic, m.payload, qos=1)
                    if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                        break  # paho refused it (cannot happen within our window): sent again next time
                    inflight[info.mid] = (m.seq, now)
                    cursor = m.seq
                self.inflight = len(inflight)
                self.metrics.mqtt_inflight.set(len(inflight))
            sent = [t for _, t in inflight.values()] + [t for _, t in side.values()]
            oldest = min(sent) if sent else now
            if now - oldest > s.ack_timeout_s:
                raise _Dropped("ack_timeout", f"{self.settings.broker} has not acknowledged a message for "
                                              f"{now - oldest:.0f} s (ack_timeout_s = {s.ack_timeout_s:g}) with "
                                              f"{len(inflight)} decisions in flight: the connection is made again")
            timeout = max(0.0, min(POLL_S, next_check - now, next_stats - now))
            # Nothing in flight: whatever comes is the broker's (a ping answer, a DISCONNECT): read it.
            read = not sent or len(inflight) >= window or now - oldest >= LAZY_ACK_S
            if not read:
                timeout = min(timeout, oldest + LAZY_ACK_S - now)
            self._wait(client, timeout, read)
            rc = client.loop(0)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or not self._up:
                self._settle(inflight, side)
                raise self._lost(rc, len(inflight))

    def _publish(self, client: paho.Client, side: dict[int, tuple[str, float]], kind: str, topic: str, payload: bytes,
                 retain: bool = False) -> None:
        info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            side[info.mid] = (kind, time.monotonic())

    def _settle(self, inflight: dict[int, tuple[int, float]], side: dict[int, tuple[str, float]]) -> None:
        """The PUBACKs received: acknowledged decisions leave the spool."""
        if not self._acks:
            return
        acks, self._acks = self._acks, []
        done: list[int] = []
        for mid, rc in acks:
            if mid in inflight:
                seq, _ = inflight.pop(mid)
                done.append(seq)
                if rc.is_failure:
                    self.metrics.mqtt_dropped.labels("rejected").inc()
                    log_event(log, "mqtt_publish_rejected", logging.ERROR, broker=self.settings.broker,
                              topic=self.topics.decision, reason=f"the broker refused a decision: {rc.getName()} "
                              f"(PUBACK {rc.value}); it is not sent again (the broker's access rules or limits?)",
                              rate_key="mqtt-rejected")
                else:
                    self.metrics.mqtt_published.labels("decision").inc()
            elif mid in side:
                kind, _ = side.pop(mid)
                if not rc.is_failure:
                    self.metrics.mqtt_published.labels(kind).inc()
        self._reconnector.answered()
        if done:
            self._spool_call(lambda: self.spool.delete(done))  # a failed delete: those are sent again (at least once)
        self.inflight = len(inflight)
        self.metrics.mqtt_inflight.set(len(inflight))

    def _spool_call(self, call: Any) -> Any:
        try:
            return call()
        except SpoolError as e:
            log_event(log, "mqtt_spool_failed", logging.ERROR, path=str(self.spool.path), drop=e.reason,
                      reason=f"{e}: publishing from the spool waits until it works again", setting="mqtt.spool_path",
                      rate_key=f"mqtt-spool-{e.reason}")
            return None

    def _wait(self, client: paho.Client, timeout: float, read: bool) -> None:
        """Until the spool has news (or the stop), the socket has something (`read`) or can take
        what paho has to write, or `timeout`."""
        sock = client.socket()
        if sock is None:
            return
        pending = getattr(sock, "pending", None)
        if read and pending is not None and pending():
            return  # TLS bytes already decrypted and waiting: select would not see them
        try:
            ready, _, _ = select.select([sock, self._wake_r] if read else [self._wake_r],
                                        [sock] if client.want_write() else [], [], timeout)
        except (OSError, ValueError):
            return  # the socket closed under us: loop() says so
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:
                pass

    def _lost(self, rc: MQTTErrorCode, inflight: int) -> _Dropped:
        session = round(self._reconnector.session_s(), 1)
        broker = self.settings.broker
        if self._gone is not None and self._gone[0]:  # a DISCONNECT from the broker (MQTT 5)
            reason = self._gone[1]
            if reason.value == 142:
                return _Dropped("taken_over", f"{broker} ended the connection: another client connected with the same "
                                              f"client id {self.client_id!r} (two stations with one id? set "
                                              "mqtt.client_id)", logging.ERROR, "mqtt.client_id")
            return _Dropped("lost", f"{broker} ended the connection after {session} s: {reason.getName()} "
                                    f"(DISCONNECT {reason.value}); {inflight} decisions were in flight and are sent again")
        return _Dropped("lost", f"the connection to {broker} was lost after {session} s ({paho.error_string(rc)}); "
                                f"{inflight} decisions were in flight and are sent again")

    def _goodbye(self, client: paho.Client, inflight: dict[int, tuple[int, float]], side: dict[int, tuple[str, float]],
                 cursor: int) -> None:
        """A clean stop: what the spool holds goes out once more (the daemon's last answers
        among it), then the retained offline status; their PUBACKs are waited for up to
        STOP_ACK_S (what is not acknowledged by then stays in the spool), then DISCONNECT."""
        if not self._up:
            return
        now = time.monotonic()
        for m in self._spool_call(lambda: self.spool.after(cursor, max(0, self.settings.inflight - len(inflight)))) or []:
            info = client.publish(m.topic, m.payload, qos=1)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                inflight[info.mid] = (m.seq, now)
        self._publish(client, side, "status", self.topics.status, self.feeds.offline("stopped", time.time()), retain=True)
        end = now + STOP_ACK_S
        while self._up and (inflight or side) and time.monotonic() < end:
            if client.loop(0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            self._settle(inflight, side)
        if self._up:
            client.disconnect()
            client.loop(0.05)
        backlog = self.spool.backlog()
        log_event(log, "mqtt_stopped", logging.INFO, broker=self.settings.broker, backlog_messages=backlog.messages,
                  detail="what the broker has not acknowledged stays in the spool for the next start")

    def _close(self, client: paho.Client) -> None:
        """Let go of a client without a DISCONNECT (the broker publishes the last will)."""
        sock = client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    # ------------------------------------------------------------------ paho's callbacks (this thread)

    def _on_connect(self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode,
                    _properties: Properties | None) -> None:
        self._connack = reason

    def _on_disconnect(self, _client: paho.Client, _userdata: Any, flags: Any, reason: ReasonCode,
                       _properties: Properties | None) -> None:
        self._up = False
        self._gone = (bool(getattr(flags, "is_disconnect_packet_from_server", False)), reason)

    def _on_publish(self, _client: paho.Client, _userdata: Any, mid: int, reason: ReasonCode,
                    _properties: Properties | None) -> None:
        self._acks.append((mid, reason))
