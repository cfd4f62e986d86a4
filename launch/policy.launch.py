"""Run a trained checkpoint on an arm, through the safety filter.

    ros2 launch handoff_ros policy.launch.py checkpoint:=runs/lift_dp robot:=sim
    ros2 launch handoff_ros policy.launch.py checkpoint:=runs/my_task robot:=real \
        controller:=joint_trajectory params_file:=/path/to/my_arm.yaml
    ros2 service call /policy/enable std_srvs/srv/SetBool "{data: true}"  # real: activate

The policy node is a managed (lifecycle) node and this file drives it: configure at start (load
and check the checkpoint; a failure ends the launch), then on robot:=sim activate at once. On
robot:=real it stays inactive -- nothing is sent -- until an operator enables it (~/enable, or
``ros2 lifecycle set /policy activate`` where ros2lifecycle is installed); ``~/enable false``
deactivates it (the arm holds). robot:=sim also starts the simulated arm.

Stop a real arm at once with ``ros2 topic pub --once /estop std_msgs/msg/Bool "{data: true}"``
(latched until /policy/clear_estop and a new /policy/enable).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument

from handoff_ros.launch_parts import common, policy, ros_environment, sim_arm, when


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument("checkpoint", **common("checkpoint")),
            DeclareLaunchArgument("robot", **common("robot")),
            DeclareLaunchArgument("controller", **common("controller")),
            DeclareLaunchArgument("params_file", **common("params_file")),
            DeclareLaunchArgument("dds_profile", **common("dds_profile")),
            *ros_environment(),
            sim_arm(condition=when("robot", "sim")),
            *policy(),
        ]
    )
