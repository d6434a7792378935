"""How the bridge proves itself to the broker and checks the broker: the TLS context (the CA
the broker's certificate must chain to, the client certificate and key) and the password.

Both are read at every connect, not once at start: a renewed certificate or a changed
password file is taken at the next connection without a restart. The password comes from a
file (its first line) or an environment variable, never from the station file; it is handed
to the MQTT client and nowhere else: no log event, error message or `check-config` output
carries it (messages name where it comes from: `$VAR`, `the file F`).

`check-config` and `run` call `problems()` before anything starts, so a missing CA file or a
key that does not fit its certificate is refused with the setting to fix; the same failure
at a later connect (a file deleted meanwhile) is a CredentialsError the client logs.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plcbridge.config import MqttSettings, MqttTlsSettings


class CredentialsError(ValueError):
    """A TLS file or the password cannot be used: `field` is the setting, str() why (never the secret)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _readable(field: str, path: Path) -> None:
    if not path.exists():
        raise CredentialsError(field, f"{path} does not exist")
    if not path.is_file():
        raise CredentialsError(field, f"{path} is not a file")
    if not os.access(path, os.R_OK):
        raise CredentialsError(field, f"{path} cannot be read by this user (permissions)")


def _ssl_why(e: ssl.SSLError | OSError) -> str:
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)


def tls_context(tls: MqttTlsSettings) -> ssl.SSLContext:
    """A client context that verifies the broker (chain and host name, TLS 1.2 at least) and,
    with a client certificate, presents it. CredentialsError naming the setting otherwise."""
    if tls.ca is not None:
        _readable("mqtt.tls.ca", tls.ca)
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=None if tls.ca is None else str(tls.ca))
    except (ssl.SSLError, OSError) as e:
        raise CredentialsError("mqtt.tls.ca", f"{tls.ca} holds no CA certificate that can be read "
                                              f"({_ssl_why(e)}): give the CA's certificate as PEM") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert is not None and tls.key is not None:
        _readable("mqtt.tls.cert", tls.cert)
        _readable("mqtt.tls.key", tls.key)
        try:
            # An encrypted key gets an empty password: refused, never a prompt on a terminal.
            ctx.load_cert_chain(str(tls.cert), str(tls.key), password=b"")
        except ssl.SSLError as e:
            why = _ssl_why(e)
            if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e):
                raise CredentialsError("mqtt.tls.key", f"{tls.key} is not the private key of {tls.cert}") from None
            if "BAD_DECRYPT" in str(e) or "bad decrypt" in str(e):
                raise CredentialsError("mqtt.tls.key", f"{tls.key} is encrypted: the daemon starts unattended, so "
                                                       "give it the key unencrypted (openssl pkey -in KEY -out "
                                                       "KEY.plain) and protect it with file permissions") from None
            raise CredentialsError("mqtt.tls.cert", f"{tls.cert} and {tls.key} are not a PEM certificate and its "
                                                    f"private key ({why})") from None
    return ctx


def read_password(settings: MqttSettings, env: Mapping[str, str] | None = None) -> str | None:
    """The password (None when the settings name no source). CredentialsError when the file
    cannot be read or is empty, or the variable is not set."""
    env = os.environ if env is None else env
    if settings.password_file is not None:
        _readable("mqtt.password_file", settings.password_file)
        try:
            text = settings.password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CredentialsError("mqtt.password_file", f"cannot read {settings.password_file}: "
                                                         f"{getattr(e, 'strerror', None) or e}") from None
        password = text.split("\n", 1)[0].rstrip("\r")
        if not password:
            raise CredentialsError("mqtt.password_file", f"{settings.password_file}: its first line is empty")
        return password
    if settings.password_env is not None:
        value = env.get(settings.password_env)
        if not value:
            raise CredentialsError("mqtt.password_env", f"${settings.password_env} is not set (or empty) in the "
                                                        "daemon's environment (the systemd unit reads "
                                                        "/etc/plcbridge/plcbridge.env)")
        return value
    return None


def problems(settings: MqttSettings, env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(setting, why) for each TLS file or password source that cannot be used now. A password
    variable missing from this environment is not one (check-config runs in a shell, not in
    the unit's environment): `warnings()` says it."""
    out: list[tuple[str, str]] = []
    if settings.tls.enabled:
        try:
            tls_context(settings.tls)
        except CredentialsError as e:
            out.append((e.field, str(e)))
    if settings.password_file is not None:
        try:
            read_password(settings, env)
        except CredentialsError as e:
            out.append((e.field, str(e)))
    return out


def warnings(settings: MqttSettings, env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    env = os.environ if env is None else env
    if settings.password_env is not None and not env.get(settings.password_env):
        return [("mqtt.password_env", f"${settings.password_env} is not set here; the daemon reads it from its own "
                                      "environment at each connect (e.g. the unit's EnvironmentFile)")]
    return []
