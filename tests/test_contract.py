"""The arm contract is written once: finger joints in the spec, one image decoder, pure tests
without ROS (issue 18)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from data.convert.rosbag_msgs import BagTopics
from data.convert.rosbag_msgs import decode_image as decode_bag_image
from data.embodiment import SIM_PANDA_FINGER_JOINTS, Embodiment, load_embodiment
from data.errors import UserError
from data.rosmsg import IMAGE_CHANNELS, ImageError, decode_image

ROOT = Path(__file__).resolve().parents[1]
FINGERS = ("gripper0_right_finger_joint1", "gripper0_right_finger_joint2")
RGB = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)


# ---- finger joints belong to the embodiment spec ---------------------------------------------


def test_sim_panda_spec_lists_its_finger_joints():
    spec = load_embodiment("sim_panda")
    assert spec.gripper.joint_names == FINGERS
    assert load_embodiment(ROOT / "data/specs/real_arm_template.yaml").gripper.joint_names == ()
    again = Embodiment.from_dict(spec.to_dict())
    assert again == spec and again.to_dict()["gripper"]["joint_names"] == list(FINGERS)


def test_specs_written_before_the_field_still_load():
    old = load_embodiment("sim_panda").to_dict()
    del old["gripper"]["joint_names"]  # as stored in stores and checkpoints made before
    assert Embodiment.from_dict(old).gripper.joint_names == SIM_PANDA_FINGER_JOINTS == FINGERS
    other = {**old, "name": "my_arm"}
    assert Embodiment.from_dict(other).gripper.joint_names == ()


def test_bad_finger_joint_names_are_refused():
    d = load_embodiment("sim_panda").to_dict()
    for bad in ("gripper0_right_finger_joint1", ["a", "a"], [d["joint_names"][0]], [""]):
        d["gripper"]["joint_names"] = bad
        with pytest.raises(UserError, match="gripper.joint_names"):
            Embodiment.from_dict(d)


def test_an_override_replaces_the_spec_fingers_and_empty_keeps_them():
    spec = load_embodiment("sim_panda")
    assert spec.finger_joints() == list(FINGERS)
    assert spec.finger_joints("") == list(FINGERS)
    assert spec.finger_joints("left, right") == ["left", "right"]
    assert BagTopics().finger_names(spec) == list(FINGERS)
    assert BagTopics(gripper_joints="f1").finger_names(spec) == ["f1"]


def test_finger_names_are_typed_out_only_in_the_spec():
    sources = [*ROOT.glob("data/**/*.py"), *ROOT.glob("data/specs/*.yaml")]
    sources += [*ROOT.glob("sim/**/*.py"), *ROOT.glob("policies/**/*.py")]
    sources += [*ROOT.glob("ros2_ws/src/handoff_ros/handoff_ros/*.py")]
    found = {str(p.relative_to(ROOT)) for p in sources if "right_finger_joint" in p.read_text()}
    assert found == {"data/embodiment.py", "data/specs/sim_panda.yaml"}


# ---- one image decoder ------------------------------------------------------------------------


def _image(rgb: np.ndarray, encoding: str, pad: int = 0) -> SimpleNamespace:
    """A sensor_msgs/Image-shaped object (rclpy and rosbags messages have these fields)."""
    pixels = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "rgba8": np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 9, np.uint8)], 2),
        "bgra8": np.concatenate([rgb[..., ::-1], np.full((*rgb.shape[:2], 1), 9, np.uint8)], 2),
        "mono8": rgb[..., :1],
    }[encoding]
    h, w, c = pixels.shape
    rows = np.concatenate([pixels.reshape(h, w * c), np.full((h, pad), 7, np.uint8)], 1)
    return SimpleNamespace(
        encoding=encoding, height=h, width=w, step=w * c + pad, data=rows.tobytes()
    )


@pytest.mark.parametrize("encoding", sorted(IMAGE_CHANNELS))
@pytest.mark.parametrize("pad", [0, 3])
def test_every_encoding_decodes_to_rgb_live_and_from_bags(encoding, pad):
    msg = _image(RGB, encoding, pad)
    want = np.repeat(RGB[..., :1], 3, 2) if encoding == "mono8" else RGB
    np.testing.assert_array_equal(decode_image(msg), want)
    np.testing.assert_array_equal(decode_bag_image(msg, "sensor_msgs/msg/Image", "/cam"), want)
    msg.data = np.frombuffer(msg.data, np.uint8)  # rosbags gives an ndarray
    np.testing.assert_array_equal(decode_image(msg), want)


def test_live_node_images_decode_with_the_shared_decoder():
    pytest.importorskip("sensor_msgs")
    from handoff_ros.images import ImageError as NodeImageError
    from handoff_ros.images import to_image_msg

    assert NodeImageError is ImageError
    msg = to_image_msg(RGB, "bgr8")
    np.testing.assert_array_equal(decode_image(msg), RGB)
    msg.encoding = "bgra8"
    msg.step = RGB.shape[1] * 4
    msg.data = _image(RGB, "bgra8").data
    np.testing.assert_array_equal(decode_image(msg), RGB)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"encoding": "yuv422"}, "encoding 'yuv422' is not supported; publish one of"),
        ({"width": 0}, "empty"),
        ({"step": 20}, "step 20 is below width"),
        ({"data": b"\x00" * 10}, "data has 10 bytes"),
    ],
)
def test_bad_images_fail_with_one_clear_error(change, message):
    msg = _image(RGB, "rgb8")
    for k, v in change.items():
        setattr(msg, k, v)
    with pytest.raises(ImageError, match=message):
        decode_image(msg)
    with pytest.raises(UserError, match=f"^/cam: .*{message}"):
        decode_bag_image(msg, "sensor_msgs/msg/Image", "/cam")


# ---- pure tests import no ROS -----------------------------------------------------------------


def test_pure_test_setup_imports_no_ros():
    code = (
        "import sys, tests.conftest, data.rosmsg, data.convert.rosbag_msgs, handoff_ros.tiny\n"
        "ros = ('rclpy', 'sensor_msgs', 'std_msgs', 'rosidl_runtime_py')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ros "
        "or m == 'handoff_ros.processes'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
