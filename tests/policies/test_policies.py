"""Every registered policy through the same checks (STYLE.md #8), plus the shared pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data.embodiment import load_embodiment
from data.errors import UserError
from policies import load
from policies.checkpoint import save_policy
from policies.common.normalizer import Normalizer
from policies.common.vision import ResNet18GN, SpatialSoftmax, crop_images, prepare_images
from policies.registry import get_policy_class, make_config, policy_names, register_policy
from policies.train import load_recipe

STATE_KEYS = ["eef_pos", "gripper_pos", "joint_pos"]
# What the checks below add to each policy's tiny network (policies/recipes/<name>_tiny.yaml):
# ACT executes chunks 5 actions at a time, without temporal ensembling, so the chunk queue is
# exercised; diffusion samples with 4 DDIM steps.
CHECKS = {
    "diffusion": {"num_inference_steps": 4},
    "act": {"horizon": 10, "n_action_steps": 5, "temporal_ensemble_coeff": None},
}
NAMES = policy_names()


def small_embodiment(image: bool):
    spec = load_embodiment("sim_panda")
    return spec.with_cameras(["agentview"] if image else [], (32, 32))


def stats_for(spec, keys):
    rng = np.random.default_rng(0)
    out = {}
    for k in keys:
        D = spec.action_dim if k == "action" else int(np.prod(spec.observation[k]))
        lo = rng.uniform(-2, 0, D).astype(np.float32)
        hi = lo + rng.uniform(0.5, 2, D).astype(np.float32)
        out[k] = {"min": lo, "max": hi, "mean": (lo + hi) / 2, "std": (hi - lo) / 4}
    return out


def build(name: str, image: bool = False, **overrides):
    spec = small_embodiment(image)
    keys = STATE_KEYS + (["agentview"] if image else [])
    tiny = {**load_recipe(name, "tiny")["policy"], **CHECKS.get(name, {})}
    config = make_config(name, {**tiny, "obs_keys": keys, **overrides})
    modes = {k: config.lowdim_norm for k in STATE_KEYS} | {"action": config.action_norm}
    normalizer = Normalizer.from_stats(stats_for(spec, [*STATE_KEYS, "action"]), modes)
    return get_policy_class(name)(config, spec, normalizer)


def random_obs(policy, rng):
    obs = {k: rng.normal(size=d).astype(np.float32) for k, d in policy.lowdim_dims.items()}
    for k, shape in policy.camera_shapes.items():
        obs[k] = rng.integers(0, 255, size=shape, dtype=np.uint8)
    return obs


def random_batch(policy, B=3):
    c = policy.config
    g = torch.Generator().manual_seed(0)
    obs = {k: torch.randn(B, c.n_obs_steps, d, generator=g) for k, d in policy.lowdim_dims.items()}
    for k, shape in policy.camera_shapes.items():
        obs[k] = torch.randint(0, 255, (B, c.n_obs_steps, *shape), generator=g, dtype=torch.uint8)
    is_pad = torch.zeros(B, c.horizon, dtype=torch.bool)
    is_pad[0, -3:] = True
    return {
        "obs": obs,
        "action": torch.randn(B, c.horizon, policy.action_dim, generator=g),
        "action_is_pad": is_pad,
    }


def test_registry_finds_both_policies():
    assert {"diffusion", "act"} <= set(NAMES)
    with pytest.raises(UserError, match="unknown policy 'nope'"):
        get_policy_class("nope")


def test_naming_rule_is_enforced():
    cls = get_policy_class("act")
    stray = type("Stray", (cls,), {"__module__": "policies.somewhere_else"})
    with pytest.raises(TypeError, match="policies.act2.model"):
        register_policy("act2")(stray)


@pytest.mark.slow  # paper-sized networks (tens of millions of parameters)
@pytest.mark.parametrize("name", NAMES)
def test_default_config_instantiates(name):
    config = make_config(name)
    assert config.n_action_steps <= config.horizon
    spec = load_embodiment("sim_panda")
    config = config.replace(obs_keys=STATE_KEYS)
    normalizer = Normalizer.from_stats(
        stats_for(spec, [*STATE_KEYS, "action"]),
        {k: config.lowdim_norm for k in STATE_KEYS} | {"action": config.action_norm},
    )
    policy = get_policy_class(name)(config, spec, normalizer)
    assert sum(p.numel() for p in policy.parameters()) > 1e6  # paper-sized by default
    assert policy.input_keys == STATE_KEYS and policy.embodiment is spec


@pytest.mark.parametrize("name", NAMES)
def test_unknown_config_key_fails_loudly(name):
    with pytest.raises(UserError, match="unknown .* key.*'n_action_step'"):
        make_config(name, {"n_action_step": 3})


def test_config_combinations_are_validated():
    with pytest.raises(UserError, match="n_action_steps .* must be <= horizon - n_obs_steps"):
        make_config("diffusion", {"horizon": 16, "n_obs_steps": 2, "n_action_steps": 16})
    with pytest.raises(UserError, match="n_action_steps must be 1 when using temporal ensembling"):
        make_config("act", {"temporal_ensemble_coeff": 0.01, "n_action_steps": 10})
    with pytest.raises(UserError, match="horizon .* must be divisible"):
        make_config("diffusion", {"horizon": 10, "n_action_steps": 4})
    assert make_config("act", {"temporal_ensemble_coeff": 0.01, "n_action_steps": 1})
    from policies.trainer import TrainConfig

    assert TrainConfig.from_dict({"lr": "1e-3"}).lr == 1e-3  # YAML 1.1 reads 1e-3 as a string
    with pytest.raises(UserError, match="lr = 'fast' must be of type float"):
        TrainConfig.from_dict({"lr": "fast"})


@pytest.mark.parametrize("image", [False, True], ids=["state", "image"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name, image):
    torch.manual_seed(0)
    policy = build(name, image).train()
    loss, info = policy(random_batch(policy))
    assert loss.ndim == 0 and torch.isfinite(loss) and info
    loss.backward()
    grads = [p.grad for p in policy.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("image", [False, True], ids=["state", "image"])
@pytest.mark.parametrize("name", NAMES)
def test_save_load_gives_identical_actions(name, image, tmp_path):
    policy = build(name, image).eval()
    save_policy(policy, tmp_path / "ckpt", {"step": 7})
    loaded = load(tmp_path / "ckpt")
    assert not loaded.training and loaded.input_keys == policy.input_keys
    assert json.loads((tmp_path / "ckpt" / "train_meta.json").read_text())["step"] == 7
    rng1, rng2 = np.random.default_rng(1), np.random.default_rng(1)
    for _ in range(6):
        torch.manual_seed(3)
        a = policy.select_action(random_obs(policy, rng1))
        torch.manual_seed(3)
        b = loaded.select_action(random_obs(loaded, rng2))
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_select_action_shapes_and_queue(name):
    policy = build(name).eval()
    calls = []
    inner = policy.chunk

    def counting(obs, guide=None):
        calls.append({k: tuple(v.shape) for k, v in obs.items()})
        out = inner(obs)
        assert out.shape == (1, policy.chunk_length, policy.action_dim)
        return out

    policy.chunk = counting
    rng = np.random.default_rng(0)
    Ta = policy.config.n_action_steps
    steps = 2 * Ta + 1
    for _ in range(steps):
        a = policy.select_action(random_obs(policy, rng))
        assert a.shape == (policy.action_dim,) and a.dtype == np.float32
    # one prediction per Ta steps; with temporal ensembling (ACT's default) one per step
    predictions = steps if policy.default_scheme == "ensemble" else 3
    assert len(calls) == predictions
    To = policy.config.n_obs_steps
    assert calls[0]["joint_pos"] == (1, To, 7)
    policy.reset()
    policy.select_action(random_obs(policy, rng))
    assert len(calls) == predictions + 1  # reset empties the queue
    with pytest.raises(KeyError, match="joint_pos"):
        policy.select_action({"eef_pos": np.zeros(3), "gripper_pos": np.zeros(2)})


def test_observation_history_pads_with_first_step():
    policy = build("diffusion").eval()
    seen = []
    policy.chunk = lambda obs, guide=None: (
        seen.append(obs["eef_pos"].clone()),
        torch.zeros(1, 15, 8),
    )[1]
    rng = np.random.default_rng(0)
    first = random_obs(policy, rng)
    policy.select_action(first)
    assert torch.equal(seen[0][0, 0], seen[0][0, 1])  # (1, To=2, 3): first step repeated
    assert np.allclose(seen[0][0, 1].numpy(), first["eef_pos"])


def test_act_temporal_ensembling_predicts_every_step():
    policy = build("act", n_action_steps=1, temporal_ensemble_coeff=0.01).eval()
    rng = np.random.default_rng(0)
    obs = random_obs(policy, rng)
    chunk = policy.chunk({k: torch.from_numpy(v)[None, None] for k, v in obs.items()})[0]
    from policies.runner import PolicyRunner, RunnerConfig

    runner = PolicyRunner(policy, RunnerConfig(scheme="ensemble"))
    a0 = runner.tick(obs).command
    assert np.allclose(a0, chunk[0].numpy(), atol=1e-6)  # first step: the only prediction
    a1 = runner.tick(obs).command  # same obs again: mean of chunk[1] (old) and chunk[0] (new)
    w = np.exp(-0.01 * np.arange(2))
    expected = (w[0] * chunk[1].numpy() + w[1] * chunk[0].numpy()) / w.sum()
    assert np.allclose(a1, expected, atol=1e-5)


def test_diffusion_samplers_switch():
    policy = build("diffusion").eval()
    obs = {k: torch.zeros(2, 2, d) for k, d in policy.lowdim_dims.items()}
    for sched, steps in [("ddim", 3), ("dpmsolver", 3), ("ddpm", 5)]:
        policy.set_inference(sched, steps)
        out = policy.predict_action_chunk(obs)
        assert out.shape == (2, 8, 8) and torch.isfinite(out).all()


def test_vision_pieces():
    net = ResNet18GN(16)
    fmap = net(torch.zeros(2, 3, 76, 76))
    assert fmap.shape == (2, 128, 3, 3)
    kp = SpatialSoftmax(128, 5)(fmap)
    assert kp.shape == (2, 10) and kp.abs().max() <= 1
    x = torch.arange(2 * 8 * 8 * 3, dtype=torch.float32).reshape(2, 8, 8, 3)  # NHWC
    c = crop_images(x, (6, 6), random=False)
    assert torch.equal(c, x[:, 1:7, 1:7])
    torch.manual_seed(0)
    r = crop_images(x, (6, 6), random=True)
    for n in range(2):  # every random crop is a contiguous window of its own image
        offset = int(r[n, 0, 0, 0] - x[n, 0, 0, 0]) // 3
        top, left = offset // 8, offset % 8
        assert torch.equal(r[n], x[n, top : top + 6, left : left + 6])


def test_prepare_images_gives_contiguous_nchw_in_unit_range():
    frames = torch.randint(0, 256, (4, 10, 12, 3), dtype=torch.uint8)
    for random in (False, True):
        x = prepare_images(frames, (8, 8), random)
        assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32
        assert x.is_contiguous()  # not channels-last: CPU convolutions are slow on that layout
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    centre = prepare_images(frames, (8, 8), False)
    want = frames[:, 1:9, 2:10].permute(0, 3, 1, 2).float() / 127.5 - 1.0
    assert torch.allclose(centre, want)


def test_normalizer_round_trip_and_constant_dims():
    stats = {
        "x": {
            "min": np.array([0.0, 5.0], np.float32),
            "max": np.array([2.0, 5.0], np.float32),
            "mean": np.array([1.0, 5.0], np.float32),
            "std": np.array([0.5, 0.0], np.float32),
        }
    }
    for mode in ("min_max", "mean_std"):
        n = Normalizer.from_stats(stats, {"x": mode})
        x = torch.tensor([[0.0, 5.0], [2.0, 5.0]])
        y = n.normalize("x", x)
        assert torch.allclose(n.unnormalize("x", y), x)
        assert torch.allclose(y[:, 1], torch.zeros(2))  # constant dim: shifted, not scaled
    y = Normalizer.from_stats(stats, {"x": "min_max"}).normalize("x", x)
    assert torch.allclose(y[:, 0], torch.tensor([-1.0, 1.0]))


@pytest.mark.parametrize(
    "damage",
    [
        "missing_model",
        "corrupt_model",
        "corrupt_config",
        "missing_spec",
        "corrupt_spec",
        "bad_version",
    ],
)
def test_damaged_checkpoint_names_the_file(damage, tmp_path):
    ckpt = save_policy(build("act").eval(), tmp_path / "ckpt")
    target = {
        "missing_model": "model.safetensors",
        "corrupt_model": "model.safetensors",
        "corrupt_config": "config.json",
        "missing_spec": "embodiment.yaml",
        "corrupt_spec": "embodiment.yaml",
        "bad_version": "config.json",
    }[damage]
    f = ckpt / target
    if damage.startswith("missing"):
        f.unlink()
    elif damage == "bad_version":
        doc = json.loads(f.read_text())
        f.write_text(json.dumps({**doc, "format_version": 99}))
    else:
        f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(UserError, match=target):
        load(ckpt)


def test_transformer_denoiser_variant(tmp_path):
    torch.manual_seed(0)
    policy = build("diffusion", denoiser="transformer").train()
    loss, _ = policy(random_batch(policy))
    loss.backward()
    assert torch.isfinite(loss)
    assert policy.denoiser.action_pos.grad is not None
    policy.eval()
    save_policy(policy, tmp_path / "ckpt")
    loaded = load(tmp_path / "ckpt")
    assert loaded.config.denoiser == "transformer"
    obs = {k: torch.zeros(1, 2, d) for k, d in policy.lowdim_dims.items()}
    torch.manual_seed(1)
    a = policy.predict_action_chunk(obs)
    torch.manual_seed(1)
    assert torch.equal(a, loaded.predict_action_chunk(obs)) and a.shape == (1, 8, 8)
