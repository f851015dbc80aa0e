"""The embedded synthetic action dataset: `cvpipe synth --out DIR`.

No labelled action dataset can be downloaded here, so the project draws its own, from a
seed, with numpy (`cvpipe.datasets.synth_render`), encodes it through `cvpipe.datasets.encode`
(MPEG-4 Part 2, GOP 12, no B-frames, CoViAR's quality 1) and writes train/val/test manifests.

What the data must show, decided before any network was trained on it (the README says
the same), so that the paper's claims are tested in the regime it describes:
- every class can be recognised from each modality on its own: class k has its own
  appearance (an ordered pair of surfaces on the actor's two discs), its own motion and
  its own pattern of spots that flash within each GOP (seen by the residual only);
- the modalities fail independently: each video shows each cue with its own probability
  (`iframe_cue`, `residual_cue`, `mv_cue`, drawn independently per video) and otherwise
  a neutral version shared by all classes (one surface on both discs, no motion of its
  own, no spots), so no pair of classes is confused by design in any modality;
- the cues need the whole actor, so deep layers resolve what early ones cannot: the same
  two surfaces in the other order are another class, every spot pattern has three spots,
  and motions differ in direction, zoom or turn relative to a panning background
  (each told from one segment's accumulated motion, what a TSN network sees);
- the cue probabilities follow CoViAR's accuracies on UCF-101 (I-frame 88%, residual
  80%, MV 64%), the order real data shows; what the networks reach is checked on validation.

Every video also has what real footage has and a class does not explain: a textured
background seen by a panning, shaking camera, one or two grey distractor squares drifting
on their own (sometimes in front of the actor), a foreground pole in half the videos,
random start positions, speeds, sizes, tilts and colour shades, a slight flicker, and
sensor noise. `cvpipe synth --list-classes` prints the class table.

Output: OUT/videos/synth_cKK_vNNNN.m4v, OUT/{train,val,test,all}.jsonl (cvpipe.datasets.manifest
format; paths are absolute, so the manifests work from any working directory), and
OUT/synth.json (the configuration, the class table and which cues each video shows).
Splits are stratified: each class's videos are shuffled with the seed and cut by the
fractions. Video (k, n) depends only on (seed, k, n, frames, size, gop, cue
probabilities), not on how many classes or videos were asked for; raising a cue
probability only adds that cue to more videos.

Determinism: the same seed and configuration give byte-identical videos and synth.json,
and manifests identical up to the output folder in their paths, with the same FFmpeg
build on the same kind of CPU (the encoder runs single-threaded with bitexact flags).
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cvpipe.datasets.encode import EncodeError, EncodeOptions, available_cpus, encode_frames, find_ffmpeg
from cvpipe.datasets.manifest import ManifestEntry, write_manifest
from cvpipe.datasets.synth_render import MOTIONS, SPOT_PATTERNS, STILL, SURFACES, Cues, Scene

# Class k's upper and lower surfaces: every pair also appears in the other order, as another class.
APPEARANCES = ((0, 1), (1, 0), (2, 3), (3, 2), (4, 5), (5, 4), (6, 7), (7, 6), (0, 2), (2, 0), (1, 3), (3, 1))
MAX_CLASSES = min(len(APPEARANCES), len(MOTIONS), len(SPOT_PATTERNS))
FPS = 25
COVIAR_SIZE = (340, 256)
MODALITY_CUES = ("iframe", "mv", "residual")


@dataclass(frozen=True)
class SynthClass:
    label: int
    top: str         # surface of the upper disc
    bottom: str      # surface of the lower disc
    motion: str
    spots: str       # the spot pattern's name

    @property
    def name(self) -> str:
        return f"{self.top}-{self.bottom}-{self.motion}"


def _spot_pattern(label: int) -> int:
    # A stride coprime with the pattern count, so classes next to each other in the
    # appearance and motion lists do not also get neighbouring patterns.
    return (5 * label) % len(SPOT_PATTERNS)


def synth_class(label: int) -> SynthClass:
    if not 0 <= label < MAX_CLASSES:
        raise ValueError(f"class {label} is out of range: the synthetic dataset has at most {MAX_CLASSES} classes")
    top, bottom = APPEARANCES[label]
    return SynthClass(label, SURFACES[top].name, SURFACES[bottom].name, MOTIONS[label].name,
                      SPOT_PATTERNS[_spot_pattern(label)][0])


@dataclass(frozen=True)
class SynthConfig:
    classes: int = 10
    videos_per_class: int = 40
    frames: int = 48
    width: int = 160
    height: int = 128
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    gop: int = 12
    quality: int = 1
    # Probability that a video shows its class's cue for each modality (else a neutral one).
    iframe_cue: float = 0.88
    residual_cue: float = 0.80
    mv_cue: float = 0.64

    def __post_init__(self) -> None:
        if not 2 <= self.classes <= MAX_CLASSES:
            raise ValueError(f"classes {self.classes} must be in 2..{MAX_CLASSES}")
        if self.videos_per_class < 1 or self.frames < 1:
            raise ValueError("videos_per_class and frames must be at least 1")
        # Multiples of 16 (whole macroblocks) are best; CoViAR's 340x256 is not, so any even size goes.
        if self.width < 32 or self.height < 32 or self.width % 2 or self.height % 2:
            raise ValueError(f"size {self.width}x{self.height}: width and height must be even, at least 32")
        if min(self.val_fraction, self.test_fraction) < 0 or self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val and test fractions must be non-negative and leave some videos for training")
        if self.seed < 0:
            raise ValueError(f"seed {self.seed} must be non-negative")
        for name in ("iframe_cue", "residual_cue", "mv_cue"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} {getattr(self, name)} must be a probability, in 0..1")

    def encode_options(self) -> EncodeOptions:
        return EncodeOptions(width=self.width, height=self.height, gop=self.gop, quality=self.quality)


def video_id(label: int, index: int) -> str:
    return f"synth_c{label:02d}_v{index:04d}"


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) of n videos; a non-zero fraction gets at least one video when n >= 3."""
    def count(fraction: float) -> int:
        return max(round(n * fraction), 1 if fraction > 0 and n >= 3 else 0)

    val, test = count(val_fraction), count(test_fraction)
    return n - val - test, val, test


def assign_splits(config: SynthConfig, label: int) -> list[str]:
    """The split of each of a class's videos, stratified and shuffled by the seed."""
    train, val, test = split_counts(config.videos_per_class, config.val_fraction, config.test_fraction)
    splits = np.array(["train"] * train + ["val"] * val + ["test"] * test)
    np.random.default_rng([config.seed, 1, label]).shuffle(splits)
    return splits.tolist()


def cues(config: SynthConfig, label: int, index: int) -> Cues:
    """What video (label, index) shows of its class: each modality's cue with its own
    probability, from a random stream of its own (so raising a probability only adds cues)."""
    rng = np.random.default_rng([config.seed, 2, label, index])
    shown = rng.random(3) < (config.iframe_cue, config.mv_cue, config.residual_cue)
    neutral = int(rng.integers(len(SURFACES)))
    top, bottom = APPEARANCES[label] if shown[0] else (neutral, neutral)
    return Cues(top, bottom, MOTIONS[label].name if shown[1] else STILL,
                SPOT_PATTERNS[_spot_pattern(label)][1] if shown[2] else ())


def cues_shown(c: Cues) -> dict[str, bool]:
    """Which modalities' cues a video shows."""
    return {"iframe": c.top != c.bottom, "mv": c.motion != STILL, "residual": bool(c.spots)}


def scene(config: SynthConfig, label: int, index: int) -> Scene:
    """Video (label, index)'s scene: all its random choices, from (seed, label, index) only."""
    synth_class(label)  # range check
    rng = np.random.default_rng([config.seed, 0, label, index])
    return Scene.sample(rng, cues(config, label, index), config.frames, config.width, config.height, config.gop)


def _render_and_encode(config: SynthConfig, label: int, index: int, path: str, ffmpeg: str) -> tuple[int, str]:
    """Worker: (bytes written, "") or (0, reason)."""
    try:
        encode_frames(scene(config, label, index).frames(), path, config.encode_options(), fps=FPS, ffmpeg=ffmpeg)
    except EncodeError as e:
        return 0, e.reason
    return os.path.getsize(path), ""


@dataclass(frozen=True)
class SynthReport:
    videos: int
    failed: list[tuple[str, str]]   # (video id, reason)
    bytes: int
    seconds: float
    manifests: dict[str, str]       # split (or "all") -> file

    def summary(self) -> str:
        lines = [f"generated {self.videos} videos, {self.bytes / 2**20:.1f} MiB, in {self.seconds:.1f} s; "
                 f"failed {len(self.failed)}"]
        lines += [f"  failed: {vid}: {reason}" for vid, reason in self.failed]
        lines += [f"  {name}: {path}" for name, path in self.manifests.items()]
        return "\n".join(lines)


def generate(config: SynthConfig, out_dir: str | os.PathLike, *, jobs: int | None = None,
             ffmpeg: str | None = None, progress: bool = True) -> SynthReport:
    """Draws, encodes and lists the dataset under out_dir; see the module docstring for the layout.

    A video that fails to encode is reported in the result and left out of the manifests;
    the others go on. Drawing runs in spawned worker processes, so a script that calls
    this needs the usual `if __name__ == "__main__":` guard.
    """
    start = time.perf_counter()
    out = Path(out_dir).resolve()
    (out / "videos").mkdir(parents=True, exist_ok=True)
    binary = find_ffmpeg(ffmpeg)
    jobs = jobs or available_cpus()
    tasks = [(label, index) for label in range(config.classes) for index in range(config.videos_per_class)]
    paths = {task: out / "videos" / f"{video_id(*task)}.m4v" for task in tasks}
    outcome: dict[tuple[int, int], tuple[int, str]] = {}
    # Worker processes (drawing is numpy on small arrays, which holds the GIL); spawned, not
    # forked, so they do not inherit this process's threads.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool, \
            tqdm(total=len(tasks), unit="video", desc="synth", disable=None if progress else True) as bar:
        futures = {pool.submit(_render_and_encode, config, *task, str(paths[task]), binary): task for task in tasks}
        try:
            for future in concurrent.futures.as_completed(futures):
                outcome[futures[future]] = future.result()
                bar.update()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # videos being written finish or vanish whole
            raise

    entries, shown = [], {}
    for label in range(config.classes):
        name = synth_class(label).name
        for index, split in enumerate(assign_splits(config, label)):
            if not outcome[label, index][1]:
                entries.append(ManifestEntry(video_id(label, index), str(paths[label, index]), label, name, split))
                shown[video_id(label, index)] = cues_shown(cues(config, label, index))
    manifests = {}
    for split in ("train", "val", "test", "all"):
        manifests[split] = str(out / f"{split}.jsonl")
        write_manifest([e for e in entries if split in ("all", e.split)], manifests[split])
    _write_json(out / "synth.json", {"config": asdict(config), "fps": FPS,
                                     "classes": [asdict(synth_class(k)) | {"name": synth_class(k).name}
                                                 for k in range(config.classes)],
                                     "cues": shown})
    failed = [(video_id(*task), reason) for task, (_, reason) in sorted(outcome.items()) if reason]
    return SynthReport(len(entries), failed, sum(size for size, _ in outcome.values()),
                       time.perf_counter() - start, manifests)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def class_table(classes: int = MAX_CLASSES) -> str:
    """The class list: each class's cue for each modality."""
    surfaces = {o.name: o.description for o in SURFACES}
    motions = {m.name: m.description for m in MOTIONS}
    header = (f"{'label':>5}  {'name (upper-lower surface-motion)':<34} "
              f"{'motion (MV)':<62} spots (residual)")
    lines = [header, "-" * len(header)]
    for cls in (synth_class(k) for k in range(classes)):
        lines.append(f"{cls.label:>5}  {cls.name:<34} {motions[cls.motion]:<62} {cls.spots}")
    lines.append("surfaces: " + "; ".join(f"{name}: {text}" for name, text in surfaces.items()))
    lines.append("each video shows each cue with its own probability (synth.json), else a neutral one: "
                 "one surface on both discs, no motion of its own, no spots")
    lines.append("speeds are at 128 px frame height and scale with the frame size")
    return "\n".join(lines)
