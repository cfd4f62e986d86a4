"""The simulated Panda behind ros2_control-like topics.

    ros2 launch handoff_ros sim.launch.py task:=lift cameras:=agentview,wrist

Publishes /joint_states, <camera>/image_raw (+ compressed, camera_info), /sim_arm/success;
takes /arm_controller/joint_trajectory, /forward_position_controller/commands and
/gripper_controller/commands. With use_sim_time:=true it also publishes /clock.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution(
        [FindPackageShare("handoff_ros"), "config", "sim_panda.yaml"]
    )
    return LaunchDescription(
        [
            DeclareLaunchArgument("task", default_value="lift", description="sim task"),
            DeclareLaunchArgument(
                "cameras", default_value="agentview,wrist", description="cameras to render"
            ),
            DeclareLaunchArgument(
                "use_sim_time", default_value="false", description="publish and follow /clock"
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
            Node(
                package="handoff_ros",
                executable="sim_arm",
                name="sim_arm",
                output="screen",
                parameters=[
                    LaunchConfiguration("params_file"),
                    {
                        "task": LaunchConfiguration("task"),
                        "cameras": LaunchConfiguration("cameras"),
                        "use_sim_time": ParameterValue(
                            LaunchConfiguration("use_sim_time"), value_type=bool
                        ),
                    },
                ],
            ),
        ]
    )
