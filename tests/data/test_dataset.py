"""Training windows, padding, filters, statistics and DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import data.dataset as dataset_mod
from data.dataset import SequenceDataset, compute_stats, select_episodes, split_episodes
from data.errors import UserError


def test_windows_match_the_store_with_edge_padding(small_store):
    ds = SequenceDataset(small_store, ["joint_pos", "agentview"], n_obs_steps=2, horizon=5)
    assert len(ds) == 10 + 11 + 12 + 13
    ep = small_store.episode(1)  # steps 10..20
    first = ds[10]  # t = first step of episode 1
    np.testing.assert_array_equal(first["obs"]["joint_pos"].numpy(), ep["joint_pos"][[0, 0]])
    np.testing.assert_array_equal(first["obs"]["agentview"].numpy(), ep["agentview"][[0, 0]])
    np.testing.assert_array_equal(first["action"].numpy(), ep["action"][[0, 0, 1, 2, 3]])
    assert not first["action_is_pad"].any()
    last = ds[20]  # t = last step of episode 1 (T = 11)
    np.testing.assert_array_equal(last["obs"]["joint_pos"].numpy(), ep["joint_pos"][[9, 10]])
    np.testing.assert_array_equal(last["action"].numpy(), ep["action"][[9, 10, 10, 10, 10]])
    assert last["action_is_pad"].tolist() == [False, False, True, True, True]
    assert first["obs"]["agentview"].dtype == torch.uint8
    assert first["obs"]["joint_pos"].dtype == torch.float32


def test_episode_filters_and_split(small_store):
    ok = select_episodes(small_store, success=True)
    assert ok == [0, 2, 3]
    ds = SequenceDataset(small_store, ["joint_pos"], n_obs_steps=1, horizon=3, episodes=ok)
    assert len(ds) == 10 + 12 + 13
    train, val = split_episodes(small_store, 0.25, seed=1)
    assert sorted(train + val) == [0, 1, 2, 3] and len(val) == 1
    assert split_episodes(small_store, 0.25, seed=1) == (train, val)
    with pytest.raises(UserError, match="out of range"):
        SequenceDataset(small_store, ["joint_pos"], episodes=[7])


def test_missing_key_is_named(small_store):
    with pytest.raises(UserError, match=r"\['wrist'\]"):
        SequenceDataset(small_store, ["joint_pos", "wrist"])


def test_dataloader_with_workers_matches_direct_access(small_store):
    ds = SequenceDataset(small_store.path, ["joint_pos", "agentview"], n_obs_steps=2, horizon=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=7, num_workers=2, shuffle=False)
    seen = 0
    for b, batch in enumerate(loader):
        assert batch["obs"]["agentview"].shape[1:] == (2, 16, 16, 3)
        for j in range(len(batch["action"])):
            ref = ds[b * 7 + j]
            np.testing.assert_array_equal(batch["obs"]["agentview"][j], ref["obs"]["agentview"])
            np.testing.assert_array_equal(batch["action"][j], ref["action"])
            seen += 1
    assert seen == len(ds)


def test_batched_fetch_matches_samples_with_and_without_the_collate(small_store):
    """The batched path (``__getitems__``) equals per-sample access, whether the loader uses
    ``SequenceDataset.collate`` (no copy) or torch's default collate, in workers or not."""
    ds = SequenceDataset(small_store.path, ["joint_pos", "agentview"], n_obs_steps=2, horizon=4)
    order = [45, 0, 21, 20, 9, 10, 33]
    direct = [ds[i] for i in order]
    for workers in (0, 2):
        for collate in (SequenceDataset.collate, None):
            loader = torch.utils.data.DataLoader(
                ds, batch_size=7, sampler=order, num_workers=workers, collate_fn=collate
            )
            (batch,) = list(loader)
            for j, ref in enumerate(direct):
                for k in ("joint_pos", "agentview"):
                    np.testing.assert_array_equal(batch["obs"][k][j], ref["obs"][k])
                np.testing.assert_array_equal(batch["action"][j], ref["action"])
                np.testing.assert_array_equal(batch["action_is_pad"][j], ref["action_is_pad"])
            assert batch["obs"]["agentview"].shape == (7, 2, 16, 16, 3)


def test_stats_streaming_matches_numpy(small_store, monkeypatch):
    monkeypatch.setattr(dataset_mod, "STATS_BLOCK_ROWS", 3)  # force many blocks
    stats = compute_stats(small_store, ["joint_pos", "action", "agentview"])
    every = np.concatenate([small_store.episode(i)["joint_pos"] for i in range(4)])
    np.testing.assert_allclose(stats["joint_pos"]["mean"], every.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["joint_pos"]["std"], every.std(0), rtol=1e-4)
    np.testing.assert_array_equal(stats["joint_pos"]["min"], every.min(0))
    np.testing.assert_array_equal(stats["joint_pos"]["max"], every.max(0))
    assert stats["agentview"]["mean"].shape == (3,)
    assert 0.0 <= stats["agentview"]["min"].min() <= stats["agentview"]["max"].max() <= 1.0
    only_ok = compute_stats(small_store, ["action"], episodes=[0])
    np.testing.assert_allclose(
        only_ok["action"]["mean"], small_store.episode(0)["action"].mean(0), rtol=1e-5, atol=1e-6
    )


def test_damaged_frame_is_reported_with_its_path(small_store):
    chunk = next(
        p
        for p in (small_store.root.store.root / "data/agentview").iterdir()
        if p.name.startswith("c.")
    )
    chunk.write_bytes(chunk.read_bytes()[:10])  # a truncated chunk file
    with pytest.raises(UserError, match="damaged"):  # refused when the sampler opens the shard
        ds = SequenceDataset(small_store.path, ["agentview"], n_obs_steps=1, horizon=1)
        for i in range(len(ds)):
            ds[i]
