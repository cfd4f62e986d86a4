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

Reading checks what zarr checks and a little more: a shard's index must match its CRC32C, and
in an array whose every chunk must be on disk (:func:`chunks_complete`) a frame with no stored
chunk is refused by name instead of being read as zarr's fill value (black).
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import zarr

from data.errors import UserError

EMPTY = np.uint64(2**64 - 1)  # index entry of a chunk that was never written
SHARD_BYTES = 16 << 20  # ~16 MiB of raw frames per shard: few files, bounded tail rewrites
MAX_SHARD_FRAMES = 512
OPEN_SHARDS = 1024  # memory maps kept open per reader (per DataLoader worker)
BLOSC_HEADER = 16  # bytes of a Blosc 1 frame header
BLOSC_MEMCPYED = 0x02  # header flag: the payload is stored uncompressed
COMPLETE_ATTR = "handoff_complete_chunks"  # array attribute: every chunk is written


def chunks_complete(arr: zarr.Array) -> bool:
    """Whether every chunk of ``arr`` holding committed rows must be stored.

    zarr leaves out a chunk that is all fill value unless ``write_empty_chunks`` is set, so a
    missing chunk may be data (zeros) or a loss. handoff writes every chunk of the arrays it
    creates and marks them with ``COMPLETE_ATTR``; zarr-python 2, which wrote diffusion_policy
    and UMI stores, writes every chunk by default. Other arrays (format 3 written before the
    marker, or by other tools) read a missing chunk as fill value, as zarr does.
    """
    return arr.metadata.zarr_format == 2 or arr.attrs.get(COMPLETE_ATTR) is True


def shard_frames(frame_shape: tuple[int, ...]) -> int:
    """Frames per shard for a frame shape (16 for 640x480x3, 512 for 96x96x3)."""
    return int(max(1, min(MAX_SHARD_FRAMES, SHARD_BYTES // int(np.prod(frame_shape)))))


def _blosc_into(raw: np.ndarray, out: np.ndarray) -> None:
    """Decode one Blosc frame (uint8 bytes, header first) straight into the flat ``out``.

    A frame Blosc could not compress (sensor noise makes most real-camera frames so under
    LZ4) is stored after its 16-byte header as it is, flagged "memcpyed"; it is copied out
    directly, which skips the codec's call overhead (as large as the copy at 96x96).
    """
    from numcodecs.blosc import decompress

    nbytes = struct.unpack_from("<I", raw, 4)[0]  # the header's uncompressed size
    if nbytes != out.nbytes:
        raise ValueError(f"frame holds {nbytes} bytes, not {out.nbytes}")
    if raw[2] & BLOSC_MEMCPYED and len(raw) == BLOSC_HEADER + nbytes:
        out[:] = raw[BLOSC_HEADER:]
    else:
        decompress(raw, out)


def _blosc_pair(codec) -> tuple[Callable, Callable]:
    import numcodecs

    shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[codec.shuffle.value]
    blosc = numcodecs.Blosc(codec.cname.value, codec.clevel, shuffle, codec.blocksize)
    return blosc.encode, _blosc_into  # Blosc frames describe themselves


def _decoder_into(decode: Callable) -> Callable:
    def into(raw: np.ndarray, out: np.ndarray) -> None:
        out[:] = np.frombuffer(decode(raw), dtype=np.uint8)

    return into


def _inner_codecs(codecs) -> tuple[Callable, Callable] | None:
    """(encode, decode_into) for the inner codecs handoff reads itself, else None."""
    from zarr.codecs import BloscCodec, BytesCodec

    codecs = list(codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec):
        return None
    if len(codecs) == 1:
        return bytes, _decoder_into(bytes)
    if len(codecs) == 2 and isinstance(codecs[1], BloscCodec):
        return _blosc_pair(codecs[1])
    return None


def _crc32c(data: bytes | np.ndarray) -> bytes:
    """The 4-byte little-endian CRC32C that zarr's sharding codec appends to a shard index."""
    import google_crc32c

    return struct.pack("<I", google_crc32c.value(memoryview(data).tobytes()))


def _write_atomic(path: str, *parts: bytes | bytearray | memoryview) -> None:
    """Write ``parts`` one after another to a temporary file, then rename it onto ``path``."""
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.partial"
    with open(tmp, "wb") as f:
        f.writelines(parts)
    os.replace(tmp, path)


class _Shard(NamedTuple):
    """An open shard: its bytes and, per frame, index entry and whether Blosc stored it raw."""

    path: str
    data: np.ndarray  # uint8 over the shard's memory map
    view: memoryview  # the same bytes: slicing and copying a memoryview costs less per frame
    offset: list[int]  # -1: never written
    nbytes: list[int]
    raw: list[bool]


class FrameIO:
    """Read ``frames(idx)`` and append ``write(start, block)`` for one image array."""

    def __init__(self, arr: zarr.Array, label: str) -> None:
        self.arr = arr
        self.label = label
        self.frame_shape = tuple(arr.shape[1:])
        self.complete = chunks_complete(arr)
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
            import numcodecs

            comp = meta.compressor
            self.encode = comp.encode if comp is not None else bytes
            self.decode_into = (
                _blosc_into
                if isinstance(comp, numcodecs.Blosc)
                else _decoder_into(comp.decode if comp is not None else bytes)
            )
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
            self.encode, self.decode_into = pair
            self.S = int(arr.shards[0])
            self.mode = "shard"
        else:
            pair = _inner_codecs(codecs)
            if pair is None:
                return
            self.encode, self.decode_into = pair
            self.mode = "chunk"
        key = meta.encode_chunk_key((123456789, *zeros))
        self._path = f"{base}/{key.replace('123456789', '{}', 1)}".format
        self._maps: OrderedDict[int, _Shard] = OrderedDict()

    # ---- reading -----------------------------------------------------------------------

    def frames(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """idx: (n,) int -> (n, H, W, C) uint8, decoded into ``out`` (C-contiguous) if given."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if out is None:
            out = np.empty((len(idx), *self.frame_shape), dtype=np.uint8)
        elif not out.flags.c_contiguous:
            raise ValueError("frames(out=...) needs a C-contiguous array")
        if self.mode == "zarr":
            unique, inverse = np.unique(idx, return_inverse=True)
            try:
                out[...] = self.arr.get_orthogonal_selection((unique,))[inverse]
            except Exception as e:  # zarr refuses a damaged chunk or shard index
                raise UserError(
                    f"{self.arr.store_path}: {self.label} steps {unique[0]}..{unique[-1]} cannot"
                    f" be read ({e}); the store is damaged - run `handoff-data validate` on it"
                ) from None
            return out
        flat = out.reshape(len(idx), -1)  # a view: frames are decoded as flat byte rows
        if self.mode == "shard":
            self._shard_frames(idx, flat)
        else:
            for j, i in enumerate(idx.tolist()):
                self._chunk_frame(i, flat[j])
        return out

    def _decode(self, raw, out: np.ndarray, where: str, i: int) -> None:
        try:
            self.decode_into(raw, out)
        except Exception as e:  # a truncated or corrupt chunk
            raise UserError(
                f"{where}: cannot decode frame {i} of {self.label} ({e}); the file is damaged"
                f" - run `handoff-data validate` on the store"
            ) from None

    def _missing(self, path: str, first: int, last: int) -> None:
        """A frame with no stored chunk: refused where every chunk must be stored, else zarr's
        fill value (the caller zero-fills)."""
        if self.complete:
            raise UserError(
                f"{path}: no stored chunk for steps {first}..{last} of {self.label}; the store"
                f" is damaged (a chunk file was lost) - restore it from a copy"
            )

    def _chunk_frame(self, i: int, out: np.ndarray) -> None:
        path = self._path(i)
        try:
            with open(path, "rb") as f:
                raw = np.frombuffer(f.read(), dtype=np.uint8)
        except FileNotFoundError:
            self._missing(path, i, i)
            out[:] = 0
            return
        self._decode(raw, out, path, i)

    def _shard_frames(self, idx: np.ndarray, out: np.ndarray) -> None:
        """Decode frames ``idx`` into the rows of ``out``: training's hot path.

        A shard's index and its Blosc headers are checked once, when the shard is opened;
        after that a frame costs one copy (frames Blosc stored uncompressed, as noisy camera
        frames are under LZ4) or one codec call, and a few list lookups.
        """
        S, F = self.S, out.shape[1]
        rows = memoryview(out).cast("B")  # out's rows as flat bytes
        order = np.argsort(idx, kind="stable")  # in file order: neighbouring pages, warm TLB
        for j, i in zip(order.tolist(), idx[order].tolist()):
            k, w = divmod(i, S)
            shard = self._maps.get(k) or self._shard(k)
            o, n = shard.offset[w], shard.nbytes[w]
            if shard.raw[w]:
                rows[j * F : j * F + F] = shard.view[o + BLOSC_HEADER : o + n]
            elif o < 0:  # never written
                self._missing(shard.path, i, i)
                out[j] = 0
            else:
                self._decode(shard.data[o : o + n], out[j], shard.path, i)

    def check(self, n: int) -> None:
        """Open each shard holding frames 0..n-1 once, so a damaged index (CRC32C, bounds) or,
        where every chunk must be stored, a frame never written is refused up front (before
        training starts) rather than at the batch that reaches it. Reads only the indexes."""
        if self.mode != "shard":
            return
        for k in range(-(-n // self.S)):
            shard = self._shard(k)
            unwritten = [w for w, o in enumerate(shard.offset[: n - k * self.S]) if o < 0]
            if unwritten:
                self._missing(shard.path, k * self.S + unwritten[0], k * self.S + unwritten[0])

    def _shard(self, k: int) -> _Shard:
        """Open shard k (memory-mapped; at most OPEN_SHARDS stay open) and check its index."""
        entry = self._maps.get(k)
        if entry is not None:
            self._maps.move_to_end(k)
            return entry
        path = self._path(k)
        S = self.S
        try:
            with open(path, "rb") as f:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            self._missing(path, k * S, min(self.arr.shape[0], (k + 1) * S) - 1)
            m = None
        except ValueError:  # an empty file cannot be mapped
            raise UserError(
                f"{path}: empty shard file in {self.label}; the store is damaged"
            ) from None
        if m is None:
            data = np.zeros(0, np.uint8)
            index = np.full((S, 2), -1, dtype=np.int64)
        else:
            if len(m) < S * 16 + 4:
                raise UserError(
                    f"{path}: truncated shard file in {self.label} ({len(m)} bytes); the store "
                    f"is damaged - run `handoff-data validate` on it"
                )
            data = np.frombuffer(m, dtype=np.uint8)
            index_bytes = data[len(m) - S * 16 - 4 : -4]
            if _crc32c(index_bytes) != data[-4:].tobytes():
                raise UserError(
                    f"{path}: the shard index of {self.label} (steps {k * S}..{k * S + S - 1}) "
                    f"does not match its checksum; the shard is damaged - restore it from a copy"
                )
            index = index_bytes.view("<u8").reshape(S, 2).astype(np.int64)
        offset, nbytes = index.T  # a never-written frame has offset -1 (EMPTY as int64)
        written = offset >= 0
        if np.any(written & ((nbytes < 0) | (offset + nbytes > len(data) - S * 16 - 4))):
            raise UserError(
                f"{path}: index of {self.label} points past the data; the shard is damaged"
                f" - run `handoff-data validate` on the store"
            )
        raw = np.zeros(S, dtype=bool)
        if self.decode_into is _blosc_into and written.any():
            frame_bytes = int(np.prod(self.frame_shape))
            head = data[np.where(written, offset, 0)[:, None] + np.arange(BLOSC_HEADER)]
            size = head[:, 4:8].copy().view("<u4")[:, 0]
            raw = (
                written
                & (nbytes == BLOSC_HEADER + frame_bytes)
                & (head[:, 2] & BLOSC_MEMCPYED > 0)
                & (size == frame_bytes)
            )
        entry = _Shard(path, data, memoryview(data), offset.tolist(), nbytes.tolist(), raw.tolist())
        self._maps[k] = entry
        if len(self._maps) > OPEN_SHARDS:
            self._maps.popitem(last=False)  # the map closes when its last view goes
        return entry

    # ---- writing -----------------------------------------------------------------------

    def write(self, start: int, block: np.ndarray | Sequence[np.ndarray], pool=None) -> None:
        """Write frames start..start+len(block)-1 (an array of frames, or a list of them: a
        recorder's frames are never stacked); the array must already be that long."""
        if self.mode == "zarr":
            self.arr[start : start + len(block)] = np.asarray(block)
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
            old = self._shard(k)  # its index checked: damage is refused, never copied on
            for j in range(first_new % S):
                o, n = old.offset[j], old.nbytes[j]
                if o >= 0:
                    chunks[j] = old.view[o : o + n].tobytes()
        chunks.update(new)
        ordered = sorted(chunks.items())
        index = np.full((S, 2), EMPTY, dtype="<u8")
        offset = 0
        for j, chunk in ordered:
            index[j] = (offset, len(chunk))
            offset += len(chunk)
        index_bytes = index.tobytes()
        _write_atomic(path, *(chunk for _, chunk in ordered), index_bytes, _crc32c(index_bytes))
