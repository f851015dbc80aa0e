"""CoViAR's loader API, served by cvpipe's extractor: swap the import, keep the code.

`from cvpipe import coviar` replaces `from coviar import load, get_num_frames,
get_num_gops` with the same shapes, dtypes and sign conventions (REFERENCE.md section 2),
and differs only where CoViAR is wrong: the last frame is decodable, every pixel is
defined, out-of-range indices raise IndexError, and any container `cvpipe.open` reads
works. Videos are opened once and kept in a small cache keyed by path, size and mtime,
so the usual three calls per segment (I-frame, MV, residual) index the file once.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from cvpipe.video import Video

IFRAME, MV, RESIDUAL = 0, 1, 2
_CACHE_SIZE = 32


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _open_cached(path: str, size: int, mtime_ns: int) -> Video:
    return Video(path)


def _open(path: str | os.PathLike) -> Video:
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"No such file: '{path}'") from None
    return _open_cached(path, st.st_size, st.st_mtime_ns)


def load(path: str | os.PathLike, gop_index: int, frame_index: int, representation: int, accumulate: bool) -> np.ndarray:
    """One representation at (GOP, position), as CoViAR's `load` returns it.

    Returns:
        representation 0: the decoded frame, BGR uint8 (H, W, 3);
        1: motion vectors, int32 (H, W, 2), channel 0 = x, 1 = y, dst - src;
        2: residual, int32 (H, W, 3), BGR difference in [-255, 255].
        With `accumulate`, MV and residual are traced back to the GOP's I-frame.
    """
    if representation not in (IFRAME, MV, RESIDUAL):
        raise ValueError(f"representation must be 0 (I-frame), 1 (MV) or 2 (residual), not {representation!r}")
    video = _open(path)
    frame = video.frame_index(int(gop_index), int(frame_index))
    name = {IFRAME: "bgr", MV: "mv", RESIDUAL: "residual"}[representation]
    if representation != IFRAME and accumulate:
        name += "_accumulated"
    array = video.extract([frame], (name,))[name][0]
    return array if representation == IFRAME else array.astype(np.int32)


def get_num_frames(path: str | os.PathLike) -> int:
    """Decodable frames in the video (CoViAR's count misses the last one; ours does not)."""
    return _open(path).num_frames


def get_num_gops(path: str | os.PathLike) -> int:
    """GOPs in the video: one per I-frame."""
    return _open(path).num_gops
