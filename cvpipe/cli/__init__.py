"""The `cvpipe` command line: one subcommand per module in this package.

Each subcommand module offers `register(subparsers)`, which adds its parser and sets
`run(args) -> int` as the parser's `func` default. The exit status is what `run` returns.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `cvpipe --help` lists them.
SUBCOMMANDS = ("info", "show", "manifest", "encode", "synth", "shard", "verify")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvpipe",
        description="Compressed-domain video preprocessing: MPEG-4 Part 2 extraction, datasets, shards.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"cvpipe.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
