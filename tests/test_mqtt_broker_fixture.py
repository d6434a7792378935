"""The MQTT test infrastructure itself (tests/mqtt_broker.py), against plain paho-mqtt clients:
a real Mosquitto (password, TLS, a persistent session across a broker restart) and each rude
broker doing what it says. Skipped with an install hint without mosquitto or paho-mqtt
(`make mqtt-test-deps` as root; `make test` does it as root with apt)."""

from __future__ import annotations

import json
import ssl
import time

import pytest
from mqtt_broker import (
    HINT,
    HOST,
    PASSWORD,
    USERNAME,
    DroppingBroker,
    FakeBroker,
    Mosquitto,
    RefusingBroker,
    SilentBroker,
    SlowBroker,
    connect_and_wait,
    password_hash,
    wait_until,
)

pytest_plugins = ["mqtt_broker"]

# Every test here drives a paho client; the Mosquitto fixtures also skip without the broker.
mqtt = pytest.importorskip("paho.mqtt.client", reason=f"paho-mqtt is not installed, the MQTT broker tests are skipped: {HINT}")


def plain_client(client_id: str = "", protocol: int = mqtt.MQTTv311) -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)


def accepted(reason) -> bool:
    """connect_and_wait's answer was a successful CONNACK."""
    return reason is not None and not isinstance(reason, Exception) and not reason.is_failure


def refused(reason) -> bool:
    """No successful CONNACK: a refusal, a failed TLS handshake, or no answer at all."""
    return not accepted(reason)


# ------------------------------------------------------------------ Mosquitto


def test_round_trip_through_mosquitto_with_a_password(mosquitto: Mosquitto, make_subscriber) -> None:
    assert mosquitto.port != 1883 and mosquitto.tls_port is None
    assert f"listener {mosquitto.port} 127.0.0.1" in mosquitto.config_file.read_text()
    sub = make_subscriber(mosquitto, "plant/line1/#")
    for i in range(5):
        mosquitto.publish("plant/line1/st1/decision", json.dumps({"seq": i}))
    mosquitto.publish("plant/line1/st2/decision", b"other")
    mosquitto.publish("plant/line2/st1/decision", b"not subscribed")
    got = sub.wait_for(6, 10)
    assert [m["seq"] for m in sub.json("plant/line1/st1/decision")] == [0, 1, 2, 3, 4]
    assert sub.payloads("plant/line1/st2/decision") == [b"other"]
    assert set(sub.by_topic()) == {"plant/line1/st1/decision", "plant/line1/st2/decision"}
    assert all(m.qos == 1 and not m.retain for m in got)

    # wrong password and no credentials: refused with a CONNACK that says so
    for username, password in ((USERNAME, "wrong"), ("", None)):
        c = mosquitto.client(username=username, password=password)
        reason = connect_and_wait(c, mosquitto.host, mosquitto.port)
        c.loop_stop()
        assert reason is not None and reason.is_failure and reason.value in (0x86, 0x87), reason


def test_a_password_file_hashed_without_mosquitto_passwd(make_mosquitto, make_subscriber) -> None:
    broker = make_mosquitto(users={"hand-made": "pässword"}, hash_with_tool=False)
    assert broker.password_file.read_text().startswith("hand-made:$7$101$")
    assert password_hash("x", salt=b"\0" * 12) == password_hash("x", salt=b"\0" * 12)
    sub = make_subscriber(broker, "t")
    broker.publish("t", b"ok")
    assert sub.wait_for(1, 10)[0].payload == b"ok"


def test_tls_round_trip_and_a_wrong_ca_fails(mosquitto_tls: Mosquitto, make_subscriber) -> None:
    b = mosquitto_tls
    assert b.pki is not None and b.tls_port not in (None, b.port)
    sub = make_subscriber(b, "secure/#", tls=True)
    pub = b.client("tls-publisher", tls=True)
    reason = connect_and_wait(pub, b.host, b.tls_port)
    assert accepted(reason), reason
    pub.publish("secure/a", b"over TLS", qos=1).wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()
    assert sub.wait_for(1, 10)[0].payload == b"over TLS"

    # a client that trusts another CA refuses the broker's certificate in the handshake
    wrong = b.client("wrong-ca", tls=True, ca=b.pki.other_ca)
    err = connect_and_wait(wrong, b.host, b.tls_port)
    assert isinstance(err, ssl.SSLCertVerificationError), err
    # plain MQTT on the TLS port gets no CONNACK
    plain = b.client("plain-on-tls")
    assert refused(connect_and_wait(plain, b.host, b.tls_port, timeout=2))
    plain.loop_stop()


def test_a_required_client_certificate(make_mosquitto) -> None:
    b = make_mosquitto(tls=True, require_certificate=True)
    assert b.pki is not None
    good = b.client("with-cert", tls=True)  # the client certificate signed by the broker's CA
    reason = connect_and_wait(good, b.host, b.tls_port)
    good.loop_stop()
    assert accepted(reason), reason

    for cert, key in ((b.pki.rogue_client_cert, b.pki.rogue_client_key), (None, None)):
        c = b.client("rogue", tls=True, certfile=cert or "", keyfile=key or "")
        result = connect_and_wait(c, b.host, b.tls_port, timeout=3)
        c.loop_stop()
        # refused in the handshake (an exception) or right after it (TLS 1.3: no CONNACK)
        assert refused(result) and (result is None or isinstance(result, Exception)), result


def test_stop_start_keeps_a_persistent_sessions_queue_and_retained_messages(mosquitto: Mosquitto, make_subscriber) -> None:
    gap = make_subscriber(mosquitto, "st/#", client_id="gap-subscriber")
    stays = make_subscriber(mosquitto, "st/#", client_id="stays-subscriber")
    mosquitto.publish("st/decision", b"0")
    gap.wait_for(1, 10)
    gap.disconnect()  # a subscriber gap: the broker queues for its session
    for i in range(1, 6):
        mosquitto.publish("st/decision", str(i))
    mosquitto.publish("st/status", b"online", retain=True)
    port = mosquitto.port
    mosquitto.stop()  # a broker outage: the session, its queue and the retained message are saved
    assert not mosquitto.running
    wait_until(lambda: not stays.connected, 5, "the subscriber to notice")
    mosquitto.start()
    assert mosquitto.port == port and mosquitto.starts == 2

    gap.connect()
    got = gap.wait_for(7, 10)
    assert [m.payload for m in got if m.topic == "st/decision"] == [str(i).encode() for i in range(6)]
    assert gap.payloads("st/status") == [b"online"]
    stays.wait_connected(10)  # it came back by itself
    mosquitto.publish("st/decision", b"after")
    assert stays.wait_for(8, 10)[-1].payload == b"after"

    fresh = make_subscriber(mosquitto, "st/status", clean_session=True)
    msg = fresh.wait_for(1, 10)[0]
    assert msg.payload == b"online" and msg.retain
    assert mosquitto.log().count("Saving in-memory database") >= 1


def test_kill_freeze_and_back(mosquitto: Mosquitto) -> None:
    mosquitto.kill()
    assert not mosquitto.running
    mosquitto.start()
    mosquitto.publish("t", b"after a crash")

    mosquitto.freeze()  # the port accepts, nothing answers
    c = mosquitto.client("to-a-frozen-broker")
    assert connect_and_wait(c, mosquitto.host, mosquitto.port, timeout=1) is None
    c.loop_stop()
    mosquitto.thaw()
    c = mosquitto.client("after-thaw")
    assert accepted(connect_and_wait(c, mosquitto.host, mosquitto.port))
    c.disconnect()
    c.loop_stop()
    assert mosquitto.cpu_seconds() >= 0.0


# ------------------------------------------------------------------ rude brokers


def test_the_silent_broker_never_acknowledges_and_counts_what_is_in_flight() -> None:
    with SilentBroker() as b:
        c = plain_client("silent-test")
        c.max_inflight_messages_set(5)
        c.will_set("st/status", b"offline", qos=1, retain=True)
        c.username_pw_set("u", "p")
        assert accepted(connect_and_wait(c, b.host, b.port))
        infos = [c.publish("st/decision", str(i), qos=1) for i in range(20)]
        b.wait_for(lambda b: b.publish_count >= 5, 5, "5 PUBLISH")
        time.sleep(0.3)
        c.disconnect()
        c.loop_stop()
        assert b.publish_count == 5 and b.max_in_flight == 5 and b.acked == 0
        assert not any(i.is_published() for i in infos)
        assert [p.payload for p in b.published] == [b"0", b"1", b"2", b"3", b"4"]
        info = b.connects[0]
        assert (info.client_id, info.username, info.password, info.protocol_level) == ("silent-test", "u", b"p", 4)
        assert (info.will_topic, info.will_payload, info.will_retain) == ("st/status", b"offline", True)
        b.wait_for(lambda b: b.in_flight == 0, 5, "the connection's in-flight count released")


def test_the_dropping_broker_closes_every_connection_each_second() -> None:
    with DroppingBroker(every_s=1.0) as b:
        c = plain_client("dropped")
        c.reconnect_delay_set(0.1, 0.2)  # type: ignore[arg-type]
        assert accepted(connect_and_wait(c, b.host, b.port))
        started = time.monotonic()
        infos = []
        while time.monotonic() - started < 3.3:
            infos.append(c.publish("t", b"x", qos=1))
            time.sleep(0.05)
        b.wait_for(lambda b: b.drops >= 3 and b.connections >= 4, 3, "3 drops and reconnections")
        c.disconnect()
        c.loop_stop()
        assert b.acked >= 1 and sum(1 for i in infos if i.rc == 0 and i.is_published()) >= 1  # rc != 0: queued while down
        gaps = [y.at - x.at for x, y in zip(b.connects, b.connects[1:])]
        assert all(0.9 <= g < 3.0 for g in gaps[:3]), gaps  # dropped after 1 s, not sooner; reconnected at once


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["3.1.1", "5"])
@pytest.mark.parametrize("reason,expected", [("bad_credentials", 0x86), ("not_authorized", 0x87)])
def test_the_refusing_broker(protocol: int, reason: str, expected: int) -> None:
    with RefusingBroker(reason) as b:
        c = plain_client("refused", protocol=protocol)
        c.username_pw_set(USERNAME, PASSWORD)
        got = connect_and_wait(c, b.host, b.port)
        c.loop_stop()
        # paho reports a 3.1.1 return code (4, 5) as the MQTT 5 reason (0x86, 0x87)
        assert got is not None and got.is_failure and got.value == expected, got
        assert b.connects[0].protocol_level == (5 if protocol == mqtt.MQTTv5 else 4)
        assert b.connects[0].password == PASSWORD.encode()
        assert b.publish_count == 0


def test_the_slow_broker_acknowledges_late_and_in_order() -> None:
    with SlowBroker(delay_ms=300) as b:
        c = plain_client("slow", protocol=mqtt.MQTTv5)
        acked: list[tuple[int, float]] = []
        c.on_publish = lambda client, userdata, mid, reason, props: acked.append((mid, time.monotonic()))
        assert accepted(connect_and_wait(c, b.host, b.port))
        t0 = time.monotonic()
        mids = [c.publish("t", str(i), qos=1).mid for i in range(3)]
        wait_until(lambda: len(acked) == 3, 5, "3 PUBACKs")
        c.disconnect()
        c.loop_stop()
        assert [mid for mid, _ in acked] == mids
        assert all(t - t0 >= 0.3 for _, t in acked), [t - t0 for _, t in acked]
        assert b.acked == 3 and b.max_in_flight == 3 and b.in_flight == 0


def test_a_fake_broker_answers_pings_subscribes_and_reopens_its_port() -> None:
    b = FakeBroker().start()
    port = b.port
    c = plain_client("pinger")
    subscribed: list[int] = []
    c.on_subscribe = lambda client, userdata, mid, reasons, props: subscribed.append(mid)
    assert accepted(connect_and_wait(c, HOST, port, keepalive=1))
    c.subscribe("cmd/#", qos=1)
    b.wait_for(lambda b: b.pings >= 1 and subscribed, 5, "a PINGREQ and a SUBACK")
    assert b.subscriptions == ["cmd/#"]
    b.stop()
    b.start()
    assert b.port == port
    c.reconnect_delay_set(0.1, 0.2)  # type: ignore[arg-type]
    b.wait_for(lambda b: b.connections >= 2, 5, "the client back on the reopened port")
    c.disconnect()
    c.loop_stop()
    b.stop()
