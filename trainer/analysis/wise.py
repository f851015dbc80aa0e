"""WISE (Weighted Inference with Scaled Ensemble), its ablations, early exit and cost.

The 12 exits are ordered R1..R4, MV1..MV4, I1..I4 (cheapest network first, REFERENCE.md
section 1); a TEAM-Net method folder has four, T1..T3 (its shared ICs) and T4 (its
output). Exit k scores a video with `s_k = sum_{j<=k} w_j^(k) z_j` over the raw
segment-averaged logits z_j of every exit up to k, earlier networks included. The first
exit answers with its raw logits (w^(0) = 1); every later w^(k) is fit on the training
split's logits by full-batch SGD (lr 0.1, 500 iterations, from ones) on
`CE(s_k, y) + alpha * |w^(k)|_1`, alpha 0 for the first `unpenalised` vectors (the
authors: five, up to the one ending at MV1). Ablations: "no_scaling" (all weights 1, the
sum divided by k) and "no_lateral" (each exit alone, s_k = z_k).

Early exit: a video leaves at the first exit whose max softmax(s_k) reaches tau (tau = 1.0:
never early; the last exit always answers). Its cost is the MACs of everything it ran:
per network, stages run once per segment, and every IC on the way is evaluated
(`ExitCosts.to_exit`), so reaching MV3 costs all of the residual network with its three
ICs plus the MV stem, layer1..3 and IC1..3, each network times its segments per video.
The weighted sums themselves (k x K multiply-adds) are left out: under 1e-4 of a stage.
CoViAR's fusion (2 I + 1 MV + 1 R on final logits) runs the three backbones without ICs.

`cvtrain wise METHOD` reads METHOD/logits (`cvtrain logits`) and writes METHOD/wise/:
weights.npz (the E x E lower-triangular W, row k = w^(k)) and results.json (per-exit
accuracy of each variant, the early-exit sweep over tau and segment counts, fusion).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainer.analysis.evaluate import DEFAULT_FUSION_WEIGHTS, find_runs, fuse
from trainer.analysis.logits import COSTS, LOGITS, load_logits
from trainer.config import Config, ConfigError, WiseConfig, load_config
from trainer.models.build import TEAMNET
from trainer.models.exits import EXITS, ExitCosts

ORDER = ("residual", "mv", "iframe")  # the CoViAR networks, cheapest first
SHORT = {"residual": "R", "mv": "MV", "iframe": "I", TEAMNET: "T"}


def exit_names(networks: Sequence[str]) -> tuple[str, ...]:
    """R1..R4, MV1..MV4, I1..I4 for the CoViAR networks; T1..T4 for TEAM-Net."""
    return tuple(f"{SHORT[n]}{j}" for n in networks for j in range(1, len(EXITS) + 1))


EXIT_NAMES = exit_names(ORDER)
VARIANTS = ("wise", "no_scaling", "no_lateral")
WISE = "wise"


# ------------------------------------------------------------------------------- fitting


@contextmanager
def _one_thread() -> Iterator[None]:
    """500 steps of a problem this small gain nothing from intra-op threads, and on a
    busy machine their synchronisation costs 20-50x (measured on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@_one_thread()
def fit_vector(z: np.ndarray, labels: np.ndarray, *, alpha: float, lr: float = 0.1, iterations: int = 500,
               clip_negative: bool = False) -> np.ndarray:
    """One weight vector over the exits of z (N, k, K): full-batch SGD from ones on
    CE(sum_j w_j z_j, y) + alpha * |w|_1, in float64; with `clip_negative` the negative
    weights are set to zero once, after fitting (the authors' TEAM-Net variant)."""
    zt = torch.from_numpy(np.asarray(z, dtype=np.float64))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    w = torch.ones(zt.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=lr)
    for _ in range(iterations):
        loss = F.cross_entropy(torch.einsum("j,njc->nc", w, zt), y) + alpha * w.abs().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fitted = w.detach().numpy()
    return fitted.clip(min=0) if clip_negative else fitted


def fit_wise(z: np.ndarray, labels: np.ndarray, cfg: WiseConfig) -> np.ndarray:
    """W (E, E), lower triangular: row k is w^(k) over exits 0..k, fit on z (N, E, K);
    the first exit keeps its raw logits (w^(0) = 1, as the authors' code)."""
    exits = z.shape[1]
    weights = np.zeros((exits, exits))
    weights[0, 0] = 1.0
    for k in range(1, exits):
        alpha = 0.0 if k < cfg.unpenalised else cfg.alpha
        weights[k, :k + 1] = fit_vector(z[:, :k + 1], labels, alpha=alpha, lr=cfg.lr, iterations=cfg.iterations,
                                        clip_negative=cfg.clip_negative)
    return weights


def variant_weights(variant: str, fitted: np.ndarray) -> np.ndarray:
    """The (E, E) weights of a variant: WISE's fitted ones, or an ablation's."""
    exits = fitted.shape[0]
    if variant == WISE:
        return fitted
    if variant == "no_scaling":
        return np.tril(np.ones((exits, exits))) / np.arange(1, exits + 1)[:, None]
    if variant == "no_lateral":
        return np.eye(exits)
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")


def combine(z: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """s (N, E, K): s[:, k] = sum_j weights[k, j] * z[:, j]."""
    return np.einsum("kj,njc->nkc", weights, np.asarray(z, dtype=np.float64))


# ---------------------------------------------------------------------- early exit, cost


def exit_costs(costs: Mapping[str, Mapping[str, Any]], segments: Mapping[str, int],
               networks: Sequence[str] = ORDER) -> np.ndarray:
    """Cumulative MACs per video of leaving at each exit of `networks` in order, with
    `segments` segments per video for each network (see the module docstring)."""
    out, before = [], 0
    for n in networks:
        c = ExitCosts(tuple(costs[n]["stages"]), tuple(costs[n]["heads"]), costs[n].get("first_ic_after", 1))
        out += [before + segments[n] * c.to_exit(j) for j in range(len(EXITS))]
        before += segments[n] * c.to_exit(len(EXITS) - 1)
    return np.array(out, dtype=np.float64)


def fusion_cost(costs: Mapping[str, Mapping[str, Any]], segments: Mapping[str, int]) -> float:
    """MACs per video of the three backbones alone (no ICs), as CoViAR's fusion runs them."""
    return float(sum(segments[m] * sum(costs[m]["stages"]) for m in ORDER))


def early_exit(scores: np.ndarray, labels: np.ndarray, costs: np.ndarray, tau: float) -> dict[str, Any]:
    """Accuracy and mean cost when each video leaves at the first exit with max
    softmax(s_k) >= tau (tau >= 1: only the last exit answers).

    Args:
        scores: (N, E, K) the s_k of every exit.
        labels: (N,) classes.
        costs: (E,) cumulative MACs per video of leaving at each exit.
        tau: the confidence threshold.
    """
    s = np.asarray(scores, dtype=np.float64)
    n, exits = s.shape[:2]
    if tau >= 1.0:
        leave = np.full(n, exits - 1)
    else:
        shifted = s - s.max(-1, keepdims=True)
        confidence = 1.0 / np.exp(shifted).sum(-1)  # max softmax, in float64
        passes = confidence >= tau
        passes[:, -1] = True
        leave = passes.argmax(1)
    predicted = s[np.arange(n), leave].argmax(-1)
    return {"tau": tau, "accuracy": float((predicted == labels).mean()), "macs": float(costs[leave].mean()),
            "exit_fraction": (np.bincount(leave, minlength=exits) / n).tolist()}


def accuracy_per_exit(scores: np.ndarray, labels: np.ndarray) -> list[float]:
    return (scores.argmax(-1) == labels[:, None]).mean(0).tolist()


# ------------------------------------------------------------------------------ the run


def networks_of(method_dir: Path) -> tuple[str, ...]:
    """The networks whose exits a method folder's WISE combines: the three CoViAR ones,
    cheapest first, or TEAM-Net alone."""
    found = set(find_runs(method_dir))
    if found == {TEAMNET}:
        return (TEAMNET,)
    missing = [m for m in ORDER if m not in found]
    if missing or found - set(ORDER):
        raise FileNotFoundError(f"{method_dir}: IC runs of {', '.join(sorted(found))}; WISE needs the three "
                                f"CoViAR networks (missing: {', '.join(missing) or 'none'}) or one TEAM-Net")
    return ORDER


def wise_config(method_dir: Path, overrides: Sequence[str] = ()) -> tuple[WiseConfig, dict[str, Config]]:
    """The [wise] section the method folder's runs agree on (after `overrides`), and each run's config."""
    configs = {m: load_config(run / "config.toml", overrides) for m, run in find_runs(method_dir).items()}
    first, *rest = networks_of(method_dir)
    for m in rest:
        if configs[m].wise != configs[first].wise:
            a, b = dataclasses.asdict(configs[first].wise), dataclasses.asdict(configs[m].wise)
            key = next(k for k in a if a[k] != b[k])
            raise ConfigError(f"{method_dir}: the {first} and {m} runs disagree on wise.{key} "
                              f"({a[key]!r} vs {b[key]!r}); set it with --set wise.{key}=...")
    return configs[first].wise, configs


def stack_logits(method_dir: Path, split: str, segments: Mapping[str, int], networks: Sequence[str] = ORDER
                 ) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray]:
    """(z (N, 4 per network, K), labels, final logits per network, ids) of a split, rows aligned by id."""
    parts = {m: load_logits(method_dir, m, split, segments[m]) for m in networks}
    first = networks[0]
    ref = parts[first]
    for m in networks[1:]:
        if not np.array_equal(parts[m]["ids"], ref["ids"]) or not np.array_equal(parts[m]["labels"], ref["labels"]):
            raise ValueError(f"{method_dir}: the {first} and {m} logits of {split} hold different videos or labels")
    z = np.concatenate([parts[m]["logits"] for m in networks], 1).astype(np.float64)
    return z, ref["labels"], {m: parts[m]["logits"][:, -1] for m in networks}, ref["ids"]


def _available_segments(method_dir: Path, modality: str, split: str) -> list[int]:
    folder = method_dir / LOGITS / modality
    return sorted(int(p.stem.rsplit("_s", 1)[1]) for p in folder.glob(f"{split}_s*.npz"))


def run_wise(method_dir: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Fits WISE on the training logits of `method_dir`, evaluates the variants, the
    early-exit sweep and (for the CoViAR networks) CoViAR's fusion on val and test;
    writes METHOD/wise/."""
    method_dir = Path(method_dir)
    cfg, configs = wise_config(method_dir, overrides)
    networks = networks_of(method_dir)
    names = exit_names(networks)
    default = {m: configs[m].data.eval_segments for m in networks}
    costs = json.loads((method_dir / LOGITS / COSTS).read_text())
    z_train, y_train, _, _ = stack_logits(method_dir, "train", default, networks)
    fitted = fit_wise(z_train, y_train, cfg)
    out: dict[str, Any] = {
        "networks": list(networks), "exits": list(names), "default_segments": default,
        "config": dataclasses.asdict(cfg), "weights": fitted.tolist(),
        "final_weights": dict(zip(names, fitted[-1].tolist(), strict=True)),
        "exit_costs": exit_costs(costs, default, networks).tolist(), "fusion_weights": dict(DEFAULT_FUSION_WEIGHTS),
        "accuracy": {}, "sweep": {}, "fusion": {},
    }
    out["accuracy"]["train"] = {v: accuracy_per_exit(combine(z_train, variant_weights(v, fitted)), y_train)
                                for v in VARIANTS}
    for split in ("val", "test"):
        available = {m: _available_segments(method_dir, m, split) for m in networks}
        sweep, fusion = [], []
        for counts in itertools.product(*(available[m] for m in networks)):
            segments = dict(zip(networks, counts, strict=True))
            z, y, finals, _ = stack_logits(method_dir, split, segments, networks)
            cumulative = exit_costs(costs, segments, networks)
            for v in VARIANTS:
                s = combine(z, variant_weights(v, fitted))
                if segments == default:
                    out["accuracy"].setdefault(split, {})[v] = accuracy_per_exit(s, y)
                sweep += [{"variant": v, "segments": segments, **early_exit(s, y, cumulative, tau)} for tau in cfg.taus]
            if networks == ORDER:  # TEAM-Net's own fusion of its streams is its last exit
                fused = fuse(finals, DEFAULT_FUSION_WEIGHTS)
                fusion.append({"segments": segments, "accuracy": float((fused.argmax(-1) == y).mean()),
                               "macs": fusion_cost(costs, segments)})
        out["sweep"][split], out["fusion"][split] = sweep, fusion
    wise_dir = method_dir / "wise"
    wise_dir.mkdir(exist_ok=True)
    np.savez(wise_dir / "weights.npz", weights=fitted, exits=np.array(names))
    (wise_dir / "results.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def format_results(results: Mapping[str, Any], split: str = "test") -> str:
    """Per-exit accuracy of the variants at the default segments, the fusion point and a
    few early-exit points of WISE, as text."""
    acc = results["accuracy"][split]
    lines = [f"{split} top-1 per exit   " + " ".join(f"{v:>10}" for v in VARIANTS) + f" {'GMACs':>8}"]
    for k, name in enumerate(results["exits"]):
        lines.append(f"  {name:19}" + " ".join(f"{acc[v][k]:10.2%}" for v in VARIANTS)
                     + f" {results['exit_costs'][k] / 1e9:8.3f}")
    default = results["default_segments"]
    for fusion in [f for f in results["fusion"][split] if f["segments"] == default]:
        lines.append(f"fusion 2:1:1 (R/MV/I segments {default['residual']}/{default['mv']}/{default['iframe']}): "
                     f"{fusion['accuracy']:.2%} at {fusion['macs'] / 1e9:.3f} GMACs")
    for p in results["sweep"][split]:
        if p["variant"] == WISE and p["segments"] == default:
            lines.append(f"WISE early exit tau {p['tau']:<10.10g} {p['accuracy']:7.2%} at {p['macs'] / 1e9:.3f} GMACs")
    return "\n".join(lines)
