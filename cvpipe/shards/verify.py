"""Checking a shard directory: `cvpipe verify DIR`, and the end of every `cvpipe shard`.

The invariant: every entry of the source manifest is in exactly one shard or in the
errors list of manifest.json, none twice, and every shard is what manifest.json says
(size, SHA-256, its samples in order). Each tar is read once, hashing it on the way, so
a tampered, truncated or reordered shard is caught; each sample must be a header whose
fields list exactly the members that follow it. `deep` also decodes every member.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Sequence

from cvpipe.datasets.manifest import SPLITS, ManifestEntry, read_manifest
from cvpipe.shards.listing import MANIFEST_NAME, count_problems, read_listing, structure_problems
from cvpipe.shards.schema import CHANNELS, HEADER_FIELD, Header, parse_field


@dataclass
class VerifyReport:
    directory: str
    shards: int = 0
    samples: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)   # manifest.json's errors list
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        state = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return (f"{self.directory}: {state}: {self.shards} shards, {self.samples} samples stored, "
                f"{len(self.failed)} failed videos, {self.bytes / 2**20:.1f} MiB")


def failure_lines(failed: Sequence[dict[str, str]], directory: str | os.PathLike, limit: int = 20) -> list[str]:
    """Up to `limit` lines naming a failed video, its file and why; then how many more."""
    lines = [f"  failed: {e['id']} ({e['path']}): {e['reason']}" for e in failed[:limit]]
    if len(failed) > limit:
        lines.append(f"  ... and {len(failed) - limit} more in {Path(directory) / MANIFEST_NAME}")
    return lines


class _HashingReader:
    """A read-only file that checksums what is read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def scan_shard(path: Path, split: str | None = None, deep: bool = False,
               labels: Counter[tuple[str, int]] | None = None) -> tuple[list[str], int, str, list[str]]:
    """Reads a tar once: (sample keys in order, bytes, sha256, problems found in it).
    `split`: the split every sample's header must name (None: any); `labels` counts the
    headers' (split, label) pairs when given."""
    keys: list[str] = []
    problems: list[str] = []
    with open(path, "rb") as raw:
        reader = _HashingReader(raw)
        end = None
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                sample = _SampleCheck(path.name, split, deep, problems, labels if labels is not None else Counter())
                for info in tar:
                    data = tar.extractfile(info).read() if info.isfile() else b""
                    if len(data) != info.size:
                        problems.append(f"{path.name}: {info.name}: truncated ({len(data)} of {info.size} bytes)")
                        break
                    key = sample.add(info, data)
                    if key is not None:
                        keys.append(key)
                else:
                    end = tar.offset
                sample.finish()
        except (tarfile.TarError, EOFError, OSError) as e:
            problems.append(f"{path.name}: unreadable tar after {len(keys)} samples: {e}")
        reader.drain()
        if end is not None:
            # Python's tarfile takes a cut at a member boundary for the end of the archive;
            # a complete tar ends with at least two zero blocks and nothing but zeros after.
            raw.seek(end)
            tail = raw.read()
            if len(tail) < 2 * tarfile.BLOCKSIZE or tail.strip(b"\0"):
                problems.append(f"{path.name}: no end-of-archive marker after {len(keys)} samples "
                                "(truncated, or data appended)")
    return keys, reader.size, reader.sha256.hexdigest(), problems


class _SampleCheck:
    """Follows the members of a tar: each sample is its header, then exactly its fields."""

    def __init__(self, shard: str, split: str | None, deep: bool, problems: list[str],
                 labels: Counter[tuple[str, int]]) -> None:
        self.shard, self.split, self.deep, self.problems, self.labels = shard, split, deep, problems, labels
        self.seen: set[str] = set()
        self.header: Header | None = None
        self.expected: list[str] = []

    def add(self, info: tarfile.TarInfo, data: bytes) -> str | None:
        """Checks one member; returns the key when it starts a new sample."""
        where = f"{self.shard}: {info.name}"
        key, dot, name = info.name.partition(".")
        if not info.isfile() or not dot:
            self.problems.append(f"{where}: not a sample member")
            return None
        if name == HEADER_FIELD:
            self.finish()
            if key in self.seen:
                self.problems.append(f"{where}: sample {key!r} appears twice (members not adjacent?)")
            self.seen.add(key)
            try:
                self.header = Header.from_json(data)
            except ValueError as e:
                self.problems.append(f"{where}: {e}")
                self.header, self.expected = None, []
                return key
            if self.header.id != key:
                self.problems.append(f"{where}: header id {self.header.id!r} differs from the key")
            if self.split is not None and self.header.split != self.split:
                self.problems.append(f"{where}: a {self.header.split} video in a {self.split} shard")
            self.labels[self.header.split, self.header.label] += 1
            self.key, self.expected = key, self.header.fields()
            return key
        if self.header is None or key != self.key:
            self.problems.append(f"{where}: member outside its sample (no header before it)")
            return None
        if not self.expected or self.expected[0] != name:
            want = self.expected[0] if self.expected else "no more members"
            self.problems.append(f"{where}: unexpected member (expected {want})")
            self.expected = [n for n in self.expected if n != name]
            return None
        self.expected.pop(0)
        if self.deep:
            self._decode(where, name, data)
        return None

    def _decode(self, where: str, name: str, data: bytes) -> None:
        kind = parse_field(name)[0]
        try:
            array = self.header.decode(name, data)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a problem to report
            self.problems.append(f"{where}: does not decode: {type(e).__name__}: {e}")
            return
        want = (self.header.height, self.header.width, CHANNELS[kind])
        if array.shape != want:
            self.problems.append(f"{where}: decodes to {array.shape}, expected {want}")

    def finish(self) -> None:
        if self.header is not None and self.expected:
            self.problems.append(f"{self.shard}: sample {self.key!r} lacks {len(self.expected)} member(s), "
                                 f"first {self.expected[0]}")
        self.header, self.expected = None, []


def verify(directory: str | os.PathLike, entries: Sequence[ManifestEntry] | None = None,
           deep: bool = False) -> VerifyReport:
    """Checks a shard directory against its manifest.json and the source manifest.

    `entries`: the source manifest's entries; None reads the file manifest.json names
    (a problem if it is gone or has changed since sharding).
    """
    directory = Path(directory)
    report = VerifyReport(str(directory))
    try:
        output = read_listing(directory)
    except (OSError, ValueError) as e:
        report.problems.append(str(e))
        return report
    broken = structure_problems(output)
    if broken:   # nothing below can be read from it
        report.problems += [f"manifest.json: {p}" for p in broken]
        return report
    report.problems += [f"manifest.json: {p}" for p in count_problems(output)]
    if entries is None:
        entries = _source_entries(output["source"], report)

    placed: Counter[str] = Counter()
    labels: Counter[tuple[str, int]] = Counter()
    for shard in output["shards"]:
        _verify_shard(directory, shard, deep, report, labels)
        placed.update(shard["ids"])
    _check_classes(output["classes"], labels, report)
    failed = Counter(e["id"] for e in output["errors"])
    report.failed = list(output["errors"])
    for vid, n in (placed + failed).items():
        if n > 1:
            report.problems.append(f"video {vid!r} is listed {n} times across shards and errors")
    if entries is not None:
        wanted = {e.id for e in entries}
        for vid in sorted(wanted - set(placed) - set(failed)):
            report.problems.append(f"video {vid!r} of the source manifest is in no shard and not in the errors list")
        for vid in sorted((set(placed) | set(failed)) - wanted):
            report.problems.append(f"video {vid!r} is not in the source manifest")
    if not output["shards"]:
        report.problems.append(f"no shard holds a sample: none of the {len(failed)} videos could be stored"
                               if failed else "no shard holds a sample: the source manifest lists no video")
    listed = {shard["name"] for shard in output["shards"]}
    for stray in sorted(p.name for p in directory.glob("*.tar") if p.name not in listed):
        report.problems.append(f"{stray}: a tar that manifest.json does not list")
    return report


def _source_entries(source: dict, report: VerifyReport) -> list[ManifestEntry] | None:
    path = source["manifest"]
    try:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        entries = read_manifest(path)
    except (OSError, ValueError) as e:
        report.problems.append(f"cannot read the source manifest to check against: {e}")
        return None
    if digest != source["sha256"]:
        report.problems.append(f"the source manifest {path} changed since sharding (SHA-256 differs)")
    return entries


def _check_classes(classes: list[dict], labels: Counter[tuple[str, int]], report: VerifyReport) -> None:
    """manifest.json's per-class counts against the labels in the samples' headers."""
    stated = Counter({(split, c["label"]): c[split] for c in classes for split in SPLITS if c[split]})
    for split, label in sorted(set(stated) | set(labels)):
        if stated[split, label] != labels[split, label]:
            report.problems.append(f"manifest.json lists {stated[split, label]} {split} videos of class {label}, "
                                   f"the shards hold {labels[split, label]}")


def _verify_shard(directory: Path, shard: dict, deep: bool, report: VerifyReport,
                  labels: Counter[tuple[str, int]]) -> None:
    name = shard["name"]
    path = directory / name
    if not path.is_file():
        report.problems.append(f"{name}: listed in manifest.json but missing")
        return
    keys, size, digest, problems = scan_shard(path, shard["split"], deep, labels)
    report.problems += problems
    report.shards += 1
    report.samples += len(keys)
    report.bytes += size
    if size != shard["bytes"] or digest != shard["sha256"]:
        report.problems.append(f"{name}: {size} bytes, SHA-256 {digest[:12]}...; manifest.json says "
                               f"{shard['bytes']} bytes, {shard['sha256'][:12]}...")
    if keys != shard["ids"]:
        report.problems.append(f"{name}: holds {len(keys)} samples, manifest.json lists {len(shard['ids'])} "
                               "(or another order)")
