"""Paired bootstrap intervals over seeds and videos: exact where the answer is known,
calibrated where it is random, and sensitive to both sources of variation."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.analysis.intervals import paired_bootstrap


def test_a_constant_difference_has_a_point_interval():
    interval = paired_bootstrap(np.full((5, 300), 0.25))
    assert (interval.estimate, interval.low, interval.high) == pytest.approx((0.25, 0.25, 0.25))
    assert (interval.seeds, interval.videos) == (5, 300)
    assert interval.excludes_zero() and interval.text() == "+25.0 [+25.0, +25.0]"


def test_the_estimate_is_the_mean_and_the_interval_is_reproducible():
    rng = np.random.default_rng(0)
    diff = rng.integers(-1, 2, (5, 200)).astype(float)
    a, b = paired_bootstrap(diff, seed=3), paired_bootstrap(diff, seed=3)
    assert a == b and a.estimate == pytest.approx(diff.mean()) and a.low < a.estimate < a.high


def test_seed_to_seed_variation_widens_the_interval():
    # Every video scores the same within a seed, but seeds differ: resampling videos alone
    # would give a zero-width interval; over seeds it must not.
    diff = np.repeat(np.array([-0.1, 0.0, 0.05, 0.1, 0.2])[:, None], 300, axis=1)
    interval = paired_bootstrap(diff)
    assert interval.high - interval.low > 0.1 and interval.low < 0.05 < interval.high


def test_video_to_video_variation_widens_the_interval():
    rng = np.random.default_rng(1)
    per_video = rng.choice([-1.0, 0.0, 1.0], 300)
    narrow = paired_bootstrap(np.tile(per_video * 0.1, (5, 1)))
    wide = paired_bootstrap(np.tile(per_video, (5, 1)))
    assert wide.high - wide.low > 5 * (narrow.high - narrow.low) > 0


def test_coverage_is_close_to_the_level():
    # Differences with a seed effect, a video effect and noise around a known mean: the 95%
    # interval should hold the mean in about 95% of repeated experiments (percentile
    # intervals with 5 seeds run a little narrow; 300 experiments leave +-2.5% of noise).
    rng = np.random.default_rng(2)
    mean, hits, trials = 0.03, 0, 300
    for trial in range(trials):
        diff = (mean + rng.normal(0, 0.02, (5, 1)) + rng.normal(0, 0.1, (1, 300))
                + rng.normal(0, 0.3, (5, 300)))
        interval = paired_bootstrap(diff, resamples=1000, seed=trial)
        hits += interval.low <= mean <= interval.high
    assert 0.82 <= hits / trials <= 0.99


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="seeds, videos"):
        paired_bootstrap(np.zeros(10))
    with pytest.raises(ValueError, match="non-empty"):
        paired_bootstrap(np.zeros((0, 10)))
