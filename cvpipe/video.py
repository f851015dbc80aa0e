"""Open an MPEG-4 Part 2 video once, then extract any frames and representations.

`open(path)` indexes the file in one demuxing scan (frame types, GOP table, size, rate)
and keeps its compressed stream in memory. `Video.extract` then decodes only the GOPs
that hold the requested frames, each once, in a single pass, with the GIL released.
"""

from __future__ import annotations

import operator
import os
from fractions import Fraction
from typing import Iterable, Mapping, Sequence

import numpy as np

from cvpipe.extension import load_extension

_native = load_extension()

InvalidVideoError = _native.InvalidVideoError
UnsupportedVideoError = _native.UnsupportedVideoError
# One exported block vector: AVMotionVector's fields (source < 0: past reference).
BLOCK_DTYPE: np.dtype = _native.BLOCK_DTYPE

# Dense per-pixel outputs, (N, H, W, C): "bgr", decoded frames (uint8, C=3); "mv", CoViAR
# motion vectors dst - src (int16, C=2); "residual", CoViAR residuals BGR_t - BGR_ref
# (int16, C=3); the "_accumulated" ones traced back to the GOP's I-frame. Per-frame
# lists: "blocks", the exported block vectors (BLOCK_DTYPE), and "intra_mask", the
# macroblocks coded without motion.
REPRESENTATIONS: tuple[str, ...] = tuple(_native.REPRESENTATIONS) + ("intra_mask",)

MACROBLOCK = 16


def as_index(value: object, what: str) -> int:
    """`value` as an index if it is an integer (Python's or numpy's); TypeError otherwise,
    since 1.7, '3' or True taken for a frame would silently read another one."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be an integer, not a bool ({value!r})")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, not {type(value).__name__} ({value!r})") from None


class Video:
    """An indexed MPEG-4 Part 2 video. Immutable; safe to share between threads."""

    def __init__(self, path: str | os.PathLike) -> None:
        self._native = _native.Video(os.fspath(path))
        self.frame_types: str = self._native.frame_types
        self.gop_starts: tuple[int, ...] = tuple(self._native.gop_starts)

    path = property(lambda self: self._native.path, doc="The file this video was read from.")
    container = property(lambda self: self._native.container, doc="libavformat's demuxer name.")
    width = property(lambda self: self._native.width)
    height = property(lambda self: self._native.height)
    has_b_frames = property(lambda self: self._native.has_b_frames)
    stream_bytes = property(lambda self: self._native.stream_bytes, doc="Bytes of the video bitstream.")

    @property
    def fps(self) -> Fraction:
        num, den = self._native.fps
        return Fraction(num, den) if num > 0 else Fraction(0)

    @property
    def num_frames(self) -> int:
        """Frames the decoder really produces, from the first I-frame to the end."""
        return len(self.frame_types)

    @property
    def num_gops(self) -> int:
        return len(self.gop_starts)

    def gop_size(self, gop: int) -> int:
        gop = as_index(gop, "a GOP index")
        self._check_gop(gop)
        end = self.gop_starts[gop + 1] if gop + 1 < self.num_gops else self.num_frames
        return end - self.gop_starts[gop]

    def frame_index(self, gop: int, position: int) -> int:
        """The frame at `position` within GOP `gop`; IndexError when either is out of range."""
        gop, position = as_index(gop, "a GOP index"), as_index(position, "a GOP position")
        size = self.gop_size(gop)
        if not 0 <= position < size:
            raise IndexError(f"position {position} is out of range: GOP {gop} of '{self.path}' has {size} frames")
        return self.gop_starts[gop] + position

    def locate(self, frame: int) -> tuple[int, int]:
        """(gop, position) of a frame index."""
        frame = as_index(frame, "a frame index")
        if not 0 <= frame < self.num_frames:
            raise IndexError(f"frame {frame} is out of range: '{self.path}' has {self.num_frames} decodable frames")
        gop = int(np.searchsorted(self.gop_starts, frame, side="right")) - 1
        return gop, frame - self.gop_starts[gop]

    def extract(
        self,
        frames: Iterable[int],
        representations: Sequence[str] = ("bgr", "mv_accumulated", "residual_accumulated"),
        *,
        mv_only: bool = False,
        threads: int = 1,
        out: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray | list[np.ndarray]]:
        """Extracts the same `representations` at each of `frames`; see extract_each."""
        frames = list(frames)
        return self.extract_each({name: frames for name in representations}, mv_only=mv_only, threads=threads,
                                 out=out)

    def extract_each(
        self,
        requests: Mapping[str, Iterable[int]],
        *,
        mv_only: bool = False,
        threads: int = 1,
        out: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray | list[np.ndarray]]:
        """Extracts, for each representation, its own frames, all in one decode pass.

        Example: the I-frame of every GOP with the accumulated motion at every frame,
        `extract_each({"bgr": video.gop_starts, "mv_accumulated": range(video.num_frames)})`.

        Args:
            requests: representation name (REPRESENTATIONS) -> frame indices in
                [0, num_frames), any order, repeats allowed; outputs follow that order.
            mv_only: decode without the inverse transform of inter blocks (FFmpeg's
                skip_idct): faster, with identical vectors, but only motion vectors and
                I-frame pixels are valid, so residuals and P-frame BGR are refused.
            threads: GOPs decoded in parallel (each GOP still decoded once).
            out: arrays to fill instead of new ones, per dense representation (exact
                shape (N, H, W, C), dtype, C-contiguous): a job extracting many videos
                or chunks reuses its buffers and skips the kernel's zeroing of fresh pages.

        Returns:
            Name -> array (N, H, W, C) for dense representations, or a list of N arrays
            for "blocks" (BLOCK_DTYPE) and "intra_mask" (bool, macroblock grid).
        """
        requests = {name: [as_index(f, f"a frame index of {name!r}") for f in frames]
                    for name, frames in requests.items()}
        threads = as_index(threads, "threads")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        unknown = set(requests) - set(REPRESENTATIONS)
        if unknown:
            raise ValueError(f"unknown representation(s) {sorted(unknown)}; valid: {', '.join(REPRESENTATIONS)}")
        native = {name: frames for name, frames in requests.items() if name != "intra_mask"}
        # The intra mask is derived from the block vectors of the same frames.
        mask_frames = requests.get("intra_mask", [])
        native["blocks"] = native.get("blocks", []) + mask_frames
        result = self._native.extract(native, mv_only=mv_only, threads=threads, out=dict(out or {}))
        blocks = result.pop("blocks")
        if "blocks" in requests:
            result["blocks"] = blocks[: len(requests["blocks"])]
        if "intra_mask" in requests:
            result["intra_mask"] = [
                intra_mask(b, self.width, self.height, self.frame_types[f] == "I")
                for f, b in zip(mask_frames, blocks[len(blocks) - len(mask_frames):])
            ]
        return result

    def _check_gop(self, gop: int) -> None:
        if not 0 <= gop < self.num_gops:
            raise IndexError(f"GOP {gop} is out of range: '{self.path}' has {self.num_gops} GOPs")

    def __repr__(self) -> str:
        return (
            f"Video('{self.path}', {self.width}x{self.height}, {float(self.fps):.3g} fps, "
            f"{self.num_frames} frames, {self.num_gops} GOPs)"
        )


def open(path: str | os.PathLike) -> Video:  # noqa: A001 - mirrors av.open / builtins.open
    """Indexes an MPEG-4 Part 2 video (raw m4v, AVI, MP4/MOV, MKV).

    Raises:
        FileNotFoundError: the path does not exist.
        InvalidVideoError: not a video, or a corrupt one (a ValueError).
        UnsupportedVideoError: another codec than MPEG-4 Part 2 (a ValueError).
    """
    return Video(path)


def intra_mask(blocks: np.ndarray, width: int, height: int, is_iframe: bool = False) -> np.ndarray:
    """Macroblocks that carry no motion vector, (ceil(H/16), ceil(W/16)) bool.

    FFmpeg exports a vector for every inter and skipped macroblock of a P-frame and none
    for intra ones, so the macroblocks no vector lands in are the intra-coded ones.
    """
    rows, cols = -(-height // MACROBLOCK), -(-width // MACROBLOCK)
    mask = np.ones((rows, cols), dtype=bool)
    if not is_iframe and len(blocks):
        mask[blocks["dst_y"] // MACROBLOCK, blocks["dst_x"] // MACROBLOCK] = False
    return mask


def subpel_motion(blocks: np.ndarray) -> np.ndarray:
    """Block motion in pixels with sub-pel precision, motion / motion_scale, (N, 2) float32."""
    scale = blocks["motion_scale"].astype(np.float32)
    return np.stack([blocks["motion_x"] / scale, blocks["motion_y"] / scale], axis=1).astype(np.float32)
