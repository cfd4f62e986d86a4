"""What the launch files (``launch/*.launch.py``) share: launch arguments, ROS environment,
conditions, and the nodes they start, each set up one way.

A launch file declares each argument by name, ``DeclareLaunchArgument("robot",
**common("robot"))``, so that it still lists everything a user can pass (tests/test_readme.py
and tests/test_docker.py read those names in the file), and takes the default and description
from :func:`common`. Every node reads ``params_file`` first, then the launch arguments that
override it. Only launch files import this module: it needs ``launch`` and ``launch_ros``,
which the nodes do not.
"""

from __future__ import annotations

from typing import Any

from launch import Action
from launch.actions import (
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


def common(name: str) -> dict[str, Any]:
    """``default_value`` (where there is one) and ``description`` of the launch argument
    ``name`` that several launch files take; KeyError for any other name."""
    arguments: dict[str, dict[str, Any]] = {
        "checkpoint": {"description": "checkpoint or run directory"},
        "robot": {"default_value": "sim", "description": "sim or real"},
        "device": {
            "default_value": "joy",
            "description": "a teleop device: joy, keyboard, spacemouse, leader or scripted",
        },
        "controller": {"default_value": "forward", "description": "forward or joint_trajectory"},
        "params_file": {
            "default_value": PathJoinSubstitution(
                [FindPackageShare("handoff_ros"), "config", "sim_panda.yaml"]
            ),
            "description": "node parameters",
        },
        # Fast DDS transports of every handoff node (handoff_ros/fastdds*.xml): host (one
        # machine, shared memory), lan (several hosts) or udp; empty: rosutil.dds_profile
        "dds_profile": {
            "default_value": EnvironmentVariable("HANDOFF_DDS_PROFILE", default_value=""),
            "description": "host, lan or udp (empty: lan if ROS_STATIC_PEERS or a SUBNET "
            "discovery range is set, else host)",
        },
        "camera_name": {"default_value": "scene", "description": "real: camera namespace"},
        "camera_source": {"default_value": "0", "description": "real: device index or path"},
    }
    return arguments[name]


def ros_environment() -> list[Action]:
    """The environment of every node started after it: HANDOFF_DDS_PROFILE from the
    ``dds_profile`` argument (read by rosutil.dds_profile in each node)."""
    return [SetEnvironmentVariable("HANDOFF_DDS_PROFILE", LaunchConfiguration("dds_profile"))]


def when(arg: str, value: str) -> IfCondition:
    """True when launch argument ``arg`` is ``value``, e.g. ``when("robot", "sim")``."""
    return IfCondition(PythonExpression(["'", LaunchConfiguration(arg), f"' == '{value}'"]))


def sim_arm(settings: dict[str, Any] | None = None, condition: IfCondition | None = None) -> Node:
    """The simulated arm (handoff_ros.sim_arm) with ``params_file``, then ``settings`` (its
    parameters from launch arguments) over it."""
    parameters: list[Any] = [LaunchConfiguration("params_file")]
    if settings:
        parameters.append(settings)
    return Node(
        package="handoff_ros",
        executable="sim_arm",
        name="sim_arm",
        output="screen",
        parameters=parameters,
        condition=condition,
    )


def arm_and_camera() -> list[Action]:
    """The simulated arm on robot:=sim; on robot:=real (next to the user's ros2_control stack)
    one camera node, namespace ``camera_name``, source ``camera_source``."""
    return [
        sim_arm(condition=when("robot", "sim")),
        Node(
            package="handoff_ros",
            executable="camera",
            name="camera",
            namespace=LaunchConfiguration("camera_name"),
            output="screen",
            parameters=[
                LaunchConfiguration("params_file"),
                {"source": LaunchConfiguration("camera_source")},
            ],
            condition=when("robot", "real"),
        ),
    ]


def teleop() -> list[Action]:
    """The teleop node (device and robot from the launch arguments), and the ROS joy driver
    on device:=joy."""
    return [
        Node(package="joy", executable="joy_node", name="joy", condition=when("device", "joy")),
        Node(
            package="handoff_ros",
            executable="teleop",
            name="teleop",
            output="screen",
            emulate_tty=True,  # coloured, unbuffered log lines
            parameters=[
                LaunchConfiguration("params_file"),
                {
                    "device": LaunchConfiguration("device"),
                    "robot": LaunchConfiguration("robot"),
                },
            ],
        ),
    ]


def recorder(settings: dict[str, Any] | None = None) -> Node:
    """The recorder node, appending to the ``store`` argument; ``settings``: more of its
    parameters, over ``params_file``."""
    return Node(
        package="handoff_ros",
        executable="recorder",
        name="recorder",
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {"store": LaunchConfiguration("store"), **(settings or {})},
        ],
    )


def _change(node: LifecycleNode, transition: int) -> EmitEvent:
    return EmitEvent(
        event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition)
    )


def policy() -> list[Action]:
    """The policy lifecycle node and what drives it: configure at start (load and check the
    checkpoint; a failure ends the launch), then activate at once on robot:=sim. On
    robot:=real it stays inactive until an operator enables it (~/enable)."""
    node = LifecycleNode(
        package="handoff_ros",
        executable="policy",
        name="policy",
        namespace="",
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "checkpoint": LaunchConfiguration("checkpoint"),
                "robot": LaunchConfiguration("robot"),
                "controller": LaunchConfiguration("controller"),
                "autostart": False,  # the launch file drives the transitions
            },
        ],
    )
    return [
        node,
        RegisterEventHandler(
            OnStateTransition(
                target_lifecycle_node=node,
                start_state="configuring",
                goal_state="inactive",
                entities=[_change(node, Transition.TRANSITION_ACTIVATE)],
            ),
            condition=when("robot", "sim"),
        ),
        RegisterEventHandler(
            OnStateTransition(
                target_lifecycle_node=node,
                start_state="configuring",
                goal_state="unconfigured",
                entities=[
                    LogInfo(msg="the policy node failed to configure (its error is above)"),
                    Shutdown(reason="policy configure failed"),
                ],
            )
        ),
        _change(node, Transition.TRANSITION_CONFIGURE),
    ]
