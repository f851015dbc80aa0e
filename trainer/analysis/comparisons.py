"""The report's comparisons, each a paired difference with a bootstrap interval over IC
seeds and test videos (trainer.analysis.intervals):

- PKD - CE for each of the 9 internal classifiers (each exit alone), and pooled over the
  9 (per seed and video, the mean over the ICs of right minus wrong);
- WISE - best single exit: WISE's last exit against the one exit, of the 12 alone, that is
  best on validation (chosen per seed, so the choice is part of what varies);
- WISE - no scaling, at each exit from R2 on (at R1 both are R1's raw logits) and pooled
  over those 11.

Paired: both sides of a difference come from the same seed (for PKD - CE, the runs of the
same seed on the same frozen backbones) and the same videos.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.analysis.intervals import Interval, Predictions, paired_bootstrap, per_video_correct, stacked
from trainer.analysis.wise import EXIT_NAMES, WISE

IC_COLUMNS = [k for k, name in enumerate(EXIT_NAMES) if not name.endswith("4")]
POOLED = "pooled"


@dataclass(frozen=True)
class Comparison:
    kind: str          # "ic", "best_single" or "no_scaling" (the module docstring's three)
    method: str        # the method whose exits are compared ("pkd")
    against: str       # the other side: a baseline method ("ce"), or a variant of the same method
    exit: str          # an exit name, or POOLED
    interval: Interval
    detail: str = ""   # e.g. which exits the best single exit was

    @property
    def name(self) -> str:
        where = {"ic": "the 9 ICs pooled", "no_scaling": f"{EXIT_NAMES[1]}..{EXIT_NAMES[-1]} pooled"}.get(
            self.kind, "") if self.exit == POOLED else self.exit
        if self.kind == "ic":
            return f"{self.method} - {self.against}, {where}"
        if self.kind == "best_single":
            return f"{self.method}: WISE at {self.exit} - best single exit on val ({self.detail})"
        return f"{self.method}: WISE - no scaling, {where}"


def _predictions(dirs: Sequence[Path], split: str, segments: Mapping[str, int]) -> list[Predictions]:
    return [per_video_correct(d, split, segments) for d in dirs]


def ic_comparisons(method: str, dirs: Sequence[Path], baseline: str, baseline_dirs: Sequence[Path], split: str,
                   segments: Mapping[str, int]) -> list[Comparison]:
    """METHOD - BASELINE on each IC alone and pooled over the 9 ICs; dirs[i] and
    baseline_dirs[i] are the two method folders of one seed."""
    a = stacked(_predictions(dirs, split, segments), "no_lateral")
    b = stacked(_predictions(baseline_dirs, split, segments), "no_lateral")
    diff = a - b  # (seeds, videos, 12)
    out = [Comparison("ic", method, baseline, EXIT_NAMES[k], paired_bootstrap(diff[..., k])) for k in IC_COLUMNS]
    out.append(Comparison("ic", method, baseline, POOLED, paired_bootstrap(diff[..., IC_COLUMNS].mean(-1))))
    return out


def wise_comparisons(method: str, dirs: Sequence[Path], split: str, segments: Mapping[str, int]
                     ) -> list[Comparison]:
    """WISE - best single exit (chosen on val per seed) and WISE - no scaling, in METHOD
    (dirs: its folder of each seed)."""
    tested = _predictions(dirs, split, segments)
    chosen = [int(np.argmax(p.correct["no_lateral"].mean(0))) for p in _predictions(dirs, "val", segments)]
    wise, single = stacked(tested, WISE), stacked(tested, "no_lateral")
    best = np.stack([single[s, :, k] for s, k in enumerate(chosen)])
    names = ", ".join(sorted({EXIT_NAMES[k] for k in chosen}))
    out = [Comparison("best_single", method, "no_lateral", EXIT_NAMES[-1], paired_bootstrap(wise[..., -1] - best),
                      detail=names)]
    diff = wise - stacked(tested, "no_scaling")
    out += [Comparison("no_scaling", method, "no_scaling", EXIT_NAMES[k], paired_bootstrap(diff[..., k]))
            for k in range(1, len(EXIT_NAMES))]
    out.append(Comparison("no_scaling", method, "no_scaling", POOLED, paired_bootstrap(diff[..., 1:].mean(-1))))
    return out


def comparison_rows(comparisons: list[Comparison]) -> list[list[str]]:
    """Table rows: what, difference [95% interval] in points, whether 0 is outside, sizes."""
    return [[c.name, c.interval.text(), "yes" if c.interval.excludes_zero() else "no",
             str(c.interval.seeds), str(c.interval.videos)] for c in comparisons]


COMPARISON_HEADER = ["comparison", "difference, points [95% interval]", "excludes 0", "seeds", "videos"]
