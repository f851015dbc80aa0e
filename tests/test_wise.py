"""WISE fitting and its ablations, early exit and cost accounting, and the measured MACs
the costs come from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.analysis.wise import (
    EXIT_NAMES,
    combine,
    early_exit,
    exit_costs,
    fit_vector,
    fit_wise,
    fusion_cost,
    variant_weights,
)
from trainer.config import WiseConfig
from trainer.models.build import attach_ics
from trainer.models.networks import ModalityNet


def informative_logits(n: int = 400, k: int = 5, exits: int = 4, good: int = 2, seed: int = 0):
    """Exit `good` carries the label (a class bump plus noise); the others are noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(k, size=n)
    z = rng.normal(0, 1, (n, exits, k))
    z[:, good] += 1.5 * np.eye(k)[labels]
    return z, labels


def direct_fit(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The same objective (alpha 0) minimised to convergence by L-BFGS."""
    zt, y = torch.from_numpy(z), torch.from_numpy(labels)
    w = torch.ones(z.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(torch.einsum("j,njc->nc", w, zt), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach().numpy()


def test_wise_weights_the_informative_exit_and_reaches_a_direct_fit():
    z, y = informative_logits()
    w = fit_vector(z[:, :3], y, alpha=0.0)  # w^(3) over exits 0..2; exit 2 is the informative one
    assert np.argmax(np.abs(w)) == 2 and w[2] > 3 * np.abs(w[:2]).max()
    best = direct_fit(z[:, :3], y)
    accuracy = lambda weights: (np.einsum("j,njc->nc", weights, z[:, :3]).argmax(-1) == y).mean()  # noqa: E731
    assert accuracy(w) == pytest.approx(accuracy(best), abs=0.01)
    assert accuracy(w) >= (z[:, 2].argmax(-1) == y).mean() - 0.01  # at least the informative exit alone
    assert np.allclose(w, best, atol=0.05)  # 500 SGD steps at lr 0.1 get to the optimum
    # The L1 term pulls the noise exits' weights towards 0.
    sparse = fit_vector(z[:, :3], y, alpha=0.1)
    assert np.abs(sparse[:2]).sum() < np.abs(w[:2]).sum() and sparse[2] > 1


def test_clipping_keeps_weights_non_negative():
    z, y = informative_logits()
    # An exit that points away from the label: its best weight is negative.
    z[:, 1] = -1.5 * np.eye(z.shape[2])[y] + np.random.default_rng(5).normal(0, 1, z[:, 1].shape)
    assert fit_vector(z[:, :3], y, alpha=0.0)[1] < -1
    clipped = fit_vector(z[:, :3], y, alpha=0.01, clip_negative=True)
    assert clipped.min() >= 0 and clipped[1] == 0 and clipped[2] > 1


def test_fit_wise_rows_and_alpha_schedule():
    z, y = informative_logits(n=200, exits=5)
    cfg = WiseConfig(iterations=50, unpenalised=2, alpha=0.1)
    weights = fit_wise(z, y, cfg)
    assert np.array_equal(weights, np.tril(weights))  # row k uses exits 0..k only
    assert weights[0, 0] == 1.0  # R1 answers with its raw logits, not a fitted scale
    assert np.allclose(weights[1, :2], fit_vector(z[:, :2], y, alpha=0.0, iterations=50))
    assert np.allclose(weights[3, :4], fit_vector(z[:, :4], y, alpha=0.1, iterations=50))
    assert not np.allclose(weights[3, :4], fit_vector(z[:, :4], y, alpha=0.0, iterations=50))


def test_ablations():
    z, _ = informative_logits(n=10, exits=4)
    fitted = np.tril(np.full((4, 4), 7.0))
    assert np.array_equal(combine(z, variant_weights("no_lateral", fitted)), z)
    assert np.allclose(combine(z, variant_weights("no_scaling", fitted))[:, 2], z[:, :3].mean(1))
    assert np.allclose(combine(z, variant_weights("wise", fitted))[:, 1], 7 * (z[:, 0] + z[:, 1]))
    with pytest.raises(ValueError, match="valid: wise"):
        variant_weights("other", fitted)


def test_early_exit_at_the_extremes_of_tau():
    rng = np.random.default_rng(1)
    scores = rng.normal(0, 2, (50, 6, 4))
    labels = rng.integers(4, size=50)
    costs = np.cumsum(rng.integers(1, 100, 6)).astype(float)
    never = early_exit(scores, labels, costs, 1.0)
    assert never["accuracy"] == (scores[:, -1].argmax(-1) == labels).mean()
    assert never["macs"] == costs[-1] and never["exit_fraction"][-1] == 1
    first = early_exit(scores, labels, costs, 0.0)
    assert first["accuracy"] == (scores[:, 0].argmax(-1) == labels).mean()
    assert first["macs"] == costs[0] and first["exit_fraction"][0] == 1
    middle = early_exit(scores, labels, costs, 0.9)
    assert costs[0] < middle["macs"] < costs[-1] and sum(middle["exit_fraction"]) == pytest.approx(1)
    # A video leaves at its first confident exit: recompute by hand.
    p = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    leave = [next((k for k in range(6) if p[n, k].max() >= 0.9), 5) for n in range(50)]
    assert middle["macs"] == pytest.approx(costs[leave].mean())
    assert middle["accuracy"] == pytest.approx(np.mean([scores[n, leave[n]].argmax() == labels[n] for n in range(50)]))
    # Saturated softmax (max probability rounds to 1.0): tau = 1 still never leaves early.
    saturated = np.zeros((2, 3, 4))
    saturated[:, 0, 0] = 1e4
    assert early_exit(saturated, np.zeros(2, int), np.array([1.0, 2.0, 3.0]), 1.0)["macs"] == 3.0
    assert early_exit(saturated, np.zeros(2, int), np.array([1.0, 2.0, 3.0]), 0.999)["macs"] == 1.0


def test_cost_accounting_over_networks_and_segments():
    costs = {m: {"stages": [1, 2, 3, 4, 5], "heads": [10, 20, 30]} for m in ("residual", "mv")}
    costs["iframe"] = {"stages": [100, 200, 300, 400, 500], "heads": [1000, 2000, 3000]}
    segments = {"residual": 2, "mv": 1, "iframe": 3}
    got = exit_costs(costs, segments)
    r = [1 + 2 + 10, 1 + 2 + 3 + 10 + 20, 1 + 2 + 3 + 4 + 10 + 20 + 30, 15 + 60]  # one segment, exits 1..4
    i = [300 + 1000, 600 + 3000, 1000 + 6000, 1500 + 6000]
    expected = [2 * c for c in r] + [150 + c for c in r] + [150 + 75 + 3 * c for c in i]
    assert got.tolist() == expected and len(got) == len(EXIT_NAMES) == 12
    assert fusion_cost(costs, segments) == 2 * 15 + 15 + 3 * 1500


def test_measured_macs_of_resnet18_and_its_ics():
    net = attach_ics(ModalityNet("residual", "resnet18", num_classes=101))
    costs = net.exit_costs(224)
    # torchvision lists 1.81 GMACs for ResNet-18 at 224 x 224 (its fc has 1000 classes, ours 101)
    assert costs.backbone / 1e9 == pytest.approx(1.82, rel=0.012)
    assert costs.backbone == net.net.count_macs(224)
    # The paper's heads in closed form: conv (no bias) k*k*Cin*Cout per output pixel, then the Linear.
    out = [(56 - 7 + 2 + 1) ** 2, 28**2, 14**2]
    convs = [7 * 7 * 64 * 64 * out[0], 3 * 3 * 128 * 128 * out[1], 3 * 3 * 256 * 256 * out[2]]
    linears = [c * 16 * 101 for c in (64, 128, 256)]
    assert list(costs.heads) == [a + b for a, b in zip(convs, linears, strict=True)]
    assert costs.to_exit(3) == costs.backbone + sum(costs.heads)
    assert costs.to_exit(0) == sum(costs.stages[:2]) + costs.heads[0]
    assert not net.net.training  # measuring left the frozen backbone in eval mode
