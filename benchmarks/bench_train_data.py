"""Training-data benchmark (issues 5 and 12): prints tables, asserts nothing about time.

    python benchmarks/bench_train_data.py           # ~3 min on 2 cores (once the cache exists)
    python benchmarks/bench_train_data.py --quick   # ~1 min: synthetic set only, fewer batches

The data: the synthetic dataset at CoViAR's size (340x256, 10 classes x 6 videos of 48
frames, `cvpipe synth --coviar-size`) sharded with `cvpipe shard`, and (not with --quick)
four real clips (benchmarks/clips.py: 340x256, q1, GOP 12), one shard each. Both are made
once into the work directory (first run: about 1.5 min more) and reused.

A training sample is one video: 3 TSN segments x (I-frame, accumulated MV, accumulated
residual), multi-scale crop to 224, flip, CoViAR's normalisation. Loader workers only read
and decompress (trainer.data.batches); the crop, resize, flip and normalisation run on the
training device for the whole batch (trainer.data.transforms.apply_views), here the CPU.
Parts 1-3 run on one thread in this process, as one data-loader worker does (torch gives
each worker one thread).

1. Videos/s of one loader worker: the shard reader's worker loop (trainer.data.shard_reader
   VideoStream, training, batches of 8) against the same samples built the CoViAR way from
   the raw videos (per segment three `cvpipe.coviar.load` calls at CoViAR's (gop, pos), the
   shards' quantisation, the same collation; a cold index per video, as in a dataset larger
   than the loader's cache). The device step's own cost per batch is timed apart (on this
   CPU, one thread; on a GPU it is a few kernels), and both paths end in it: their
   tensors are compared.
2. Where each path's time goes: the reader's steps one by one (tar, header, decompression
   per modality and format, collation) and the raw path's.
3. Bytes per video: the shards against the source m4v.
4. One training step of the tiny config per modality on CPU: ModalityNet as tiny_synth
   builds it, batch 16 x 3 segments at 112, forward + backward + Adam, 2 threads, median
   step after warm-up (random inputs: the step's time does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# One thread means one: numpy's OpenBLAS otherwise starts a pool of threads that poll.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import clips  # noqa: E402 - sibling module of a script
import numpy as np  # noqa: E402 - the thread setting must precede numpy's import
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import cvpipe  # noqa: E402
from cvpipe import coviar  # noqa: E402
from cvpipe.datasets.manifest import ManifestEntry, read_manifest, write_manifest  # noqa: E402
from cvpipe.shards import codec  # noqa: E402
from cvpipe.shards import schema as ss  # noqa: E402
from trainer.config import load_config  # noqa: E402
from trainer.data.batches import StoredVideo, collate, to_device  # noqa: E402
from trainer.data.contract import INPUT_CHANNELS  # noqa: E402
from trainer.data.shard_reader import KIND, Sampling, VideoStream, pick, sample_header, shard_samples, video_frames  # noqa: E402
from trainer.data.transforms import CROP_SCALES, draw_crop, train_views  # noqa: E402
from trainer.models.networks import ModalityNet  # noqa: E402
from trainer.train.optim import build_optimizer  # noqa: E402

MODALITIES = ("iframe", "mv", "residual")
SEGMENTS, SIZE, BATCH, GOP = 3, 224, 8, 12
SEED = 0
SYNTH = {"classes": 10, "videos_per_class": 6}
REAL_CLIPS = ("vtest", "bikes", "tree", "Megamind")
TARGET_PER_WORKER, TARGET_VS_RAW = 250.0, 3.0
CHECKED_VIDEOS = 4  # videos whose shard and raw tensors are compared
DEVICE_BATCHES = 4  # batches the device step is timed on


class Clock:
    """Wall time, or this process's CPU time (user + system), which other work on a shared
    machine does not inflate."""

    def __init__(self, cpu: bool) -> None:
        self.name = "CPU" if cpu else "wall"
        self.now: Callable[[], float] = time.process_time if cpu else time.perf_counter


class Stopwatch:
    """Seconds summed per named step."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = self.clock.now()
        try:
            yield
        finally:
            self.seconds[name] += self.clock.now() - start


# ---- the data: generated once, then reused -----------------------------------------------


def _cli(*args: str) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a local Ray cluster needs no token here
    subprocess.run([sys.executable, "-m", "cvpipe.cli", *args], check=True, env=env)


def _complete(out: Path) -> bool:
    """Whether `out` holds a finished shard run of this schema with every video stored."""
    done = out / "manifest.json"
    if not done.is_file():
        return False
    manifest = json.loads(done.read_text())
    return (manifest.get("schema_version") == ss.SCHEMA_VERSION and not manifest["errors"]
            and manifest["totals"]["samples"] == manifest["source"]["videos"])


def _shards(manifest: Path, out: Path, shard_size: int | None = None) -> Path:
    """`cvpipe shard` of `manifest` into `out`, unless a complete one is there already."""
    if _complete(out):
        return out
    shutil.rmtree(out, ignore_errors=True)  # partial, failed videos, or another schema version
    print(f"(one-off) sharding {manifest} into {out} ...", flush=True)
    size = ["--shard-size", str(shard_size)] if shard_size else []
    _cli("shard", "--manifest", str(manifest), "--out", str(out), "--workers", "2", "--no-progress", *size)
    if not _complete(out):
        raise RuntimeError(f"sharding {manifest} left failed videos: see 'errors' in {out / 'manifest.json'}")
    return out


def synth_data(workdir: Path) -> tuple[Path, Path]:
    """(all.jsonl, shard folder) of the synthetic set at CoViAR's size."""
    root = workdir / f"train-data-synth-340x256-c{SYNTH['classes']}-v{SYNTH['videos_per_class']}"
    manifest = root / "all.jsonl"
    if not manifest.is_file():
        print(f"(one-off) generating the synthetic set into {root} ...", flush=True)
        _cli("synth", "--out", str(root), "--coviar-size", "--classes", str(SYNTH["classes"]),
             "--videos-per-class", str(SYNTH["videos_per_class"]))
    return manifest, _shards(manifest, root / "shards")


def real_data(workdir: Path) -> tuple[Path, Path] | None:
    """(manifest, shard folder) of the real clips whose footage is installed; None if none is."""
    root = workdir / "train-data-real"
    entries = clips.clip_entries(REAL_CLIPS, workdir)
    if not entries:
        return None
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "all.jsonl"
    if not manifest.is_file() or read_manifest(manifest) != entries:
        write_manifest(entries, manifest)
        shutil.rmtree(root / "shards", ignore_errors=True)
    # One video per shard: the resampled reader then draws videos uniformly.
    return manifest, _shards(manifest, root / "shards", shard_size=1)


def train_entries(manifest: Path) -> list[ManifestEntry]:
    entries = [e for e in read_manifest(manifest) if e.split == "train"]
    for entry in entries:
        # CoViAR's (gop, pos) = divmod(frame, 12) holds only for regular GOPs.
        starts = cvpipe.open(entry.path).gop_starts
        if any(start != GOP * g for g, start in enumerate(starts)):
            raise ValueError(f"{entry.path}: GOPs are not all {GOP} frames; CoViAR's divmod mapping would be wrong")
    return entries


def training_sampling(size: int = SIZE) -> Sampling:
    """What the shard reader samples in training with every modality (PKD, fused)."""
    return Sampling(modalities=MODALITIES, segments=SEGMENTS, size=size, train=True, scales=CROP_SCALES["iframe"])


def train_shards(root: Path) -> list[Path]:
    manifest = json.loads((root / "manifest.json").read_text())
    return [root / s["name"] for s in manifest["shards"] if s["split"] == "train"]


# ---- 1. one loader worker, and the device step -----------------------------------------------


def worker_rate(root: Path, sampling: Sampling, batches: int, shuffle_buffer: int, clock: Clock) -> tuple[float, list]:
    """(videos/s, a few stored batches for the device step) of the reader's worker loop in
    this process, timed after a first batch (opening, filling the shuffle buffer). The
    timed batches are dropped as they come, as a loader worker hands its batches on:
    holding them all would time the kernel's page faults for fresh memory instead."""
    stream = iter(VideoStream(train_shards(root), sampling, BATCH, SEED, 0, epoch=0, shuffle_buffer=shuffle_buffer))
    next(stream)
    start = clock.now()
    videos = sum(len(next(stream)["id"]) for _ in range(batches))
    rate = videos / (clock.now() - start)
    return rate, [next(stream) for _ in range(DEVICE_BATCHES)]


def device_seconds(stored: list, size: int, clock: Clock) -> float:
    """Mean seconds of the device step (trainer.data.batches.to_device) per batch, here."""
    start = clock.now()
    for batch in stored:
        to_device(batch, size, torch.device("cpu"))
    return (clock.now() - start) / len(stored)


def planes(array: np.ndarray) -> np.ndarray:
    """(H, W, C) as the (C, H, W) planes a batch takes: a view, as the reader hands over
    the older (H, W, C) formats; collation makes the one copy."""
    return array.transpose(2, 0, 1)


def raw_video(path: str, rng: np.random.Generator, sampling: Sampling, watch: Stopwatch) -> StoredVideo:
    """One video's stored-form sample through cvpipe.coviar.load, CoViAR's dataset code
    path: the same draws from `rng` as the shard reader makes (segment frames, then the crop)."""
    with watch("index (get_num_frames)"):
        num_frames = coviar.get_num_frames(path)
    frames = [int(rng.integers(*ss.segment_range(num_frames, sampling.segments, s, ss.MV)))
              for s in range(sampling.segments)]
    arrays: dict[str, list[tuple[np.ndarray, codec.Undo]]] = {m: [] for m in MODALITIES}
    none = codec.Undo.NONE
    for frame in frames:
        gop, pos = divmod(frame, GOP)
        if pos == 0:  # an I-frame has no motion: CoViAR takes the previous GOP's last frame
            gop, pos = gop - 1, GOP - 1
        with watch("load I-frame"):
            arrays["iframe"].append((planes(coviar.load(path, gop, 0, coviar.IFRAME, True)), none))
        with watch("load MV"):
            mv = coviar.load(path, gop, pos, coviar.MV, True)
        with watch("load residual (same decode)"):
            residual = coviar.load(path, gop, pos, coviar.RESIDUAL, True)
        with watch("quantise"):
            arrays["mv"].append((planes(codec.quantise_mv(mv)), none))
            arrays["residual"].append((planes(codec.quantise_residual(residual)), none))
    height, width = arrays["iframe"][0][0].shape[1:]
    crop = draw_crop(width, height, sampling.size, sampling.scales, rng, 0.5 if sampling.flip else 0.0)
    return StoredVideo(arrays, train_views(crop, sampling.size), 0, path)


def raw_rate(entries: list[ManifestEntry], passes: int, sampling: Sampling, clock: Clock) -> tuple[float, Stopwatch]:
    """(videos/s, per-step times) building every entry's stored sample `passes` times, in batches."""
    watch = Stopwatch(clock)
    rng = np.random.default_rng(SEED)
    pending: list[StoredVideo] = []
    start = clock.now()
    for _ in range(passes):
        for entry in entries:
            coviar.clear_cache()  # a cold index per video, as when the dataset outgrows the loader's cache
            pending.append(raw_video(entry.path, rng, sampling, watch))
            if len(pending) == BATCH:
                with watch("collate"):
                    collate(pending, MODALITIES, SEGMENTS, 1, [])
                pending = []
    return passes * len(entries) / (clock.now() - start), watch


# ---- 2. the shard reader's steps one by one ------------------------------------------------------


def shard_breakdown(root: Path, sampling: Sampling, passes: int, clock: Clock) -> tuple[int, Stopwatch, dict, int]:
    """Every training video `passes` times through the reader's steps, each timed; each
    video its own rng, seeded by its position in the run. Returns (videos, times, the
    first videos' stored samples with their seeds, bytes of the sampled members)."""
    watch = Stopwatch(clock)
    kept: dict[str, tuple[StoredVideo, list[int]]] = {}
    pending: list[StoredVideo] = []
    videos, used_bytes = 0, 0
    for shard in train_shards(root) * passes:
        samples = shard_samples(shard)
        while True:
            with watch("tar: the headers (schema 3 on: the sample header only)"):
                item = next(samples, None)
            if item is None:
                break
            key, sample = item
            seed = [SEED, videos]
            rng = np.random.default_rng(seed)
            with watch("pick (reads the sampled members)"):
                picked = pick(sample_header(sample), sample, sampling, rng,
                              f"{shard.name}: {key}")
            formats = {m: picked.header.encodings[KIND[m]].format for m in MODALITIES}
            with watch("decompress (" + ", ".join(f"{m} {f}" for m, f in formats.items()) + ")"):
                video = video_frames(picked, sampling, rng)
            used_bytes += sum(map(len, picked.members.values()))
            if len(kept) < CHECKED_VIDEOS:
                kept[key] = (video, seed)
            videos += 1
            pending.append(video)
            if len(pending) == BATCH:
                with watch("collate (one copy into the batch)"):
                    collate(pending, MODALITIES, SEGMENTS, 1, [])
                pending = []
    return videos, watch, kept, used_bytes


def max_difference(kept: dict, entries: list[ManifestEntry], sampling: Sampling) -> float:
    """Largest |shard - raw| over the kept videos' model inputs, both through the device step."""
    paths = {e.id: e.path for e in entries}
    worst = 0.0
    for key, (video, seed) in kept.items():
        raw = raw_video(paths[key], np.random.default_rng(seed), sampling, Stopwatch(Clock(False)))
        a = to_device(collate([video], MODALITIES, SEGMENTS, 1, []), sampling.size, torch.device("cpu"))
        b = to_device(collate([raw], MODALITIES, SEGMENTS, 1, []), sampling.size, torch.device("cpu"))
        worst = max(worst, *((a["inputs"][m] - b["inputs"][m]).abs().max().item() for m in MODALITIES))
    return worst


# ---- 4. one training step ---------------------------------------------------------------


def step_times(modality: str, num_classes: int, warmup: int, steps: int) -> list[float]:
    """Seconds of each timed forward + backward + Adam step of tiny_synth's network."""
    cfg = load_config("tiny_synth", [f"model.modality={modality}"])
    torch.manual_seed(SEED)
    model = ModalityNet(modality, cfg.model.arch, num_classes, cfg.model.width).train()
    optimizer = build_optimizer(model, cfg.optim)
    size, batch = cfg.data.input_size, cfg.optim.batch_size
    x = torch.randn(batch, cfg.data.num_segments, INPUT_CHANNELS[modality], size, size)
    y = torch.randint(num_classes, (batch,))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


# ---- report ----------------------------------------------------------------------------


def share_rows(watch: Stopwatch, videos: int) -> list[list[str]]:
    total = sum(watch.seconds.values())
    rows = [[name, f"{s / videos * 1e3:.2f}", f"{s / total:.0%}"] for name, s in watch.seconds.items()]
    return rows + [["sum", f"{total / videos * 1e3:.2f}", "100%"]]


def measure_set(name: str, manifest: Path, root: Path, batches: int, passes: int, clock: Clock,
                shuffle_buffer: int) -> dict:
    sampling = training_sampling()
    entries = train_entries(manifest)
    worker, stored = worker_rate(root, sampling, batches, shuffle_buffer, clock)
    raw, raw_watch = raw_rate(entries, passes, sampling, clock)
    videos, watch, kept, used = shard_breakdown(root, sampling, passes, clock)
    totals = json.loads((root / "manifest.json").read_text())["totals"]
    return {"name": name, "worker": worker, "raw": raw, "raw_watch": raw_watch, "device": device_seconds(stored, SIZE, clock),
            "videos": videos, "watch": watch, "used": used, "entries": len(entries), "passes": passes,
            "batches": batches, "difference": max_difference(kept, entries, sampling), "totals": totals,
            "buffer": shuffle_buffer, "frames": statistics.mean(coviar.get_num_frames(e.path) for e in entries)}


def report(sets: list[dict], clock: Clock) -> None:
    rows = []
    for s in sets:
        rows.append([s["name"], f"{s['frames']:.0f}", f"{s['worker']:.1f}", f"{s['raw']:.1f}",
                     f"{s['worker'] / s['raw']:.2f}x", f"{s['worker'] / TARGET_PER_WORKER:.2f}x",
                     f"{s['device'] * 1e3:.0f}", f"{s['device'] / BATCH * 1e3:.1f}"])
    clips.table(f"1. One loader worker, videos/s (3 segments x I+MV+R, {clock.name} time); the device step "
                f"(crop to {SIZE}, flip, normalise) timed apart on this CPU, one thread",
                ["set", "frames/video", "shards", "raw (coviar.load)", "shards/raw",
                 f"vs {TARGET_PER_WORKER:.0f}/s target", f"device ms/batch of {BATCH}", "device ms/video"], rows)
    print(f"targets: at least {TARGET_PER_WORKER:.0f} videos/s per worker from shards and {TARGET_VS_RAW:.0f}x the raw path")
    for s in sets:
        print(f"{s['name']}: shards timed over {s['batches']} batches of {BATCH} after the first (shuffle buffer "
              f"{s['buffer']}); raw over {s['passes']} pass(es) of {s['entries']} training videos; model inputs of "
              f"{CHECKED_VIDEOS} videos from shards and from the raw videos differ by at most {s['difference']:.2g}")

    for s in sets:
        clips.table(f"2. {s['name']}: where a shard worker's time goes, ms per video ({s['videos']} videos)",
                    ["step", "ms/video", "share"], share_rows(s["watch"], s["videos"]))
        print(f"sampled members read per video: {s['used'] / s['videos'] / 2**10:.0f} KiB")
        clips.table(f"2b. {s['name']}: the raw path's time, ms per video",
                    ["step", "ms/video", "share"], share_rows(s["raw_watch"], s["passes"] * s["entries"]))
    rows = [[s["name"], str(s["totals"]["samples"]), f"{s['totals']['source_bytes'] / s['totals']['samples'] / 2**20:.2f}",
             f"{s['totals']['bytes'] / s['totals']['samples'] / 2**20:.2f}",
             f"{s['totals']['bytes'] / s['totals']['source_bytes']:.1f}x"] for s in sets]
    clips.table("3. Bytes per video (MiB), default shards against the source m4v",
                ["set", "videos", "source", "shards", "ratio"], rows)


def report_steps(loader: float, loader_size: int, warmup: int, steps: int) -> None:
    """Part 4, and how many loader workers the fastest step needs."""
    torch.set_num_threads(2)
    batch = load_config("tiny_synth").optim.batch_size
    rows = []
    for modality in MODALITIES:
        times = step_times(modality, SYNTH["classes"], warmup, steps)
        median, best = statistics.median(times), min(times)
        rows.append([modality, f"{median * 1e3:.0f}", f"{batch / median:.1f}", f"{batch * SEGMENTS / median:.0f}",
                     f"{best * 1e3:.0f}", f"{batch / best:.1f}"])
    clips.table(f"4. One tiny_synth training step on CPU (ResNet-18 width 16, batch {batch} x {SEGMENTS} segments, 112x112, "
          f"forward + backward + Adam, 2 threads, {steps} steps after {warmup} warm-up, wall time)",
          ["modality", "median ms", "videos/s", "images/s", "best ms", "best videos/s"], rows)
    print("Two threads on a shared 2-core machine stall whenever either is descheduled: the best step is the "
          "better estimate of an idle machine's speed.")
    fastest = max(float(r[5]) for r in rows)
    print(f"one loader worker at {loader_size} px gives {loader:.1f} videos/s (all three modalities); the fastest "
          f"step ({fastest:.1f} videos/s at best) needs {fastest / loader:.2f} worker(s) to keep up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="synthetic set only, fewer batches and steps (~1 min)")
    parser.add_argument("--workdir", type=Path, default=clips.DEFAULT_WORKDIR,
                        help=f"cache of generated videos and shards (default {clips.DEFAULT_WORKDIR})")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="parts 1-2 in wall time (default) or CPU time, which other work on a busy machine "
                             "does not inflate; part 4 is always wall time (2 threads)")
    args = parser.parse_args()
    clock = Clock(args.clock == "cpu")
    load_before = os.getloadavg()[0]

    synth_manifest, synth_root = synth_data(args.workdir)
    real = None if args.quick else real_data(args.workdir)
    torch.set_num_threads(1)  # a data-loader worker's setting
    batches, passes = (4, 1) if args.quick else (16, 3)
    sets = [measure_set("synthetic", synth_manifest, synth_root, batches, passes, clock, shuffle_buffer=64)]
    if real:
        # Long videos: a large shuffle buffer over four of them would only delay the first batch.
        sets.append(measure_set("real clips", *real, 6, 3, clock, shuffle_buffer=0))
    report(sets, clock)
    report_steps(sets[0]["worker"], SIZE, warmup=1 if args.quick else 2, steps=4 if args.quick else 8)
    print(f"\n1-minute load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after ({os.cpu_count()} CPUs; "
          f"the machine is shared with other work, so wall times above ~1 are inflated)")


if __name__ == "__main__":
    main()
