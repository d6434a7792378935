"""A GenICam camera (GigE Vision, USB3 Vision) through Aravis 0.8 (PyGObject bindings).

Aravis is an optional system dependency: `gi` and the Aravis typelib come from the
distribution (apt: gir1.2-aravis-0.8, python3-gi / the [genicam] extra), so they are
imported only when a genicam source opens, and a missing install is a CameraError with the
hint, never an ImportError at daemon start.

Addressing: `camera.address` is handed to arv_camera_new(). An IPv4 address opens the
device directly (GVCP unicast to that address only); a serial number, a "Vendor-Serial"
device id or a USB3 id makes Aravis run *discovery* first (a GVCP broadcast on every
interface, and a USB scan). Use an IP address on a plant network where broadcasts are not
welcome.

Trigger modes (camera.trigger):
* "free-run": continuous acquisition, TriggerMode Off; grab() pops the next buffer and
  raises CameraError when none came within camera.stall_timeout_ms (the grab loop then
  reopens the camera with backoff).
* "software": TriggerMode On, TriggerSource Software; grab() drops any stale buffer, issues
  one TriggerSoftware and returns that frame, or raises CameraError after timeout_ms.
* "hardware": TriggerMode On, TriggerSource `trigger_line`, TriggerActivation
  `trigger_activation`; grab() waits ~0.1 s for a frame and returns None while idle. While
  idle the device is probed every stall_timeout_ms, so an unplugged camera still fails.

Every frame carries its identity: (image, None, meta) with meta = camera_frame_id (the
device's block id; GigE ids wrap 65535 -> 1), camera_ts_ns (device timestamp),
camera_host_ts_ns (host time the buffer completed) and pixel_format. `meta["counts"]` holds
the buffers that failed (by status) and packet counters since the previous frame, for
the metrics.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from typing import Any

import numpy as np

from plcbridge.adapters.camera.base import CameraAbsent, CameraError, CameraSource

INSTALL_HINT = "install the system packages and the [genicam] extra: see README (make genicam-deps)"
# Hardware trigger: how long grab() waits for a frame before saying "idle" (None).
_IDLE_S = 0.1
# Stream statistics exported as packet counters (ArvGvStream; absent on USB3 streams).
_PACKET_STATS = {"resent": "n_resent_packets", "missing": "n_missing_packets", "resend_requests": "n_resend_requests"}


def load_aravis() -> Any:
    """The Aravis module; CameraError with the install hint when it cannot be imported."""
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ImportError, ValueError) as e:
        raise CameraError(f"genicam camera: Aravis 0.8 is not available ({e}): {INSTALL_HINT}") from None
    return Aravis


def is_ip_address(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return False


def to_bgr(data: np.ndarray, pixel_format: str) -> np.ndarray:
    """A HxW (or HxWx3) 8-bit image in GenICam `pixel_format` -> HxWx3 uint8 BGR."""
    import cv2

    codes = {
        "Mono8": cv2.COLOR_GRAY2BGR,
        # GenICam names the 2x2 pattern from the top-left pixel; OpenCV's *RGGB style aliases do too.
        "BayerRG8": cv2.COLOR_BayerRGGB2BGR,
        "BayerGR8": cv2.COLOR_BayerGRBG2BGR,
        "BayerGB8": cv2.COLOR_BayerGBRG2BGR,
        "BayerBG8": cv2.COLOR_BayerBGGR2BGR,
        "RGB8": cv2.COLOR_RGB2BGR,
    }
    if pixel_format == "BGR8":
        return data.copy()
    code = codes.get(pixel_format)
    if code is None:
        raise CameraError(f"genicam camera: pixel format {pixel_format} cannot be converted to BGR "
                          f"(supported: {', '.join(sorted([*codes, 'BGR8']))})")
    return cv2.cvtColor(data, code)


SUPPORTED_PIXEL_FORMATS = ("Mono8", "BayerRG8", "BayerGR8", "BayerGB8", "BayerBG8", "RGB8", "BGR8")


class GenicamCamera(CameraSource):
    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._ar: Any = None
        self._cam: Any = None
        self._stream: Any = None
        self._lost = False
        self._failed: dict[str, int] = {}
        self._packets_seen: dict[str, int] = {}
        self._last_probe = 0.0
        self._last_frame_id: int | None = None

    # --- open -----------------------------------------------------------------------------

    def open(self) -> None:
        s = self.settings
        Ar = self._ar = load_aravis()
        from gi.repository import GLib

        try:
            cam = Ar.Camera.new(s.address)
        except GLib.Error as e:
            how = "" if is_ip_address(s.address) else " (found by discovery)"
            # Not found (nothing answered at the address, or discovery found no such camera):
            # looked for again soon. Found but refusing (busy, access denied): the backoff.
            absent = e.domain == GLib.quark_to_string(Ar.DeviceError.quark()) and e.code == int(Ar.DeviceError.NOT_FOUND)
            raise (CameraAbsent if absent else CameraError)(f"genicam camera {s.address}{how}: cannot open: {e.message}") from None
        if cam is None:
            raise CameraAbsent(f"genicam camera {s.address}: cannot open (no such device)")
        self._cam = cam
        try:
            self._configure(cam)
            dev = cam.get_device()
            dev.connect("control-lost", self._on_control_lost)
            stream = cam.create_stream(None, None)
            if stream is None:
                raise CameraError(f"genicam camera {s.address}: cannot create a stream")
            self._stream = stream
            payload = cam.get_payload()
            for _ in range(s.buffers):
                stream.push_buffer(Ar.Buffer.new_allocate(payload))
            self._packets_seen = self._packet_stats()
            cam.start_acquisition()
            self._last_probe = time.monotonic()
            if s.trigger == "software":
                # The first triggered frame takes 70-85 ms (the stream settles): pay it here,
                # at open, not on the first part. Bounded by timeout_ms; nothing is judged.
                cam.software_trigger()
                warm = self._pop_ok(s.timeout_ms / 1000)
                if warm is not None:
                    stream.push_buffer(warm)
        except GLib.Error as e:
            self.close()
            raise CameraError(f"genicam camera {s.address}: {e.message}") from None
        except BaseException:
            self.close()
            raise

    def _configure(self, cam: Any) -> None:
        s, Ar = self.settings, self._ar
        dev = cam.get_device()
        # Check every extra feature before writing anything: never start half configured.
        problems = []
        for name in s.features:
            node = dev.get_feature(name)
            if node is None or not hasattr(node, "set_value_from_string"):
                problems.append(f"{name}: unknown feature (not in the camera's node map)" if node is None
                                else f"{name}: not a value feature ({type(node).__name__})")
                continue
            if not (node.is_implemented() and node.is_available()):
                problems.append(f"{name}: not available on this camera now")
                continue
            if node.get_actual_access_mode() not in (Ar.GcAccessMode.RW, Ar.GcAccessMode.WO):
                problems.append(f"{name}: read-only")
        if problems:
            raise CameraError(f"genicam camera {s.address}: camera.features refused: " + "; ".join(problems))

        available = list(cam.dup_available_pixel_formats_as_strings() or [])
        if s.pixel_format not in available:
            raise CameraError(f"genicam camera {s.address}: pixel_format {s.pixel_format} is not offered by the "
                              f"camera (it offers: {', '.join(available)})")
        cam.set_pixel_format_from_string(s.pixel_format)
        if s.roi is not None:
            cam.set_region(*s.roi)
        if s.exposure_us is not None:
            if not cam.is_exposure_time_available():
                raise CameraError(f"genicam camera {s.address}: exposure_us is set but the camera has no "
                                  "ExposureTime / ExposureTimeAbs")
            if cam.is_exposure_auto_available():
                cam.set_exposure_time_auto(Ar.Auto.OFF)
            cam.set_exposure_time(float(s.exposure_us))  # ExposureTime or ExposureTimeAbs, as the camera has
        if s.gain is not None:
            if not cam.is_gain_available():
                raise CameraError(f"genicam camera {s.address}: gain is set but the camera has no Gain")
            if cam.is_gain_auto_available():
                cam.set_gain_auto(Ar.Auto.OFF)
            cam.set_gain(float(s.gain))
        if cam.is_gv_device():
            if s.packet_size is not None:
                cam.gv_set_packet_size(s.packet_size)
            if s.packet_delay is not None:
                cam.gv_set_packet_delay(s.packet_delay)  # ns, written to GevSCPD in camera ticks
        elif s.packet_size is not None or s.packet_delay is not None:
            raise CameraError(f"genicam camera {s.address}: packet_size / packet_delay are GigE Vision settings "
                              "and this is not a GigE Vision camera")
        for name, value in s.features.items():
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            try:
                dev.get_feature(name).set_value_from_string(text)
            except Exception as e:  # noqa: BLE001 - GLib.Error, named
                raise CameraError(f"genicam camera {s.address}: camera.features.{name} = {value!r} refused: "
                                  f"{getattr(e, 'message', e)}") from None
        cam.set_acquisition_mode(Ar.AcquisitionMode.CONTINUOUS)
        trig = s.trigger
        if trig == "free-run":
            if cam.is_feature_available("TriggerMode"):
                cam.clear_triggers()
        else:
            source = "Software" if trig == "software" else s.trigger_line
            sources = list(cam.dup_available_trigger_sources() or [])
            if source not in sources:
                raise CameraError(f"genicam camera {s.address}: trigger = {trig!r} needs TriggerSource {source}, "
                                  f"which the camera does not offer (it offers: {', '.join(sources) or 'none'})")
            cam.set_trigger(source)  # FrameStart selector, TriggerMode On, TriggerSource, RisingEdge
            if trig == "hardware" and s.trigger_activation != "RisingEdge":
                cam.set_string("TriggerActivation", s.trigger_activation)

    def _on_control_lost(self, *_: Any) -> None:
        self._lost = True  # called from Aravis' heartbeat thread: only a flag

    # --- grab -----------------------------------------------------------------------------

    def grab(self) -> tuple[np.ndarray, str | None, dict[str, Any]] | None:
        s, stream, cam = self.settings, self._stream, self._cam
        if stream is None or cam is None:
            raise CameraError("genicam camera: grab() before open()")
        if self._lost:
            raise CameraError(f"genicam camera {s.address}: control lost (the camera stopped answering)")
        from gi.repository import GLib

        try:
            if s.trigger == "hardware":
                # A failed buffer (counted) is no pulse's frame: wait out the idle time for one.
                idle_until = time.monotonic() + _IDLE_S
                buf = None
                while buf is None and time.monotonic() < idle_until:
                    buf = self._pop_ok(idle_until - time.monotonic())
                if buf is None:
                    self._probe()
                    return None
            elif s.trigger == "software":
                self._drain()
                deadline = time.monotonic() + s.timeout_ms / 1000
                buf = None
                while buf is None and time.monotonic() < deadline:  # a failed buffer: trigger again
                    cam.software_trigger()
                    buf = self._pop_ok(deadline - time.monotonic())
                if buf is None:
                    raise CameraError(f"genicam camera {s.address}: no frame within timeout_ms = {s.timeout_ms} "
                                      "after a software trigger")
            else:
                limit = s.stall_timeout_ms / 1000
                deadline = time.monotonic() + limit
                buf = None
                while buf is None and time.monotonic() < deadline:
                    buf = self._pop_ok(deadline - time.monotonic())
                if buf is None:
                    raise CameraError(f"genicam camera {s.address}: no complete frame for stall_timeout_ms = "
                                      f"{s.stall_timeout_ms} (free-run)")
        except GLib.Error as e:
            raise CameraError(f"genicam camera {s.address}: {e.message}") from None
        try:
            return self._frame(buf)
        finally:
            stream.push_buffer(buf)

    def _pop_ok(self, timeout_s: float) -> Any:
        """The next buffer if it is complete; a failed one is counted and given back (None)."""
        buf = self._stream.timeout_pop_buffer(max(1000, int(timeout_s * 1_000_000)))
        if buf is None:
            return None
        status = buf.get_status()
        if status != self._ar.BufferStatus.SUCCESS:
            name = status.value_nick if hasattr(status, "value_nick") else str(status)
            self._failed[name] = self._failed.get(name, 0) + 1
            self._stream.push_buffer(buf)
            return None
        return buf

    def _drain(self) -> None:
        """Software trigger: give back frames nobody asked for, so the next one is ours."""
        while (buf := self._stream.try_pop_buffer()) is not None:
            self._stream.push_buffer(buf)

    def _probe(self) -> None:
        """Hardware trigger, idle: read one register every stall_timeout_ms, so that a camera
        that is gone fails here (GLib.Error) instead of looking idle forever."""
        now = time.monotonic()
        if now - self._last_probe < self.settings.stall_timeout_ms / 1000:
            return
        self._last_probe = now
        self._cam.get_device().get_integer_feature_value("PayloadSize")

    def _frame(self, buf: Any) -> tuple[np.ndarray, None, dict[str, Any]]:
        w, h = buf.get_image_width(), buf.get_image_height()
        fmt = self.settings.pixel_format
        data = np.frombuffer(buf.get_image_data(), np.uint8)
        channels = 3 if fmt in ("RGB8", "BGR8") else 1
        if data.size < w * h * channels:
            self._failed["size_mismatch"] = self._failed.get("size_mismatch", 0) + 1
            raise CameraError(f"genicam camera {self.settings.address}: buffer of {data.size} bytes for a "
                              f"{w}x{h} {fmt} image")
        img = data[: w * h * channels].reshape((h, w, channels) if channels == 3 else (h, w))
        image = to_bgr(img, fmt)  # always a new array: the buffer goes back to the stream
        frame_id = int(buf.get_frame_id())
        meta = {
            "camera_frame_id": frame_id,
            "camera_ts_ns": int(buf.get_timestamp()),
            "camera_host_ts_ns": int(buf.get_system_timestamp()),
            "pixel_format": fmt,
            "counts": self._take_counts(),
        }
        self._last_frame_id = frame_id
        return image, None, meta

    def _packet_stats(self) -> dict[str, int]:
        stream = self._stream
        out: dict[str, int] = {}
        if stream is None or not hasattr(stream, "get_info_uint64_by_name"):
            return out
        for kind, info in _PACKET_STATS.items():
            try:
                out[kind] = int(stream.get_info_uint64_by_name(info))
            except Exception:  # noqa: BLE001, S110 - not a GigE stream
                pass
        return out

    def _take_counts(self) -> dict[str, Any]:
        """Buffers failed (by status) and packet counters since the last frame."""
        now = self._packet_stats()
        packets = {k: v - self._packets_seen.get(k, 0) for k, v in now.items() if v > self._packets_seen.get(k, 0)}
        self._packets_seen = now
        failed, self._failed = self._failed, {}
        return {"buffers_failed": failed, "packets": packets}

    # --- close ----------------------------------------------------------------------------

    def close(self) -> None:
        """Always releases stream and camera, and returns within timeout_ms.

        Releasing talks to the camera (AcquisitionStop, the stream channel, the control
        privilege); to a camera that is gone each of those costs Aravis' own GVCP retries
        (~2.5-5 s, not settable from here). So the release runs on a helper thread: a
        healthy camera is released before close() returns (tens of ms); a dead one finishes
        in the background while the grab loop already backs off and reopens.
        """
        cam, stream = self._cam, self._stream
        self._cam = self._stream = None
        if cam is None and stream is None:
            return
        box = [cam, stream]
        del cam, stream
        thread = threading.Thread(target=_release, args=(box, not self._lost), name="genicam-release", daemon=True)
        with _releasing_lock:
            _releasing.add(thread)
        thread.start()
        thread.join(self.settings.timeout_ms / 1000)


_releasing: set[threading.Thread] = set()
_releasing_lock = threading.Lock()


def _release(box: list[Any], stop: bool) -> None:
    try:
        cam, stream = box
        if stop and cam is not None and stream is not None:
            try:
                cam.stop_acquisition()
            except Exception:  # noqa: BLE001, S110 - a camera that is gone cannot be stopped
                pass
        box[1] = stream = None  # the stream before the camera
        box[0] = cam = None
    finally:
        with _releasing_lock:
            _releasing.discard(threading.current_thread())


def wait_released(timeout: float = 15.0) -> bool:
    """Wait for background releases (close() of a camera that was gone) to finish; True if
    none is left. For tests and shutdown: Aravis objects must go before a fake camera does."""
    deadline = time.monotonic() + timeout
    while True:
        with _releasing_lock:
            pending = list(_releasing)
        if not pending:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        pending[0].join(left)
