"""The policy runner without ROS: schemes, delays, overruns, safety, real-time chunking, and the
node's threaded inference against the simulator's inline one on the same observation stream."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data.embodiment import load_embodiment
from policies.runner import MEASURED, PolicyRunner, RunnerConfig, make_runner
from policies.safety import SafetyConfig, SafetyFilter

SPEC = load_embodiment("sim_panda")
HOME = np.array([0.0, 0.2, 0.0, -2.0, 0.0, 2.2, 0.8])


class ChunkPolicy:
    """A stand-in with the runner's interface: the chunk predicted from the observation of
    tick k holds, at index i, HOME + 0.001 * (k + i) on every joint (so an action says which
    tick it was meant for) and 1000 * k + i in the gripper slot (which chunk it came from)."""

    embodiment = SPEC
    config = SimpleNamespace()
    history_steps = 2
    chunk_length = 12
    default_execute_steps = 6
    default_scheme = "sync"

    def __init__(self, sleep_s: float = 0.0, nan_at: int = -1) -> None:
        self.sleep_s, self.nan_at = sleep_s, nan_at
        self.calls: list[tuple[list[int], object]] = []

    def predict_chunk(self, history, guide=None):
        k = int(history[-1]["tick"][0])
        self.calls.append(([int(h["tick"][0]) for h in history], guide))
        if self.sleep_s:
            time.sleep(self.sleep_s)
        i = np.arange(self.chunk_length)
        chunk = np.empty((self.chunk_length, SPEC.action_dim), np.float32)
        chunk[:, :-1] = HOME + 0.001 * (k + i)[:, None]
        chunk[:, -1] = 1000 * k + i
        if k == self.nan_at:
            chunk[:] = np.nan
        return chunk


class GuidedChunkPolicy(ChunkPolicy):
    """Takes the guide (and records it) as a diffusion policy would, ignoring it."""

    guided_sampling = True


def obs(k: int) -> dict[str, np.ndarray]:
    return {"tick": np.array([k], np.float32)}


def run(runner: PolicyRunner, n: int, sleep_s: float = 0.0) -> list[np.ndarray | None]:
    out = []
    for k in range(n):
        out.append(runner.tick(obs(k), k * SPEC.dt).command)
        if sleep_s:
            time.sleep(sleep_s)
    return out


def meant_for(action: np.ndarray) -> int:
    """The tick an action was predicted for; (and chunk tick = gripper // 1000)."""
    return round((action[0] - HOME[0]) / 0.001)


def test_sync_lockstep_executes_each_chunk_from_its_start():
    pol = ChunkPolicy()
    acts = run(PolicyRunner(pol, RunnerConfig(scheme="sync", delay=0)), 18)
    assert [int(a[-1]) for a in acts] == [1000 * c + i for c in (0, 6, 12) for i in range(6)]
    assert [h for h, _ in pol.calls] == [[0, 0], [5, 6], [11, 12]]  # To = 2, first repeated


def test_sync_with_delay_holds_then_starts_from_the_first_action():
    runner = PolicyRunner(ChunkPolicy(), RunnerConfig(scheme="sync", delay=3))
    acts = run(runner, 20)
    # chunk 0 is started after tick 0 and usable at tick 3; each later one is started once
    # 6 actions went out (tick 8) and usable 3 ticks later: 2 ticks of hold each time
    assert acts[:3] == [None] * 3
    assert [int(a[-1]) for a in acts[3:9]] == list(range(6))
    assert acts[9:11] == [None, None] and int(acts[11][-1]) == 8000
    assert runner.stats.held == 3 + 2 + 2  # ticks 0-2, 9-10, 17-18


@pytest.mark.parametrize("scheme", ["async", "rtc"])
@pytest.mark.parametrize("d", [1, 2, 4])
def test_async_never_executes_an_action_meant_for_a_past_tick(scheme, d):
    runner = PolicyRunner(ChunkPolicy(), RunnerConfig(scheme=scheme, delay=d))
    acts = run(runner, 40)
    assert acts[:d] == [None] * d  # nothing before the first chunk arrives
    for k, a in enumerate(acts[d:], start=d):
        assert meant_for(a) == k  # the action for this very tick, never a stale one
        assert k - int(a[-1]) // 1000 >= d  # from a chunk computed at least d ticks ago
    assert runner.stats.held == d  # switches happen without a gap
    assert runner.stats.chunks >= 40 // 6


def test_async_holds_when_the_chunk_runs_out_before_the_next_arrives():
    pol = ChunkPolicy()
    pol.chunk_length = 8
    runner = PolicyRunner(pol, RunnerConfig(scheme="async", delay=6, execute_steps=6))
    run(runner, 40)
    # each chunk is usable from index 6 on and holds 8: two actions, then holds until the next
    assert runner.stats.held > 6


def test_ensemble_weights_every_prediction_for_the_tick_oldest_first():
    m = 0.01
    pol = ChunkPolicy()
    runner = PolicyRunner(pol, RunnerConfig(scheme="ensemble", delay=0, ensemble_coeff=m))
    acts = run(runner, 15)
    for t, a in enumerate(acts):
        ages = [t - k for k in range(t + 1) if t - k < pol.chunk_length]  # oldest chunk first
        preds = np.array([1000 * (t - age) + age for age in ages], float)
        w = np.exp(-m * np.arange(len(preds)))
        assert a[-1] == pytest.approx(float((w * preds).sum() / w.sum()), rel=1e-6)
        assert meant_for(a) == t  # every chunk's prediction for tick t is HOME + 0.001 t


def test_ensemble_with_delay_uses_only_chunks_that_arrived():
    runner = PolicyRunner(ChunkPolicy(), RunnerConfig(scheme="ensemble", delay=2))
    acts = run(runner, 12)
    assert acts[:2] == [None, None]
    assert all(meant_for(a) == t for t, a in enumerate(acts) if a is not None)


@pytest.mark.parametrize("d", [1, 3])
def test_rtc_frozen_prefix_equals_the_committed_actions_exactly(d):
    chunks: list[tuple[np.ndarray, int]] = []
    pol = GuidedChunkPolicy()
    runner = PolicyRunner(
        pol,
        RunnerConfig(scheme="rtc", delay=d),
        on_chunk=[lambda c, k, ms: chunks.append((c.copy(), k))],
    )
    acts = run(runner, 40)
    sent = {t: a for t, a in enumerate(acts) if a is not None}
    checked = 0
    for chunk, k in chunks[1:]:  # the first chunk has nothing committed before it
        for i in range(d):
            np.testing.assert_array_equal(chunk[i], sent[k + i])
            checked += 1
    assert checked >= d * 5
    # the guide handed to the policy: weight 1 on the frozen d, decaying to 0 after
    _, (target, w) = pol.calls[2]
    assert np.all(w[:d] == 1) and np.all(np.diff(w[d:]) < 0) and 0 < w[-1] < 1


@pytest.mark.parametrize("soft", [0, 2])
def test_rtc_soft_steps_shortens_the_soft_window(soft):
    """soft_steps n: the guide covers the frozen d and n decaying weights after them, so the
    actions beyond are the new chunk's own; the frozen prefix is still the committed one."""
    d = 3
    full, short = GuidedChunkPolicy(), GuidedChunkPolicy()
    run(PolicyRunner(full, RunnerConfig(scheme="rtc", delay=d)), 20)
    runner = PolicyRunner(short, RunnerConfig(scheme="rtc", delay=d, soft_steps=soft))
    acts = run(runner, 20)
    _, (target_full, w_full) = full.calls[2]
    _, (target, w) = short.calls[2]
    assert len(w) == d + soft < len(w_full)
    np.testing.assert_array_equal(target, target_full[: d + soft])
    assert np.all(w[:d] == 1) and np.all(np.diff(w[d:]) < 0) and np.all((w > 0) & (w <= 1))
    assert [a is None for a in acts].count(True) == d  # only the first chunk's wait holds
    with pytest.raises(ValueError, match="soft_steps"):
        RunnerConfig(scheme="rtc", soft_steps=-2)


@pytest.mark.parametrize("d", [2, 3])
def test_rtc_with_a_delay_replans_as_soon_as_an_action_went_out(d):
    """By default rtc starts the next chunk right after the current one sent its first action,
    so every executed action comes from a chunk d to 2d - 1 ticks old (re-planning: on can it
    kept the grasp that Ta actions per chunk lost); an explicit execute_steps still waits."""

    def ages(runner: PolicyRunner) -> set[int]:  # guided: no blending mixes the chunk ids
        return {k - int(a[-1]) // 1000 for k, a in enumerate(run(runner, 40)) if a is not None}

    replans = PolicyRunner(GuidedChunkPolicy(), RunnerConfig(scheme="rtc", delay=d))
    assert ages(replans) == set(range(d, 2 * d))
    assert replans.stats.chunks >= 40 // d - 2
    waits = PolicyRunner(GuidedChunkPolicy(), RunnerConfig(scheme="rtc", delay=d, execute_steps=6))
    assert max(ages(waits)) >= d + 4 and waits.stats.chunks <= 40 // 5


def test_rtc_blends_an_unguided_policy_towards_the_current_chunk():
    pol = ChunkPolicy()
    runner = PolicyRunner(pol, RunnerConfig(scheme="rtc", delay=2))
    acts = run(runner, 30)
    # gripper slot = 1000 k + i: a blended action lies between the old and the new chunk's
    k = [t for t, a in enumerate(acts) if a is not None and int(a[-1]) != a[-1]]
    assert k, "no blended action was executed"


def test_threaded_inference_gives_the_simulators_actions_for_a_fixed_delay():
    """The node (a worker thread, wall-clock) and handoff-eval (inline, simulated time) send
    the same commands for the same observations, scheme and delay (when inference fits in
    the delay), through the same safety filter."""

    def commands(threaded: bool, scheme: str) -> list:
        safety = SafetyFilter(SPEC, SafetyConfig(require_enable=False))
        runner = PolicyRunner(
            ChunkPolicy(sleep_s=0.005 if threaded else 0.0),
            RunnerConfig(scheme=scheme, delay=3),
            safety,
            threaded=threaded,
        )
        out = []
        for k in range(30):
            out.append(runner.tick(obs(k), k * SPEC.dt, joints=(HOME, k * SPEC.dt)).command)
            if threaded:
                time.sleep(0.03)  # a control period: the worker finishes within it
        runner.close()
        return out

    for scheme in ("sync", "async", "ensemble", "rtc"):
        a, b = commands(False, scheme), commands(True, scheme)
        assert len(a) == len(b) == 30
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


def test_a_slow_policy_never_stalls_the_tick():
    runner = PolicyRunner(
        ChunkPolicy(sleep_s=0.3),
        RunnerConfig(scheme="async", delay=MEASURED),
        SafetyFilter(SPEC, SafetyConfig(require_enable=False)),
        threaded=True,
    )
    worst = 0.0
    for k in range(30):
        t0 = time.perf_counter()
        result = runner.tick(obs(k), k * 0.02, joints=(HOME, k * 0.02))
        worst = max(worst, time.perf_counter() - t0)
        assert result.command is not None  # a hold at the measured joints, then the chunks
        time.sleep(0.02)
    runner.close()
    assert worst < 0.05  # 0.3 s inference: the tick never waited for it
    assert runner.stats.held >= 10 and runner.stats.chunks >= 1
    assert runner.expected_delay >= 10  # measured: 0.3 s over 0.05-s periods


def test_measured_delay_in_simulation_follows_the_inference_time():
    runner = PolicyRunner(ChunkPolicy(sleep_s=0.12), RunnerConfig(scheme="async", delay=MEASURED))
    acts = run(runner, 8)
    assert acts[:3] == [None] * 3 and acts[3] is not None  # 120 ms at 20 Hz: 3 ticks


def test_safety_filter_holds_a_non_finite_chunk_and_clamps_steps():
    safety = SafetyFilter(SPEC, SafetyConfig(require_enable=False, max_step_delta=0.0005))
    runner = PolicyRunner(ChunkPolicy(nan_at=6), RunnerConfig(scheme="sync", delay=0), safety)
    cmds = [runner.tick(obs(k), k * SPEC.dt, joints=(HOME, k * SPEC.dt)) for k in range(12)]
    steps = np.abs(np.diff([c.command[:7] for c in cmds], axis=0))
    assert steps.max() <= 0.0005 + 1e-12
    assert cmds[6].held and "non_finite" in cmds[6].reasons


def test_make_runner_safety_defaults_match_the_sim_arm_node():
    runner = make_runner(ChunkPolicy(), scheme="rtc", delay=2)
    assert runner.safety is not None and not runner.safety.config.require_enable
    assert runner.safety.config.max_step_delta == 0.05  # config/sim_panda.yaml
    assert make_runner(ChunkPolicy(), safety=False).safety is None
    with pytest.raises(ValueError, match="scheme"):
        RunnerConfig(scheme="fast")


def test_diffusion_guidance_inpaints_the_frozen_prefix():
    from tests.policies.test_policies import build, random_obs

    policy = build("diffusion").eval()
    rng = np.random.default_rng(0)
    step = policy.prepare_step(random_obs(policy, rng))
    history = [step, step]
    torch.manual_seed(0)
    free = policy.predict_chunk(history)
    norm = policy.normalizer.normalize("action", torch.from_numpy(free[:6]))
    target = policy.normalizer.unnormalize("action", 0.8 * norm).numpy()  # inside the clip range
    w = np.array([1, 1, 1, 0.6, 0.3, 0.1], np.float32)
    torch.manual_seed(0)
    guided = policy.predict_chunk(history, guide=(target, w))
    np.testing.assert_allclose(guided[:3], target[:3], atol=1e-4)
    assert np.abs(guided[3:6] - target[3:6]).mean() < np.abs(free[3:6] - target[3:6]).mean()


def test_sampling_steps_set_a_diffusion_policys_denoising_steps():
    """handoff-eval --sampling-steps (make_runner) and the node's sampling_steps (RunnerConfig)
    set the same thing; a policy that does not sample refuses it in one error line."""
    from data.errors import UserError
    from tests.policies.test_policies import build

    policy = build("diffusion").eval()
    make_runner(policy, sampling_steps=2)
    assert policy.config.num_inference_steps == 2 and policy.config.inference_scheduler == "ddim"
    PolicyRunner(policy, RunnerConfig(sampling_steps=4))
    assert policy.config.num_inference_steps == 4
    PolicyRunner(policy, RunnerConfig())  # 0 keeps what the policy has
    assert policy.config.num_inference_steps == 4
    with pytest.raises(UserError, match="sampling_steps 2: ChunkPolicy has no denoising steps"):
        make_runner(ChunkPolicy(), sampling_steps=2)
    with pytest.raises(UserError, match="no denoising steps"):
        PolicyRunner(ChunkPolicy(), RunnerConfig(sampling_steps=3))
    with pytest.raises(ValueError, match="sampling_steps must be >= 0"):
        RunnerConfig(sampling_steps=-1)


def test_reset_bounds_the_first_command_from_the_measured_joints():
    """A new episode starts from where the arm is, not from the last episode's final target
    (before the runner, /policy/reset left the filter anchored there, so the first commands of
    an episode pulled the arm back toward the previous episode's end pose)."""
    safety = SafetyFilter(SPEC, SafetyConfig(require_enable=False))
    runner = PolicyRunner(ChunkPolicy(), RunnerConfig(scheme="sync", delay=0), safety)
    far = HOME + 0.5
    for k in range(5):
        runner.tick(obs(k), k * SPEC.dt, joints=(far, k * SPEC.dt))
    runner.reset()
    first = runner.tick(obs(0), 1.0, joints=(HOME, 1.0)).command
    assert np.max(np.abs(first[:7] - HOME)) <= 0.05 + 1e-9  # one step from HOME, not from far


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="Linux scheduling only")
def test_the_inference_worker_runs_at_normal_priority_when_started_from_a_realtime_thread():
    """The node's first tick (SCHED_FIFO) starts the worker; inheriting that policy would let a
    chunk hold off the control loop."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:
        pytest.skip("this machine refuses SCHED_FIFO")
    try:
        runner = PolicyRunner(ChunkPolicy(), RunnerConfig(scheme="async", delay=-1), threaded=True)
        plain = ThreadPoolExecutor(1)
        assert plain.submit(os.sched_getscheduler, 0).result() == os.SCHED_FIFO  # inherited
        assert runner.pool.submit(os.sched_getscheduler, 0).result() == os.SCHED_OTHER
        plain.shutdown()
        runner.close()
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
