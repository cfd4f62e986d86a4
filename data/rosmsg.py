"""ROS message fields -> store arrays, without ROS.

Live rclpy messages (handoff_ros nodes) and the pure-Python ``rosbags`` library's messages
(data/convert/rosbag*.py) have the same fields, so one function decodes both; rclpy is never
imported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# sensor_msgs/Image encodings decoded to RGB, and their bytes per pixel
IMAGE_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


class ImageError(ValueError):
    """A malformed or unsupported image message; the message says what is wrong."""


def decode_image(msg: Any) -> np.ndarray:
    """sensor_msgs/Image fields (encoding, height, width, step, data) -> (H, W, 3) uint8 RGB.

    Accepts the encodings in :data:`IMAGE_CHANNELS` (case-insensitive). Rows padded beyond
    width x channels (``step`` larger) are cropped. For rgb8 the result is a read-only view of
    the message's buffer (no copy at 30 fps x 0.9 MB per VGA frame; whoever stores it copies it
    once), otherwise a new array. Raises :class:`ImageError` for another encoding, an empty
    size, a ``step`` below width x channels, or ``data`` shorter than step x height.
    """
    enc = str(msg.encoding).lower()
    channels = IMAGE_CHANNELS.get(enc)
    if channels is None:
        raise ImageError(
            f"encoding {msg.encoding!r} is not supported; publish one of {sorted(IMAGE_CHANNELS)}"
        )
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageError(f"image size {w}x{h} is empty")
    row = w * channels
    if step < row:
        raise ImageError(f"step {step} is below width*channels = {row}")
    data = msg.data
    buf = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    buf = buf.view(np.uint8).reshape(-1)
    if buf.size < step * h:
        raise ImageError(
            f"a {w}x{h} {enc} image with step {step} needs step*height = {step * h} bytes "
            f"but data has {buf.size} bytes (damaged message)"
        )
    pixels = buf[: step * h].reshape(h, step)[:, :row].reshape(h, w, channels)  # (H, W, C)
    if enc == "rgb8":
        return pixels
    import cv2  # lazily: data imports OpenCV only where it decodes

    code = {
        "bgr8": cv2.COLOR_BGR2RGB,
        "rgba8": cv2.COLOR_RGBA2RGB,
        "bgra8": cv2.COLOR_BGRA2RGB,
        "mono8": cv2.COLOR_GRAY2RGB,
    }[enc]
    return cv2.cvtColor(np.ascontiguousarray(pixels), code)
