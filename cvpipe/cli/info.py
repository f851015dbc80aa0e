"""`cvpipe info VIDEO...`: what the extractor sees in a video, summarised."""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

import cvpipe


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="index videos and summarise their GOPs and motion")
    p.add_argument("videos", nargs="+", help="MPEG-4 Part 2 videos (m4v, AVI, MP4, MOV, MKV)")
    p.set_defaults(func=run)


def summarise(video: cvpipe.Video) -> str:
    """A few lines on a video: stream, GOP table, and mean accumulated motion per GOP position."""
    sizes = Counter(video.gop_size(g) for g in range(video.num_gops))
    types = Counter(video.frame_types)
    lines = [
        f"{video.path}: {video.container}, {video.width}x{video.height}, {float(video.fps):.3f} fps",
        f"  frames {video.num_frames} ({', '.join(f'{t}: {n}' for t, n in sorted(types.items()))}), "
        f"GOPs {video.num_gops} (sizes {dict(sorted(sizes.items()))}), stream {video.stream_bytes / 1024:.1f} KiB",
    ]
    if video.has_b_frames:
        lines.append("  has B-VOPs: extraction is refused (re-encode with `cvpipe encode`)")
        return "\n".join(lines)
    frames = range(video.gop_starts[0], video.gop_starts[0] + video.gop_size(0))
    out = video.extract(frames, ("mv_accumulated", "residual_accumulated"))
    mv = np.abs(out["mv_accumulated"].astype(np.float32)).mean(axis=(1, 2, 3))
    res = np.abs(out["residual_accumulated"].astype(np.float32)).mean(axis=(1, 2, 3))
    lines.append("  GOP 0, mean |accumulated MV| per position: " + " ".join(f"{m:.2f}" for m in mv))
    lines.append("  GOP 0, mean |accumulated residual| per position: " + " ".join(f"{r:.1f}" for r in res))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.videos:
        try:
            print(summarise(cvpipe.open(path)))
        except (OSError, ValueError) as e:
            print(f"{path}: error: {e}")
            failed += 1
    return 1 if failed else 0
