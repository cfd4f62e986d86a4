"""Learning from interventions: per-step labels in the store and the converters, weighted
sampling, the scripted corrector in simulation, the recorder's labels, and the whole cycle
(collect demos -> train -> corrected rollouts -> fine-tune with --init)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from data.convert import convert
from data.dataset import SequenceDataset, label_masses, sample_weights
from data.embodiment import load_embodiment
from data.errors import UserError
from data.store import (
    AUTONOMOUS,
    DEMONSTRATION,
    INTERVENTION,
    PRE_INTERVENTION,
    DemoStore,
    label_rollout,
)
from data.validate import validate_store
from tests.conftest import make_episode

SPEC = load_embodiment("sim_panda").with_cameras([], None)


def flags(*runs: tuple[int, int]) -> np.ndarray:
    """(value, length) runs -> a bool takeover flag."""
    return np.concatenate([np.full(n, bool(v)) for v, n in runs])


def rollout(T: int, seed: int, flag: np.ndarray | None = None) -> dict[str, np.ndarray]:
    ep = make_episode(T, seed=seed, image_hw=None)
    if flag is not None:
        ep["intervention"] = flag
        ep["label"] = label_rollout(flag)
    return ep


# ---- labels -------------------------------------------------------------------------------


def test_pre_intervention_window_stops_at_an_earlier_takeover():
    f = flags((0, 20), (1, 3), (0, 5), (1, 2), (0, 4))
    labels = label_rollout(f, pre_steps=4)
    expected = np.array(
        [AUTONOMOUS] * 16 + [PRE_INTERVENTION] * 4 + [INTERVENTION] * 3 + [AUTONOMOUS]
        + [PRE_INTERVENTION] * 4 + [INTERVENTION] * 2 + [AUTONOMOUS] * 4
    )  # fmt: skip
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.uint8
    # a longer window runs back to the earlier takeover and no further
    labels = label_rollout(f, pre_steps=10)
    np.testing.assert_array_equal(labels[23:28], [PRE_INTERVENTION] * 5)
    assert labels[22] == INTERVENTION and labels[9] == AUTONOMOUS and labels[10] == PRE_INTERVENTION


def test_labels_round_trip_and_old_stores_stay_readable_and_appendable(tmp_path):
    # an old store: a scripted demonstration and a policy rollout with only the teleop flag
    store = DemoStore.create(tmp_path / "old.zarr", SPEC)
    store.append_episode(make_episode(30, 0, None), task="lift", source="scripted")
    old_flag = flags((0, 20), (1, 5), (0, 5))
    ep = make_episode(30, 1, None) | {"intervention": old_flag}
    store.append_episode(ep, task="lift", source="policy")
    store = DemoStore.open(store.path, "a")
    assert "label" not in store.keys
    derived = store.episode_labels(1)
    np.testing.assert_array_equal(derived, label_rollout(old_flag))
    assert (store.episode_labels(0) == DEMONSTRATION).all()
    # a labelled corrected rollout joins it: the label array is added, derived for the old steps
    f = flags((0, 25), (1, 10), (0, 5))
    store.append_episode(rollout(40, 2, f), task="lift", source="corrected")
    # and a later demonstration without labels gets the default
    store.append_episode(make_episode(12, 3, None), task="lift", source="scripted")
    store = DemoStore.open(store.path)
    assert validate_store(store, progress=False) == []
    np.testing.assert_array_equal(store.episode_labels(1), derived)
    np.testing.assert_array_equal(store.episode_labels(2), label_rollout(f))
    assert (store.episode_labels(0) == DEMONSTRATION).all()
    assert (store.episode_labels(3) == DEMONSTRATION).all()
    assert store.data["label"].dtype == np.uint8 and store.read("label").shape == (112,)
    assert not store.episode(3)["intervention"].any()
    assert store.episode_meta(2)["source"] == "corrected"
    # any other new key is still refused
    with pytest.raises(UserError, match="differ"):
        store = DemoStore.open(store.path, "a")
        store.append_episode(make_episode(5, 4, None) | {"reward": np.zeros(5, np.float32)})


def test_a_demonstration_store_and_corrected_rollouts_merge(tmp_path):
    """handoff-data merge: a store without labels + a store of labelled corrected rollouts."""
    from data.cli import main as data_main

    demos = DemoStore.create(tmp_path / "demos.zarr", SPEC)
    demos.append_episode(make_episode(20, 0, None), task="lift", source="scripted")
    rolls = DemoStore.create(tmp_path / "rolls.zarr", SPEC)
    f = flags((0, 20), (1, 6), (0, 4))
    rolls.append_episode(rollout(30, 1, f), task="lift", source="corrected")
    out = tmp_path / "merged.zarr"
    data_main(["merge", str(tmp_path / "demos.zarr"), str(tmp_path / "rolls.zarr"), str(out)])
    merged = DemoStore.open(out)
    assert merged.n_episodes == 2 and validate_store(merged, progress=False) == []
    assert (merged.episode_labels(0) == DEMONSTRATION).all()
    np.testing.assert_array_equal(merged.episode_labels(1), label_rollout(f))


def test_validate_names_an_unknown_label(tmp_path):
    store = DemoStore.create(tmp_path / "bad.zarr", SPEC)
    ep = rollout(10, 0, flags((0, 5), (1, 5)))
    ep["label"][3] = 9
    store.append_episode(ep, source="corrected")
    problems = validate_store(store, progress=False)
    assert len(problems) == 1 and "data/label holds 9 at step 3" in problems[0]
    with pytest.raises(UserError, match="unknown"):
        SequenceDataset(store, ["joint_pos"], n_obs_steps=1, horizon=2, weighting="sirius")


def test_labels_are_reserved_and_never_an_observation(tmp_path):
    from dataclasses import replace

    from policies.inputs import resolve_inputs
    from policies.registry import get_policy_class

    with pytest.raises(ValueError, match="reserved"):
        replace(SPEC, observation={**SPEC.observation, "label": (1,)})
    store = DemoStore.create(tmp_path / "s.zarr", SPEC)
    store.append_episode(rollout(20, 0, flags((0, 10), (1, 10))), source="corrected")
    config = get_policy_class("act").config_class()
    keys = resolve_inputs(store, config, SPEC).obs_keys
    assert keys == ["joint_pos", "joint_vel"]


@pytest.mark.parametrize(
    ("fmt", "dst"), [("lerobot", "lr"), ("robomimic", "r.hdf5"), ("rosbag2", "bag")]
)
def test_labels_survive_every_converter(tmp_path, fmt, dst):
    from tests.data.test_convert_common import make_episode as full_episode
    from tests.data.test_convert_common import spec

    store = DemoStore.create(tmp_path / "a.zarr", spec().with_cameras([], None))
    rng = np.random.default_rng(0)

    def episode(T):  # every key the formats map (the rosbag importer needs the eef pose)
        return {k: v for k, v in full_episode(rng, T).items() if k not in ("agentview", "wrist")}

    store.append_episode(episode(8), task="lift", source="scripted", success=True)
    f = flags((0, 6), (1, 4), (0, 2))
    ep = episode(12) | {"intervention": f, "label": label_rollout(f)}
    store.append_episode(ep, task="lift", source="corrected", success=False)
    convert(tmp_path / "a.zarr", tmp_path / dst, "handoff", fmt, progress=False)
    if fmt == "lerobot":  # a LeRobot policy reads every observation.* column: labels are not one
        features = json.loads((tmp_path / dst / "meta/info.json").read_text())["features"]
        assert "label" in features and "observation.label" not in features
    convert(tmp_path / dst, tmp_path / "b.zarr", fmt, "handoff", progress=False)
    out = DemoStore.open(tmp_path / "b.zarr")
    for i in range(2):
        np.testing.assert_array_equal(out.episode_labels(i), store.episode_labels(i))
        assert out.episode_meta(i)["source"] == store.episode_meta(i)["source"]
    assert out.data["label"].dtype == np.uint8


# ---- weighted sampling ----------------------------------------------------------------------


def test_sirius_masses_follow_the_paper_and_degrade_to_uniform():
    labels = np.repeat(
        [DEMONSTRATION, AUTONOMOUS, INTERVENTION, PRE_INTERVENTION], [100, 600, 80, 40]
    )
    mass = label_masses(labels, "sirius")
    assert mass[INTERVENTION] == pytest.approx(0.5)
    assert mass[PRE_INTERVENTION] == pytest.approx(0.002)
    assert mass[DEMONSTRATION] == pytest.approx(100 / 820)
    assert mass[AUTONOMOUS] == pytest.approx(1 - 0.5 - 0.002 - 100 / 820)
    only = label_masses(labels, "interventions-only")
    assert set(only) == {DEMONSTRATION, INTERVENTION}
    assert only[INTERVENTION] == pytest.approx(80 / 180)
    assert label_masses(labels, "uniform")[AUTONOMOUS] == pytest.approx(600 / 820)
    # demonstrations only: every weighting samples uniformly (the trainer keeps its permutation)
    demos = np.zeros(50, np.uint8)
    assert sample_weights(demos, "sirius") is None and sample_weights(demos, "uniform") is None
    with pytest.raises(UserError, match="no step to sample"):
        label_masses(np.full(10, AUTONOMOUS), "interventions-only")
    with pytest.raises(UserError, match="choose one of"):
        label_masses(demos, "iwr")


@pytest.mark.parametrize("weighting", ["sirius", "interventions-only", "uniform"])
def test_sampled_mass_matches_the_stated_mass(tmp_path, weighting):
    from policies.trainer import EpochSampler

    store = DemoStore.create(tmp_path / "w.zarr", SPEC)
    for e in range(4):
        store.append_episode(make_episode(25, e, None), source="scripted", success=True)
    for e in range(6):
        f = flags((0, 60), (1, 12), (0, 20), (1, 8))
        store.append_episode(rollout(100, 10 + e, f), source="corrected")
    ds = SequenceDataset(store, ["joint_pos"], n_obs_steps=2, horizon=4, weighting=weighting)
    assert len(ds.labels) == len(ds) == store.n_steps
    mass = label_masses(ds.labels, weighting)
    sampler = EpochSampler(len(ds), seed=0, weights=ds.weights)
    drawn = []
    for epoch in range(60):
        sampler.set_position(epoch)
        drawn += list(sampler)
    drawn_labels = ds.labels[np.array(drawn)]
    for label in (DEMONSTRATION, AUTONOMOUS, INTERVENTION, PRE_INTERVENTION):
        share = np.mean(drawn_labels == label)
        assert share == pytest.approx(mass.get(label, 0.0), abs=0.01), (label, share)
    # a resumed epoch continues the same draws
    sampler.set_position(3, 100)
    part = list(sampler)
    sampler.set_position(3)
    assert list(sampler)[100:] == part


# ---- the scripted corrector ----------------------------------------------------------------


class FailingRunner:
    """A policy runner stand-in: the scripted expert, bent by ``fail(k, obs, action)`` (k counts
    the episode's policy steps; a hand-back's reset keeps counting)."""

    def __init__(self, task, fail):
        from sim.experts import make_expert

        self.expert = make_expert(task)
        self.fail = fail
        self.k = 0

    def reset(self, seed=None):
        self.expert.reset(seed)
        if seed is not None:
            self.k = 0

    def tick(self, obs, now, joints=None):
        action = self.expert.select_action(obs)
        command = self.fail(self.k, obs, action)
        self.k += 1
        return SimpleNamespace(command=command)


@pytest.fixture(scope="module")
def lift():
    from sim.tasks import make_task

    task = make_task("lift")
    yield task
    task.close()


def _stall_after(n):
    return lambda k, obs, a: a if k < n else None


def test_hg_dagger_takes_over_a_stalled_policy_and_hands_back(lift):
    from sim.corrector import Corrector, CorrectorConfig, run_corrected_episode

    corrector = Corrector(lift, CorrectorConfig(style="hg-dagger", handback_steps=25))
    steps, success, meta = run_corrected_episode(
        lift, FailingRunner(lift, _stall_after(25)), corrector, 3
    )
    labels, flag = steps["label"], steps["intervention"]
    first = meta["takeovers"][0]
    assert first[2] == "stall" and meta["source"] == "corrected"
    # the stall is noticed stall_steps after the policy stops, not before
    assert 25 + 20 <= first[0] <= 25 + 20 + 10, meta["takeovers"]
    assert flag[first[0] : first[1]].all() and not flag[: first[0]].any()
    assert (labels[first[0] - 15 : first[0]] == PRE_INTERVENTION).all()
    assert labels[first[0] - 16] == AUTONOMOUS
    # handed back: the policy acts again after the takeover ends
    assert first[1] < len(labels) and not flag[first[1]], meta["takeovers"]
    assert meta["intervention_steps"] == int(flag.sum())
    assert set(steps) >= {"joint_pos", "object_state", "action", "label", "intervention"}


def test_rac_recovers_completes_the_pick_and_ends_the_episode(lift):
    from sim.corrector import REL, Corrector, CorrectorConfig, run_corrected_episode

    corrector = Corrector(lift, CorrectorConfig(style="rac"))
    steps, _, meta = run_corrected_episode(lift, FailingRunner(lift, _stall_after(8)), corrector, 4)
    assert corrector.done and len(meta["takeovers"]) == 1
    start, end, reason = meta["takeovers"][0]
    T = len(steps["label"])
    assert reason == "stall" and end == T  # the correction is the end of the episode
    assert (steps["label"][start:] == INTERVENTION).all()
    # the pick sub-task is complete: the cube is in the closed gripper
    assert np.linalg.norm(steps["object_state"][-1][REL]) < 0.05
    assert steps["action"][-1][-1] > 0
    # it backed off first: to the hover above the cube every demonstration passes through
    rel = steps["object_state"][start:, 7:10]  # cube - gripper
    hover = (rel[:, 2] < -0.07) & (np.linalg.norm(rel[:, :2], axis=1) < 0.03)
    assert hover.any()


def test_drift_away_from_the_expert_path_triggers_a_takeover(lift):
    from sim.corrector import Corrector, CorrectorConfig, run_corrected_episode

    def swerve(k, obs, a):
        a = a.copy()
        a[0] += 0.02 * max(0, k - 15)  # the base joint turns away, further every step
        return a

    corrector = Corrector(lift, CorrectorConfig(style="hg-dagger"))
    _, _, meta = run_corrected_episode(lift, FailingRunner(lift, swerve), corrector, 5)
    assert meta["takeovers"] and meta["takeovers"][0][2] == "drift", meta["takeovers"]


def test_a_dropped_object_triggers_a_takeover():
    from sim.corrector import Corrector, CorrectorConfig, run_corrected_episode
    from sim.tasks import make_task

    held = []

    def let_go(k, obs, a):
        if a[-1] > 0 and np.linalg.norm(obs["object_state"][7:10]) < 0.05:
            held.append(k)
        if len(held) > 25:  # carried for a while, then opened far from the bin
            a = a.copy()
            a[-1] = -1.0
        return a

    with make_task("can") as task:
        corrector = Corrector(task, CorrectorConfig(style="hg-dagger"))
        _, _, meta = run_corrected_episode(task, FailingRunner(task, let_go), corrector, 2)
    assert meta["takeovers"] and meta["takeovers"][0][2] == "drop", meta["takeovers"]


# ---- the recorder's labels (plain Python, no DDS) ------------------------------------------


def test_streamed_labels_equal_whole_episode_labels():
    pytest.importorskip("sensor_msgs")
    from handoff_ros.episode_recorder import RolloutLabeler

    rng = np.random.default_rng(0)
    for _ in range(20):
        f = np.repeat(rng.random(12) < 0.4, rng.integers(1, 25, 12))
        labeler = RolloutLabeler()
        out = []
        for v in f:
            out += labeler.push({"intervention": np.array(v)})
        out += labeler.flush()
        np.testing.assert_array_equal([s["label"] for s in out], label_rollout(f))


def test_recorder_labels_a_policy_rollout_from_the_engaged_flag(tmp_path):
    pytest.importorskip("sensor_msgs")
    from handoff_ros.episode_recorder import EpisodeRecorder, Stream

    store = DemoStore.create(tmp_path / "rec.zarr", SPEC)
    streams = {
        "joint_states": Stream("joint_states", max_age=0.1),
        "engaged": Stream("engaged", max_age=0.5),
    }
    rec = EpisodeRecorder(
        store,
        streams,
        {},
        {"task": "lift", "source": "policy", "operator": "test"},
        optional={
            "engaged": {"intervention": np.array(False)},
        },
        label_rollouts=True,
    )
    for e, engaged in enumerate([set(range(25, 31)), set()]):
        rec.start()
        for k in range(40):
            t = 100.0 * e + k * 0.05
            q = {"joint_pos": np.full(7, k, np.float32), "joint_vel": np.zeros(7, np.float32)}
            streams["joint_states"].push(t - 0.01, q, t)
            streams["engaged"].push(t - 0.01, {"intervention": np.array(k in engaged)}, t)
            assert rec.tick(t) is not None
        assert rec.stop()[0]
        assert rec.flush()
    rec.close()
    store = DemoStore.open(store.path)
    assert store.n_episodes == 2 and validate_store(store, progress=False) == []
    labels = store.episode_labels(0)
    assert (labels[25:31] == INTERVENTION).all() and (labels[10:25] == PRE_INTERVENTION).all()
    assert (labels[:10] == AUTONOMOUS).all() and (labels[31:] == AUTONOMOUS).all()
    assert store.episode_meta(0)["source"] == "corrected"
    assert store.episode_meta(1)["source"] == "policy"
    assert (store.episode_labels(1) == AUTONOMOUS).all()


# ---- the cycle: demonstrations -> policy -> corrected rollouts -> fine-tuning --------------


def test_collect_correct_and_fine_tune_from_a_checkpoint(tmp_path, capsys):
    from safetensors.torch import load_file

    from policies.train import main as train_main
    from sim.collect import collect
    from sim.collect import main as collect_main

    demos = tmp_path / "lift.zarr"
    collect("lift", 2, demos, progress=False)
    tiny = ["policy.down_dims=[16,32]", "policy.diffusion_step_embed_dim=16"]
    tiny += ["policy.num_inference_steps=2", "train.warmup_steps=1"]

    def train(out, *extra):
        argv = ["--data", str(demos), "--out", str(out), "--device", "cpu", "--no-progress"]
        argv += ["--batch-size", "4", *extra]
        for s in tiny:
            argv += ["--set", s]
        return train_main(argv)

    assert train(tmp_path / "base", "--policy", "diffusion", "--steps", "4") == 0
    collect_main(
        ["--task", "lift", "--policy", str(tmp_path / "base"), "--corrector", "hg-dagger",
         "--episodes", "1", "--out", str(demos), "--no-progress"]
    )  # fmt: skip
    assert "corrected rollouts" in capsys.readouterr().out
    store = DemoStore.open(demos)
    assert store.n_episodes == 3 and validate_store(store, progress=False) == []
    meta = store.episode_meta(2)
    assert meta["source"] in ("corrected", "policy") and meta["corrector"] == "hg-dagger"
    assert meta["seed"] == 2  # after the demonstrations' seeds
    assert (store.episode_labels(0) == DEMONSTRATION).all()
    rollout_labels = store.episode_labels(2)
    assert set(np.unique(rollout_labels)) <= {AUTONOMOUS, INTERVENTION, PRE_INTERVENTION}
    assert int((rollout_labels == INTERVENTION).sum()) == meta["intervention_steps"]

    # fine-tune: the checkpoint's weights and normaliser, a negligible learning rate
    base = tmp_path / "base" / "last"
    argv = ["--init", str(tmp_path / "base"), "--steps", "2"]  # the default weighting
    assert train(tmp_path / "ft", *argv, "--set", "train.lr=1e-12") == 0
    ft = tmp_path / "ft" / "last"
    a, b = load_file(str(base / "model.safetensors")), load_file(str(ft / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-5, err_msg=k)
    assert (base / "normalizer.safetensors").read_bytes() == (
        ft / "normalizer.safetensors"
    ).read_bytes()
    run = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert run["init"] == str(tmp_path / "base")
    assert run["train"]["weighting"] == "interventions-only"
    assert not {"label", "intervention"} & set(run["policy_config"]["obs_keys"])
    train_meta = json.loads((ft / "train_meta.json").read_text())
    assert train_meta["episodes"] == 3  # the corrected rollout is trained on, success or not
    # --refit-normalizer: statistics of the new data
    assert train(tmp_path / "refit", *argv, "--refit-normalizer") == 0
    refit = tmp_path / "refit" / "last" / "normalizer.safetensors"
    assert refit.read_bytes() != (base / "normalizer.safetensors").read_bytes()
