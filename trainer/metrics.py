"""Classification metrics: counts that sum across ranks, summaries, fusion, confusion plots.

Evaluation keeps sufficient statistics rather than per-rank accuracies, so that summing
them with one all_reduce gives exactly the metrics of the whole split however unevenly
the videos were spread over ranks. A "clip" is one segment (or crop) of a video scored on
its own; the video's score is the mean over its clips (TSN).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from trainer.distributed import all_reduce_sum

TOPK = 5
FUSION_SPACES = ("logits", "softmax")
# CoViAR's combine.py: 2 * I-frame + 1 * MV + 1 * residual.
DEFAULT_FUSION_WEIGHTS = {"iframe": 2.0, "mv": 1.0, "residual": 1.0}


def topk_correct(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """How many rows of `scores` (N, K) have their label among the k highest (k <= K)."""
    top = scores.topk(min(k, scores.shape[-1]), dim=-1).indices
    return (top == labels.unsqueeze(-1)).any(-1).sum()


@dataclass
class Counts:
    """Sums over the evaluated videos; `confusion[true, predicted]` at video level."""

    confusion: Tensor  # (K, K) int64
    ints: Tensor  # int64: [video top-5 hits, clips, clip top-1 hits, clip top-5 hits]
    loss_sum: Tensor  # float64: summed cross-entropy of the video logits

    @classmethod
    def zeros(cls, num_classes: int, device: torch.device | str = "cpu") -> Counts:
        return cls(
            torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device),
            torch.zeros(4, dtype=torch.int64, device=device),
            torch.zeros((), dtype=torch.float64, device=device),
        )

    def add(self, scores: Tensor, labels: Tensor, clip_scores: Tensor | None = None) -> None:
        """scores: (B, K) per video; labels: (B,); clip_scores: (B, S, K) per clip."""
        k = self.confusion.shape[0]
        predicted = scores.argmax(-1)
        self.confusion += torch.bincount(labels * k + predicted, minlength=k * k).view(k, k)
        self.ints[0] += topk_correct(scores, labels, TOPK)
        if clip_scores is not None:
            clips = clip_scores.flatten(0, 1)
            clip_labels = labels.repeat_interleave(clip_scores.shape[1])
            self.ints[1] += clips.shape[0]
            self.ints[2] += topk_correct(clips, clip_labels, 1)
            self.ints[3] += topk_correct(clips, clip_labels, TOPK)
        self.loss_sum += torch.nn.functional.cross_entropy(scores.double(), labels, reduction="sum")

    def all_reduce(self) -> Counts:
        for tensor in (self.confusion, self.ints, self.loss_sum):
            all_reduce_sum(tensor)
        return self

    def summary(self) -> dict[str, float]:
        confusion = self.confusion.cpu().double()
        n = confusion.sum().item()
        support = confusion.sum(1)
        present = support > 0
        out = {
            "videos": int(n),
            "top1": confusion.trace().item() / max(n, 1),
            "top5": self.ints[0].item() / max(n, 1),
            "mean_class_acc": (confusion.diag()[present] / support[present]).mean().item() if present.any() else 0.0,
            "loss": self.loss_sum.item() / max(n, 1),
        }
        clips = self.ints[1].item()
        if clips:
            out.update(clips=clips, clip_top1=self.ints[2].item() / clips, clip_top5=self.ints[3].item() / clips)
        return out


def summarize(scores: np.ndarray, labels: np.ndarray, num_classes: int,
              clip_scores: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray]:
    """Metrics and confusion matrix of whole arrays (fused scores, saved logits)."""
    counts = Counts.zeros(num_classes)
    counts.add(torch.from_numpy(scores).double(), torch.from_numpy(labels).long(),
               None if clip_scores is None else torch.from_numpy(clip_scores).double())
    return counts.summary(), counts.confusion.numpy()


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
