"""manifest.json, the listing beside the shards: its name, reading it, and the check that
its counts agree with its own shard list.

`cvpipe shard` writes it (cvpipe.shards.job), `cvpipe verify` checks it against the tars
(cvpipe.shards.verify), and the trainer takes its epoch lengths and classes from it; so
the trainer reads a listing only when `count_problems` finds nothing (a tampered
`splits.train.samples` would make one epoch last hours). Like the schema, it needs
nothing but the standard library: the trainer imports it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cvpipe.datasets.manifest import SPLITS
from cvpipe.shards.schema import READABLE_VERSIONS

MANIFEST_NAME = "manifest.json"
# Each shard entry's fields and types (bool is not an int here).
SHARD_FIELDS = {"name": str, "split": str, "samples": int, "bytes": int, "sha256": str, "frames": int,
                "source_bytes": int, "ids": list}
_SUMMED = ("samples", "frames", "bytes")


def read_listing(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed manifest.json of a shard folder in a schema version this cvpipe reads;
    FileNotFoundError or ValueError naming it."""
    path = Path(directory) / MANIFEST_NAME
    try:
        with open(path, encoding="utf-8") as f:
            listing = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no shards at '{directory}': {path} is missing (run `cvpipe shard` first; "
                                "a run that has not finished writes none)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(listing, dict):
        raise ValueError(f"{path}: not a JSON object")
    if listing.get("schema_version") not in READABLE_VERSIONS:
        raise ValueError(f"{path}: shard schema version {listing.get('schema_version')!r}; this cvpipe reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    return listing


def _is(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def structure_problems(listing: dict[str, Any]) -> list[str]:
    """Fields a reader needs that are missing or of the wrong type; empty when all are there."""
    problems = [f"'{key}' is missing or not a {kind.__name__}"
                for key, kind in (("shards", list), ("splits", dict), ("totals", dict), ("classes", list),
                                  ("errors", list), ("source", dict)) if not _is(listing.get(key), kind)]
    if problems:
        return problems
    for i, shard in enumerate(listing["shards"]):
        bad = [k for k, kind in SHARD_FIELDS.items() if not (isinstance(shard, dict) and _is(shard.get(k), kind))]
        if bad:
            name = shard.get("name", f"#{i}") if isinstance(shard, dict) else f"#{i}"
            problems.append(f"shard {name}: {', '.join(bad)} missing or of the wrong type")
    for i, error in enumerate(listing["errors"]):
        if not (isinstance(error, dict) and all(_is(error.get(k), str) for k in ("id", "path", "reason"))):
            problems.append(f"errors #{i}: not an entry with id, path and reason")
    if not all(_is(listing["source"].get(k), str) for k in ("manifest", "sha256")):
        problems.append("source: manifest or sha256 missing")
    return problems


def count_problems(listing: dict[str, Any]) -> list[str]:
    """What in a listing's structure, totals, splits and classes disagrees with its shard
    list; empty when everything agrees."""
    problems = structure_problems(listing)
    if problems:
        return problems
    shards = listing["shards"]
    for shard in shards:
        if shard["samples"] != len(shard["ids"]) or shard["split"] not in SPLITS:
            problems.append(f"shard {shard['name']}: {shard['samples']} samples for {len(shard['ids'])} ids "
                            f"in split {shard['split']!r}")

    def check(where: str, stated: Any, counted: int) -> None:
        if stated != counted:
            problems.append(f"{where} is {stated!r}, its shards add up to {counted}")

    splits, totals = listing["splits"], listing["totals"]
    for split in SPLITS:
        mine = [s for s in shards if s["split"] == split]
        stated = splits.get(split) if isinstance(splits.get(split), dict) else {}
        check(f"splits.{split}.shards", stated.get("shards"), len(mine))
        for key in _SUMMED:
            check(f"splits.{split}.{key}", stated.get(key), sum(s[key] for s in mine))
        classes = [c.get(split) if isinstance(c, dict) else None for c in listing["classes"]]
        if all(_is(n, int) and n >= 0 for n in classes):
            check(f"the classes' {split} counts", sum(classes), len([i for s in mine for i in s["ids"]]))
        else:
            problems.append(f"classes: a {split} count is missing or not a count")
    check("totals.shards", totals.get("shards"), len(shards))
    for key in (*_SUMMED, "source_bytes"):
        check(f"totals.{key}", totals.get(key), sum(s[key] for s in shards))
    check("totals.failed", totals.get("failed"), len(listing["errors"]))
    check("totals.videos", totals.get("videos"), sum(s["samples"] for s in shards) + len(listing["errors"]))
    labels = [c.get("label") if isinstance(c, dict) else None for c in listing["classes"]]
    if not all(_is(label, int) and label >= 0 for label in labels) or len(set(labels)) != len(labels):
        problems.append(f"classes: labels {labels} are not distinct class indices")
    return problems
