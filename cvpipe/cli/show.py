"""`cvpipe show VIDEO --frame N --out F.png`: draw what the extractor sees at one frame.

Exit status 1 when the video cannot be read or has no such frame, 2 when --out's folder
does not exist; the message names the file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cvpipe


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("show", help="draw a frame, its motion field, accumulated MV and residual as a PNG")
    p.add_argument("video", help="an MPEG-4 Part 2 video")
    p.add_argument("--frame", type=int, default=None, help="frame index (default: the middle of the first GOP)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: matplotlib and the compiled extension, which every other subcommand's
    # start-up (a `cvpipe shard` driver on a machine without FFmpeg) should not need.
    from cvpipe.show import render

    folder = Path(args.out).parent
    if not folder.is_dir():
        print(f"cvpipe show: the folder of --out, '{folder}', does not exist", file=sys.stderr)
        return 2
    try:
        video = cvpipe.open(args.video)
        frame = args.frame if args.frame is not None else video.gop_starts[0] + video.gop_size(0) // 2
        video.locate(frame)   # an out-of-range frame is refused before any drawing
        render(video, frame, args.out)
    except (OSError, ValueError, IndexError) as e:
        print(f"cvpipe show: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: frame {frame} of {video.path}")
    return 0
