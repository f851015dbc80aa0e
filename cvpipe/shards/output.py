"""The shard job's output folder: one run at a time, and nothing deleted that the job
cannot prove it wrote.

A run holds an exclusive lock on `.cvpipe-shard.lock` (flock: the kernel drops it when the
process dies, so a killed run leaves no stale lock); a second run refuses, naming the
holder's pid, host and start time. Before it changes anything, a run sorts what the
folder holds:
- the job's own: the lock, manifest.json, the shards of this plan, records it recognises
  by their content, temporary files under its exact temporary names (NAME.tmp-<32 hex>)
  and the fault injection's markers;
- stale, and provably the job's: shards and records of another plan (another
  --shard-size, a shrunk manifest) whose record names them with their size and SHA-256,
  and temporary files of dead attempts: these are removed;
- anything else is unknown: the run refuses to start while such files are there, listing
  them, unless `force`, which leaves them alone.
`records/` must be a folder of its own: the job never reads, writes or deletes through a
symbolic link.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cvpipe.datasets.manifest import SPLITS
from cvpipe.shards.listing import MANIFEST_NAME

RECORDS_DIR = "records"
LOCK_NAME = ".cvpipe-shard.lock"
FAULT_MARKER = ".fault-"   # then killed-NAME or stalled-NAME (cvpipe.shards.job)
_NAME = rf"(?:{'|'.join(SPLITS)})-\d{{6}}"
_SHARD = re.compile(rf"{_NAME}\.tar")
_RECORD = re.compile(rf"{_NAME}\.json")
_TMP = r"\.tmp-[0-9a-f]{32}"   # write_shard's and write_json_atomic's uuid4().hex suffix
_TMP_IN_OUT = re.compile(rf"(?:{_NAME}\.tar|{re.escape(MANIFEST_NAME)}){_TMP}")
_TMP_IN_RECORDS = re.compile(rf"{_NAME}\.json{_TMP}")
_RECORD_KEYS = {"name", "planned", "options", "ids", "bytes", "sha256", "errors"}


class OutputProblem(Exception):
    """The output folder cannot take this run (in use, unknown files, a linked records/)."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at `path` if it is one of the job's (by its fields and name), else None."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not _RECORD_KEYS <= record.keys() or record["name"] != path.stem:
        return None
    return record


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Holds the folder's lock for the block; OutputProblem if another run holds it."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputProblem(f"{out} is in use by another cvpipe shard ({_holder(fd)}); wait for it to "
                                "finish, or stop it, then run again") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
                                ).encode())
        yield
    finally:
        os.close(fd)   # closing releases the lock


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def records_dir(out: Path) -> Path:
    """out/records (which may not exist yet); OutputProblem if it is a link or not a folder."""
    records = out / RECORDS_DIR
    if records.is_symlink() or (records.exists() and not records.is_dir()):
        raise OutputProblem(f"{records} is {'a symbolic link' if records.is_symlink() else 'not a folder'}: "
                            "cvpipe shard reads, writes and deletes records only in a folder of its own")
    return records


def clean(out: Path, planned: set[str], force: bool = False, fault_markers: bool = True) -> list[str]:
    """Removes what the job provably left and this plan does not need; returns what it
    removed (relative to `out`). Raises OutputProblem for unknown files unless `force`.
    The fault markers go too unless `fault_markers` is False (the end of a run leaves
    them, as evidence that the fault fired)."""
    records = records_dir(out)
    records.mkdir(exist_ok=True)
    removable, unknown = [], []
    for path in sorted(out.iterdir()):
        name = path.name
        if name in (LOCK_NAME, MANIFEST_NAME, RECORDS_DIR) or (_SHARD.fullmatch(name) and path.stem in planned):
            continue
        if _TMP_IN_OUT.fullmatch(name) or (name.startswith(FAULT_MARKER) and path.is_file()):
            if fault_markers or not name.startswith(FAULT_MARKER):
                removable.append(path)
        elif _SHARD.fullmatch(name) and not path.is_symlink() and _vouched_for(path, records):
            removable.append(path)
        else:
            unknown.append(path)
    stale_shards = {p.stem for p in removable if _SHARD.fullmatch(p.name)}
    for path in sorted(records.iterdir()):
        if _TMP_IN_RECORDS.fullmatch(path.name):
            removable.append(path)
        elif not (_RECORD.fullmatch(path.name) and not path.is_symlink() and read_record(path) is not None):
            unknown.append(path)
        elif path.stem not in planned and (path.stem in stale_shards or not (out / f"{path.stem}.tar").exists()):
            removable.append(path)   # the record of a stale shard, or of one that is gone
    if unknown and not force:
        listed = "\n".join(f"  {p.relative_to(out)}" for p in unknown[:20])
        more = f"\n  ... and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        raise OutputProblem(f"{out} holds {len(unknown)} file(s) cvpipe shard did not write:\n{listed}{more}\n"
                            "move them away, or pass --force to leave them there and go on")
    for path in removable:
        path.unlink(missing_ok=True)
    return [str(p.relative_to(out)) for p in removable]


def _vouched_for(tar: Path, records: Path) -> bool:
    """Whether the job's record of `tar` names it with its size and SHA-256."""
    record = read_record(records / f"{tar.stem}.json")
    return (record is not None and record["ids"] and tar.stat().st_size == record["bytes"]
            and file_sha256(tar) == record["sha256"])
