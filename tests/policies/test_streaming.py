"""Streaming Diffusion Policy (policies/diffusion/streaming.py): the U-Net's per-position noise
levels, the config checks, the mixed training schedule, handoff-train with the streaming
recipe, and the action buffer across calls, resets and the policy runner."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from data.embodiment import load_embodiment
from data.errors import UserError
from data.store import DemoStore
from policies import load
from policies.diffusion.streaming import ActionStream, training_timesteps
from policies.diffusion.unet import ConditionalUnet1D
from policies.runner import make_runner
from policies.train import RECIPES_DIR, main, tiny_overrides
from tests.conftest import make_episode
from tests.policies.test_policies import build, random_obs

# Tp = 20, To = 2, Ta = 8: h = 2 chunks and a 3-action tail (the SDP reference's horizons);
# 8 DDIM levels: 4 network passes per call.
STREAM = {"streaming": True, "horizon": 20, "num_inference_steps": 8}


def stream_policy(**overrides):
    return build("diffusion", **{**STREAM, **overrides}).eval()


def obs_batch(policy, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    To = policy.config.n_obs_steps
    return {k: torch.randn(B, To, d, generator=g) for k, d in policy.lowdim_dims.items()}


def count_passes(policy):
    """Record the (sample, timestep) of every denoiser pass."""
    passes = []
    denoise = policy._denoise
    policy._denoise = lambda x, t, cond: (
        passes.append((x.clone(), t.clone())) or denoise(x, t, cond)
    )
    return passes


def test_unet_scalar_step_unchanged_and_per_position_matches_it():
    """The (B,) path gives what it gave before per-position levels existed (values recorded
    from the previous unet.py, same parameter names and shapes); a (B, Tp) step equal at every
    position gives the same output."""
    torch.manual_seed(0)
    net = ConditionalUnet1D(3, 6, [16, 32], 5, 8, 16).eval()
    sig = ";".join(f"{k}:{tuple(v.shape)}" for k, v in net.state_dict().items())
    assert hashlib.sha256(sig.encode()).hexdigest()[:16] == "c90c7168930d2cbd"
    assert sum(p.numel() for p in net.parameters()) == 68403
    g = torch.Generator().manual_seed(1)
    x, cond = torch.randn(2, 8, 3, generator=g), torch.randn(2, 6, generator=g)
    t = torch.tensor([3, 70])
    with torch.no_grad():
        y = net(x, t, cond)
        y_pos = net(x, t[:, None].expand(2, 8), cond)
        y_mixed = net(x, torch.tensor([[3] * 4 + [70] * 4, [70] * 8]), cond)
    before = [0.040272, 0.084762, -0.394025, -0.271722, -0.173738, 0.078094]
    assert np.allclose(y[0, :2].flatten().numpy(), before, atol=1e-5)
    assert abs(float(y.sum()) - -8.88549) < 1e-3
    assert torch.allclose(y_pos, y, atol=1e-5)
    assert torch.allclose(y_mixed[1], y[1], atol=1e-5)  # sample 1: 70 everywhere
    assert not torch.allclose(y_mixed[0], y[0], atol=1e-3)  # the levels do matter


def test_config_validation():
    c = stream_policy().config
    assert (c.stream_chunks, c.stream_steps_per_call) == (2, 4)
    with pytest.raises(UserError, match="streaming needs denoiser unet"):
        build("diffusion", **STREAM, denoiser="transformer")
    with pytest.raises(UserError, match="inference_scheduler consistency"):
        build(
            "diffusion",
            **{**STREAM, "inference_scheduler": "consistency", "num_inference_steps": 2},
        )
    with pytest.raises(UserError, match="at least 2 chunks .* raise horizon"):
        build("diffusion", streaming=True)  # Tp 16, To 2, Ta 8: one chunk
    with pytest.raises(UserError, match=r"num_inference_steps \(9\) must be a multiple of 2"):
        build("diffusion", **{**STREAM, "num_inference_steps": 9})
    with pytest.raises(UserError, match="streaming_chunk_wise_share"):
        build("diffusion", **STREAM, streaming_chunk_wise_share=1.5)
    assert build("diffusion", denoiser="transformer").stream is None  # off: nothing changes


def test_mixed_training_schedule():
    c = stream_policy().config  # T = 100, h = 2: chunk 0 in [0, 49], chunk 1 = chunk 0 + 50
    torch.manual_seed(0)
    chunkwise = 0
    for _ in range(300):
        t = training_timesteps(c, 4, torch.device("cpu"))
        assert t.shape == (4, 20) and int(t.min()) >= 0 and int(t.max()) <= 99
        if (t == t[:, :1]).all():  # constant: one level per sample
            continue
        chunkwise += 1
        assert (t[:, :9] == t[:, :1]).all() and (t[:, 9:] == t[:, 9:10]).all()
        assert (t[:, 9] - t[:, 0] == 50).all() and int(t[:, 0].max()) <= 49
    assert 0.7 < chunkwise / 300 < 0.9  # streaming_chunk_wise_share 0.8, per batch


def test_streaming_model_trains_with_the_recipe(tmp_path, capsys):
    spec = load_embodiment("sim_panda").with_cameras([], None)
    store = DemoStore.create(tmp_path / "s.zarr", spec)
    for e in range(3):
        ep = make_episode(24, seed=e, image_hw=None)
        store.append_episode(ep, task="lift", source="scripted", success=True, seed=e)
    recipe = RECIPES_DIR / "diffusion_streaming_cpu.yaml"
    argv = ["--policy", "diffusion", "--recipe", str(recipe), "--data", str(store.path)]
    sets = tiny_overrides("diffusion", exclude=("num_inference_steps",))  # the recipe's 16 levels
    common = ["--steps", "4", "--batch-size", "8", "--device", "cpu", "--no-progress"]
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out), *common, *sum([["--set", s] for s in sets], [])]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 4 and np.isfinite(summary["final_loss"])
    policy = load(out)
    c = policy.config
    assert c.streaming and c.horizon == 20 and c.stream_steps_per_call == 2  # 4 levels, h = 2
    assert policy.default_scheme == "sync" and policy.stream is not None
    a = policy.chunk(obs_batch(policy, B=1))
    assert a.shape == (1, 19, 8) and torch.isfinite(a).all()


def test_chunk_shapes_and_passes_per_call():
    policy = stream_policy()
    passes = count_passes(policy)
    obs = obs_batch(policy)
    for call in range(3):
        a = policy.chunk(obs)
        assert a.shape == (2, policy.chunk_length, policy.action_dim) == (2, 19, 8)
        assert torch.isfinite(a).all()
        assert len(passes) == 4 * (call + 1)  # num_inference_steps / h per call
    t = passes[0][1]
    assert t.shape == (2, 20)  # a level per action position
    # the first pass of a fresh buffer: chunk 0 (positions 0-8) at level 3, chunk 1 and the
    # tail at level 7 of 8 (timesteps floor(100 (j + 1) / 8) - 1)
    assert t[0].tolist() == [49] * 9 + [99] * 11
    assert policy.stream.levels.tolist() == [-1] * 9 + [3] * 11  # chunk 0 clean
    assert policy.predict_action_chunk(obs).shape == (2, 8, 8)


def test_shifted_prefix_is_exactly_what_was_committed():
    policy = stream_policy()
    obs = obs_batch(policy)
    torch.manual_seed(0)
    first = policy.chunk(obs)  # (B, 19, 8) from position s = 1 on
    passes = count_passes(policy)
    second = policy.chunk(obs_batch(policy, seed=1))
    x_in, t_in = passes[0]  # the shifted buffer, before any denoising of this call
    keep, s, Ta = 9, 1, 8  # Tp - Ta - tail positions kept
    kept = policy.normalizer.unnormalize("action", x_in)[:, :keep]
    assert torch.equal(kept, first[:, Ta - s : Ta - s + keep])
    # the executed action before the current step stays fixed; the rest is new noise at the
    # top level, and the kept chunk continues from level 3
    assert t_in[0].tolist() == [49] * 9 + [99] * 11
    final = policy.normalizer.unnormalize("action", policy.stream.buffer)
    assert torch.equal(final[:, :s], first[:, Ta - s : Ta])
    assert not torch.equal(second[:, : keep - s], first[:, Ta : Ta + keep - s])  # denoised on


def test_reset_clears_the_buffer():
    policy = stream_policy()
    obs = obs_batch(policy)
    starts = []
    start = ActionStream._start
    policy.stream._start = lambda *a: starts.append(1) or start(policy.stream, *a)
    torch.manual_seed(0)
    a = policy.chunk(obs)
    policy.chunk(obs)
    assert len(starts) == 1 and policy.stream.buffer is not None
    policy.reset()
    assert policy.stream.buffer is None and policy.stream.levels is None
    torch.manual_seed(0)
    assert torch.equal(policy.chunk(obs), a) and len(starts) == 2  # a fresh buffer again
    # the runner's first prediction of an episode (To copies of one step) starts a fresh one
    step = {k: v[:1, 0] for k, v in obs.items()}
    policy.predict_chunk([step, step])
    assert len(starts) == 3
    policy.predict_chunk([step, {k: v.clone() for k, v in step.items()}])
    assert len(starts) == 3
    policy.set_inference("ddim", 16)
    assert policy.stream.buffer is None and policy.config.stream_steps_per_call == 8


def test_guide_sets_the_first_actions():
    policy = stream_policy()
    obs = obs_batch(policy, B=1)
    lo = policy.normalizer.unnormalize("action", -torch.ones(policy.action_dim))
    hi = policy.normalizer.unnormalize("action", torch.ones(policy.action_dim))
    targets = lo + (hi - lo) * torch.rand(3, policy.action_dim)
    policy.chunk(obs)
    a = policy.chunk(obs, (targets, torch.ones(3)))
    assert torch.allclose(a[0, :3], targets, atol=1e-5)


def test_twenty_ticks_through_the_runner():
    policy = stream_policy()
    calls = []
    chunk = policy.chunk
    policy.chunk = lambda obs, guide=None: (
        calls.append(policy.stream.buffer is None) or chunk(obs, guide)
    )
    r = make_runner(policy, scheme="sync", delay=0, safety=False)
    rng = np.random.default_rng(0)
    commands = [r.tick(random_obs(policy, rng)).command for _ in range(20)]
    assert all(c is not None and np.asarray(c).shape == (8,) for c in commands)
    assert np.isfinite(np.asarray(commands)).all()
    assert calls == [True, False, False]  # one chunk per Ta = 8 ticks, one buffer throughout
    r.reset()  # a new episode on the node: only the runner is reset
    r.tick(random_obs(policy, rng))
    assert calls == [True, False, False, True]  # its first prediction starts a fresh buffer
