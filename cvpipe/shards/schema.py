"""The shard format: what one WebDataset sample holds, and how to read it back.

Both sides import this module: the shard writer (cvpipe.shards.writer) and the trainer's
reader, which imports nothing else of cvpipe. So it needs only the standard library,
numpy, Pillow and zstandard: no compiled extension, no Ray, no torch.

One sample per video. Its key is the manifest id (no dots: WebDataset splits a member
name at the first dot, the rest is the sample's field). Fields:

    json                          the header (Header): who the video is, its GOP table,
                                  which positions are stored and how each member is encoded
    g0003.iframe.planar.npy.zst   GOP 3's I-frame (position 0), BGR
    g0003.p05.mv.planar.npy.zst   accumulated motion vectors at GOP 3, position 5
    g0003.p05.res.planar.npy.zst  accumulated residual at GOP 3, position 5

The extension says the encoding and is recorded in the header too, so a reader builds
field names with `Header.field` instead of listing the tar. The header also lists the
CRC-32 of every member's stored bytes (schema version 2), which `Header.decode` checks, so
a flipped bit is a reported corrupt member, never a silently different array, and (schema
version 3) where each member's bytes lie in the tar, so a reader that has the header
finds any member, and the next sample, without parsing the tar headers in between. Both
are lists in the members' order (`fields()`; schema 4), so a reader parses two lists of
numbers, not a dictionary of every member's name. Members of
a sample are adjacent in the tar: the header first, then GOP by GOP the I-frame and, position by
position, MV then residual.

What a member holds and how its bytes are encoded (the kinds, CoViAR's quantisation, PNG,
zstd and the planes' filters) is `cvpipe.shards.codec`; the kinds are named here too, since every Header
call takes one.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from functools import cached_property
from typing import Any

import numpy as np

from cvpipe.datasets.manifest import check_id
from cvpipe.shards.codec import (
    CHANNELS,
    IFRAME,
    KINDS,
    MV,
    QUANTISATION,
    RESIDUAL,
    Encoding,
    Undo,
    check_encoding,
    decode_member,
    read_member,
)

__all__ = ["CHANNELS", "HEADER_FIELD", "IFRAME", "KINDS", "MV", "READABLE_VERSIONS", "RESIDUAL", "SCHEMA_VERSION",
           "Header", "check_key", "field_name", "header_for", "parse_field", "parse_positions", "segment_centre",
           "segment_range", "select_positions"]

# Bump on any change a reader must know about (fields, names, encodings, quantisation).
# 2: each header lists a CRC-32 per member, which decoding checks. 3: the delta.npy.zst
# encoding (row deltas), the default for I-frames and residuals, and each member's place
# in the tar (`layout`, `span`). 4: the planar.npy.zst encoding (planes after a colour and
# a spatial filter), the default for every kind, and checksums and layout as lists in the
# members' order. Versions 1 (no checksums), 2 and 3 are still read.
SCHEMA_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)

HEADER_FIELD = "json"


# --- Member names ---------------------------------------------------------------------

_FIELD = re.compile(r"g(?P<gop>\d{4,})\.(?:(?P<iframe>iframe)|p(?P<pos>\d{2,})\.(?P<kind>mv|res))\.(?P<ext>.+)")


def check_key(key: str) -> str:
    """A sample key: a manifest id (cvpipe.datasets.manifest.check_id's rule)."""
    try:
        return check_id(key)
    except ValueError as e:
        raise ValueError(f"sample key: {e}") from None


def field_name(kind: str, gop: int, position: int, extension: str) -> str:
    """'g0003.iframe.png', 'g0003.p05.mv.npy.zst': the member name after 'KEY.'."""
    if kind == IFRAME:
        if position != 0:
            raise ValueError(f"the I-frame is position 0 of its GOP, not {position}")
        return f"g{gop:04d}.iframe.{extension}"
    if kind not in (MV, RESIDUAL):
        raise ValueError(f"unknown member kind {kind!r}; valid: {', '.join(KINDS)}")
    if position < 1:
        raise ValueError(f"{kind} is stored at P positions (>= 1), not {position}")
    return f"g{gop:04d}.p{position:02d}.{kind}.{extension}"


def parse_field(name: str) -> tuple[str, int, int, str]:
    """(kind, gop, position, extension) of a data member's field; ValueError otherwise."""
    match = _FIELD.fullmatch(name)
    if not match:
        raise ValueError(f"{name!r} is not a shard member field (e.g. g0003.iframe.png, g0003.p05.mv.npy.zst)")
    if match["iframe"]:
        return IFRAME, int(match["gop"]), 0, match["ext"]
    return match["kind"], int(match["gop"]), int(match["pos"]), match["ext"]


# --- Stored positions -----------------------------------------------------------------

def parse_positions(spec: str) -> str:
    """Validates and normalises a positions spec: 'all', 'everyN' (positions 1, 1+N, ...),
    or a comma list of P positions ('1,4,8'); returns its canonical text."""
    spec = spec.strip().lower()
    if spec == "all":
        return spec
    if match := re.fullmatch(r"every(\d+)", spec):
        if int(match[1]) < 1:
            raise ValueError(f"positions {spec!r}: N in everyN must be at least 1")
        return f"every{int(match[1])}"
    try:
        positions = sorted({int(p) for p in spec.split(",")})
    except ValueError:
        raise ValueError(f"positions {spec!r} is not 'all', 'everyN' or a comma list of integers") from None
    if positions[0] < 1:
        raise ValueError(f"positions {spec!r}: P positions start at 1 (0 is the I-frame, stored always)")
    return ",".join(map(str, positions))


def select_positions(spec: str, gop_size: int) -> list[int]:
    """The P positions `spec` stores in a GOP of `gop_size` frames (only those that exist:
    a shorter last GOP keeps fewer)."""
    spec = parse_positions(spec)
    if spec == "all":
        return list(range(1, gop_size))
    if spec.startswith("every"):
        return list(range(1, gop_size, int(spec[5:])))
    return [p for p in map(int, spec.split(",")) if p < gop_size]


# --- Header ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Header:
    """Everything a reader needs about one sample; stored as the `json` member."""

    id: str
    label: int
    label_name: str
    split: str
    source: str                      # the video file the sample was extracted from
    num_frames: int
    width: int
    height: int
    fps: tuple[int, int]             # numerator, denominator (0/1 if unknown)
    gop_starts: tuple[int, ...]
    positions: tuple[tuple[int, ...], ...]   # stored P positions, per GOP
    position_spec: str               # what asked for them ('all', 'every2', '1,5')
    encodings: dict[str, Encoding]   # kind -> Encoding
    accumulated: bool = True         # MV and residual traced back to the GOP's I-frame
    quantisation: dict[str, str] = field(default_factory=lambda: dict(QUANTISATION))
    # In the order of fields(): each member's CRC-32 (none before schema 2), and where its
    # bytes lie, (offset, size), the offset counted from the end of the header member's
    # data (padded to the tar block); `span`: from there to the sample's end (schema 3).
    checksums: tuple[int, ...] = ()
    layout: tuple[tuple[int, int], ...] = ()
    span: int = 0
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        check_key(self.id)
        if self.schema_version not in READABLE_VERSIONS:
            raise ValueError(f"{self.id}: schema version {self.schema_version!r}; this reader reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
        if len(self.positions) != len(self.gop_starts):
            raise ValueError(f"{self.id}: {len(self.positions)} position lists for {len(self.gop_starts)} GOPs")
        for gop, stored in enumerate(self.positions):
            # Sorted without repeats, so the ends bound them all.
            if stored and (stored[0] < 1 or stored[-1] >= self.gop_size(gop) or list(stored) != sorted(set(stored))):
                raise ValueError(f"{self.id}: GOP {gop} of {self.gop_size(gop)} frames cannot store positions {stored}")
        for kind in KINDS:
            check_encoding(kind, self.encodings[kind])

    @property
    def num_gops(self) -> int:
        return len(self.gop_starts)

    @property
    def frame_rate(self) -> Fraction:
        return Fraction(*self.fps) if self.fps[0] > 0 else Fraction(0)

    def gop_size(self, gop: int) -> int:
        end = self.gop_starts[gop + 1] if gop + 1 < self.num_gops else self.num_frames
        return end - self.gop_starts[gop]

    def field(self, kind: str, gop: int, position: int = 0) -> str:
        """The field (member name after 'KEY.') of a stored member; KeyError if not stored."""
        if not 0 <= gop < self.num_gops:
            raise KeyError(f"{self.id}: no GOP {gop} (the video has {self.num_gops})")
        if kind != IFRAME and position not in self.positions[gop]:
            raise KeyError(f"{self.id}: {kind} at GOP {gop} position {position} is not stored "
                           f"(stored: {list(self.positions[gop])})")
        return field_name(kind, gop, position, self.encodings[kind].extension)

    def index(self, name: str) -> int:
        """Where member `name` (a field this header lists) comes in `fields()`; KeyError if
        it is not one."""
        try:
            kind, gop, position, _ = parse_field(name)
            if self.field(kind, gop, position) != name:
                raise KeyError(name)
        except ValueError:
            raise KeyError(f"{self.id}: {name!r} is not a member field") from None
        if kind == IFRAME:
            return self._gop_index[gop]
        return self._gop_index[gop] + 1 + 2 * self.positions[gop].index(position) + (kind == RESIDUAL)

    @cached_property
    def _gop_index(self) -> tuple[int, ...]:
        """Per GOP, the index of its I-frame in `fields()`: each GOP holds 1 + 2 x its positions."""
        starts, index = [], 0
        for stored in self.positions:
            starts.append(index)
            index += 1 + 2 * len(stored)
        return tuple(starts)

    @property
    def num_members(self) -> int:
        return sum(1 + 2 * len(stored) for stored in self.positions)

    def where(self, name: str) -> tuple[int, int]:
        """(offset, size) of member `name` in the tar, from the header's data end (`layout`)."""
        if not self.layout:
            raise KeyError(f"{self.id}: the header (schema {self.schema_version}) does not say where members lie")
        return self.layout[self.index(name)]

    def fields(self) -> list[str]:
        """Every data member's field, in the order they follow the header in the tar."""
        names = []
        for gop in range(self.num_gops):
            names.append(self.field(IFRAME, gop))
            for position in self.positions[gop]:
                names += [self.field(MV, gop, position), self.field(RESIDUAL, gop, position)]
        return names

    def with_checksums(self, members: dict[str, bytes]) -> Header:
        """This header listing the CRC-32 of each of its members (all of `fields()`)."""
        return replace(self, checksums=tuple(zlib.crc32(data) for data in self._in_order(members, "checksums")))

    def with_layout(self, layout: dict[str, tuple[int, int]], span: int) -> Header:
        """This header saying where its members lie in the tar (all of `fields()`)."""
        return replace(self, layout=tuple(tuple(place) for place in self._in_order(layout, "a layout")), span=span)

    def _in_order(self, by_field: dict[str, Any], what: str) -> list[Any]:
        """The values of a {field: value} dictionary of every member, in `fields()` order."""
        names = self.fields()
        if sorted(by_field) != sorted(names):
            raise ValueError(f"{self.id}: {what} for {len(by_field)} members, the header lists {len(names)}")
        return [by_field[name] for name in names]

    def decode(self, name: str, data: bytes) -> np.ndarray:
        """The array of member `name` (a field of this header) from its stored bytes;
        ValueError when they are not what was written (checksum) or do not decode."""
        kind = self._check(name, data)
        return decode_member(kind, data, self.encodings[kind])

    def read(self, name: str, data: bytes) -> tuple[np.ndarray, Undo]:
        """Member `name`'s planes as stored and what is left to undo on them
        (codec.read_member: maybe a read-only view), after the checks of `decode`."""
        kind = self._check(name, data)
        return read_member(kind, data, self.encodings[kind])

    def _check(self, name: str, data: bytes) -> str:
        """The kind of member `name`, once its bytes match the checksum this header lists."""
        try:
            index = self.index(name)
        except KeyError:
            raise ValueError(f"{self.id}: member '{name}' is not one this header lists") from None
        if self.checksums and zlib.crc32(data) != self.checksums[index]:
            raise ValueError(f"{self.id}: member '{name}' is corrupt (CRC-32 {zlib.crc32(data):08x}, "
                             f"written {self.checksums[index]:08x})")
        return parse_field(name)[0]

    # -- sampling: which stored member serves a frame index --

    def locate(self, frame: int) -> tuple[int, int]:
        """(gop, position) of a frame index."""
        if not 0 <= frame < self.num_frames:
            raise IndexError(f"{self.id}: frame {frame} is out of range (0..{self.num_frames - 1})")
        gop = int(np.searchsorted(self.gop_starts, frame, side="right")) - 1
        return gop, frame - self.gop_starts[gop]

    def serve(self, frame: int, kind: str) -> tuple[int, int]:
        """The stored (gop, position) whose `kind` member stands for frame index `frame`.

        I-frames: the frame's GOP, position 0. MV and residual follow CoViAR's loader: an
        I-frame (position 0) is served by the previous GOP's last frame; then, when only
        some positions are stored, by the stored position nearest to it in the same GOP
        (ties to the earlier one), or, in a GOP that stores none (a one-frame GOP), by the
        nearest stored frame of the video. With every position stored this is exactly
        CoViAR's mapping (for frame 0, which CoViAR never samples for MV/residual: GOP 0's
        first stored position).
        """
        gop, position = self.locate(frame)
        if kind == IFRAME:
            return gop, 0
        if kind not in (MV, RESIDUAL):
            raise ValueError(f"unknown member kind {kind!r}; valid: {', '.join(KINDS)}")
        if position == 0 and gop > 0:
            gop, position = gop - 1, self.gop_size(gop - 1) - 1
        if self.positions[gop]:
            return gop, min(self.positions[gop], key=lambda p: (abs(p - position), p))
        target = self.gop_starts[gop] + position
        stored = [(g, p) for g in range(self.num_gops) for p in self.positions[g]]
        if not stored:
            raise LookupError(f"{self.id}: no {kind} member is stored (every GOP is a single I-frame)")
        return min(stored, key=lambda gp: (abs(self.gop_starts[gp[0]] + gp[1] - target), gp))

    # -- JSON --

    def to_json(self) -> bytes:
        data = asdict(self)
        data["encodings"] = {k: e.to_json() for k, e in self.encodings.items()}
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str) -> Header:
        """Parses a header; ValueError for another schema version or a malformed one."""
        try:
            raw = json.loads(data)
            version = raw.get("schema_version")
            if version not in READABLE_VERSIONS:
                raise ValueError(f"schema version {version!r}; this reader reads "
                                 f"{', '.join(map(str, READABLE_VERSIONS))}")
            raw["fps"] = tuple(raw["fps"])
            raw["gop_starts"] = tuple(raw["gop_starts"])
            raw["positions"] = tuple(tuple(p) for p in raw["positions"])
            raw["encodings"] = {k: Encoding.from_json(e) for k, e in raw["encodings"].items()}
            by_field = {k: raw.pop(k) for k in ("checksums", "layout") if isinstance(raw.get(k), dict)}
            raw["checksums"] = tuple(raw.get("checksums", ()))
            raw["layout"] = tuple(map(tuple, raw.get("layout", ())))
            header = cls(**raw)
            if by_field:  # schemas 2 and 3 wrote {field: value}
                ordered = {k: header._in_order(v, k) for k, v in by_field.items()}
                header = replace(header, checksums=tuple(ordered.get("checksums", header.checksums)),
                                 layout=tuple(map(tuple, ordered.get("layout", header.layout))))
        except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as e:
            raise ValueError(f"malformed shard header: {e!r}") from None
        if version >= 2 and _integers(header.checksums, (header.num_members,)) is None:
            raise ValueError(f"malformed shard header: {header.id}: checksums do not list its members")
        places = _integers(header.layout, (header.num_members, 2))  # (offset, size) per member
        if header.layout and (places is None or header.span <= 0 or places.min() < 0
                              or places.sum(axis=1).max() > header.span):
            raise ValueError(f"malformed shard header: {header.id}: its layout does not list its members")
        return header


def _integers(values: tuple, shape: tuple[int, ...]) -> np.ndarray | None:
    """`values` as an integer array of that shape (what a header's JSON lists must be), or None."""
    try:
        array = np.asarray(values)
    except ValueError:  # ragged
        return None
    return array if array.shape == shape and array.dtype.kind in "iu" else None


def header_for(entry: Any, video: Any, position_spec: str, encodings: dict[str, Encoding]) -> Header:
    """The header of a video: `entry` has the manifest fields (id, path, label,
    label_name, split), `video` the extractor's (num_frames, width, height, fps,
    gop_starts, gop_size)."""
    fps = Fraction(video.fps)
    return Header(
        id=entry.id, label=int(entry.label), label_name=entry.label_name, split=entry.split,
        source=str(entry.path), num_frames=int(video.num_frames), width=int(video.width),
        height=int(video.height), fps=(fps.numerator, fps.denominator),
        gop_starts=tuple(int(s) for s in video.gop_starts),
        positions=tuple(tuple(select_positions(position_spec, video.gop_size(g)))
                        for g in range(len(video.gop_starts))),
        position_spec=parse_positions(position_spec), encodings=dict(encodings))


# --- TSN sampling over frame indices (CoViAR's train and test rules) -------------------

def segment_range(num_frames: int, num_segments: int, segment: int, kind: str) -> tuple[int, int]:
    """Frame indices [begin, end) that training draws segment `segment` from.

    CoViAR's rule: the frames are cut into `num_segments` equal spans (endpoints rounded
    half to even, as numpy's round); for MV and residual frame 0 is left out (it has no
    motion), so the spans cover frames 1..num_frames-1. An empty span gets one frame.
    """
    _check_segment(num_frames, num_segments, segment)
    skip = 1 if kind in (MV, RESIDUAL) else 0
    step = (num_frames - skip - 1) / num_segments
    begin, end = round(step * segment), round(step * (segment + 1))
    end = max(end, begin + 1)
    return begin + skip, end + skip


def segment_centre(num_frames: int, num_segments: int, segment: int, kind: str) -> int:
    """The frame index testing takes for segment `segment`: CoViAR's span centre."""
    _check_segment(num_frames, num_segments, segment)
    skip = 1 if kind in (MV, RESIDUAL) else 0
    return round((num_frames - skip - 1) / num_segments * (segment + 0.5)) + skip


def _check_segment(num_frames: int, num_segments: int, segment: int) -> None:
    if num_frames < 2 or num_segments < 1 or not 0 <= segment < num_segments:
        raise ValueError(f"segment {segment} of {num_segments} over {num_frames} frames is not defined")
