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


def _is(arg: str, value: str) -> IfCondition:
    return IfCondition(PythonExpression(["'", LaunchConfiguration(arg), f"' == '{value}'"]))


def _change(node: LifecycleNode, transition: int) -> EmitEvent:
    return EmitEvent(
        event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition)
    )


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution(
        [FindPackageShare("handoff_ros"), "config", "sim_panda.yaml"]
    )
    params = LaunchConfiguration("params_file")
    robot = LaunchConfiguration("robot")
    policy = LifecycleNode(
        package="handoff_ros",
        executable="policy",
        name="policy",
        namespace="",
        output="screen",
        parameters=[
            params,
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
                "device",
                default_value="joy",
                description="a teleop device: joy, keyboard, spacemouse, leader or scripted",
            ),
            DeclareLaunchArgument(
                "controller", default_value="forward", description="forward or joint_trajectory"
            ),
            DeclareLaunchArgument(
                "store",
                default_value="demos/corrected.zarr",
                description="zarr store the labelled rollouts are appended to",
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
                parameters=[params, {"device": LaunchConfiguration("device"), "robot": robot}],
            ),
            Node(
                package="handoff_ros",
                executable="recorder",
                name="recorder",
                output="screen",
                # source policy: steps labelled from the teleop engaged flag (takeovers)
                parameters=[params, {"store": LaunchConfiguration("store"), "source": "policy"}],
            ),
            policy,
            RegisterEventHandler(
                OnStateTransition(
                    target_lifecycle_node=policy,
                    start_state="configuring",
                    goal_state="inactive",
                    entities=[_change(policy, Transition.TRANSITION_ACTIVATE)],
                ),
                condition=_is("robot", "sim"),
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
