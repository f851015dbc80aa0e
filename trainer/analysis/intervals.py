"""Paired bootstrap intervals for differences between methods, over seeds and videos.

A difference in top-1 between two methods (PKD - CE on an IC, WISE - no scaling at an
exit) varies with the IC-training seed and with which videos happen to be in the test
split. Both are sampled here: each bootstrap resample draws the seeds with replacement
and, independently, the videos with replacement, and takes the mean of the per-(seed,
video) differences over the draw. The two methods are compared on the same seeds and the
same videos in every draw (paired), so what they share (a hard video, a lucky backbone)
cancels. The interval is the percentile interval of the resampled means.

`per_video_correct` reads what `cvtrain logits` and `cvtrain wise` wrote for one method of
one seed and gives, per variant, which test videos each of the 12 exits gets right.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.analysis.wise import VARIANTS, combine, stack_logits, variant_weights

RESAMPLES = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A difference (as a fraction: 0.01 is one point of top-1) and its bootstrap interval."""

    estimate: float
    low: float
    high: float
    seeds: int
    videos: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def text(self) -> str:
        """In points of top-1: `+1.2 [-0.4, +2.9]`."""
        return f"{self.estimate * 100:+.1f} [{self.low * 100:+.1f}, {self.high * 100:+.1f}]"


def paired_bootstrap(diff: np.ndarray, *, resamples: int = RESAMPLES, level: float = LEVEL,
                     seed: int = 0) -> Interval:
    """The mean of `diff` (seeds, videos) with its two-way bootstrap interval.

    Args:
        diff: per seed and video, method A's score minus method B's (e.g. 1 - 0 where only
            A is right); rows and columns aligned (same seed, same video).
        resamples: bootstrap draws.
        level: the interval's coverage.
        seed: the bootstrap's own random seed (the interval is reproducible).
    """
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 2 or 0 in d.shape:
        raise ValueError(f"diff must be (seeds, videos) with both non-empty, got shape {d.shape}")
    seeds, videos = d.shape
    rng = np.random.default_rng(seed)
    # A draw's mean is w_s @ d @ w_v / (seeds * videos) with multinomial counts w: no copies of d.
    seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=resamples)
    video_counts = rng.multinomial(videos, np.full(videos, 1 / videos), size=resamples)
    means = ((seed_counts @ d) * video_counts).sum(1) / (seeds * videos)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(d.mean()), float(low), float(high), seeds, videos)


@dataclass(frozen=True)
class Predictions:
    """Which videos of a split each exit gets right, per variant, for one method of one seed."""

    ids: np.ndarray                      # (N,) video ids, sorted
    correct: Mapping[str, np.ndarray]    # variant -> (N, 12) bool


def per_video_correct(method_dir: str | Path, split: str, segments: Mapping[str, int]) -> Predictions:
    """Per-video correctness of every exit and variant from METHOD/logits and METHOD/wise;
    `segments` names the networks, in exit order, with their segment counts."""
    method_dir = Path(method_dir)
    z, labels, _, ids = stack_logits(method_dir, split, segments, tuple(segments))
    fitted = np.load(method_dir / "wise" / "weights.npz")["weights"]
    order = np.argsort(ids)
    correct = {v: (combine(z, variant_weights(v, fitted)).argmax(-1) == labels[:, None])[order] for v in VARIANTS}
    return Predictions(ids[order], correct)


def stacked(predictions: Sequence[Predictions], variant: str) -> np.ndarray:
    """(seeds, N, 12) correctness of one variant over seeds, checked to hold the same videos."""
    first = predictions[0].ids
    for p in predictions[1:]:
        if not np.array_equal(p.ids, first):
            raise ValueError("the seeds' logits hold different videos; compare runs on the same split")
    return np.stack([p.correct[variant] for p in predictions]).astype(np.float64)
