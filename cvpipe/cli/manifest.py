"""`cvpipe manifest {ucf101,hmdb51,folder,csv} SOURCE... --out FILE`: a dataset's listing
as the project's JSONL manifest (id, path, label, label_name, split), validated.

Every problem is printed with its file (and line); any error means no manifest is written
and the exit status is 1. Missing video files are errors unless --allow-missing, which
lists them and leaves them out; so are paths that lead outside the dataset root unless
--allow-outside-root. The last line is a summary.
"""

from __future__ import annotations

import argparse
import sys

from cvpipe.datasets import sources
from cvpipe.datasets.manifest import build_manifest, write_manifest

_SPLIT_NOTE = ("Val is carved from train per class, deterministically (a SHA-256 order of "
               "groups, no RNG); whole groups move, so one actor/scene (UCF-101's gXX) or one "
               "source film (HMDB-51) never lands in both train and val.")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1)")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "manifest", help="build a validated JSONL manifest from UCF-101, HMDB-51, a class-folder tree or CSV",
        description=__doc__.split("\n\n")[0], epilog=_SPLIT_NOTE)
    kinds = p.add_subparsers(dest="kind", required=True, metavar="{ucf101,hmdb51,folder,csv}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="the manifest to write (JSONL)")
    common.add_argument("--val-fraction", type=_fraction, default=0.0,
                        help="fraction of each class's listed train videos moved to val (default: 0)")
    common.add_argument("--allow-missing", action="store_true",
                        help="leave out (and list) missing video files instead of failing")
    common.add_argument("--allow-outside-root", action="store_true",
                        help="take videos whose paths lead outside the dataset root (../x.avi, /abs/x.avi), "
                             "which are errors by default")

    for name, dataset, splits_help in (
            ("ucf101", "UCF-101", "ucfTrainTestlist/: classInd.txt, trainlist0N.txt, testlist0N.txt"),
            ("hmdb51", "HMDB-51", "testTrainMulti_7030_splits/: <class>_test_split<N>.txt")):
        k = kinds.add_parser(name, parents=[common], help=f"{dataset}'s official split files",
                             epilog=_SPLIT_NOTE)
        k.add_argument("source", metavar="SPLITS_DIR", help=splits_help)
        k.add_argument("--video-root", required=True,
                       help="directory holding <class>/<video> as the split files name them")
        k.add_argument("--split-number", type=int, choices=(1, 2, 3), default=1,
                       help="which official split (default: 1)")
        k.add_argument("--ext", help="extension of the videos on disk when re-encoded keeping the "
                                     "relative paths, e.g. m4v (default: as listed, .avi)")
        k.set_defaults(func=run, collect=lambda a, parse=getattr(sources, name):
                       parse(a.source, a.video_root, a.split_number, a.ext))

    k = kinds.add_parser("folder", parents=[common], help="a <root>/<class>/<video> tree",
                         epilog="Splits are carved per class by a SHA-256 order of relative paths (no RNG).")
    k.add_argument("source", metavar="ROOT", help="one directory per class, named by the class")
    k.add_argument("--test-fraction", type=_fraction, default=0.0,
                   help="fraction of each class moved to test (default: 0)")
    k.add_argument("--extensions", nargs="+", default=list(sources.VIDEO_EXTENSIONS),
                   help="file extensions that are videos (default: %(default)s)")
    k.set_defaults(func=run, collect=lambda a: sources.folder(a.source, a.extensions))

    k = kinds.add_parser("csv", parents=[common], help="CSV files of path,label[,split]",
                         epilog="A label is a class name or a 0-based index; without --classes, "
                                "all names (classes: sorted names) or all indices.")
    k.add_argument("source", metavar="CSV", nargs="+", help="rows path,label[,split]; header optional")
    k.add_argument("--video-root", help="where relative paths start (default: each CSV's directory)")
    k.add_argument("--classes", help="text file, one class name per line in label order")
    k.add_argument("--test-fraction", type=_fraction, default=0.0,
                   help="fraction of each class's train rows moved to test (default: 0)")
    k.set_defaults(func=run, collect=lambda a: sources.csv_files(a.source, a.video_root, a.classes))


def run(args: argparse.Namespace) -> int:
    try:
        build = build_manifest(args.collect(args), val_fraction=args.val_fraction,
                               test_fraction=getattr(args, "test_fraction", 0.0),
                               allow_missing=args.allow_missing, allow_outside_root=args.allow_outside_root)
    except ValueError as e:  # fractions that sum to 1 or more
        print(f"error: {e}", file=sys.stderr)
        return 2
    for problem in build.errors:
        print(f"error: {problem}", file=sys.stderr)
    for problem in build.warnings:
        print(f"warning: {problem}", file=sys.stderr)
    if args.allow_missing:
        for problem in build.missing:
            print(f"left out: {problem}", file=sys.stderr)
    if build.ok:
        write_manifest(build.entries, args.out)
    print(build.summary())
    print(f"wrote {args.out}" if build.ok else f"no manifest written: {len(build.errors)} error(s)")
    return 0 if build.ok else 1
