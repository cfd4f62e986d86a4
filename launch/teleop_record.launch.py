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
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import (
    EnvironmentVariable,
    LaunchConfiguration,
    PathJoinSubstitution,
    PythonExpression,
)
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def _is(arg: str, value: str) -> IfCondition:
    return IfCondition(PythonExpression(["'", LaunchConfiguration(arg), f"' == '{value}'"]))


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution(
        [FindPackageShare("handoff_ros"), "config", "sim_panda.yaml"]
    )
    params = LaunchConfiguration("params_file")
    return LaunchDescription(
        [
            DeclareLaunchArgument("robot", default_value="sim", description="sim or real"),
            DeclareLaunchArgument(
                "device",
                default_value="joy",
                description="a teleop device: joy, keyboard, spacemouse, leader or scripted",
            ),
            DeclareLaunchArgument(
                "store", default_value="demos/teleop.zarr", description="zarr store to append to"
            ),
            DeclareLaunchArgument(
                "params_file", default_value=default_params, description="node parameters"
            ),
            # Fast DDS transports of every handoff node (handoff_ros/fastdds*.xml): host (one
            # machine, shared memory), lan (several hosts) or udp; empty: rosutil.dds_profile
            DeclareLaunchArgument(
                "dds_profile",
                default_value=EnvironmentVariable("HANDOFF_DDS_PROFILE", default_value=""),
                description="host, lan or udp (empty: lan if ROS_STATIC_PEERS or a SUBNET "
                "discovery range is set, else host)",
            ),
            SetEnvironmentVariable("HANDOFF_DDS_PROFILE", LaunchConfiguration("dds_profile")),
            DeclareLaunchArgument(
                "camera_name", default_value="scene", description="real: camera namespace"
            ),
            DeclareLaunchArgument(
                "camera_source", default_value="0", description="real: device index or path"
            ),
            Node(
                package="handoff_ros",
                executable="sim_arm",
                name="sim_arm",
                output="screen",
                parameters=[params],
                condition=_is("robot", "sim"),
            ),
            Node(
                package="handoff_ros",
                executable="camera",
                name="camera",
                namespace=LaunchConfiguration("camera_name"),
                output="screen",
                parameters=[params, {"source": LaunchConfiguration("camera_source")}],
                condition=_is("robot", "real"),
            ),
            Node(
                package="joy",
                executable="joy_node",
                name="joy",
                condition=_is("device", "joy"),
            ),
            Node(
                package="handoff_ros",
                executable="teleop",
                name="teleop",
                output="screen",
                emulate_tty=True,  # coloured, unbuffered log lines
                parameters=[
                    params,
                    {
                        "device": LaunchConfiguration("device"),
                        "robot": LaunchConfiguration("robot"),
                    },
                ],
            ),
            Node(
                package="handoff_ros",
                executable="recorder",
                name="recorder",
                output="screen",
                parameters=[params, {"store": LaunchConfiguration("store")}],
            ),
        ]
    )
