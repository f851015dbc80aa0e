"""Writing one shard: extract each video, quantise, encode its members, write a tar.

A shard is written under a temporary name (`NAME.tmp-<uuid>`) beside its final one,
flushed to disk, then renamed, so a shard under its final name is always complete; an
attempt that dies leaves only a temporary file, which the job removes. The tar is
byte-reproducible: members in a fixed order (cvpipe.shards.schema), fixed mtime, owner
and mode, and no pax timestamps, so the same videos and options give the same bytes.

A video that cannot be read or extracted is recorded as an error and left out; the
others go on. A shard whose every video failed is not written at all. An error of the
environment (ENVIRONMENT_ERRORS) is no video's fault: it ends the shard, recording nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cvpipe
from cvpipe.datasets.manifest import ManifestEntry
from cvpipe.shards.codec import (
    DEFAULT_ENCODINGS,
    Encoding,
    check_encoding,
    encode_member,
    quantise_mv,
    quantise_residual,
)
from cvpipe.shards.schema import (
    HEADER_FIELD,
    IFRAME,
    KINDS,
    MV,
    RESIDUAL,
    SCHEMA_VERSION,
    Header,
    check_key,
    header_for,
    parse_positions,
)

# 2000-01-01T00:00:00Z: a fixed member mtime (0 makes GNU tar warn of an implausible date).
TAR_MTIME = 946684800
# GOPs extracted per call: bounds memory (int16 arrays of a few GOPs, not of a whole
# long video) without decoding anything twice, since every call starts at a GOP.
GOPS_PER_CALL = 4
# Failures of the worker's environment, not of a video (cvpipe's extension or a library
# that does not import): they fail the whole task, and are never recorded as a bad video.
ENVIRONMENT_ERRORS = (ImportError,)


@dataclass(frozen=True)
class ShardOptions:
    """What to store and how: recorded in manifest.json; a change rebuilds every shard."""

    positions: str = "all"
    encodings: dict[str, Encoding] = field(default_factory=lambda: dict(DEFAULT_ENCODINGS))

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", parse_positions(self.positions))
        if set(self.encodings) != set(KINDS):
            raise ValueError(f"encodings must name exactly {', '.join(KINDS)}")
        for kind, encoding in self.encodings.items():
            check_encoding(kind, encoding)

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "positions": self.positions,
                "encodings": {k: self.encodings[k].to_json() for k in KINDS}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardOptions:
        return cls(positions=data["positions"],
                   encodings={k: Encoding.from_json(e) for k, e in data["encodings"].items()})


@dataclass
class Timings:
    """Seconds spent per stage, summed over a shard's videos."""

    extract: float = 0.0
    quantise: float = 0.0
    encode: float = 0.0
    write: float = 0.0    # tar, checksum, fsync and rename

    def add(self, other: Timings) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class ShardResult:
    """What writing a shard produced. `ids`: the videos stored, in tar order."""

    name: str
    ids: list[str] = field(default_factory=list)
    bytes: int = 0
    sha256: str = ""
    frames: int = 0
    members: int = 0
    source_bytes: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)   # {"id", "path", "reason"}
    timings: Timings = field(default_factory=Timings)

    @property
    def samples(self) -> int:
        return len(self.ids)


class _Clock:
    """Adds the seconds a `with` block takes to one Timings field."""

    def __init__(self, timings: Timings, stage: str) -> None:
        self.timings, self.stage = timings, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        setattr(self.timings, self.stage, getattr(self.timings, self.stage) + time.perf_counter() - self.start)


def sample_members(entry: ManifestEntry, options: ShardOptions, timings: Timings) -> tuple[Header, list[tuple[str, bytes]]]:
    """A video's header and its members as (field, bytes), header first, all encoded (so
    the header can list every member's checksum, and a failure leaves nothing half-made).
    The members are extracted a few GOPs per decode call."""
    check_key(entry.id)
    with _Clock(timings, "extract"):
        video = cvpipe.open(entry.path)
        if video.num_frames == 0:
            raise ValueError(f"'{entry.path}' has no decodable frames")
        header = header_for(entry, video, options.positions, options.encodings)
    members = list(_members(video, header, timings))
    header = header.with_checksums(dict(members)).with_layout(*member_layout(entry.id, members))
    return header, [(HEADER_FIELD, header.to_json()), *members]


def _members(video: cvpipe.Video, header: Header, timings: Timings) -> Iterator[tuple[str, bytes]]:
    encodings = header.encodings
    for first in range(0, header.num_gops, GOPS_PER_CALL):
        gops = range(first, min(first + GOPS_PER_CALL, header.num_gops))
        p_frames = [header.gop_starts[g] + p for g in gops for p in header.positions[g]]
        requests = {"bgr": [header.gop_starts[g] for g in gops]}
        if p_frames:
            requests |= {"mv_accumulated": p_frames, "residual_accumulated": p_frames}
        with _Clock(timings, "extract"):
            out = video.extract_each(requests)
        with _Clock(timings, "quantise"):
            mv = quantise_mv(out["mv_accumulated"]) if p_frames else None
            res = quantise_residual(out["residual_accumulated"]) if p_frames else None
        members = []
        with _Clock(timings, "encode"):
            at = 0
            for i, gop in enumerate(gops):
                members.append((header.field(IFRAME, gop), encode_member(IFRAME, out["bgr"][i], encodings[IFRAME])))
                for position in header.positions[gop]:
                    members.append((header.field(MV, gop, position), encode_member(MV, mv[at], encodings[MV])))
                    members.append((header.field(RESIDUAL, gop, position),
                                    encode_member(RESIDUAL, res[at], encodings[RESIDUAL])))
                    at += 1
        yield from members


class _HashingFile:
    """A write-only file that checksums and counts what goes through it."""

    def __init__(self, raw: io.BufferedWriter) -> None:
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)


def tar_info(name: str, size: int) -> tarfile.TarInfo:
    """A member header that depends only on the name and size."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, TAR_MTIME, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def member_layout(key: str, members: Sequence[tuple[str, bytes]]) -> tuple[dict[str, tuple[int, int]], int]:
    """Where `tar.addfile` will put each member's bytes, counted from the end of the
    sample's header member (its data padded to the block), and where the sample ends:
    each member is its tar header (a pax header first where the name needs one) and its
    data padded to 512 bytes."""
    layout, at = {}, 0
    for name, data in members:
        at += len(tar_info(f"{key}.{name}", len(data)).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))
        layout[name] = (at, len(data))
        at += -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return layout, at


def write_shard(path: str | os.PathLike, entries: Sequence[ManifestEntry], options: ShardOptions,
                after_sample: Callable[[int], None] | None = None) -> ShardResult:
    """Writes the shard of `entries` (in that order) to `path`, atomically.

    Args:
        after_sample: called with the count of samples written so far, after each one is
            flushed to the temporary file (the job's fault injection hooks in here).

    Returns:
        The result; if every video failed, no file is written and `samples` is 0.
    """
    path = Path(path)
    result = ShardResult(path.name)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as raw:
            hashing = _HashingFile(raw)
            # Stream mode ("w|") writes strictly forward and never seeks, so the hash sees every byte.
            with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for entry in entries:
                    _add_sample(tar, entry, options, result)
                    if after_sample is not None and result.ids and result.ids[-1] == entry.id:
                        raw.flush()
                        after_sample(result.samples)
            with _Clock(result.timings, "write"):
                raw.flush()
                os.fsync(raw.fileno())
        if not result.ids:
            return result
        with _Clock(result.timings, "write"):
            os.replace(tmp, path)
            fsync_directory(path.parent)
        result.bytes, result.sha256 = hashing.size, hashing.sha256.hexdigest()
        return result
    finally:
        tmp.unlink(missing_ok=True)


def _add_sample(tar: tarfile.TarFile, entry: ManifestEntry, options: ShardOptions, result: ShardResult) -> None:
    """Appends one video's members, or records why it failed (no partial sample)."""
    timings = Timings()
    try:
        header, members = sample_members(entry, options, timings)
        source_bytes = os.path.getsize(entry.path)
    except ENVIRONMENT_ERRORS:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of one video is recorded, and the shard goes on
        result.errors.append({"id": entry.id, "path": str(entry.path), "reason": f"{type(e).__name__}: {e}"})
        result.timings.add(timings)
        return
    with _Clock(timings, "write"):
        for name, data in members:
            tar.addfile(tar_info(f"{entry.id}.{name}", len(data)), io.BytesIO(data))
    result.ids.append(entry.id)
    result.frames += header.num_frames
    result.members += len(members)
    result.source_bytes += source_bytes
    result.timings.add(timings)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Makes a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Writes JSON to a temporary name, fsyncs it, renames it to `path`."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
