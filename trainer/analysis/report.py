"""`cvtrain report RUN_DIR`: the paper's figures as a Markdown report and PNG plots, each
as mean and spread over seeds.

Layout it reads (what scripts/paper_pipeline.sh writes):

    RUN_DIR/seed0/METHOD/wise/results.json     `cvtrain wise` of one method of one seed
    RUN_DIR/seed1/METHOD/...                   (METHOD: ce, pkd, an ablation, ...)

or RUN_DIR/METHOD/... for a single seed. A METHOD folder's IC runs (MODALITY/config.toml)
name its loss and teacher schedule. Writes RUN_DIR/report/: report.md, ic_accuracy.png
(per-network, per-IC test top-1 of each method), wise.png (WISE vs no scaling vs single
exits), tradeoff.png (accuracy against GMACs per video under early exit, with CoViAR's
fusion), and returns the main table, which the command prints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.analysis.wise import EXIT_NAMES, ORDER, VARIANTS, WISE
from trainer.config import load_config

KNOWN_METHODS = ("ce", "pkd", "pkd_anti", "pkd_iframe")  # listed first, in this order
VARIANT_LABELS = {"wise": "WISE", "no_scaling": "no scaling", "no_lateral": "single exit (no lateral)"}
NETWORK_LABELS = {"residual": "residual (R)", "mv": "motion vectors (MV)", "iframe": "I-frame (I)"}


@dataclass
class Method:
    """One method's results over seeds (seed name -> results.json contents)."""

    name: str
    description: str
    seeds: dict[str, dict[str, Any]]

    def per_exit(self, split: str, variant: str) -> np.ndarray:
        """(seeds, 12) per-exit accuracy of a variant at the default segment counts."""
        return np.array([r["accuracy"][split][variant] for r in self.seeds.values()])


def _describe(method_dir: Path) -> str:
    """The loss and teacher schedule the method's IC runs were trained with."""
    configs = sorted(method_dir.glob("*/config.toml"))
    if not configs:
        return ""
    ic = load_config(configs[0]).ic
    if ic.method == "ce":
        return "cross-entropy on labels"
    phases = " -> ".join(f"{t} (from epoch {e})" for t, e in zip(ic.teachers, [0, *ic.teacher_epochs], strict=True))
    label = f", label weight {ic.label_weight:g}" if ic.label_weight else ""
    return f"PKD, T = {ic.temperature:g}{label}: {phases}"


def find_methods(run_dir: str | Path) -> list[Method]:
    """The methods under RUN_DIR/seed*/ (or RUN_DIR itself as one seed) with WISE results."""
    run_dir = Path(run_dir)
    seed_dirs = sorted(p for p in run_dir.glob("seed*") if p.is_dir()) or [run_dir]
    methods: dict[str, Method] = {}
    for seed_dir in seed_dirs:
        for results in sorted(seed_dir.glob("*/wise/results.json")):
            method_dir = results.parent.parent
            m = methods.setdefault(method_dir.name, Method(method_dir.name, _describe(method_dir), {}))
            m.seeds[seed_dir.name] = json.loads(results.read_text())
    if not methods:
        raise FileNotFoundError(f"{run_dir}: no METHOD/wise/results.json under seed*/ or here "
                                "(run `cvtrain logits` and `cvtrain wise` first)")
    order = {name: i for i, name in enumerate(KNOWN_METHODS)}
    return sorted(methods.values(), key=lambda m: (order.get(m.name, len(order)), m.name))


def mean_std(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation over seeds (NaN for a single seed: no spread known)."""
    values = np.asarray(values, dtype=np.float64)
    std = values.std(axis, ddof=1) if values.shape[axis] > 1 else np.full(np.delete(values.shape, axis), np.nan)
    return values.mean(axis), std


def macs_unit(largest: float) -> tuple[float, str]:
    """GMACs, or MMACs for networks too small for GMACs to read (the synthetic dataset's)."""
    return (1e9, "GMACs") if largest >= 1e8 else (1e6, "MMACs")


def _pm(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    if np.isnan(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


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
    for k, name in enumerate(EXIT_NAMES):
        rows.append([name, *[_pm(mu[k], sd[k]) for mu, sd in singles], _pm(scaled[0][k], scaled[1][k]),
                     _pm(wise[0][k], wise[1][k]), f"{costs[k] / scale:.3f}"])
    return _table(header, rows)


def _fusion(method: Method, split: str, segments: Mapping[str, int] | None = None) -> tuple[np.ndarray, float]:
    """Accuracy over seeds and cost of CoViAR's fusion at `segments` (default: the default counts)."""
    acc, cost = [], 0.0
    for r in method.seeds.values():
        want = segments or r["default_segments"]
        (point,) = [f for f in r["fusion"][split] if f["segments"] == want]
        acc.append(point["accuracy"])
        cost = point["macs"]
    return np.array(acc), cost


def _curve(method: Method, split: str, variant: str, segments: Mapping[str, int] | None = None
           ) -> tuple[list[float], np.ndarray, np.ndarray]:
    """(taus, accuracy (seeds, taus), MACs (seeds, taus)) of early exit at `segments`."""
    taus, acc, macs = None, [], []
    for r in method.seeds.values():
        want = segments or r["default_segments"]
        points = [p for p in r["sweep"][split] if p["variant"] == variant and p["segments"] == want]
        taus = [p["tau"] for p in points]
        acc.append([p["accuracy"] for p in points])
        macs.append([p["macs"] for p in points])
    return taus or [], np.array(acc), np.array(macs)


def _segments_label(segments: Mapping[str, int]) -> str:
    return "/".join(str(segments[m]) for m in ORDER)


def _beyond_spread(mu: np.ndarray, sd: np.ndarray, seeds: int) -> str:
    """How many differences exceed the seeds' spread of the difference, either way."""
    if seeds < 2:
        return "one seed, so no spread to compare with"
    return (f"ahead by more than the seeds' spread of the difference on {int((mu > sd).sum())}, "
            f"behind by more on {int((-mu > sd).sum())} ({seeds} seeds)")


def findings(methods: Sequence[Method], wise_method: Method, split: str) -> list[str]:
    """What the figures say, in numbers: paired differences over seeds (same seed name)."""
    out = []
    by_name = {m.name: m for m in methods}
    ics = [k for k, name in enumerate(EXIT_NAMES) if not name.endswith("4")]
    for m in methods:
        seeds = sorted(set(by_name["ce"].seeds) & set(m.seeds)) if "ce" in by_name and m.name != "ce" else []
        if not seeds:
            continue
        diff = np.array([np.array(m.seeds[s]["accuracy"][split]["no_lateral"])[ics]
                         - np.array(by_name["ce"].seeds[s]["accuracy"][split]["no_lateral"])[ics] for s in seeds])
        mu, sd = mean_std(diff)
        out.append(f"{m.name} vs ce, the 9 ICs: mean difference {mu.mean() * 100:+.1f} points "
                   f"(per IC from {mu.min() * 100:+.1f} to {mu.max() * 100:+.1f}); {m.name} is ahead on "
                   f"{int((mu > 0).sum())} of 9 by the seed mean; {_beyond_spread(mu, sd, len(seeds))}.")
    for other in ("no_lateral", "no_scaling"):
        diff = wise_method.per_exit(split, WISE) - wise_method.per_exit(split, other)
        mu, sd = mean_std(diff)
        out.append(f"{wise_method.name}: WISE vs {VARIANT_LABELS[other]}: mean difference over the 12 exits "
                   f"{mu.mean() * 100:+.1f} points; ahead on {int((mu > 0).sum())} of 12; "
                   f"{_beyond_spread(mu, sd, len(diff))}.")
    fusion, cost = _fusion(wise_method, split)
    taus, acc, macs = _curve(wise_method, split, WISE)
    full = taus.index(1.0) if 1.0 in taus else len(taus) - 1
    scale, unit = macs_unit(macs.max())
    out.append(f"CoViAR fusion {_pm(*mean_std(fusion))}% at {cost / scale:.3f} {unit}; WISE without early exit "
               f"(tau = 1) {_pm(*mean_std(acc[:, full]))}% at {macs[:, full].mean() / scale:.3f} {unit} (it also "
               "runs every IC).")
    return out


# --------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ic_accuracy(methods: Sequence[Method], split: str, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(ORDER), figsize=(13, 4.2), sharey=True)
    width = 0.8 / len(methods)
    for n, (ax, modality) in enumerate(zip(axes, ORDER, strict=True)):
        for i, m in enumerate(methods):
            mu, sd = mean_std(m.per_exit(split, "no_lateral")[:, 4 * n:4 * n + 4])
            x = np.arange(4) + (i - (len(methods) - 1) / 2) * width
            ax.bar(x, mu * 100, width, yerr=sd * 100, capsize=3, label=m.name)
        ax.set_xticks(range(4), ["IC1", "IC2", "IC3", "fc"])
        ax.set_title(NETWORK_LABELS[modality])
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"{split} top-1 (%)")
    axes[-1].legend(title="IC training", fontsize=9)
    fig.suptitle(f"Each exit alone: mean ± std over {len(methods[0].seeds)} seeds (fc is the frozen backbone's)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_wise(method: Method, split: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    x = np.arange(len(EXIT_NAMES))
    for variant, style in zip(("no_lateral", "no_scaling", WISE), ("o:", "s--", "D-"), strict=True):
        mu, sd = mean_std(method.per_exit(split, variant))
        ax.plot(x, mu * 100, style, label=VARIANT_LABELS[variant])
        ax.fill_between(x, (mu - sd) * 100, (mu + sd) * 100, alpha=0.15)
    for boundary in (3.5, 7.5):
        ax.axvline(boundary, color="grey", lw=0.8)
    ax.set_xticks(x, EXIT_NAMES)
    ax.set_xlabel("exit (cheapest network first)")
    ax.set_ylabel(f"{split} top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{method.name}: WISE vs its ablations at every exit, mean ± std over {len(method.seeds)} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(method: Method, split: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(12, 5.5))
    first = next(iter(method.seeds.values()))
    combos = [p["segments"] for p in first["fusion"][split]]
    scale, unit = macs_unit(max(p["macs"] for p in first["sweep"][split]))
    for segments in combos:  # every segment combination, WISE's curve as faint points
        _, acc, macs = _curve(method, split, WISE, segments)
        ax.plot(macs.mean(0) / scale, acc.mean(0) * 100, ".", color="0.7", ms=5)
    ax.plot([], [], ".", color="0.7", label="WISE at the other segment counts")
    for variant, marker in zip(VARIANTS, ("D", "s", "o"), strict=True):
        taus, acc, macs = _curve(method, split, variant)
        (mu, sd), (cmu, csd) = mean_std(acc), mean_std(macs)
        ax.errorbar(cmu / scale, mu * 100, yerr=sd * 100, xerr=csd / scale, fmt=f"{marker}-", ms=4, capsize=2,
                    label=f"{VARIANT_LABELS[variant]}, tau {taus[0]:g} to {taus[-1]:g}")
    largest = max(combos, key=lambda s: sum(s.values()))
    fusions = {_segments_label(first["default_segments"]): (first["default_segments"], "*")}
    fusions.setdefault(_segments_label(largest), (largest, "P"))
    for segments, marker in fusions.values():
        acc, cost = _fusion(method, split, segments)
        mu, sd = mean_std(acc)
        ax.errorbar([cost / scale], [mu * 100], yerr=[sd * 100], fmt=marker, ms=14, color="crimson", capsize=3,
                    label=f"CoViAR fusion 2:1:1, segments {_segments_label(segments)}")
    ax.set_xlabel(f"{unit} per video (measured; cumulative over the exits a video runs)")
    ax.set_ylabel(f"{split} top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # off the curves
    ax.set_title(f"{method.name}: early exit, segments R/MV/I {_segments_label(first['default_segments'])}; "
                 f"mean ± std over {len(method.seeds)} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------- report


def write_report(run_dir: str | Path, *, split: str = "test", wise_method: str | None = None) -> str:
    """Writes RUN_DIR/report/ and returns the main table (Markdown).

    Args:
        run_dir: the runs (see the module docstring).
        split: "test" or "val".
        wise_method: the method whose WISE figures are shown (default: pkd when present, else the last).
    """
    run_dir = Path(run_dir)
    methods = find_methods(run_dir)
    by_name = {m.name: m for m in methods}
    if wise_method is not None and wise_method not in by_name:
        raise FileNotFoundError(f"{run_dir}: no method {wise_method!r}; found {', '.join(by_name)}")
    chosen = by_name.get(wise_method or "pkd", methods[-1])
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    plot_ic_accuracy(methods, split, out / "ic_accuracy.png")
    plot_wise(chosen, split, out / "wise.png")
    plot_tradeoff(chosen, split, out / "tradeoff.png")
    table = main_table(methods, chosen, split)
    seeds = sorted({s for m in methods for s in m.seeds})
    first = next(iter(chosen.seeds.values()))
    final_w = mean_std(np.array([[r["final_weights"][e] for e in EXIT_NAMES] for r in chosen.seeds.values()]))
    taus, acc, macs = _curve(chosen, split, WISE)
    scale, unit = macs_unit(macs.max())
    sweep_rows = [[f"{t:.10g}", _pm(*mean_std(acc[:, i])), f"{macs[:, i].mean() / scale:.3f}"] for i, t in enumerate(taus)]
    lines = [
        f"# PKD and WISE on {run_dir}", "",
        f"Seeds: {', '.join(seeds)} (IC training seeds; WISE is deterministic given the logits). "
        f"Split: {split}. Every figure is the mean ± sample standard deviation over the seeds, top-1 in %.", "",
        "Methods:", *[f"- `{m.name}`: {m.description or 'see its IC runs'} ({len(m.seeds)} seed{'s' * (len(m.seeds) > 1)})"
                     for m in methods],
        "", "## Main table", "",
        f"Each exit alone per method; `{chosen.name}`'s WISE and no-scaling ensembles at every exit; the cost per "
        f"video of reaching the exit (segments R/MV/I {_segments_label(first['default_segments'])}).", "",
        table, "", "## What the figures say", "", *[f"- {f}" for f in findings(methods, chosen, split)], "",
        "## Internal classifiers", "", "![per-IC accuracy](ic_accuracy.png)", "",
        "## WISE and its ablations", "", "![WISE](wise.png)", "",
        f"Weights of the last exit's vector w^(12) in `{chosen.name}` (CoViAR's fusion uses 1 : 1 : 2 on R4, MV4, I4):",
        "", _table(list(EXIT_NAMES), [[_pm(mu, sd, scale=1, digits=2) for mu, sd in zip(*final_w, strict=True)]]), "",
        "## Accuracy against cost", "", "![trade-off](tradeoff.png)", "",
        f"WISE early exit at segments {_segments_label(first['default_segments'])}:", "",
        _table(["tau", "top-1 (%)", unit], sweep_rows), "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    return table
