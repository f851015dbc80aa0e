"""`cvtrain report RUN_DIR`: the paper's figures as a Markdown report and PNG plots, each
as mean and spread over seeds, with the comparisons' paired intervals.

It reads RUN_DIR/seed*/METHOD/wise/results.json (trainer.analysis.results) and writes
RUN_DIR/report/: report.md, ic_accuracy.png (per-network, per-IC test top-1 of each
method), wise.png (WISE vs no scaling vs single exits), tradeoff.png (accuracy against
GMACs per video under early exit, with CoViAR's fusion, and TEAM-Net's curves when its
IC runs are given) and, where `cvtrain flatness` ran on the backbones and IC runs,
flatness.png (trainer.analysis.flatness_summary); it returns the main table, which the
command prints.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.analysis.comparisons import (
    COMPARISON_HEADER,
    POOLED,
    Comparison,
    comparison_rows,
    ic_comparisons,
    wise_comparisons,
)
from trainer.analysis.flatness_summary import flatness_lines
from trainer.analysis.gate import GATE, format_gate
from trainer.analysis.intervals import Interval
from trainer.analysis.markdown import markdown_table
from trainer.analysis.plots import plot_ic_accuracy, plot_tradeoff, plot_wise
from trainer.analysis.provenance import (
    backbone_folder,
    describe_backbones,
    describe_dataset,
    describe_training,
    shard_root,
)
from trainer.analysis.results import (
    Method,
    early_exit_curve,
    find_methods,
    fusion_accuracy,
    macs_unit,
    mean_std,
    segments_label,
)
from trainer.analysis.wise import WISE


def _pm(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    if np.isnan(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def main_table(methods: Sequence[Method], wise_method: Method, split: str) -> str:
    """Per exit: each method's single-exit top-1, then the WISE method's no-scaling and
    WISE top-1, and the cumulative GMACs per video; mean ± std over seeds, in %."""
    costs = np.mean([r["exit_costs"] for r in wise_method.seeds.values()], 0)
    scale, unit = macs_unit(costs.max())
    header = ["exit", *[f"{m.name} alone" for m in methods], f"{wise_method.name} no scaling",
              f"{wise_method.name} WISE", unit]
    singles = [mean_std(m.per_exit(split, "no_lateral")) for m in methods]
    scaled = mean_std(wise_method.per_exit(split, "no_scaling"))
    wise = mean_std(wise_method.per_exit(split, WISE))
    rows = []
    for k, name in enumerate(wise_method.exits):
        rows.append([name, *[_pm(mu[k], sd[k]) for mu, sd in singles], _pm(scaled[0][k], scaled[1][k]),
                     _pm(wise[0][k], wise[1][k]), f"{costs[k] / scale:.3f}"])
    return markdown_table(header, rows)


def _verdict(interval: Interval, ahead: str, behind: str) -> str:
    if interval.low > 0:
        return ahead
    if interval.high < 0:
        return behind
    return "no difference that the interval can tell from zero"


def conclusions(comparisons: Sequence[Comparison], wise_method: Method, split: str) -> list[str]:
    """The comparisons as plain sentences with their intervals."""
    out = []
    for c in comparisons:
        if c.kind == "ic" and c.exit == POOLED:
            per_ic = [x.interval for x in comparisons
                      if (x.kind, x.method, x.against) == ("ic", c.method, c.against) and x.exit != POOLED]
            ahead, behind = sum(i.low > 0 for i in per_ic), sum(i.high < 0 for i in per_ic)
            seeds = f"{c.interval.seeds} seed{'s' * (c.interval.seeds > 1)}"
            out.append(f"{c.name}: {c.interval.text()} points ({seeds} x {c.interval.videos} "
                       f"videos): {_verdict(c.interval, f'{c.method} is ahead', f'{c.method} is behind')}. Per IC, "
                       f"{c.method} is ahead on {ahead} of {len(per_ic)} and behind on {behind} with intervals "
                       f"excluding zero; the other {len(per_ic) - ahead - behind} "
                       f"{'is' if len(per_ic) - ahead - behind == 1 else 'are'} undecided.")
        elif c.kind == "best_single" or (c.kind == "no_scaling" and c.exit == POOLED):
            out.append(f"{c.name}: {c.interval.text()} points: {_verdict(c.interval, 'WISE is ahead', 'WISE is behind')}.")
    name, reference, cost = reference_point(wise_method, split)
    taus, acc, macs = early_exit_curve(wise_method, split, WISE)
    full = taus.index(1.0) if 1.0 in taus else len(taus) - 1
    scale, unit = macs_unit(macs.max())
    out.append(f"{name} {_pm(*mean_std(reference))}% at {cost / scale:.3f} {unit}; {wise_method.name} WISE without "
               f"early exit (tau = 1) {_pm(*mean_std(acc[:, full]))}% at {macs[:, full].mean() / scale:.3f} {unit} "
               "(it also runs every IC).")
    reaching = [i for i in range(len(taus)) if acc[:, i].mean() >= reference.mean()]
    if reaching:
        i = min(reaching, key=lambda j: macs[:, j].mean())
        out.append(f"Early exit: {wise_method.name} WISE reaches the mean accuracy of {name} at tau {taus[i]:.10g}, "
                   f"{_pm(*mean_std(acc[:, i]))}% at {macs[:, i].mean() / scale:.3f} {unit}, "
                   f"{macs[:, i].mean() / cost:.0%} of its cost (seed means).")
    else:
        out.append(f"Early exit: no threshold of {wise_method.name} WISE reaches the mean accuracy of {name}.")
    return out


def reference_point(method: Method, split: str) -> tuple[str, np.ndarray, float]:
    """What early exit is measured against: CoViAR's fusion of the three networks, or (for
    TEAM-Net, whose output is already a fusion) its output alone. (name, accuracy over seeds, MACs)."""
    if any(r["fusion"][split] for r in method.seeds.values()):
        acc, cost = fusion_accuracy(method, split)
        return "CoViAR fusion", acc, cost
    acc = method.per_exit(split, "no_lateral")[:, -1]
    cost = float(np.mean([r["exit_costs"][-1] for r in method.seeds.values()]))
    return f"{method.exits[-1]} alone", acc, cost


def run_comparisons(methods: Sequence[Method], chosen: Method, split: str) -> list[Comparison]:
    """Every method against ce on the ICs (on the seeds both have), and chosen's WISE comparisons."""
    segments = next(iter(chosen.seeds.values()))["default_segments"]
    by_name = {m.name: m for m in methods}
    out = []
    for m in methods:
        seeds = sorted(set(m.seeds) & set(by_name["ce"].seeds)) if "ce" in by_name and m.name != "ce" else []
        if seeds:
            out += ic_comparisons(m.name, [m.dirs[s] for s in seeds], "ce", [by_name["ce"].dirs[s] for s in seeds],
                                  split, segments, chosen.exits)
    return out + wise_comparisons(chosen.name, list(chosen.dirs.values()), split, segments, chosen.exits)


def _gate_lines(methods: Sequence[Method]) -> list[str]:
    found = sorted(d / GATE for m in methods for d in m.dirs.values() if (d / GATE).is_file())
    if not found:
        return ["No gate was checked for these runs (`cvtrain gate METHOD_DIR` on a CE method folder)."]
    result = json.loads(found[0].read_text())
    return [f"Checked by `cvtrain gate {found[0].parent}` before the other seeds were trained:", "", "```",
            format_gate(result), "```", "",
            "The comparisons below are in the regime the paper describes." if result["held"] else
            "**The gate did not hold**: the comparisons below are outside the regime the paper describes, "
            "so they do not test its claims as intended."]


DEFINITIONS = [
    "- Exits: R1..R4 are the residual network's IC1, IC2, IC3 and its own fc; MV1..MV4 and I1..I4 the same "
    "for the motion-vector and I-frame networks. Exits are ordered cheapest network first, as WISE uses them.",
    "- Single exit (no lateral): an exit's own logits, nothing from earlier exits.",
    "- No scaling: exit k answers with the mean of the raw logits of exits 1..k (all weights 1, divided by k).",
    "- WISE: exit k answers with a weighted sum of exits 1..k, the weights fit on the training split "
    "(R1 keeps its raw logits).",
    "- `a ± b`: the mean over IC-training seeds and the sample standard deviation between seeds.",
    "- `d [lo, hi]`: a difference in points of top-1 and its 95% paired bootstrap interval: seeds and test "
    "videos resampled with replacement, both sides of the difference on the same draw. An interval that "
    "excludes 0 is a difference these seeds and videos can tell apart from none.",
    "- Cost: multiply-accumulates per video, measured by running the modules, cumulative over the exits a "
    "video runs (the released code's plots instead sum over all test videos and UCF-101's three splits).",
]


def _chosen(run_dir: Path, methods: Sequence[Method], wise_method: str | None) -> Method:
    by_name = {m.name: m for m in methods}
    if wise_method is not None and wise_method not in by_name:
        raise FileNotFoundError(f"{run_dir}: no method {wise_method!r}; found {', '.join(by_name)}")
    return by_name.get(wise_method or "pkd", methods[-1])


def teamnet_lines(team_dir: Path, methods: Sequence[Method], chosen: Method, split: str) -> list[str]:
    """The report's TEAM-Net section: its conclusions, differences and main table."""
    comparisons = run_comparisons(methods, chosen, split)
    segments = next(iter(chosen.seeds.values()))["default_segments"]
    return [
        f"TEAM-Net's IC runs in `{team_dir}`: T1..T3 are its shared ICs (a Linear on the squeezed channel "
        "attention of the TEAM modules after the stem, layer1 and layer2), T4 its output (the sum of its three "
        f"heads); {segments_label(segments)} segments per video for its three streams.", "",
        *[f"- `{m.name}`: {m.description or 'see its IC runs'} ({len(m.seeds)} seed{'s' * (len(m.seeds) > 1)})"
          for m in methods], "",
        *[f"- {c}" for c in conclusions(comparisons, chosen, split)], "",
        markdown_table(COMPARISON_HEADER, comparison_rows(comparisons)), "",
        main_table(methods, chosen, split), "",
    ]


def write_report(run_dir: str | Path, *, split: str = "test", wise_method: str | None = None,
                 teamnet: str | Path | None = None) -> str:
    """Writes RUN_DIR/report/ and returns the main table (Markdown).

    Args:
        run_dir: the runs (see the module docstring).
        split: "test" or "val".
        wise_method: the method whose WISE figures are shown (default: pkd when present, else the last).
        teamnet: TEAM-Net's IC runs, laid out as RUN_DIR's: a section of their own, and their
            early-exit curves on the trade-off plot.
    """
    run_dir = Path(run_dir)
    methods = find_methods(run_dir)
    chosen = _chosen(run_dir, methods, wise_method)
    team = find_methods(teamnet) if teamnet else []
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    plot_ic_accuracy(methods, split, out / "ic_accuracy.png")
    plot_wise(chosen, split, out / "wise.png")
    plot_tradeoff(methods, chosen, split, out / "tradeoff.png", teamnet=team)
    team_section = teamnet_lines(Path(teamnet), team, _chosen(Path(teamnet), team, wise_method), split) if team else []
    table = main_table(methods, chosen, split)
    comparisons = run_comparisons(methods, chosen, split)
    seeds = sorted({s for m in methods for s in m.seeds})
    first = next(iter(chosen.seeds.values()))
    final_w = mean_std(np.array([[r["final_weights"][e] for e in chosen.exits] for r in chosen.seeds.values()]))
    taus, acc, macs = early_exit_curve(chosen, split, WISE)
    scale, unit = macs_unit(macs.max())
    sweep_rows = [[f"{t:.10g}", _pm(*mean_std(acc[:, i])), f"{macs[:, i].mean() / scale:.3f}"] for i, t in enumerate(taus)]
    flatness = flatness_lines(methods, backbone_folder(next(iter(chosen.dirs.values()))), out)
    lines = [
        f"# PKD and WISE on {run_dir}", "",
        "## Conclusions", "", *[f"- {c}" for c in conclusions(comparisons, chosen, split)], "",
        "## Data", "", *describe_dataset(shard_root(next(iter(chosen.dirs.values())))), "",
        "## What was trained", "", *describe_training([next(iter(m.dirs.values())) for m in methods]),
        *describe_backbones(next(iter(chosen.dirs.values()))),
        f"- Seeds: {', '.join(seeds)} (IC training seeds, on the same backbones; WISE is deterministic given "
        f"the logits). Split reported: {split}.",
        *[f"- `{m.name}`: {m.description or 'see its IC runs'} ({len(m.seeds)} seed{'s' * (len(m.seeds) > 1)})"
          for m in methods], "",
        "## Definitions", "", *DEFINITIONS, "",
        "## The gate", "", *_gate_lines(methods), "",
        "## Differences with intervals", "", markdown_table(COMPARISON_HEADER, comparison_rows(comparisons)), "",
        "## Main table", "",
        f"Each exit alone per method; `{chosen.name}`'s WISE and no-scaling ensembles at every exit; the cost per "
        f"video of reaching the exit (segments R/MV/I {segments_label(first['default_segments'])}); "
        "mean ± std over seeds, top-1 in %.", "",
        table, "",
        "## Internal classifiers", "", "![per-IC accuracy](ic_accuracy.png)", "",
        "## WISE and its ablations", "", "![WISE](wise.png)", "",
        f"Weights of the last exit's vector w^(12) in `{chosen.name}` (CoViAR's fusion uses 1 : 1 : 2 on R4, MV4, I4):",
        "", markdown_table(chosen.exits, [[_pm(mu, sd, scale=1, digits=2) for mu, sd in zip(*final_w, strict=True)]]),
        "",
        *(["## Flatness", "", *flatness] if flatness else []),
        *(["## TEAM-Net", "", *team_section] if team_section else []),
        "## Accuracy against cost", "", "![trade-off](tradeoff.png)", "",
        f"The cost axis is {unit} per video, measured. The released code's plots put a total over all test "
        "videos (and, for UCF-101, its three splits) on theirs: multiply ours by the number of test videos to "
        "compare.", "",
        f"{unit} per video. WISE early exit of `{chosen.name}` at segments {segments_label(first['default_segments'])}:",
        "", markdown_table(["tau", "top-1 (%)", unit], sweep_rows), "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    return table
