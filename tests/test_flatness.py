"""`cvtrain flatness` on trained runs (the in-memory tensor source): a backbone run gives
one measurement of the whole network, an IC run one per IC with the backbone frozen; the
files it writes hold what the table prints; the same seed gives the same numbers; the
report orders the backbones over their training seeds. The estimators themselves are
checked against known Hessians in test_hessian.py."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from trainer.analysis.flatness import STEPS, FlatnessOptions, Measurement, measure_run, write_run
from trainer.analysis.flatness_summary import flatness_lines
from trainer.cli import main
from trainer.train import checkpoint
from trainer.train.distributed import Dist

CPU = Dist(0, 1, 0, torch.device("cpu"))
CONFIG = """
[model]
modality = "residual"
arch = "resnet18"
width = 8

[data]
source = "tensors"
input_size = 32
num_segments = 2
eval_segments = 2

[data.tensors]
num_classes = 3
train_videos = 12
val_videos = 4
test_videos = 4

[optim]
lr = 3e-3
epochs = 1
batch_size = 4

[run]
dir = "{dir}"
device = "cpu"
progress = false
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("flatness")
    (base / "fit.toml").write_text(CONFIG.format(dir=base / "net"))
    assert main(["fit", "--config", str(base / "fit.toml")]) == 0
    (base / "ic.toml").write_text(CONFIG.format(dir=base / "ic")
                                  + f'\n[ic]\nmethod = "ce"\nbackbones = "{base / "net" / "best.pt"}"\n')
    assert main(["ic", "--config", str(base / "ic.toml")]) == 0
    return base / "net", base / "ic"


def test_a_backbone_run_and_an_ic_run_are_measured_and_written(runs, capsys):
    net, ic = runs
    weights = checkpoint.load(net / "best.pt")["model"]
    assert main(["flatness", str(net), str(ic), "--probes", "4", "--batches", "2", "--directions", "1"]) == 0
    printed = capsys.readouterr().out
    for run, parts in ((net, ["network"]), (ic, ["ic1", "ic2", "ic3"])):
        written = json.loads((run / "flatness" / "flatness.json").read_text())
        assert (run / "flatness" / "curves.png").stat().st_size > 0
        assert [m["name"] for m in written["measurements"]] == parts
        for m in written["measurements"]:
            assert m["videos"] == 8   # 2 batches of 4
            assert all(math.isfinite(m[k]) for k in ("loss", "trace", "trace_stderr", "top_eigenvalue"))
            assert m["trace_per_parameter"] == pytest.approx(m["trace"] / m["parameters"])
            [curve] = m["curves"]
            assert len(curve) == len(STEPS) and curve[STEPS.index(0.0)] == pytest.approx(m["loss"])
            assert f"{run}" in printed and f" {m['name']} " in printed
    ic_params = checkpoint.load(ic / "best.pt")["model"]
    first = json.loads((ic / "flatness" / "flatness.json").read_text())["measurements"][0]
    assert first["parameters"] == sum(v.numel() for k, v in ic_params.items()
                                      if k.startswith("ics.heads.0.") and v.is_floating_point()
                                      and "running" not in k)
    after = checkpoint.load(net / "best.pt")["model"]
    assert all(torch.equal(weights[k], after[k]) for k in weights)   # measuring changes no checkpoint


def test_the_same_seed_gives_the_same_numbers(runs):
    net, _ = runs
    options = FlatnessOptions(batches=1, probes=3, directions=1, max_iterations=5)
    assert measure_run(net, CPU, options) == measure_run(net, CPU, options)
    other = measure_run(net, CPU, FlatnessOptions(batches=1, probes=3, directions=1, max_iterations=5, seed=1))
    assert other[0].trace != measure_run(net, CPU, options)[0].trace


def test_the_report_orders_the_backbones_over_their_training_seeds(tmp_path):
    """Three backbone seeds (BACKBONES and BACKBONES/seeds/seedN), the paper's order in two
    of them: the table has their mean ± std and the sentence says 2 of 3."""
    per_seed = [{"iframe": 1.0, "residual": 2.0, "mv": 3.0}, {"iframe": 2.0, "residual": 4.0, "mv": 6.0},
                {"iframe": 3.0, "residual": 6.0, "mv": 4.0}]   # the third: MV flatter than residual
    folders = [tmp_path / "backbones", tmp_path / "backbones/seeds/seed1", tmp_path / "backbones/seeds/seed2"]
    for folder, traces in zip(folders, per_seed, strict=True):
        for modality, trace in traces.items():
            (folder / modality).mkdir(parents=True)
            m = Measurement(name="network", parameters=10, videos=8, loss=1.0, trace=10 * trace, trace_stderr=0.1,
                            trace_per_parameter=trace, top_eigenvalue=trace, eigen_iterations=5,
                            eigen_converged=True, curves=[[1.0 + abs(s) for s in STEPS]])
            write_run(folder / modality, [m], FlatnessOptions())
    lines = flatness_lines([], tmp_path / "backbones", tmp_path)
    text = "\n".join(lines)
    assert "shows in the means over 3 training seeds; it holds in 2 of 3 seeds on their own" in text
    assert re.search(r"\|\s+MV \|\s+network \|\s+\|\s+3 \|\s+4\.33e\+00 ± 1\.53e\+00 \|", text)
    assert (tmp_path / "flatness.png").stat().st_size > 0
