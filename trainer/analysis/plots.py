"""The report's plots: per-IC accuracy, WISE against its ablations, accuracy against cost.

Each method and each WISE variant has one colour, the same in every plot; legends sit
outside the axes, off the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.analysis.results import Method, early_exit_curve, fusion_accuracy, macs_unit, mean_std, segments_label
from trainer.analysis.wise import ORDER, VARIANTS, WISE

VARIANT_LABELS = {"wise": "WISE", "no_scaling": "no scaling", "no_lateral": "single exit (no lateral)"}
METHOD_COLOURS = {"ce": "tab:blue", "pkd": "tab:orange", "pkd_anti": "tab:green", "pkd_iframe": "tab:purple"}
VARIANT_COLOURS = {"wise": "tab:red", "no_scaling": "tab:olive", "no_lateral": "tab:gray"}
FUSION_COLOUR = "black"
NETWORK_LABELS = {"residual": "residual (R)", "mv": "motion vectors (MV)", "iframe": "I-frame (I)"}


def _method_colour(name: str) -> str:
    return METHOD_COLOURS.get(name, "tab:brown")


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
            ax.bar(x, mu * 100, width, yerr=sd * 100, capsize=3, label=m.name, color=_method_colour(m.name))
        ax.set_xticks(range(4), ["IC1", "IC2", "IC3", "fc"])
        ax.set_title(NETWORK_LABELS[modality])
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"{split} top-1 (%)")
    axes[-1].legend(title="IC training", fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"Each exit alone: mean ± std over {len(methods[0].seeds)} seeds (fc is the frozen backbone's)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_wise(method: Method, split: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    x = np.arange(len(method.exits))
    for variant, style in zip(("no_lateral", "no_scaling", WISE), ("o:", "s--", "D-"), strict=True):
        mu, sd = mean_std(method.per_exit(split, variant))
        colour = VARIANT_COLOURS[variant]
        ax.plot(x, mu * 100, style, label=VARIANT_LABELS[variant], color=colour)
        ax.fill_between(x, (mu - sd) * 100, (mu + sd) * 100, alpha=0.15, color=colour)
    for boundary in (3.5, 7.5):
        ax.axvline(boundary, color="grey", lw=0.8)
    ax.set_xticks(x, method.exits)
    ax.set_xlabel("exit (cheapest network first)")
    ax.set_ylabel(f"{split} top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(f"{method.name}: WISE vs its ablations at every exit, mean ± std over {len(method.seeds)} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(methods: Sequence[Method], method: Method, split: str, path: Path,
                  teamnet: Sequence[Method] = ()) -> None:
    """Every method's WISE curve under early exit, `method`'s ablations and CoViAR's fusion;
    and TEAM-Net's methods' WISE curves (dashed, in their method's colour)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(12, 5.5))
    first = next(iter(method.seeds.values()))
    combos = [p["segments"] for p in first["fusion"][split]]
    scale, unit = macs_unit(max(p["macs"] for p in first["sweep"][split]))
    for segments in combos:  # every segment combination, WISE's curve as faint points
        _, acc, macs = early_exit_curve(method, split, WISE, segments)
        ax.plot(macs.mean(0) / scale, acc.mean(0) * 100, ".", color="0.7", ms=5)
    ax.plot([], [], ".", color="0.7", label="WISE at the other segment counts")
    curves = [(m, WISE, _method_colour(m.name), "-", "") for m in methods]
    curves += [(method, v, VARIANT_COLOURS[v], "-", "") for v in VARIANTS if v != WISE]
    curves += [(m, WISE, _method_colour(m.name), "--", "TEAM-Net ") for m in teamnet]
    for m, variant, colour, line, backbone in curves:
        taus, acc, macs = early_exit_curve(m, split, variant)
        (mu, sd), (cmu, csd) = mean_std(acc), mean_std(macs)
        marker = {"wise": "D" if not backbone else "v", "no_scaling": "s", "no_lateral": "o"}[variant]
        ax.errorbar(cmu / scale, mu * 100, yerr=sd * 100, xerr=csd / scale, fmt=f"{marker}{line}", ms=4, capsize=2,
                    color=colour,
                    label=f"{backbone}{m.name} {VARIANT_LABELS[variant]}, tau {taus[0]:g} to {taus[-1]:g}")
    largest = max(combos, key=lambda s: sum(s.values()))
    fusions = {segments_label(first["default_segments"]): (first["default_segments"], "*")}
    fusions.setdefault(segments_label(largest), (largest, "P"))
    for segments, marker in fusions.values():
        acc, cost = fusion_accuracy(method, split, segments)
        mu, sd = mean_std(acc)
        ax.errorbar([cost / scale], [mu * 100], yerr=[sd * 100], fmt=marker, ms=14, color=FUSION_COLOUR, capsize=3,
                    label=f"CoViAR fusion 2:1:1, segments {segments_label(segments)}")
    # Per video: the released plots sum over all test videos (and UCF-101's three splits).
    ax.set_xlabel(f"{unit} per video (measured; cumulative over the exits a video runs)")
    ax.set_ylabel(f"{split} top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # off the curves
    team = f"; TEAM-Net dashed, {len(teamnet[0].seeds)} seeds" if teamnet else ""
    ax.set_title(f"early exit (faint points: {method.name} WISE at other segment counts), segments R/MV/I "
                 f"{segments_label(first['default_segments'])};\nmean ± std over {len(method.seeds)} seeds{team}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
