"""Policy inference latency and training throughput on CPU; prints one JSON line.

    .venv/bin/python tests/benchmarks/bench_policies.py [--quick]

Latency: p50/p99 of ``predict_action_chunk`` and of ``select_action`` (the policy runner in
lock-step with the policy's default scheme: a chunk every execute_steps steps) for diffusion
(100 DDPM, 16 and 10 DDIM steps) and ACT, state and camera (agentview + wrist at 84x84)
variants, at the CPU recipes' sizes (``<policy>_cpu.yaml`` for state,
``<policy>_cpu_camera.yaml`` for cameras).
Baselines measured in the same run: one denoiser evaluation (what each sampler step costs),
and the control period the policy must fit into.

Fast modes: a one-step consistency chunk (what a ``--distill-from`` student runs) and a 1-step
DDIM chunk, interleaved chunk by chunk with DDIM-10 on the same network (target: the one-step
chunk >= 5x faster at p50 and p99).

Image layout: the camera encoder fed uint8 frames as a policy feeds it, against the same
network fed a ready contiguous NCHW float tensor (target <= 1.1x), at the camera recipes'
width and at the standard ResNet-18 width.

Training: samples/s of the real trainer on a synthetic store, and the fraction of step time
spent waiting for data (target < 10%), against the raw dataset read rate.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "osmesa")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from data.dataset import SequenceDataset  # noqa: E402
from data.embodiment import load_embodiment  # noqa: E402
from data.store import DemoStore  # noqa: E402
from policies.inputs import build_normalizer, resolve_inputs  # noqa: E402
from policies.registry import get_policy_class, make_config  # noqa: E402
from policies.trainer import TrainConfig, Trainer  # noqa: E402

RECIPES = Path(__file__).resolve().parents[2] / "policies" / "recipes"
STATE_KEYS = ["eef_pos", "eef_quat", "gripper_pos", "joint_pos", "joint_vel"]
CAMERAS = ["agentview", "wrist"]


def make_store(path: Path, image: bool, episodes: int = 20, T: int = 40) -> DemoStore:
    spec = load_embodiment("sim_panda").with_cameras(CAMERAS if image else [], None)
    store = DemoStore.create(path, spec, force=True)
    rng = np.random.default_rng(0)
    for e in range(episodes):
        ep = {
            k: rng.standard_normal((T, *spec.observation[k])).astype(np.float32) for k in STATE_KEYS
        }
        ep["action"] = rng.standard_normal((T, spec.action_dim)).astype(np.float32)
        for cam in CAMERAS if image else []:
            ep[cam] = rng.integers(0, 255, (T, 84, 84, 3), dtype=np.uint8)
        store.append_episode(ep, task="lift", source="scripted", success=True, seed=e)
    return store


def build(name: str, store: DemoStore, **overrides):
    variant = "cpu_camera" if store.image_keys else "cpu"
    recipe = yaml.safe_load((RECIPES / f"{name}_{variant}.yaml").read_text())
    config = make_config(name, {**recipe["policy"], **overrides})
    config = resolve_inputs(store, config, store.embodiment)
    normalizer = build_normalizer(store, config, store.embodiment, None)
    policy = get_policy_class(name)(config, store.embodiment, normalizer).eval()
    return policy, recipe


def percentiles(ms: list[float]) -> dict[str, float]:
    return {
        "p50": round(float(np.percentile(ms, 50)), 3),
        "p99": round(float(np.percentile(ms, 99)), 3),
    }


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def first_obs(policy, store: DemoStore) -> dict[str, torch.Tensor]:
    """{k: (1, To, ...)}: the first To steps of episode 0, as a policy's batch."""
    ep, To = store.episode(0), policy.config.n_obs_steps
    return {k: torch.from_numpy(ep[k][:To])[None] for k in policy.input_keys}


def latency(policy, store: DemoStore, n_chunk: int, n_steps: int) -> dict:
    ep = store.episode(0)
    obs_batch = first_obs(policy, store)
    policy.predict_action_chunk(obs_batch)  # warm-up
    chunk = timed(lambda: policy.predict_action_chunk(obs_batch), n_chunk)
    policy.reset()
    steps = iter(range(10**9))
    select = timed(
        lambda: policy.select_action(
            {k: ep[k][next(steps) % len(ep[k])] for k in policy.input_keys}
        ),
        n_steps,
    )
    # the node's runner infers a chunk on its own thread and executes it over the next steps:
    # per control step that costs chunk / (steps a chunk serves: the default scheme's
    # execute_steps; temporal ensembling would infer one every step)
    per_chunk = policy.default_execute_steps if policy.default_scheme != "ensemble" else 1
    return {
        "predict_action_chunk_ms": percentiles(chunk),
        "select_action_ms": percentiles(select),
        "per_step_amortised_ms": percentiles([t / per_chunk for t in chunk]),
    }


def fast_modes(policy, store: DemoStore, reps: int) -> dict:
    """Chunk latency of the one-step modes against DDIM-10, interleaved chunk by chunk so the
    machine's load hits every mode alike (a student's weights cost what the teacher's do)."""
    c = policy.config
    obs_batch = first_obs(policy, store)
    modes = {"ddim10": ("ddim", 10), "consistency1": ("consistency", 1), "ddim1": ("ddim", 1)}
    ms: dict[str, list[float]] = {m: [] for m in modes}
    for rep in range(reps + 1):
        for m, (sched, n) in modes.items():
            policy.set_inference(sched, n)
            t = timed(lambda: policy.predict_action_chunk(obs_batch), 1)
            if rep:  # the first round warms every sampler up
                ms[m] += t
    policy.set_inference(c.inference_scheduler, c.num_inference_steps)
    out: dict = {m: percentiles(v) for m, v in ms.items()}
    for q in ("p50", "p99"):
        out[f"consistency1_speedup_{q}"] = round(out["ddim10"][q] / out["consistency1"][q], 2)
    return out


def train_throughput(name: str, store: DemoStore, steps: int, workers: int | None) -> dict:
    """The real trainer's samples/s and data-wait share (``workers`` None: the recipe's)."""
    policy, recipe = build(name, store)
    workers = recipe["train"].get("num_workers", 0) if workers is None else workers
    data_only = SequenceDataset(
        store.path,
        policy.input_keys,
        n_obs_steps=policy.config.n_obs_steps,
        horizon=policy.config.horizon,
    )
    loader = torch.utils.data.DataLoader(
        data_only, batch_size=64, shuffle=True, num_workers=workers
    )
    t0, n = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        n += len(batch["action"])
        if i >= 10:
            break
    read_rate = n / (time.perf_counter() - t0)
    cfg = TrainConfig.from_dict(
        {
            **recipe["train"],
            "steps": steps,
            "num_workers": workers,
            "save_every": 10**6,
            "max_minutes": 0.0,
        }
    )
    with tempfile.TemporaryDirectory() as run:
        summary = Trainer(policy.train(), data_only, cfg, Path(run), device="cpu").train(
            progress=False
        )
    return {
        "samples_per_s": round(summary["samples_per_s"], 1),
        "data_wait_fraction": round(summary["data_wait_fraction"], 4),
        "data_read_samples_per_s": round(read_rate, 1),
        "num_workers": workers,
    }


def image_layout(width: int, reps: int) -> dict:
    """The camera encoder on uint8 frames (as policies call it) against the same network on a
    contiguous NCHW float tensor: the cost of the input's memory layout, if any."""
    from policies.common.encoder import ObsEncoder

    enc = ObsEncoder({}, {"agentview": (84, 84, 3)}, 0.9, width).eval()
    frames = torch.randint(0, 256, (2, 84, 84, 3), dtype=torch.uint8)  # To = 2 frames
    h, w = enc.crops["agentview"]
    nchw = torch.rand(2, 3, h, w) * 2 - 1  # contiguous by construction
    net = torch.nn.Sequential(enc.backbones["agentview"], enc.keypoints["agentview"])
    policy_path, baseline = [], []
    with torch.no_grad():
        for _ in range(3):
            enc({"agentview": frames}), net(nchw)  # warm-up
        for _ in range(reps):  # interleaved: the machine's load hits both alike
            policy_path += timed(lambda: enc({"agentview": frames}), 1)
            baseline += timed(lambda: net(nchw), 1)
    ratio = np.percentile(policy_path, 50) / np.percentile(baseline, 50)
    return {
        "vision_width": width,
        "encoder_ms": percentiles(policy_path),
        "contiguous_nchw_ms": percentiles(baseline),
        "ratio_p50": round(float(ratio), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    args = p.parse_args()
    reps = 3 if args.quick else 20
    torch.set_num_threads(1)  # as the CPU recipes (see policies/trainer.py)
    torch.manual_seed(0)
    out: dict = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        stores = {v: make_store(Path(tmp) / f"{v}.zarr", v == "image") for v in ("state", "image")}
        out["control_period_ms"] = 1000 / stores["state"].embodiment.control_hz
        for width in (16, 64):
            out[f"image_layout_width{width}"] = image_layout(width, reps)
        for variant, store in stores.items():
            dp, _ = build("diffusion", store)
            cond = dp._condition(first_obs(dp, store))
            x = torch.zeros(1, dp.config.horizon, dp.action_dim)
            t = torch.zeros(1, dtype=torch.long)
            with torch.no_grad():
                out[f"diffusion_{variant}_denoiser_eval_ms"] = percentiles(
                    timed(functools.partial(dp._denoise, x, t, cond), reps)
                )
            for sched, n in (("ddpm", 100), ("ddim", 16), ("ddim", 10)):
                dp.set_inference(sched, n)
                out[f"diffusion_{variant}_{sched}{n}"] = latency(
                    dp, store, max(3, reps // (5 if n == 100 else 1)), 2 * dp.config.n_action_steps
                )
            out[f"diffusion_{variant}_fast_modes"] = fast_modes(dp, store, reps)
            act, _ = build("act", store)
            out[f"act_{variant}"] = latency(act, store, reps, reps)
        steps = 5 if args.quick else 40
        for name in ("diffusion", "act"):
            out[f"train_{name}_state"] = train_throughput(name, stores["state"], steps, 0)
            out[f"train_{name}_image"] = train_throughput(name, stores["image"], steps // 2, None)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
