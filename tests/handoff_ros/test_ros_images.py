"""Image messages made by the nodes (handoff_ros.images) and read back by the one decoder
(data.rosmsg), with numpy/OpenCV (no cv_bridge); camera_info."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sensor_msgs")

from data.rosmsg import ImageError, check_compressed, decode_compressed, decode_image  # noqa: E402
from handoff_ros.images import camera_info, fit, to_compressed_msg, to_image_msg  # noqa: E402


def from_compressed_msg(msg):
    return decode_compressed(msg.data, msg.format)


RGB = np.random.default_rng(0).integers(0, 255, (6, 10, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_color_round_trip_is_exact(encoding):
    msg = to_image_msg(RGB, encoding)
    assert (msg.encoding, msg.step, len(msg.data)) == (encoding, 30, 180)
    np.testing.assert_array_equal(decode_image(msg), RGB)


def test_mono_becomes_three_equal_channels():
    out = decode_image(to_image_msg(RGB, "mono8"))
    assert out.shape == (6, 10, 3) and np.all(out[..., 0] == out[..., 2])


def test_padded_rows_are_dropped():
    msg = to_image_msg(RGB)
    rows = np.frombuffer(msg.data, np.uint8).reshape(6, 30)
    msg.step = 32  # a driver that pads rows to a multiple of 4 bytes
    msg.data = np.concatenate([rows, np.full((6, 2), 7, np.uint8)], 1).tobytes()
    np.testing.assert_array_equal(decode_image(msg), RGB)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"encoding": "yuv422"}, "encoding"),
        ({"step": 29}, "step"),
        ({"step": 31}, "data has"),
        ({"height": 0}, "empty"),
    ],
)
def test_malformed_images_name_the_problem(change, message):
    msg = to_image_msg(RGB)
    for k, v in change.items():
        setattr(msg, k, v)
    with pytest.raises(ImageError, match=message):
        decode_image(msg)


def test_compressed_round_trip_and_garbage():
    out = from_compressed_msg(to_compressed_msg(RGB, "png"))
    np.testing.assert_array_equal(out, RGB)
    jpeg = to_compressed_msg(np.full((32, 32, 3), 128, np.uint8), "jpeg")
    assert "jpeg" in jpeg.format and np.abs(from_compressed_msg(jpeg).astype(int) - 128).max() < 4
    jpeg.data = b"not an image"
    with pytest.raises(ImageError, match="decode"):
        from_compressed_msg(jpeg)


def test_fit_and_camera_info():
    assert fit(RGB, 6, 10) is RGB and fit(RGB, 3, 5).shape == (3, 5, 3)
    info = camera_info(640, 480, frame_id="cam")
    assert info.k[0] == 640 and info.k[2] == 320 and info.header.frame_id == "cam"
    calib = {
        "camera_matrix": {"data": [500, 0, 320, 0, 500, 240, 0, 0, 1]},
        "distortion_coefficients": {"data": [0.1, 0, 0, 0, 0]},
        "rectification_matrix": {"data": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
        "projection_matrix": {"data": [500, 0, 320, 0, 0, 500, 240, 0, 0, 0, 1, 0]},
    }
    info = camera_info(640, 480, calib)
    assert info.k[0] == 500 and info.d[0] == 0.1
    with pytest.raises(ImageError, match="calibration"):
        camera_info(640, 480, {"camera_matrix": {"data": [1, 2]}})


def test_compressed_check_is_cheap_and_strict():
    check_compressed(to_compressed_msg(RGB, "jpeg").data)
    check_compressed(to_compressed_msg(RGB, "png").data)
    with pytest.raises(ImageError, match="neither"):
        check_compressed(b"\x00\x00garbage")
