"""A synthetic camera: brushed-metal surfaces, some with a defect, with ground-truth labels.

`render_surface` is the one image generator: the demo model is trained on it, the tests
measure accuracy on it and `SyntheticCamera` serves it to the daemon. It must be cheap
(well under 2 ms for 256x256) because in the daemon it runs beside the 10 ms PLC write
loop on a 2-core PC. So the expensive part, the brushed texture, is computed once per
frame size into a small bank, and each frame is a random crop/flip of a bank texture plus
cheap per-frame variation (brightness, contrast, illumination gradient, noise, tint).
Defects are drawn with OpenCV, which releases the GIL; per-frame numpy work is a handful
of whole-array operations, never Python loops over pixels.

The bank is built from a fixed seed, so `render_surface` is a deterministic function of
the state of the `rng` it is given.

`SyntheticCamera` can also change its lighting mid-run (`lighting_change_after_s`,
`lighting_gain`, `lighting_offset`): from then on every frame is `gain * pixel + offset`,
saturated to 0..255, and says so in its meta (`camera_lighting = "changed"`, journaled with
the decision), so that a test or a demo shows what drift looks like (docs/drift.md).
"""

from __future__ import annotations

import functools
import socket
import time
from typing import Any

import cv2
import numpy as np

from plcbridge.adapters.camera.base import CameraError, CameraSource
from plcbridge.config import SyntheticCameraSettings
from plcbridge.schedule import FixedRateSchedule

DEFECT_KINDS: tuple[str, ...] = ("scratch", "spot", "crack")
# Hardware trigger: how long grab() waits for a pulse before saying "idle" (None), so that
# the grab loop can see a stop and the camera counts as alive while no part comes.
_IDLE_S = 0.1

_BANK_SEED = 20240917
_BANK_TEXTURES = 8
_BANK_MAX_BYTES = 64 << 20  # caps the bank for very large frames (4096x4096)


class _Bank:
    """Precomputed zero-mean, unit-std brushed textures and a noise field, a bit larger
    than the frame so that a random crop gives a different surface every time."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pad_x, self.pad_y = max(8, width // 4), max(8, height // 4)
        bh, bw = height + self.pad_y, width + self.pad_x
        count = int(max(2, min(_BANK_TEXTURES, _BANK_MAX_BYTES // (bh * bw * 4 * 2))))
        rng = np.random.default_rng(_BANK_SEED)
        self.textures = [_brushed_texture(rng, bw, bh) for _ in range(count)]
        self.noise = rng.standard_normal((bh, bw), dtype=np.float32)
        # Normalised coordinates for the illumination gradient, broadcast per frame.
        self.xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
        self.ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]


def _brushed_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Pixel noise smeared along one direction (the brushing), plus a low-frequency
    sheen; normalised to zero mean and unit std so per-frame contrast is one multiply."""
    angle = float(rng.uniform(-12, 12) + (90 if rng.random() < 0.25 else 0))
    length = int(rng.integers(25, 61))
    kernel = np.zeros((length, length), np.float32)
    c = length // 2
    dx, dy = np.cos(np.radians(angle)) * c, np.sin(np.radians(angle)) * c
    cv2.line(kernel, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0, 1)
    kernel /= kernel.sum()
    fine: np.ndarray = cv2.filter2D(rng.standard_normal((height, width), dtype=np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT)
    fine /= fine.std() + 1e-6
    coarse: np.ndarray = cv2.resize(rng.standard_normal((max(2, height // 32), max(2, width // 32)), dtype=np.float32),
                                    (width, height), interpolation=cv2.INTER_CUBIC)
    coarse /= coarse.std() + 1e-6
    tex = fine + 0.5 * coarse
    tex -= tex.mean()
    tex /= tex.std() + 1e-6
    return tex


@functools.lru_cache(maxsize=4)
def _bank(width: int, height: int) -> _Bank:
    return _Bank(width, height)


def render_surface(
    rng: np.random.Generator, width: int, height: int, defect: bool, kind: str | None = None
) -> np.ndarray:
    """Render one HxWx3 uint8 BGR brushed-metal image, with one defect if `defect`.

    `kind` forces the defect kind (one of DEFECT_KINDS); by default it is drawn from rng.
    The first call for a given size builds that size's texture bank (tens of ms).
    """
    bank = _bank(width, height)
    tex = bank.textures[int(rng.integers(len(bank.textures)))]
    oy, ox = int(rng.integers(bank.pad_y + 1)), int(rng.integers(bank.pad_x + 1))
    tex = tex[oy : oy + height, ox : ox + width]
    if rng.random() < 0.5:
        tex = tex[:, ::-1]
    if rng.random() < 0.5:
        tex = tex[::-1, :]
    ny, nx = int(rng.integers(bank.pad_y + 1)), int(rng.integers(bank.pad_x + 1))
    noise = bank.noise[ny : ny + height, nx : nx + width]

    base, contrast, sigma = rng.uniform(85, 175), rng.uniform(5, 14), rng.uniform(1.5, 4.5)
    gx, gy = rng.uniform(-35, 35, size=2)
    img = tex * np.float32(contrast)
    img += noise * np.float32(sigma)
    img += bank.xs * np.float32(gx) + bank.ys * np.float32(gy) + np.float32(base)

    # A faint per-frame colour cast, so the three channels are not copies of each other
    # in every frame (real steel under real lights is never perfectly neutral). Drawn
    # before the defect so that a frame with and without a defect differ by the defect only.
    tint = np.diag(rng.uniform(0.97, 1.03, size=3)).astype(np.float32)

    if defect:
        _draw_defect(rng, img, kind or DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))], contrast)

    np.clip(img, 0, 255, out=img)
    grey = img.astype(np.uint8)
    return cv2.transform(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), tint)


def _draw_defect(rng: np.random.Generator, img: np.ndarray, kind: str, contrast: float) -> None:
    """Add one defect to the float image in place.

    Defects are drawn (anti-aliased) into a uint8 mask which is then added with a signed
    amplitude, so the defect keeps the texture underneath and its visibility scales with
    the surface's own contrast: visible, but not a flat black mark on a flat grey plate.
    """
    h, w = img.shape
    size = min(h, w)
    mask = np.zeros((h, w), np.uint8)
    sign = -1.0 if rng.random() < 0.65 else 1.0  # most scratches and cracks read dark
    cx, cy = rng.uniform(0.12, 0.88) * w, rng.uniform(0.12, 0.88) * h

    if kind == "scratch":
        # A thin, nearly straight stroke in any direction, with a slight bend.
        length = rng.uniform(0.2, 0.5) * size
        angle = rng.uniform(0, np.pi)
        bend = rng.uniform(-0.25, 0.25)
        pts = []
        for t in (-0.5, -0.17, 0.17, 0.5):
            a = angle + bend * t
            pts.append((cx + np.cos(a) * t * length, cy + np.sin(a) * t * length))
        thickness = 1 if rng.random() < 0.5 else 2
        cv2.polylines(mask, [_pts(pts)], False, 255, thickness, cv2.LINE_AA)
        amp = rng.uniform(2.5, 5.0) * contrast + 8
    elif kind == "spot":
        # An irregular blob (two or three overlapping ellipses) with soft edges.
        r = rng.uniform(0.025, 0.07) * size
        for _ in range(int(rng.integers(2, 4))):
            center = (int(cx + rng.normal(0, r * 0.4)), int(cy + rng.normal(0, r * 0.4)))
            axes = (max(1, int(r * rng.uniform(0.5, 1.0))), max(1, int(r * rng.uniform(0.5, 1.0))))
            cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
        k = 2 * int(max(1, r * 0.3)) + 1
        x0, y0 = int(max(0, cx - 3 * r)), int(max(0, cy - 3 * r))
        x1, y1 = int(min(w, cx + 3 * r + 1)), int(min(h, cy + 3 * r + 1))
        mask[y0:y1, x0:x1] = cv2.GaussianBlur(mask[y0:y1, x0:x1], (k, k), 0)
        amp = rng.uniform(1.5, 3.5) * contrast + 5
    elif kind == "crack":
        # A jagged random walk whose heading drifts, sometimes with a short branch.
        steps = int(rng.integers(6, 13))
        step = rng.uniform(0.025, 0.05) * size
        heading = rng.uniform(0, 2 * np.pi)
        turns = rng.normal(0, 0.45, size=steps)
        pts = [(cx, cy)]
        for turn in turns:
            heading += turn
            x, y = pts[-1]
            pts.append((x + np.cos(heading) * step, y + np.sin(heading) * step))
        cv2.polylines(mask, [_pts(pts)], False, 255, 1, cv2.LINE_AA)
        if rng.random() < 0.4:
            bx, by = pts[steps // 2]
            bh = heading + rng.choice((-1.0, 1.0)) * rng.uniform(0.6, 1.2)
            branch = [(bx, by), (bx + np.cos(bh) * step * 2, by + np.sin(bh) * step * 2)]
            cv2.polylines(mask, [_pts(branch)], False, 255, 1, cv2.LINE_AA)
        sign = -1.0
        amp = rng.uniform(2.5, 5.0) * contrast + 8
    else:
        raise ValueError(f"unknown defect kind {kind!r}; known: {', '.join(DEFECT_KINDS)}")

    img += mask.astype(np.float32) * np.float32(sign * amp / 255.0)


def _pts(points: list[tuple[float, float]]) -> np.ndarray:
    return np.round(np.asarray(points)).astype(np.int32).reshape(-1, 1, 2)


class SyntheticCamera(CameraSource):
    """Serves `render_surface` frames at `settings.fps`, each a defect with probability
    `settings.defect_fraction`, labelled "fail"/"pass"; reproducible from `settings.seed`.

    Pacing uses absolute deadlines (slot k is due at t0 + k/fps) so that rendering time
    does not add up into drift; a grab that is late skips the missed slots instead of
    returning a burst of frames, which is what a real camera that overran does too.
    """

    def __init__(self, settings: SyntheticCameraSettings) -> None:
        self.settings = settings
        self._pacer = FixedRateSchedule(1 / settings.fps)
        self._rng: np.random.Generator | None = None
        self._line: socket.socket | None = None
        self._opened_at = 0.0  # time.monotonic() of open(): the lighting change counts from it
        # Build the texture bank now: numpy's generators hold the GIL for tens of ms, and the
        # daemon constructs its first source before the write loop starts (see GrabLoop.start).
        _bank(settings.width, settings.height)

    def open(self) -> None:
        self._rng = np.random.default_rng(self.settings.seed)
        self._pacer = FixedRateSchedule(1 / self.settings.fps)
        self._opened_at = time.monotonic()
        if self.settings.trigger == "hardware":
            # The trigger input: one datagram per edge (simulators/camera_line.py).
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind(("127.0.0.1", self.settings.trigger_port))
            except OSError as e:
                sock.close()
                raise CameraError(f"synthetic camera: cannot listen for trigger pulses on 127.0.0.1:"
                                  f"{self.settings.trigger_port}: {e.strerror}") from None
            sock.settimeout(_IDLE_S)
            self._line = sock

    def grab(self) -> tuple[np.ndarray, str | None] | tuple[np.ndarray, str | None, dict[str, Any]] | None:
        rng = self._rng
        if rng is None:
            raise CameraError("synthetic camera: grab() before open()")
        if self._line is not None:  # hardware trigger: one frame per pulse, None while idle
            try:
                self._line.recv(64)
            except TimeoutError:
                return None
        defect = bool(rng.random() < self.settings.defect_fraction)
        image = render_surface(rng, self.settings.width, self.settings.height, defect)
        if self.settings.trigger == "free-run":  # triggered: this frame is wanted now
            self._pacer.wait()
        label = "fail" if defect else "pass"
        after = self.settings.lighting_change_after_s
        if after is not None and time.monotonic() - self._opened_at >= after:
            # gain * pixel + offset, rounded and saturated to uint8 (OpenCV, outside the GIL).
            s = self.settings
            image = cv2.addWeighted(image, s.lighting_gain, image, 0.0, s.lighting_offset)
            return image, label, {"camera_lighting": "changed"}
        return image, label

    def close(self) -> None:
        self._rng = None
        if self._line is not None:
            self._line.close()
            self._line = None
