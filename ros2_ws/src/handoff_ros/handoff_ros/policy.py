"""policy node: a checkpoint driving an arm through the safety filter.

A thin wrapper around :class:`policies.runner.PolicyRunner`, the object ``handoff-eval`` runs
too: each control tick (a timer at ``control_hz``) hands the newest complete observation to
the runner, which keeps the history, schedules chunk inference on its worker thread, executes
chunks by ``scheme`` (sync, async, ensemble, rtc), passes every action through the safety
filter (:mod:`policies.safety`) and returns the command this tick publishes. The next chunk is
started after the command went out, so inference overlaps the arm's motion; a slow chunk shows
up as held ticks (``held_ticks`` on /diagnostics), never as a stalled timer.
``inference_delay`` -1 (default) uses each chunk from the first tick it is ready; d >= 1 uses it
exactly d ticks after its observation (what ``handoff-eval --inference-delay d`` rehearses);
0 waits at most ``inference_budget`` of a period for it within the tick.

A managed (lifecycle) node: configure loads and checks the checkpoint, activate starts
commanding, deactivate holds (``~/enable`` true/false activates/deactivates it for operators);
policy.launch.py drives the transitions, a node started by hand configures itself.

Before the first command the node checks the checkpoint against the live arm: every joint it
was trained on must be in ``/joint_states``, every camera it consumes must publish frames of
its aspect ratio, and a policy using privileged sim state refuses to run with ``robot:=real``.

Topics: commands on the controller topic (``forward``: Float64MultiArray, or
``joint_trajectory``: one point at ``time_from_start`` = one period) plus the gripper command;
``~/inference_ms`` (Float64, per chunk), ``~/obs_age_ms`` (Float64: time of the joint state
the command's chunk was computed from -> command publish) and ``~/predicted_chunk``
(JointTrajectory, every chunk the runner adopts, RTC's frozen prefix included).

The staleness watchdog cannot be fooled by a bad clock: a joint state's time is the earlier of
its header stamp and its arrival, a message stamped more than ``future_stamp_tolerance_s``
after its arrival is rejected (``rejected_stamps`` on /diagnostics), and so is a NaN/inf
observation (``rejected_non_finite``); the policy never sees either, and the arm holds once the
last good joint state is ``stale_after_s`` old. Joint states are merged by name across
messages (an arm and its gripper may publish separately); their age is the oldest part's.
``/estop`` (Bool, True latches a hold), ``~/enable`` (SetBool), ``~/clear_estop`` and
``~/reset`` (Trigger: new episode, clears the policy's history). While a teleop operator is
engaged (``/teleop/engaged``) the policy sends nothing: the human has the arm, and the
recorder marks those steps as interventions; after release it resumes from the measured joints.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from std_msgs.msg import Bool, Float64, Float64MultiArray
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from data.errors import UserError
from handoff_ros.commands import forward_msg, trajectory_msg
from handoff_ros.observations import LiveObservation
from handoff_ros.rosutil import (
    ERROR,
    OK,
    WARN,
    CommandTopics,
    Diagnostics,
    ObservationTopics,
    RealtimeParams,
    declare_params,
    now_sec,
    on_dynamic_params,
    param,
    realtime_thread,
    run_node,
)
from policies.runner import SCHEMES, PolicyRunner, RunnerConfig
from policies.safety import SafetyConfig, SafetyFilter

CONTROLLERS = ("forward", "joint_trajectory")


@dataclass
class PolicyParams(CommandTopics, ObservationTopics, RealtimeParams):
    checkpoint: str = param("", "checkpoint directory or run directory (its best/ or last/)")
    robot: str = param("real", "sim or real: sim starts enabled and may use privileged state")
    controller: str = param("forward", "forward (Float64MultiArray) or joint_trajectory")
    control_hz: float = param(0.0, "command rate, Hz; 0: the checkpoint spec's control_hz")
    scheme: str = param(
        "auto",
        "chunk execution: sync, async, ensemble (ACT's temporal ensembling), rtc (real-time "
        "chunking); auto: the checkpoint's default (README, deployment)",
    )
    inference_delay: int = param(
        -1,
        "control ticks from an observation to its chunk's first usable action: -1 as soon as "
        "the worker is done; d >= 1 exactly d (as handoff-eval --inference-delay d); 0: wait "
        "up to inference_budget within the tick",
    )
    execute_steps: int = param(
        0, "actions executed per chunk (sync/async/rtc); 0: Ta, for rtc with a delay 1 (re-plan)"
    )
    inference_budget: float = param(
        0.6, "inference_delay 0: fraction of a period the tick waits for its chunk, then holds"
    )
    soft_steps: int = param(
        -1,
        "rtc: actions after the frozen d pulled towards the current chunk by the soft mask; "
        "-1: all the current chunk still covers (as handoff-eval --soft-steps)",
    )
    sampling_steps: int = param(
        0,
        "diffusion: denoising steps per chunk; 0: the checkpoint's own (e.g. 10 DDIM); fewer "
        "steps, a shorter chunk time and a smaller inference_delay (as handoff-eval "
        "--sampling-steps)",
    )
    device: str = param("cpu", "torch device for inference (cpu, cuda)")
    autostart: bool = param(
        True,
        "configure at start, and on robot:=sim activate too (no lifecycle manager needed); "
        "the launch files set it false and drive the lifecycle transitions themselves",
    )
    torch_threads: int = param(1, "torch intra-op threads; 1 keeps a core free for DDS")
    estop_topic: str = param("/estop", "std_msgs/Bool; True latches a hold until ~/clear_estop")
    max_step_delta: float = param(
        0.05,
        "safety: max joint target change per tick, rad; settable while running within "
        "(0, max velocity_limit * spec period]",
        dynamic=True,
    )
    velocity_scale: float = param(
        0.5,
        "safety: fraction of the spec's velocity limits; settable while running in (0, 1]",
        dynamic=True,
    )
    limit_margin: float = param(0.0, "safety: shrink the spec's position limits by this, rad")
    stale_after_s: float = param(
        0.25,
        "safety: hold when joint_states are older than this, s (age by header stamp or arrival, "
        "whichever is older; also the window within which split joint_states messages merge)",
    )
    future_stamp_tolerance_s: float = param(
        0.5,
        "safety: a message stamped more than this after its arrival is rejected (a publisher "
        "clock ahead of this one) and counted on /diagnostics as rejected_stamps, s",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.checkpoint:
            raise ValueError("checkpoint is required: -p checkpoint:=runs/NAME")
        if self.robot not in ("sim", "real"):
            raise ValueError(f"robot {self.robot!r}: use sim or real")
        if self.controller not in CONTROLLERS:
            raise ValueError(f"controller {self.controller!r}: use one of {CONTROLLERS}")
        if self.control_hz < 0:
            raise ValueError("control_hz must be >= 0 (0 = the checkpoint's rate)")
        if self.scheme not in ("auto", *SCHEMES):
            raise ValueError(f"scheme {self.scheme!r}: use auto or one of {SCHEMES}")
        self.runner_config()  # validate the runner and safety values here, with names
        SafetyConfig(**self.safety_kwargs())

    def runner_config(self) -> RunnerConfig:
        return RunnerConfig(
            scheme=self.scheme,
            delay=self.inference_delay,
            execute_steps=self.execute_steps,
            inference_budget=self.inference_budget,
            soft_steps=self.soft_steps,
            sampling_steps=self.sampling_steps,
        )

    def safety_kwargs(self) -> dict[str, Any]:
        return {
            "require_enable": self.robot == "real",
            "max_step_delta": self.max_step_delta,
            "velocity_scale": self.velocity_scale,
            "limit_margin": self.limit_margin,
            "stale_after_s": self.stale_after_s,
            "future_stamp_tolerance_s": self.future_stamp_tolerance_s,
        }


class PolicyNode(LifecycleNode):
    """A managed node. configure: load the checkpoint, check it against ``robot`` and create
    the topics, services and the control timer; activate: open the enable gate (commands
    flow); deactivate: close it (nothing is sent: the controller holds its last target).
    ``~/enable`` true/false is the operators' way to activate/deactivate. cleanup is refused:
    restart the node to load another checkpoint. With ``autostart`` the node configures itself
    (and activates on robot:=sim); the launch files drive the transitions instead."""

    def __init__(self) -> None:
        super().__init__("policy")
        self.p = declare_params(self, PolicyParams)
        self.configured = False
        on_dynamic_params(self, PolicyParams, self._retune)  # ros2 param set, bounded
        self.configure_error = ""
        if self.p.autostart:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise UserError(self.configure_error)
            if self.p.robot == "sim":
                self.trigger_activate()

    # ---- lifecycle transitions -------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as e:  # rclpy would turn it into a silent ERROR transition
            self.configure_error = str(e) if isinstance(e, UserError) else repr(e)
            if not self.p.autostart:  # with autostart, main() prints it as one error: line
                self.get_logger().error(f"configure failed: {self.configure_error}")
            return TransitionCallbackReturn.FAILURE
        self.configured = True
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        ok, message = self.safety.set_enabled(True)
        if not ok:
            self.get_logger().error(f"activate refused: {message}")
            return TransitionCallbackReturn.FAILURE
        self.obs.clear()  # a fresh start: no observation, history or chunk from before
        self.runner.reset()
        self.get_logger().info("active: commanding the arm")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.safety.set_enabled(False)
        self.get_logger().info("inactive: holding (no commands sent)")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error("cleanup refused: restart the node to load another checkpoint")
        return TransitionCallbackReturn.FAILURE

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.configured:
            self.safety.set_enabled(False)
        return TransitionCallbackReturn.SUCCESS

    def lifecycle_state(self) -> str:
        return self._state_machine.current_state[1]

    def _retune(self, changes: dict[str, Any]) -> None:
        """Safety parameters set while running (SafetyFilter.retune: bounded, all or none)."""
        if not self.configured:
            raise ValueError("the node is not configured yet: set it in the parameter file")
        self.safety.retune(changes)

    def _configure(self) -> None:
        p = self.p
        import torch

        from policies import load

        if p.torch_threads > 0:
            torch.set_num_threads(p.torch_threads)
        # The inference thread runs Python between torch ops; CPython hands the GIL to a
        # waiting thread only every switch interval (5 ms by default), which the control
        # timer would feel as jitter. 0.5 ms keeps the timer on time for a small cost.
        sys.setswitchinterval(5e-4)
        self.policy = load(p.checkpoint, device=p.device)
        spec = self.spec = self.policy.embodiment
        privileged = sorted(set(self.policy.input_keys) & set(spec.privileged))
        if privileged and p.robot == "real":
            raise UserError(
                f"checkpoint {p.checkpoint} reads simulator-only state {privileged} (it was "
                f"trained with handoff-train --privileged); a real arm has no such signal: "
                f"retrain without --privileged, on cameras and the arm's own state"
            )
        self.dt = 1.0 / (p.control_hz or spec.control_hz)
        self.safety = SafetyFilter(spec, SafetyConfig(**p.safety_kwargs()))
        self.runner = PolicyRunner(
            self.policy,
            p.runner_config(),
            self.safety,
            threaded=True,
            period_s=self.dt,
            on_chunk=[self._on_chunk],
        )
        self.diag = Diagnostics(self, self.report)
        self.obs = LiveObservation(
            self,
            spec,
            self.policy.input_keys,
            self.diag.problem,
            joint_states_topic=p.joint_states_topic,
            gripper_joints=spec.finger_joints(p.gripper_joints),
            camera_topic=p.camera_topic,
            eef_pose_topic=p.eef_pose_topic,
            object_state_topic=p.object_state_topic,
            merge_window_s=p.stale_after_s,
            future_stamp_tolerance_s=p.future_stamp_tolerance_s,
        )
        if p.controller == "forward":
            self.pub_arm = self.create_publisher(Float64MultiArray, p.forward_topic, 10)
        else:
            self.pub_arm = self.create_publisher(JointTrajectory, p.trajectory_topic, 10)
        self.pub_grip = self.create_publisher(Float64MultiArray, p.gripper_topic, 10)
        self.pub_latency = self.create_publisher(Float64, "~/inference_ms", 10)
        self.pub_chunk = self.create_publisher(JointTrajectory, "~/predicted_chunk", 10)
        self.pub_obs_age = self.create_publisher(Float64, "~/obs_age_ms", 10)
        self.create_subscription(Bool, p.estop_topic, self.on_estop, 10)
        self.create_subscription(Bool, p.engaged_topic, self.on_engaged, 10)
        self.operator_time = -np.inf  # last time a teleop operator was engaged
        self.yielding = False
        self.create_service(SetBool, "~/enable", self.srv_enable)
        self.create_service(Trigger, "~/clear_estop", self.srv_clear_estop)
        self.create_service(Trigger, "~/reset", self.srv_reset)
        self.mismatch = ""
        self.ticks = self.sent = self.yielded = 0
        self.scheduling = ""  # set by the first tick, on the thread that runs them
        self.obs_stamps: dict[int, float] = {}  # runner tick -> joint-state time of its obs
        self.sent_at: list[float] = []  # monotonic send times of the last commands
        self.safety.set_enabled(False)  # the gate opens on activate
        self.timer = self.create_timer(self.dt, self.tick)
        self.get_logger().info(
            f"{type(self.policy).__name__} for {spec.name} consumes {self.policy.input_keys}; "
            f"{p.controller} at {1 / self.dt:g} Hz, {self.runner.scheme} chunk execution; "
            f"inactive until activated (or ~/enable)"
        )

    # ---- checks ----------------------------------------------------------------------------

    def _on_chunk(self, chunk: np.ndarray, tick: int, ms: float) -> None:
        """Every chunk the runner adopts (H, Da), and its inference time: for plotting."""
        self.pub_chunk.publish(trajectory_msg(self.spec.joint_names, chunk[:, :-1], self.dt))
        self.pub_latency.publish(Float64(data=ms))

    def check_live_arm(self) -> str:
        """Empty when the live topics match the checkpoint; else what is wrong."""
        seen = self.obs.joint_names_seen
        if seen:
            missing = [n for n in self.spec.joint_names if n not in seen]
            if missing:
                return (
                    f"checkpoint {self.spec.name} was trained on joints {missing} that "
                    f"/joint_states does not publish (it has {seen})"
                )
        return ""

    # ---- the control tick ------------------------------------------------------------------

    def tick(self) -> None:
        if not self.ticks:  # on the executor's thread (the inference worker resets its own)
            self.scheduling = realtime_thread(self, self.p.realtime_priority)
        self.ticks += 1
        now = now_sec(self)
        q, stamp = self.obs.joints()
        if q is not None:
            self.safety.observe(q, stamp)
        self.mismatch = self.check_live_arm()
        if self.mismatch:
            return  # never command an arm the checkpoint was not trained for
        if now - self.operator_time < 0.5:  # 0.5 s: the teleop deadman's timeout
            self.yielded += 1
            self.yielding = True
            return  # a human intervention: the teleop node commands the arm, not the policy
        if self.yielding:  # the operator let go: start afresh from where they left the arm
            self.yielding = False
            self.runner.reset()  # also re-anchors the safety filter at the measured joints
        if not self.safety.enabled or self.safety.estopped:
            # no inference while commands cannot go out; a latched e-stop holds the arm
            hold = self.safety.hold_target()
            if hold is not None:
                result = self.safety.filter(hold, now)
                if result.command is not None:
                    self._publish(result.command)
            return
        obs, stamp = self.obs.snapshot()
        if obs is not None:
            self.obs_stamps[self.runner.k] = stamp
            self.obs_stamps.pop(self.runner.k - 4 * self.runner.H, None)
        self.runner.tick(obs, now, send=self._publish)
        source = self.obs_stamps.get(self.runner.source_tick)
        if source is not None and self.runner.last_action_sent:
            self.pub_obs_age.publish(Float64(data=(now_sec(self) - source) * 1e3))

    def _publish(self, command: np.ndarray) -> None:
        self.sent_at.append(time.monotonic())
        del self.sent_at[:-1000]
        if self.p.controller == "forward":
            self.pub_arm.publish(forward_msg(command[:-1]))
        else:
            self.pub_arm.publish(trajectory_msg(self.spec.joint_names, command[None, :-1], self.dt))
        self.pub_grip.publish(forward_msg(command[-1:]))
        self.sent += 1

    # ---- operator interface ----------------------------------------------------------------

    def on_engaged(self, msg: Bool) -> None:
        """The operator's deadman: yield while engaged; an explicit release hands the arm back
        at once (as the recorder labels it), silence only after the deadman's 0.5 s."""
        self.operator_time = now_sec(self) if msg.data else -np.inf

    def on_estop(self, msg: Bool) -> None:
        if msg.data:
            self.safety.estop(f"{self.p.estop_topic} pressed")

    def srv_enable(self, req: SetBool.Request, res: SetBool.Response) -> SetBool.Response:
        """The operators' gate: true activates the node, false deactivates it."""
        if req.data and self.safety.estopped:
            res.success, res.message = self.safety.set_enabled(True)  # refused: says why
            return res
        if req.data != (self.lifecycle_state() == "active"):
            self.trigger_activate() if req.data else self.trigger_deactivate()
        res.success = self.lifecycle_state() == ("active" if req.data else "inactive")
        res.message = ("enabled" if req.data else "disabled") if res.success else "refused"
        return res

    def srv_clear_estop(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        self.safety.clear_estop()
        if not self.safety.enabled and self.lifecycle_state() == "active":
            self.trigger_deactivate()  # a real arm: the gate closed; ~/enable activates again
        res.success = True
        res.message = "e-stop cleared" + (
            "; call ~/enable to resume" if self.safety.config.require_enable else ""
        )
        return res

    def srv_reset(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        self.obs.clear()  # a new episode: wait for observations made after this call
        self.runner.reset()
        res.success, res.message = True, "policy history cleared"
        return res

    def report(self) -> tuple[int, str, dict]:
        ms = np.asarray(self.runner.inference_ms or [0.0])
        st = self.runner.stats
        values = {
            "hardware_id": self.p.checkpoint,
            "ticks": self.ticks,
            "scheduling": self.scheduling,
            "commands_sent": self.sent,
            "scheme": self.runner.scheme,
            "inference_delay_ticks": self.runner.expected_delay,
            "sampling_steps": getattr(self.policy.config, "num_inference_steps", 0),
            "held_ticks": st.held,
            "chunk_boundary_jump_rad": round(st.boundary_jump, 4),
            "chunk_inside_jump_rad": round(st.inchunk_jump, 4),
            "yielded_to_operator": self.yielded,
            "inference_ms_p50": round(float(np.percentile(ms, 50)), 2),
            "inference_ms_p99": round(float(np.percentile(ms, 99)), 2),
            **self._period_error(),
            "waiting_for": ",".join(self.obs.missing()),
            "rejected_stamps": sum(self.obs.stamps.rejected.values()),
            "rejected_non_finite": self.obs.rejected_non_finite,
            **self.safety.status(),
        }
        if self.mismatch:
            return ERROR, self.mismatch, values
        if self.safety.estopped:
            return ERROR, f"e-stop latched: {self.safety.estop_reason}", values
        if not self.safety.enabled:
            return WARN, "disabled: call ~/enable", values
        if self.obs.missing():
            return WARN, f"waiting for {self.obs.missing()}", values
        return OK, "running", values

    def _period_error(self) -> dict[str, float]:
        """p50/p99 of |interval between consecutive commands - period| over the last ones
        (gaps of held or yielded ticks excluded): how evenly commands leave this node."""
        gaps = np.diff(self.sent_at)
        err = np.abs(gaps[gaps < 1.5 * self.dt] - self.dt) * 1e3
        if not len(err):
            return {}
        return {
            "period_error_ms_p50": round(float(np.percentile(err, 50)), 3),
            "period_error_ms_p99": round(float(np.percentile(err, 99)), 3),
        }

    def close(self) -> None:
        if self.configured:
            self.runner.close()


def main(args: list[str] | None = None) -> None:
    run_node(PolicyNode, args, params=PolicyParams, doc=__doc__)


if __name__ == "__main__":
    main()
