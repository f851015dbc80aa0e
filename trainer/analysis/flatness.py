"""`cvtrain flatness RUN...`: how sharp the training loss is at each trained network's weights.

The paper's premise is an order of flatness (I-frame flatter than residual, flatter than
MV) and that PKD leads ICs to flatter minima than CE; this measures both, with
trainer.analysis.hessian, on the run's first `batches` training batches taken with
test-time transforms (the segment centres, centre crops), every BatchNorm in eval mode:
- a `cvtrain fit` run: the network's cross-entropy on labels, over all its parameters;
- a `cvtrain ic` run: each IC's cross-entropy on labels over that IC's parameters, the
  backbone frozen (its features of the batches are computed once and kept). CE- and
  PKD-trained ICs are measured on the same function (the task they are tested on), so
  their numbers compare.

Networks differ in size and input scale, so the raw trace does not order them. Beside it:
the trace per parameter (tr(H) / parameters, the mean curvature along one coordinate),
and the loss along filter-normalised directions (each filter moved in proportion to its
own norm), which is comparable across networks of different scale. None of them is
invariant to every reparametrisation of a network (rescaling a layer before BatchNorm
changes the trace, not the function): compare networks trained alike, over several seeds.

Writes RUN/flatness/flatness.json and RUN/flatness/curves.png for each run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.analysis.hessian import (
    SummedLoss,
    filter_normalised_direction,
    hutchinson_trace,
    loss_curve,
    top_eigenvalue,
)
from trainer.config import Config, load_config
from trainer.data.sources import open_data
from trainer.models.exits import IC_EXITS
from trainer.train import checkpoint, distributed
from trainer.train.distributed import Dist

STEPS = tuple(i / 10 for i in range(-10, 11))   # alpha along each direction


@dataclass(frozen=True)
class FlatnessOptions:
    batches: int = 4          # training batches the loss is summed over, per process
    probes: int = 20          # Rademacher vectors for the trace
    tol: float = 1e-3         # power iteration stops at this relative change
    max_iterations: int = 50
    directions: int = 2       # filter-normalised directions for the loss curves
    seed: int = 0


@dataclass(frozen=True)
class Measurement:
    """One network's (or one IC's) curvature at its trained weights."""

    name: str                 # "network", or "ic1".."ic3"
    parameters: int
    videos: int
    loss: float
    trace: float
    trace_stderr: float
    trace_per_parameter: float
    top_eigenvalue: float
    eigen_iterations: int
    eigen_converged: bool
    curves: list[list[float]]  # loss at each of STEPS, one list per direction


def _measure(name: str, loss: SummedLoss, videos: int, options: FlatnessOptions) -> Measurement:
    generator = torch.Generator().manual_seed(options.seed)   # alike on every rank: the same vectors
    trace = hutchinson_trace(loss, options.probes, generator)
    top = top_eigenvalue(loss, generator, options.tol, options.max_iterations)
    curves = [loss_curve(loss, filter_normalised_direction(loss.params, generator), STEPS)
              for _ in range(options.directions)]
    parameters = sum(p.numel() for p in loss.params)
    return Measurement(name, parameters, videos, loss.value(), trace.value, trace.stderr, trace.value / parameters,
                       top.value, top.iterations, top.converged, curves)


def _fixed_batches(cfg: Config, dist: Dist, count: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """This rank's first `count` training batches (test-time transforms) and the video count over all ranks."""
    data = open_data(cfg, rank=dist.rank, world_size=dist.world_size, device=dist.device)
    batches = []
    for batch in data.eval_batches("train"):
        batches.append((batch["input"].to(dist.device), batch["label"].to(dist.device)))
        if len(batches) == count:
            break
    videos = torch.tensor(float(sum(len(y) for _, y in batches)))
    return batches, int(distributed.all_reduce_sum(videos).item())


def measure_run(run_dir: str | Path, dist: Dist, options: FlatnessOptions = FlatnessOptions(),
                which: str = "best") -> list[Measurement]:
    """The measurements of one run: its network (a `cvtrain fit` run) or its three ICs (`cvtrain ic`)."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.toml")
    inputs, videos = _fixed_batches(cfg, dist, options.batches)
    if any(key.startswith("ics.") for key in checkpoint.load(run_dir / f"{which}.pt")["model"]):
        model = checkpoint.load_ic_run(run_dir, dist.device, which)
        with torch.no_grad():   # the frozen backbone's features, once
            features = [(model.net.forward_exits(x), x.shape[1], y) for x, y in inputs]
        out = []
        for index, name in enumerate(IC_EXITS):
            head = model.ics.heads[index].eval().requires_grad_(True)

            def ic_loss(exits, segments, y, index=index, head=head):
                logits = head((exits.layer1, exits.layer2, exits.layer3)[index]).unflatten(0, (-1, segments)).mean(1)
                return F.cross_entropy(logits, y, reduction="sum") / videos

            closures = [partial(ic_loss, *f) for f in features]
            out.append(_measure(name, SummedLoss(closures, list(head.parameters()), distributed.all_reduce_sum),
                                videos, options))
        return out
    net = checkpoint.load_backbone(run_dir / f"{which}.pt", dist.device).requires_grad_(True)   # still eval mode

    def network_loss(x, y):
        return F.cross_entropy(net(x), y, reduction="sum") / videos

    closures = [partial(network_loss, x, y) for x, y in inputs]
    return [_measure("network", SummedLoss(closures, list(net.parameters()), distributed.all_reduce_sum),
                     videos, options)]


def write_run(run_dir: Path, measurements: Sequence[Measurement], options: FlatnessOptions) -> Path:
    """RUN/flatness/flatness.json and curves.png."""
    out = run_dir / "flatness"
    out.mkdir(exist_ok=True)
    (out / "flatness.json").write_text(json.dumps({"options": asdict(options), "steps": list(STEPS),
                                                   "measurements": [asdict(m) for m in measurements]}, indent=1) + "\n")
    plot_curves({m.name: m for m in measurements}, out / "curves.png", f"{run_dir}: loss along filter-normalised directions")
    return out


def plot_curves(measurements: dict[str, Measurement], path: Path, title: str,
                colours: dict[str, str] | None = None) -> None:
    """Each measurement's loss curves, one colour per measurement, legend outside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (name, m) in enumerate(measurements.items()):
        colour = (colours or {}).get(name, cycle[i % len(cycle)])
        for j, curve in enumerate(m.curves):
            ax.plot(STEPS, curve, color=colour, alpha=0.8, label=name if j == 0 else None)
    ax.set_xlabel("alpha (step along a filter-normalised direction)")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows: Sequence[tuple[str, Measurement]]) -> str:
    """One line per (run, measurement)."""
    header = (f"{'run':<40} {'part':<8} {'params':>8} {'loss':>7} {'trace':>18} {'trace/param':>12} "
              f"{'top eig':>9} {'iters':>5}")
    lines = [header, "-" * len(header)]
    for run, m in rows:
        lines.append(f"{run:<40} {m.name:<8} {m.parameters:>8} {m.loss:>7.3f} "
                     f"{m.trace:>9.2f} ± {m.trace_stderr:<6.2f} {m.trace_per_parameter:>12.2e} "
                     f"{m.top_eigenvalue:>9.3f} {m.eigen_iterations:>4}{'' if m.eigen_converged else '!'}")
    lines.append("trace: Hutchinson estimate ± its standard error; top eig: power iteration "
                 "('!': not converged within the iterations allowed)")
    return "\n".join(lines)


def flatness(run_dirs: Sequence[str | Path], dist: Dist, options: FlatnessOptions = FlatnessOptions(),
             which: str = "best") -> str:
    """Measures every run, writes each run's folder (rank 0) and returns the table."""
    rows = []
    for run_dir in map(Path, run_dirs):
        measurements = measure_run(run_dir, dist, options, which)
        if dist.is_main:
            write_run(run_dir, measurements, options)
        rows += [(str(run_dir), m) for m in measurements]
    return table(rows)
