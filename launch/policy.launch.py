"""Run a trained checkpoint on an arm, through the safety filter.

    ros2 launch handoff_ros policy.launch.py checkpoint:=runs/lift_dp robot:=sim
    ros2 launch handoff_ros policy.launch.py checkpoint:=runs/my_task robot:=real \
        controller:=joint_trajectory params_file:=/path/to/my_arm.yaml
    ros2 service call /policy/enable std_srvs/srv/SetBool "{data: true}"  # real: starts disabled

robot:=sim also starts the simulated arm. Stop a real arm at once with
``ros2 topic pub --once /estop std_msgs/msg/Bool "{data: true}"`` (latched until
/policy/clear_estop and a new /policy/enable).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution(
        [FindPackageShare("handoff_ros"), "config", "sim_panda.yaml"]
    )
    robot = LaunchConfiguration("robot")
    return LaunchDescription(
        [
            DeclareLaunchArgument("checkpoint", description="checkpoint or run directory"),
            DeclareLaunchArgument("robot", default_value="sim", description="sim or real"),
            DeclareLaunchArgument(
                "controller", default_value="forward", description="forward or joint_trajectory"
            ),
            DeclareLaunchArgument(
                "params_file", default_value=default_params, description="node parameters"
            ),
            Node(
                package="handoff_ros",
                executable="sim_arm",
                name="sim_arm",
                output="screen",
                parameters=[LaunchConfiguration("params_file")],
                condition=IfCondition(PythonExpression(["'", robot, "' == 'sim'"])),
            ),
            Node(
                package="handoff_ros",
                executable="policy",
                name="policy",
                output="screen",
                parameters=[
                    LaunchConfiguration("params_file"),
                    {
                        "checkpoint": LaunchConfiguration("checkpoint"),
                        "robot": robot,
                        "controller": LaunchConfiguration("controller"),
                    },
                ],
            ),
        ]
    )
