"""Shard benchmark (issue 4, part 8): member encodings, job throughput, bytes per video.

    python benchmarks/bench_shard.py           # ~3-4 min on 2 cores
    python benchmarks/bench_shard.py --quick   # ~1 min: fewer videos, one real clip

1. Member encodings: size, encode and decode time per member, for the I-frame, the
   quantised accumulated MV and the quantised accumulated residual of every GOP and P
   position in the first 48 frames of one synthetic 340x256 video (`cvpipe synth`) and of
   one real clip (vtest.avi re-encoded as CoViAR does, benchmarks/clips.py). The defaults of cvpipe.shards.codec
   were picked from this table.
2. `cvpipe shard` (run_job, default options) on the synthetic dataset at 340x256 with a
   fresh local Ray of 1 and then 2 workers: videos/s (Ray start-up excluded), the
   scaling, and where the worker time goes. Worker time = workers x job time; inside the
   tasks it splits into extraction (decode + CoViAR maths, the native extractor),
   quantisation (numpy), encoding (PNG/zstd), tar writing (tar, SHA-256, fsync, rename);
   the rest is Ray scheduling, idle workers and the driver's verification.
3. Bytes per video against the source m4v, on the synthetic set and the real clips, for
   the default options and two alternatives (every other P position; JPEG I-frames).

No assertions: it prints figures. The 1-minute load average is printed with them.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable

import clips
import numpy as np

import cvpipe
from cvpipe.datasets.manifest import read_manifest, write_manifest
from cvpipe.datasets.synth import SynthConfig, generate
from cvpipe.shards import codec
from cvpipe.shards import schema as ss
from cvpipe.shards.job import run_job
from cvpipe.shards.writer import ShardOptions

Codec = tuple[Callable[[np.ndarray], bytes], Callable[[bytes], np.ndarray]]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _schema_codec(kind: str, encoding: codec.Encoding) -> Codec:
    return (lambda a: codec.encode_member(kind, a, encoding), lambda b: codec.decode_member(kind, b, encoding))


def candidates(kind: str) -> dict[str, Codec]:
    """What each kind could be stored as, the default marked; the schema's formats go
    through the schema (planar.npy.zst rows name their filters: codec.filter_planes)."""
    colour = ss.CHANNELS[kind] == 3
    tag = "colour + " if colour else ""
    E = codec.Encoding
    encodings = {
        f"planes, {tag}grad + zstd 6": E("planar.npy.zst", level=6, predictor="grad", colour=colour),
        f"planes, {tag}up + zstd 6": E("planar.npy.zst", level=6, predictor="up", colour=colour),
        f"planes, {tag}up + zstd 3": E("planar.npy.zst", level=3, predictor="up", colour=colour),
        "planes + zstd 9": E("planar.npy.zst", level=9, predictor="none", colour=False),
        "planes + zstd 3": E("planar.npy.zst", level=3, predictor="none", colour=False),
        "row deltas + zstd 3 (schema 3)": E("delta.npy.zst", level=3),
        "npy + zstd 3": E("npy.zst", level=3),
        "npy + zstd 19": E("npy.zst", level=19),
        "png, zlib 1": E("png", level=1),
        "png, zlib 6": E("png", level=6),
    }
    if kind == ss.IFRAME:
        encodings[f"jpeg q{codec.JPEG_QUALITY} (lossy)"] = E("jpeg", quality=codec.JPEG_QUALITY)
    table = {f"{label} (default)" if e == codec.DEFAULT_ENCODINGS[kind] else label: _schema_codec(kind, e)
             for label, e in encodings.items()}
    table["npy"] = (_npy, lambda b: np.load(io.BytesIO(b)))
    table["npy + zlib 6"] = (lambda a: zlib.compress(_npy(a), 6), lambda b: np.load(io.BytesIO(zlib.decompress(b))))
    return table


def members_of(path: Path, frames: int = 48) -> dict[str, list[np.ndarray]]:
    """The I-frames and every P position's quantised MV and residual in a video's first
    `frames` frames (four GOPs of 12: enough members, and zstd 19 stays affordable)."""
    video = cvpipe.open(path)
    i_frames = [f for f in video.gop_starts if f < frames]
    p_frames = [f for f in range(min(frames, video.num_frames)) if f not in set(video.gop_starts)]
    out = video.extract_each({"bgr": i_frames, "mv_accumulated": p_frames, "residual_accumulated": p_frames})
    return {ss.IFRAME: list(out["bgr"]), ss.MV: list(codec.quantise_mv(out["mv_accumulated"])),
            ss.RESIDUAL: list(codec.quantise_residual(out["residual_accumulated"]))}


def per_member(fn: Callable, items: list, repeats: int) -> tuple[float, list]:
    """Best-of-`repeats` mean seconds per item, and the outputs."""
    best, outputs = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = [fn(x) for x in items]
        best = min(best, (time.perf_counter() - start) / len(items))
    return best, outputs


def encoding_rows(name: str, path: Path, repeats: int) -> list[list[str]]:
    rows = []
    for kind, arrays in members_of(path).items():
        for label, (encode, decode) in candidates(kind).items():
            encode_s, blobs = per_member(encode, arrays, repeats)
            decode_s, back = per_member(decode, blobs, repeats)
            lossless = all(np.array_equal(a, b) for a, b in zip(arrays, back))
            size = np.mean([len(b) for b in blobs]) / 1024
            rows.append([name, kind, label + ("" if lossless or "lossy" in label else " (NOT LOSSLESS)"),
                         f"{size:.1f}", f"{encode_s * 1e3:.2f}", f"{decode_s * 1e3:.2f}"])
    return rows


def synth_manifest(workdir: Path, classes: int, per_class: int) -> Path:
    out = workdir / f"synth-340x256-c{classes}-v{per_class}"
    if not (out / "all.jsonl").is_file():
        generate(SynthConfig(classes=classes, videos_per_class=per_class, width=340, height=256), out, progress=False)
    return out / "all.jsonl"


def real_manifest(workdir: Path, names: list[str]) -> Path:
    path = workdir / "real.jsonl"
    write_manifest(clips.clip_entries(names, workdir), path)
    return path


def throughput(manifest: Path, workers: int, shard_size: int, scratch: Path) -> dict[str, float]:
    import ray

    out = scratch / f"w{workers}"
    result = run_job(manifest, out, ShardOptions(), shard_size=shard_size, workers=workers,
                     ray_address="local", progress=False)
    assert not ray.is_initialized()  # run_job started its own cluster and stopped it
    if not result.ok:
        raise RuntimeError(f"the shard job failed verification: {result.report.problems[:3]}")
    job = result.seconds - result.ray_seconds
    worker_time = workers * job
    t = result.timings
    totals = result.manifest["totals"]
    return {"videos": totals["videos"], "frames": totals["frames"], "job": job, "videos/s": totals["videos"] / job,
            "extract": t.extract / worker_time, "quantise": t.quantise / worker_time,
            "encode": t.encode / worker_time, "write": t.write / worker_time,
            "tasks": result.task_seconds / worker_time, "bytes": totals["bytes"],
            "source_bytes": totals["source_bytes"], "failed": totals["failed"]}


def bytes_rows(name: str, manifest: Path, scratch: Path, shard_size: int) -> list[list[str]]:
    import ray

    variants = {
        "default (all positions)": ShardOptions(),
        "schema 3 defaults (row deltas, (H, W, C) arrays)": ShardOptions(encodings={
            ss.IFRAME: codec.Encoding("delta.npy.zst", level=3), ss.MV: codec.Encoding("npy.zst", level=3),
            ss.RESIDUAL: codec.Encoding("delta.npy.zst", level=3)}),
        "every2 positions": ShardOptions(positions="every2"),
        f"jpeg q{codec.JPEG_QUALITY} I-frames": ShardOptions(encodings=dict(codec.DEFAULT_ENCODINGS) | {
            ss.IFRAME: codec.Encoding("jpeg", quality=codec.JPEG_QUALITY)}),
    }
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    rows = []
    try:
        for i, (label, options) in enumerate(variants.items()):
            result = run_job(manifest, scratch / f"{name}-{i}", options, shard_size=shard_size, progress=False)
            totals = result.manifest["totals"]
            per_video, source = totals["bytes"] / totals["samples"], totals["source_bytes"] / totals["samples"]
            rows.append([name, label, str(totals["samples"]), f"{totals['frames'] / totals['samples']:.0f}",
                         f"{source / 2**20:.2f}", f"{per_video / 2**20:.2f}", f"{per_video / source:.1f}x"])
    finally:
        ray.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer videos and repeats, one real clip")
    parser.add_argument("--workdir", type=Path, default=clips.DEFAULT_WORKDIR, help="where clips are cached")
    args = parser.parse_args()
    classes, per_class, repeats = (4, 4, 1) if args.quick else (10, 12, 3)
    real_names = ["vtest"] if args.quick else ["vtest", "bikes", "tree", "Megamind"]
    load_before = os.getloadavg()[0]

    synth = synth_manifest(args.workdir, classes, per_class)
    synth_video = Path(read_manifest(synth)[0].path)
    rows = encoding_rows("synthetic", synth_video, repeats) + encoding_rows("vtest", clips.clip("vtest", args.workdir),
                                                                            repeats)
    clips.table("1. Member encodings (per member; KiB, ms)", ["video", "kind", "encoding", "KiB", "encode", "decode"], rows)

    with tempfile.TemporaryDirectory(prefix="bench_shard_") as tmp:
        scratch = Path(tmp)
        shard_size = 4
        runs = {w: throughput(synth, w, shard_size, scratch) for w in (1, 2)}
        rows = [[str(w), str(r["videos"]), f"{r['job']:.1f}", f"{r['videos/s']:.2f}",
                 f"{r['extract']:.0%}", f"{r['quantise']:.0%}", f"{r['encode']:.0%}", f"{r['write']:.0%}",
                 f"{1 - r['tasks']:.0%}", f"{1 - r['extract']:.0%}"] for w, r in runs.items()]
        clips.table(f"2. cvpipe shard on the synthetic set, 340x256, {runs[1]['frames'] // runs[1]['videos']} frames per "
              f"video, shard size {shard_size} (shares of worker time = workers x job time)",
              ["workers", "videos", "job s", "videos/s", "extract", "quantise", "encode", "tar", "Ray+idle",
               "outside extraction"], rows)
        print(f"scaling 1 -> 2 workers: {runs[2]['videos/s'] / runs[1]['videos/s']:.2f}x; "
              f"Ray + tar overhead at 2 workers: {1 - runs[2]['tasks'] + runs[2]['write']:.0%}")

        rows = bytes_rows("synthetic", synth, scratch, shard_size)
        rows += bytes_rows("real", real_manifest(args.workdir, real_names), scratch, 1)
        clips.table("3. Bytes per video (MiB) against the source m4v", ["set", "options", "videos", "frames/video",
                                                                  "source", "shards", "ratio"], rows)
    print(f"\n1-minute load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
          f"({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
