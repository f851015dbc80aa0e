"""The dataset manifest: one JSON object per line, one line per video.

Every dataset source (UCF-101, HMDB-51, a folder tree, a CSV, the synthetic set) becomes
this one format, which the shard writer consumes. Ids contain no dots (they become
WebDataset keys) and are stable across runs. The parsers of the official dataset files
are in cvpipe.datasets.sources; the validation they all share is here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from typing import Iterable

SPLITS = ("train", "val", "test")
# The characters of an id: a manifest's, a WebDataset key and a tar member's stem alike
# (no dot, which WebDataset splits keys at; no slash, space, control character or NUL).
_ID_CHARS = "A-Za-z0-9_-"
_ID = re.compile(f"[{_ID_CHARS}]+")


def check_id(video_id: object) -> str:
    """`video_id` if it is a valid id, else ValueError: the one rule for the manifest, the
    shard writer and the shard reader."""
    if not isinstance(video_id, str) or not _ID.fullmatch(video_id):
        raise ValueError(f"id {video_id!r} must be non-empty and made of A-Z, a-z, 0-9, '_' and '-' only")
    return video_id


@dataclass(frozen=True)
class ManifestEntry:
    id: str          # unique, check_id's characters
    path: str        # the video file (absolute when made by build_manifest)
    label: int       # class index, 0-based, below the number of classes
    label_name: str
    split: str       # one of SPLITS

    def __post_init__(self) -> None:
        check_id(self.id)
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"manifest entry {self.id!r}: path {self.path!r} is not a file name")
        if type(self.label) is not int or self.label < 0:   # not bool, float or "3"
            raise ValueError(f"manifest entry {self.id!r}: label {self.label!r} is not a class index "
                             "(an integer 0, 1, ...)")
        if not isinstance(self.label_name, str) or not self.label_name:
            raise ValueError(f"manifest entry {self.id!r}: label_name {self.label_name!r} is not a class name")
        if self.split not in SPLITS:
            raise ValueError(f"manifest entry {self.id!r}: split {self.split!r} is not one of {SPLITS}")


def write_manifest(entries: Iterable[ManifestEntry], path: str | os.PathLike) -> None:
    """Writes entries as JSONL, atomically (a temporary file renamed into place)."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(asdict(e), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_manifest(path: str | os.PathLike) -> list[ManifestEntry]:
    """Reads a JSONL manifest and checks it as a whole: ids unique, one label per
    label_name and back, labels below the number of classes (label names). Anything wrong
    raises ValueError naming the file and line."""
    with open(path, "rb") as f:
        raw_lines = f.read().splitlines()
    entries, lines = [], []
    for number, raw in enumerate(raw_lines, 1):
        try:
            line = raw.decode("utf-8")
            if not line.strip():
                continue
            fields = json.loads(line)
            if not isinstance(fields, dict):
                raise ValueError(f"expected an object with {', '.join(f.name for f in dataclass_fields(ManifestEntry))}")
            entries.append(ManifestEntry(**fields))
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{number}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}:{number}: bad manifest line: {e}") from None
        lines.append(number)
    _check_whole(entries, lines, path)
    return entries


def _check_whole(entries: list[ManifestEntry], lines: list[int], path: str | os.PathLike) -> None:
    first_line: dict[str, int] = {}
    name_of: dict[int, tuple[str, int]] = {}
    label_of: dict[str, tuple[int, int]] = {}
    for e, number in zip(entries, lines, strict=True):
        if e.id in first_line:
            raise ValueError(f"{path}:{number}: id {e.id!r} again (first on line {first_line[e.id]})")
        first_line[e.id] = number
        name, where = name_of.setdefault(e.label, (e.label_name, number))
        if name != e.label_name:
            raise ValueError(f"{path}:{number}: label {e.label} is named {e.label_name!r}, on line {where} {name!r}")
        label, where = label_of.setdefault(e.label_name, (e.label, number))
        if label != e.label:
            raise ValueError(f"{path}:{number}: class {e.label_name!r} has label {e.label}, on line {where} {label}")
    for e, number in zip(entries, lines, strict=True):
        if e.label >= len(label_of):
            raise ValueError(f"{path}:{number}: label {e.label} is not below the number of classes, "
                             f"{len(label_of)} (the manifest names {len(label_of)} classes)")


# --- Building a manifest from a dataset source -------------------------------------------
#
# A source (see cvpipe.datasets.sources) lists videos with labels and official splits and
# records what it could not parse. `build_manifest` then does what every source needs
# alike: carves val (and test) splits, derives ids, and validates the whole.

_ID_UNSAFE = re.compile(f"[^{_ID_CHARS}]")


def video_id(relative_path: str) -> str:
    """The manifest id of a video: its path relative to the dataset root without the
    extension, each character outside [A-Za-z0-9_-] (dots and slashes above all: WebDataset
    splits keys at the first dot) replaced by '_'. Depends on nothing but the path, so it is
    the same on every run and for every re-encoding (`a/v.avi` and `a/v.m4v` share it)."""
    stem = posixpath.splitext(posixpath.normpath(relative_path.replace("\\", "/")))[0]
    return _ID_UNSAFE.sub("_", stem.lstrip("/"))


@dataclass(frozen=True)
class Problem:
    where: str     # "file:line", a file, or a directory
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class SourceVideo:
    """One video as a dataset source lists it, before validation."""
    relative: str  # path relative to the dataset root; the id derives from it
    path: str      # where the file should be
    label: int
    split: str
    group: str     # videos of one group (UCF-101's gXX, one HMDB-51 source film) share a side of a carved split
    origin: str    # where it was listed ("file:line" or the file itself), for messages
    root: str      # the folder its path must stay inside (the dataset root the listing names)


@dataclass
class Source:
    """What a dataset source's files say, and what in them could not be used."""
    location: str                      # the split files' directory, the tree, the CSV(s)
    classes: list[str]                 # index = label
    videos: list[SourceVideo]
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    unused: int = 0                    # listed but in no split (HMDB-51's code 0)


@dataclass
class ManifestBuild:
    entries: list[ManifestEntry]
    classes: list[str]
    errors: list[Problem]
    warnings: list[Problem]
    missing: list[Problem]             # missing video files; errors too unless allowed
    unused: int

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        per_split = Counter(e.split for e in self.entries)
        splits = ", ".join(f"{s} {per_split[s]}" for s in SPLITS)
        return (f"{len(self.entries)} videos in {len(self.classes)} classes ({splits}); "
                f"missing {len(self.missing)}, unused {self.unused}, "
                f"warnings {len(self.warnings)}, errors {len(self.errors)}")


def _stable_hash(key: str) -> str:
    # Python's hash() of a str changes per process (PYTHONHASHSEED); splits must not.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def carve_split(videos: list[SourceVideo], fraction: float, into: str,
                take_from: str = "train") -> list[SourceVideo]:
    """Moves about `fraction` of each class's `take_from` videos to split `into`.

    Whole groups move together, so videos of one actor or scene never end up on both
    sides (UCF-101's clips of a group are cut from one long video: splitting a group
    between train and val leaks it). Per class, groups are visited in the order of a
    SHA-256 of their name, and one is taken whenever that brings the count closer to
    round(fraction * n); the last group in that order always stays. No RNG and no listing
    order is involved, so the same listing gives the same split on every run and machine.
    """
    if not fraction:
        return videos
    groups: dict[int, dict[str, int]] = defaultdict(Counter)
    for v in videos:
        if v.split == take_from:
            groups[v.label][v.group] += 1
    moved = set()
    for label, sizes in groups.items():
        target = math.floor(fraction * sum(sizes.values()) + 0.5)
        taken = 0
        for group in sorted(sizes, key=_stable_hash)[:-1]:
            if abs(taken + sizes[group] - target) < abs(taken - target):
                taken += sizes[group]
                moved.add((label, group))
    return [replace(v, split=into) if v.split == take_from and (v.label, v.group) in moved else v
            for v in videos]


def _inside(path: str, root: str) -> bool:
    """Whether `path` names a file under `root`, by its names (`..` resolved; symbolic links
    inside the root, as datasets spread over disks use, are the user's to make)."""
    path, root = os.path.abspath(path), os.path.abspath(root)
    return os.path.commonpath([path, root]) == root


def build_manifest(source: Source, val_fraction: float = 0.0, test_fraction: float = 0.0,
                   allow_missing: bool = False, allow_outside_root: bool = False) -> ManifestBuild:
    """Validates a source and turns it into manifest entries.

    Test (first) and val are carved from train, each fraction of the train videos as
    listed, before missing files are dropped: a video's split does not depend on which
    other files happen to be present. Errors:
    the source's own (malformed lines, unknown classes), duplicate ids, paths outside the
    dataset root (`../x.avi`, `/etc/passwd`; unless `allow_outside_root`), missing video files
    (unless `allow_missing`: then they are left out and listed in `missing`), classes with
    no videos at all, no classes at all. Warnings: a class with no videos in a split that others have.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val fraction {val_fraction} and test fraction {test_fraction} "
                         "must each be in [0, 1) and sum to less than 1")
    errors, warnings, missing = list(source.errors), list(source.warnings), []
    videos = carve_split(source.videos, test_fraction, "test")
    # both fractions are of the train videos as listed: 0.1 and 0.2 leave 70% in train
    videos = carve_split(videos, val_fraction / (1 - test_fraction), "val")

    seen: dict[str, SourceVideo] = {}
    entries = []
    for v in videos:
        vid = video_id(v.relative)
        first = seen.setdefault(vid, v)
        if first is not v:
            what = f"{v.path} listed twice" if v.path == first.path else f"{v.path} and {first.path}"
            errors.append(Problem(v.origin, f"duplicate id {vid!r}: {what} (first at {first.origin})"))
            continue
        if not allow_outside_root and not _inside(v.path, v.root):
            errors.append(Problem(v.origin, f"{v.path} is outside the dataset root {v.root} "
                                            "(--allow-outside-root takes it)"))
            continue
        if not os.path.isfile(v.path):
            # A FIFO or a device would block whatever reads it later: refused here, by name.
            what = "not a regular file" if os.path.exists(v.path) else "missing video file"
            missing.append(Problem(v.origin, f"{what} {v.path}"))
            continue
        entries.append(ManifestEntry(vid, os.path.abspath(v.path), v.label, source.classes[v.label], v.split))
    if not allow_missing:
        errors.extend(missing)

    if not source.classes and not errors:  # else the source's errors say why
        errors.append(Problem(source.location, "no classes found"))
    counts = Counter((e.label, e.split) for e in entries)
    used_splits = [s for s in SPLITS if any(e.split == s for e in entries)]
    for label, name in enumerate(source.classes):
        if not any(counts[label, s] for s in SPLITS):
            errors.append(Problem(source.location, f"class {name!r} has no videos"))
            continue
        for s in used_splits:
            if not counts[label, s]:
                warnings.append(Problem(source.location, f"class {name!r} has no videos in {s}"))
    entries.sort(key=lambda e: (SPLITS.index(e.split), e.label, e.id))
    return ManifestBuild(entries, list(source.classes), errors, warnings, missing, source.unused)
