"""Pieces every handoff node shares: typed parameters, /diagnostics, joint-name matching, main().

Parameters: each node keeps a dataclass whose fields carry a ``description`` in their metadata
(:func:`param`). :func:`declare_params` declares every field with its default and a
ParameterDescriptor, reads the values (from ``config/*.yaml`` or ``--ros-args -p``) and builds
the dataclass, whose ``__post_init__`` validates them. The launch-file tests read the same
dataclasses, so "every parameter a launch file sets is declared by the node" is checked
against the code that declares them.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState

from data.align import JointSample, JointStateMerge, StampCheck
from data.errors import UserError
from data.rosmsg import TOPICS
from data.rosmsg import seconds as stamp_to_sec  # noqa: F401  (the nodes' name for it)

P = TypeVar("P")

OK, WARN, ERROR = 0, 1, 2  # DiagnosticStatus levels as ints (the message field is a byte)
# Fast DDS transport profiles shipped with the package (see each file's comment):
# host = shared memory + UDP on loopback (one machine, the default), lan = shared memory + UDP
# on every interface (several hosts), udp = UDP on loopback only (the benchmark's baseline).
DDS_PROFILES = {
    "host": Path(__file__).with_name("fastdds.xml"),
    "lan": Path(__file__).with_name("fastdds_lan.xml"),
    "udp": Path(__file__).with_name("fastdds_udp.xml"),
}
DDS_PROFILE = DDS_PROFILES["host"]


def dds_profile(env: Mapping[str, str] | None = None) -> Path:
    """The shipped profile for ``env`` (default: this process's environment).

    ``HANDOFF_DDS_PROFILE`` names one (host, lan, udp; the launch files' ``dds_profile``
    argument sets it). Unset, a setup that reaches other hosts -- ``ROS_STATIC_PEERS``, or
    ``ROS_AUTOMATIC_DISCOVERY_RANGE`` set to SUBNET or SYSTEM_DEFAULT -- gets ``lan``, anything
    else ``host``. UserError for a name that is not one of them.
    """
    env = os.environ if env is None else env
    name = env.get("HANDOFF_DDS_PROFILE", "").strip().lower()
    if not name:
        reach = env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "").strip().upper()
        lan = env.get("ROS_STATIC_PEERS", "").strip() or reach in ("SUBNET", "SYSTEM_DEFAULT")
        name = "lan" if lan else "host"
    if name not in DDS_PROFILES:
        raise UserError(
            f"HANDOFF_DDS_PROFILE={name!r} is not one of {', '.join(DDS_PROFILES)} "
            f"(for a profile of your own set FASTDDS_DEFAULT_PROFILES_FILE)"
        )
    if not DDS_PROFILES[name].is_file():  # Fast DDS would ignore a missing file silently
        raise UserError(f"{DDS_PROFILES[name]} is missing: reinstall handoff_ros (colcon build)")
    return DDS_PROFILES[name]


def use_dds_profile(env: dict[str, str] | None = None) -> dict[str, str]:
    """Point Fast DDS at handoff's transport profile (:func:`dds_profile`) unless
    ``FASTDDS_DEFAULT_PROFILES_FILE`` already names a file of the user's. Must run before
    rclpy.init: Fast DDS reads the file once per process. ``env`` (default: this process's
    environment) is updated and returned."""
    env = os.environ if env is None else env
    if "FASTDDS_DEFAULT_PROFILES_FILE" not in env:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(dds_profile(env))
    return env


def param(default: Any, description: str, dynamic: bool = False) -> Any:
    """A dataclass field that is also a ROS parameter (default + description). Parameters are
    read-only unless ``dynamic``: a dynamic one may be set while the node runs, through the
    callback :func:`on_dynamic_params` installs."""
    return field(default=default, metadata={"description": description, "dynamic": dynamic})


def topic_param(name: str) -> Any:
    """A parameter for one of the arm's topics, default and description from
    :data:`data.rosmsg.TOPICS` (the bag converters' options come from the same table)."""
    return param(*TOPICS[name])


@dataclass
class CommandTopics:
    """The arm's command topics, named as ros2_control's controllers name them by default: the
    policy and teleop nodes publish on them, the sim arm follows them, the recorder records
    them as the action."""

    trajectory_topic: str = topic_param("trajectory_topic")
    forward_topic: str = topic_param("forward_topic")
    gripper_topic: str = topic_param("gripper_topic")


@dataclass
class RealtimeParams:
    """How the thread that runs a node's control tick is scheduled (policy and teleop)."""

    realtime_priority: int = param(
        50,
        "SCHED_FIFO priority (1-99) of the thread running the control tick and the node's "
        "callbacks, as ros2_control's controller manager runs its loop (50 there too); 0: "
        "normal scheduling. Needs root, CAP_SYS_NICE or an rtprio limit; refused, the node "
        "warns once and runs at normal priority",
    )

    def __post_init__(self) -> None:
        if not 0 <= self.realtime_priority <= 99:
            raise ValueError(
                f"realtime_priority {self.realtime_priority}: use 0 (normal) or 1-99 (SCHED_FIFO)"
            )


def realtime_thread(node: Node, priority: int) -> str:
    """Put the calling thread under SCHED_FIFO at ``priority`` (0: leave it). Returns what it
    runs under, for /diagnostics. A refusal (no privilege) is one warning, never an error.

    At 50 Hz on the 2-core dev box it brings the policy node's p99 period error to that of a
    bare rclpy timer (README, "The control tick runs at real-time priority"). Threads started
    from this one inherit the policy: the policy runner puts its inference worker back to
    normal scheduling (policies.runner.normal_priority)."""
    if priority <= 0 or not hasattr(os, "sched_setscheduler"):
        return "normal"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as e:
        node.get_logger().warning(
            f"realtime_priority {priority}: SCHED_FIFO refused ({e.strerror}); the control "
            f"loop runs at normal priority and jitters more under load. Grant CAP_SYS_NICE or "
            f"an rtprio limit (/etc/security/limits.conf), or set realtime_priority:=0"
        )
        return "normal (SCHED_FIFO refused)"
    node.get_logger().info(f"control loop: SCHED_FIFO priority {priority}")
    return f"SCHED_FIFO {priority}"


@dataclass
class ObservationTopics:
    """Where the policy node and the recorder read the arm's observation keys (data/rosmsg.py
    maps each message to its keys)."""

    joint_states_topic: str = topic_param("joint_states_topic")
    gripper_joints: str = topic_param("gripper_joints")
    camera_topic: str = topic_param("camera_topic")
    eef_pose_topic: str = topic_param("eef_pose_topic")
    object_state_topic: str = topic_param("object_state_topic")
    engaged_topic: str = topic_param("engaged_topic")


def dynamic_names(cls: type) -> list[str]:
    """The fields of a parameter dataclass declared with ``dynamic=True``."""
    return [f.name for f in fields(cls) if f.metadata.get("dynamic")]


def on_dynamic_params(node: Node, cls: type, apply: Callable[[dict[str, Any]], None]) -> None:
    """Let ``ros2 param set`` change ``cls``'s dynamic parameters on ``node``: the new values of
    one call go to ``apply({name: value})`` together, whose ValueError refuses them all with
    its message as the reason (the parameters keep their values). rclpy refuses the read-only
    ones itself."""
    names = set(dynamic_names(cls))

    def callback(params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in names}
        if changes:
            try:
                apply(changes)
            except (ValueError, TypeError) as e:
                node.get_logger().warning(f"parameters {changes} refused: {e}")
                return SetParametersResult(successful=False, reason=str(e))
            node.get_logger().info(f"parameters set while running: {changes}")
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(callback)


def param_fields(cls: type) -> dict[str, tuple[Any, str]]:
    """{name: (default, description)} of a parameter dataclass."""
    out = {}
    for f in fields(cls):
        if f.default is MISSING:
            raise TypeError(f"{cls.__name__}.{f.name} needs a default (every parameter has one)")
        out[f.name] = (f.default, f.metadata.get("description", ""))
    return out


def declare_params(node: Node, cls: type[P]) -> P:
    """Declare every field of ``cls`` on ``node`` and return the validated values."""
    values = {}
    dynamic = set(dynamic_names(cls))
    for name, (default, description) in param_fields(cls).items():
        read_only = name not in dynamic
        descriptor = ParameterDescriptor(description=description, read_only=read_only)
        values[name] = node.declare_parameter(name, default, descriptor).value
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise UserError(f"node {node.get_name()}: bad parameter: {e}") from None


def now_sec(node: Node) -> float:
    """The node's clock in seconds (sim time when use_sim_time is set)."""
    return node.get_clock().now().nanoseconds * 1e-9


def merge_joint_state(
    merge: JointStateMerge,
    stamps: StampCheck,
    msg: JointState,
    received: float,
    topic: str,
    want: Sequence[str],
) -> JointSample:
    """Merge one JointState into ``merge`` at its checked time (the earlier of its stamp and
    ``received``; see :class:`data.align.StampCheck`) and return the joints ``want``, merged by
    name over every publisher of the topic. ValueError says what is wrong (for /diagnostics): a
    stamp after its arrival, arrays that do not fit the names, a message with none of ``want``
    (a miswired topic), or joints not heard recently enough to be merged."""
    t = stamps.time_of(stamp_to_sec(msg.header.stamp), received, topic)
    merge.update(t, msg.name, msg.position, msg.velocity)
    if not set(msg.name) & set(want):
        raise ValueError(f"a message with none of the joints {list(want)}: it has {list(msg.name)}")
    return merge.take(want)


class Diagnostics:
    """Publishes one DiagnosticStatus on /diagnostics every ``period`` seconds.

    ``report()`` returns (level, message, {key: value}); problems seen in callbacks are
    recorded with :meth:`problem` and shown (and counted) until they stop recurring.
    """

    def __init__(
        self,
        node: Node,
        report: Callable[[], tuple[int, str, dict[str, Any]]],
        period: float = 1.0,
    ) -> None:
        self.node = node
        self.report = report
        self.pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.problems: dict[str, tuple[int, float]] = {}  # message -> (count, last time)
        self.timer = node.create_timer(period, self.publish)
        self.hold_s = max(5.0, 3 * period)

    def problem(self, message: str) -> None:
        count = self.problems.get(message, (0, 0.0))[0] + 1
        self.problems[message] = (count, time.monotonic())
        if count == 1 or count % 100 == 0:  # log the first and then every 100th
            self.node.get_logger().warning(f"{message} (x{count})")

    def recent(self) -> list[str]:
        """Problems seen within the last ``hold_s`` seconds, with their counts."""
        now = time.monotonic()
        problems = list(self.problems.items())  # a copy: callbacks may add to it meanwhile
        return [f"{m} (x{c})" for m, (c, t) in problems if now - t < self.hold_s]

    def publish(self) -> None:
        level, message, values = self.report()
        recent = self.recent()
        if recent:
            level = max(level, WARN)
            message = "; ".join(recent)
        status = DiagnosticStatus()
        status.level = bytes([level_value(level)])
        status.name = self.node.get_fully_qualified_name()
        status.hardware_id = str(values.pop("hardware_id", ""))
        status.message = message
        status.values = [KeyValue(key=str(k), value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.status = [status]
        self.pub.publish(msg)


def level_value(level: Any) -> int:
    """DiagnosticStatus.level as an int (rclpy gives ``bytes`` for the byte type)."""
    return level[0] if isinstance(level, bytes | bytearray) else int(level)


def print_help(doc: str | None, params: type) -> None:
    """What ``--help`` prints: the node's docstring and every parameter with its default."""
    print((doc or "").strip())
    print("\nparameters (set with --ros-args -p NAME:=VALUE or --params-file FILE):")
    dynamic = set(dynamic_names(params))
    for name, (default, description) in param_fields(params).items():
        settable = ", settable while running" if name in dynamic else ""
        print(f"  {name} (default {default!r}{settable})\n      {description}")


def run_node(
    make_node: Callable[[], Node],
    args: list[str] | None = None,
    threads: int = 1,
    params: type | None = None,
    doc: str | None = None,
) -> None:
    """The rclpy examples' main(): init, spin, clean shutdown on Ctrl-C or external shutdown.

    ``-h``/``--help`` (before ``--ros-args``) prints ``doc`` and the parameters and exits.
    A :class:`UserError` while building the node (bad parameter, missing file) prints one line
    and exits with status 2.
    """
    argv = sys.argv[1:] if args is None else args
    own = argv[: argv.index("--ros-args")] if "--ros-args" in argv else argv
    if params is not None and ({"-h", "--help"} & set(own)):
        print_help(doc, params)
        sys.exit(0)
    try:
        use_dds_profile()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        if threads > 1:
            executor = MultiThreadedExecutor(num_threads=threads)
            executor.add_node(node)
            executor.spin()
        else:
            rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        # Ctrl-C landing while rclpy converts a message surfaces as a RuntimeError from its
        # C++ layer (ros/joint_state_publisher#117); after a shutdown that is a clean exit
        if rclpy.ok():
            raise
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        rclpy.try_shutdown()
        sys.exit(2)
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
