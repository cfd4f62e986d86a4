"""recorder node: topics -> fixed-rate steps -> a zarr demonstration store.

Observations: ``/joint_states`` (matched by name), each spec camera's ``image_raw``, and on
the simulated arm its ``eef_pose`` and privileged ``object_state``. The action is the command
actually sent to the controller (forward command, or the goal point of a joint trajectory,
plus the gripper command); before the first command it is the measured position, which is
what a position controller holds. ``data/intervention`` is the teleop node's engaged flag
(False when no teleop runs), so human corrections during policy rollouts are marked; with
``source:=policy`` (a correction session, launch/correct.launch.py) each step also gets its
``data/label`` (autonomous, intervention, pre-intervention; handoff_ros.episode_recorder) and an
episode with a takeover is committed with source ``corrected``.

Alignment: a timer ticks at the spec's rate; tick ``t`` is assembled ``lag_s`` later with
data/align.py's rule (see handoff_ros.episode_recorder). Services: ``~/start``, ``~/stop``,
``~/discard`` (Trigger), ``~/mark_success`` (SetBool). ``~/stop`` answers with the outcome:
success means the episode is committed (with the tick of the request, once assembled); an
episode without a single step is discarded and answers success=false with the reason.
Per-topic rate, latency and drops go to /diagnostics.

What is recorded is exact or refused by name: joint states are merged by joint name across
messages within ``max_age_s`` (an arm and a separate gripper driver may publish separately);
a message's time is the earlier of its stamp and its arrival, and one stamped more than
``future_stamp_tolerance_s`` after its arrival is rejected (counted per topic); NaN/inf values
are never stored. A driver that sends no (or NaN) velocities gets ``joint_vel`` estimated from
successive positions (data.align.JointStateMerge), and ``~/stop`` and the log say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from data import rosmsg
from data.align import JointStateMerge, StampCheck
from data.embodiment import Embodiment, load_embodiment
from data.errors import UserError
from data.rosmsg import ImageError, check_compressed, decode_image, trajectory_from_msg
from data.store import DemoStore
from handoff_ros.episode_recorder import EncodedFrame, EpisodeRecorder, Stream, non_finite_keys
from handoff_ros.rosutil import (
    ERROR,
    OK,
    CommandTopics,
    Diagnostics,
    ObservationTopics,
    declare_params,
    merge_joint_state,
    now_sec,
    param,
    run_node,
    stamp_to_sec,
)


@dataclass
class RecorderParams(CommandTopics, ObservationTopics):
    store: str = param("", "zarr store to append to (created with the spec if missing)")
    embodiment: str = param("sim_panda", "embodiment spec name or YAML path")
    task: str = param("lift", "task name written to each episode's metadata")
    sim_task: bool = param(
        True, "the task is a sim.tasks task: add its privileged object_state to the spec"
    )
    source: str = param(
        "teleop",
        "episode source metadata: teleop, policy or scripted; policy labels each step from the "
        "teleop engaged flag (a correction session)",
    )
    operator: str = param("", "operator name written to each episode's metadata")
    cameras: str = param("all", "comma-separated spec cameras to record; all; or none")
    image_transport: str = param(
        "raw", "raw (Image) or compressed (<camera_topic>/compressed, decoded by the writer)"
    )
    image_queue_depth: int = param(
        30,
        "frames each camera subscription keeps while the node is busy (best effort); the "
        "sensor-data QoS's 5 are 0.17 s at 30 fps, fewer than a loaded machine stalls",
    )
    image_height: int = param(0, "stored frame height, px; 0: the spec's")
    image_width: int = param(0, "stored frame width, px; 0: the spec's")
    max_age_s: float = param(
        0.15, "an observation older than this at a tick is a gap (3 periods at 20 Hz)"
    )
    lag_s: float = param(
        0.2, "ticks are assembled this late so late messages (camera transport) still count"
    )
    action_offset_s: float = param(
        0.025, "a command up to this long after a tick belongs to it (half a period at 20 Hz)"
    )
    future_stamp_tolerance_s: float = param(
        0.5, "a message stamped more than this after its arrival is rejected (clock ahead), s"
    )
    auto_start: bool = param(False, "start an episode as soon as the node is up")

    def __post_init__(self) -> None:
        if not self.store:
            raise ValueError("store is required: -p store:=/path/to/demos.zarr")
        if self.source not in ("teleop", "policy", "scripted"):
            raise ValueError(f"source {self.source!r}: use teleop, policy or scripted")
        if self.max_age_s <= 0 or self.lag_s < 0 or self.action_offset_s < 0:
            raise ValueError("max_age_s must be > 0, lag_s and action_offset_s >= 0")
        if self.future_stamp_tolerance_s < 0:
            raise ValueError("future_stamp_tolerance_s must be >= 0")
        if self.action_offset_s > self.lag_s:
            raise ValueError("action_offset_s must not exceed lag_s (the tick would be final)")
        if self.image_transport not in ("raw", "compressed"):
            raise ValueError(f"image_transport {self.image_transport!r}: use raw or compressed")
        if self.image_queue_depth < 1:
            raise ValueError("image_queue_depth must be >= 1")
        if "{camera}" not in self.camera_topic:
            raise ValueError("camera_topic must contain {camera}")


def recorder_spec(p: RecorderParams) -> Embodiment:
    spec = load_embodiment(p.embodiment)
    if p.cameras == "none":
        spec = spec.with_cameras([], None)
    elif p.cameras != "all":
        spec = spec.with_cameras([c.strip() for c in p.cameras.split(",") if c.strip()], None)
    if p.image_height or p.image_width:
        if not (p.image_height and p.image_width):
            raise UserError("set both image_height and image_width (or neither)")
        spec = spec.with_cameras(None, (p.image_height, p.image_width))
    if p.sim_task:
        from sim.tasks import get_task

        spec = get_task(p.task).embodiment_for(spec)
    return spec


class RecorderNode(Node):
    def __init__(self) -> None:
        super().__init__("recorder")
        p = self.p = declare_params(self, RecorderParams)
        spec = self.spec = recorder_spec(p)
        self.store = DemoStore.open_or_create(p.store, spec)
        obs = spec.observation
        fingers = spec.finger_joints(p.gripper_joints) if "gripper_pos" in obs else []
        self.joint_names = rosmsg.joint_state_names(spec, fingers)
        self.merge = JointStateMerge(p.max_age_s)
        self.stamps = StampCheck(p.future_stamp_tolerance_s)
        self.rejected_non_finite = 0
        self.vel_noted = False
        self.streams: dict[str, Stream] = {"joint_states": Stream("joint_states", p.max_age_s)}
        self.create_subscription(JointState, p.joint_states_topic, self.on_joint_states, 50)
        if "eef_pos" in obs:
            self.streams["eef_pose"] = Stream("eef_pose", p.max_age_s)
            self.create_subscription(PoseStamped, p.eef_pose_topic, self.on_eef_pose, 10)
        if "object_state" in obs:
            self.streams["object_state"] = Stream("object_state", p.max_age_s)
            self.create_subscription(Float64MultiArray, p.object_state_topic, self.on_object, 10)
        # sensor-data QoS (best effort, volatile) with a deeper history: frames that arrive
        # while the executor is busy wait instead of overwriting each other
        image_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=p.image_queue_depth,
            reliability=ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.VOLATILE,
        )
        for cam in spec.camera_names:
            self.streams[cam] = Stream(cam, p.max_age_s)
            topic = p.camera_topic.format(camera=cam)
            if p.image_transport == "compressed":
                self.create_subscription(
                    CompressedImage,
                    f"{topic}/compressed",
                    lambda m, c=cam: self.on_compressed(c, m),
                    image_qos,
                )
            else:
                self.create_subscription(
                    Image, topic, lambda m, c=cam: self.on_image(c, m), image_qos
                )
        missing = set(obs) - set(rosmsg.TOPIC_KEYS)
        if missing:
            raise UserError(f"spec {spec.name}: no topic records observation(s) {sorted(missing)}")
        # the action and the engaged flag hold their last value: a controller keeps its target
        self.streams["action"] = Stream("action", None, offset=p.action_offset_s)
        self.streams["engaged"] = Stream("engaged", 0.5)  # 0.5 s: the deadman's timeout
        self.command = np.full(spec.action_dim, np.nan)
        self.command[-1] = spec.gripper.open_command
        self.create_subscription(JointTrajectory, p.trajectory_topic, self.on_trajectory, 10)
        self.create_subscription(Float64MultiArray, p.forward_topic, self.on_forward, 10)
        self.create_subscription(Float64MultiArray, p.gripper_topic, self.on_gripper, 10)
        self.create_subscription(Bool, p.engaged_topic, self.on_engaged, 10)
        open_cmd = spec.gripper.open_command
        self.rec = EpisodeRecorder(
            self.store,
            self.streams,
            {c.name: (c.height, c.width) for c in spec.cameras},
            {"task": p.task, "source": p.source, "operator": p.operator, "seed": None},
            optional={
                "action": lambda s: {"action": np.append(s["joint_pos"], open_cmd)},
                "engaged": {"intervention": np.array(False)},
            },
            logger=self.get_logger(),
            label_rollouts=p.source == "policy",
        )
        self.create_service(Trigger, "~/start", self.srv_start)
        self.create_service(Trigger, "~/stop", self.srv_stop)
        self.create_service(Trigger, "~/discard", self.srv_discard)
        self.create_service(SetBool, "~/mark_success", self.srv_mark_success)
        self.dt = spec.dt
        self.next_tick = math.nan
        self.skipped_ticks = 0
        self.timer = self.create_timer(self.dt, self.on_timer)
        self.diag = Diagnostics(self, self.report)
        if p.auto_start:
            self.rec.start()
        self.get_logger().info(f"recording {sorted(self.streams)} into {p.store}")

    # ---- callbacks: convert and push, never block ------------------------------------------

    def _non_finite(self, name: str, values: dict, hint: str = "") -> bool:
        """True (reported, counted) when values hold NaN/inf: such a message is not recorded."""
        bad = non_finite_keys(values)
        if bad:
            self.rejected_non_finite += 1
            self.diag.problem(f"{name}: NaN/inf in {bad}{hint}; not recorded")
        return bool(bad)

    def _push(self, name: str, stamp: object, values: dict, received: float) -> None:
        """Push a stamped message's values at its checked time; report and drop messages
        stamped after their arrival and values holding NaN/inf."""
        if self._non_finite(name, values):
            return
        try:
            t = self.stamps.time_of(stamp_to_sec(stamp), received, name)
        except ValueError as e:
            self.diag.problem(f"{name}: {e}")
            return
        self.streams[name].push(t, values, received)

    def on_joint_states(self, msg: JointState) -> None:
        received, topic = now_sec(self), self.p.joint_states_topic
        try:
            s = merge_joint_state(self.merge, self.stamps, msg, received, topic, self.joint_names)
        except ValueError as e:
            self.diag.problem(f"{topic}: {e}")
            return
        values = rosmsg.joint_state_keys(self.spec, s.positions, s.velocities)
        if self.merge.estimated and not self.vel_noted:
            self.vel_noted = True
            self.get_logger().warning(self.velocity_note())
        hint = (
            f" (the driver sends no velocity, and no earlier message within "
            f"{self.p.max_age_s} s gives one from positions)"
        )
        if self._non_finite(topic, values, hint if np.isnan(s.velocities).any() else ""):
            return
        # the merged sample's time: its newest part (every part is within max_age_s of it)
        self.streams["joint_states"].push(s.newest, values, received)

    def velocity_note(self) -> str:
        return (
            f"joint_vel of {sorted(self.merge.estimated)} is estimated from successive "
            f"positions: {self.p.joint_states_topic} carries no finite velocities for them"
        )

    def on_eef_pose(self, msg: PoseStamped) -> None:
        self._push("eef_pose", msg.header.stamp, rosmsg.pose_keys(msg), now_sec(self))

    def on_object(self, msg: Float64MultiArray) -> None:
        n = self.spec.observation["object_state"][0]
        try:
            object_state = rosmsg.float_values(msg, n, "object_state").astype(np.float32)
        except ValueError as e:
            self.diag.problem(str(e))
            return
        t = now_sec(self)  # Float64MultiArray has no header: stamped on arrival
        self.streams["object_state"].push(t, {"object_state": object_state}, t)

    def on_image(self, cam: str, msg: Image) -> None:
        try:
            rgb = decode_image(msg)
        except ImageError as e:
            self.diag.problem(f"{cam}: {e}")
            return
        self._push(cam, msg.header.stamp, {cam: rgb}, now_sec(self))

    def on_compressed(self, cam: str, msg: CompressedImage) -> None:
        try:
            check_compressed(msg.data)
        except ImageError as e:
            self.diag.problem(f"{cam}: {e}")
            return
        self._push(cam, msg.header.stamp, {cam: EncodedFrame(msg.data, msg.format)}, now_sec(self))

    def _push_command(self) -> None:
        if np.all(np.isfinite(self.command)):
            t = now_sec(self)
            action = {"action": self.command.astype(np.float32)}
            self.streams["action"].push(t, action, t)

    def on_forward(self, msg: Float64MultiArray) -> None:
        try:
            self.command[:-1] = rosmsg.float_values(msg, self.spec.n_joints, self.p.forward_topic)
        except ValueError as e:
            self.diag.problem(str(e))
            return
        self._push_command()

    def on_trajectory(self, msg: JointTrajectory) -> None:
        origin = np.zeros(self.spec.n_joints)
        try:
            traj = trajectory_from_msg(msg, self.spec.joint_names, origin, now_sec(self))
        except ValueError as e:
            self.diag.problem(f"{self.p.trajectory_topic}: {e}")
            return
        self.command[:-1] = traj.positions[-1]  # the goal the controller is sent toward
        self._push_command()

    def on_gripper(self, msg: Float64MultiArray) -> None:
        try:
            self.command[-1] = rosmsg.float_values(msg, 1, self.p.gripper_topic)[0]
        except ValueError as e:
            self.diag.problem(str(e))
            return
        self._push_command()

    def on_engaged(self, msg: Bool) -> None:
        t = now_sec(self)
        self.streams["engaged"].push(t, rosmsg.intervention_keys(msg), t)

    # ---- ticks -----------------------------------------------------------------------------

    def on_timer(self) -> None:
        due = now_sec(self) - self.p.lag_s
        if math.isnan(self.next_tick):
            self.next_tick = math.floor(due / self.dt) * self.dt
        if due - self.next_tick > 1.0:  # stalled for over a second: skip, do not spiral
            skipped = int((due - self.next_tick) / self.dt)
            self.skipped_ticks += skipped
            self.next_tick += skipped * self.dt
        while self.next_tick <= due:
            self.rec.tick(self.next_tick)
            self.next_tick += self.dt

    # ---- services --------------------------------------------------------------------------

    def srv_start(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        message = self.rec.start(at=now_sec(self))
        res.success, res.message = message != "already recording", message
        self.get_logger().info(res.message)
        return res

    def srv_stop(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        # ticks of the last lag_s are not assembled yet (frames in flight): the episode ends
        # with the tick of this request
        res.success, res.message = self.rec.stop(at=now_sec(self))
        if self.merge.estimated and res.success:
            res.message += f"; {self.velocity_note()}"
        if not res.success:
            recent = "; ".join(self.diag.recent())
            res.message += f" (recent problems: {recent})" if recent else ""
        log = self.get_logger()
        (log.info if res.success else log.error)(f"~/stop: {res.message}")
        return res

    def srv_discard(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        res.success, res.message = self.rec.discard()
        return res

    def srv_mark_success(self, req: SetBool.Request, res: SetBool.Response) -> SetBool.Response:
        res.success, res.message = self.rec.mark_success(req.data)
        return res

    def report(self) -> tuple[int, str, dict]:
        values: dict = {
            "hardware_id": self.p.store,
            "recording": self.rec.recording,
            "episode_steps": self.rec.steps,
            "episodes_written": self.rec.episodes_written,
            "write_queue_max": self.rec.queue_max,
            "dropped_steps": self.rec.dropped_steps,
            "skipped_ticks": self.skipped_ticks,
            "rejected_non_finite": self.rejected_non_finite,
            **{f"{k}.rejected_stamps": v for k, v in self.stamps.rejected.items()},
        }
        for name, stream in self.streams.items():
            for k, v in stream.stats.summary().items():
                values[f"{name}.{k}"] = v
        if self.rec.write_errors:
            return ERROR, f"store write failed: {self.rec.write_errors[-1]}", values
        return OK, "recording" if self.rec.recording else "idle", values

    def close(self) -> None:
        self.rec.close()


def main(args: list[str] | None = None) -> None:
    run_node(RecorderNode, args, params=RecorderParams, doc=__doc__)


if __name__ == "__main__":
    main()
