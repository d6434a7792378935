"""`plcbridge camera list | info ADDRESS | grab ADDRESS`: commissioning a GenICam camera.

* `list` finds cameras by discovery (a GVCP broadcast on every interface and a USB scan):
  the only command that broadcasts, and it says so on stderr.
* `info ADDRESS` prints what matters for the station config as JSON: vendor, model,
  serial, pixel formats, exposure and gain ranges, trigger support.
* `grab ADDRESS [--trigger software] [--out frame.png]` takes one frame (with software
  trigger: through TriggerSoftware), writes it as PNG (BGR, as the pipeline sees it) and
  prints its size, format, frame id and timing as JSON.

ADDRESS is an IP address (direct, nothing broadcast) or a serial / device id (discovery).
Exit 2 with the reason when Aravis is missing or the camera cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from plcbridge.adapters.camera.base import CameraError
from plcbridge.adapters.camera.genicam import (
    SUPPORTED_PIXEL_FORMATS,
    GenicamCamera,
    is_ip_address,
    load_aravis,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="camera_command", required=True, metavar="{list,info,grab}")
    sub.add_parser("list", help="find GenICam cameras by discovery (broadcasts on every interface)")
    info = sub.add_parser("info", help="print a camera's features as JSON")
    info.add_argument("address", help="IP address (direct), or serial / device id (uses discovery)")
    grab = sub.add_parser("grab", help="take one frame and write it as PNG")
    grab.add_argument("address", help="IP address (direct), or serial / device id (uses discovery)")
    grab.add_argument("--trigger", choices=("free-run", "software"), default="free-run",
                      help="free-run: the next streamed frame; software: one TriggerSoftware (default: free-run)")
    grab.add_argument("--out", default="frame.png", help="PNG file to write (default: frame.png)")
    grab.add_argument("--pixel-format", default="Mono8", choices=SUPPORTED_PIXEL_FORMATS)
    grab.add_argument("--timeout-ms", type=int, default=2000, help="longest wait for the frame (default: 2000)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.camera_command == "list":
            return _list()
        if args.camera_command == "info":
            return _info(args.address)
        return _grab(args)
    except CameraError as e:
        print(f"plcbridge camera: {e}", file=sys.stderr)
        return 2


def _discovery_note(address: str) -> None:
    if not is_ip_address(address):
        print(f"note: {address!r} is not an IP address: Aravis finds it by discovery (broadcast on every interface)",
              file=sys.stderr)


def _list() -> int:
    Ar = load_aravis()
    print("discovery: broadcasting on every network interface and scanning USB for GenICam cameras ...",
          file=sys.stderr)
    Ar.update_device_list()
    devices = []
    for i in range(Ar.get_n_devices()):
        devices.append({
            "id": Ar.get_device_id(i),
            "address": Ar.get_device_address(i),
            "protocol": Ar.get_device_protocol(i),
            "vendor": Ar.get_device_vendor(i),
            "model": Ar.get_device_model(i),
            "serial": Ar.get_device_serial_nbr(i),
        })
    print(json.dumps(devices, indent=2))
    print(f"{len(devices)} camera(s) found", file=sys.stderr)
    return 0


def _open(address: str) -> Any:
    Ar = load_aravis()
    from gi.repository import GLib

    _discovery_note(address)
    try:
        cam = Ar.Camera.new(address)
    except GLib.Error as e:
        raise CameraError(f"cannot open camera {address}: {e.message}") from None
    if cam is None:
        raise CameraError(f"cannot open camera {address}: no such device")
    return cam


def _safe(fn: Any, *a: Any) -> Any:
    try:
        v = fn(*a)
    except Exception:  # noqa: BLE001 - a feature the camera lacks is reported as null
        return None
    if hasattr(v, "min") and hasattr(v, "max"):  # (min, max) bounds tuples from PyGObject
        return [v.min, v.max]
    if isinstance(v, tuple):
        return list(v)
    return v


def _info(address: str) -> int:
    cam = _open(address)
    try:
        dev = cam.get_device()
        exposure = cam.is_exposure_time_available()
        gain = cam.is_gain_available()
        info: dict[str, Any] = {
            "address": address,
            "vendor": _safe(cam.get_vendor_name),
            "model": _safe(cam.get_model_name),
            "serial": _safe(cam.get_device_serial_number),
            "device_id": _safe(cam.get_device_id),
            "protocol": "GigE Vision" if cam.is_gv_device() else ("USB3 Vision" if cam.is_uv_device() else "other"),
            "pixel_format": _safe(cam.get_pixel_format_as_string),
            "pixel_formats": list(_safe(cam.dup_available_pixel_formats_as_strings) or []),
            "pixel_formats_supported_by_plcbridge": list(SUPPORTED_PIXEL_FORMATS),
            "sensor_size": _safe(cam.get_sensor_size),
            "region": _safe(cam.get_region),
            "exposure": {"available": exposure,
                         "feature": next((f for f in ("ExposureTime", "ExposureTimeAbs") if dev.get_feature(f)), None),
                         "us": _safe(cam.get_exposure_time) if exposure else None,
                         "range_us": _safe(cam.get_exposure_time_bounds) if exposure else None},
            "gain": {"available": gain, "value": _safe(cam.get_gain) if gain else None,
                     "range": _safe(cam.get_gain_bounds) if gain else None},
            "trigger": {"selectors": list(_safe(cam.dup_available_triggers) or []),
                        "sources": list(_safe(cam.dup_available_trigger_sources) or []),
                        "software": cam.is_software_trigger_supported()},
        }
        if cam.is_gv_device():
            info["gige"] = {"packet_size": _safe(cam.gv_get_packet_size),
                            "packet_delay_ns": _safe(cam.gv_get_packet_delay)}
    except Exception as e:  # noqa: BLE001 - GLib.Error from a camera that went away
        raise CameraError(f"camera {address}: {getattr(e, 'message', e)}") from None
    finally:
        del cam
    print(json.dumps(info, indent=2))
    return 0


def _grab(args: argparse.Namespace) -> int:
    import cv2

    from plcbridge.config import GenicamCameraSettings

    _discovery_note(args.address)
    settings = GenicamCameraSettings(source="genicam", address=args.address, trigger=args.trigger,
                                     pixel_format=args.pixel_format, timeout_ms=args.timeout_ms,
                                     stall_timeout_ms=min(60_000, max(10, args.timeout_ms)))
    source = GenicamCamera(settings)
    t0 = time.monotonic()
    source.open()
    t_open = time.monotonic()
    try:
        got = source.grab()
        t_grab = time.monotonic()
    finally:
        source.close()
    if got is None:
        raise CameraError(f"camera {args.address}: no frame")
    image, _, meta = got
    if not cv2.imwrite(args.out, image):
        raise CameraError(f"cannot write {args.out}")
    print(json.dumps({
        "out": args.out,
        "width": int(image.shape[1]), "height": int(image.shape[0]),
        "pixel_format": meta.get("pixel_format"), "trigger": args.trigger,
        "camera_frame_id": meta.get("camera_frame_id"), "camera_ts_ns": meta.get("camera_ts_ns"),
        "camera_host_ts_ns": meta.get("camera_host_ts_ns"),
        "open_ms": round((t_open - t0) * 1000, 1), "grab_ms": round((t_grab - t_open) * 1000, 1),
    }))
    return 0
