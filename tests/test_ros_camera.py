"""camera node over real DDS: a video file stands in for the device."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

from handoff_ros.images import from_compressed_msg, from_image_msg  # noqa: E402
from handoff_ros.rosutil import level_value  # noqa: E402
from handoff_ros.testing import NodeProcess, Probe, fresh_domain_id, nodes  # noqa: E402

pytestmark = pytest.mark.ros


def write_clip(path, n=30, size=(160, 120)) -> None:
    w, h = size
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (w, h))
    for i in range(n):
        frame = np.zeros((h, w, 3), np.uint8)
        frame[:, :, 2] = 200  # BGR: a red clip, so an RGB/BGR swap shows
        cv2.putText(frame, str(i), (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        out.write(frame)
    out.release()


def test_camera_from_video_file(tmp_path):
    clip = tmp_path / "clip.avi"
    write_clip(clip)
    dom = fresh_domain_id()
    params = {"source": str(clip), "width": 128, "height": 96, "fps": 20.0, "frame_id": "cam0"}
    cam = NodeProcess("camera", dom, params, tmp_path, remap={"__ns": "/front"})
    with nodes(cam), Probe(dom) as probe:
        probe.subscribe(Image, "/front/image_raw", qos_profile_sensor_data)
        probe.subscribe(CompressedImage, "/front/image_raw/compressed", qos_profile_sensor_data)
        probe.subscribe(CameraInfo, "/front/camera_info", qos_profile_sensor_data)
        probe.subscribe(DiagnosticArray, "/diagnostics")
        ok = probe.spin_until(lambda: len(probe.msgs["/front/image_raw"]) >= 20, 30)
        assert ok, cam.log()
        probe.spin_until(lambda: len(probe.msgs["/diagnostics"]) >= 1, 5)
        raw = probe.msgs["/front/image_raw"]
        latency = []
        for recv, msg in raw:
            assert (msg.encoding, msg.width, msg.height, msg.step) == ("rgb8", 128, 96, 128 * 3)
            assert msg.header.frame_id == "cam0"
            latency.append(recv - (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))
        # acquisition stamps: frames arrive a little after them (a burst of load on this
        # machine may hold one frame back, never by seconds)
        assert min(latency) >= 0 and np.median(latency) < 0.25 and max(latency) < 2.0, latency
        stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, m in raw]
        assert np.all(np.diff(stamps) > 0)
        period = np.median(np.diff(stamps))
        assert 0.03 < period < 0.08  # paced at 20 fps
        rgb = from_image_msg(raw[-1][1])
        assert rgb[5, 5, 0] > 150 and rgb[5, 5, 2] < 60  # red stays red
        jpeg = probe.msgs["/front/image_raw/compressed"]
        assert jpeg and "jpeg" in jpeg[-1][1].format
        assert from_compressed_msg(jpeg[-1][1]).shape == (96, 128, 3)
        info = probe.msgs["/front/camera_info"][-1][1]
        assert (info.width, info.height) == (128, 96) and info.k[0] > 0
        diag = [s for _, a in probe.msgs["/diagnostics"] for s in a.status]
        assert diag and level_value(diag[-1].level) == 0
        assert cam.alive()


def test_camera_missing_device_reports_and_keeps_running(tmp_path):
    dom = fresh_domain_id()
    cam = NodeProcess("camera", dom, {"source": "/dev/video97", "reconnect_s": 0.2}, tmp_path)
    with nodes(cam), Probe(dom) as probe:
        probe.subscribe(DiagnosticArray, "/diagnostics")
        assert probe.spin_until(lambda: len(probe.msgs["/diagnostics"]) >= 2, 30), cam.log()
        status = probe.msgs["/diagnostics"][-1][1].status[0]
        assert level_value(status.level) == 2 and "video97" in status.message
        time.sleep(0.5)
        assert cam.alive()


def test_camera_source_that_appears_later_is_picked_up(tmp_path):
    """The replug path: a source that is missing at start streams once it appears."""
    clip = tmp_path / "later.avi"
    dom = fresh_domain_id()
    params = {"source": str(clip), "width": 64, "height": 48, "fps": 20.0, "reconnect_s": 0.2}
    cam = NodeProcess("camera", dom, params, tmp_path)
    with nodes(cam), Probe(dom) as probe:
        probe.subscribe(DiagnosticArray, "/diagnostics")
        probe.subscribe(Image, "/image_raw", qos_profile_sensor_data)
        down = probe.spin_until(
            lambda: probe.diagnostic_values("/camera").get("frames_read") == "0", 30
        )
        assert down, cam.log()
        write_clip(clip)
        assert probe.spin_until(lambda: len(probe.msgs["/image_raw"]) >= 5, 30), cam.log()
        assert probe.spin_until(
            lambda: level_value(probe.msgs["/diagnostics"][-1][1].status[0].level) == 0, 5
        )
        assert from_image_msg(probe.msgs["/image_raw"][-1][1]).shape == (48, 64, 3)


def test_camera_bad_parameter_exits_2(tmp_path):
    dom = fresh_domain_id()
    cam = NodeProcess("camera", dom, {"encoding": "yuv422"}, tmp_path)
    cam.proc.wait(timeout=30)
    assert cam.proc.returncode == 2
    log = cam.log()
    assert "encoding" in log and "Traceback" not in log
    cam.stop()


def test_raw_vga_frames_cross_dds_whole(tmp_path):
    """640x480 rgb8 frames (900 KiB) arrive, every one: handoff's Fast DDS profile carries
    them in shared memory (without it they travel as ~15 UDP fragments each and a quarter or
    more are lost, tests/benchmarks/bench_ros.py)."""
    clip = tmp_path / "vga.avi"
    write_clip(clip, size=(640, 480))
    dom = fresh_domain_id()
    params = {"source": str(clip), "fps": 30.0, "publish_compressed": False}
    cam = NodeProcess("camera", dom, params, tmp_path, remap={"__ns": "/vga"})

    def stamp(header) -> float:
        return header.stamp.sec + header.stamp.nanosec * 1e-9

    with nodes(cam), Probe(dom) as probe:
        probe.subscribe(Image, "/vga/image_raw", qos_profile_sensor_data)
        probe.subscribe(DiagnosticArray, "/diagnostics")
        assert probe.spin_until(lambda: len(probe.msgs["/vga/image_raw"]) >= 10, 30), cam.log()
        probe.msgs["/diagnostics"].clear()
        probe.spin_for(4.0)
    # the camera's own count of published frames between two of its diagnostics, against
    # the frames received with stamps in between (both from the camera's clock)
    counts = [
        (stamp(array.header), int(kv.value))
        for _, array in probe.msgs["/diagnostics"]
        for status in array.status
        if status.name == "/vga/camera"
        for kv in status.values
        if kv.key == "published"
    ]
    assert len(counts) >= 2, cam.log()
    (t1, n1), (t2, n2) = counts[0], counts[-1]
    received = sum(t1 < stamp(m.header) <= t2 for _, m in probe.msgs["/vga/image_raw"])
    # the camera kept publishing (30 fps, fewer under load): enough frames that a lossy
    # transport (about half lost without the profile) would show
    assert n2 - n1 >= 15, cam.log()
    assert received >= n2 - n1 - 3, f"{received} of {n2 - n1} frames arrived"
    _, last = probe.msgs["/vga/image_raw"][-1]
    assert (last.width, last.height, len(last.data)) == (640, 480, 640 * 480 * 3)
