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
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    LogInfo,
    RegisterEventHandler,
    SetEnvironmentVariable,
    Shutdown,
)
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import (
    EnvironmentVariable,
    LaunchConfiguration,
    PathJoinSubstitution,
    PythonExpression,
)
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition


def _change(node: LifecycleNode, transition: int) -> EmitEvent:
    return EmitEvent(
        event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition)
    )


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution(
        [FindPackageShare("handoff_ros"), "config", "sim_panda.yaml"]
    )
    robot = LaunchConfiguration("robot")
    is_sim = IfCondition(PythonExpression(["'", robot, "' == 'sim'"]))
    policy = LifecycleNode(
        package="handoff_ros",
        executable="policy",
        name="policy",
        namespace="",
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "checkpoint": LaunchConfiguration("checkpoint"),
                "robot": robot,
                "controller": LaunchConfiguration("controller"),
                "autostart": False,  # this file drives the transitions
            },
        ],
    )
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
                parameters=[LaunchConfiguration("params_file")],
                condition=is_sim,
            ),
            policy,
            RegisterEventHandler(
                OnStateTransition(
                    target_lifecycle_node=policy,
                    start_state="configuring",
                    goal_state="inactive",
                    entities=[_change(policy, Transition.TRANSITION_ACTIVATE)],
                ),
                condition=is_sim,
            ),
            RegisterEventHandler(
                OnStateTransition(
                    target_lifecycle_node=policy,
                    start_state="configuring",
                    goal_state="unconfigured",
                    entities=[
                        LogInfo(msg="the policy node failed to configure (its error is above)"),
                        Shutdown(reason="policy configure failed"),
                    ],
                )
            ),
            _change(policy, Transition.TRANSITION_CONFIGURE),
        ]
    )
