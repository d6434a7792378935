"""The NCHW preprocessing fast path is the per-pixel formula, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("color, layout", [("bgr", "nchw"), ("rgb", "nchw"), ("gray", "nchw"), ("rgb", "nhwc")])
def test_preprocessing_is_the_per_pixel_formula_bit_for_bit(color, layout):
    """The NCHW fast path (one plane per channel) computes exactly (x * scale - mean) / std
    as the straightforward HWC code does, in float32."""
    import cv2

    from plcbridge.inference.manifest import Preprocessing, TensorSpec
    from plcbridge.inference.preprocess import Preprocessor

    n = 1 if color == "gray" else 3
    pp = Preprocessing(resize=[40, 24], color=color, scale=1 / 255, mean=[0.485, 0.456, 0.406][:n],
                       std=[0.229, 0.224, 0.225][:n], layout=layout)
    frame = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    got = Preprocessor(pp, TensorSpec(name="x", shape=pp.tensor_shape(), dtype="float32"))(frame)
    small = cv2.resize(frame, (40, 24), interpolation=cv2.INTER_AREA)
    small = {"gray": lambda s: cv2.cvtColor(s, cv2.COLOR_BGR2GRAY)[:, :, None],
             "rgb": lambda s: cv2.cvtColor(s, cv2.COLOR_BGR2RGB), "bgr": lambda s: s}[color](small)
    std = np.asarray(pp.std, np.float32)
    x = small.astype(np.float32) * (np.float32(pp.scale) / std) + (-np.asarray(pp.mean, np.float32) / std)
    want = x.transpose(2, 0, 1)[None] if layout == "nchw" else x[None]
    assert got.shape == tuple(pp.tensor_shape()) and got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, want.astype(np.float32))
