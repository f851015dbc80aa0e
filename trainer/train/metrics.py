"""Classification metrics: counts that sum across ranks, and their summaries.

Evaluation keeps sufficient statistics rather than per-rank accuracies, so that summing
them with one all_reduce gives exactly the metrics of the whole split however unevenly
the videos were spread over ranks. A "clip" is one segment (or crop) of a video scored on
its own; the video's score is the mean over its clips (TSN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from trainer.train.distributed import all_reduce_sum

TOPK = 5


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
