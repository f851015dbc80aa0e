"""`cvtrain eval`: each modality network of a run on a split, and their fusion.

`evaluate_runs` evaluates the run directory of one modality, or a folder holding the runs
of several (iframe/, mv/, residual/), with trainer.train.validate's `evaluate_model` (every
rank scores its own videos; counts summed, logits gathered to rank 0), and then their
weighted fusion (CoViAR's 2:1:1 on segment-averaged logits by default). Everything goes
to RUN_DIR/eval/SPLIT/: MODALITY.npz (ids, labels, logits, clip_logits, confusion: what
the internal-classifier stage reads), confusion PNGs and metrics.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from trainer.config import load_config
from trainer.data.contract import MODALITIES, require_split
from trainer.data.sources import open_data
from trainer.models.build import NETWORKS, build_network, input_modalities, network_name
from trainer.train import checkpoint
from trainer.train.distributed import Dist
from trainer.train.metrics import summarize
from trainer.train.validate import Evaluation, evaluate_model

FUSION_SPACES = ("logits", "softmax")
# CoViAR's combine.py: 2 * I-frame + 1 * MV + 1 * residual.
DEFAULT_FUSION_WEIGHTS = {"iframe": 2.0, "mv": 1.0, "residual": 1.0}


def find_runs(run_dir: Path) -> dict[str, Path]:
    """Network (a modality, or "teamnet") -> run directory: RUN_DIR itself, or its
    subfolders holding runs."""
    if (run_dir / "config.toml").is_file():
        candidates = [run_dir]
    elif run_dir.is_dir():
        candidates = sorted(p for p in run_dir.iterdir() if (p / "config.toml").is_file())
    else:
        candidates = []
    runs: dict[str, Path] = {}
    for path in candidates:
        modality = network_name(load_config(path / "config.toml"))
        if modality in runs:
            raise ValueError(f"{run_dir}: two {modality} runs ({runs[modality]} and {path}); evaluate them apart")
        runs[modality] = path
    if not runs:
        raise FileNotFoundError(f"{run_dir}: no training run here (a run directory holds config.toml)")
    return dict(sorted(runs.items(), key=lambda item: NETWORKS.index(item[0])))


def _aligned(evaluations: Mapping[str, Evaluation]) -> tuple[np.ndarray, np.ndarray]:
    """The common ids and labels of several modalities' evaluations (all sorted by id)."""
    (first, ref), *rest = evaluations.items()
    for modality, ev in rest:
        if not np.array_equal(ev.ids, ref.ids):
            diff = sorted(set(ev.ids.tolist()) ^ set(ref.ids.tolist()))[:5]
            raise ValueError(f"{first} and {modality} evaluated different videos (e.g. {', '.join(diff)}); cannot fuse")
        if not np.array_equal(ev.labels, ref.labels):
            raise ValueError(f"{first} and {modality} disagree on labels; were they trained on the same dataset?")
    return ref.ids, ref.labels


def _write(out_dir: Path, name: str, ev: Evaluation, class_names: Sequence[str]) -> None:
    np.savez(out_dir / f"{name}.npz", ids=ev.ids, labels=ev.labels, logits=ev.logits,
             clip_logits=ev.clip_logits, confusion=ev.confusion, class_names=np.array(list(class_names), dtype=str))
    plot_confusion(ev.confusion, out_dir / f"confusion_{name}.png",
                   f"{name}: top-1 {ev.summary['top1']:.1%} over {ev.summary['videos']} videos", class_names)


def evaluate_runs(
    run_dir: str | Path,
    *,
    dist: Dist,
    split: str = "test",
    which: str = "best",
    overrides: Sequence[str] = (),
    weights: Mapping[str, float] = DEFAULT_FUSION_WEIGHTS,
    space: str = "logits",
    show: bool = True,
) -> dict[str, dict]:
    """Evaluates every modality run under `run_dir` on `split` and, with two or more, their fusion.

    Args:
        run_dir: a run directory, or a folder of them.
        dist: this process's place in the world.
        split: "val" or "test".
        which: the checkpoint to evaluate, "best" (on validation) or "last".
        overrides: `--set` assignments applied to each run's saved config (data.root, ...).
        weights: fusion weight per modality.
        space: fuse "logits" (CoViAR) or "softmax" scores.
        show: progress bars on rank 0.

    Returns:
        Metrics per modality (and "fused") on rank 0; an empty dict on other ranks.
    """
    run_dir = Path(run_dir)
    runs = find_runs(run_dir)
    out_dir = run_dir / "eval" / split
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    evaluations: dict[str, Evaluation] = {}
    class_names: Sequence[str] = ()
    for modality, path in runs.items():
        cfg = load_config(path / "config.toml", overrides)
        state = checkpoint.load(path / f"{which}.pt")
        model = build_network(state["model_args"])
        model.load_state_dict(state["model"])
        model.to(dist.device)
        data = open_data(cfg, rank=dist.rank, world_size=dist.world_size, device=dist.device,
                         modalities=input_modalities(cfg))
        require_split(data, split, cfg)
        ev = evaluate_model(model, data.eval_batches(split), data.num_classes, dist=dist,
                            expected=data.split_size(split), amp=cfg.run.amp and dist.device.type == "cuda",
                            gather=True, desc=f"{modality} {split}", show=show)
        if dist.is_main:
            ev.summary.update(checkpoint=str(path / f"{which}.pt"), epoch=state["epoch"])
            _write(out_dir, modality, ev, data.class_names)
            results[modality] = ev.summary
            evaluations[modality] = ev
            class_names = data.class_names
    fusable = {m: ev for m, ev in evaluations.items() if m in MODALITIES}  # TEAM-Net is a fusion already
    if dist.is_main and len(fusable) > 1:
        ids, labels = _aligned(fusable)
        used = {m: weights[m] for m in fusable}
        scores = fuse({m: ev.logits for m, ev in fusable.items()}, used, space)
        summary, confusion = summarize(scores, labels, scores.shape[1])
        summary.update(weights=used, space=space)
        fused = Evaluation(summary, confusion, ids, labels, scores.astype(np.float32))
        _write(out_dir, "fused", fused, class_names)
        results["fused"] = summary
    if dist.is_main:
        (out_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def format_table(results: Mapping[str, dict]) -> str:
    lines = [f"{'':10} {'videos':>7} {'top1':>7} {'top5':>7} {'class':>7} {'clip1':>7}"]
    for name, s in results.items():
        clip = f"{s['clip_top1']:7.2%}" if "clip_top1" in s else f"{'':>7}"
        lines.append(f"{name:10} {s['videos']:7d} {s['top1']:7.2%} {s['top5']:7.2%} {s['mean_class_acc']:7.2%} {clip}")
    return "\n".join(lines)


def fuse(scores: Mapping[str, np.ndarray], weights: Mapping[str, float], space: str = "logits") -> np.ndarray:
    """Weighted sum of per-modality video scores (N, K), rows aligned.

    CoViAR's combine.py adds the raw video logits (segment-averaged fc outputs) with
    weights 2:1:1; `space="softmax"` adds class probabilities instead.
    """
    if space not in FUSION_SPACES:
        raise ValueError(f"fusion space {space!r}; valid: {', '.join(FUSION_SPACES)}")
    total = None
    for modality, s in scores.items():
        s = s.astype(np.float64)
        if space == "softmax":
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
        total = weights[modality] * s if total is None else total + weights[modality] * s
    if total is None:
        raise ValueError("nothing to fuse")
    return total


def plot_confusion(confusion: np.ndarray, path: str | os.PathLike, title: str,
                   class_names: Sequence[str] = ()) -> None:
    """Row-normalised confusion matrix as a PNG (true class down, predicted across)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = confusion.shape[0]
    rows = confusion.sum(1, keepdims=True)
    rates = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    size = min(4 + 0.25 * k, 24)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(rates, vmin=0, vmax=1, cmap="viridis")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if class_names and k <= 40:
        ax.set_xticks(range(k), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
