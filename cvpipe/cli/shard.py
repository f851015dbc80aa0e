"""`cvpipe shard --manifest M --out DIR`: extract every video of a manifest into
WebDataset shards with Ray, resuming what an earlier run left in DIR.

Ray: by default an embedded local cluster with --workers CPUs; `--ray-address auto` (or
an address, or RAY_ADDRESS, as `ray job submit` sets it) joins an existing cluster. Exit
status: 0 when every video is stored and the output verifies; 1 when a video failed
(listed, and in manifest.json's errors; a run again retries it) or the verification
fails; 2 for bad arguments, workers that cannot run the job (another cvpipe, no
compiled extension: nothing is recorded, fix it and run again), or an output folder
another run holds or that holds files the job did not write (see --force); 3 when the
joined cluster's head went away mid-job; 130 when interrupted (run again to resume in
both cases: finished shards are kept). A node other than the head that goes away costs
only its running tasks, which Ray runs again on the nodes left.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from cvpipe.shards.cluster import HEAD_LOST_STATUS, EnvironmentProblem
from cvpipe.shards.codec import DEFAULT_ENCODINGS, IFRAME, JPEG_QUALITY, MV, PNG_LEVEL, RESIDUAL, ZSTD_FORMATS, Encoding
from cvpipe.shards.job import DEFAULT_SHARD_SIZE, run_job, summary_table
from cvpipe.shards.output import OutputProblem
from cvpipe.shards.verify import failure_lines
from cvpipe.shards.writer import ShardOptions

_LEVELS = ", ".join(f"{kind} {encoding.level}" for kind, encoding in DEFAULT_ENCODINGS.items())


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("shard", help="extract a manifest's videos into WebDataset shards (Ray)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, help="the JSONL manifest of videos (cvpipe manifest/synth)")
    p.add_argument("--out", required=True, help="output directory: shards, records/, manifest.json")
    p.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS") or "local",
                   help="'local' starts an embedded cluster; 'auto' or HOST:PORT joins one "
                        "(default: $RAY_ADDRESS, else local)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="CPUs of the embedded local cluster, one shard task each "
                        "(default: this machine's CPU count; ignored when joining a cluster)")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help=f"videos per shard (default: {DEFAULT_SHARD_SIZE})")
    p.add_argument("--positions", default="all",
                   help="P positions of each GOP whose accumulated MV and residual are stored: "
                        "'all', 'everyN' (1, 1+N, ...) or a list such as '1,5,11' (default: all)")
    p.add_argument("--iframe-format", choices=("planar.npy.zst", "png", "jpeg"), default=DEFAULT_ENCODINGS[IFRAME].format,
                   help=f"I-frames as zstd-compressed filtered planes (lossless, smallest, fastest to read), PNG "
                        f"(lossless, zlib level {PNG_LEVEL}) or JPEG (lossy, --jpeg-quality) (default: %(default)s)")
    p.add_argument("--residual-format", choices=("planar.npy.zst", "npy.zst"),
                   default=DEFAULT_ENCODINGS[RESIDUAL].format,
                   help="residuals as zstd-compressed filtered planes or plain arrays (default: %(default)s)")
    p.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY,
                   help=f"JPEG quality 1..95 for --iframe-format jpeg (default: {JPEG_QUALITY})")
    p.add_argument("--zstd-level", type=int,
                   help=f"zstd level of every zstd-compressed member, 1..22 (default: per kind, {_LEVELS})")
    p.add_argument("--force", action="store_true",
                   help="go on although --out holds files cvpipe shard did not write (they are left alone)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> ShardOptions:
    iframe = {"png": Encoding("png", level=PNG_LEVEL), "jpeg": Encoding("jpeg", quality=args.jpeg_quality)}.get(
        args.iframe_format, DEFAULT_ENCODINGS[IFRAME])
    residual = DEFAULT_ENCODINGS[RESIDUAL]
    if args.residual_format != residual.format:
        residual = Encoding(args.residual_format, level=residual.level)
    encodings = {IFRAME: iframe, MV: DEFAULT_ENCODINGS[MV], RESIDUAL: residual}
    if args.zstd_level is not None:
        encodings = {kind: dataclasses.replace(e, level=args.zstd_level) if e.format in ZSTD_FORMATS else e
                     for kind, e in encodings.items()}
    return ShardOptions(positions=args.positions, encodings=encodings)


def run(args: argparse.Namespace) -> int:
    def head_lost(why: str) -> None:
        # From the watching thread, while the main one waits on Ray for results that cannot come.
        print(f"cvpipe shard: {why}: the cluster is gone, so this run stops; the shards finished so far are kept "
              f"in {args.out}: run the same command again (on a cluster or locally) to resume",
              file=sys.stderr, flush=True)
        os._exit(HEAD_LOST_STATUS)

    try:
        options = options_from_args(args)
        result = run_job(args.manifest, args.out, options, shard_size=args.shard_size, workers=args.workers,
                         ray_address=args.ray_address, progress=not args.no_progress, force=args.force,
                         on_head_lost=head_lost)
    except (ValueError, OSError, EnvironmentProblem, OutputProblem) as e:  # bad input, a cluster or folder that cannot take it
        print(f"cvpipe shard: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cvpipe shard: interrupted; finished shards are kept in {args.out}: run the same command to resume",
              file=sys.stderr)
        return 130
    for path in result.removed:
        print(f"removed stale {path}")
    print(f"cvpipe shard: {args.out}")
    print(summary_table(result))
    for problem in result.report.problems:
        print(f"  problem: {problem}", file=sys.stderr)
    failed = result.manifest["errors"]
    for line in failure_lines(failed, args.out):
        print(line, file=sys.stderr)
    # Like `cvpipe encode`: the job goes past bad videos, and its status says there were some.
    return 0 if result.ok and not failed else 1
