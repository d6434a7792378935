"""Commissioning checks through the command line: `check-config` and `run` refuse a station
that names something missing or unusable, exit 2, and say on the first stderr line which
file, which field and why; warnings for settings that are valid but probably not meant."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CAMERA = '[camera]\nsource = "synthetic"\n'
MODEL = '[model]\nmanifest = "builtin:demo"\n'
NAMED = CAMERA + MODEL
_ENV_VARS = ("PLCBRIDGE_PLC_HOST", "PLCBRIDGE_PLC_PORT", "PLCBRIDGE_METRICS_HOST", "PLCBRIDGE_METRICS_PORT")


def plcbridge(*args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 60):
    clean = {k: v for k, v in os.environ.items() if k not in _ENV_VARS}
    return subprocess.run([sys.executable, "-m", "plcbridge", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env={**clean, **(env or {})}, cwd=ROOT)


def station(tmp_path: Path, text: str, name: str = "station.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def refused(r, *words: str) -> str:
    """Exit 2, no traceback, the first stderr line holding every word; returns that line."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    first = r.stderr.splitlines()[0]
    assert all(w in first for w in words), (words, first)
    return first


# ---------------------------------------------------------------------- a station file names its camera and model

@pytest.mark.parametrize("text", ["", "[plc]\nport = 502\n", CAMERA + "[plc]\nport = 502\n"])
def test_check_config_refuses_a_truncated_station_file(tmp_path, text):
    p = station(tmp_path, text)
    r = plcbridge("check-config", str(p))
    refused(r, str(p), "no [")
    assert "no [model] section" in r.stderr and r.stdout == ""


def test_check_config_refuses_dev_null():
    refused(plcbridge("check-config", "/dev/null"), "/dev/null", "camera", "no [camera] section")


def test_run_refuses_a_truncated_station_even_with_the_plc_host_from_the_environment(tmp_path):
    # The shipped env file's host must never turn a truncated file into synthetic verdicts on a real PLC.
    p = station(tmp_path, "[plc]\nport = 502\n")
    r = plcbridge("run", "--config", str(p), env={"PLCBRIDGE_PLC_HOST": "192.0.2.10"}, timeout=30)
    refused(r, str(p), "camera", "no [camera] section")
    assert r.stdout == ""


# ---------------------------------------------------------------------- what the station names exists

def test_the_model_manifest_must_resolve_and_load(tmp_path):
    p = station(tmp_path, CAMERA + f'[model]\nmanifest = "{tmp_path / "nowhere"}"\n')
    refused(plcbridge("check-config", str(p)), str(p), "model.manifest", "nowhere")

    p = station(tmp_path, CAMERA + '[model]\nmanifest = "builtin:nope"\n')
    first = refused(plcbridge("check-config", str(p)), str(p), "model.manifest", "builtin:nope")
    assert "builtin:demo" in first  # the bundled models that exist are named

    onnx = tmp_path / "bare" / "model.onnx"
    onnx.parent.mkdir()
    onnx.write_bytes((ROOT / "inference" / "models" / "demo" / "defect_cnn.onnx").read_bytes())
    p = station(tmp_path, CAMERA + f'[model]\nmanifest = "{onnx}"\n')
    first = refused(plcbridge("check-config", str(p)), str(p), "model.manifest", "ONNX")
    assert "manifest.json" in first  # says what to pass instead

    r = plcbridge("check-config", str(station(tmp_path, NAMED)))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"]["manifest"] == "builtin:demo"


def test_run_makes_the_same_checks_before_starting(tmp_path):
    p = station(tmp_path, CAMERA + '[model]\nmanifest = "builtin:nope"\n')
    r = plcbridge("run", "--config", str(p), timeout=30)
    refused(r, str(p), "model.manifest", "builtin:nope")
    assert r.stdout == ""  # nothing started, nothing logged


def test_a_folder_camera_needs_its_folder(tmp_path):
    missing = tmp_path / "images"
    p = station(tmp_path, f'[camera]\nsource = "folder"\npath = "{missing}"\n' + MODEL)
    refused(plcbridge("check-config", str(p)), str(p), "camera.path", "does not exist")
    missing.write_text("a file")
    refused(plcbridge("check-config", str(p)), str(p), "camera.path", "not a directory")


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plcbridge-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.der", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _opcua_station(cert: Path, key: Path, server: Path) -> str:
    return (NAMED + '[plc]\nprotocol = "opcua"\nport = 4840\n[plc.opcua]\nsecurity_policy = "Basic256Sha256"\n'
            f'certificate = "{cert}"\nprivate_key = "{key}"\nserver_certificate = "{server}"\n')


def test_opcua_security_files_must_exist_and_parse(tmp_path):
    cert, key = _self_signed(tmp_path)
    p = station(tmp_path, _opcua_station(cert, key, cert))
    r = plcbridge("check-config", str(p))
    assert r.returncode == 0, r.stderr

    p = station(tmp_path, _opcua_station(cert, key, tmp_path / "plc-cert.der"))
    refused(plcbridge("check-config", str(p)), str(p), "plc.opcua.server_certificate", "plc-cert.der", "does not exist")

    garbage = tmp_path / "garbage.der"
    garbage.write_bytes(b"\x00not a certificate")
    p = station(tmp_path, _opcua_station(garbage, key, cert))
    refused(plcbridge("check-config", str(p)), str(p), "plc.opcua.certificate", "not an X.509 certificate")

    p = station(tmp_path, _opcua_station(cert, garbage, cert))
    refused(plcbridge("check-config", str(p)), str(p), "plc.opcua.private_key", "not a private key")


def test_a_truncated_certificate_is_said_in_our_words_not_the_parsers(tmp_path):
    cert, key = _self_signed(tmp_path)
    short = tmp_path / "short.der"
    short.write_bytes(cert.read_bytes()[:40])  # a copy that stopped early
    p = station(tmp_path, _opcua_station(short, key, cert))
    r = plcbridge("check-config", str(p))
    line = refused(r, str(p), "plc.opcua.certificate", "short.der", "ends early", "docs/opcua-certificates.md")
    assert "ParseError" not in r.stderr and "ShortData" not in r.stderr, line


# ---------------------------------------------------------------------- several files, stdin

def test_check_config_takes_several_files_and_stdin(tmp_path):
    good = station(tmp_path, NAMED, "good.toml")
    bad = station(tmp_path, "[plc]\nport = 502\n", "bad.toml")
    r = plcbridge("check-config", str(good), "-", str(bad), stdin=CAMERA + '[model]\nmanifest = "builtin:nope"\n')
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("plcbridge: <stdin>: model.manifest:"), lines
    assert any(line.startswith(f"plcbridge: {bad}: camera:") for line in lines), lines
    assert list(json.loads(r.stdout)) == [str(good)]  # the good one, resolved

    r = plcbridge("check-config", "-", str(good), stdin=NAMED)
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)) == {"<stdin>", str(good)}


# ---------------------------------------------------------------------- errors that name the cause

def test_an_environment_override_error_names_the_variable(tmp_path):
    p = station(tmp_path, NAMED)
    r = plcbridge("check-config", str(p), env={"PLCBRIDGE_PLC_PORT": "five-oh-two"})
    refused(r, "PLCBRIDGE_PLC_PORT", "five-oh-two", "plc.port")
    assert not r.stderr.splitlines()[0].startswith(f"plcbridge: {p}")  # the variable is the cause, not the file


def test_field_paths_are_those_written_in_the_file(tmp_path):
    p = station(tmp_path, '[camera]\nsource = "folder"\n' + MODEL)
    first = refused(plcbridge("check-config", str(p)), f"{p}: camera.path: Field required")
    assert "camera.folder" not in first
    p = station(tmp_path, '[camera]\nsource = "gige"\n' + MODEL)
    refused(plcbridge("check-config", str(p)), f"{p}: camera.source:", "gige")


def test_cross_field_errors_name_their_fields(tmp_path):
    p = station(tmp_path, NAMED + "[plc]\nmax_input_age_ms = 300\nlink_timeout_ms = 200\n")
    first = refused(plcbridge("check-config", str(p)), f"{p}: plc.max_input_age_ms, plc.link_timeout_ms: ")
    assert "Value error" not in first and "(top level)" not in first
    p = station(tmp_path, NAMED + "[plc]\nmax_input_age_ms = 15\n")
    refused(plcbridge("check-config", str(p)), f"{p}: plc.max_input_age_ms, timing.period_ms: ", "two periods")


def _listening_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


def test_metrics_port_in_use_names_the_address_and_the_variable(tmp_path):
    sock, port = _listening_port()
    with sock:
        p = station(tmp_path, NAMED + f"[metrics]\nport = {port}\n")
        r = plcbridge("run", "--config", str(p), timeout=60)
        refused(r, f"127.0.0.1:{port}", "PLCBRIDGE_METRICS_PORT", "metrics.port")
        events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        assert any(e["event"] == "start_failed" for e in events)


def test_summary_json_that_cannot_be_written_fails_at_start(tmp_path):
    p = station(tmp_path, NAMED)
    for target in (tmp_path / "no-such-dir" / "summary.json", tmp_path):
        r = plcbridge("run", "--config", str(p), "--summary-json", str(target), timeout=30)
        refused(r, "--summary-json", str(target))
        assert r.stdout == ""
    assert not (tmp_path / "no-such-dir").exists()


# ---------------------------------------------------------------------- warnings

def test_check_config_warns_about_settings_probably_not_meant(tmp_path):
    p = station(tmp_path, '[camera]\nsource = "synthetic"\nfps = 2\nstall_timeout_ms = 500\n' + MODEL
                + '[metrics]\nhost = "0.0.0.0"\n')
    r = plcbridge("check-config", str(p))
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith(f"plcbridge: warning: {p}: ")]
    assert len(warnings) == 2, r.stderr
    text = "\n".join(warnings)
    assert "camera.stall_timeout_ms" in text and "two frame periods" in text
    assert "metrics.host" in text and "every network interface" in text
    r = plcbridge("check-config", str(station(tmp_path, NAMED + '[metrics]\nhost = "::"\n')))
    assert r.returncode == 0 and "metrics.host" in r.stderr
    r = plcbridge("check-config", str(station(tmp_path, NAMED)))
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


def test_another_protocols_section_is_refused_and_check_config_shows_only_the_chosen_one(tmp_path):
    # [plc] carries one protocol: a section of another is an error naming both, not dead
    # settings, and check-config prints only the chosen protocol's section.
    p = station(tmp_path, NAMED + '[plc.opcua]\nnamespace_uri = "urn:x"\n')
    r = plcbridge("check-config", str(p))
    refused(r, str(p), "plc.opcua", "plc.protocol is 'modbus'")
    r = plcbridge("check-config", str(station(tmp_path, NAMED)))
    assert r.returncode == 0, r.stderr
    assert "[plc.modbus]" in r.stdout or "modbus" in r.stdout
    assert "opcua" not in r.stdout and "PB_Heartbeat" not in r.stdout, r.stdout


def test_run_logs_the_warnings_as_config_warning_events(tmp_path):
    sock, port = _listening_port()  # run stops at once: the metrics port is taken
    with sock:
        p = station(tmp_path, '[camera]\nsource = "synthetic"\nfps = 2\nstall_timeout_ms = 500\n' + MODEL
                    + f'[metrics]\nport = {port}\n[logging]\nformat = "json"\n')
        r = plcbridge("run", "--config", str(p), timeout=60)
    assert r.returncode == 2, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    warned = [e for e in events if e["event"] == "config_warning"]
    assert warned and warned[0]["field"] == "camera.stall_timeout_ms", events
