"""CoViAR's loader API, served by cvpipe's extractor: swap the import, keep the code.

`from cvpipe import coviar` replaces `from coviar import load, get_num_frames,
get_num_gops` with the same shapes, dtypes and sign conventions (REFERENCE.md section 2),
and differs only where CoViAR is wrong: the last frame is decodable, every pixel is
defined, out-of-range indices raise IndexError, and any container `cvpipe.open` reads
works. Videos are opened once and kept in a small cache keyed by path, size and mtime,
so the usual three calls per segment (I-frame, MV, residual) index the file once, and the
MV and residual of one position come from one decode.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict

import numpy as np

from cvpipe.video import Video

IFRAME, MV, RESIDUAL = 0, 1, 2
_CACHE_SIZE = 32  # open videos (each holds its compressed stream)
_RECENT_SIZE = 16  # recent (MV, residual) pairs
_recent: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
_recent_lock = threading.Lock()


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
    if isinstance(representation, bool) or representation not in (IFRAME, MV, RESIDUAL):
        raise ValueError(f"representation must be 0 (I-frame), 1 (MV) or 2 (residual), not {representation!r}")
    video = _open(path)
    frame = video.frame_index(gop_index, frame_index)
    if representation == IFRAME:
        return video.extract([frame], ("bgr",))["bgr"][0]
    suffix = "_accumulated" if accumulate else ""
    return _motion(video, frame, suffix)[0 if representation == MV else 1].astype(np.int32)


def _motion(video: Video, frame: int, suffix: str) -> tuple[np.ndarray, np.ndarray]:
    """MV and residual at a frame, both from one decode: CoViAR's data loader asks for the
    two at the same position one call after the other, so the second is served from here."""
    key = (video.path, id(video), frame, suffix)
    with _recent_lock:
        if key in _recent:
            _recent.move_to_end(key)
            return _recent[key]
    out = video.extract([frame], ("mv" + suffix, "residual" + suffix))
    pair = (out["mv" + suffix][0], out["residual" + suffix][0])
    with _recent_lock:
        _recent[key] = pair
        while len(_recent) > _RECENT_SIZE:
            _recent.popitem(last=False)
    return pair


def clear_cache(*, indexes: bool = True, recent: bool = True) -> None:
    """Forgets opened videos' indexes and/or the recent (MV, residual) pairs, e.g. to time
    a first read."""
    if indexes:
        _open_cached.cache_clear()
    if recent:
        with _recent_lock:
            _recent.clear()


def get_num_frames(path: str | os.PathLike) -> int:
    """Decodable frames in the video (CoViAR's count misses the last one; ours does not)."""
    return _open(path).num_frames


def get_num_gops(path: str | os.PathLike) -> int:
    """GOPs in the video: one per I-frame."""
    return _open(path).num_gops
