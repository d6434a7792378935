"""Frame -> model tensor, exactly as the manifest says. The only implementation: the demo
model's training script feeds its net through this very code, so training and run time
cannot drift apart.

Order: validate (type, shape, dtype, and size against the manifest's frame limits: a look
at the array's header, before any pixel is touched), resize (INTER_AREA, on the full BGR
frame; or, with `preprocessing.letterbox`, Ultralytics' letterbox: plcbridge.inference.letterbox),
colour-convert (on the small image, cheaper), then one fused multiply-add per channel for
scale/mean/std, then layout. `prepare()` also returns the geometry that maps the model's
boxes and maps back to the frame.
No encode/decode round trip, no per-pixel Python.
"""

from __future__ import annotations

import cv2
import numpy as np

from plcbridge.inference.errors import BadFrame
from plcbridge.inference.letterbox import Letterbox
from plcbridge.inference.manifest import FrameLimits, Preprocessing, TensorSpec

# OpenCV's own thread pool would compete with the 10 ms PLC write loop for the line PC's
# two cores, and gains nothing on a 256x256 resize. This is process-wide, and this module
# is imported by every process that judges frames.
cv2.setNumThreads(1)

_NUMPY_DTYPES: dict[str, type[np.generic]] = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}


def check_frame(image: object, limits: FrameLimits | None = None) -> np.ndarray:
    """Return `image` if it is a non-empty HxWx3 uint8 (BGR) array, within `limits` when
    given (the manifest's `frame` section), else raise BadFrame saying what was expected
    and what came. Only the array's header is read: nothing is copied or resized."""
    expected = "expected a non-empty HxWx3 uint8 BGR numpy array"
    if not isinstance(image, np.ndarray):
        raise BadFrame(f"{expected}, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise BadFrame(f"{expected}, got shape {image.shape}")
    if image.size == 0:
        raise BadFrame(f"{expected}, got an empty array of shape {image.shape}")
    if image.dtype != np.uint8:
        raise BadFrame(f"{expected}, got dtype {image.dtype}")
    if limits is not None:
        h, w = image.shape[:2]
        problem = limits.problem(w, h)
        if problem is not None:
            raise BadFrame(problem)
    return image


class Preprocessor:
    """Precomputes the per-channel affine (x * scale - mean) / std = x * a + b once.

    `limits`: the frame sizes accepted (`Manifest.frame_limits`); default: the manifest
    defaults for `pp`, as for a manifest without a `frame` section."""

    def __init__(self, pp: Preprocessing, input_spec: TensorSpec, limits: FrameLimits | None = None) -> None:
        self.pp = pp
        self.limits = limits if limits is not None else FrameLimits.for_manifest(pp)
        self.size = (pp.resize[0], pp.resize[1])  # cv2 wants (w, h)
        std = np.asarray(pp.std, np.float32)
        self._a = (np.float32(pp.scale) / std).astype(np.float32)
        self._b = (-np.asarray(pp.mean, np.float32) / std).astype(np.float32)
        self._dtype = _NUMPY_DTYPES[input_spec.dtype]

    def __call__(self, image: object) -> np.ndarray:
        return self.prepare(image)[0]

    def prepare(self, image: object) -> tuple[np.ndarray, Letterbox]:
        """The model's tensor for `image`, and where the frame went in it (a plain resize is a
        letterbox without padding, so the decoders map back one way for both)."""
        frame = check_frame(image, self.limits)
        h, w = frame.shape[:2]
        if self.pp.letterbox is not None:
            geometry = Letterbox.fit(frame.shape, self.size)
            return self._tensor(geometry.apply(frame, self.pp.letterbox.pad_value)), geometry
        interp = cv2.INTER_AREA if (w >= self.size[0] and h >= self.size[1]) else cv2.INTER_LINEAR
        geometry = Letterbox((w, h), self.size, min(self.size[0] / w, self.size[1] / h), self.size, (0, 0, 0, 0))
        return self._tensor(cv2.resize(frame, self.size, interpolation=interp)), geometry

    def _tensor(self, small: np.ndarray) -> np.ndarray:
        if self.pp.color == "gray":
            small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)[:, :, None]
        elif self.pp.color == "rgb":
            small = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        x: np.ndarray
        if self._dtype is np.uint8:
            x = small  # the manifest guarantees identity scale/mean/std for uint8 inputs
        elif self.pp.layout == "nchw":
            return self._planes(small)
        else:
            x = small.astype(np.float32)
            x *= self._a
            x += self._b
            x = x.astype(self._dtype, copy=False)
        if self.pp.layout == "nchw":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None])

    def _planes(self, small: np.ndarray) -> np.ndarray:
        """NCHW float, one channel plane at a time: the same float32 arithmetic as the HWC
        path (bit for bit), but numpy's broadcast over a trailing axis of 3 costs ~0.9 ms on
        a 224x224 RGB frame on a 2-core line PC, and this ~0.1 ms (`plcbridge bench` profile)."""
        h, w, channels = small.shape
        out = np.empty((1, channels, h, w), np.float32)
        for c in range(channels):
            plane = out[0, c]
            np.multiply(small[:, :, c], self._a[c], out=plane, dtype=np.float32, casting="unsafe")
            plane += self._b[c]
        return out.astype(self._dtype, copy=False)
