"""Training windows from a demonstration store, and normalisation statistics.

A sample is centred on a current step t of one episode::

    obs    steps t-To+1 .. t            (To = n_obs_steps)
    action steps t-To+1 .. t-To+Tp      (Tp = horizon; executed actions start at index To-1)

as in diffusion_policy, so one dataset serves diffusion (To=2, Tp=16) and ACT (To=1, Tp=chunk).
Steps outside the episode repeat its first/last step (edge padding); ``action_is_pad`` marks
action steps past the episode end, so a loss can ignore them.

Sample weighting (``weighting``, :func:`sample_weights`) draws samples by the label of their
current step t (data/store.py LABELS), for learning from corrections: ``interventions-only``
(demonstrations and the operator's steps: HG-DAgger's aggregate), ``sirius`` (Sirius' class
shares) and ``uniform`` (every sample alike, the policy's own steps included).

Low-dim arrays are read into memory once (they are small); image frames are decoded per batch
straight into the batch tensors (the DataLoader's ``__getitems__`` path; pass
``collate_fn=SequenceDataset.collate`` so the stacked batch is used as it is).
For the common layouts (a local zarr 3 store with one Blosc-compressed frame per chunk, or a
diffusion_policy/UMI format-2 store with a numcodecs compressor) frames are decoded straight
from the chunk files, skipping zarr's per-call overhead; every other store goes through zarr.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import UserError
from data.frames import FrameIO
from data.store import (
    AUTONOMOUS,
    DEMONSTRATION,
    INTERVENTION,
    LABELS,
    PRE_INTERVENTION,
    DemoStore,
    is_image_array,
)

STATS_BLOCK_ROWS = 65536  # rows per streamed block when computing statistics
IMAGE_STATS_MAX_FRAMES = 512  # image statistics come from an evenly strided subsample
WEIGHTINGS = ("uniform", "sirius", "interventions-only")
# Sirius (Liu et al. 2022, "Robot Learning on the Job"; official code UT-Austin-RPL/sirius,
# robomimic/utils/dataset.py WeightedDataset._sirius_reweight): interventions take half of the
# mass, pre-intervention steps 0.002 (the paper's sec. IV-D sets them to 0; the code keeps a
# trace), demonstrations keep their natural share, rollouts the rest. Sirius applies these as
# loss weights under uniform sampling; sampling with the same mass is the same objective in
# expectation and leaves each policy's loss untouched.
SIRIUS_INTERVENTION_SHARE = 0.5
SIRIUS_PRE_INTERVENTION_SHARE = 0.002


def label_masses(labels: np.ndarray, weighting: str) -> dict[int, float]:
    """The share of the sampling mass each label present in ``labels`` (N,) gets (sums to 1).

    ``uniform``: its share of the samples. ``sirius``: interventions
    SIRIUS_INTERVENTION_SHARE, pre-intervention SIRIUS_PRE_INTERVENTION_SHARE, demonstrations
    their natural share, autonomous steps what is left (none if demonstrations already take
    it); absent labels give their share to the others in proportion. ``interventions-only``:
    demonstration and intervention steps in proportion to their counts (the expert's actions:
    HG-DAgger's aggregate, Kelly et al. 2019 Alg. 1), the policy's own steps nothing.
    """
    if weighting not in WEIGHTINGS:
        raise UserError(f"weighting {weighting!r}: choose one of {', '.join(WEIGHTINGS)}")
    values, counts = np.unique(np.asarray(labels, dtype=np.int64), return_counts=True)
    unknown = sorted(set(values.tolist()) - set(LABELS.values()))
    if unknown:
        raise UserError(
            f"step labels {unknown} are unknown (labels: {LABELS}); run handoff-data validate"
        )
    natural = {int(v): c / max(1, counts.sum()) for v, c in zip(values, counts)}
    if weighting == "uniform":
        mass = natural
    elif weighting == "interventions-only":
        mass = {k: v for k, v in natural.items() if k in (DEMONSTRATION, INTERVENTION)}
    else:
        mass = {
            INTERVENTION: SIRIUS_INTERVENTION_SHARE,
            PRE_INTERVENTION: SIRIUS_PRE_INTERVENTION_SHARE,
            DEMONSTRATION: natural.get(DEMONSTRATION, 0.0),
        }
        mass[AUTONOMOUS] = max(0.0, 1.0 - sum(mass.values()))
        mass = {k: v for k, v in mass.items() if k in natural}
    total = sum(mass.values())
    if total <= 0:
        raise UserError(
            f"weighting {weighting!r}: no step to sample (the data holds only "
            f"{sorted(k for k, v in LABELS.items() if v in natural)} steps); use --weighting "
            f"uniform or add demonstrations/corrections"
        )
    return {k: v / total for k, v in mass.items() if v > 0}


def sample_weights(labels: np.ndarray, weighting: str) -> np.ndarray | None:
    """(N,) float64 sampling probabilities of samples labelled ``labels`` (N,): each label's
    mass (:func:`label_masses`) spread evenly over its samples. None when every sample is
    equally likely (uniform sampling: the trainer keeps its epoch permutation)."""
    labels = np.asarray(labels, dtype=np.int64)
    mass = label_masses(labels, weighting)
    p = np.zeros(len(labels))
    for label, m in mass.items():
        chosen = labels == label
        p[chosen] = m / chosen.sum()
    if np.allclose(p, 1.0 / len(p)):
        return None
    return p


class SequenceDataset:
    """Windows of To observation steps and Tp action steps (see module docstring).

    ``store`` is a DemoStore or a path (reopened lazily in each DataLoader worker).
    ``episodes`` restricts sampling to those episode indices (e.g. successful only).
    ``weighting`` (WEIGHTINGS) sets ``weights``: the (N,) probability of each sample, by the
    label of its current step t, or None for uniform sampling (:func:`sample_weights`).
    """

    def __init__(
        self,
        store: DemoStore | str | Path,
        obs_keys: Sequence[str],
        action_key: str = "action",
        n_obs_steps: int = 2,
        horizon: int = 16,
        episodes: Sequence[int] | None = None,
        weighting: str = "uniform",
    ) -> None:
        if n_obs_steps < 1 or horizon < 1:
            raise ValueError("n_obs_steps and horizon must be >= 1")
        self._path = store.path if isinstance(store, DemoStore) else str(store)
        self._store = store if isinstance(store, DemoStore) else None
        self._pid = os.getpid()
        s = self.store
        missing = [k for k in [*obs_keys, action_key] if k not in s.data]
        if missing:
            raise UserError(
                f"{self._path}: key(s) {missing} needed by the policy are not in the "
                f"store (it has {s.keys})"
            )
        self.obs_keys = list(obs_keys)
        self.action_key = action_key
        self.To = n_obs_steps
        self.Tp = horizon
        data = s.data
        self.image_keys = [k for k in self.obs_keys if is_image_array(data[k])]
        self.lowdim_keys = [k for k in self.obs_keys if k not in self.image_keys]
        self._lowdim = {
            k: np.asarray(s.read(k), dtype=np.float32) for k in [*self.lowdim_keys, action_key]
        }
        ends = s.episode_ends
        starts = np.concatenate([[0], ends[:-1]])
        chosen = range(s.n_episodes) if episodes is None else episodes
        t, lo, hi = [], [], []
        for e in chosen:
            if not 0 <= e < s.n_episodes:
                raise UserError(f"{self._path}: episode {e} out of range ({s.n_episodes} episodes)")
            t.append(np.arange(starts[e], ends[e]))
            lo.append(np.full(ends[e] - starts[e], starts[e]))
            hi.append(np.full(ends[e] - starts[e], ends[e]))
        if not t or sum(len(x) for x in t) == 0:
            raise UserError(f"{self._path}: no steps to sample (no episodes selected)")
        # per sample: (first obs step t-To+1, episode start, episode end - 1), one gather a batch
        self._steps = np.stack(
            [np.concatenate(t) - self.To + 1, np.concatenate(lo), np.concatenate(hi) - 1], 1
        )
        self._obs_offsets = np.arange(self.To)
        self._act_offsets = np.arange(self.Tp)
        self.episodes = list(chosen)
        steps = np.concatenate(t)
        self.labels = s.step_labels()[steps] if len(steps) else np.zeros(0, np.uint8)  # (N,)
        self.weighting = weighting
        self.weights = sample_weights(self.labels, weighting)  # (N,) or None: uniform
        self._readers: dict[str, FrameIO] | None = None
        for reader in self._readers_for().values():
            reader.check(s.n_steps)  # a damaged shard is refused now, not at its first batch

    @property
    def store(self) -> DemoStore:
        # Each DataLoader worker opens its own handle: a forked copy of the parent's would share
        # file offsets (zip stores) and event loops (zarr) with it. The first open lists and
        # checks every chunk; a worker's reopen skips that (its frame reader still refuses a
        # missing frame or a damaged shard index, see data/frames.py).
        if self._store is None or self._pid != os.getpid():
            self._store = DemoStore.open(self._path, "r", verify=self._pid == os.getpid())
            self._readers = None
            self._pid = os.getpid()
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers reopen the store and their own readers
        state = self.__dict__.copy()
        state["_store"] = None
        state["_readers"] = None
        return state

    def __len__(self) -> int:
        return len(self._steps)

    def _readers_for(self) -> dict[str, FrameIO]:
        store = self.store
        if self._readers is None:
            self._readers = {k: FrameIO(store.data[k], f"data/{k}") for k in self.image_keys}
        return self._readers

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> WindowBatch:
        """Samples ``indices``, built as one batch: the DataLoader's batched fetch path.

        Everything is gathered with vectorised indexing and frames are decoded straight into
        the batch, so a batch costs one pass of Python per frame, not per key per sample.
        """
        import torch

        first, lo, last = self._steps[indices].T[:, :, None]  # each (B, 1)
        obs_idx = np.maximum(first + self._obs_offsets, lo)  # (B, To); never past t
        act_steps = first + self._act_offsets  # (B, Tp)
        act_idx = np.minimum(np.maximum(act_steps, lo), last)
        obs = {k: torch.from_numpy(self._lowdim[k][obs_idx]) for k in self.lowdim_keys}
        for k, reader in self._readers_for().items():
            frames = _uint8_batch((*obs_idx.shape, *reader.frame_shape))  # (B, To, H, W, C)
            reader.frames(obs_idx, out=frames.numpy().reshape(-1, *reader.frame_shape))
            obs[k] = frames
        return WindowBatch(
            {
                "obs": obs,
                "action": torch.from_numpy(self._lowdim[self.action_key][act_idx]),  # (B, Tp, Da)
                "action_is_pad": torch.from_numpy(act_steps > last),  # (B, Tp)
            }
        )

    @staticmethod
    def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """DataLoader ``collate_fn``: a WindowBatch is already a batch (no copy); else stack."""
        import torch

        if isinstance(samples, WindowBatch):
            return samples.batch
        return torch.utils.data.default_collate(samples)


def _uint8_batch(shape: tuple[int, ...]) -> Any:
    """An empty uint8 tensor; in a DataLoader worker it lives in shared memory, so the frames
    decoded into it reach the trainer without the copy torch would otherwise make."""
    import torch

    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))  # as default_collate does
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


class WindowBatch(Sequence):
    """A batch of samples stored stacked; reads as a sequence of per-sample views.

    With ``collate_fn=SequenceDataset.collate`` the stacked batch goes to training as it is;
    with torch's default collate each sample is a view and the batch is stacked again.
    """

    def __init__(self, batch: dict[str, Any]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["action"])

    def __getitem__(self, j: int) -> dict[str, Any]:
        if not -len(self) <= j < len(self):
            raise IndexError(j)
        b = self.batch
        return {
            "obs": {k: v[j] for k, v in b["obs"].items()},
            "action": b["action"][j],
            "action_is_pad": b["action_is_pad"][j],
        }


def select_episodes(
    store: DemoStore, *, success: bool | None = None, source: str | None = None
) -> list[int]:
    """Episode indices matching the filters (None = any)."""
    conditions: dict[str, Any] = {}
    if success is not None:
        conditions["success"] = success
    if source is not None:
        conditions["source"] = source
    return store.episodes_where(**conditions)


def split_episodes(
    store: DemoStore, val_fraction: float, seed: int = 0, episodes: Sequence[int] | None = None
) -> tuple[list[int], list[int]]:
    """Deterministic train/val split by episode (never by step: windows would leak)."""
    if not 0 <= val_fraction < 1:
        raise UserError(f"val fraction must be in [0, 1), got {val_fraction}")
    ids = np.array(list(range(store.n_episodes) if episodes is None else episodes))
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = int(round(len(ids) * val_fraction))
    if val_fraction > 0 and len(ids) > 1:
        n_val = max(1, n_val)
    val = sorted(ids[order[:n_val]].tolist())
    train = sorted(ids[order[n_val:]].tolist())
    return train, val


def compute_stats(
    store: DemoStore, keys: Sequence[str], episodes: Sequence[int] | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Per-key min/max/mean/std over the last axis, in one streaming pass (bounded memory).

    Image keys give per-channel statistics of pixels scaled to [0, 1], from an evenly strided
    subsample of frames. ``episodes`` restricts the pass to those episodes.
    """
    data = store.data
    missing = [k for k in keys if k not in data]
    if missing:
        raise UserError(f"{store.path}: key(s) {missing} not in the store (it has {store.keys})")
    ranges = [
        store.episode_slice(e) for e in (range(store.n_episodes) if episodes is None else episodes)
    ]
    out = {}
    for key in keys:
        arr = data[key]
        if is_image_array(arr):
            steps = np.concatenate([np.arange(r.start, r.stop) for r in ranges])
            pick = steps[
                np.linspace(0, len(steps) - 1, min(len(steps), IMAGE_STATS_MAX_FRAMES)).astype(int)
            ]
            frames = FrameIO(arr, f"data/{key}").frames(pick).astype(np.float32) / 255.0
            flat = frames.reshape(-1, frames.shape[-1])
            acc = Moments(flat.shape[-1])
            acc.add(flat)
        else:
            acc = Moments(int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1)
            for r in ranges:
                for start in range(r.start, r.stop, STATS_BLOCK_ROWS):
                    block = store.read(key, start, min(r.stop, start + STATS_BLOCK_ROWS))
                    acc.add(block.reshape(len(block), -1).astype(np.float64))
        out[key] = acc.result(key)
    return out


class Moments:
    """Streaming min/max/mean/std (float64 sums)."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.sum = np.zeros(dim)
        self.sumsq = np.zeros(dim)
        self.min = np.full(dim, np.inf)
        self.max = np.full(dim, -np.inf)

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        x = x.astype(np.float64)
        self.n += len(x)
        self.sum += x.sum(0)
        self.sumsq += (x * x).sum(0)
        self.min = np.minimum(self.min, x.min(0))
        self.max = np.maximum(self.max, x.max(0))

    def result(self, key: str) -> dict[str, np.ndarray]:
        if self.n == 0:
            raise UserError(f"no data to compute statistics of {key!r}")
        mean = self.sum / self.n
        var = np.maximum(self.sumsq / self.n - mean * mean, 0.0)
        return {
            name: v.astype(np.float32)
            for name, v in (
                ("min", self.min),
                ("max", self.max),
                ("mean", mean),
                ("std", np.sqrt(var)),
            )
        }
