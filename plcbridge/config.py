"""The configuration schema: one pydantic model per TOML section, unknown keys rejected.

`load_config(path)` is the only way in. It reads TOML with the stdlib, applies the
environment overrides, validates everything, and raises ConfigError naming the file, the
field path and the reason. Nothing is half-applied: a daemon either gets a whole valid
Config or does not start.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from plcbridge import protocols
from plcbridge.contract import OPTIONAL_INPUT_SIGNALS, OPTIONAL_OUTPUT_SIGNALS, RECIPE_NONE, ResultCode
from plcbridge.contract.enip import EnipTagMap
from plcbridge.contract.modbus import ModbusMap
from plcbridge.contract.opcua import OpcUaNodeMap
from plcbridge.schema import FieldsError, Strict, validation_problems

if TYPE_CHECKING:
    from plcbridge.mqtt.messages import Topics


class StationSettings(Strict):
    name: str = "station-1"
    mode: Literal["triggered", "free-run"] = "triggered"


class _CameraCommon(Strict):
    # "free-run": the camera streams and a trigger takes the first free frame after it.
    # "software": on each trigger the bridge asks the camera for exactly one frame and
    # judges that frame. "hardware": the PLC's output is wired to the camera's trigger
    # input; the camera sends one frame per part, paired with triggers in order by time
    # (triggered stations only; the source must be able to do it). Unset: "software" on a
    # triggered station whose source can take a frame on request (synthetic, folder,
    # genicam): no wait for the next streamed frame; "free-run" otherwise.
    trigger: Literal["free-run", "software", "hardware"] = "free-run"
    # hardware: the longest time from the trigger edge to the frame reaching the bridge
    # (exposure + readout + transfer); it bounds the pairing window.
    trigger_latency_ms: Annotated[int, Field(ge=1, le=10_000)] = 20
    # free-run: no frame for this long is CAMERA_FAULT. software: the camera has not
    # answered a trigger, or its source has not been seen alive, for this long.
    stall_timeout_ms: Annotated[int, Field(ge=10, le=60_000)] = 500
    # Reopen backoff after a camera failed: doubles from min to max. A camera that is not
    # there (no such device, no readable image in the folder) is looked for every
    # reconnect_min_ms without growing it: one that comes back is used within about that.
    reconnect_min_ms: Annotated[int, Field(ge=1)] = 100
    reconnect_max_ms: Annotated[int, Field(ge=1)] = 5_000


class SyntheticCameraSettings(_CameraCommon):
    source: Literal["synthetic"] = "synthetic"
    fps: Annotated[float, Field(gt=0, le=1000)] = 30.0
    width: Annotated[int, Field(ge=32, le=4096)] = 256
    height: Annotated[int, Field(ge=32, le=4096)] = 256
    defect_fraction: Annotated[float, Field(ge=0, le=1)] = 0.3
    seed: int = 0
    # trigger = "hardware": the emulated trigger input, a UDP port on 127.0.0.1 the PLC
    # simulator pulses once per trigger (`plcbridge sim ... --camera-line-port PORT`).
    trigger_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    # A lighting change mid-run, to show drift (docs/drift.md): every frame grabbed this many
    # seconds or more after the camera opened has its pixels multiplied by lighting_gain, then
    # lighting_offset added (clipped to 0..255), and is journaled with camera_lighting =
    # "changed". Unset: the lighting never changes. A camera reopened after a failure starts
    # again under the first lighting, as its seed starts again.
    lighting_change_after_s: Annotated[float, Field(ge=0)] | None = None
    # The changed lighting's gain on every pixel: 0.5 is half the light, 1.5 half as much again.
    lighting_gain: Annotated[float, Field(ge=0, le=10)] = 1.0
    # Then added to every pixel (grey levels): a brighter (> 0) or darker (< 0) background.
    lighting_offset: Annotated[float, Field(ge=-255, le=255)] = 0.0

    @model_validator(mode="after")
    def _lighting_change(self) -> "SyntheticCameraSettings":
        unchanged = self.lighting_gain == 1 and self.lighting_offset == 0
        if self.lighting_change_after_s is not None and unchanged:
            raise FieldsError(("lighting_change_after_s", "lighting_gain", "lighting_offset"),
                              "lighting_change_after_s is set, but lighting_gain = 1 and lighting_offset = 0 change "
                              "nothing: set the changed lighting")
        if self.lighting_change_after_s is None and not unchanged:
            raise FieldsError(("lighting_gain", "lighting_offset", "lighting_change_after_s"),
                              "lighting_gain and lighting_offset are the lighting after lighting_change_after_s, "
                              "which is not set: set it (0 changes the lighting from the first frame)")
        return self

    @model_validator(mode="after")
    def _wired_for_hardware_trigger(self) -> "SyntheticCameraSettings":
        if self.trigger == "hardware" and self.trigger_port is None:
            raise FieldsError(("trigger", "trigger_port"), "trigger = \"hardware\" needs trigger_port: the UDP port on 127.0.0.1 that stands in "
                             "for the camera's trigger input (the simulator's camera_line.port)")
        if self.trigger != "hardware" and self.trigger_port is not None:
            raise FieldsError(("trigger_port", "trigger"), "trigger_port is set but trigger is not \"hardware\"")
        return self


class FolderCameraSettings(_CameraCommon):
    source: Literal["folder"]
    path: Path
    fps: Annotated[float, Field(gt=0, le=1000)] = 10.0
    pattern: str = "*.png"
    loop: bool = True

    @model_validator(mode="after")
    def _no_trigger_input(self) -> "FolderCameraSettings":
        if self.trigger == "hardware":
            raise FieldsError(("trigger",), "trigger = \"hardware\": a folder of images has no trigger input; use \"software\" "
                             "(one file per trigger) or \"free-run\"")
        return self


class OpenCvCameraSettings(_CameraCommon):
    source: Literal["opencv"]
    # A device index ("0"), a video file, an RTSP URL or a GStreamer pipeline string.
    url: str
    backend: Literal["any", "v4l2", "ffmpeg", "gstreamer"] = "any"
    width: int | None = None
    height: int | None = None
    fps: float | None = None  # asked of the device; a video file plays at this rate if set

    @model_validator(mode="after")
    def _streams_only(self) -> "OpenCvCameraSettings":
        if self.trigger != "free-run":
            raise FieldsError(("trigger",), f"trigger = {self.trigger!r}: an OpenCV source (a UVC device, RTSP, a video file) streams "
                             "and cannot be told when to take a frame; use trigger = \"free-run\", or a source that "
                             "can be triggered (synthetic, folder)")
        return self


class GenicamCameraSettings(_CameraCommon):
    """A GigE Vision / USB3 Vision camera through Aravis (plcbridge/adapters/camera/genicam.py)."""

    source: Literal["genicam"]
    # An IP address (opened directly, nothing broadcast), or a serial number / Aravis device
    # id ("Vendor-Model-Serial"), which makes Aravis run discovery: a GVCP broadcast on every
    # interface and a USB scan. `plcbridge camera list` shows the ids.
    address: Annotated[str, Field(min_length=1)]
    # Converted to BGR for the pipeline (Bayer: demosaiced by OpenCV).
    pixel_format: Literal["Mono8", "BayerRG8", "BayerGR8", "BayerGB8", "BayerBG8", "RGB8", "BGR8"] = "Mono8"
    # Written to ExposureTime or ExposureTimeAbs, whichever the camera has (auto exposure off).
    exposure_us: Annotated[float, Field(gt=0)] | None = None
    gain: Annotated[float, Field(ge=0)] | None = None  # Gain (dB on most cameras); auto gain off
    # Region of interest [x, y, width, height] in pixels (OffsetX, OffsetY, Width, Height).
    roi: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)], Annotated[int, Field(ge=1)],
               Annotated[int, Field(ge=1)]] | None = None
    buffers: Annotated[int, Field(ge=2, le=64)] = 4  # stream buffers allocated
    # GigE only: stream packet size in bytes (GevSCPSPacketSize; 9000-ish needs jumbo frames on the NIC).
    packet_size: Annotated[int, Field(ge=576, le=16_384)] | None = None
    # GigE only: inter-packet delay in ns (GevSCPD, converted to the camera's ticks by Aravis).
    packet_delay: Annotated[int, Field(ge=0, le=1_000_000_000)] | None = None
    # Any other GenICam feature: name -> value, each checked against the camera's node map
    # at open (unknown or read-only is refused by name, before anything is written).
    features: dict[str, Union[bool, int, float, str]] = {}
    # The longest wait of any blocking call: a software-triggered frame, a buffer pop.
    timeout_ms: Annotated[int, Field(ge=10, le=60_000)] = 1_000
    # trigger = "hardware": the camera's input line (TriggerSource).
    trigger_line: Annotated[str, Field(min_length=1)] = "Line0"
    # trigger = "hardware": the edge or level of that line that fires (TriggerActivation).
    trigger_activation: Literal["RisingEdge", "FallingEdge", "AnyEdge", "LevelHigh", "LevelLow"] = "RisingEdge"

    @model_validator(mode="after")
    def _consistent(self) -> "GenicamCameraSettings":
        reserved = {"PixelFormat": "pixel_format", "ExposureTime": "exposure_us", "ExposureTimeAbs": "exposure_us",
                    "Gain": "gain", "OffsetX": "roi", "OffsetY": "roi", "Width": "roi", "Height": "roi",
                    "TriggerMode": "trigger", "TriggerSource": "trigger", "TriggerSelector": "trigger",
                    "TriggerActivation": "trigger_activation", "AcquisitionMode": "trigger",
                    "GevSCPSPacketSize": "packet_size", "GevSCPD": "packet_delay"}
        clash = [f"{k} (use camera.{reserved[k]})" for k in self.features if k in reserved]
        if clash:
            raise FieldsError(("features",), f"camera.features sets what a camera setting owns: {', '.join(clash)}")
        bad = [k for k in self.features if not k.replace("_", "").isalnum()]
        if bad:
            raise FieldsError(("features",), f"not GenICam feature names: {', '.join(map(repr, bad))}")
        return self


# Sources that can take one frame when asked (camera.trigger = "software"): the default
# camera trigger of a triggered station that uses one.
SOFTWARE_TRIGGER_SOURCES = frozenset({"synthetic", "folder", "genicam"})

DEFAULT_CAMERA_SOURCE = "synthetic"


def _source_of(value: Any) -> str | None:
    """The tag of a [camera] table: "synthetic" when it names none (the documented default;
    a station file must still name its source, see REQUIRED_SECTIONS)."""
    if isinstance(value, dict):
        return value.get("source", DEFAULT_CAMERA_SOURCE)
    return getattr(value, "source", None)


CameraSettings = Annotated[
    Union[Annotated[SyntheticCameraSettings, Tag("synthetic")], Annotated[FolderCameraSettings, Tag("folder")],
          Annotated[OpenCvCameraSettings, Tag("opencv")], Annotated[GenicamCameraSettings, Tag("genicam")]],
    Discriminator(_source_of),
]
# The camera sources, in the order the docs list them.
CAMERA_SOURCES: tuple[str, ...] = ("synthetic", "folder", "opencv", "genicam")


class ShadowSettings(Strict):
    """`[model.shadow]`: a candidate model judged on the frames the live model judges, on
    idle CPU only, never deciding anything (plcbridge/shadow.py): its agreement with the live
    model, score differences and latency are kept before `plcbridge promote` makes it live."""

    # The candidate's manifest (a path, a folder holding manifest.json, or builtin:...).
    manifest: Annotated[str, Field(min_length=1)]
    # Frames waiting for the candidate: a busy shadow drops the newest beyond this (counted).
    queue: Annotated[int, Field(ge=1, le=64)] = 1
    # A summary (confusion matrix, score differences, latency) every this many seconds.
    summary_every_s: Annotated[float, Field(gt=0)] = 60.0
    # Keep the frames the candidate judges differently in the image archive (with [archive]).
    archive_disagreements: bool = True


class WatchSettings(Strict):
    """`[model.watch]`: after every model change (a reload, `plcbridge promote`), the new model
    is watched over its first decisions; a trigger that trips swaps the last-known-good model
    back in at once (plcbridge/rollback.py; docs/deploying-models.md). A trigger is on while
    `triggers` lists it."""

    # Watch every model change (off: a change is applied and nothing watches it).
    enabled: bool = True
    # The triggers that may roll a change back (all five by default); leave one out to turn it off.
    triggers: list[Literal["failsafe_rate", "reject_rate_change", "inference_p99", "inference_errors", "agreement"]] = [
        "failsafe_rate", "reject_rate_change", "inference_p99", "inference_errors", "agreement"]
    # How many decisions of the new model the watch lasts (and the most recent decisions of
    # the previous model its reject rate is taken from).
    decisions: Annotated[int, Field(ge=10, le=1_000_000)] = 200
    # Fewer decisions than this and no rate trigger is judged yet (a rate of 1 in 3 says little).
    min_decisions: Annotated[int, Field(ge=1, le=1_000_000)] = 30
    # fail-safe answers (any fault) among the new model's decisions.
    max_failsafe_rate: Annotated[float, Field(ge=0, le=1)] | None = 0.05
    # |FAIL share of the new model - FAIL share of the previous one|, verdicts only.
    max_reject_rate_change: Annotated[float, Field(ge=0, le=1)] | None = 0.15
    # p99 of the new model's inference time (preprocess + run); unset: model.latency_budget_ms's value.
    max_inference_p99_ms: Annotated[float, Field(gt=0)] | None = None
    # INFERENCE_ERROR and INFERENCE_TIMEOUT answers of the new model: this many trips the watch.
    max_inference_errors: Annotated[int, Field(ge=1)] | None = 3
    # Agreement with the previous model, run as the shadow after the swap (needs [model.shadow]:
    # `plcbridge promote` makes the previous model the shadow).
    min_agreement: Annotated[float, Field(ge=0, le=1)] | None = 0.9


class ModelSettings(Strict):
    # A manifest.json path, a directory holding one, or "builtin:demo" for the bundled model.
    manifest: str = "builtin:demo"
    device: Literal["cpu", "cuda"] = "cpu"
    # 1 leaves the write loop a core on a 2-core line PC.
    intra_op_threads: Annotated[int, Field(ge=1, le=64)] = 1
    # Preprocessing plus the run: one budget. Past it the run is terminated (or not started,
    # if preprocessing used it all) and the frame ends in an INFERENCE_TIMEOUT fail-safe.
    inference_timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 200
    # p99 (preprocess + run) a model must meet on this machine before a reload swaps it in;
    # default: half of inference_timeout_ms, so a model that passes rarely times out.
    latency_budget_ms: Annotated[float, Field(gt=0)] | None = None
    # How many timed runs that check takes.
    latency_check_runs: Annotated[int, Field(ge=5, le=10_000)] = 50
    shadow: ShadowSettings | None = None
    watch: WatchSettings = WatchSettings()

    @property
    def p99_budget_ms(self) -> float:
        return self.latency_budget_ms if self.latency_budget_ms is not None else self.inference_timeout_ms / 2


class ModbusSettings(ModbusMap):
    """`[plc.modbus]`: the register layout shared with the simulator (plcbridge/contract/modbus.py),
    and how an exchange travels."""

    # How one exchange travels. "fc23": Read/Write Multiple Registers, one round trip.
    # "fc16+fc3": write the outputs, then read the inputs (two round trips; every PLC has
    # them). "auto": FC23 on the first exchange of each connection, and FC16 + FC3 from then
    # on if the PLC answers exception 01 (many PLC servers, e.g. Siemens MB_SERVER, lack FC23).
    exchange: Literal["auto", "fc23", "fc16+fc3"] = "auto"


class OpcUaSettings(OpcUaNodeMap):
    """`[plc.opcua]`: OPC UA client settings (asyncua). The endpoint is
    opc.tcp://{plc.host}:{plc.port}{endpoint_path}.

    Nodes are namespace URI + identifier (never a namespace index, which a server may change
    when it restarts); identifiers come from the two templates, `{signal}` replaced by the
    contract name, and single signals can be renamed. After validation the node maps are
    complete, so `check-config` prints every node the bridge will use. The node map is shared
    with the simulator: plcbridge/contract/opcua.py.

    Secrets are never in this file: the password (and a key password) are read from the
    environment variables named here when connecting, so they never appear in the resolved
    config, in logs or in error messages.
    """

    endpoint_path: str = ""  # e.g. "/OPCUA/SimulationServer"; most PLCs need none
    # "None" is for commissioning only. Basic256Sha256 needs all three files below.
    security_policy: Literal["None", "Basic256Sha256"] = "None"
    security_mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    certificate: Path | None = None  # the bridge's application instance certificate (DER or PEM)
    private_key: Path | None = None  # its private key (PEM or DER)
    private_key_password_env: str | None = None  # env var holding the key's password, if encrypted
    server_certificate: Path | None = None  # the PLC's certificate: the only server the bridge trusts
    # Must match the URI in the bridge certificate's subjectAltName.
    application_uri: Annotated[str, Field(min_length=1)] = "urn:plcbridge:bridge"
    # Anonymous when unset; with a user, the password is read from $password_env at connect.
    username: str | None = None
    password_env: Annotated[str, Field(min_length=1)] = "PLCBRIDGE_OPCUA_PASSWORD"
    # A session the bridge abandons (crash, cable) is freed by the PLC after this long; PLCs
    # have few session slots (S7-1500: a handful), so keep it short.
    session_timeout_ms: Annotated[int, Field(ge=1_000, le=3_600_000)] = 30_000

    @model_validator(mode="after")
    def _security_is_complete(self) -> "OpcUaSettings":
        files = {"certificate": self.certificate, "private_key": self.private_key,
                 "server_certificate": self.server_certificate}
        if self.security_policy == "None":
            given = [k for k, v in files.items() if v is not None]
            if given:
                raise FieldsError((*given, "security_policy"), f"{', '.join(given)} set but security_policy is \"None\": "
                                 "set security_policy = \"Basic256Sha256\" or remove them")
        else:
            missing = [k for k, v in files.items() if v is None]
            if missing:
                raise FieldsError(("security_policy", *missing), f"security_policy {self.security_policy} needs {', '.join(missing)}")
        return self


class EnipSettings(EnipTagMap):
    """`[plc.enip]`: EtherNet/IP client settings for an Allen-Bradley Logix controller (pycomm3
    LogixDriver).

    Tag names default to the set in plcbridge/contract/enip.py (PB_Heartbeat, ...); a table
    here renames single signals. After validation both maps are complete, so `check-config`
    prints every tag the bridge will use.
    """

    # Backplane slot of the controller: the CPU's slot in a ControlLogix chassis, 0 for a
    # CompactLogix. The CIP route is host:port/backplane/slot.
    slot: Annotated[int, Field(ge=0, le=255)] = 0


# Settings that were removed, and what replaced them: an old station file is refused with
# this message instead of a bare "extra inputs are not permitted".
REMOVED_PLC_SETTINGS: dict[str, str] = {
    "call_timeout_ms": "plc.call_timeout_ms was removed (a reply slower than the period no longer ends the "
                       "session): use plc.link_timeout_ms, how long the PLC may leave the bridge without any "
                       "answer before the session is rebuilt (default 200), and plc.max_input_age_ms, the age "
                       "of the PLC inputs beyond which the bridge reports PLC_INPUTS_STALE (default 100)",
}


class PlcCommon(Strict):
    """`[plc]`: what every protocol shares. `protocol` picks one of the variants below, and
    only that protocol's own section (`[plc.modbus]`, `[plc.opcua]`, ...) is accepted."""

    protocol: str

    @property
    def carried_optional(self) -> tuple[str, ...]:
        """The optional outputs this station writes (its protocol section's
        `optional_outputs`), in contract order; every one for a protocol without such a list
        (the in-process loop carries the whole contract)."""
        listed = getattr(getattr(self, self.protocol, None), "optional_outputs", None)
        return tuple(s.name for s in OPTIONAL_OUTPUT_SIGNALS if listed is None or s.name in listed)

    @property
    def carried_optional_inputs(self) -> tuple[str, ...]:
        """The optional inputs this station reads (`optional_inputs`), likewise."""
        listed = getattr(getattr(self, self.protocol, None), "optional_inputs", None)
        return tuple(s.name for s in OPTIONAL_INPUT_SIGNALS if listed is None or s.name in listed)
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)]
    # The session is rebuilt when the PLC has answered nothing for this long; a reply that is
    # merely slower than the period is used, counted and kept. 200 ms is well above a slow
    # PLC's answer (OPC UA servers on S7-1500 / TwinCAT: 5-30 ms, p99 ~31 ms measured) and
    # within the heartbeat watchdog PLC programs commonly give a PC (200 ms - 1 s), so a
    # dead session is being replaced by the time the PLC raises its alarm.
    link_timeout_ms: Annotated[int, Field(ge=10, le=60_000)] = 200
    # The inputs (trigger_seq, part_id, result_ack_seq) are this old at most and the bridge
    # still calls itself able to see triggers; beyond it every block says PLC_INPUTS_STALE,
    # with TRIGGER_READY and READY cleared, until fresh inputs arrive.
    max_input_age_ms: Annotated[int, Field(ge=2, le=60_000)] = 100
    # Between two ticks the inputs are read again (the newest block is sent again, the same
    # values) once no exchange has started for this long, so that a trigger is seen within
    # about this plus the PLC's answer time rather than a whole period. Unset: half of
    # timing.period_ms, and never below 2 ms (no reads between ticks of 4 ms and less). 0:
    # one exchange per tick, plus the extra blocks of answers that settle between ticks.
    poll_ms: Annotated[int, Field(ge=0, le=60_000)] | None = None
    connect_timeout_ms: Annotated[int, Field(ge=1)] = 1_000
    # Reconnect backoff: doubles from min to max (a true maximum, jitter included); it falls
    # back to min only after a session has been answering for reconnect_reset_ms. A connect
    # the PLC refused (nothing listening, no route) is retried every reconnect_min_ms without
    # growing it: a PLC that comes back is found within about that.
    reconnect_min_ms: Annotated[int, Field(ge=1)] = 100
    reconnect_max_ms: Annotated[int, Field(ge=1)] = 5_000
    reconnect_reset_ms: Annotated[int, Field(ge=0)] = 10_000

    @property
    def title(self) -> str:
        return protocols.get(self.protocol).title

    @property
    def address(self) -> str:
        """Where the PLC is, for logs."""
        return f"{self.host}:{self.port}"

    @model_validator(mode="before")
    @classmethod
    def _refuse_removed_and_foreign_settings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, why in REMOVED_PLC_SETTINGS.items():
                if key in data:
                    raise FieldsError((key,), why)
            own = data.get("protocol", DEFAULT_PROTOCOL)
            for key in protocols.NAMES:
                if key != own and key in data:
                    raise FieldsError((key,), f"[plc.{key}] configures protocol {key!r}, but plc.protocol is {own!r}: "
                                              f"remove the section, or set plc.protocol = {key!r}")
        return data

    @model_validator(mode="after")
    def _stale_before_dead(self) -> "PlcCommon":
        if self.max_input_age_ms > self.link_timeout_ms:
            raise FieldsError(("max_input_age_ms", "link_timeout_ms"), f"max_input_age_ms ({self.max_input_age_ms}) must not exceed link_timeout_ms "
                             f"({self.link_timeout_ms}): the PLC must be told the bridge is blind before the "
                             "session is given up")
        if self.reconnect_max_ms < self.reconnect_min_ms:
            raise FieldsError(("reconnect_max_ms", "reconnect_min_ms"), f"reconnect_max_ms ({self.reconnect_max_ms}) is below reconnect_min_ms "
                             f"({self.reconnect_min_ms})")
        return self


DEFAULT_PROTOCOL = "modbus"


class ModbusPlcSettings(PlcCommon):
    """`[plc]` with `protocol = "modbus"`."""

    protocol: Literal["modbus"] = "modbus"
    port: Annotated[int, Field(ge=1, le=65535)] = protocols.get("modbus").default_port
    modbus: ModbusSettings = ModbusSettings()


class OpcUaPlcSettings(PlcCommon):
    """`[plc]` with `protocol = "opcua"`."""

    protocol: Literal["opcua"]
    port: Annotated[int, Field(ge=1, le=65535)] = protocols.get("opcua").default_port
    opcua: OpcUaSettings = OpcUaSettings()


class EnipPlcSettings(PlcCommon):
    """`[plc]` with `protocol = "enip"`."""

    protocol: Literal["enip"]
    port: Annotated[int, Field(ge=1, le=65535)] = protocols.get("enip").default_port
    enip: EnipSettings = EnipSettings()


class LoopSettings(Strict):
    """`[plc.loop]`: a PLC program in this very process instead of a PLC on the network
    (python-can's VirtualBus, pyserial's loop://), for tests and demos: the bridge finds it by
    channel name (plcbridge/contract/loop.py). Nothing travels over a network, so `plc.host` is
    not used and `plc.port` is 0."""

    # The name the PLC program was attached under (simulators/loop.py's `channel`).
    channel: Annotated[str, Field(min_length=1)] = "plc"


class LoopPlcSettings(PlcCommon):
    """`[plc]` with `protocol = "loop"`: the in-process PLC; no host, no port."""

    protocol: Literal["loop"]
    port: int = protocols.get("loop").default_port
    loop: LoopSettings = LoopSettings()

    @property
    def address(self) -> str:
        return f"loop:{self.loop.channel}"

    @field_validator("port")
    @classmethod
    def _no_port(cls, port: int) -> int:
        if port != 0:
            raise ValueError("the loop protocol has no network: leave plc.port unset (0); the PLC program is "
                             "found by plc.loop.channel")
        return port


def _protocol_of(value: Any) -> str | None:
    """The tag of a [plc] table: "modbus" when it names none (the default protocol)."""
    if isinstance(value, dict):
        return value.get("protocol", DEFAULT_PROTOCOL)
    return getattr(value, "protocol", None)


# One variant per row of plcbridge/protocols.py (a test holds them equal).
PlcSettings = Annotated[
    Union[Annotated[ModbusPlcSettings, Tag("modbus")], Annotated[OpcUaPlcSettings, Tag("opcua")],
          Annotated[EnipPlcSettings, Tag("enip")], Annotated[LoopPlcSettings, Tag("loop")]],
    Discriminator(_protocol_of),
]


class TimingSettings(Strict):
    period_ms: Annotated[float, Field(ge=1, le=10_000)] = 10.0
    # free-run: a decision whose frame is older than this is not written (STALE_RESULT).
    max_result_age_ms: Annotated[int, Field(ge=1)] = 250
    # triggered: a trigger with no decision after this gets a fail-safe result.
    result_timeout_ms: Annotated[int, Field(ge=1)] = 500
    # triggered: a result stays on the outputs until acked or for this long, then the next one.
    result_hold_ms: Annotated[int, Field(ge=0)] = 100
    # triggered: triggers waiting behind the one being judged; one more is TRIGGER_OVERRUN.
    trigger_queue: Annotated[int, Field(ge=0, le=64)] = 4
    # triggered: a trigger is judged on the first frame captured after it was seen that no
    # other trigger took, if that frame was captured within this long; else NO_FRAME. It is
    # how long a part stays in view after its trigger: never a later part's frame.
    frame_window_ms: Annotated[int, Field(ge=1, le=60_000)] = 100


class FailsafeSettings(Strict):
    """What the PLC gets instead of a verdict. Data, not code: plants differ."""

    # Result code written instead of a verdict (FAIL where the line treats a fail-safe as a reject).
    result_code: Literal["FAILSAFE", "FAIL"] = "FAILSAFE"
    # Score written with the fail-safe result.
    score: Annotated[float, Field(ge=0, le=1)] = 1.0

    @property
    def code(self) -> ResultCode:
        return ResultCode[self.result_code]


class RecipeSettings(Strict):
    """One `[[recipe]]`: a product the PLC chooses by number (`recipe_id`; docs/plc-interface.md
    "Recipes"). Recipe 0 is the station's `[model]` with its `[failsafe]`, never listed here.
    The [model] section's device, threads and timeouts apply to every recipe's model."""

    # The number the PLC writes in recipe_id for it (0 is [model]).
    id: Annotated[int, Field(ge=1, le=RECIPE_NONE - 1)]
    # For people: logs, the station page, MQTT (the PLC knows the number only).
    name: str = ""
    # Its model: a manifest.json path, a folder holding one, or builtin:...
    manifest: Annotated[str, Field(min_length=1)]
    # A verdict rule of this recipe's own: the score at which a part fails (a classifier's
    # threshold, an anomaly model's rules.threshold), instead of the manifest's. Detection
    # and segmentation models count defects by their manifest's rules only.
    threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    # What the PLC gets instead of a verdict for a trigger of this recipe; unset: [failsafe].
    failsafe: FailsafeSettings | None = None


class RecipesSettings(Strict):
    """`[recipes]`: how the station keeps its recipes' models."""

    # How many recipes' model sessions stay loaded at once (the memory bound), recipe 0
    # counted. Unset: all of them, loaded at start, so a switch takes a period or two. A
    # recipe beyond the bound is loaded when the PLC asks for it (its switch takes as long as
    # loading and checking its model) in place of the one used least recently.
    max_loaded: Annotated[int, Field(ge=1, le=256)] | None = None


class DriftSettings(Strict):
    """`[drift]`: the live score distribution against the reference the model's manifest
    carries (written by `plcbridge validate-model --reference`; docs/drift.md). Side
    information for people: it never changes a verdict or what the PLC sees."""

    enabled: bool = True  # where the manifest carries a reference
    # Scores per window: one drift figure (population stability index) per full window.
    window: Annotated[int, Field(ge=50, le=1_000_000)] = 500
    # A window whose PSI reaches this is logged as a warning (0.1 is commonly "some shift",
    # 0.25 "a significant one").
    warn_psi: Annotated[float, Field(gt=0)] = 0.2


class LoggingSettings(Strict):
    format: Literal["json", "text"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"
    # A repeated error event is logged at most once per this window, with a suppressed count.
    rate_limit_s: Annotated[float, Field(ge=0)] = 5.0


class ArchiveSettings(Strict):
    """The image archive (plcbridge/archive, docs/archive.md): the frames of rejected and
    fail-safe parts, with their decision records, for review and retraining. Side work: a
    full or missing disk costs frames, never the PLC's answers."""

    # Keep frames at all (off in the embedded demo station, on in the example stations).
    enabled: bool = False
    # Folder of the dated subfolders (YYYY-MM-DD/HH/, UTC). It must exist: a missing folder
    # (an unmounted disk) is counted and waited for, never created in its place.
    path: Path = Path("/var/lib/plcbridge/archive")
    # Keep the frame of every FAIL.
    save_fail: bool = True
    # Keep the frame of every fail-safe that judged one (BAD_FRAME, INFERENCE_*); the others
    # (NO_FRAME, a result timeout, ...) had no frame to keep.
    save_failsafe: bool = True
    # Keep one PASS frame in every pass_every (0: none) ...
    pass_every: Annotated[int, Field(ge=0)] = 100
    # ... and at most one PASS frame per this many seconds (0: no limit).
    pass_min_interval_s: Annotated[float, Field(ge=0)] = 0.0
    # Image format: png (lossless, the frame exactly as judged) or jpeg (smaller).
    format: Literal["png", "jpeg"] = "png"
    # JPEG quality, 1..100 (format = "jpeg" only).
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 90
    # PNG compression level, 0..9 (format = "png" only); unset: OpenCV's own default, its
    # fastest compressing setting. Level 0 stores the pixels unfiltered: a third of the CPU
    # for 60 % more bytes, the choice for a station that keeps every frame. Per 256x256
    # synthetic entry: unset 3.2 ms of CPU, 120 KiB; 0: 1.0 ms, 193 KiB; 1: 4.1 ms, 75 KiB
    # (docs/archive.md, "What it costs").
    png_compression: Annotated[int, Field(ge=0, le=9)] | None = None
    # Past this many bytes the oldest frames are deleted first.
    max_bytes: Annotated[int, Field(ge=1_000_000)] = 2_000_000_000
    # Frames older than this many days are deleted.
    max_age_days: Annotated[float, Field(gt=0)] = 30.0
    # Records the writer may lag behind before it leaves frames out (counted).
    queue: Annotated[int, Field(ge=1, le=10_000)] = 64


class MqttTlsSettings(Strict):
    """`[mqtt.tls]`: TLS to the broker. The broker's certificate is always verified, its name
    included (there is no switch to turn that off); the files are read again at every connect,
    so a renewed certificate is taken without a restart."""

    # Connect with TLS (port 8883 unless mqtt.port says otherwise).
    enabled: bool = False
    # The CA certificate(s), PEM, the broker's certificate must chain to; unset: the system's trusted CAs.
    ca: Path | None = None
    # The bridge's client certificate, PEM, for a broker that authenticates clients by
    # certificate (with key).
    cert: Path | None = None
    # The client certificate's private key, PEM, not encrypted (the daemon starts unattended;
    # protect it with file permissions: readable by the plcbridge user only).
    key: Path | None = None

    @model_validator(mode="after")
    def _complete(self) -> "MqttTlsSettings":
        given = [k for k in ("ca", "cert", "key") if getattr(self, k) is not None]
        if given and not self.enabled:
            raise FieldsError((*given, "enabled"), f"{', '.join(given)} set but [mqtt.tls] enabled = false: set "
                                                   "enabled = true, or remove them")
        if (self.cert is None) != (self.key is None):
            have, lacks = ("cert", "key") if self.key is None else ("key", "cert")
            raise FieldsError((have, lacks), f"{have} is set without {lacks}: a client certificate needs both")
        return self


class MqttSettings(Strict):
    """Results to the plant over MQTT (plcbridge/mqtt, docs/mqtt.md): every decision, the
    station's status and stats, through a disk spool that keeps what the broker has not
    acknowledged. Side work: a dead, slow or rude broker costs nothing the PLC sees."""

    # Publish at all (off in the embedded demo station).
    enabled: bool = False
    # The broker's host name or address.
    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    # The broker's port; unset: 1883, or 8883 with tls.enabled.
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    # MQTT protocol version: "3.1.1" (every broker) or "5" (reason codes in acknowledgements).
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    # The client id, unique on the broker (a second client with the same id takes the
    # connection over); the placeholders of topic_prefix may be used. Unset: "plcbridge-"
    # followed by site, line and station name (those set), joined by "-".
    client_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    # Seconds between keep-alive pings when nothing else is sent; the broker drops a silent
    # connection after 1.5 times this and publishes the station's last will (offline).
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    # TCP connect, TLS handshake and the broker's CONNACK each within this.
    connect_timeout_ms: Annotated[int, Field(ge=100, le=60_000)] = 5_000
    # User name for the broker; unset: none (anonymous, or the TLS client certificate).
    username: Annotated[str, Field(min_length=1)] | None = None
    # A file holding the password (its first line), read at every connect; never in this file,
    # never logged. Set at most one of password_file and password_env.
    password_file: Path | None = None
    # An environment variable holding the password (e.g. in /etc/plcbridge/plcbridge.env),
    # read at every connect; never logged.
    password_env: Annotated[str, Field(min_length=1)] | None = None
    tls: MqttTlsSettings = MqttTlsSettings()
    # Topics are PREFIX/decision, PREFIX/status (retained) and PREFIX/stats; placeholders:
    # {site}, {line}, {station} (station.name).
    topic_prefix: Annotated[str, Field(min_length=1)] = "plcbridge/{site}/{line}/{station}"
    # The plant's site, for {site} (one topic level: no '/', '+', '#').
    site: Annotated[str, Field(min_length=1)] | None = None
    # The production line, for {line} (one topic level).
    line: Annotated[str, Field(min_length=1)] | None = None
    # The status topic is published on every change and at least this often.
    status_interval_s: Annotated[float, Field(ge=1, le=86_400)] = 30.0
    # The stats topic is published this often.
    stats_interval_s: Annotated[float, Field(ge=1, le=86_400)] = 60.0
    # The disk spool (SQLite): every decision is written here before it is published and
    # deleted when the broker acknowledges it. Its folder must exist (the systemd unit's
    # StateDirectory makes /var/lib/plcbridge).
    spool_path: Path = Path("/var/lib/plcbridge/mqtt-spool.sqlite")
    # Past this many bytes of spooled messages the oldest are dropped first (counted).
    spool_max_bytes: Annotated[int, Field(ge=100_000)] = 500_000_000
    # Spooled messages older than this many days are dropped (counted).
    spool_max_age_days: Annotated[float, Field(gt=0)] = 7.0
    # Decisions published and not yet acknowledged, at most: what memory holds, however
    # slow or silent the broker.
    inflight: Annotated[int, Field(ge=1, le=1_000)] = 20
    # A connection whose oldest unacknowledged message waits this long is dropped and made
    # again (a broker that accepts and never acknowledges).
    ack_timeout_s: Annotated[float, Field(ge=1, le=3_600)] = 30.0
    # Reconnect backoff: doubles from this first wait, with jitter (no reconnect storm from a
    # line of stations) ...
    reconnect_min_ms: Annotated[int, Field(ge=100)] = 1_000
    # ... up to this longest wait between two attempts ...
    reconnect_max_ms: Annotated[int, Field(ge=100)] = 60_000
    # ... and back to the first only after a connection has been acknowledging this long.
    reconnect_reset_ms: Annotated[int, Field(ge=0)] = 30_000
    # Decision records the spool writer may lag behind before it leaves some out (counted).
    queue: Annotated[int, Field(ge=1, le=10_000)] = 256

    @property
    def broker(self) -> str:
        """host:port, for logs."""
        return f"[{self.host}]:{self.broker_port}" if ":" in self.host else f"{self.host}:{self.broker_port}"

    @property
    def broker_port(self) -> int:
        return self.port if self.port is not None else (8883 if self.tls.enabled else 1883)

    @property
    def password_source(self) -> str | None:
        """Where the password comes from, for messages (never the password)."""
        if self.password_file is not None:
            return f"the file {self.password_file}"
        if self.password_env is not None:
            return f"${self.password_env}"
        return None

    @model_validator(mode="after")
    def _consistent(self) -> "MqttSettings":
        if self.password_file is not None and self.password_env is not None:
            raise FieldsError(("password_file", "password_env"), "set one of password_file and password_env, not both")
        if self.username is None and (self.password_file is not None or self.password_env is not None):
            given = "password_file" if self.password_file is not None else "password_env"
            raise FieldsError((given, "username"), f"{given} is set without username: a password goes with a user name")
        if self.reconnect_max_ms < self.reconnect_min_ms:
            raise FieldsError(("reconnect_max_ms", "reconnect_min_ms"), f"reconnect_max_ms ({self.reconnect_max_ms}) "
                              f"is below reconnect_min_ms ({self.reconnect_min_ms})")
        from plcbridge.mqtt.messages import PLACEHOLDERS, TopicError, level_problem, placeholders_in

        for key in ("topic_prefix", "client_id"):
            template = getattr(self, key)
            if template is None:
                continue
            try:
                unknown = [n for n in placeholders_in(template) if n not in PLACEHOLDERS]
            except TopicError as e:
                raise FieldsError((key,), str(e)) from None
            if unknown:
                raise FieldsError((key,), f"{template!r}: unknown placeholder {{{unknown[0]}}}; the placeholders are "
                                          f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
        for key in ("site", "line"):
            value = getattr(self, key)
            why = None if value is None else level_problem(value)
            if why is not None:
                raise FieldsError((key,), f"{value!r} cannot be one level of an MQTT topic: {why}")
        return self


class MetricsSettings(Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9108


class Config(Strict):
    station: StationSettings = StationSettings()
    camera: CameraSettings = SyntheticCameraSettings()
    model: ModelSettings = ModelSettings()
    plc: PlcSettings = ModbusPlcSettings()
    timing: TimingSettings = TimingSettings()
    failsafe: FailsafeSettings = FailsafeSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    archive: ArchiveSettings = ArchiveSettings()
    mqtt: MqttSettings = MqttSettings()
    recipe: list[RecipeSettings] = []
    recipes: RecipesSettings = RecipesSettings()
    drift: DriftSettings = DriftSettings()

    @model_validator(mode="before")
    @classmethod
    def _software_trigger_where_the_source_has_one(cls, data: Any) -> Any:
        """camera.trigger unset: "software" on a triggered station whose source can take a
        frame on request, else "free-run" (the field's default)."""
        if not isinstance(data, dict) or not isinstance(data.get("camera"), dict) or "trigger" in data["camera"]:
            return data
        station = data.get("station")
        mode = station.get("mode", StationSettings().mode) if isinstance(station, dict) else StationSettings().mode
        if mode == "triggered" and data["camera"].get("source", "synthetic") in SOFTWARE_TRIGGER_SOURCES:
            data = {**data, "camera": {**data["camera"], "trigger": "software"}}
        return data

    @model_validator(mode="after")
    def _deadlines_fit_the_period(self) -> "Config":
        if self.plc.max_input_age_ms < 2 * self.timing.period_ms:
            raise FieldsError(
                ("plc.max_input_age_ms", "timing.period_ms"),
                f"plc.max_input_age_ms ({self.plc.max_input_age_ms}) must be at least two periods "
                f"(timing.period_ms = {self.timing.period_ms}): inputs are refreshed at most once a period"
            )
        if self.timing.result_timeout_ms <= self.timing.period_ms:
            raise FieldsError(("timing.result_timeout_ms", "timing.period_ms"),
                              f"timing.result_timeout_ms ({self.timing.result_timeout_ms}) must be longer than "
                              f"timing.period_ms ({self.timing.period_ms})")
        if self.camera.trigger != "free-run" and self.station.mode != "triggered":
            raise FieldsError(("camera.trigger", "station.mode"), f"camera.trigger = {self.camera.trigger!r} needs station.mode = \"triggered\": "
                             "in free-run nothing asks the camera for a frame")
        if self.mqtt.enabled:
            from plcbridge.mqtt.messages import TopicError

            try:
                self.mqtt_topics()
                self.mqtt_client_id()
            except TopicError as e:
                text = str(e)
                where = ["mqtt.client_id" if text.startswith("mqtt.client_id") else "mqtt.topic_prefix"]
                where += [f for f in ("station.name", "mqtt.site", "mqtt.line") if f in text]
                raise FieldsError(tuple(where), text) from None
        return self

    @model_validator(mode="after")
    def _recipes_the_plc_can_choose(self) -> "Config":
        """[[recipe]] ids are unique, and a station with recipes reads recipe_id and writes
        active_recipe: without them the PLC could never choose one, nor see a switch end."""
        seen: set[int] = set()
        for i, r in enumerate(self.recipe):
            if r.id in seen:
                raise FieldsError((f"recipe.{i}.id",), f"recipe id {r.id} is listed twice")
            seen.add(r.id)
        if self.recipe:
            missing = [f"recipe_id (plc.{self.plc.protocol}.optional_inputs)"] * (
                "recipe_id" not in self.plc.carried_optional_inputs)
            missing += [f"active_recipe (plc.{self.plc.protocol}.optional_outputs)"] * (
                "active_recipe" not in self.plc.carried_optional)
            if missing:
                raise FieldsError(("recipe",), f"a station with [[recipe]] must carry {' and '.join(missing)}: the PLC "
                                               "chooses a recipe by recipe_id and waits for active_recipe to echo it "
                                               "(docs/plc-interface.md, \"Recipes\")")
        return self

    def mqtt_values(self) -> dict[str, str | None]:
        """What `{site}`, `{line}` and `{station}` stand for in mqtt.topic_prefix and mqtt.client_id."""
        return {"site": self.mqtt.site, "line": self.mqtt.line, "station": self.station.name}

    def mqtt_topics(self) -> "Topics":
        """The station's MQTT topics (plcbridge.mqtt.messages.Topics); TopicError when the prefix
        cannot be expanded or published to."""
        from plcbridge.mqtt.messages import Topics

        return Topics.build(self.mqtt.topic_prefix, self.mqtt_values())

    def mqtt_client_id(self) -> str:
        """mqtt.client_id expanded; unset: "plcbridge-" + the site, line and station set."""
        from plcbridge.mqtt.messages import expand

        if self.mqtt.client_id is None:
            return "-".join(["plcbridge", *(v for v in self.mqtt_values().values() if v)])
        return expand(self.mqtt.client_id, self.mqtt_values(), "mqtt.client_id")


# Environment overrides, applied before validation so that they are validated too.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "PLCBRIDGE_PLC_HOST": ("plc", "host"),
    "PLCBRIDGE_PLC_PORT": ("plc", "port"),
    "PLCBRIDGE_METRICS_HOST": ("metrics", "host"),
    "PLCBRIDGE_METRICS_PORT": ("metrics", "port"),
}


class ConfigError(ValueError):
    """A configuration that cannot be used; str() names the file, each field path and why:
    one line per problem, each "FILE: FIELD: REASON" (or "VARIABLE=...: REASON" for an
    environment override), so that the first line alone names the cause."""


# Unions whose tag pydantic inserts into an error's location: (prefix, tag field). The user
# writes `camera.path`, never `camera.folder.path`.
TAGGED_UNIONS: tuple[tuple[tuple[str, ...], str], ...] = ((("camera",), "source"), (("plc",), "protocol"))

# The overrides of integer keys: an environment variable is text, and the schema takes
# numbers only as numbers, so a value that is an integer is read as one first.
ENV_INTEGERS = frozenset({"PLCBRIDGE_PLC_PORT", "PLCBRIDGE_METRICS_PORT"})


def _env_value(var: str, value: str) -> Any:
    if var in ENV_INTEGERS:
        try:
            return int(value.strip(), 10)
        except ValueError:
            return value  # refused by the schema, naming the variable
    return value


def _apply_env(raw: dict[str, Any], env: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The raw config with the overrides applied, and {dotted field path: variable} of those applied."""
    applied: dict[str, str] = {}
    for var, path in ENV_OVERRIDES.items():
        if var in env:
            node = raw
            for key in path[:-1]:
                child = node.get(key)
                # Copy on the way down: the caller's dict (a parsed file) is never changed.
                node[key] = node = dict(child) if isinstance(child, dict) else ({} if child is None else child)
                if not isinstance(node, dict):
                    break
            else:
                node[path[-1]] = _env_value(var, env[var])
                applied[".".join(path)] = var
    return raw, applied


def _problems_text(source: str, problems: list[tuple[str, str]], env_vars: dict[str, str],
                   env: dict[str, str]) -> str:
    lines = []
    for where, why in problems:
        var = env_vars.get(where)
        if var is not None:
            # The value came from the environment (e.g. /etc/plcbridge/plcbridge.env), not the file.
            lines.append(f"{var}={env.get(var, '')!r} (environment variable, overrides {where} of {source}): {why}")
        else:
            lines.append(f"{source}: {where}: {why}")
    return "\n".join(lines)


def _unless_no_source(before: list[tuple[str, str]], found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A [camera] that names no source is that one problem: its keys are not also reported
    against the synthetic camera's, which it was validated as."""
    if not any(where == "camera.source" for where, _ in before):
        return found
    return [(where, why) for where, why in found if not where.startswith("camera.")]


def parse_config(raw: dict[str, Any], source: str = "<config>", env: dict[str, str] | None = None,
                 problems: list[tuple[str, str]] | None = None) -> Config:
    """Validate a parsed config; `problems` found before (e.g. missing sections) are reported with the rest."""
    env = dict(os.environ) if env is None else env
    raw, env_vars = _apply_env(dict(raw), env)
    found = list(problems or [])
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        found += _unless_no_source(problems or [], validation_problems(e, TAGGED_UNIONS, Config))
        cfg = None
    if found:
        raise ConfigError(_problems_text(source, found, env_vars, env))
    assert cfg is not None
    return cfg


_ABSENT = object()


def changed_keys(old: Config, new: Config) -> list[str]:
    """The dotted keys whose values differ ("model.manifest", "plc.port"), sorted: what a
    reload names. A key one of them does not have (another camera source) counts as changed."""
    return sorted(_differences(old.model_dump(), new.model_dump(), ""))


def _differences(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in a.keys() | b.keys()
                for k in _differences(a.get(key, _ABSENT), b.get(key, _ABSENT), f"{path}.{key}" if path else str(key))]
    return [path] if a != b else []


# What a station file must name itself: the embedded demo default is never a fallback for them.
REQUIRED_SECTIONS: dict[str, tuple[str, str]] = {
    "camera": ("source", "add [camera] with source = " + ", ".join(f'"{c}"' for c in CAMERA_SOURCES[:-1])
                         + f' or "{CAMERA_SOURCES[-1]}" and its settings (docs/configuration.md)'),
    "model": ("manifest", "add [model] with manifest = the model directory, its manifest.json, or builtin:NAME"),
}


def missing_sections(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(field path, reason) for each section a station file must name and does not."""
    out = []
    for section, (key, how) in REQUIRED_SECTIONS.items():
        table = raw.get(section)
        if not isinstance(table, dict):
            out.append((section, f"no [{section}] section: a station file must name its {section} ({how}); "
                                 "the demo station (synthetic camera, demo model) is used only by "
                                 "`plcbridge run` without --config"))
        elif key not in table:
            out.append((f"{section}.{key}", f"[{section}] does not name its {key}: {how}"))
    return out


def load_config_text(text: str, source: str, env: dict[str, str] | None = None, *, station: bool = True) -> Config:
    """Validate TOML text; `station`: it is a station file, which must name its camera and model."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return parse_config(raw, source, env, missing_sections(raw) if station else None)


def load_config(path: str | Path | None, env: dict[str, str] | None = None) -> Config:
    """Load and validate a TOML station file; None loads the embedded default (the demo station).

    A station file must name its [camera] (source) and [model] (manifest): a truncated file
    is refused, never completed with the demo's synthetic camera and model.
    """
    if path is None:
        text = resources.files("plcbridge").joinpath("default.toml").read_text()
        return load_config_text(text, "<embedded default.toml>", env, station=False)
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror}") from None
    return load_config_text(text, source, env)
