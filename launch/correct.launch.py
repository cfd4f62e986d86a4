"""A correction session: a policy runs the arm, an operator takes over when it goes wrong, and
every rollout is recorded with per-step labels for fine-tuning (learning from interventions).

    ros2 launch handoff_ros correct.launch.py checkpoint:=runs/lift_dp robot:=sim device:=joy \
        store:=demos/lift_corrected.zarr
    ros2 launch handoff_ros correct.launch.py checkpoint:=runs/my_task robot:=real \
        device:=spacemouse params_file:=/path/to/my_arm.yaml store:=demos/my_task.zarr
    ros2 service call /policy/enable std_srvs/srv/SetBool "{data: true}"  # real: activate

Starts the policy (the lifecycle node of policy.launch.py, driven the same way: configured at
start, active at once on robot:=sim, waiting for ~/enable on robot:=real), the teleop node
(and the joy driver for device:=joy) and the recorder with ``source: policy``. While the
operator is engaged (the teleop deadman, ``/teleop/engaged``) the policy yields the arm; the
recorder labels those steps ``intervention``, the 15 before each takeover
``pre_intervention`` and the rest ``autonomous``, and commits an episode with a takeover as
source ``corrected``. Start and stop episodes with the device's recorder keys (/recorder/start,
/stop, /discard, /mark_success). Then fine-tune: ``handoff-train --init CKPT --data STORE``.
robot:=sim also starts the simulated arm; robot:=real one camera node (camera_name,
camera_source), as teleop_record.launch.py does.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument

from handoff_ros.launch_parts import (
    arm_and_camera,
    common,
    policy,
    recorder,
    ros_environment,
    teleop,
)


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument("checkpoint", **common("checkpoint")),
            DeclareLaunchArgument("robot", **common("robot")),
            DeclareLaunchArgument("device", **common("device")),
            DeclareLaunchArgument("controller", **common("controller")),
            DeclareLaunchArgument(
                "store",
                default_value="demos/corrected.zarr",
                description="zarr store the labelled rollouts are appended to",
            ),
            DeclareLaunchArgument("params_file", **common("params_file")),
            DeclareLaunchArgument("dds_profile", **common("dds_profile")),
            *ros_environment(),
            DeclareLaunchArgument("camera_name", **common("camera_name")),
            DeclareLaunchArgument("camera_source", **common("camera_source")),
            *arm_and_camera(),
            *teleop(),
            # source policy: steps labelled from the teleop engaged flag (takeovers)
            recorder({"source": "policy"}),
            *policy(),
        ]
    )
