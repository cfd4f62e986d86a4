"""The simulated Panda behind ros2_control-like topics.

    ros2 launch handoff_ros sim.launch.py task:=lift cameras:=agentview,wrist

Publishes /joint_states, <camera>/image_raw (+ compressed, camera_info), /sim_arm/success;
takes /arm_controller/joint_trajectory, /forward_position_controller/commands and
/gripper_controller/commands. With use_sim_time:=true it also publishes /clock.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.parameter_descriptions import ParameterValue

from handoff_ros.launch_parts import common, ros_environment, sim_arm


def generate_launch_description() -> LaunchDescription:
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    return LaunchDescription(
        [
            DeclareLaunchArgument("task", default_value="lift", description="sim task"),
            DeclareLaunchArgument(
                "cameras", default_value="agentview,wrist", description="cameras to render"
            ),
            DeclareLaunchArgument(
                "use_sim_time", default_value="false", description="publish and follow /clock"
            ),
            DeclareLaunchArgument("params_file", **common("params_file")),
            DeclareLaunchArgument("dds_profile", **common("dds_profile")),
            *ros_environment(),
            sim_arm(
                {
                    "task": LaunchConfiguration("task"),
                    "cameras": LaunchConfiguration("cameras"),
                    "use_sim_time": use_sim_time,
                }
            ),
        ]
    )
