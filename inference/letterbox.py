"""Ultralytics-style letterbox: the frame scaled to fit the model input with its aspect ratio
kept, centred, the rest filled with a constant grey; and the way back for boxes.

YOLO models are trained on letterboxed images, so a plain stretch (what `preprocess.py` does
for classifiers) would distort every defect the model was taught to see; and their boxes
come out in letterboxed input pixels, which mean nothing to the PLC or the journal until
mapped back to the camera frame. The geometry is Ultralytics' `LetterBox(auto=False,
scaleup=True, center=True)`, to the pixel:

- scale r = min(W / w, H / h) (upscaling allowed);
- content size = (round(w * r), round(h * r)), resized with cv2.INTER_LINEAR;
- padding dw = (W - content w) / 2, dh likewise; left = round(dw - 0.1), right =
  round(dw + 0.1), top/bottom likewise (Python's round: an odd padding puts the extra
  pixel right/bottom, exactly as Ultralytics does).

The inverse (`boxes_to_frame`) subtracts the padding actually applied and divides by the
content's own per-axis scale (content w / w, content h / h), not by r as Ultralytics'
`scale_boxes` does: r differs from the scale cv2.resize really used by up to half an input
pixel over the content, which is up to 0.5 / r frame pixels (3 px for a 4096-wide frame
into 640); the per-axis scale is what the pixels went through.

Sizes: `frame_shape` is a numpy shape, (h, w) or (h, w, c), so `frame.shape` can be passed
as is; `input_size` is (W, H), width first like the manifest's `preprocessing.resize`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DEFAULT_PAD_VALUE = 114  # Ultralytics' training letterbox grey


@dataclass(frozen=True)
class Letterbox:
    """The letterbox geometry of one frame size into one model input size (see the module docstring)."""

    frame_size: tuple[int, int]  # (w, h) of the camera frame
    input_size: tuple[int, int]  # (W, H) of the model input
    scale: float  # r = min(W / w, H / h)
    content_size: tuple[int, int]  # (w, h) of the resized frame inside the input
    pad: tuple[int, int, int, int]  # (left, top, right, bottom) in input pixels

    @classmethod
    def fit(cls, frame_shape: tuple[int, ...], input_size: tuple[int, int] | list[int]) -> "Letterbox":
        """The geometry for a frame of numpy shape `frame_shape` ((h, w) or (h, w, c)) into a
        model input of `input_size` (W, H)."""
        h, w = int(frame_shape[0]), int(frame_shape[1])
        in_w, in_h = int(input_size[0]), int(input_size[1])
        if min(h, w, in_w, in_h) < 1:
            raise ValueError(f"letterbox needs positive sizes, got frame {w}x{h} into input {in_w}x{in_h}")
        r = min(in_w / w, in_h / h)
        new_w, new_h = int(round(w * r)), int(round(h * r))
        dw, dh = (in_w - new_w) / 2, (in_h - new_h) / 2
        left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
        top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
        return cls((w, h), (in_w, in_h), r, (new_w, new_h), (left, top, right, bottom))

    @property
    def content_box(self) -> tuple[int, int, int, int]:
        """Where the frame lies in the input: (x1, y1, x2, y2) in input pixels, x2/y2 exclusive."""
        left, top = self.pad[0], self.pad[1]
        return left, top, left + self.content_size[0], top + self.content_size[1]

    @property
    def content_scale(self) -> tuple[float, float]:
        """Input pixels per frame pixel along x and y: what cv2.resize really applied."""
        return self.content_size[0] / self.frame_size[0], self.content_size[1] / self.frame_size[1]

    def apply(self, frame: np.ndarray, pad_value: int = DEFAULT_PAD_VALUE) -> np.ndarray:
        """The letterboxed image of an HxWxC uint8 frame of this geometry's frame size (BGR
        stays BGR: colour order is the caller's business). `frame` itself when it already has
        the input's size: nothing to resize or pad, so nothing is copied."""
        h, w = frame.shape[:2]
        if (w, h) != self.frame_size:
            raise ValueError(f"frame is {w}x{h}, this letterbox is for {self.frame_size[0]}x{self.frame_size[1]}")
        if (w, h) != self.content_size:
            frame = cv2.resize(frame, self.content_size, interpolation=cv2.INTER_LINEAR)
        left, top, right, bottom = self.pad
        if not any(self.pad):
            return frame
        channels = frame.shape[2] if frame.ndim == 3 else 1
        return cv2.copyMakeBorder(frame, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * channels)

    def boxes_to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) x1, y1, x2, y2 in input pixels -> the same boxes in frame pixels (float64),
        clipped to the frame. A box wholly in the padding collapses to a zero-area box on the edge."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        sx, sy = self.content_scale
        offset = np.array([self.pad[0], self.pad[1], self.pad[0], self.pad[1]], np.float64)
        out = (b - offset) / np.array([sx, sy, sx, sy])
        w, h = self.frame_size
        np.clip(out, 0.0, np.array([w, h, w, h], np.float64), out=out)
        return out

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) x1, y1, x2, y2 in frame pixels -> input pixels (float64), the forward mapping."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        sx, sy = self.content_scale
        offset = np.array([self.pad[0], self.pad[1], self.pad[0], self.pad[1]], np.float64)
        return b * np.array([sx, sy, sx, sy]) + offset


def letterbox(frame: np.ndarray, input_size: tuple[int, int] | list[int],
              pad_value: int = DEFAULT_PAD_VALUE) -> tuple[np.ndarray, Letterbox]:
    """The letterboxed image of `frame` for a model input of `input_size` (W, H), and the
    geometry that maps the model's boxes back (`Letterbox.boxes_to_frame`)."""
    lb = Letterbox.fit(frame.shape, input_size)
    return lb.apply(frame, pad_value), lb
