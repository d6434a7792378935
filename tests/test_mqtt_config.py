"""`[mqtt]` in the station file: clear errors naming the key (a placeholder that is unknown or
unset, a missing CA file, a key that is not the certificate's, a password file that is not
there), warnings for what is valid but unwise, `check-config` showing the section resolved
without any secret, and a missing paho-mqtt named with the extra to install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mqtt_broker import make_pki

from plcbridge.checks import config_warnings, station_problems
from plcbridge.config import Config, ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


def _config(**mqtt: Any) -> Config:
    raw = load_config(None, env={}).model_dump(mode="json")
    raw["mqtt"].update({"enabled": True, "site": "plant", "line": "l1", **mqtt})
    return parse_config(raw, "<test>", env={})


def _refused(**mqtt: Any) -> str:
    with pytest.raises(ConfigError) as e:
        _config(**mqtt)
    return str(e.value)


def test_the_defaults_and_what_they_make():
    c = _config()
    assert c.mqtt_topics().decision == "plcbridge/plant/l1/demo/decision"
    assert c.mqtt_client_id() == "plcbridge-plant-l1-demo"
    assert c.mqtt.broker == "127.0.0.1:1883" and _config(tls={"enabled": True}).mqtt.broker == "127.0.0.1:8883"
    assert str(c.mqtt.spool_path).startswith("/var/lib/plcbridge/")  # the unit's StateDirectory
    off = load_config(None, env={})
    assert off.mqtt.enabled is False and off.mqtt.site is None  # off: the placeholders need nothing


def test_bad_settings_are_refused_naming_the_key():
    assert "<test>: mqtt.topic_prefix: 'x/{plant}': unknown placeholder {plant}" in _refused(topic_prefix="x/{plant}")
    text = _refused(site=None)
    assert text.startswith("<test>: mqtt.topic_prefix") and "mqtt.site is not set" in text
    assert "mqtt.line: 'a/b' cannot be one level" in _refused(line="a/b")
    assert "mqtt.client_id" in _refused(client_id="c-{nope}")
    assert "set one of password_file and password_env" in _refused(username="u", password_file="/x", password_env="X")
    assert "mqtt.password_env, mqtt.username" in _refused(password_env="X")
    assert "mqtt.tls.ca, mqtt.tls.enabled" in _refused(tls={"ca": "/x"})
    assert "a client certificate needs both" in _refused(tls={"enabled": True, "cert": "/x"})
    assert "reconnect_max_ms" in _refused(reconnect_min_ms=5000, reconnect_max_ms=1000)
    assert "unknown key `hots` in [mqtt] (did you mean `host`?)" in _refused(hots="x")
    raw = load_config(None, env={}).model_dump(mode="json")
    raw["station"]["name"] = "line3/cam1"
    raw["mqtt"].update(enabled=True, site="p", line="l")
    with pytest.raises(ConfigError, match=r"station.name = 'line3/cam1' cannot be one level"):
        parse_config(raw, "<test>", env={})


def test_tls_files_and_the_password_file_are_checked_before_anything_starts(tmp_path: Path):
    pki = make_pki(tmp_path / "pki")
    ok = _config(username="u", password_file=str(pki.ca), tls={"enabled": True, "ca": str(pki.ca),
                                                              "cert": str(pki.client_cert), "key": str(pki.client_key)})
    assert station_problems(ok, env={}) == []
    missing = _config(tls={"enabled": True, "ca": str(tmp_path / "nope.pem")})
    assert station_problems(missing, env={}) == [("mqtt.tls.ca", f"{tmp_path / 'nope.pem'} does not exist")]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    [(where, why)] = station_problems(_config(tls={"enabled": True, "ca": str(garbage)}), env={})
    assert where == "mqtt.tls.ca" and "no CA certificate" in why
    mismatch = _config(tls={"enabled": True, "ca": str(pki.ca), "cert": str(pki.client_cert), "key": str(pki.server_key)})
    [(where, why)] = station_problems(mismatch, env={})
    assert where == "mqtt.tls.key" and "is not the private key of" in why
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert station_problems(_config(username="u", password_file=str(empty)), env={}) == [
        ("mqtt.password_file", f"{empty}: its first line is empty")]
    assert station_problems(_config(username="u", password_file=str(tmp_path / "gone")), env={})[0][0] == "mqtt.password_file"


def test_warnings_for_clear_text_passwords_an_unset_variable_and_a_missing_spool_folder(tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MQTT_TEST_UNSET", raising=False)
    c = _config(username="u", password_env="MQTT_TEST_UNSET", spool_path=str(tmp_path / "gone" / "spool.sqlite"))
    warned = dict(config_warnings(c))
    assert "clear text" in warned["mqtt.tls.enabled"]
    assert "$MQTT_TEST_UNSET is not set here" in warned["mqtt.password_env"]
    assert "is not a folder here" in warned["mqtt.spool_path"]
    assert station_problems(c, env={}) == [], "a variable unset in this shell is no error: the unit has its own"


def test_check_config_refuses_a_missing_ca_and_shows_mqtt_resolved_without_secrets(tmp_path: Path):
    base = ('[camera]\nsource = "synthetic"\n[model]\nmanifest = "builtin:demo"\n[mqtt]\nenabled = true\nsite = "p"\n'
            f'line = "l"\nusername = "u"\npassword_env = "MQTT_TEST_PASSWORD"\nspool_path = "{tmp_path / "spool.sqlite"}"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(base + f'[mqtt.tls]\nenabled = true\nca = "{tmp_path / "nope.pem"}"\n')
    good = tmp_path / "good.toml"
    good.write_text(base)
    env = {**os.environ, "MQTT_TEST_PASSWORD": "s3cret-value"}
    r = subprocess.run([sys.executable, "-m", "plcbridge", "check-config", str(bad)], capture_output=True, text=True,
                       timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"plcbridge: {bad}: mqtt.tls.ca: {tmp_path / 'nope.pem'} does not exist" in r.stderr.splitlines()
    r = subprocess.run([sys.executable, "-m", "plcbridge", "check-config", str(good)], capture_output=True, text=True,
                       timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    resolved = json.loads(r.stdout)["mqtt"]
    assert resolved["enabled"] is True and resolved["topic_prefix"] == "plcbridge/{site}/{line}/{station}"
    assert resolved["password_env"] == "MQTT_TEST_PASSWORD" and resolved["inflight"] == 20
    assert "s3cret-value" not in r.stdout + r.stderr
    assert "clear text" in r.stderr  # the warning, on stderr


def test_a_missing_paho_is_a_config_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import importlib.util

    from plcbridge.daemon import Daemon

    c = _config(spool_path=str(tmp_path / "spool.sqlite"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("paho") else real(name, *a))
    assert ("mqtt.enabled", "[mqtt] needs paho-mqtt, which is not installed: pip install 'plcbridge[mqtt]'") in \
        station_problems(c, env={})
    monkeypatch.undo()
    for name in ("plcbridge.mqtt.sink", "plcbridge.mqtt.client", "paho.mqtt.client", "paho.mqtt", "paho"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "paho", None)  # `import paho...` fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'plcbridge\[mqtt\]'"):
        Daemon(c)
