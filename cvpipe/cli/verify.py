"""`cvpipe verify DIR`: check a `cvpipe shard` output directory.

Every shard's size and SHA-256 against manifest.json, every tar read through (samples,
keys, each sample's header and members), and every entry of the source manifest in
exactly one shard or in the errors list; the failed videos are listed. Exit status 1 if
anything is wrong, or if no shard holds a sample.
"""

from __future__ import annotations

import argparse
import sys

from cvpipe.datasets.manifest import read_manifest
from cvpipe.shards.verify import failure_lines, verify


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("verify", help="check a shard directory: checksums, samples, nothing lost or twice",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("directory", metavar="DIR", help="the output directory of `cvpipe shard`")
    p.add_argument("--manifest", help="the source manifest to check against "
                                      "(default: the one manifest.json names)")
    p.add_argument("--deep", action="store_true", help="also decode every member and check its shape")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        entries = read_manifest(args.manifest) if args.manifest else None
    except (OSError, ValueError) as e:
        print(f"cvpipe verify: {e}", file=sys.stderr)
        return 2
    report = verify(args.directory, entries, deep=args.deep)
    for problem in report.problems:
        print(f"  problem: {problem}")
    print(report.summary())
    for line in failure_lines(report.failed, args.directory):
        print(line)
    return 0 if report.ok else 1
