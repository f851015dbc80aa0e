"""Curvature of a training loss around trained weights, without ever forming a Hessian.

The loss is a sum over a fixed set of batches, each a closure that returns its share
(`BatchLoss`: the batch's mean loss times its share of the videos), so a Hessian-vector
product is the sum of one double backward per batch and memory is bounded by one batch
(`SummedLoss`, which also sums over torchrun's processes).
- `hutchinson_trace`: tr(H) = E[v^T H v] over Rademacher vectors v, with its standard error;
- `top_eigenvalue`: power iteration on H v, stopped when the Rayleigh quotient changes by
  less than `tol` (relative) between iterations. It finds the eigenvalue of largest
  magnitude; at a trained minimum that is the largest positive one;
- `loss_curve`: the loss along a filter-normalised random direction (Li et al., 2018,
  "Visualizing the Loss Landscape of Neural Nets"): each filter of the direction has the
  norm of the same filter of the weights, and biases and normalisation parameters do not
  move, so networks of different scale can be drawn on one axis.
Callers put BatchNorm in eval mode first, so the function measured is the one tested.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

BatchLoss = Callable[[], Tensor]


@dataclass(frozen=True)
class Estimate:
    value: float
    stderr: float
    samples: int


@dataclass(frozen=True)
class Eigenvalue:
    value: float
    iterations: int
    converged: bool   # the relative change fell below the tolerance within the iterations allowed


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def _identity(t: Tensor) -> Tensor:
    return t


@dataclass(frozen=True)
class SummedLoss:
    """A loss summed over fixed batches, as a function of `params`.

    `reduce` sums a tensor over the processes that each hold some of the batches
    (`trainer.train.distributed.all_reduce_sum` under torchrun); every process must then
    draw the same random vectors, from generators seeded alike.
    """

    batches: Sequence[BatchLoss]
    params: Sequence[Tensor]
    reduce: Callable[[Tensor], Tensor] = _identity

    def hvp(self, vector: Sequence[Tensor]) -> list[Tensor]:
        """H v, by one double backward per batch."""
        out = [torch.zeros_like(p) for p in self.params]
        for batch in self.batches:
            grads = torch.autograd.grad(batch(), self.params, create_graph=True)
            for acc, h in zip(out, torch.autograd.grad(_dot(grads, vector), self.params), strict=True):
                acc += h
        return [self.reduce(h) for h in out]

    @torch.no_grad()
    def value(self) -> float:
        total = sum((batch().detach() for batch in self.batches), torch.zeros(()))
        return float(self.reduce(total))


def hutchinson_trace(loss: SummedLoss, probes: int, generator: torch.Generator) -> Estimate:
    """tr(H) from `probes` Rademacher vectors: their mean v^T H v and its standard error."""
    if probes < 2:
        raise ValueError(f"probes {probes}: at least 2 are needed for a standard error")
    samples = []
    for _ in range(probes):
        v = [torch.randint(0, 2, p.shape, generator=generator, dtype=p.dtype).mul_(2).sub_(1) for p in loss.params]
        samples.append(float(_dot(v, loss.hvp(v))))
    mean = sum(samples) / probes
    std = math.sqrt(sum((s - mean) ** 2 for s in samples) / (probes - 1))
    return Estimate(mean, std / math.sqrt(probes), probes)


def top_eigenvalue(loss: SummedLoss, generator: torch.Generator, tol: float = 1e-3,
                   max_iterations: int = 100) -> Eigenvalue:
    """The Hessian's eigenvalue of largest magnitude, by power iteration."""
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in loss.params]
    norm = math.sqrt(float(_dot(v, v)))
    v = [x / norm for x in v]
    previous = None
    for iteration in range(1, max_iterations + 1):
        hv = loss.hvp(v)
        value = float(_dot(v, hv))   # Rayleigh quotient of the unit vector v
        norm = math.sqrt(float(_dot(hv, hv)))
        if norm == 0.0:
            return Eigenvalue(0.0, iteration, True)
        v = [x / norm for x in hv]
        if previous is not None and abs(value - previous) <= tol * abs(value):
            return Eigenvalue(value, iteration, True)
        previous = value
    return Eigenvalue(value, max_iterations, False)


def filter_normalised_direction(params: Sequence[Tensor], generator: torch.Generator) -> list[Tensor]:
    """A Gaussian direction whose every filter (slice along dim 0 of a weight with 2 or more
    dims) has the norm of the same filter of `params`; 1-D parameters (biases,
    normalisation scales and shifts) get zero."""
    direction = []
    for p in params:
        if p.dim() < 2:
            direction.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        filters, weights = d.flatten(1), p.detach().flatten(1)
        scale = weights.norm(dim=1, keepdim=True) / filters.norm(dim=1, keepdim=True).clamp_min(1e-12)
        direction.append((filters * scale).view_as(p))
    return direction


@torch.no_grad()
def loss_curve(loss: SummedLoss, direction: Sequence[Tensor], steps: Sequence[float]) -> list[float]:
    """The loss at params + alpha * direction for each alpha; the weights are put back after."""
    original = [p.detach().clone() for p in loss.params]
    losses = []
    try:
        for alpha in steps:
            for p, p0, d in zip(loss.params, original, direction, strict=True):
                p.copy_(p0 + alpha * d)
            losses.append(loss.value())
    finally:
        for p, p0 in zip(loss.params, original, strict=True):
            p.copy_(p0)
    return losses
