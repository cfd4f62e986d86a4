"""Fast frame I/O for image arrays: the hot path of recording and of training.

New stores keep each camera as a uint8 (N, H, W, C) zarr 3 array with one frame per chunk,
grouped into shards of S frames (one file per shard, zarr's sharding codec):

    data/<camera>/c.<k>.0.0.0   frames k*S .. k*S+S-1, each Blosc-compressed, then an index of
                                S (offset, nbytes) uint64 pairs and its CRC32C (zarr v3 spec)

Going through zarr costs ~3 ms per frame of Python/async overhead, more than decoding a small
frame, so :class:`FrameIO` reads and writes these files itself: frames are read from memory-
mapped shards (only the touched pages are read) and written by rebuilding the tail shard and
renaming it into place, which is atomic. The bytes are exactly what zarr writes and reads, and
any other layout (zip, object storage, other codecs, diffusion_policy's one-file-per-frame
format 2 arrays) falls back to a simpler path or to zarr itself.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

from data.errors import UserError

EMPTY = np.uint64(2**64 - 1)  # index entry of a chunk that was never written
SHARD_BYTES = 16 << 20  # ~16 MiB of raw frames per shard: few files, bounded tail rewrites
MAX_SHARD_FRAMES = 512
OPEN_SHARDS = 64  # memory maps kept open per reader (per DataLoader worker)


def shard_frames(frame_shape: tuple[int, ...]) -> int:
    """Frames per shard for a frame shape (16 for 640x480x3, 512 for 96x96x3)."""
    return int(max(1, min(MAX_SHARD_FRAMES, SHARD_BYTES // int(np.prod(frame_shape)))))


def _blosc_pair(codec) -> tuple[Callable, Callable]:
    import numcodecs

    shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[codec.shuffle.value]
    blosc = numcodecs.Blosc(codec.cname.value, codec.clevel, shuffle, codec.blocksize)
    return blosc.encode, numcodecs.blosc.decompress  # Blosc frames describe themselves


def _inner_codecs(codecs) -> tuple[Callable, Callable] | None:
    from zarr.codecs import BloscCodec, BytesCodec

    codecs = list(codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec):
        return None
    if len(codecs) == 1:
        return bytes, bytes
    if len(codecs) == 2 and isinstance(codecs[1], BloscCodec):
        return _blosc_pair(codecs[1])
    return None


def _write_atomic(path: str, payload: bytes | bytearray) -> None:
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.partial"
    with open(tmp, "wb") as f:
        f.write(payload)
    os.replace(tmp, path)


class FrameIO:
    """Read ``frames(idx)`` and append ``write(start, block)`` for one image array."""

    def __init__(self, arr: zarr.Array, label: str) -> None:
        self.arr = arr
        self.label = label
        self.frame_shape = tuple(arr.shape[1:])
        self.mode = "zarr"
        root = getattr(arr.store_path.store, "root", None)
        if not isinstance(root, Path) or arr.chunks != (1, *self.frame_shape):
            return
        base = str(root / arr.store_path.path)
        meta = arr.metadata
        zeros = (0,) * (arr.ndim - 1)
        if meta.zarr_format == 2:
            if meta.filters:
                return
            comp = meta.compressor
            self.encode = comp.encode if comp is not None else bytes
            self.decode = comp.decode if comp is not None else bytes
            sep = meta.dimension_separator or "."
            self._path = f"{base}/{{}}{sep}{sep.join('0' for _ in zeros)}".format
            self.mode = "chunk"
            return
        from zarr.codecs import Crc32cCodec, ShardingCodec

        codecs = list(meta.codecs)
        if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
            sc = codecs[0]
            pair = _inner_codecs(sc.codecs)
            index_ok = (
                sc.index_location.value == "end"
                and len(sc.index_codecs) == 2
                and isinstance(sc.index_codecs[1], Crc32cCodec)
                and tuple(sc.chunk_shape) == (1, *self.frame_shape)
            )
            if pair is None or not index_ok:
                return
            self.encode, self.decode = pair
            self.S = int(arr.shards[0])
            self.mode = "shard"
        else:
            pair = _inner_codecs(codecs)
            if pair is None:
                return
            self.encode, self.decode = pair
            self.mode = "chunk"
        key = meta.encode_chunk_key((123456789, *zeros))
        self._path = f"{base}/{key.replace('123456789', '{}', 1)}".format
        self._maps: OrderedDict[int, tuple[mmap.mmap | None, np.ndarray]] = OrderedDict()

    # ---- reading -----------------------------------------------------------------------

    def frames(self, idx: np.ndarray) -> np.ndarray:
        """idx: (n,) int -> (n, H, W, C) uint8."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.mode == "zarr":
            unique, inverse = np.unique(idx, return_inverse=True)
            return self.arr.get_orthogonal_selection((unique,))[inverse]
        out = np.empty((len(idx), *self.frame_shape), dtype=np.uint8)
        read = self._shard_frame if self.mode == "shard" else self._chunk_frame
        for j, i in enumerate(idx.tolist()):
            out[j] = read(i)
        return out

    def _decoded(self, raw, where: str, i: int) -> np.ndarray:
        try:
            return np.frombuffer(self.decode(raw), dtype=np.uint8).reshape(self.frame_shape)
        except Exception as e:  # a truncated or corrupt chunk
            raise UserError(
                f"{where}: cannot decode frame {i} of {self.label} ({e}); the file is damaged"
                f" - run `handoff-data validate` on the store"
            ) from None

    def _chunk_frame(self, i: int) -> np.ndarray:
        path = self._path(i)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:  # never written: zarr's fill value
            return np.zeros(self.frame_shape, dtype=np.uint8)
        return self._decoded(raw, path, i)

    def _shard(self, k: int) -> tuple[mmap.mmap | None, np.ndarray]:
        entry = self._maps.get(k)
        if entry is not None:
            self._maps.move_to_end(k)
            return entry
        path = self._path(k)
        try:
            with open(path, "rb") as f:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            entry = (None, np.full((self.S, 2), EMPTY, dtype=np.uint64))
        except ValueError:  # an empty file cannot be mapped
            raise UserError(
                f"{path}: empty shard file in {self.label}; the store is damaged"
            ) from None
        else:
            n = self.S * 16
            if len(m) < n + 4:
                raise UserError(
                    f"{path}: truncated shard file in {self.label} ({len(m)} bytes); the store "
                    f"is damaged - run `handoff-data validate` on it"
                )
            index = np.frombuffer(m, dtype="<u8", count=self.S * 2, offset=len(m) - n - 4)
            entry = (m, index.reshape(self.S, 2))
        self._maps[k] = entry
        if len(self._maps) > OPEN_SHARDS:
            self._maps.popitem(last=False)  # the map closes when its last view goes
        return entry

    def _shard_frame(self, i: int) -> np.ndarray:
        m, index = self._shard(i // self.S)
        offset, nbytes = index[i % self.S]
        if offset == EMPTY:
            return np.zeros(self.frame_shape, dtype=np.uint8)
        if m is None or offset + nbytes > len(m) - self.S * 16 - 4:
            raise UserError(
                f"{self._path(i // self.S)}: index of {self.label} points past the "
                f"data; the shard is damaged"
            )
        return self._decoded(m[offset : offset + nbytes], self._path(i // self.S), i)

    # ---- writing -----------------------------------------------------------------------

    def write(self, start: int, block: np.ndarray, pool=None) -> None:
        """Write frames start..start+len(block)-1; the array must already be that long."""
        if self.mode == "zarr":
            self.arr[start : start + len(block)] = block
            return
        Path(self._path(start // getattr(self, "S", 1))).parent.mkdir(parents=True, exist_ok=True)
        mapper = pool.map if pool is not None else map
        if self.mode == "chunk":
            list(
                mapper(
                    lambda j: _write_atomic(
                        self._path(start + j), self.encode(np.ascontiguousarray(block[j]))
                    ),
                    range(len(block)),
                )
            )
            return
        encoded = list(mapper(lambda f: self.encode(np.ascontiguousarray(f)), block))
        S = self.S
        for k in range(start // S, (start + len(block) - 1) // S + 1):
            lo, hi = max(start, k * S), min(start + len(block), (k + 1) * S)
            self._rewrite_shard(k, {i % S: encoded[i - start] for i in range(lo, hi)}, lo)
        self._maps.clear()

    def _rewrite_shard(self, k: int, new: dict[int, bytes], first_new: int) -> None:
        """Write shard k holding its existing frames before ``first_new`` plus ``new``."""
        S = self.S
        chunks: dict[int, bytes] = {}
        path = self._path(k)
        if os.path.exists(path) and first_new % S:
            with open(path, "rb") as f:
                old = f.read()
            index = np.frombuffer(
                old, dtype="<u8", count=S * 2, offset=len(old) - S * 16 - 4
            ).reshape(S, 2)
            for j in range(first_new % S):
                offset, nbytes = index[j]
                if offset != EMPTY:
                    chunks[j] = old[int(offset) : int(offset + nbytes)]
        chunks.update(new)
        import google_crc32c

        payload = bytearray()
        index = np.full((S, 2), EMPTY, dtype="<u8")
        for j in sorted(chunks):
            index[j] = (len(payload), len(chunks[j]))
            payload += chunks[j]
        index_bytes = index.tobytes()
        payload += index_bytes + struct.pack("<I", google_crc32c.value(index_bytes))
        _write_atomic(path, payload)
