"""The WISE results of IC methods over seeds, as `cvtrain wise` wrote them.

Layout read (what scripts/paper_pipeline.sh writes):

    RUN_DIR/seed0/METHOD/wise/results.json     `cvtrain wise` of one method of one seed
    RUN_DIR/seed1/METHOD/...                   (METHOD: ce, pkd, an ablation, ...)

or RUN_DIR/METHOD/... for a single seed. A METHOD folder's IC runs (MODALITY/config.toml)
name its loss and teacher schedule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.analysis.wise import ORDER
from trainer.config import load_config

KNOWN_METHODS = ("ce", "pkd", "pkd_anti", "pkd_iframe")  # listed first, in this order


@dataclass
class Method:
    """One method's results over seeds (seed name -> results.json contents)."""

    name: str
    description: str
    seeds: dict[str, dict[str, Any]]
    dirs: dict[str, Path]  # seed name -> the method's folder of that seed

    @property
    def exits(self) -> list[str]:
        """The exits' names, in order (R1..I4, or TEAM-Net's T1..T4)."""
        return next(iter(self.seeds.values()))["exits"]

    def per_exit(self, split: str, variant: str) -> np.ndarray:
        """(seeds, exits) per-exit accuracy of a variant at the default segment counts."""
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
            m = methods.setdefault(method_dir.name, Method(method_dir.name, _describe(method_dir), {}, {}))
            m.seeds[seed_dir.name] = json.loads(results.read_text())
            m.dirs[seed_dir.name] = method_dir
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


def fusion_accuracy(method: Method, split: str, segments: Mapping[str, int] | None = None) -> tuple[np.ndarray, float]:
    """Accuracy over seeds and cost of CoViAR's fusion at `segments` (default: the default counts)."""
    acc, cost = [], 0.0
    for r in method.seeds.values():
        want = segments or r["default_segments"]
        (point,) = [f for f in r["fusion"][split] if f["segments"] == want]
        acc.append(point["accuracy"])
        cost = point["macs"]
    return np.array(acc), cost


def early_exit_curve(method: Method, split: str, variant: str, segments: Mapping[str, int] | None = None
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


def segments_label(segments: Mapping[str, int]) -> str:
    """R/MV/I segment counts as "3/3/3" (TEAM-Net's one count as itself)."""
    return "/".join(str(segments[m]) for m in ORDER if m in segments) or "/".join(map(str, segments.values()))
