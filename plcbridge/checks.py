"""What a valid config names must also exist: the checks `check-config` and `run` make.

The schema (plcbridge.config) says whether a station file is well formed; these checks say
whether what it names is there and usable on this machine: the model manifest resolves and
loads, the OPC UA certificate and key files are readable and parse, a folder camera's folder
holds images. `run` makes them before it starts anything, so a station that cannot work
exits 2 with the reason instead of running without ever becoming ready.

`station_problems(cfg)` and `config_warnings(cfg)` return (field path, reason) pairs, the
form plcbridge.config reports schema errors in; `format_problems` makes the lines.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from plcbridge.config import Config, OpcUaPlcSettings

Problem = tuple[str, str]  # (field path as written in the TOML, reason)

_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def format_problems(source: str, problems: list[Problem]) -> str:
    return "\n".join(f"{source}: {where}: {why}" for where, why in problems)


def builtin_models() -> list[str]:
    """The names `builtin:NAME` accepts: the bundled model directories holding a manifest."""
    from plcbridge.inference.manifest import MANIFEST_NAME

    root = resources.files("plcbridge.inference").joinpath("models")
    try:
        return sorted(d.name for d in root.iterdir() if d.is_dir() and d.joinpath(MANIFEST_NAME).is_file())
    except OSError:
        return []


def _model_problems(manifest: str, where: str = "model.manifest") -> list[Problem]:
    from plcbridge.inference.errors import ModelError
    from plcbridge.inference.manifest import BUILTIN_PREFIX, MANIFEST_NAME, load_manifest

    if manifest.startswith(BUILTIN_PREFIX):
        name = manifest[len(BUILTIN_PREFIX):]
        names = builtin_models()
        if name not in names:
            listed = ", ".join(f"{BUILTIN_PREFIX}{n}" for n in names) or "none"
            return [(where, f"{manifest!r} is not a bundled model; the bundled models are: {listed}")]
    try:
        load_manifest(manifest)
    except ModelError as e:
        why = " ".join(str(e).split("\n"))
        path = Path(manifest).expanduser()
        if path.suffix.lower() == ".onnx" and path.is_file() and "ONNX" not in why:
            # A bare model file: say exactly what to pass instead.
            if (path.parent / MANIFEST_NAME).is_file():
                how = f"pass the model directory, manifest = \"{path.parent}\""
            else:
                how = (f"write a {MANIFEST_NAME} for it (it names the .onnx file and pins its sha256, opset, input "
                       "and preprocessing; see inference/manifest.py) and pass the directory holding both")
            why = f"{manifest!r} is an ONNX model file, not a model manifest: {how} ({why})"
        return [(where, why)]
    return []


def _readable_file(where: str, path: Path) -> tuple[bytes | None, list[Problem]]:
    if not path.exists():
        return None, [(where, f"{path} does not exist")]
    if not path.is_file():
        return None, [(where, f"{path} is not a file")]
    try:
        return path.read_bytes(), []
    except OSError as e:
        return None, [(where, f"cannot read {path}: {e.strerror or e}")]


def unreadable_pki(path: Path | str, what: str, e: Exception) -> str:
    """Why a certificate or key file does not parse, in one line that says what to do.

    cryptography's own text is its Rust parser's debug form ("error parsing asn1 value:
    ParseError { kind: ShortData { needed: 1 } }"), which names neither the file nor a fix.
    `what`: "an X.509 certificate" or "a private key"."""
    text = str(e)
    if "ShortData" in text or "short data" in text:
        why = "the file ends early (truncated: copied or downloaded only in part?)"
    elif "PEM" in text:
        why = "its PEM block (-----BEGIN ...-----) is damaged or incomplete"
    else:
        why = "its content is neither PEM nor DER, or is another kind of file"
    return (f"{path} is not {what} that can be read: {why}; copy or export it again as PEM or DER "
            "(docs/opcua-certificates.md)")


def _pki_problems(cfg: Config, env: dict[str, str]) -> list[Problem]:
    """The OPC UA certificate, key and trusted server certificate: exist, readable, parse."""
    if not isinstance(cfg.plc, OpcUaPlcSettings) or cfg.plc.opcua.security_policy == "None":
        return []
    o = cfg.plc.opcua
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    problems: list[Problem] = []
    for field in ("certificate", "server_certificate"):
        where = f"plc.opcua.{field}"
        data, found = _readable_file(where, getattr(o, field))
        problems += found
        if data is None:
            continue
        try:
            if data.lstrip().startswith(b"-----"):
                x509.load_pem_x509_certificate(data)
            else:
                x509.load_der_x509_certificate(data)
        except ValueError as e:
            problems.append((where, unreadable_pki(getattr(o, field), "an X.509 certificate", e)))
    where = "plc.opcua.private_key"
    assert o.private_key is not None  # OpcUaSettings requires it unless security_policy is "None"
    data, found = _readable_file(where, o.private_key)
    problems += found
    if data is not None:
        password: bytes | None = None
        if o.private_key_password_env:
            value = env.get(o.private_key_password_env)
            if value is None:
                # The secret is in the service's environment file, maybe not in this shell: sniff only.
                if not (b"PRIVATE KEY" in data[:200] or data[:1] == b"\x30"):
                    problems.append((where, f"{o.private_key} is not a private key (PEM or DER)"))
                return problems
            password = value.encode()
        load = (serialization.load_pem_private_key if data.lstrip().startswith(b"-----")
                else serialization.load_der_private_key)
        try:
            load(data, password=password)
        except TypeError as e:  # encrypted without a password, or a password for a plain key
            problems.append((where, f"{o.private_key}: {e} (plc.opcua.private_key_password_env names the variable "
                                    "holding its password)"))
        except ValueError as e:
            why = unreadable_pki(o.private_key, "a private key", e)
            if password is not None:
                why += "; or the password in plc.opcua.private_key_password_env is wrong"
            problems.append((where, why))
    return problems


def _camera_problems(cfg: Config) -> list[Problem]:
    cam = cfg.camera
    if cam.source == "folder":
        path = Path(cam.path).expanduser()
        if not path.exists():
            return [("camera.path", f"{cam.path} does not exist")]
        if not path.is_dir():
            return [("camera.path", f"{cam.path} is not a directory")]
        try:
            found = next((p for p in path.glob(cam.pattern) if p.is_file()), None)
        except (OSError, ValueError) as e:
            return [("camera.pattern", f"{cam.pattern!r} in {cam.path}: {e}")]
        if found is None:
            return [("camera.pattern", f"no files matching {cam.pattern!r} in {cam.path}")]
    if cam.source == "synthetic" and cam.trigger == "hardware":
        port = cam.trigger_port
        if port is None or not 1 <= port <= 65535:  # the schema already says so; the camera binds it
            return [("camera.trigger_port", f"{port!r} is not a UDP port (1-65535)")]
    return []


def _mqtt_problems(cfg: Config, env: dict[str, str]) -> list[Problem]:
    """[mqtt]: paho-mqtt installed, the TLS files and the password file usable."""
    if not cfg.mqtt.enabled:
        return []
    import importlib.util

    from plcbridge.mqtt import auth

    out: list[Problem] = []
    if importlib.util.find_spec("paho") is None or importlib.util.find_spec("paho.mqtt") is None:
        out.append(("mqtt.enabled", "[mqtt] needs paho-mqtt, which is not installed: pip install 'plcbridge[mqtt]'"))
    return out + auth.problems(cfg.mqtt, env)


def station_problems(cfg: Config, env: dict[str, str] | None = None) -> list[Problem]:
    """What a config names that is missing or unusable on this machine; empty when all is there."""
    env = dict(os.environ) if env is None else env
    models = _model_problems(cfg.model.manifest)
    if cfg.model.shadow is not None:
        models += _model_problems(cfg.model.shadow.manifest, "model.shadow.manifest")
    for i, r in enumerate(cfg.recipe):
        models += _model_problems(r.manifest, f"recipe.{i}.manifest")
    return [*models, *_pki_problems(cfg, env), *_camera_problems(cfg), *_mqtt_problems(cfg, env)]


def config_warnings(cfg: Config) -> list[Problem]:
    """Settings that are valid but probably not meant: printed by check-config, logged by run."""
    out: list[Problem] = []
    cam = cfg.camera
    fps = getattr(cam, "fps", None)
    if fps and cam.trigger != "hardware":
        period_ms = 1000.0 / fps
        if cam.stall_timeout_ms < 2 * period_ms:
            out.append(("camera.stall_timeout_ms",
                        f"{cam.stall_timeout_ms} ms is shorter than two frame periods (camera.fps = {fps:g}: a frame "
                        f"every {period_ms:.0f} ms): one late frame would be a CAMERA_FAULT; use at least "
                        f"{int(-(-2 * period_ms // 1))}"))
    m = cfg.metrics
    if m.enabled and m.host.strip("[]") in _WILDCARD_HOSTS:
        out.append(("metrics.host", f"{m.host!r} exposes the metrics and health endpoint on every network "
                                    "interface (unauthenticated); use 127.0.0.1 or one interface's address"))
    a = cfg.archive
    if a.enabled and not a.path.is_dir():
        out.append(("archive.path", f"{a.path} is not a folder here: no frame is kept until it is (the daemon never "
                                    "creates it in place of an unmounted disk; the systemd unit creates "
                                    "/var/lib/plcbridge/archive)"))
    if "recipe_id" in cfg.plc.carried_optional_inputs and cfg.plc.protocol != "loop":
        if not cfg.recipe:
            out.append((f"plc.{cfg.plc.protocol}.optional_inputs",
                        "recipe_id is read, but the station has no [[recipe]]: recipe 0 ([model]) is its only recipe, "
                        "and any other recipe_id is RECIPE_UNKNOWN (READY clear, every trigger fail-safe)"))
        if "result_recipe" not in cfg.plc.carried_optional:
            out.append((f"plc.{cfg.plc.protocol}.optional_outputs",
                        "recipe_id is read but result_recipe is not written: the PLC cannot check that a verdict was "
                        "judged with the recipe its trigger asked for (docs/plc-interface.md, \"Recipes\")"))
    q = cfg.mqtt
    if q.enabled:
        from plcbridge.mqtt import auth

        if not q.spool_path.parent.is_dir():
            out.append(("mqtt.spool_path", f"{q.spool_path.parent} is not a folder here: no decision can be spooled, "
                                           "so none is published, until it is (the systemd unit creates "
                                           "/var/lib/plcbridge)"))
        if q.username is not None and not q.tls.enabled:
            out.append(("mqtt.tls.enabled", f"user {q.username!r} logs in without TLS: the password crosses the "
                                            "network in clear text; set [mqtt.tls] enabled = true"))
        out += auth.warnings(q)
    return out


def writable_file_problem(path: Path) -> str | None:
    """Why `path` cannot be written (checked by creating it, then removing what was created), or None."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a directory"
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        return f"cannot write {path}: {e.strerror or e}"
    if not existed:
        try:
            path.unlink()
        except OSError:
            pass
    return None


def metrics_bind_message(cfg: Config, e: OSError, env: dict[str, str] | None = None) -> str:
    """The reason `run` gives when the metrics/health endpoint cannot listen."""
    env = dict(os.environ) if env is None else env
    m = cfg.metrics
    address = f"[{m.host}]:{m.port}" if ":" in m.host else f"{m.host}:{m.port}"
    given = [f"{v}={env[v]}" for v in ("PLCBRIDGE_METRICS_HOST", "PLCBRIDGE_METRICS_PORT") if v in env]
    origin = f" (from the environment: {', '.join(given)})" if given else ""
    return (f"metrics.host/metrics.port: cannot listen on {address}{origin} for the metrics and health endpoint: "
            f"{e.strerror or e}; pick a free port with metrics.port or PLCBRIDGE_METRICS_PORT, "
            "or set metrics.enabled = false")
