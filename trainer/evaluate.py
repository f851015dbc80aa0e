"""Evaluation: per-clip and per-video metrics of each modality network, and their fusion.

`evaluate_model` runs one network over a split on every rank (each rank scores its own
videos), sums the counts with all_reduce and gathers ids, labels and logits to rank 0.
`evaluate_runs` is `cvtrain eval RUN_DIR`: it evaluates the run directory of one modality,
or a folder holding the runs of several (iframe/, mv/, residual/), and then their
weighted fusion (CoViAR's 2:1:1 on segment-averaged logits by default). Everything goes
to RUN_DIR/eval/SPLIT/: MODALITY.npz (ids, labels, logits, clip_logits, confusion: what
the internal-classifier stage reads), confusion PNGs and metrics.json.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from trainer import checkpoint, distributed
from trainer.batches import Batch, open_data, require_split
from trainer.config import load_config
from trainer.distributed import Dist
from trainer.metrics import (
    DEFAULT_FUSION_WEIGHTS,
    Counts,
    fuse,
    plot_confusion,
    summarize,
)
from trainer.models import MODALITIES, ModalityNet


@dataclass
class Evaluation:
    """Metrics of a split over all ranks; the arrays are filled on rank 0 when gathered,
    sorted by video id."""

    summary: dict[str, float]
    confusion: np.ndarray
    ids: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))
    labels: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))
    logits: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    clip_logits: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=np.float32))


def check_once(ids: Sequence[str], where: str) -> None:
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    if duplicates:
        raise RuntimeError(f"{where}: {len(duplicates)} videos were evaluated more than once "
                           f"(e.g. {', '.join(duplicates[:5])}); the loader must split the videos over ranks")


@torch.no_grad()
def evaluate_model(
    model: ModalityNet,
    batches: Iterable[Batch],
    num_classes: int,
    *,
    dist: Dist,
    expected: int,
    amp: bool = False,
    gather: bool = False,
    desc: str = "eval",
    show: bool = True,
) -> Evaluation:
    """Scores every video of `batches` (this rank's share of a split).

    Args:
        model: the bare network (not DDP: ranks run different numbers of batches).
        batches: this rank's evaluation batches.
        num_classes: classes of the logits.
        dist: this process's place in the world.
        expected: videos in the whole split; a different count is reported, duplicates are an error.
        amp: bf16 autocast (CUDA).
        gather: also collect ids, labels and logits on rank 0.
        desc, show: the progress bar's label, and whether rank 0 shows it.
    """
    model.eval()
    counts = Counts.zeros(num_classes, dist.device)
    ids: list[str] = []
    labels, logits, clip_logits = [], [], []
    for batch in tqdm(batches, desc=desc, unit="batch", leave=False, disable=None if show and dist.is_main else True):
        x = batch["input"].to(dist.device, non_blocking=True)
        y = batch["label"].to(dist.device, non_blocking=True)
        with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=amp):
            clips = model(x, average=False).float()  # (B, S, K)
        video = clips.mean(1)
        counts.add(video, y, clips)
        if gather:
            ids += batch["id"]
            labels.append(y.cpu())
            logits.append(video.cpu())
            clip_logits.append(clips.cpu())
    summary = counts.all_reduce().summary()
    summary["expected_videos"] = expected
    if summary["videos"] != expected and dist.is_main:
        tqdm.write(f"warning: {desc}: {summary['videos']} of {expected} videos were evaluated")
    out = Evaluation(summary, counts.confusion.cpu().numpy())
    if not gather:
        return out
    k = num_classes
    mine = (ids, torch.cat(labels).numpy() if labels else np.zeros(0, np.int64),
            torch.cat(logits).numpy() if logits else np.zeros((0, k), np.float32),
            torch.cat(clip_logits).numpy() if clip_logits else None)
    parts = distributed.gather_to_main(mine)
    if parts is None:
        return out
    all_ids = [i for part in parts for i in part[0]]
    check_once(all_ids, desc)
    order = np.argsort(np.array(all_ids, dtype=str), kind="stable")
    out.ids = np.array(all_ids, dtype=str)[order]
    out.labels = np.concatenate([p[1] for p in parts])[order]
    out.logits = np.concatenate([p[2] for p in parts]).astype(np.float32)[order]
    clip_parts = [p[3] for p in parts if p[3] is not None]
    if clip_parts:
        out.clip_logits = np.concatenate(clip_parts).astype(np.float32)[order]
    out.summary["videos_per_rank"] = [len(p[0]) for p in parts]
    return out


def find_runs(run_dir: Path) -> dict[str, Path]:
    """Modality -> run directory: RUN_DIR itself, or its subfolders holding runs."""
    if (run_dir / "config.toml").is_file():
        candidates = [run_dir]
    elif run_dir.is_dir():
        candidates = sorted(p for p in run_dir.iterdir() if (p / "config.toml").is_file())
    else:
        candidates = []
    runs: dict[str, Path] = {}
    for path in candidates:
        modality = load_config(path / "config.toml").model.modality
        if modality in runs:
            raise ValueError(f"{run_dir}: two {modality} runs ({runs[modality]} and {path}); evaluate them apart")
        runs[modality] = path
    if not runs:
        raise FileNotFoundError(f"{run_dir}: no training run here (a run directory holds config.toml)")
    return dict(sorted(runs.items(), key=lambda item: MODALITIES.index(item[0])))


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
        model = ModalityNet(**state["model_args"])
        model.load_state_dict(state["model"])
        model.to(dist.device)
        data = open_data(cfg, rank=dist.rank, world_size=dist.world_size)
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
    if dist.is_main and len(evaluations) > 1:
        ids, labels = _aligned(evaluations)
        used = {m: weights[m] for m in evaluations}
        scores = fuse({m: ev.logits for m, ev in evaluations.items()}, used, space)
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
