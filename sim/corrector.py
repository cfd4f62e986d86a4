"""A scripted corrector: a stand-in for the person who watches a policy and takes over.

**This is not a person.** It replaces the operator of a real correction session (policy +
teleop + recorder, ``launch/correct.launch.py``) so that learning from interventions
(HG-DAgger, Sirius, RaC) can be developed and measured in simulation. It knows what a person
would see (where the gripper and the object are, whether the arm moves) and drives with the
scripted expert of sim/experts.py, which reads the privileged object pose.

It watches the rollout one control step at a time and takes over when the policy goes wrong:

- **stall**: over ``stall_steps`` (20 steps, 1 s at 20 Hz) the end effector got less than
  ``stall_dist`` (1 cm) further along the expert's path through the current sub-task (below).
  The expert moves along it at 0.12-0.4 m/s, 12-40 cm a second, and pauses only to close the
  gripper (6-9 steps), which starts the next sub-task; a policy that stands still, or jitters
  in place, has stopped doing the task;
- **drift**: the end effector is more than ``drift_dist`` (10 cm) from the path the expert
  would take through the current sub-task (straight segments from where the sub-task began
  through the expert's waypoints, planned from the state at that moment). The expert's hover
  heights vary by 6 cm across episodes, so 10 cm is clearly off any demonstrated path;
- **drop**: an object held for ``hold_steps`` steps (gripper commanded closed, object within
  ``hold_dist`` of the gripper) ends up further than ``drop_dist`` from it, and the gripper
  let go of it away from where the expert would (more than ``release_tol`` from the release
  waypoint of its carry).

Sub-tasks follow the experts' plans: **pick** (the ``PICK_WAYPOINTS`` waypoints of
``sim.experts._pick``: hover, descend, close) and then **place** (carry, release, retreat; a
lift task's place is the lift). Two styles (``STYLES``):

- ``hg-dagger`` (Kelly et al. 2019): take over in place: the expert re-plans from the state
  the policy left (skipping the pick when the object is held) and drives until the sub-task it
  took over is done (back on track) or ``handback_steps`` (2 s) passed, then hands back; the
  runner is reset and the policy resumes from the measured state (as the ROS policy node does
  after a teleop release);
- ``rac`` (RaC, "Robot Learning for Long-Horizon Tasks by Scaling Recovery and Correction"):
  recover, then correct: the expert's re-planned first waypoint backs off to a state every
  demonstration passes through (hover above the object with the gripper open; or, holding it,
  the carry height), then completes the current sub-task; the episode ends there.

Steps the corrector drives are flagged ``intervention``; after the episode, data.store's
:func:`~data.store.label_rollout` labels them and the pre-intervention window before each
takeover. The policy runs through the policy runner (the ``make_runner`` hook; ``sim`` never
imports ``policies``): anything with ``tick(obs, now, joints=...) -> result.command`` and
``reset()``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data.errors import UserError
from data.store import PRE_INTERVENTION_STEPS, label_rollout
from sim.experts import CLOSED, EXPERTS, ScriptedExpert, Waypoint
from sim.tasks import SimTask

STYLES = ("hg-dagger", "rac")
PICK_WAYPOINTS = 3  # sim.experts._pick yields hover, grasp (open), grasp (close)
REL = slice(7, 10)  # object_state of object 0: position relative to the gripper (m)


@dataclass
class CorrectorConfig:
    """Thresholds of the stand-in operator (see the module docstring for their reasons).

    Distances in metres, durations in control steps (20 Hz on the simulated Panda).
    """

    style: str = "hg-dagger"
    stall_steps: int = 20
    stall_dist: float = 0.01
    drift_dist: float = 0.10
    hold_dist: float = 0.07  # the square nut's centre is 5.4 cm from its handle grasp point
    hold_steps: int = 3
    drop_dist: float = 0.10
    release_tol: float = 0.05
    handback_steps: int = 40
    warmup_steps: int = 10  # no takeover while the policy's first chunk starts
    max_takeovers: int = 5  # then the corrector finishes the episode itself
    pre_steps: int = PRE_INTERVENTION_STEPS

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise UserError(f"corrector style {self.style!r}: choose one of {', '.join(STYLES)}")
        for key in ("stall_steps", "hold_steps", "handback_steps", "max_takeovers"):
            if getattr(self, key) < 1:
                raise UserError(f"corrector {key} must be >= 1")
        for key in ("stall_dist", "drift_dist", "hold_dist", "drop_dist", "release_tol"):
            if getattr(self, key) <= 0:
                raise UserError(f"corrector {key} must be positive (metres)")
        if self.warmup_steps < 0 or self.pre_steps < 0:
            raise UserError("corrector warmup_steps and pre_steps must be >= 0")


def path_distance(point: np.ndarray, path: np.ndarray) -> tuple[float, float]:
    """(distance (m) from ``point`` (3,) to the polyline through ``path`` (K, 3), K >= 1;
    length (m) of the polyline left after the point's nearest point on it)."""
    if len(path) == 1:
        return float(np.linalg.norm(point - path[0])), 0.0
    a, b = path[:-1], path[1:]  # (K-1, 3) segments
    ab = b - a
    t = np.clip(((point - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0.0, 1.0)
    near = a + t[:, None] * ab  # (K-1, 3) nearest point on each segment
    dist = np.linalg.norm(near - point, axis=1)
    i = int(dist.argmin())
    lengths = np.linalg.norm(ab, axis=1)
    return float(dist[i]), float((1 - t[i]) * lengths[i] + lengths[i + 1 :].sum())


class PlanningExpert(ScriptedExpert):
    """The task's scripted expert, planned from a given state and sub-task.

    :meth:`start` begins its plan from ``obs`` (the expert's own reset plans from the first
    observation it sees, which is the episode start); with ``skip_pick`` the pick waypoints are
    dropped unexecuted (the object is already held; the place is planned lazily from the
    state it reaches). ``pulled`` counts waypoints taken up; ``finished`` is set when the plan
    is exhausted.
    """

    def start(self, obs: dict[str, np.ndarray], seed: int, skip_pick: bool) -> None:
        self.reset(seed)
        self._prime(obs)
        self.pulled, self.finished = 0, False
        self.skipped = PICK_WAYPOINTS if skip_pick else 0
        plan = EXPERTS.get(self.task_name)(self)
        for _ in range(self.skipped):
            next(plan, None)
        self._plan = self._counted(plan)

    def _prime(self, obs: dict[str, np.ndarray]) -> None:
        self.obs = obs
        self.q_cmd = obs["joint_pos"].astype(np.float64)
        self.home_pos, self.home_mat = self.arm.fk_matrix(self.q_cmd)

    def _counted(self, plan: Iterator[Waypoint]) -> Iterator[Waypoint]:
        for wp in plan:
            self.pulled += 1
            yield wp
        self.finished = True

    def waypoints(self, obs: dict[str, np.ndarray], seed: int, held: bool) -> list[Waypoint]:
        """The current sub-task's waypoints as the expert would plan them from ``obs``,
        computed without moving anything (every step of the plan sees ``obs``)."""
        self.reset(seed)
        self._prime(obs)
        plan = list(EXPERTS.get(self.task_name)(self))
        return plan[PICK_WAYPOINTS:] if held else plan[:PICK_WAYPOINTS]

    @property
    def subtask_done(self) -> bool:
        """The sub-task the plan started in is complete: a pick once its waypoints are all
        reached (the next one is taken up), a place once the plan is exhausted."""
        if self.skipped:
            return self.finished
        return self.pulled > PICK_WAYPOINTS or self.finished


@dataclass
class Takeover:
    start: int
    end: int | None
    reason: str


@dataclass
class Corrector:
    """Watches one rollout and decides, each step, who acts (see the module docstring).

    Call :meth:`reset` at the episode start and :meth:`act` every step with the observation
    and the policy's command for it (None: the policy holds); it returns (action (Da,),
    intervening).
    """

    task: SimTask
    config: CorrectorConfig = field(default_factory=CorrectorConfig)

    def __post_init__(self) -> None:
        self.expert = PlanningExpert(self.task)
        self.reset(0)

    def reset(self, seed: int) -> None:
        self.seed = seed
        self.t = 0
        self.driving = False
        self.done = False  # rac: the correction finished the episode
        self.takeovers: list[Takeover] = []
        self.handed_back = False  # the caller resets the policy runner when this is set
        self._watch_from(None)

    def _watch_from(self, obs: dict[str, np.ndarray] | None) -> None:
        """(Re)start watching: fresh stall history, held count and sub-task path (planned from
        ``obs``, else at the next step)."""
        self.remaining: deque[float] = deque(maxlen=self.config.stall_steps + 1)  # path left
        self.held_for = 0
        self.carrying = False  # held for hold_steps since the last release
        self.opened_at: tuple[np.ndarray, np.ndarray | None] | None = None  # (eef, release)
        self.path: np.ndarray | None = None
        self.release: np.ndarray | None = None
        self.path_held: bool | None = None
        self.quiet = self.config.warmup_steps  # steps before a trigger may fire
        if obs is not None:
            self._plan_path(obs, self._held(obs, self.task.arm.last_action))

    # ---- what the stand-in operator sees ----------------------------------------------------

    def _held(self, obs: dict[str, np.ndarray], action: np.ndarray) -> bool:
        near = np.linalg.norm(obs["object_state"][REL]) < self.config.hold_dist
        return bool(near and action[-1] > 0.5 * CLOSED)

    def _plan_path(self, obs: dict[str, np.ndarray], held: bool) -> None:
        wps = self.expert.waypoints(obs, self.seed, held)
        self.path = np.array([obs["eef_pos"], *[w.pos for w in wps]], dtype=np.float64)
        opens = [w.pos for w in wps if w.gripper < 0.5 * CLOSED]
        self.release = np.asarray(opens[0]) if held and opens else None
        self.path_held = held
        self.remaining.clear()  # progress is measured along the new path

    def trigger(self, obs: dict[str, np.ndarray]) -> str | None:
        """Why to take over at ``obs``, before the policy's command for it runs, or None."""
        c = self.config
        eef = obs["eef_pos"].astype(np.float64)
        held = self._held(obs, self.task.arm.last_action)
        if held:
            self.held_for += 1
            self.carrying |= self.held_for >= c.hold_steps
            self.opened_at = None
        else:
            if self.held_for and self.carrying:  # let go here; the carry's release point
                self.opened_at = (eef, self.release)
            self.held_for = 0
        drop = False
        if self.opened_at is not None and np.linalg.norm(obs["object_state"][REL]) > c.drop_dist:
            where, release = self.opened_at
            drop = release is None or bool(np.linalg.norm(where - release) > c.release_tol)
            self.carrying, self.opened_at = False, None
        if self.path is None or held != self.path_held:
            self._plan_path(obs, held)
        off, left = path_distance(eef, self.path)
        self.remaining.append(left)
        if self.quiet > 0:
            self.quiet -= 1
            return None
        if drop:
            return "drop"
        full = len(self.remaining) == self.remaining.maxlen
        if full and self.remaining[0] - self.remaining[-1] < c.stall_dist:
            return "stall"
        if off > c.drift_dist:
            return "drift"
        return None

    # ---- the step ---------------------------------------------------------------------------

    def act(self, obs: dict[str, np.ndarray], command: np.ndarray | None) -> tuple[Any, bool]:
        """(action (Da,) float32, intervening) for this step; ``command`` is the policy's
        (None: it holds). Sets ``handed_back`` on the step control returns to the policy,
        and ``done`` when a ``rac`` correction has completed its sub-task."""
        c = self.config
        self.handed_back = False
        if not self.driving:
            hold = self.task.arm.last_action.astype(np.float32)
            policy_action = hold if command is None else np.asarray(command, np.float32)
            reason = self.trigger(obs)
            if reason is None:
                self.t += 1
                return policy_action, False
            self._take_over(obs, reason)
        action = self.expert.select_action(obs)
        self.t += 1
        took = self.takeovers[-1]
        if c.style == "rac":
            if self.expert.subtask_done:  # recovered and corrected: the episode ends here
                took.end, self.done = self.t, True
            return action, True
        back = self.expert.subtask_done or self.t - took.start >= c.handback_steps
        if back and len(self.takeovers) < c.max_takeovers:  # else it drives to the end
            took.end, self.driving, self.handed_back = self.t, False, True
            self._watch_from(None)
        return action, True

    def _take_over(self, obs: dict[str, np.ndarray], reason: str) -> None:
        held = self.held_for >= 1 and reason != "drop"
        self.expert.start(obs, self.seed, skip_pick=held)
        self.takeovers.append(Takeover(self.t, None, reason))
        self.driving = True


def run_corrected_episode(
    task: SimTask, runner: Any, corrector: Corrector, seed: int
) -> tuple[dict[str, np.ndarray], bool, dict[str, Any]]:
    """Roll out ``runner``'s policy on ``task`` from ``seed`` under ``corrector``.

    Returns (steps {key: (T, ...)} with the observation at t, the action applied at t, the
    ``intervention`` flag and the ``label`` of every step; task success; episode metadata:
    source ``policy`` or ``corrected``, the corrector's style and its takeovers).
    """
    obs, _ = task.reset(seed=seed)
    runner.reset(seed=seed)
    corrector.reset(seed)
    dt = task.embodiment.dt
    steps: dict[str, list[np.ndarray]] = {}
    flags: list[bool] = []
    success = False
    t = 0
    while True:
        command = None
        if not corrector.driving:
            now = t * dt
            command = runner.tick(obs, now, joints=(obs["joint_pos"], now)).command
        action, intervening = corrector.act(obs, command)
        if corrector.handed_back:
            runner.reset()  # the policy resumes from the measured state, as after a teleop release
        for k, v in obs.items():
            steps.setdefault(k, []).append(v)
        obs, _, terminated, truncated, info = task.step(action)
        steps.setdefault("action", []).append(info["action"])
        flags.append(intervening)
        t += 1
        if terminated or truncated or corrector.done:
            success = bool(info["success"])
            break
    flag = np.array(flags, dtype=bool)
    out = {k: np.stack(v) for k, v in steps.items()}
    out["intervention"] = flag
    out["label"] = label_rollout(flag, corrector.config.pre_steps)
    meta = {
        "source": "corrected" if flag.any() else "policy",
        "corrector": corrector.config.style,
        "operator": f"scripted_corrector_{corrector.config.style}",
        "intervention_steps": int(flag.sum()),
        "takeovers": [
            [k.start, k.end if k.end is not None else t, k.reason] for k in corrector.takeovers
        ],
    }
    return out, success, meta
