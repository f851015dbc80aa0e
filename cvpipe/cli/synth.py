"""`cvpipe synth --out DIR`: generate the embedded synthetic action dataset."""

from __future__ import annotations

import argparse
import sys

from cvpipe.cli.encode import add_encoder_arguments
from cvpipe.datasets.encode import parse_size
from cvpipe.datasets.synth import COVIAR_SIZE, MAX_CLASSES, SynthConfig, class_table, generate

_DEFAULTS = SynthConfig()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth", help="generate the synthetic action dataset (videos + train/val/test manifests)",
        description="Draw a labelled synthetic action dataset from a seed, encode it to MPEG-4 Part 2 "
                    "(GOP 12, no B-frames) and write OUT/{train,val,test,all}.jsonl. "
                    "See `--list-classes` for what each class shows.")
    p.add_argument("--out", help="output folder (videos/ and the manifests go there)")
    p.add_argument("--list-classes", action="store_true", help="print the class table and exit")
    p.add_argument("--classes", type=int, default=_DEFAULTS.classes,
                   help=f"number of classes, 2..{MAX_CLASSES} (default: {_DEFAULTS.classes})")
    p.add_argument("--videos-per-class", type=int, default=_DEFAULTS.videos_per_class,
                   help=f"videos per class (default: {_DEFAULTS.videos_per_class})")
    p.add_argument("--frames", type=int, default=_DEFAULTS.frames,
                   help=f"frames per video (default: {_DEFAULTS.frames})")
    p.add_argument("--size", default=f"{_DEFAULTS.width}x{_DEFAULTS.height}",
                   help=f"WIDTHxHEIGHT, even; multiples of 16 fit macroblocks (default: {_DEFAULTS.width}x{_DEFAULTS.height})")
    p.add_argument("--coviar-size", action="store_true",
                   help=f"shorthand for --size {COVIAR_SIZE[0]}x{COVIAR_SIZE[1]}, CoViAR's frame size")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed, help=f"random seed (default: {_DEFAULTS.seed})")
    p.add_argument("--val-fraction", type=float, default=_DEFAULTS.val_fraction,
                   help=f"share of each class for validation (default: {_DEFAULTS.val_fraction})")
    p.add_argument("--test-fraction", type=float, default=_DEFAULTS.test_fraction,
                   help=f"share of each class for test (default: {_DEFAULTS.test_fraction})")
    p.add_argument("--gop", type=int, default=_DEFAULTS.gop, help=f"frames per GOP (default: {_DEFAULTS.gop})")
    p.add_argument("--quality", type=int, default=_DEFAULTS.quality,
                   help=f"FFmpeg -q:v, 1 best .. 31 (default: {_DEFAULTS.quality}, as CoViAR)")
    for modality, text in (("iframe", "I-frame"), ("residual", "residual"), ("mv", "MV")):
        p.add_argument(f"--{modality}-cue", type=float, default=getattr(_DEFAULTS, f"{modality}_cue"),
                       help=f"probability that a video shows its class's {text} cue, else a neutral one "
                            f"(default: {getattr(_DEFAULTS, f'{modality}_cue')})")
    add_encoder_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.list_classes:
            print(class_table(args.classes))
            return 0
        if not args.out:
            raise ValueError("--out is required (or --list-classes)")
        width, height = COVIAR_SIZE if args.coviar_size else parse_size(args.size)
        config = SynthConfig(classes=args.classes, videos_per_class=args.videos_per_class, frames=args.frames,
                             width=width, height=height, seed=args.seed, val_fraction=args.val_fraction,
                             test_fraction=args.test_fraction, gop=args.gop, quality=args.quality,
                             iframe_cue=args.iframe_cue, residual_cue=args.residual_cue, mv_cue=args.mv_cue)
        report = generate(config, args.out, jobs=args.jobs, ffmpeg=args.ffmpeg)
    except (ValueError, FileNotFoundError) as e:
        print(f"cvpipe synth: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cvpipe synth: interrupted; the manifests were not written", file=sys.stderr)
        return 130
    print(report.summary())
    return 1 if report.failed else 0
