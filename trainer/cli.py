"""The `cvtrain` command line.

    cvtrain fit --config FILE [--set key=value ...]     train one modality network
    cvtrain eval RUN_DIR [--split test] [...]           evaluate runs and their fusion
    cvtrain ic --config FILE [--method ce|pkd] [...]    train the internal classifiers of a frozen network
    cvtrain logits METHOD_DIR [...]                     dump the 12 exits' logits and their measured cost
    cvtrain wise METHOD_DIR [--set wise.x=...]          fit WISE, sweep early exit and segments
    cvtrain report RUN_DIR                              Markdown report and plots over seeds
    cvtrain bench-data --config FILE [--workers 0,4,8]  loader vs model videos/s: workers needed

The same under `python -m trainer.cli ...` and under torchrun, e.g.
`torchrun --nproc_per_node 8 -m trainer.cli fit --config ucf101_iframe`: each process
joins the process group from torchrun's environment. `get_args_parser` is the parser
factory for other launchers (a SLURM wrapper, a notebook) to reuse or extend.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from trainer.analysis.evaluate import DEFAULT_FUSION_WEIGHTS, FUSION_SPACES
from trainer.config import ConfigError, load_config
from trainer.data.contract import MODALITIES, SPLITS, DataError
from trainer.train import distributed
from trainer.train.loop import TrainingDiverged


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
    from trainer.train.loop import fit

    cfg = load_config(args.config, args.overrides)
    dist = distributed.setup(cfg.run.device)
    try:
        fit(cfg, dist)
    finally:
        distributed.teardown()
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from trainer.analysis.evaluate import evaluate_runs, format_table

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


def _run_flatness(args: argparse.Namespace) -> int:
    from trainer.analysis.flatness import FlatnessOptions, flatness

    options = FlatnessOptions(batches=args.batches, probes=args.probes, tol=args.tol, directions=args.directions,
                              seed=args.seed)
    dist = distributed.setup(args.device)
    try:
        text = flatness(args.run_dirs, dist, options, which=args.checkpoint)
        if dist.is_main:
            print(text)
    finally:
        distributed.teardown()
    return 0


def _run_ic(args: argparse.Namespace) -> int:
    from trainer.train.ic import train_ics

    overrides = list(args.overrides)
    if args.method:
        overrides.append(f"ic.method={args.method}")
    if args.teachers is not None:
        overrides.append("ic.teachers=[" + ",".join(f'"{t}"' for t in args.teachers) + "]")
    if args.teacher_epochs is not None:
        overrides.append(f"ic.teacher_epochs=[{','.join(map(str, args.teacher_epochs))}]")
    cfg = load_config(args.config, overrides)
    dist = distributed.setup(cfg.run.device)
    try:
        train_ics(cfg, dist)
    finally:
        distributed.teardown()
    return 0


def _run_logits(args: argparse.Namespace) -> int:
    from trainer.analysis.logits import dump_logits, format_summary

    dist = distributed.setup(args.device)
    try:
        summary = dump_logits(args.method_dirs, dist=dist, which=args.checkpoint, overrides=args.overrides)
        if dist.is_main:
            print(format_summary(summary))
    finally:
        distributed.teardown()
    return 0


def _run_gate(args: argparse.Namespace) -> int:
    from trainer.analysis.gate import check_gate, format_gate

    result = check_gate(args.method_dir, args.margin, tuple(args.ic1_gap))
    print(format_gate(result))
    return 0 if result["held"] else 1


def _run_wise(args: argparse.Namespace) -> int:
    from trainer.analysis.wise import format_results, run_wise

    for method_dir in args.method_dirs:
        results = run_wise(method_dir, args.overrides)
        print(f"== {method_dir}\n{format_results(results)}\nwritten to {method_dir}/wise/")
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from trainer.analysis.report import write_report

    table = write_report(args.run_dir, split=args.split, wise_method=args.wise_method, teamnet=args.teamnet)
    print(table)
    print(f"report: {args.run_dir}/report/report.md")
    return 0


def _run_bench_data(args: argparse.Namespace) -> int:
    from trainer.analysis.input_rate import bench_data, format_bench
    from trainer.data.shard_reader import loader_workers

    cfg = load_config(args.config, args.overrides)
    device = distributed.pick_device(cfg.run.device)
    workers = args.workers if args.workers is not None else sorted({0, 1, loader_workers(-1)})
    print(format_bench(bench_data(cfg, workers, args.batches, args.steps, device)))
    return 0


def _names(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _range(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t]
    except ValueError:
        values = []
    if len(values) != 2 or values[0] > values[1]:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with LOW <= HIGH, got {text!r}")
    return values


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


def _add_flatness(subparsers: argparse._SubParsersAction) -> None:
    from trainer.analysis.flatness import FlatnessOptions

    d = FlatnessOptions()
    p = subparsers.add_parser("flatness", help="Hessian trace, top eigenvalue and loss curves of trained runs",
                              description="Curvature of each run's training loss at its weights (a `cvtrain fit` "
                                          "run: the network; a `cvtrain ic` run: each IC, the backbone frozen); "
                                          "writes RUN_DIR/flatness/. Under torchrun each rank takes its own batches.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (config.toml and best.pt)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="(default: %(default)s)")
    p.add_argument("--batches", type=int, default=d.batches,
                   help="training batches per process the loss is summed over (default: %(default)s)")
    p.add_argument("--probes", type=int, default=d.probes, help="Hutchinson probes (default: %(default)s)")
    p.add_argument("--tol", type=float, default=d.tol,
                   help="power iteration's relative tolerance (default: %(default)s)")
    p.add_argument("--directions", type=int, default=d.directions,
                   help="filter-normalised directions for the loss curves (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the random vectors (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s)")
    p.set_defaults(func=_run_flatness)


def _add_ic(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ic", help="train the internal classifiers of a frozen network (CE or PKD)",
                              description="Train the three internal classifiers of model.modality's network on "
                                          "its frozen backbone (ic.backbones), on labels or by progressive "
                                          "knowledge distillation; resumes from RUN_DIR/last.pt when it exists.")
    p.add_argument("--config", required=True, metavar="FILE",
                   help="a TOML config file, or a bundled one (tiny_synth_ic_pkd, ucf101_ic_ce, ...)")
    p.add_argument("--method", choices=("ce", "pkd"), help="same as --set ic.method=... (default: the config's)")
    p.add_argument("--teachers", type=_names, metavar="T1,T2,...",
                   help="PKD's teacher per phase: iframe, mv, residual or self (same as --set ic.teachers=[...]; "
                        "default: the config's)")
    p.add_argument("--teacher-epochs", type=_ints, metavar="E2,E3,...",
                   help="epochs where phases 2, 3, ... begin ('' for one teacher; default: the config's)")
    _add_overrides(p)
    p.set_defaults(func=_run_ic)


def _add_logits(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("logits", help="dump the logits of all 12 exits and their measured cost",
                              description="Score every exit of the IC runs in each METHOD_DIR (one run per "
                                          "modality) on train, val and test, at the segment counts of "
                                          "wise.segments; writes METHOD_DIR/logits/.")
    p.add_argument("method_dirs", nargs="+", metavar="METHOD_DIR", help="a folder of IC runs (several share passes)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="each IC at its best validation epoch, or the last epoch (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s)")
    _add_overrides(p)
    p.set_defaults(func=_run_logits)


def _add_gate(subparsers: argparse._SubParsersAction) -> None:
    from trainer.analysis.gate import IC1_GAP, MARGIN

    p = subparsers.add_parser("gate", help="check that final exits lead their ICs (the regime PKD needs)",
                              description="On validation, check for each network of METHOD_DIR (CE-trained IC "
                                          "runs) that the final exit beats IC3 by --margin points and IC1 trails "
                                          "it by --ic1-gap points; writes METHOD_DIR/gate.json; exits 1 when the "
                                          "gate does not hold.")
    p.add_argument("method_dir", metavar="METHOD_DIR", help="a folder of IC runs, one per network")
    p.add_argument("--margin", type=float, default=MARGIN, help="points fc must lead IC3 by (default: %(default)s)")
    p.add_argument("--ic1-gap", type=_range, default=list(IC1_GAP), metavar="LOW,HIGH",
                   help="points IC1 must trail fc by (default: %(default)s)")
    p.set_defaults(func=_run_gate)


def _add_wise(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("wise", help="fit WISE on training logits; early exit and cost sweep",
                              description="Fit the WISE weights of METHOD_DIR's 12 exits on its training logits "
                                          "and evaluate WISE, its ablations, early exit over wise.taus and "
                                          "segment counts, and CoViAR's fusion; writes METHOD_DIR/wise/.")
    p.add_argument("method_dirs", nargs="+", metavar="METHOD_DIR", help="a folder of IC runs with logits/")
    _add_overrides(p)
    p.set_defaults(func=_run_wise)


def _add_report(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="Markdown report and plots of PKD and WISE over seeds",
                              description="Summarise RUN_DIR/seed*/METHOD/wise/results.json (or RUN_DIR/METHOD/... "
                                          "for one seed) as RUN_DIR/report/report.md and PNG plots; prints the "
                                          "main table.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder of seed*/ folders of method folders")
    p.add_argument("--split", choices=("test", "val"), default="test", help="(default: %(default)s)")
    p.add_argument("--wise-method", metavar="METHOD",
                   help="the method whose WISE and trade-off figures are shown (default: pkd, else the last)")
    p.add_argument("--teamnet", metavar="TEAM_DIR",
                   help="TEAM-Net's IC runs, laid out as RUN_DIR's: a report section and curves on the trade-off plot")
    p.set_defaults(func=_run_report)


def _add_bench_data(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench-data", help="measure whether the loader keeps the model busy",
                              description="Time the config's training batches (workers read and decompress, the "
                                          "device augments) for each number of workers, and the network's "
                                          "training step on run.device; says how many workers keep it busy.")
    p.add_argument("--config", required=True, metavar="FILE", help="a TOML config file, or a bundled one")
    p.add_argument("--workers", type=_ints, metavar="N1,N2,...",
                   help="loader workers to try (default: 0, 1 and one per core)")
    p.add_argument("--batches", type=int, default=20, help="batches timed per setting (default: %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="model steps timed (default: %(default)s)")
    _add_overrides(p)
    p.set_defaults(func=_run_bench_data)


# Subcommands in the order `cvtrain --help` lists them; later stages add theirs here.
SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_fit, _add_eval, _add_ic, _add_gate, _add_logits, _add_wise, _add_report, _add_flatness, _add_bench_data)


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
    except (ConfigError, DataError, FileNotFoundError, FileExistsError) as e:
        parser.exit(2, f"cvtrain: error: {e}\n")
    except TrainingDiverged as e:
        parser.exit(1, f"cvtrain: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
