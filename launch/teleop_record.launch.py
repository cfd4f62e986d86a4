"""Teleoperate an arm and record demonstrations into a zarr store.

    ros2 launch handoff_ros teleop_record.launch.py robot:=sim device:=joy store:=demos/lift.zarr
    ros2 launch handoff_ros teleop_record.launch.py robot:=real device:=spacemouse \
        params_file:=/path/to/my_arm.yaml store:=demos/my_task.zarr

robot:=sim starts the simulated arm; robot:=real expects your ros2_control stack (and MoveIt
Servo for twist devices) to be running, and starts one camera node (camera_name, camera_source).
device:=joy also starts the ROS joy driver. Recorder keys on the device call /recorder/start,
/stop, /discard and /mark_success. ros2 launch gives nodes no terminal input: for
device:=keyboard run the teleop node in its own terminal instead
(``ros2 run handoff_ros teleop --ros-args --params-file ... -p device:=keyboard``).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument

from handoff_ros.launch_parts import arm_and_camera, common, recorder, ros_environment, teleop


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument("robot", **common("robot")),
            DeclareLaunchArgument("device", **common("device")),
            DeclareLaunchArgument(
                "store", default_value="demos/teleop.zarr", description="zarr store to append to"
            ),
            DeclareLaunchArgument("params_file", **common("params_file")),
            DeclareLaunchArgument("dds_profile", **common("dds_profile")),
            *ros_environment(),
            DeclareLaunchArgument("camera_name", **common("camera_name")),
            DeclareLaunchArgument("camera_source", **common("camera_source")),
            *arm_and_camera(),
            *teleop(),
            recorder(),
        ]
    )
