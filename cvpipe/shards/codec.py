"""What a shard member holds and how its bytes are made: the three kinds, CoViAR's uint8
quantisation of motion vectors and residuals, and the encodings (PNG, JPEG, npy,
zstd-compressed npy, zstd-compressed row deltas) a member may be stored in.
`cvpipe.shards.schema` lays the members out in a sample; like it, this needs only numpy,
Pillow and zstandard, and the trainer reads through it.

MV and residual are stored as CoViAR's network input quantisation (REFERENCE.md s.2;
`quantise_mv`, `quantise_residual`): uint8, so the stored bytes are exactly what CoViAR's
data loader hands to its transforms, and a reader only divides by 255.
"""

from __future__ import annotations

import io
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

# format -> file extension; which kinds may use it. "delta.npy.zst" stores each row minus
# the row above (mod 256; PNG's "Up" filter) as zstd-compressed npy: zstd alone finds
# little to repeat in a photograph or a residual, the deltas are small and repeat.
FORMATS = {"png": "png", "jpeg": "jpg", "npy": "npy", "npy.zst": "npy.zst", "delta.npy.zst": "delta.npy.zst"}
_ARRAYS = ("delta.npy.zst", "npy.zst", "npy")
ALLOWED_FORMATS = {IFRAME: (*_ARRAYS, "png", "jpeg"), MV: (*_ARRAYS, "png"), RESIDUAL: (*_ARRAYS, "png")}
_ZSTD = ("npy.zst", "delta.npy.zst")


@dataclass(frozen=True)
class Encoding:
    """How one kind of member is stored. `level`: PNG's zlib level (0-9) or zstd's
    (1-22); `quality`: JPEG's (1-95, Pillow's scale; lossy, I-frames only)."""

    format: str
    level: int | None = None
    quality: int | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"encoding format {self.format!r} is not one of {', '.join(FORMATS)}")
        bounds = {"png": (0, 9), "npy.zst": (1, 22), "delta.npy.zst": (1, 22)}.get(self.format)
        if (self.level is not None) != (bounds is not None):
            raise ValueError(f"encoding {self.format!r}: a level is {'required' if bounds else 'not used'}")
        if bounds and not bounds[0] <= self.level <= bounds[1]:
            raise ValueError(f"encoding {self.format!r}: level {self.level} is outside {bounds[0]}..{bounds[1]}")
        if (self.quality is not None) != (self.format == "jpeg"):
            raise ValueError(f"encoding {self.format!r}: a quality is {'required' if self.format == 'jpeg' else 'not used'}")
        if self.format == "jpeg" and not 1 <= self.quality <= 95:
            raise ValueError(f"JPEG quality {self.quality} is outside 1..95")

    @property
    def extension(self) -> str:
        return FORMATS[self.format]

    @property
    def lossless(self) -> bool:
        return self.format != "jpeg"

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Encoding:
        return cls(**data)


# Chosen by measurement (benchmarks/bench_shard.py, README "Shards"): row deltas + zstd
# are 4-18% smaller than PNG level 1 for I-frames and decompress in a seventh of its
# decoding time (the deltas are summed back on the training device); for residuals they
# are 4-17% smaller than zstd alone; motion fields are small either way and plain zstd
# reads fastest.
DEFAULT_ENCODINGS = {
    IFRAME: Encoding("delta.npy.zst", level=3),
    MV: Encoding("npy.zst", level=3),
    RESIDUAL: Encoding("delta.npy.zst", level=3),
}
JPEG_QUALITY = 95
PNG_LEVEL = 1  # for PNG I-frames: within ~5% of level 6's size at a third of its encoding time


def check_encoding(kind: str, encoding: Encoding) -> None:
    if encoding.format not in ALLOWED_FORMATS[kind]:
        raise ValueError(f"{kind} members cannot be stored as {encoding.format!r}; "
                         f"valid: {', '.join(ALLOWED_FORMATS[kind])}")


def encode_member(kind: str, array: np.ndarray, encoding: Encoding) -> bytes:
    """One member's bytes. `array`: (H, W, C) uint8; BGR for I-frames, quantised MV/residual."""
    check_encoding(kind, encoding)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != CHANNELS[kind]:
        raise ValueError(f"{kind} member must be (H, W, {CHANNELS[kind]}) uint8, not {array.shape} {array.dtype}")
    if encoding.format in _ARRAYS:
        if encoding.format == "delta.npy.zst":
            array = row_deltas(array)
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


def row_deltas(array: np.ndarray) -> np.ndarray:
    """Each row minus the row above, mod 256 (the first row as it is)."""
    deltas = array.copy()
    deltas[1:] -= array[:-1]
    return deltas


def undo_row_deltas(deltas: np.ndarray) -> np.ndarray:
    """The array `row_deltas` was given: running sums down the rows, mod 256."""
    return np.cumsum(deltas, axis=0, dtype=np.uint8)


def decode_member(kind: str, data: bytes, encoding: Encoding) -> np.ndarray:
    """The array `encode_member` was given (for JPEG, its lossy approximation)."""
    array, deltas = read_member(kind, data, encoding)
    return undo_row_deltas(array) if deltas else np.ascontiguousarray(array)


def read_member(kind: str, data: bytes, encoding: Encoding) -> tuple[np.ndarray, bool]:
    """A member's array as stored, read-only where it can be (no copy of numpy's bytes),
    and whether it holds row deltas (`undo_row_deltas`, or the trainer's device-side sum)."""
    check_encoding(kind, encoding)
    try:
        if encoding.format in _ARRAYS:
            raw = zstandard.ZstdDecompressor().decompress(data) if encoding.format in _ZSTD else data
            array = _npy_view(raw)
        else:
            with Image.open(io.BytesIO(data)) as image:
                array = np.asarray(image)
            if kind == IFRAME:
                array = array[..., ::-1]
    except Exception as e:  # noqa: BLE001 - zstd, numpy's header parser and Pillow raise many kinds
        # numpy's parser says "('EOF in multi-line statement', (2, 0))": name what failed.
        raise ValueError(f"{len(data)} bytes that do not decode as {encoding.format} ({type(e).__name__}: {e})") from None
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != CHANNELS[kind]:
        raise ValueError(f"decoded {kind} member is {array.shape} {array.dtype}, not (H, W, {CHANNELS[kind]}) uint8")
    return array, encoding.format == "delta.npy.zst"


def _npy_view(raw: bytes) -> np.ndarray:
    """The array of npy bytes as a view of them (np.load would copy)."""
    stream = io.BytesIO(raw)
    version = np.lib.format.read_magic(stream)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        raise ValueError(f"npy format version {version}")
    shape, fortran, dtype = read_header(stream)
    if fortran or dtype.hasobject:
        raise ValueError("not a C-ordered plain array")
    count = int(np.prod(shape))
    if len(raw) - stream.tell() != count * dtype.itemsize:
        raise ValueError(f"{len(raw) - stream.tell()} data bytes for shape {shape} {dtype}")
    return np.frombuffer(raw, dtype, count, stream.tell()).reshape(shape)
