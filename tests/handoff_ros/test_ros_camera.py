"""Camera sources behind their interface, then the camera node over real DDS: a video file
stands in for the device (and the simulated twin renders a sim scene)."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

from data.errors import UserError  # noqa: E402
from data.rosmsg import decode_compressed, decode_image  # noqa: E402
from handoff_ros.camera import CameraParams  # noqa: E402
from handoff_ros.camera_sources import CAMERA_SOURCES, CameraSource, GrabThread  # noqa: E402
from handoff_ros.processes import NodeProcess, Probe, fresh_domain_id, nodes  # noqa: E402
from handoff_ros.rosutil import level_value  # noqa: E402

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


def read_frame(cam: CameraSource, timeout: float) -> tuple[float, np.ndarray] | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        frame = cam.read()
        if frame is not None:
            return frame
        time.sleep(0.01)
    return None


def test_camera_sources_are_found_by_name_and_an_unknown_name_lists_them():
    assert CAMERA_SOURCES.names() == ["opencv", "sim"]
    for name in CAMERA_SOURCES:
        cls = CAMERA_SOURCES.get(name)
        assert issubclass(cls, CameraSource) and cls.name == name
        assert cls.__module__ == f"handoff_ros.camera_sources.{name}"
    with pytest.raises(UserError, match="unknown camera source 'usb'; choose one of: opencv, sim"):
        CAMERA_SOURCES.get("usb")
    with pytest.raises(ValueError, match="choose one of: opencv, sim"):
        CameraParams(driver="usb")  # the node exits 2 with this line
    p = CameraParams(source="/dev/video97", width=64, height=48)
    cam = CAMERA_SOURCES.get("opencv").from_params(p, time.time)
    assert (cam.source, cam.width, cam.height, cam.is_file) == ("/dev/video97", 64, 48, False)
    with pytest.raises(ValueError, match="simulated camera 'front'"):
        CAMERA_SOURCES.get("sim").from_params(CameraParams(driver="sim", source="front"), time.time)


def test_opencv_source_reads_newest_frames_once_and_closes_as_a_context_manager(tmp_path):
    clip = tmp_path / "clip.avi"
    write_clip(clip, n=10)
    t0 = time.time()
    with CAMERA_SOURCES.get("opencv")(str(clip), 64, 48, 50.0, reconnect_s=0.2) as cam:
        assert cam.connected
        first = read_frame(cam, 10)
        assert first is not None, cam.error
        stamp, rgb = first
        assert t0 <= stamp <= time.time()
        assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
        assert rgb[5, 5, 0] > 150 and rgb[5, 5, 2] < 60  # RGB, not OpenCV's BGR
        stamps = [stamp]
        for _ in range(15):  # past the clip's end: it loops
            frame = read_frame(cam, 5)
            assert frame is not None, cam.error
            stamps.append(frame[0])
        assert np.all(np.diff(stamps) > 0)  # never the same frame twice
        assert cam.streaming and cam.frames_read >= 16
    assert not cam.connected and not cam._thread.is_alive()
    cam.close()  # idempotent


def test_a_source_that_fails_is_reported_and_retried_not_raised():
    class Flaky(GrabThread):
        """Opens on the second try, delivers two frames, then stops."""

        opens = 0

        def _open(self) -> bool:
            self.opens += 1
            self.error = "" if self.opens > 1 else "not yet"
            return self.opens > 1

        def _grab(self) -> np.ndarray | None:
            return np.full((4, 6, 3), 7, np.uint8) if self.frames_read < 2 else None

        def _release(self) -> None:
            pass

        @classmethod
        def from_params(cls, p: object, clock: object) -> GrabThread:
            raise NotImplementedError("built directly in this test")

    with Flaky("flaky", 12, 8, 100.0, reconnect_s=0.05) as cam:
        frame = read_frame(cam, 5)
        assert frame is not None and frame[1].shape == (8, 12, 3)  # resized to the mode asked
        deadline = time.monotonic() + 5
        while cam.reconnects < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cam.opens >= 3 and cam.reconnects >= 1 and cam.frames_read == 2
    assert not cam._thread.is_alive()
    assert not cam.streaming and "'flaky' stopped delivering" in cam.error


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
        rgb = decode_image(raw[-1][1])
        assert rgb[5, 5, 0] > 150 and rgb[5, 5, 2] < 60  # red stays red
        jpeg = probe.msgs["/front/image_raw/compressed"]
        assert jpeg and "jpeg" in jpeg[-1][1].format
        assert decode_compressed(jpeg[-1][1].data).shape == (96, 128, 3)
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
        assert decode_image(probe.msgs["/image_raw"][-1][1]).shape == (48, 64, 3)


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


def test_camera_node_with_the_simulated_twin(tmp_path):
    """driver:=sim renders a sim task's camera: the node publishes it like a device."""
    dom = fresh_domain_id()
    params = {"driver": "sim", "source": "lift/agentview", "width": 32, "height": 24, "fps": 5.0}
    cam = NodeProcess("camera", dom, params, tmp_path)
    bad = NodeProcess("camera", dom, {"driver": "usb"}, tmp_path)
    bad.proc.wait(timeout=30)
    assert bad.proc.returncode == 2 and "choose one of: opencv, sim" in bad.log(), bad.log()
    bad.stop()
    with nodes(cam), Probe(dom) as probe:
        probe.subscribe(Image, "/image_raw", qos_profile_sensor_data)
        assert probe.spin_until(lambda: len(probe.msgs["/image_raw"]) >= 2, 120), cam.log()
        rgb = decode_image(probe.msgs["/image_raw"][-1][1])
        assert rgb.shape == (24, 32, 3) and rgb.std() > 5  # a rendered scene, not a blank
        assert cam.alive()
