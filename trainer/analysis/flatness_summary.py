"""The report's flatness section: what `cvtrain flatness` wrote in the backbones' and the
IC runs' folders (RUN/flatness/flatness.json), as tables over seeds (the backbones' own
training seeds: BACKBONES and BACKBONES/seeds/seedN), the paper's two orderings checked in
words, and the first seed's backbone loss curves on one plot (flatness.png)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.analysis.flatness import STEPS, Measurement, plot_curves
from trainer.analysis.markdown import markdown_table
from trainer.analysis.provenance import NETWORK
from trainer.analysis.results import Method, mean_std
from trainer.models.exits import IC_EXITS

ORDER = ("iframe", "residual", "mv")   # the paper's claim: flattest first
RISE_AT = 0.5  # the curves' summary: the mean loss increase at alpha = -0.5 and +0.5
COLOURS = {"iframe": "tab:blue", "residual": "tab:orange", "mv": "tab:green"}


def read_measurements(run_dir: Path) -> dict[str, Measurement] | None:
    path = run_dir / "flatness" / "flatness.json"
    if not path.is_file():
        return None
    return {m["name"]: Measurement(**m) for m in json.loads(path.read_text())["measurements"]}


def rise(m: Measurement) -> float:
    """How much the loss rises RISE_AT along the filter-normalised directions, both ways, on average."""
    at = [STEPS.index(-RISE_AT), STEPS.index(RISE_AT)]
    return float(np.mean([curve[i] for curve in m.curves for i in at])) - m.loss


def _cells(values: Sequence[Measurement]) -> list[str]:
    def pm(xs: list[float], fmt: str) -> str:
        mean, std = mean_std(np.array(xs))
        return format(float(mean), fmt) if np.isnan(std) else f"{float(mean):{fmt}} ± {float(std):{fmt}}"

    return [str(len(values)), pm([m.trace_per_parameter for m in values], ".2e"),
            pm([m.top_eigenvalue for m in values], ".3g"), pm([rise(m) for m in values], ".3f")]


HEADER = ["network", "part", "method", "seeds", "trace / parameter", "top eigenvalue", f"loss rise at ±{RISE_AT}"]


def _ordered(means: dict[str, float]) -> bool:
    return all(means[a] < means[b] for a, b in zip(ORDER, ORDER[1:]))


SEEDS = "seeds"  # BACKBONES/seeds/seedN/{iframe,mv,residual}: more training seeds of the backbones


def backbone_seeds(backbones: Path) -> list[Path]:
    """The backbone folders measured for flatness: BACKBONES itself and BACKBONES/seeds/seed*."""
    extra = sorted((backbones / SEEDS).glob("seed*"), key=lambda p: (len(p.name), p.name))
    return [backbones, *(p for p in extra if p.is_dir())]


def flatness_lines(methods: Sequence[Method], backbones: Path | None, out: Path) -> list[str]:
    """Markdown lines (empty when nothing was measured); writes out/flatness.png."""
    rows, lines = [], []
    per_seed = []  # modality -> the network's measurement, one dict per backbone seed measured for all three
    for folder in backbone_seeds(backbones) if backbones else []:
        found = {m: read_measurements(folder / m) for m in ORDER}
        if all(found.values()):
            per_seed.append({m: f["network"] for m, f in found.items()})
    for modality in ORDER if per_seed else ():
        rows.append([NETWORK[modality], "network", "", *_cells([seed[modality] for seed in per_seed])])
    if per_seed:
        n = len(per_seed)
        for label, key in (("trace per parameter", "trace_per_parameter"), ("top eigenvalue", "top_eigenvalue")):
            means = {m: float(np.mean([getattr(seed[m], key) for seed in per_seed])) for m in ORDER}
            held = sum(_ordered({m: getattr(seed[m], key) for m in ORDER}) for seed in per_seed)
            lines.append(f"- Backbones by {label}: the paper's order, I-frame flattest, then residual, then MV, "
                         f"{'shows' if _ordered(means) else 'does NOT show'} in the means over {n} training "
                         f"seed{'s' if n > 1 else ''}; it holds in {held} of {n} seeds on their own.")
        plot_curves({NETWORK[k]: m for k, m in per_seed[0].items()}, out / "flatness.png",
                    "Backbones: loss around the trained weights",
                    colours={NETWORK[k]: c for k, c in COLOURS.items()})
    ic_means: dict[tuple[str, str, str], float] = {}
    for method in methods:
        for modality in ORDER:
            found = [read_measurements(d / modality) for d in method.dirs.values()]
            found = [f for f in found if f]
            for ic in IC_EXITS if found else ():
                values = [f[ic] for f in found]
                rows.append([NETWORK[modality], ic.upper(), method.name, *_cells(values)])
                ic_means[method.name, modality, ic] = float(np.mean([v.trace_per_parameter for v in values]))
    pairs = [(ic_means["pkd", m, ic], ic_means["ce", m, ic]) for m in ORDER for ic in IC_EXITS
             if ("pkd", m, ic) in ic_means and ("ce", m, ic) in ic_means]
    if pairs:
        flatter = sum(pkd < ce for pkd, ce in pairs)
        lines.append(f"- ICs: PKD's are flatter than CE's (lower mean trace per parameter over seeds) on {flatter} "
                     f"of {len(pairs)} ICs.")
    if not rows:
        return []
    return ["Measured by `cvtrain flatness` on the first training batches, BatchNorm in eval mode, the "
            "cross-entropy on labels (for ICs the same for CE and PKD); mean ± std over seeds. A network's "
            "numbers are over all its weights, an IC's over its own.", "", *lines, "",
            markdown_table(HEADER, rows), "",
            *(["![backbones' loss curves (the first seed)](flatness.png)", ""] if per_seed else [])]
