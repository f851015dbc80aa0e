"""The `cvtrain` command line.

    cvtrain fit --config FILE [--set key=value ...]     train one modality network
    cvtrain eval RUN_DIR [--split test] [...]           evaluate runs and their fusion

The same under `python -m trainer.cli ...` and under torchrun, e.g.
`torchrun --nproc_per_node 8 -m trainer.cli fit --config ucf101_iframe`: each process
joins the process group from torchrun's environment. `get_args_parser` is the parser
factory for other launchers (a SLURM wrapper, a notebook) to reuse or extend.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from trainer import distributed
from trainer.batches import SPLITS
from trainer.config import ConfigError, load_config
from trainer.metrics import DEFAULT_FUSION_WEIGHTS, FUSION_SPACES
from trainer.models import MODALITIES


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=0.01 --set run.dir=runs/x "
                             "(repeatable; values are TOML, bare text is a string)")


def _fusion_weights(text: str) -> dict[str, float]:
    parts = text.split(",")
    if len(parts) != len(MODALITIES):
        raise argparse.ArgumentTypeError(f"expected {len(MODALITIES)} comma-separated weights "
                                         f"({', '.join(MODALITIES)}), got {text!r}")
    try:
        return dict(zip(MODALITIES, map(float, parts), strict=True))
    except ValueError:
        raise argparse.ArgumentTypeError(f"weights must be numbers, got {text!r}") from None


def _run_fit(args: argparse.Namespace) -> int:
    from trainer.fit import fit

    cfg = load_config(args.config, args.overrides)
    dist = distributed.setup(cfg.run.device)
    try:
        fit(cfg, dist)
    finally:
        distributed.teardown()
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from trainer.evaluate import evaluate_runs, format_table

    dist = distributed.setup(args.device)
    try:
        results = evaluate_runs(args.run_dir, dist=dist, split=args.split, which=args.checkpoint,
                                overrides=args.overrides, weights=args.fusion_weights, space=args.fusion_space)
        if dist.is_main:
            print(format_table(results))
            print(f"written to {args.run_dir}/eval/{args.split}/")
    finally:
        distributed.teardown()
    return 0


def _add_fit(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fit", help="train one modality network (CoViAR recipe)",
                              description="Train one modality network from a config file; resumes from "
                                          "RUN_DIR/last.pt when it exists.")
    p.add_argument("--config", required=True, metavar="FILE",
                   help="a TOML config file, or the name of a bundled one (ucf101_iframe, tiny_synth, ...)")
    _add_overrides(p)
    p.set_defaults(func=_run_fit)


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate trained runs and their fusion",
                              description="Evaluate a run directory, or a folder of runs (one per modality), "
                                          "and fuse the modalities; writes RUN_DIR/eval/SPLIT/.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory or a folder holding several")
    p.add_argument("--split", choices=SPLITS, default="test", help="split to evaluate (default: %(default)s)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="best on validation, or the last epoch (default: %(default)s)")
    default = ",".join(f"{w:g}" for w in DEFAULT_FUSION_WEIGHTS.values())
    p.add_argument("--fusion-weights", type=_fusion_weights, default=dict(DEFAULT_FUSION_WEIGHTS),
                   metavar="I,MV,R", help=f"fusion weights of {', '.join(MODALITIES)} (default: {default}, CoViAR's)")
    p.add_argument("--fusion-space", choices=FUSION_SPACES, default="logits",
                   help="fuse segment-averaged logits as CoViAR does, or softmax scores (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s)")
    _add_overrides(p)
    p.set_defaults(func=_run_eval)


# Subcommands in the order `cvtrain --help` lists them; later stages add theirs here.
SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_fit, _add_eval)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvtrain", add_help=add_help,
                                     description="Train and evaluate compressed-domain action recognition "
                                                 "networks (CoViAR backbones; PKD and WISE).")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, FileExistsError) as e:
        parser.exit(2, f"cvtrain: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
