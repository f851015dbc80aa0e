"""The preprocessing job: a manifest of videos in, WebDataset shards and manifest.json out.

Planning is deterministic from the manifest alone: by split (train, val, test), then in
a fixed shuffle (the SHA-256 of each id), in chunks of `shard_size` videos named `{split}-{index:06d}.tar`, so every run maps
each video to the same shard. One Ray task writes one shard (cvpipe.shards.writer), then
a record of it (`records/NAME.json`: its videos, options, size, checksum, errors), both
atomically. A worker process that dies is retried by Ray (`max_retries`); a Python
exception for one video is recorded in the shard's errors, never retried.

Before anything is written, one task per node checks that the workers import the driver's
cvpipe with its compiled extension (cvpipe.shards.cluster); a failure of the environment,
there or later (a task that cannot import, cannot write, or whose worker dies past Ray's
retries), stops the job with EnvironmentProblem and is never recorded as a bad video.

Resume: a shard is kept when every one of its videos was stored, its record matches the
plan and the options, and its tar matches the record's size and SHA-256; the rest are
built, so a run again retries every video that failed before. After the tasks,
manifest.json is written (atomically; a run that builds anything removes the old one
first) and the output is verified (cvpipe.shards.verify): the run fails if any manifest
entry is not in exactly one shard or the errors list.

Fault injection for tests, by shard name (without .tar), read by the driver:
- CVPIPE_FAULT_KILL_ONCE=NAME: the task of that shard SIGKILLs its own worker process
  after its first sample, on the first attempt only (a marker file in the output
  directory, `.fault-killed-NAME`, remembers the attempt; the next run removes it);
- CVPIPE_FAULT_KILL_ALWAYS=NAME: the same on every attempt, so Ray's retries run out;
- CVPIPE_FAULT_STALL=NAME: the task of that shard stops after its first sample and waits
  until it is killed, so a test can interrupt the driver at a known point;
and by node, read by the worker, from the environment its node was started with:
- CVPIPE_FAULT_STALL_ON_NODE=1: every task on that node stalls so (`.fault-stalled-NAME`
  marks each), so a test can take the node away while its tasks run.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

from cvpipe.datasets.manifest import SPLITS, ManifestEntry, read_manifest
from cvpipe.shards.cluster import EnvironmentProblem, check_workers, connect, last_line
from cvpipe.shards.listing import MANIFEST_NAME
from cvpipe.shards.output import FAULT_MARKER, RECORDS_DIR, clean, file_sha256, locked, read_record, records_dir
from cvpipe.shards.schema import SCHEMA_VERSION
from cvpipe.shards.verify import VerifyReport, verify
from cvpipe.shards.writer import ShardOptions, Timings, write_json_atomic, write_shard

FAULT_KILL_ENV = "CVPIPE_FAULT_KILL_ONCE"
FAULT_KILL_ALWAYS_ENV = "CVPIPE_FAULT_KILL_ALWAYS"
FAULT_STALL_ENV = "CVPIPE_FAULT_STALL"
FAULT_STALL_ON_NODE_ENV = "CVPIPE_FAULT_STALL_ON_NODE"
_FAULTS = {FAULT_KILL_ENV: "kill", FAULT_KILL_ALWAYS_ENV: "kill-always", FAULT_STALL_ENV: "stall"}
DEFAULT_SHARD_SIZE = 32
MAX_RETRIES = 3


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    entries: tuple[ManifestEntry, ...]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}"

    @property
    def tar_name(self) -> str:
        return f"{self.name}.tar"

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def fingerprint(self) -> list[dict[str, Any]]:
        """The entries with their source files' size and mtime: a record made for another
        fingerprint (an entry relabelled, a video re-encoded in place) is not kept."""
        return [asdict(e) | _stat(e.path) for e in self.entries]


def _stat(path: str) -> dict[str, int | None]:
    try:
        st = os.stat(path)
    except OSError:
        return {"size": None, "mtime_ns": None}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def shuffle_key(video_id: str) -> str:
    return hashlib.sha256(video_id.encode("utf-8")).hexdigest()


def plan_shards(entries: Sequence[ManifestEntry], shard_size: int) -> list[ShardPlan]:
    """Splits in SPLITS order, `shard_size` videos per shard, in the order of the SHA-256 of
    their ids: a fixed shuffle, since ids usually sort by class (UCF-101's do) and a shard
    of one class would give a streaming reader batches of one class."""
    if shard_size < 1:
        raise ValueError(f"shard size {shard_size} must be at least 1")
    duplicates = sorted(vid for vid, n in Counter(e.id for e in entries).items() if n > 1)
    if duplicates:
        raise ValueError(f"the manifest lists these ids more than once: {', '.join(duplicates[:10])}")
    plans = []
    for split in SPLITS:
        videos = sorted((e for e in entries if e.split == split), key=lambda e: shuffle_key(e.id))
        for index, start in enumerate(range(0, len(videos), shard_size)):
            plans.append(ShardPlan(split, index, tuple(videos[start:start + shard_size])))
    return plans


# --- The task -------------------------------------------------------------------------

def build_shard(plan: ShardPlan, out_dir: str, options: dict[str, Any], fault: str | None = None) -> dict[str, Any]:
    """Writes one shard and its record; returns the record. Runs in a Ray worker.
    `fault`: None, "kill", "kill-always" or "stall" (see the module's fault injection)."""
    started = time.perf_counter()
    out = Path(out_dir)
    planned = plan.fingerprint()
    if fault is None and os.environ.get(FAULT_STALL_ON_NODE_ENV):
        fault = "stall"
    after_sample = _fault_hook(out, plan.name, fault)
    result = write_shard(out / plan.tar_name, plan.entries, ShardOptions.from_json(options), after_sample)
    if not result.ids:
        (out / plan.tar_name).unlink(missing_ok=True)   # an earlier run's, when its videos stored then
    record = {
        "name": plan.name, "planned": planned, "options": options,
        "ids": result.ids, "bytes": result.bytes, "sha256": result.sha256, "frames": result.frames,
        "members": result.members, "source_bytes": result.source_bytes, "errors": result.errors,
        "timings": asdict(result.timings) | {"task": time.perf_counter() - started},
        "node": _node_id(),
    }
    write_json_atomic(out / RECORDS_DIR / f"{plan.name}.json", record)
    return record


def _node_id() -> str | None:
    """The Ray node this task runs on (which node wrote a shard, for whoever reads its record)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _fault_hook(out: Path, name: str, fault: str | None) -> Callable[[int], None] | None:
    marker = out / f"{FAULT_MARKER}killed-{name}"
    if fault == "kill-always" or (fault == "kill" and not marker.exists()):
        def kill(samples_written: int) -> None:
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

        return kill
    if fault == "stall":
        def stall(samples_written: int) -> None:
            (out / f"{FAULT_MARKER}stalled-{name}").touch()
            while True:
                time.sleep(60)

        return stall
    return None


def _fault_for(name: str) -> str | None:
    return next((fault for env, fault in _FAULTS.items() if os.environ.get(env) == name), None)


# --- Resume ---------------------------------------------------------------------------

def kept_record(out: Path, plan: ShardPlan, options: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a finished shard that this run can keep, or None to rebuild it. A
    shard with a failed video is never finished: a run again retries the video."""
    record = read_record(out / RECORDS_DIR / f"{plan.name}.json")
    if record is None or record["planned"] != plan.fingerprint() or record["options"] != options or record["errors"]:
        return None
    tar = out / plan.tar_name
    if not tar.is_file() or tar.stat().st_size != record["bytes"] or file_sha256(tar) != record["sha256"]:
        return None
    return record


@dataclass
class JobResult:
    """What a run did; `manifest` is manifest.json's content."""

    manifest: dict[str, Any]
    report: VerifyReport
    built: int = 0                     # shards written by this run
    kept: int = 0                      # shards kept from an earlier run
    unwritten: int = 0                 # planned shards none of whose videos could be stored
    built_videos: int = 0              # videos this run extracted (stored or failed)
    seconds: float = 0.0
    ray_seconds: float = 0.0           # part of `seconds` spent starting (joining) and stopping Ray
    timings: Timings = field(default_factory=Timings)
    task_seconds: float = 0.0          # summed wall time inside the tasks built this run
    removed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.ok


def run_job(manifest: str | os.PathLike, out_dir: str | os.PathLike, options: ShardOptions = ShardOptions(),
            shard_size: int = DEFAULT_SHARD_SIZE, workers: int = 2, ray_address: str | None = None,
            progress: bool = True, force: bool = False,
            on_head_lost: Callable[[str], None] | None = None) -> JobResult:
    """Shards every video of `manifest` into `out_dir`; resumes what a previous run left.

    Args:
        force: go on although `out_dir` holds files the job did not write (left alone).
        on_head_lost: called with the reason, from a watching thread, when the head of a
            joined cluster is gone (`cvpipe shard` then exits); None leaves it to Ray.

    Raises:
        ValueError: a bad manifest or options.
        OutputProblem: another run holds `out_dir`, it holds files the job did not write
            (without `force`), or its records/ is a link (cvpipe.shards.output).
        EnvironmentProblem: the workers cannot run the job (checked before anything is
            written), or shard tasks failed for reasons that are not a video's; the shards
            finished so far are kept for a run again, and no manifest.json is written.

    Video failures are recorded in manifest.json's errors, not raised. Check `result.ok`
    for the final verification.
    """
    started = time.perf_counter()
    manifest = Path(manifest).resolve()
    entries = read_manifest(manifest)
    plans = plan_shards(entries, shard_size)
    out = Path(out_dir)
    with locked(out):
        result = _run_locked(manifest, entries, plans, out, options.to_json(), shard_size, workers, ray_address,
                             progress, force, on_head_lost)
    result.seconds = time.perf_counter() - started
    return result


def _run_locked(manifest: Path, entries: Sequence[ManifestEntry], plans: Sequence[ShardPlan], out: Path,
                options_json: dict[str, Any], shard_size: int, workers: int, ray_address: str | None,
                progress: bool, force: bool, on_head_lost: Callable[[str], None] | None) -> JobResult:
    planned = {p.name for p in plans}
    records_dir(out)   # refuses a linked records/ before reading a record through it
    records = {p.name: r for p in plans if (r := kept_record(out, p, options_json)) is not None}
    todo = [p for p in plans if p.name not in records]
    result = JobResult({}, VerifyReport(str(out)), kept=len(records), built_videos=sum(len(p.entries) for p in todo))

    stop_ray = None
    try:
        if todo:
            connecting = time.perf_counter()
            stop_ray = connect(ray_address, workers, on_head_lost)
            check_workers()
            result.ray_seconds = time.perf_counter() - connecting
        result.removed = clean(out, planned, force)
        if todo:
            # Until this run's manifest.json lands, the folder is not a finished output.
            (out / MANIFEST_NAME).unlink(missing_ok=True)
            _run_tasks(todo, out, options_json, records, result,
                       initial=sum(len(p.entries) for p in plans if p.name in records),
                       total=len(entries), progress=progress)
    finally:
        if stop_ray is not None:
            stopping = time.perf_counter()
            stop_ray()
            result.ray_seconds += time.perf_counter() - stopping
    clean(out, planned, force=True, fault_markers=False)   # dead attempts' temporary files

    result.unwritten = sum(1 for r in records.values() if not r["ids"])
    result.manifest = output_manifest(manifest, entries, plans, records, options_json, shard_size)
    write_json_atomic(out / MANIFEST_NAME, result.manifest)
    result.report = verify(out, entries)
    return result


def _run_tasks(todo: list[ShardPlan], out: Path, options_json: dict, records: dict, result: JobResult,
               initial: int, total: int, progress: bool) -> None:
    """Runs the shard tasks, adding their records to `records`; raises EnvironmentProblem
    at the end, once every other task has finished, if any task failed."""
    import ray

    # SPREAD: on a cluster every node's decoders and disks work from the first task on.
    task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False, scheduling_strategy="SPREAD")(
        build_shard)
    pending = {task.remote(p, str(out.resolve()), options_json, _fault_for(p.name)): p for p in todo}
    failures = sum(len(r["errors"]) for r in records.values())
    failed_tasks = []
    with tqdm(total=total, initial=initial, unit="video", desc="shard", disable=None if progress else True,
              dynamic_ncols=True) as bar:
        bar.set_postfix(failed=failures)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            plan = pending.pop(done[0])
            try:
                record = ray.get(done[0])
            except ray.exceptions.RayError as e:
                # Not a bad video (those are in the record): the task itself failed for
                # good, e.g. it could not import or write, or its worker died MAX_RETRIES + 1 times.
                failed_tasks.append(f"{plan.name} ({len(plan.entries)} videos): {type(e).__name__}: {last_line(e)}")
            else:
                records[plan.name] = record
                failures += len(record["errors"])
                result.built += bool(record["ids"])
                result.timings.add(Timings(**{k: v for k, v in record["timings"].items() if k != "task"}))
                result.task_seconds += record["timings"]["task"]
            bar.update(len(plan.entries))
            bar.set_postfix(failed=failures)
    if failed_tasks:
        complete = sum(1 for r in records.values() if r["ids"] and not r["errors"])
        raise EnvironmentProblem(
            f"{len(failed_tasks)} of {len(todo)} shard tasks failed for reasons that are not a video's (the "
            f"{complete} shards whose videos were all stored are kept; fix the cause and run again to build "
            "the rest):\n" + "\n".join(f"  {line}" for line in failed_tasks))


# --- manifest.json --------------------------------------------------------------------

def output_manifest(source: Path, entries: Sequence[ManifestEntry], plans: Sequence[ShardPlan],
                    records: dict[str, dict], options: dict, shard_size: int) -> dict[str, Any]:
    """manifest.json: deterministic (no times, no paths but the source's), so two runs
    over the same inputs write the same bytes."""
    shards, errors = [], []
    by_id = {e.id: e for e in entries}
    for plan in plans:
        record = records[plan.name]
        errors += record["errors"]
        if record["ids"]:
            shards.append({"name": plan.tar_name, "split": plan.split, "samples": len(record["ids"]),
                           "bytes": record["bytes"], "sha256": record["sha256"], "frames": record["frames"],
                           "source_bytes": record["source_bytes"], "ids": record["ids"]})
    stored = [by_id[i] for s in shards for i in s["ids"]]
    failed_ids = {e["id"] for e in errors}
    splits = {}
    for split in SPLITS:
        in_split = [s for s in shards if s["split"] == split]
        splits[split] = {"samples": sum(s["samples"] for s in in_split),
                         "failed": sum(1 for e in entries if e.split == split and e.id in failed_ids),
                         "shards": len(in_split), "frames": sum(s["frames"] for s in in_split),
                         "bytes": sum(s["bytes"] for s in in_split)}
    classes: dict[int, dict[str, Any]] = defaultdict(lambda: {split: 0 for split in SPLITS})
    for e in stored:
        classes[e.label]["name"] = e.label_name
        classes[e.label][e.split] += 1
    with open(source, "rb") as f:
        source_sha = hashlib.sha256(f.read()).hexdigest()
    return {
        "schema_version": SCHEMA_VERSION,
        "source": {"manifest": str(source), "sha256": source_sha, "videos": len(entries)},
        "options": options | {"shard_size": shard_size},
        "shards": shards,
        "splits": splits,
        "classes": [{"label": label} | classes[label] for label in sorted(classes)],
        "errors": errors,
        "totals": {"videos": len(entries), "samples": len(stored), "failed": len(errors),
                   "shards": len(shards), "frames": sum(s["frames"] for s in shards),
                   "bytes": sum(s["bytes"] for s in shards),
                   "source_bytes": sum(s["source_bytes"] for s in shards)},
    }


def summary_table(result: JobResult) -> str:
    """The end-of-run table: videos, frames, shards, bytes per video, time, failures."""
    totals = result.manifest["totals"]
    samples = max(totals["samples"], 1)
    mib = 2**20
    rows = [
        ("videos", f"{totals['videos']} ({totals['samples']} stored, {totals['failed']} failed)"),
        ("frames", f"{totals['frames']}"),
        ("shards", f"{totals['shards']} ({result.built} built, {result.kept} kept from an earlier run)"
                   + (f"; {result.unwritten} planned not written, all their videos failed" if result.unwritten else "")),
        ("bytes", f"{totals['bytes'] / mib:.1f} MiB, {totals['bytes'] / samples / mib:.2f} MiB per video "
                  f"(source {totals['source_bytes'] / samples / mib:.2f} MiB per video)"),
        ("time", f"{result.seconds:.1f} s (Ray start, worker check and stop {result.ray_seconds:.1f} s), "
                 f"{result.built_videos / max(result.seconds - result.ray_seconds, 1e-9):.2f} videos/s built"),
        ("failures", f"{totals['failed']}" + (" (see manifest.json 'errors')" if totals["failed"] else "")),
        ("verified", "OK" if result.report.ok else f"{len(result.report.problems)} problem(s)"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
