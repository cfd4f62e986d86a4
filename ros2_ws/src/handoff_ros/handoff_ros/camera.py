"""camera node: a camera source -> image_raw, image_raw/compressed, camera_info.

``driver`` names the source in the ``camera_sources.CAMERA_SOURCES`` registry: ``opencv``
(the default: a device index, device path, stream URL or video file in ``source``) or
``sim`` (a MuJoCo render of a sim task's camera, ``source:=agentview`` or ``can/wrist``: the
simulated twin). A new source is one file, ``handoff_ros/camera_sources/<name>.py``.

Topics (relative, so a launch file namespaces each camera, e.g. ``/wrist/image_raw``):
``image_raw`` (sensor_msgs/Image), ``image_raw/compressed`` (CompressedImage), ``camera_info``,
all sensor-data QoS (best effort, depth 5: a late frame is worth less than the next one).
``header.stamp`` is the acquisition time (when the source returned the frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from data.errors import UserError
from handoff_ros.camera_sources import CAMERA_SOURCES
from handoff_ros.images import CHANNELS, ImageError, camera_info, to_compressed_msg, to_image_msg
from handoff_ros.rosutil import (
    ERROR,
    OK,
    Diagnostics,
    declare_params,
    now_sec,
    param,
    run_node,
)

POLLS_PER_FRAME = 4  # source polls per frame period (see CameraNode.__init__)


@dataclass
class CameraParams:
    driver: str = param(
        "opencv", f"camera source: {', '.join(CAMERA_SOURCES.names())} (handoff_ros.camera_sources)"
    )
    source: str = param(
        "0", "opencv: device index (0), device path (/dev/video2) or a video file; sim: camera"
    )
    width: int = param(640, "published width, px (frames are resized if the device differs)")
    height: int = param(480, "published height, px")
    fps: float = param(30.0, "publish rate, Hz (also the pacing of a video file)")
    frame_id: str = param("camera_optical_frame", "header.frame_id of every message")
    calibration_file: str = param(
        "", "camera_calibration YAML for camera_info; empty: uncalibrated pinhole guess"
    )
    encoding: str = param("rgb8", "image_raw encoding: rgb8, bgr8 or mono8")
    publish_compressed: bool = param(True, "also publish image_raw/compressed (JPEG)")
    jpeg_quality: int = param(90, "JPEG quality of image_raw/compressed, 1-100")
    reconnect_s: float = param(1.0, "seconds between attempts to reopen a lost camera")
    loop: bool = param(True, "restart a video file at its end")

    def __post_init__(self) -> None:
        try:
            CAMERA_SOURCES.get(self.driver)
        except UserError as e:  # the registry's message lists the sources
            raise ValueError(str(e)) from None
        if self.width <= 0 or self.height <= 0:
            raise ValueError("width and height must be positive pixels")
        if self.fps <= 0:
            raise ValueError("fps must be positive")
        if self.encoding not in CHANNELS:
            raise ValueError(f"encoding {self.encoding!r}: use one of {sorted(CHANNELS)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in 1..100")
        if self.reconnect_s <= 0:
            raise ValueError("reconnect_s must be positive")


class CameraNode(Node):
    def __init__(self) -> None:
        super().__init__("camera")
        p = self.p = declare_params(self, CameraParams)
        calibration = None
        if p.calibration_file:
            path = Path(p.calibration_file)
            if not path.is_file():
                raise UserError(f"calibration_file {path}: no such file")
            calibration = yaml.safe_load(path.read_text())
        try:
            self.info = camera_info(p.width, p.height, calibration, p.frame_id)
        except ImageError as e:
            raise UserError(f"calibration_file {p.calibration_file}: {e}") from None
        qos = qos_profile_sensor_data
        self.pub_raw = self.create_publisher(Image, "image_raw", qos)
        self.pub_jpeg = self.create_publisher(CompressedImage, "image_raw/compressed", qos)
        self.pub_info = self.create_publisher(CameraInfo, "camera_info", qos)
        try:
            source = CAMERA_SOURCES.get(p.driver).from_params(p, lambda: now_sec(self))
        except ValueError as e:
            raise UserError(f"camera {p.driver} source {p.source!r}: {e}") from None
        self.capture = source.connect()
        self.published = 0
        # Polled at 4x the frame rate: a timer at the camera's own rate beats against it (two
        # clocks of one period), so whenever the phases meet, every other frame is read one
        # tick late and dropped (measured: 10 of 20 fps in one run of three). read() is a lock
        # and a compare; each frame is published at most once, within 1/(4 fps) of arriving.
        self.timer = self.create_timer(1.0 / (POLLS_PER_FRAME * p.fps), self.tick)
        self.diag = Diagnostics(self, self.report)

    def tick(self) -> None:
        frame = self.capture.read()
        if frame is None:
            return  # nothing new: never republish an old frame under a new stamp
        t, rgb = frame
        stamp = Time(nanoseconds=int(t * 1e9)).to_msg()
        msg = to_image_msg(rgb, self.p.encoding)
        msg.header.stamp, msg.header.frame_id = stamp, self.p.frame_id
        self.pub_raw.publish(msg)
        if self.p.publish_compressed:
            jpeg = to_compressed_msg(rgb, "jpeg", self.p.jpeg_quality)
            jpeg.header = msg.header
            self.pub_jpeg.publish(jpeg)
        self.info.header = msg.header
        self.pub_info.publish(self.info)
        self.published += 1

    def report(self) -> tuple[int, str, dict]:
        c = self.capture
        values = {
            "hardware_id": self.p.source,
            "published": self.published,
            "frames_read": c.frames_read,
            "reconnects": c.reconnects,
        }
        if not c.streaming:
            return ERROR, c.error or "camera not connected", values
        return OK, "streaming", values

    def close(self) -> None:
        self.capture.close()


def main(args: list[str] | None = None) -> None:
    run_node(CameraNode, args, params=CameraParams, doc=__doc__)


if __name__ == "__main__":
    main()
