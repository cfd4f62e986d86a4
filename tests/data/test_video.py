"""data/video.py, the one mp4 layer: what write_mp4 writes reads back through VideoDecoder."""

from __future__ import annotations

import numpy as np
import pytest

from data.errors import UserError
from data.video import VideoDecoder, write_mp4


def test_write_mp4_crops_odd_sizes_and_reads_back_by_time(tmp_path):
    import av

    T, fps = 6, 20.0
    frames = np.zeros((T, 33, 47, 3), np.uint8)
    for t in range(T):
        frames[t] = 40 * t  # a flat level per frame: each frame is recognisable after H.264
    out = write_mp4(tmp_path / "v.mp4", iter(frames), fps, crf=18)
    assert out == tmp_path / "v.mp4" and sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264" and (stream.height, stream.width) == (32, 46)
    dec = VideoDecoder(out)
    got = dec.frames_at(np.arange(T) / fps, 1e-4, "test")
    dec.close()
    assert got.shape == (T, 32, 46, 3)
    np.testing.assert_allclose(got.mean(axis=(1, 2, 3)), 40 * np.arange(T), atol=3)


def test_write_mp4_without_frames_leaves_nothing(tmp_path):
    with pytest.raises(UserError, match="no frames"):
        write_mp4(tmp_path / "v.mp4", iter([]), 20.0)
    assert list(tmp_path.iterdir()) == []
