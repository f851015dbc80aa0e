"""`cvpipe encode SRC... --out DIR`: re-encode videos to MPEG-4 Part 2 for the extractor."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from cvpipe.datasets.encode import FORMATS, EncodeOptions, parse_size
from cvpipe.datasets.encode_batch import encode_many, summary


def add_encoder_arguments(p: argparse.ArgumentParser) -> None:
    """The FFmpeg choice, shared by every subcommand that encodes."""
    p.add_argument("--ffmpeg", default=None,
                   help="FFmpeg binary (default: $CVPIPE_FFMPEG, else `ffmpeg` on PATH, else imageio-ffmpeg's)")
    p.add_argument("--jobs", type=int, default=None, help="parallel encodes (default: the CPUs available)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "encode", help="re-encode videos to MPEG-4 Part 2 (CoViAR format: fixed GOP, no B-frames)",
        description="Re-encode any videos FFmpeg reads to MPEG-4 Part 2 with a fixed GOP and no B-frames. "
                    "Each output is OUT/<source stem>.<format>, checked with cvpipe.open before it gets its "
                    "name; up-to-date outputs are skipped. Exit status 1 if any source failed.")
    p.add_argument("sources", nargs="+", metavar="SRC", help="video files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", default="340x256", help="output WIDTHxHEIGHT, even numbers (default: 340x256)")
    p.add_argument("--keep-aspect", action="store_true",
                   help="scale to fit inside the size keeping the aspect ratio, pad with black to the size "
                        "(default: stretch to the size, as CoViAR)")
    p.add_argument("--gop", type=int, default=12, help="frames per GOP: an I-frame every N frames (default: 12)")
    p.add_argument("--quality", type=int, default=1, help="FFmpeg -q:v, 1 best .. 31 (default: 1, as CoViAR)")
    p.add_argument("--format", choices=sorted(FORMATS), default="m4v",
                   help="raw MPEG-4 elementary stream or AVI (default: m4v)")
    p.add_argument("--max-frames", type=int, default=None, help="encode only the first N frames of each source")
    p.add_argument("--force", action="store_true", help="re-encode even up-to-date outputs")
    p.add_argument("--tree", default=None, metavar="ROOT",
                   help="keep each source's path relative to ROOT under OUT (OUT/<class>/<video>.m4v for "
                        "UCF-101 and HMDB-51 trees, as `cvpipe manifest --video-root OUT` expects); default: "
                        "OUT/<source stem>")
    add_encoder_arguments(p)
    p.set_defaults(func=run)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    try:
        width, height = parse_size(args.size)
        options = EncodeOptions(width=width, height=height, keep_aspect=args.keep_aspect, gop=args.gop,
                                quality=args.quality, format=args.format, max_frames=args.max_frames)
    except ValueError as e:
        print(f"cvpipe encode: {e}", file=sys.stderr)
        return 2
    # SIGTERM takes the Ctrl-C path, so running encodes are killed and their temporary files
    # removed (only the main thread may set a handler; main() may run in another).
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    start = time.perf_counter()
    try:
        results = encode_many(args.sources, args.out, options, jobs=args.jobs, ffmpeg=args.ffmpeg, force=args.force,
                               tree=args.tree)
    except KeyboardInterrupt:
        print("cvpipe encode: interrupted; no partial outputs were left", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as e:
        print(f"cvpipe encode: {e}", file=sys.stderr)
        return 2
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    print(summary(results, time.perf_counter() - start))
    print(f"outputs in {os.path.abspath(args.out)}")
    return 1 if any(r.status == "failed" for r in results) else 0
