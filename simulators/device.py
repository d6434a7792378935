"""The simulated device's settings, read from an editable TOML file.

Commissioning engineers adapt the simulator to a station by editing data, not code (the
pyvisa-sim idea): a device file has one section for the PLC program, which every protocol
front-end shares (with the scenarios to rehearse: an early first trigger, a line that waits
for TRIGGER_READY, a PLC restart, a stuck trigger edge, triggers faster than the camera, a
product change: the recipe the PLC asks for changing every few seconds), one
for the network in front of it (a reply delay, for every front-end; simulators/network.py),
and one section per front-end. Unknown keys are rejected and every error
names the file and the field, because a silently ignored typo in a commissioning tool proves
the wrong thing.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from plcbridge import protocols
from plcbridge.contract import RECIPE_NONE, U32_MAX
from plcbridge.contract.enip import EnipTagMap
from plcbridge.contract.modbus import ModbusMap
from plcbridge.contract.opcua import OpcUaNodeMap
from plcbridge.schema import FieldsError, Strict, validation_problems

DEFAULT_DEVICE = "default"
#: Upper bound of reply_delay_ms / reply_jitter_ms: far above any PLC timeout worth testing.
MAX_REPLY_DELAY_MS = 10_000.0
#: Upper bound of the [program] scenario times (restart_after_s, stuck_trigger_*): a week.
MAX_SCENARIO_S = 7 * 24 * 3600.0


class ProgramSettings(Strict):
    """What the PLC program does; protocol-agnostic.

    Besides the line's rate (`trigger_hz`, `max_outstanding`: above 1 with a rate faster than
    the camera is the "triggers faster than the camera" scenario), scenarios to rehearse:
    `early_first_trigger`, `wait_trigger_ready`, a program that never acks (`ack` false), one
    PLC restart `restart_after_s` after the bridge's first write, and a stuck trigger edge from
    `stuck_trigger_after_s` after the first write for `stuck_trigger_for_s`
    (simulators/program.py; devices/default.toml explains each). Recipes: the PLC writes
    `recipe` in recipe_id (a mapping that lists it in `optional_inputs`), and with
    `recipe_change_every_s` changes it that often to the next id of `recipe_sequence`, cycling,
    waiting each time for the bridge's active_recipe to equal it (and READY) before it
    triggers again (`wait_active_recipe` false: a PLC that does not wait).
    """

    mode: Literal["triggered", "free-run"] = "triggered"
    trigger_hz: Annotated[float, Field(gt=0, le=1000)] = 10.0
    max_outstanding: Annotated[int, Field(ge=1, le=1000)] = 1
    watchdog_ms: Annotated[int, Field(ge=1, le=600_000)] = 100
    result_timeout_ms: Annotated[int, Field(ge=1, le=600_000)] = 1000
    first_part_id: Annotated[int, Field(ge=0, le=U32_MAX)] = 1
    early_first_trigger: bool = False
    wait_trigger_ready: bool = False
    ack: bool = True
    restart_after_s: Annotated[float, Field(ge=0, le=MAX_SCENARIO_S, allow_inf_nan=False)] | None = None
    stuck_trigger_after_s: Annotated[float, Field(ge=0, le=MAX_SCENARIO_S, allow_inf_nan=False)] | None = None
    stuck_trigger_for_s: Annotated[float, Field(gt=0, le=MAX_SCENARIO_S, allow_inf_nan=False)] = 0.1
    # 65535 is allowed on purpose: it names no recipe, the way to rehearse RECIPE_UNKNOWN.
    recipe: Annotated[int, Field(ge=0, le=RECIPE_NONE)] = 0
    recipe_sequence: list[Annotated[int, Field(ge=0, le=RECIPE_NONE)]] = []
    recipe_change_every_s: Annotated[float, Field(gt=0, le=MAX_SCENARIO_S, allow_inf_nan=False)] | None = None
    wait_active_recipe: bool = True

    @model_validator(mode="after")
    def _a_recipe_change_has_recipes_to_change_to(self) -> "ProgramSettings":
        if self.recipe_change_every_s is not None and not self.recipe_sequence:
            raise FieldsError(("recipe_change_every_s", "recipe_sequence"),
                              "recipe_change_every_s needs recipe_sequence: the recipe ids to change to, in turn")
        return self

    @property
    def uses_recipes(self) -> bool:
        """The program asks for a recipe other than the default, or changes recipes."""
        return self.recipe != 0 or self.recipe_change_every_s is not None


class NetworkSettings(Strict):
    """The network between the bridge and the simulated PLC, for every front-end.

    With a reply delay or jitter, or `relay = true`, a TCP relay (simulators/network.py)
    listens on the front-end's host/port and the protocol server behind it on an internal
    port; replies reach the client `reply_delay_ms` plus a uniformly random 0..reply_jitter_ms
    later, in order. Otherwise clients talk to the protocol server directly.
    """

    reply_delay_ms: Annotated[float, Field(ge=0, le=MAX_REPLY_DELAY_MS, allow_inf_nan=False)] = 0.0
    reply_jitter_ms: Annotated[float, Field(ge=0, le=MAX_REPLY_DELAY_MS, allow_inf_nan=False)] = 0.0
    # The relay even without a delay: for its connection counts and its runtime controls.
    relay: bool = False

    @property
    def relayed(self) -> bool:
        return self.relay or self.reply_delay_ms > 0 or self.reply_jitter_ms > 0


class ModbusSimSettings(ModbusMap):
    """The Modbus TCP front-end: where it listens; the register layout is the bridge's own
    model (plcbridge/contract/modbus.py), so both ends check it alike."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = protocols.get("modbus").default_port
    # FC23 Read/Write Multiple Registers; false answers it with exception 01 ILLEGAL_FUNCTION,
    # as many PLC servers do (Siemens MB_SERVER, for one).
    fc23: bool = True


class OpcUaSimSettings(OpcUaNodeMap):
    """The OPC UA front-end: where it listens, the nodes it exposes, and its endpoints' security.

    The node map is the bridge's own model (plcbridge/contract/opcua.py): identifiers default
    alike and are renamed exactly like the bridge's `[plc.opcua]` templates and tables. `endpoints` lists
    the security configurations offered; any secured one needs `certificate` and
    `private_key`. With `username` set, anonymous sessions are refused and the password is
    read from the environment variable `password_env` when the simulator starts.
    """

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = protocols.get("opcua").default_port
    endpoints: Annotated[
        list[Literal["None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt"]], Field(min_length=1)
    ] = ["None"]
    certificate: Path | None = None  # the simulated PLC's certificate (DER or PEM)
    private_key: Path | None = None
    # Must match the URI in the certificate's subjectAltName.
    application_uri: Annotated[str, Field(min_length=1)] = "urn:plcbridge:simulator"
    username: str | None = None
    password_env: Annotated[str, Field(min_length=1)] = "PLCBRIDGE_SIM_OPCUA_PASSWORD"

    @model_validator(mode="after")
    def _secured_endpoints_have_a_certificate(self) -> "OpcUaSimSettings":
        secured = [e for e in self.endpoints if e != "None"]
        if secured and (self.certificate is None or self.private_key is None):
            raise ValueError(f"endpoints {', '.join(secured)} need certificate and private_key")
        return self


class EnipSimSettings(EnipTagMap):
    """The EtherNet/IP front-end: where it listens and what its controller tags are called.

    The tag map is the bridge's own model (plcbridge/contract/enip.py): names default alike
    and are renamed per signal exactly like the bridge's `[plc.enip.output_tags]` /
    `[plc.enip.input_tags]`.
    """

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = protocols.get("enip").default_port

    @model_validator(mode="after")
    def _controller_scoped_only(self) -> "EnipSimSettings":
        scoped = [n for n in (*self.output_tags.values(), *self.input_tags.values()) if n.startswith("Program:")]
        if scoped:
            raise ValueError(f"the simulator holds controller-scoped tags only, not {', '.join(scoped)}")
        return self


class CameraLineSettings(Strict):
    """The PLC output wired to the camera's trigger input (simulators/camera_line.py): one UDP
    datagram to 127.0.0.1:port per trigger, for a synthetic camera with trigger = "hardware"."""

    port: Annotated[int, Field(ge=1, le=65535)] | None = None  # None: no camera wired
    drop_every: Annotated[int, Field(ge=0, le=1_000_000)] = 0  # lose every Nth pulse (0: never)
    extra_every: Annotated[int, Field(ge=0, le=1_000_000)] = 0  # an extra pulse after every Nth trigger


class DeviceSettings(Strict):
    program: ProgramSettings = ProgramSettings()
    network: NetworkSettings = NetworkSettings()
    camera_line: CameraLineSettings = CameraLineSettings()
    modbus: ModbusSimSettings = ModbusSimSettings()
    opcua: OpcUaSimSettings = OpcUaSimSettings()
    enip: EnipSimSettings = EnipSimSettings()


class DeviceFileError(ValueError):
    """A device file that cannot be used; str() names the file, each field and why."""


def _resolve(device: str | Path | None) -> tuple[str, str]:
    """Return (source name, TOML text). A bare name like "default" means a bundled device."""
    name = DEFAULT_DEVICE if device is None else str(device)
    path = Path(name)
    if not path.exists() and path.suffix == "" and "/" not in name:
        bundled = resources.files("plcbridge.simulators").joinpath("devices", f"{name}.toml")
        if bundled.is_file():
            return f"<bundled device {name}.toml>", bundled.read_text()
    try:
        return str(path), path.read_text()
    except OSError as e:
        raise DeviceFileError(f"{path}: cannot read: {e.strerror}") from None


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise DeviceFileError(f"cannot override {dotted}: {key} is not a table")
        node = child
    node[leaf] = value


def parse_device(raw: Mapping[str, Any], source: str, overrides: Mapping[str, Any] | None = None) -> DeviceSettings:
    """Validate raw TOML data with overrides ({"program.mode": "free-run"}) applied first,
    so that command-line values are validated exactly like file values."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for dotted, value in overrides.items():
        _set_dotted(data, dotted, value)
    try:
        return DeviceSettings.model_validate(data)
    except ValidationError as e:
        problems = [
            f"  {where}: {why}" + (" (set on the command line)" if where in overrides else "")
            for where, why in validation_problems(e, root=DeviceSettings)
        ]
        raise DeviceFileError(f"{source}: invalid device settings\n" + "\n".join(problems)) from None


def load_device(device: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> DeviceSettings:
    """Load a device file (a path, or the name of a bundled device; None = "default").

    `overrides` maps dotted field names to values; None values are ignored so argparse
    defaults of None mean "keep the file's value".
    """
    source, text = _resolve(device)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DeviceFileError(f"{source}: not valid TOML: {e}") from None
    return parse_device(raw, source, overrides)
