"""numpy/OpenCV -> sensor_msgs/Image, CompressedImage and CameraInfo (cv_bridge is not
installable here).

Frames inside handoff are uint8 HWC RGB (what the store and the policies hold). We publish
``rgb8``, ``bgr8`` or ``mono8``. Decoding is data/rosmsg.py's alone (``decode_image``,
``decode_compressed``, ``check_compressed``; shared with the rosbag converter, so a live node
and a bag accept the same encodings and check ``step`` the same way). Assigning ``bytes`` to
a message's ``data`` is fast in rclpy; assigning an ndarray goes element by element (~500x
slower).
"""

from __future__ import annotations

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from data.rosmsg import ImageError

# encodings to_image_msg publishes (decoding accepts data.rosmsg.IMAGE_CHANNELS, a superset)
CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1}


def to_image_msg(rgb: np.ndarray, encoding: str = "rgb8") -> Image:
    """(H, W, 3) uint8 RGB -> Image in ``encoding`` (header left to the caller)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"expected uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if encoding == "bgr8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif encoding == "mono8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif encoding == "rgb8":
        pixels = rgb
    else:
        raise ImageError(f"encoding {encoding!r} is not supported; use one of {sorted(CHANNELS)}")
    msg = Image()
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * CHANNELS[encoding]
    msg.data = np.ascontiguousarray(pixels).tobytes()
    return msg


def to_compressed_msg(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> CompressedImage:
    """(H, W, 3) uint8 RGB -> CompressedImage (image_transport's ``rgb8; jpeg compressed bgr8``
    convention for ``format``)."""
    ext, params = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality]) if fmt == "jpeg" else (".png", [])
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ImageError(f"OpenCV could not encode a {rgb.shape} frame as {fmt}")
    msg = CompressedImage()
    msg.format = f"rgb8; {fmt} compressed bgr8"
    msg.data = buf.tobytes()
    return msg


def fit(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to (height, width) when needed (INTER_AREA: the right filter for shrinking)."""
    if rgb.shape[:2] == (height, width):
        return rgb
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def camera_info(
    width: int, height: int, calibration: dict | None = None, frame_id: str = ""
) -> CameraInfo:
    """CameraInfo from a camera_calibration-style dict (``camera_matrix``, ``distortion_
    coefficients``, ``rectification_matrix``, ``projection_matrix`` each with ``data``), or an
    uncalibrated pinhole guess (focal length = width, a 53 deg horizontal field of view)."""
    info = CameraInfo()
    info.header.frame_id = frame_id
    info.width, info.height = int(width), int(height)
    if calibration:
        try:
            info.k = [float(v) for v in calibration["camera_matrix"]["data"]]
            info.d = [float(v) for v in calibration["distortion_coefficients"]["data"]]
            info.r = [float(v) for v in calibration["rectification_matrix"]["data"]]
            info.p = [float(v) for v in calibration["projection_matrix"]["data"]]
            info.distortion_model = str(calibration.get("distortion_model", "plumb_bob"))
        except (KeyError, TypeError, AssertionError) as e:
            raise ImageError(f"calibration file lacks or mis-sizes {e}") from None
        return info
    f, cx, cy = float(width), width / 2.0, height / 2.0
    info.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    return info
