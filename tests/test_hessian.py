"""Curvature estimates (trainer.analysis.hessian) against Hessians known in closed form or
formed explicitly: a quadratic 0.5 x^T A x split over two "batches", and a tiny network
whose Hessian torch.autograd.functional.hessian builds entry by entry."""

from __future__ import annotations

import torch
from torch import nn

from trainer.analysis.hessian import (
    SummedLoss,
    filter_normalised_direction,
    hutchinson_trace,
    loss_curve,
    top_eigenvalue,
)


def _quadratic(n: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A symmetric positive definite A with a known, well separated top eigenvalue, and a point x."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eigenvalues = torch.linspace(0.1, 3.0, n, dtype=torch.float64)
    eigenvalues[-1] = 6.0
    return q @ torch.diag(eigenvalues) @ q.T, torch.randn(n, generator=g, dtype=torch.float64)


def _halves(a: torch.Tensor, x: torch.Tensor) -> list:
    # 0.5 x^T A x = 0.5 x^T (A/2) x + 0.5 x^T (A/2) x: two batch closures summing to the loss.
    return [lambda: 0.25 * x @ a @ x, lambda: 0.25 * x @ a @ x]


def test_hvp_of_a_quadratic_is_a_times_v():
    a, x = _quadratic()
    x.requires_grad_(True)
    v = torch.randn(len(x), dtype=torch.float64)
    (hv,) = SummedLoss(_halves(a, x), [x]).hvp([v])
    assert torch.allclose(hv, a @ v, atol=1e-10)


def test_trace_and_top_eigenvalue_of_a_quadratic():
    a, x = _quadratic()
    x.requires_grad_(True)
    loss = SummedLoss(_halves(a, x), [x])
    trace = hutchinson_trace(loss, probes=200, generator=torch.Generator().manual_seed(1))
    assert trace.samples == 200 and trace.stderr > 0
    assert abs(trace.value - float(torch.trace(a))) < 4 * trace.stderr
    top = top_eigenvalue(loss, generator=torch.Generator().manual_seed(2), tol=1e-6)
    assert top.converged
    assert abs(top.value - 6.0) < 1e-3 * 6.0


def _tiny_network_loss(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    params = list(net.parameters())
    batches = [lambda i=i: nn.functional.cross_entropy(net(x[i:i + 8]), y[i:i + 8]) * 0.5 for i in (0, 8)]
    return net, params, SummedLoss(batches, params), x, y


def _explicit_hessian(net, params, x, y) -> torch.Tensor:
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        tensors = [t.view(s) for t, s in zip(flat.split(sizes), shapes)]
        out = torch.func.functional_call(net, dict(zip([n for n, _ in net.named_parameters()], tensors)), (x,))
        return nn.functional.cross_entropy(out, y)

    flat = torch.cat([p.detach().flatten() for p in params])
    return torch.autograd.functional.hessian(loss, flat)


def test_power_iteration_and_hutchinson_agree_with_an_explicit_hessian():
    net, params, loss, x, y = _tiny_network_loss()
    h = _explicit_hessian(net, params, x, y)
    eigenvalues = torch.linalg.eigvalsh(h)
    largest = eigenvalues[eigenvalues.abs().argmax()]
    top = top_eigenvalue(loss, generator=torch.Generator().manual_seed(0), tol=1e-8, max_iterations=1000)
    assert top.converged
    assert abs(top.value - float(largest)) < 1e-4 * abs(float(largest))
    trace = hutchinson_trace(loss, probes=300, generator=torch.Generator().manual_seed(0))
    assert abs(trace.value - float(torch.trace(h))) < 4 * trace.stderr


def test_the_same_seed_gives_the_same_numbers():
    def measure():
        _, _, loss, _, _ = _tiny_network_loss()
        trace = hutchinson_trace(loss, probes=5, generator=torch.Generator().manual_seed(3))
        top = top_eigenvalue(loss, generator=torch.Generator().manual_seed(3), max_iterations=20)
        return trace, top

    assert measure() == measure()
    _, _, loss, _, _ = _tiny_network_loss()
    other = hutchinson_trace(loss, probes=5, generator=torch.Generator().manual_seed(4))
    assert other != measure()[0]


def test_filter_normalised_direction_and_loss_curve():
    net, params, loss, _, _ = _tiny_network_loss()
    direction = filter_normalised_direction(params, torch.Generator().manual_seed(0))
    for p, d in zip(params, direction):
        if p.dim() < 2:
            assert not d.any()   # biases do not move
        else:
            assert torch.allclose(d.norm(dim=1), p.detach().norm(dim=1))
    before = [p.detach().clone() for p in params]
    curve = loss_curve(loss, direction, [-1.0, 0.0, 1.0])
    assert all(torch.equal(p, b) for p, b in zip(params, before))   # the weights are put back
    assert curve[1] == loss.value()
    assert curve[0] != curve[1] != curve[2]
