"""Letterbox geometry (Ultralytics' LetterBox, auto=False, scaleup=True, centred) and boxes
mapped back to the frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from plcbridge.inference.letterbox import Letterbox, letterbox


@pytest.mark.parametrize("frame_shape, input_size, scale, content, pad", [
    # 640x480 into 640x640: no scaling, 160 rows of padding split 80/80.
    ((480, 640, 3), (640, 640), 1.0, (640, 480), (0, 80, 0, 80)),
    # 300x100 into 64x64: r = 64/300, content 64x21 (21.33 rounds down), 43 rows: 21 top, 22 bottom.
    ((100, 300), (64, 64), 64 / 300, (64, 21), (0, 21, 0, 22)),
    # Upscaling is allowed: 32x16 into 64x64 doubles, 32 rows of padding.
    ((16, 32, 3), (64, 64), 2.0, (64, 32), (0, 16, 0, 16)),
    # A tall frame into a wide input: padding left/right; 75x100 into 320x256: r = 2.56, content 192x256.
    ((100, 75, 3), (320, 256), 2.56, (192, 256), (64, 0, 64, 0)),
    # 4096x3000 into 640x640: r = 0.15625, content height round(468.75) = 469, 171 rows: 85 top, 86 bottom.
    ((3000, 4096, 3), (640, 640), 0.15625, (640, 469), (0, 85, 0, 86)),
])
def test_geometry_is_ultralytics(frame_shape, input_size, scale, content, pad):
    lb = Letterbox.fit(frame_shape, input_size)
    assert lb.frame_size == (frame_shape[1], frame_shape[0])
    assert lb.input_size == input_size
    assert lb.scale == pytest.approx(scale)
    assert lb.content_size == content
    assert lb.pad == pad
    left, top, right, bottom = lb.pad
    assert left + content[0] + right == input_size[0] and top + content[1] + bottom == input_size[1]


def test_odd_padding_puts_the_extra_pixel_right_and_bottom_for_every_size():
    for w in range(1, 90, 7):
        for h in range(1, 90, 5):
            lb = Letterbox.fit((h, w), (64, 48))
            left, top, right, bottom = lb.pad
            assert lb.content_size[0] + left + right == 64 and lb.content_size[1] + top + bottom == 48
            assert right - left in (0, 1) and bottom - top in (0, 1)
            assert min(lb.pad) >= 0 and min(left + right, top + bottom) == 0  # the limiting side fills the input


def test_apply_resizes_and_pads_with_the_pad_value():
    frame = np.random.default_rng(1).integers(0, 256, (100, 300, 3), dtype=np.uint8)
    lb = Letterbox.fit(frame.shape, (64, 64))
    out = lb.apply(frame)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (out[:21] == 114).all() and (out[42:] == 114).all()
    assert np.array_equal(out[21:42], cv2.resize(frame, (64, 21), interpolation=cv2.INTER_LINEAR))
    assert (lb.apply(frame, pad_value=0)[:21] == 0).all()
    image, geometry = letterbox(frame, (64, 64), pad_value=7)
    assert geometry == lb and (image[:21] == 7).all() and np.array_equal(image[21:42], out[21:42])


def test_apply_returns_a_frame_of_the_input_size_as_is():
    frame = np.zeros((64, 64, 3), np.uint8)
    assert Letterbox.fit(frame.shape, (64, 64)).apply(frame) is frame


def test_apply_refuses_a_frame_of_another_size():
    lb = Letterbox.fit((100, 300), (64, 64))
    with pytest.raises(ValueError, match="300x100"):
        lb.apply(np.zeros((100, 299, 3), np.uint8))


def test_boxes_both_ways_by_hand():
    lb = Letterbox.fit((480, 640), (640, 640))  # pad top 80, scale 1
    frame_box = np.array([[10.0, 20.0, 110.0, 220.0]])
    assert lb.boxes_to_input(frame_box).tolist() == [[10.0, 100.0, 110.0, 300.0]]
    assert lb.boxes_to_frame(np.array([[10.0, 100.0, 110.0, 300.0]])).tolist() == [[10.0, 20.0, 110.0, 220.0]]
    half = Letterbox.fit((960, 1280), (640, 640))  # scale 0.5, pad top 80
    assert half.boxes_to_frame(np.array([[100.0, 180.0, 140.0, 200.0]])).tolist() == [[200.0, 200.0, 280.0, 240.0]]


def test_boxes_to_frame_clips_to_the_frame():
    lb = Letterbox.fit((480, 640), (640, 640))
    out = lb.boxes_to_frame(np.array([[-5.0, 40.0, 700.0, 100.0], [0.0, 0.0, 50.0, 70.0], [0.0, 570.0, 10.0, 640.0]]))
    # x clipped to [0, 640]; y 40 - 80 < 0 clipped to 0; a box wholly in the top padding collapses onto y = 0.
    assert out.tolist() == [[0.0, 0.0, 640.0, 20.0], [0.0, 0.0, 50.0, 0.0], [0.0, 480.0, 10.0, 480.0]]


def test_boxes_to_frame_is_vectorised_over_n_boxes():
    lb = Letterbox.fit((3000, 4096), (640, 640))
    boxes = np.random.default_rng(2).uniform(0, 4000, (1000, 4))
    boxes[:, 2:] = boxes[:, :2] + 50
    back = lb.boxes_to_frame(lb.boxes_to_input(boxes))
    np.testing.assert_allclose(back, np.clip(boxes, 0, [4096, 3000, 4096, 3000]), atol=1e-9)


@pytest.mark.parametrize("frame_hw, rect, input_size", [
    ((700, 1000), (300, 200, 420, 260), (640, 640)),  # downscale 0.64, padding top/bottom
    ((900, 500), (37, 610, 171, 777), (640, 640)),  # downscale 0.71, padding left/right
    ((120, 200), (50, 30, 90, 70), (640, 640)),  # upscale 3.2
    ((1080, 1920), (333, 444, 777, 888), (640, 640)),  # 1/3, exact
    ((480, 640), (13, 27, 301, 199), (320, 320)),  # 1/2
    ((3000, 4096), (1000, 2500, 1400, 2990), (640, 640)),  # 12 MP, r = 0.156: one input pixel is 6.4 frame pixels
])
def test_round_trip_a_drawn_box_found_in_the_letterboxed_image_maps_back(frame_hw, rect, input_size):
    """A white box drawn on the frame, letterboxed, found again in the letterboxed image (the
    pixels above half intensity), mapped back: the original within 1 px, or within half an
    input pixel where that is more (a 12 MP frame into 640 px: an edge is only known to
    +-0.5 input px = +-3.2 frame px)."""
    h, w = frame_hw
    x1, y1, x2, y2 = rect  # x2, y2 exclusive
    frame = np.zeros((h, w, 3), np.uint8)
    frame[y1:y2, x1:x2] = 255
    lb = Letterbox.fit(frame.shape, input_size)
    boxed = lb.apply(frame, pad_value=0)
    ys, xs = np.nonzero(boxed[:, :, 0] > 127)
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float64)
    back = lb.boxes_to_frame(found)[0]
    tolerance = max(1.0, 0.5 / lb.scale)
    assert np.abs(back - np.array(rect, np.float64)).max() <= tolerance, (back, rect)
