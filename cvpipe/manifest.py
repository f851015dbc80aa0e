"""The dataset manifest: one JSON object per line, one line per video.

Every dataset source (UCF-101, HMDB-51, a folder tree, a CSV, the synthetic set) becomes
this one format, which the shard writer consumes. Ids contain no dots (they become
WebDataset keys) and are stable across runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Iterable

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ManifestEntry:
    id: str          # unique, no dots
    path: str        # the video file
    label: int       # class index, 0-based
    label_name: str
    split: str       # one of SPLITS

    def __post_init__(self) -> None:
        if not self.id or "." in self.id or "/" in self.id:
            raise ValueError(f"manifest id {self.id!r} must be non-empty and contain no '.' or '/'")
        if self.split not in SPLITS:
            raise ValueError(f"manifest entry {self.id!r}: split {self.split!r} is not one of {SPLITS}")
        if self.label < 0:
            raise ValueError(f"manifest entry {self.id!r}: label {self.label} is negative")


def write_manifest(entries: Iterable[ManifestEntry], path: str | os.PathLike) -> None:
    """Writes entries as JSONL, atomically (a temporary file renamed into place)."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(asdict(e), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_manifest(path: str | os.PathLike) -> list[ManifestEntry]:
    """Reads a JSONL manifest; a malformed line raises ValueError naming the file and line."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entries.append(ManifestEntry(**json.loads(line)))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}:{number}: bad manifest line: {e}") from None
    return entries
