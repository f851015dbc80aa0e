"""Training-data benchmark (issue 5, part 7): prints tables, asserts nothing about time.

    python benchmarks/bench_train_data.py           # ~3 min on 2 cores (once the cache exists)
    python benchmarks/bench_train_data.py --quick   # ~1 min: synthetic set only, fewer batches

The data: the synthetic dataset at CoViAR's size (340x256, 10 classes x 6 videos of 48
frames, `cvpipe synth --coviar-size`) sharded with `cvpipe shard`, and (not with --quick)
four real clips (benchmarks/clips.py: 340x256, q1, GOP 12), one shard each. Both are made
once into the work directory (first run: about 1.5 min more) and reused.

A training sample is one video: 3 TSN segments x (I-frame, accumulated MV, accumulated
residual), multi-scale crop to 224, flip, CoViAR's normalisation. Parts 1-3 run on one
thread in this process, as one data-loader worker does (torch gives each worker one thread).

1. Videos/s of the real shard reader: `trainer.data.open_shards` with the tiny_synth
   config at input 224, flips on, `data.workers=0`, batches of 8 from `train_batches(0)`,
   timed after the first batch (which fills the shuffle buffer).
2. The same samples built the CoViAR way from the raw videos: per segment, three
   `cvpipe.coviar.load` calls (I-frame, MV, residual at CoViAR's (gop, pos)), the shards'
   quantisation, the same crop/flip/normalise functions and collation, so only the source
   differs. Each video starts with a cold index (as in a dataset larger than the loader's
   cache). Ratio shards / raw against the 5x target, and against CoViAR's own published
   loader (35-50 ms per sample, REFERENCE.md s.2, without augmentation: our measured
   augmentation time is added to it).
3. Where each path's time goes, timing the functions of trainer/data/shard_reader.py and
   trainer/data/transforms.py one by one on the same videos with the same random draws (which
   also checks that both paths build identical tensors), and inside train_view.
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
from trainer.config import Config, load_config  # noqa: E402
from trainer.data.contract import INPUT_CHANNELS
from trainer.data.shard_reader import KIND, Sampling, open_shards, pick, shard_samples  # noqa: E402
from trainer.data.transforms import CROP_SCALES, draw_crop, flip, normalise, resize, to_tensor, train_view  # noqa: E402
from trainer.models.networks import ModalityNet  # noqa: E402
from trainer.train.optim import build_optimizer  # noqa: E402

MODALITIES = ("iframe", "mv", "residual")
SEGMENTS, SIZE, BATCH, GOP = 3, 224, 8, 12
SEED = 0
SYNTH = {"classes": 10, "videos_per_class": 6}
REAL_CLIPS = ("vtest", "bikes", "tree", "Megamind")
COVIAR_TRAIN_MS = (35.0, 50.0)  # CoViAR's own loader, one 3-segment I+MV+R sample, no augmentation
TARGET = 5.0
CHECKED_VIDEOS = 4  # videos whose shard and raw tensors are compared in part 3


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


def reader_config(root: Path, size: int = SIZE, flips: bool = True, shuffle_buffer: int | None = None) -> Config:
    overrides = [f"data.root={root}", "model.modality=iframe", f"data.input_size={size}", "data.workers=0",
                 f"optim.batch_size={BATCH}", f"data.flip={str(flips).lower()}"]
    if shuffle_buffer is not None:
        overrides.append(f"data.shuffle_buffer={shuffle_buffer}")
    return load_config("tiny_synth", overrides)


def training_sampling(cfg: Config) -> Sampling:
    """What open_shards(cfg, modalities=MODALITIES) samples in training."""
    data = cfg.data
    return Sampling(modalities=MODALITIES, segments=data.num_segments, size=data.input_size, train=True,
                    scales=tuple(data.crop_scales) or CROP_SCALES[cfg.model.modality], flip=data.flip)


# ---- 1. the shard reader -----------------------------------------------------------------


def shard_rate(cfg: Config, batches: int, clock: Clock) -> tuple[float, float]:
    """(videos/s, seconds of the first batch) of train_batches(0) in this process."""
    data = open_shards(cfg, rank=0, world_size=1, modalities=MODALITIES)
    stream = iter(data.train_batches(0))
    start = clock.now()
    first = next(stream)
    first_s = clock.now() - start
    expected = (BATCH, SEGMENTS, INPUT_CHANNELS["mv"], cfg.data.input_size, cfg.data.input_size)
    if tuple(first["inputs"]["mv"].shape) != expected:
        raise RuntimeError(f"the reader's MV batch is {tuple(first['inputs']['mv'].shape)}, expected {expected}")
    videos = 0
    start = clock.now()
    for _ in range(batches):
        videos += len(next(stream)["id"])
    return videos / (clock.now() - start), first_s


# ---- 2. the CoViAR way, from the raw videos ---------------------------------------------------


def raw_sample(path: str, rng: np.random.Generator, sampling: Sampling, watch: Stopwatch) -> dict[str, torch.Tensor]:
    """One video's training inputs through cvpipe.coviar.load, CoViAR's dataset code path:
    the same draws from `rng` as the shard reader makes (segment frames, then the crop)."""
    with watch("index (get_num_frames)"):
        num_frames = coviar.get_num_frames(path)
    frames = [int(rng.integers(*ss.segment_range(num_frames, sampling.segments, s, ss.MV)))
              for s in range(sampling.segments)]
    arrays: dict[str, list[np.ndarray]] = {m: [] for m in MODALITIES}
    for frame in frames:
        gop, pos = divmod(frame, GOP)
        if pos == 0:  # an I-frame has no motion: CoViAR takes the previous GOP's last frame
            gop, pos = gop - 1, GOP - 1
        with watch("load I-frame"):
            arrays["iframe"].append(coviar.load(path, gop, 0, coviar.IFRAME, True))
        with watch("load MV"):
            mv = coviar.load(path, gop, pos, coviar.MV, True)
        with watch("load residual (same decode)"):
            residual = coviar.load(path, gop, pos, coviar.RESIDUAL, True)
        with watch("quantise"):
            arrays["mv"].append(codec.quantise_mv(mv))
            arrays["residual"].append(codec.quantise_residual(residual))
    height, width = arrays["iframe"][0].shape[:2]
    crop = draw_crop(width, height, sampling.size, sampling.scales, rng, 0.5 if sampling.flip else 0.0)
    with watch("augment + normalise"):
        return {m: torch.stack([train_view(a, m, sampling.size, crop) for a in arrays[m]]) for m in MODALITIES}


def collate(videos: list[dict[str, torch.Tensor]], watch: Stopwatch) -> None:
    with watch("collate"):
        for modality in MODALITIES:
            torch.stack([v[modality] for v in videos])


def raw_rate(entries: list[ManifestEntry], passes: int, sampling: Sampling, clock: Clock) -> tuple[float, Stopwatch]:
    """(videos/s, per-step times) building every entry's sample `passes` times."""
    watch = Stopwatch(clock)
    rng = np.random.default_rng(SEED)
    pending: list[dict[str, torch.Tensor]] = []
    start = clock.now()
    for _ in range(passes):
        for entry in entries:
            # Cold index per video, as when the dataset outgrows the loader's 32-video cache.
            coviar.clear_cache()
            pending.append(raw_sample(entry.path, rng, sampling, watch))
            if len(pending) == BATCH:
                collate(pending, watch)
                pending = []
    if pending:
        collate(pending, watch)
    return passes * len(entries) / (clock.now() - start), watch


# ---- 3. the shard reader's functions one by one ------------------------------------------------


def shard_breakdown(root: Path, sampling: Sampling, passes: int,
                    clock: Clock) -> tuple[int, Stopwatch, dict[str, dict], dict]:
    """Every training video `passes` times through trainer.data.shard_reader's steps, each timed; each
    video its own rng, seeded by its position in the run. Returns (videos, times, the
    first videos' tensors, byte counts)."""
    manifest = json.loads((root / "manifest.json").read_text())
    shards = [root / s["name"] for s in manifest["shards"] if s["split"] == "train"]
    watch, parts = Stopwatch(clock), Stopwatch(clock)
    kept: dict[str, dict] = {}
    pending: list[dict[str, torch.Tensor]] = []
    videos, read_bytes, used_bytes = 0, 0, 0
    for shard in shards * passes:
        samples = shard_samples(shard)
        while True:
            with watch("tar read (whole sample)"):
                item = next(samples, None)
            if item is None:
                break
            key, sample = item
            rng = np.random.default_rng([SEED, videos])
            with watch("header + pick"):
                picked = pick(ss.Header.from_json(sample[ss.HEADER_FIELD]), sample, sampling, rng, f"{shard.name}: {key}")
            header = picked.header
            crop = draw_crop(header.width, header.height, sampling.size, sampling.scales, rng,
                             0.5 if sampling.flip else 0.0)
            inputs = {}
            for modality in MODALITIES:
                views = []
                for segment in range(sampling.segments):
                    data = picked.members[modality, segment]
                    with watch(f"decode {modality} ({header.encodings[KIND[modality]].format})"):
                        array = header.decode(picked.names[modality, segment], data)
                    with watch("augment + normalise"):
                        views.append(train_view(array, modality, sampling.size, crop)[None])
                    transform_parts(array, modality, sampling.size, crop, parts)
                with watch("augment + normalise"):
                    inputs[modality] = torch.cat(views)
            read_bytes += sum(map(len, sample.values()))
            used_bytes += sum(map(len, picked.members.values()))
            if len(kept) < CHECKED_VIDEOS:
                kept[key] = {"inputs": inputs, "seed": [SEED, videos]}
            videos += 1
            pending.append(inputs)
            if len(pending) == BATCH:
                collate(pending, watch)
                pending = []
    if pending:
        collate(pending, watch)
    return videos, watch, kept, {"read": read_bytes, "used": used_bytes, "parts": parts}


def transform_parts(array: np.ndarray, modality: str, size: int, crop: tuple, parts: Stopwatch) -> None:
    """train_view's steps timed one by one (its own functions, in its order)."""
    x0, y0, w, h, flipped = crop
    with parts("to_tensor (whole frame to float)"):
        x = to_tensor(array)
    with parts("crop + resize (bilinear)"):
        x = resize(x[:, y0:y0 + h, x0:x0 + w], size, size)
    with parts("flip"):
        if flipped:
            x = flip(x, modality)
    with parts("normalise"):
        normalise(x, modality)


def max_difference(kept: dict[str, dict], entries: list[ManifestEntry], sampling: Sampling) -> float:
    """Largest |shard - raw| over the kept videos' tensors, rebuilt from the raw videos."""
    paths = {e.id: e.path for e in entries}
    worst = 0.0
    for key, shard in kept.items():
        raw = raw_sample(paths[key], np.random.default_rng(shard["seed"]), sampling, Stopwatch(Clock(False)))
        worst = max(worst, *((raw[m] - shard["inputs"][m]).abs().max().item() for m in MODALITIES))
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
                shuffle_buffer: int | None) -> dict:
    cfg = reader_config(root, shuffle_buffer=shuffle_buffer)
    sampling = training_sampling(cfg)
    entries = train_entries(manifest)
    shards, first_s = shard_rate(cfg, batches, clock)
    raw, raw_watch = raw_rate(entries, passes, sampling, clock)
    videos, watch, kept, sizes = shard_breakdown(root, sampling, passes, clock)
    return {"name": name, "buffer": cfg.data.shuffle_buffer, "shards": shards, "first_s": first_s, "raw": raw, "raw_watch": raw_watch,
            "videos": videos, "watch": watch, "sizes": sizes, "entries": len(entries), "passes": passes,
            "batches": batches, "difference": max_difference(kept, entries, sampling),
            "frames": statistics.mean(coviar.get_num_frames(e.path) for e in entries)}


def report(sets: list[dict], tiny: list[list[str]], clock: Clock) -> None:
    rows = []
    for s in sets:
        augment = s["raw_watch"].seconds["augment + normalise"] / (s["passes"] * s["entries"])
        coviar_with_augment = COVIAR_TRAIN_MS[0] / 1e3 + augment
        rows.append([s["name"], f"{s['frames']:.0f}", f"{s['shards']:.1f}", f"{s['raw']:.1f}",
                     f"{s['shards'] / s['raw']:.2f}x", f"{1 / coviar_with_augment:.1f}",
                     f"{s['shards'] * coviar_with_augment:.2f}x", f"{TARGET:.0f}x"])
    clips.table(f"1-2. Training samples (3 segments x I+MV+R, crop to {SIZE}, flip, normalise), videos/s for one "
          f"loader worker ({clock.name} time)",
          ["set", "frames/video", "shards", "raw (coviar.load)", "shards/raw", "CoViAR loader*", "shards/CoViAR*",
           "target"], rows)
    print(f"* CoViAR's own loader: {COVIAR_TRAIN_MS[0]:.0f}-{COVIAR_TRAIN_MS[1]:.0f} ms per sample without augmentation "
          f"(REFERENCE.md s.2), taken at {COVIAR_TRAIN_MS[0]:.0f} ms plus our measured augmentation time.")
    for s in sets:
        print(f"{s['name']}: shards timed over {s['batches']} batches of {BATCH} after a first batch of "
              f"{s['first_s']:.1f} s (opening; filling the shuffle buffer of {s['buffer']} videos); raw over "
              f"{s['passes']} pass(es) of {s['entries']} training videos; shard and raw tensors of "
              f"{CHECKED_VIDEOS} videos differ by at most {s['difference']:.2g}")
    if tiny:
        clips.table("1b. The shard reader at the tiny config's size, videos/s", ["set", "shards"], tiny)

    for s in sets:
        per_video = 1e3 / s["shards"]
        rows = share_rows(s["watch"], s["videos"])
        rows.append([f"part 1's time per video (reader overhead {per_video - float(rows[-1][1]):+.2f})",
                     f"{per_video:.2f}", ""])
        clips.table(f"3. {s['name']}: where the shard reader's time goes, ms per video ({s['videos']} videos)",
              ["step", "ms/video", "share"], rows)
        sizes = s["sizes"]
        print(f"tar bytes read per video {sizes['read'] / s['videos'] / 2**20:.2f} MiB, of which the sampled members "
              f"{sizes['used'] / s['videos'] / 2**20:.2f} MiB ({sizes['used'] / sizes['read']:.1%})")
        clips.table(f"3b. {s['name']}: inside train_view (9 calls per video), ms per video",
              ["step", "ms/video", "share"], share_rows(sizes["parts"], s["videos"]))
        clips.table(f"3c. {s['name']}: the raw path's time, ms per video",
              ["step", "ms/video", "share"], share_rows(s["raw_watch"], s["passes"] * s["entries"]))


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
                        help="parts 1-3 in wall time (default) or CPU time, which other work on a busy machine "
                             "does not inflate; part 4 is always wall time (2 threads)")
    args = parser.parse_args()
    clock = Clock(args.clock == "cpu")
    load_before = os.getloadavg()[0]

    synth_manifest, synth_root = synth_data(args.workdir)
    real = None if args.quick else real_data(args.workdir)
    torch.set_num_threads(1)  # a data-loader worker's setting
    batches, passes = (4, 1) if args.quick else (16, 3)
    sets = [measure_set("synthetic", synth_manifest, synth_root, batches, passes, clock, None)]
    tiny = []  # the reader as the tiny config trains: input 112, no flips
    if not args.quick:
        rate = shard_rate(reader_config(synth_root, size=112, flips=False), 8, clock)[0]
        tiny.append(["synthetic, tiny_synth's own input 112, no flip", f"{rate:.1f}"])
    if real:
        # Long videos make every tar read large; a 256-video shuffle buffer over four of them
        # would take minutes to fill and changes nothing per video afterwards.
        sets.append(measure_set("real clips", *real, 6, 3, clock, shuffle_buffer=0))
    report(sets, tiny, clock)

    loader = (float(tiny[0][1]), 112) if tiny else (sets[0]["shards"], SIZE)
    report_steps(*loader, warmup=1 if args.quick else 2, steps=4 if args.quick else 8)
    print(f"\n1-minute load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after ({os.cpu_count()} CPUs; "
          f"the machine is shared with other work, so wall times above ~1 are inflated)")


if __name__ == "__main__":
    main()
