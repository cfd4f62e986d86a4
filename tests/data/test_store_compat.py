"""Stores written by diffusion_policy / UMI (zarr format 2) open read-only and train."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from data.dataset import SequenceDataset, compute_stats
from data.errors import UserError
from data.store import DemoStore

EPISODE_LENGTHS = [12, 9, 15]


def _write_diffusion_policy_store(path: Path, compressor) -> dict[str, np.ndarray]:
    """The ReplayBuffer layout, written with zarr's own API in format 2."""
    n = sum(EPISODE_LENGTHS)
    rng = np.random.default_rng(0)
    arrays = {
        "img": rng.integers(0, 255, (n, 96, 96, 3), dtype=np.uint8),
        "state": rng.standard_normal((n, 5)).astype(np.float32),
        "action": rng.standard_normal((n, 2)).astype(np.float32),
    }
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = root.create_group("data")
    for key, value in arrays.items():
        kwargs = {"compressor": compressor} if key == "img" else {}
        chunks = (1, 96, 96, 3) if key == "img" else (100, value.shape[1])
        arr = data.create_array(key, shape=value.shape, chunks=chunks, dtype=value.dtype, **kwargs)
        arr[:] = value
    meta = root.create_group("meta")
    ends = meta.create_array("episode_ends", shape=(3,), dtype=np.int64)
    ends[:] = np.cumsum(EPISODE_LENGTHS)
    return arrays


def _zip_dir(src: Path, dst: Path) -> None:
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(src).as_posix())


def _compressors():
    import numcodecs
    from imagecodecs.numcodecs import Jpeg2k

    return {"blosc": numcodecs.Blosc("zstd", 3), "jpeg2k-lossless": Jpeg2k(level=0)}


@pytest.mark.parametrize("codec", ["blosc", "jpeg2k-lossless"])
@pytest.mark.parametrize("as_zip", [False, True])
def test_diffusion_policy_store_opens_and_samples(tmp_path, codec, as_zip):
    directory = tmp_path / "pusht.zarr"
    arrays = _write_diffusion_policy_store(directory, _compressors()[codec])
    path = directory
    if as_zip:
        path = tmp_path / "pusht.zarr.zip"
        _zip_dir(directory, path)

    store = DemoStore.open(path)
    assert store.zarr_format == 2 and store.read_only
    assert store.n_episodes == 3 and store.n_steps == sum(EPISODE_LENGTHS)
    assert store.image_keys == ["img"] and store.embodiment is None
    np.testing.assert_array_equal(store.episode(1)["img"], arrays["img"][12:21])

    ds = SequenceDataset(store, ["img", "state"], n_obs_steps=2, horizon=16)
    assert len(ds) == sum(EPISODE_LENGTHS)
    sample = ds[12]  # first step of episode 1: the first observation is edge-padded
    assert sample["obs"]["img"].shape == (2, 96, 96, 3)
    np.testing.assert_array_equal(sample["obs"]["img"][0].numpy(), arrays["img"][12])
    np.testing.assert_array_equal(sample["action"][1].numpy(), arrays["action"][12])
    # window covers steps 11..26, the episode ends at 21: steps 21..26 are padding
    assert sample["action_is_pad"].sum() == 6
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, shuffle=True)
    batch = next(iter(loader))
    assert batch["obs"]["img"].shape == (8, 2, 96, 96, 3)
    assert batch["action"].shape == (8, 16, 2)
    stats = compute_stats(store, ["state", "action"])
    np.testing.assert_allclose(stats["state"]["mean"], arrays["state"].mean(0), atol=1e-5)

    with pytest.raises(UserError, match="read-only"):
        DemoStore.open(path, "a")
