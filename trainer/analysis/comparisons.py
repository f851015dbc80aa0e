"""The report's comparisons, each a paired difference with a bootstrap interval over IC
seeds and test videos (trainer.analysis.intervals):

- PKD - CE for each internal classifier (each exit alone: 9 for the CoViAR networks, 3
  for TEAM-Net), and pooled over them (per seed and video, the mean over the ICs of right
  minus wrong);
- WISE - best single exit: WISE's last exit against the one exit alone that is best on
  validation (chosen per seed, so the choice is part of what varies);
- WISE - no scaling, at each exit from the second on (at the first both are its raw
  logits) and pooled over those.

Paired: both sides of a difference come from the same seed (for PKD - CE, the runs of the
same seed on the same frozen backbones) and the same videos.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.analysis.intervals import Interval, Predictions, paired_bootstrap, per_video_correct, stacked
from trainer.analysis.wise import WISE

POOLED = "pooled"


def ic_columns(exits: Sequence[str]) -> list[int]:
    """The internal classifiers among `exits` (every network's fourth exit is its own output)."""
    return [k for k, name in enumerate(exits) if not name.endswith("4")]


@dataclass(frozen=True)
class Comparison:
    kind: str          # "ic", "best_single" or "no_scaling" (the module docstring's three)
    method: str        # the method whose exits are compared ("pkd")
    against: str       # the other side: a baseline method ("ce"), or a variant of the same method
    exit: str          # an exit name, or POOLED
    interval: Interval
    detail: str = ""   # which exits the best single exit was, or what a pooled one pools

    @property
    def name(self) -> str:
        where = f"{self.detail} pooled" if self.exit == POOLED else self.exit
        if self.kind == "ic":
            return f"{self.method} - {self.against}, {where}"
        if self.kind == "best_single":
            return f"{self.method}: WISE at {self.exit} - best single exit on val ({self.detail})"
        return f"{self.method}: WISE - no scaling, {where}"


def _predictions(dirs: Sequence[Path], split: str, segments: Mapping[str, int]) -> list[Predictions]:
    return [per_video_correct(d, split, segments) for d in dirs]


def ic_comparisons(method: str, dirs: Sequence[Path], baseline: str, baseline_dirs: Sequence[Path], split: str,
                   segments: Mapping[str, int], exits: Sequence[str]) -> list[Comparison]:
    """METHOD - BASELINE on each IC alone and pooled over the ICs; dirs[i] and
    baseline_dirs[i] are the two method folders of one seed, `exits` their exits' names."""
    a = stacked(_predictions(dirs, split, segments), "no_lateral")
    b = stacked(_predictions(baseline_dirs, split, segments), "no_lateral")
    diff = a - b  # (seeds, videos, exits)
    ics = ic_columns(exits)
    out = [Comparison("ic", method, baseline, exits[k], paired_bootstrap(diff[..., k])) for k in ics]
    out.append(Comparison("ic", method, baseline, POOLED, paired_bootstrap(diff[..., ics].mean(-1)),
                          detail=f"the {len(ics)} ICs"))
    return out


def wise_comparisons(method: str, dirs: Sequence[Path], split: str, segments: Mapping[str, int],
                     exits: Sequence[str]) -> list[Comparison]:
    """WISE - best single exit (chosen on val per seed) and WISE - no scaling, in METHOD
    (dirs: its folder of each seed; `exits`: its exits' names)."""
    tested = _predictions(dirs, split, segments)
    chosen = [int(np.argmax(p.correct["no_lateral"].mean(0))) for p in _predictions(dirs, "val", segments)]
    wise, single = stacked(tested, WISE), stacked(tested, "no_lateral")
    best = np.stack([single[s, :, k] for s, k in enumerate(chosen)])
    names = ", ".join(sorted({exits[k] for k in chosen}))
    out = [Comparison("best_single", method, "no_lateral", exits[-1], paired_bootstrap(wise[..., -1] - best),
                      detail=names)]
    diff = wise - stacked(tested, "no_scaling")
    out += [Comparison("no_scaling", method, "no_scaling", exits[k], paired_bootstrap(diff[..., k]))
            for k in range(1, len(exits))]
    out.append(Comparison("no_scaling", method, "no_scaling", POOLED, paired_bootstrap(diff[..., 1:].mean(-1)),
                          detail=f"{exits[1]}..{exits[-1]}"))
    return out


def comparison_rows(comparisons: list[Comparison]) -> list[list[str]]:
    """Table rows: what, difference [95% interval] in points, whether 0 is outside, sizes."""
    return [[c.name, c.interval.text(), "yes" if c.interval.excludes_zero() else "no",
             str(c.interval.seeds), str(c.interval.videos)] for c in comparisons]


COMPARISON_HEADER = ["comparison", "difference, points [95% interval]", "excludes 0", "seeds", "videos"]
