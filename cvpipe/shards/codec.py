"""What a shard member holds and how its bytes are made: the three kinds, CoViAR's uint8
quantisation of motion vectors and residuals, and the encodings (PNG, JPEG, npy,
zstd-compressed npy, and zstd-compressed planes after a reversible filter) a member may
be stored in.
`cvpipe.shards.schema` lays the members out in a sample; like it, this needs only numpy,
Pillow and zstandard, and the trainer reads through it.

MV and residual are stored as CoViAR's network input quantisation (REFERENCE.md s.2;
`quantise_mv`, `quantise_residual`): uint8, so the stored bytes are exactly what CoViAR's
data loader hands to its transforms, and a reader only divides by 255.
"""

from __future__ import annotations

import enum
import functools
import io
import threading
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import zstandard
from PIL import Image

IFRAME, MV, RESIDUAL = "iframe", "mv", "res"
KINDS = (IFRAME, MV, RESIDUAL)
CHANNELS = {IFRAME: 3, MV: 2, RESIDUAL: 3}

# CoViAR's MV scaling (its data loader's `clip_and_scale(img, 20)`): +-20 pixels of
# accumulated motion span the uint8 range.
MV_BOUND = 20
MV_SCALE = 127.5 / MV_BOUND  # 6.375 = 51/8, exact in binary: the integer form below is exact

QUANTISATION = {
    MV: "uint8 = clip(trunc(mv * 127.5 / 20) + 128, 0, 255); trunc rounds toward zero "
        "(CoViAR's astype(int32) before adding 128), so -1 -> 122, not floor's 121",
    RESIDUAL: "uint8 = clip(residual + 128, 0, 255)",
    IFRAME: "none: the decoded BGR frame, uint8",
}


# --- Quantisation ---------------------------------------------------------------------

def _mv_table() -> np.ndarray:
    """The quantised value of every motion value in -21..21, indexed by the value's
    two's-complement byte (what casting the clipped int16 to uint8 gives)."""
    values = np.arange(256).astype(np.uint8).view(np.int8).astype(np.int64)
    # mv * 6.375 = mv * 51 / 8 exactly; shifting the magnitude truncates toward zero as
    # CoViAR's float-to-int cast does.
    scaled = values * 51
    truncated = np.sign(scaled) * (np.abs(scaled) >> 3)
    return np.clip(truncated + 128, 0, 255).astype(np.uint8)


_MV_TABLE = _mv_table()


def quantise_mv(mv: np.ndarray) -> np.ndarray:
    """CoViAR's MV network input: clip(trunc(mv * 127.5 / 20) + 128, 0, 255) as uint8."""
    mv = np.asarray(mv)
    if not np.issubdtype(mv.dtype, np.signedinteger):
        raise TypeError(f"motion vectors must be signed integers (CoViAR's int32 or cvpipe's int16), not {mv.dtype}")
    # Every |mv| >= 21 saturates (21 * 6.375 > 127), so a 256-entry table covers all
    # values: one clip, one cast and one lookup, 2-3x faster than the arithmetic.
    return _MV_TABLE[np.clip(mv, -MV_BOUND - 1, MV_BOUND + 1).astype(np.uint8)]


def quantise_residual(residual: np.ndarray) -> np.ndarray:
    """CoViAR's residual network input: clip(residual + 128, 0, 255) as uint8."""
    residual = np.asarray(residual)
    if not np.issubdtype(residual.dtype, np.signedinteger):
        raise TypeError(f"residuals must be signed integers, not {residual.dtype}")
    # -128..127 cast to a byte is its two's complement; flipping the top bit adds 128.
    quantised = np.clip(residual, -128, 127).astype(np.uint8)
    quantised ^= 0x80
    return quantised


# --- Member encodings -----------------------------------------------------------------

# format -> file extension. "planar.npy.zst" stores the array as planes, (C, H, W), after a
# reversible filter (`filter_planes`): zstd alone finds little to repeat in a photograph or a
# residual, while its channel and neighbour differences are small and repeat.
# "delta.npy.zst" (schema 3) is (H, W, C) after the "up" filter alone.
FORMATS = {"png": "png", "jpeg": "jpg", "npy": "npy", "npy.zst": "npy.zst", "delta.npy.zst": "delta.npy.zst",
           "planar.npy.zst": "planar.npy.zst"}
_ARRAYS = ("planar.npy.zst", "delta.npy.zst", "npy.zst", "npy")
ALLOWED_FORMATS = {IFRAME: (*_ARRAYS, "png", "jpeg"), MV: (*_ARRAYS, "png"), RESIDUAL: (*_ARRAYS, "png")}
ZSTD_FORMATS = ("npy.zst", "delta.npy.zst", "planar.npy.zst")  # their level is zstd's
# planar.npy.zst's spatial predictors, PNG's names: "up" predicts a value by the one above
# it, "grad" (a + b - c, the "gradient" of LOCO-I without its clamp) by left + above -
# above-left, which is the up filter applied after the left one.
PREDICTORS = ("none", "up", "grad")


class Undo(enum.IntFlag):
    """What is left to undo on an array as stored (`read_member`), in any order, mod 256:
    running sums down the columns (UP) and along the rows (LEFT), and adding plane 1 to
    planes 0 and 2 (COLOUR)."""

    NONE = 0
    UP = 1
    LEFT = 2
    COLOUR = 4


@dataclass(frozen=True)
class Encoding:
    """How one kind of member is stored. `level`: PNG's zlib level (0-9) or zstd's
    (1-22); `quality`: JPEG's (1-95, Pillow's scale; lossy, I-frames only); for
    planar.npy.zst, `predictor` (PREDICTORS) and `colour`: whether planes 0 and 2 are
    stored minus plane 1 (three-channel kinds; the green-centred decorrelation of
    lossless WebP)."""

    format: str
    level: int | None = None
    quality: int | None = None
    predictor: str | None = None
    colour: bool | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"encoding format {self.format!r} is not one of {', '.join(FORMATS)}")
        bounds = {"png": (0, 9)}.get(self.format, (1, 22) if self.format in ZSTD_FORMATS else None)
        if (self.level is not None) != (bounds is not None):
            raise ValueError(f"encoding {self.format!r}: a level is {'required' if bounds else 'not used'}")
        if bounds and not bounds[0] <= self.level <= bounds[1]:
            raise ValueError(f"encoding {self.format!r}: level {self.level} is outside {bounds[0]}..{bounds[1]}")
        if (self.quality is not None) != (self.format == "jpeg"):
            raise ValueError(f"encoding {self.format!r}: a quality is {'required' if self.format == 'jpeg' else 'not used'}")
        if self.format == "jpeg" and not 1 <= self.quality <= 95:
            raise ValueError(f"JPEG quality {self.quality} is outside 1..95")
        planar = self.format == "planar.npy.zst"
        if (self.predictor is not None, self.colour is not None) != (planar, planar):
            raise ValueError(f"encoding {self.format!r}: a predictor and colour are "
                             f"{'required' if planar else 'not used'}")
        if planar and self.predictor not in PREDICTORS:
            raise ValueError(f"predictor {self.predictor!r} is not one of {', '.join(PREDICTORS)}")

    @property
    def extension(self) -> str:
        return FORMATS[self.format]

    @property
    def lossless(self) -> bool:
        return self.format != "jpeg"

    @property
    def undo(self) -> Undo:
        """What `read_member` leaves to undo on this encoding's arrays."""
        if self.format == "delta.npy.zst":
            return Undo.UP
        if self.format != "planar.npy.zst":
            return Undo.NONE
        spatial = {"none": Undo.NONE, "up": Undo.UP, "grad": Undo.UP | Undo.LEFT}[self.predictor]
        return spatial | (Undo.COLOUR if self.colour else Undo.NONE)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Encoding:
        return cls(**data)


# Chosen by measurement (benchmarks/bench_shard.py, README "Shards"): planes after the
# colour and gradient filters are 31-35% smaller than schema 3's row deltas for I-frames,
# after the colour and up filters 23-25% smaller for residuals, and plain planes at zstd 9
# up to 20% smaller for motion fields; zstd 6 and 9 cost encoding time, not reading time.
# The filters are undone on the training device.
DEFAULT_ENCODINGS = {
    IFRAME: Encoding("planar.npy.zst", level=6, predictor="grad", colour=True),
    MV: Encoding("planar.npy.zst", level=9, predictor="none", colour=False),
    RESIDUAL: Encoding("planar.npy.zst", level=6, predictor="up", colour=True),
}
JPEG_QUALITY = 95
PNG_LEVEL = 1  # for PNG I-frames: within ~5% of level 6's size at a third of its encoding time


def check_encoding(kind: str, encoding: Encoding) -> None:
    if encoding.format not in ALLOWED_FORMATS[kind]:
        raise ValueError(f"{kind} members cannot be stored as {encoding.format!r}; "
                         f"valid: {', '.join(ALLOWED_FORMATS[kind])}")
    if encoding.colour and CHANNELS[kind] != 3:
        raise ValueError(f"{kind} members have {CHANNELS[kind]} channels: the colour filter needs 3")


def encode_member(kind: str, array: np.ndarray, encoding: Encoding) -> bytes:
    """One member's bytes. `array`: (H, W, C) uint8; BGR for I-frames, quantised MV/residual."""
    check_encoding(kind, encoding)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != CHANNELS[kind]:
        raise ValueError(f"{kind} member must be (H, W, {CHANNELS[kind]}) uint8, not {array.shape} {array.dtype}")
    if encoding.format in _ARRAYS:
        planes = filter_planes(array.transpose(2, 0, 1), encoding.undo)
        array = planes if encoding.format == "planar.npy.zst" else planes.transpose(1, 2, 0)
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        data = buffer.getvalue()
        return data if encoding.format == "npy" else zstandard.ZstdCompressor(level=encoding.level).compress(data)
    # Images: I-frames are stored as true RGB so the files view correctly; two-channel MV
    # as grey + alpha.
    image = Image.fromarray(np.ascontiguousarray(array[..., ::-1]) if kind == IFRAME else array,
                            {2: "LA", 3: "RGB"}[array.shape[2]])
    buffer = io.BytesIO()
    if encoding.format == "png":
        image.save(buffer, "PNG", compress_level=encoding.level)
    else:
        image.save(buffer, "JPEG", quality=encoding.quality)
    return buffer.getvalue()


def filter_planes(planes: np.ndarray, filters: Undo) -> np.ndarray:
    """The filters that `unfilter_planes` undoes, mod 256, on uint8 (C, H, W) planes:
    COLOUR subtracts plane 1 from planes 0 and 2, LEFT takes each value minus the one on
    its left, UP minus the one above (the first column and row stay as they are)."""
    out = np.array(planes, dtype=np.uint8)
    if Undo.COLOUR in filters:
        out[0] -= out[1]
        out[2] -= out[1]
    if Undo.LEFT in filters:
        out[:, :, 1:] = out[:, :, 1:] - out[:, :, :-1]  # the right side is made whole before it is stored
    if Undo.UP in filters:
        out[:, 1:] = out[:, 1:] - out[:, :-1]
    return out


def unfilter_planes(array: Any, undo: Undo) -> Any:
    """The (C, H, W) uint8 planes that `filter_planes(planes, undo)` was given, with any
    leading dimensions. `array` is a numpy array or a torch tensor on any device (the
    trainer undoes a whole batch where it trains): only operations both spell alike."""
    out = array
    if Undo.UP in undo:
        out = out.cumsum(-2, dtype=out.dtype)  # uint8 sums wrap mod 256, as the filters were taken
    if Undo.LEFT in undo:
        out = out.cumsum(-1, dtype=out.dtype)
    if Undo.COLOUR in undo:
        if out is array:  # never write into the caller's (maybe read-only) array; indexing by a list copies
            out = out[..., [0, 1, 2], :, :]
        out[..., 0, :, :] += out[..., 1, :, :]
        out[..., 2, :, :] += out[..., 1, :, :]
    return out


def decode_member(kind: str, data: bytes, encoding: Encoding) -> np.ndarray:
    """The (H, W, C) array `encode_member` was given (for JPEG, its lossy approximation)."""
    planes, undo = read_member(kind, data, encoding)
    return np.ascontiguousarray(unfilter_planes(planes, undo).transpose(1, 2, 0))


def read_member(kind: str, data: bytes, encoding: Encoding) -> tuple[np.ndarray, Undo]:
    """A member's array as stored, as (C, H, W) planes (a transposed view for the formats
    that store (H, W, C)), read-only where it can be (no copy of numpy's bytes), and what
    is left to undo on it (`unfilter_planes`, or the trainer's device-side step)."""
    check_encoding(kind, encoding)
    try:
        if encoding.format in _ARRAYS:
            raw = _decompressor().decompress(data) if encoding.format in ZSTD_FORMATS else data
            array = _npy_view(raw)
        else:
            with Image.open(io.BytesIO(data)) as image:
                array = np.asarray(image)
            if kind == IFRAME:
                array = array[..., ::-1]
    except Exception as e:  # noqa: BLE001 - zstd, numpy's header parser and Pillow raise many kinds
        # numpy's parser says "('EOF in multi-line statement', (2, 0))": name what failed.
        raise ValueError(f"{len(data)} bytes that do not decode as {encoding.format} ({type(e).__name__}: {e})") from None
    planar = encoding.format == "planar.npy.zst"
    shape = "(C, H, W)" if planar else "(H, W, C)"
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[0 if planar else 2] != CHANNELS[kind]:
        raise ValueError(f"decoded {kind} member is {array.shape} {array.dtype}, not {shape} uint8 "
                         f"with {CHANNELS[kind]} channels")
    return (array if planar else array.transpose(2, 0, 1)), encoding.undo


_DECOMPRESSORS = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's zstd decompressor: making one per member costs a context allocation
    each time, and one object must not be used by two threads at once."""
    decompressor = getattr(_DECOMPRESSORS, "zstd", None)
    if decompressor is None:
        decompressor = _DECOMPRESSORS.zstd = zstandard.ZstdDecompressor()
    return decompressor


def _npy_view(raw: bytes) -> np.ndarray:
    """The array of npy bytes as a view of them (np.load would copy)."""
    if len(raw) < 10:
        raise ValueError(f"{len(raw)} bytes are no npy array")
    # Versions 1.0 (a 2-byte header length) and 2.0 (4 bytes); a shard's members of one
    # shape share one header, which numpy parses with ast.literal_eval: remember it.
    size_bytes = {b"\x93NUMPY\x01\x00": 2, b"\x93NUMPY\x02\x00": 4}.get(raw[:8])
    if size_bytes is None:
        raise ValueError(f"not an npy array of version 1.0 or 2.0 (it starts {raw[:8]!r})")
    start = 8 + size_bytes + int.from_bytes(raw[8:8 + size_bytes], "little")
    shape, dtype = _npy_header(raw[:start])
    count = int(np.prod(shape))
    if len(raw) - start != count * dtype.itemsize:
        raise ValueError(f"{len(raw) - start} data bytes for shape {shape} {dtype}")
    return np.frombuffer(raw, dtype, count, start).reshape(shape)


@functools.lru_cache(maxsize=64)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], np.dtype]:
    stream = io.BytesIO(header)
    version = np.lib.format.read_magic(stream)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
    shape, fortran, dtype = read(stream)
    if fortran or dtype.hasobject:
        raise ValueError("not a C-ordered plain array")
    return shape, dtype
