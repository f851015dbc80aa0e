"""Two-process DDP on the CPU (gloo) through the real launcher: `torchrun` running
`python -m trainer.cli`. The in-memory source spreads videos unevenly over the ranks
(video i on rank i % 2), so the ranks hold different numbers of training videos and run
different numbers of evaluation batches; training must still finish (every rank takes
the same number of steps) and evaluation must count every video exactly once. The
single-process evaluation of the same checkpoint is the reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import trainer
from trainer.analysis.evaluate import evaluate_runs
from trainer.train import checkpoint
from trainer.train.distributed import Dist

# The children import the same trainer package as this process (installed or source tree).
PACKAGE_PARENT = Path(trainer.__file__).resolve().parents[1]
TIMEOUT = 180  # seconds; a hang (a rank waiting on a collective) fails here

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
train_videos = 13  # 7 on rank 0, 6 on rank 1
val_videos = 5     # 3 and 2 videos: 2 batches and 1
test_videos = 9    # 5 and 4 videos: 3 batches and 2

[optim]
lr = 3e-3
epochs = 2
batch_size = 4     # 2 per rank
lr_mult_stem = 1.0
lr_mult_body = 1.0
lr_mult_fc = 1.0

[run]
dir = "{dir}"
device = "cpu"
progress = false
"""


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "trainer.cli", *args]
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun {' '.join(args)} did not finish in {TIMEOUT} s (a rank hung?)\n{e.stderr}")
    assert done.returncode == 0, f"torchrun {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("ddp")
    config = base / "ddp.toml"
    config.write_text(CONFIG.format(dir=base / "run"))
    torchrun("fit", "--config", str(config), cwd=base)
    return base / "run"


def test_uneven_ranks_train_the_same_steps(ddp_run):
    history = [json.loads(line) for line in (ddp_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    # 13 // 4 = 3 steps per epoch on each rank, 2 videos per rank per step, summed over ranks
    assert all(r["train_videos"] == 3 * 4 for r in history)
    assert all(r["val_videos"] == 5 and r["val_clips"] == 10 for r in history)
    last = checkpoint.load(ddp_run / "last.pt")
    assert len(last["rng"]) == 2  # one RNG state per rank


def test_distributed_validation_equals_one_process(ddp_run):
    """The epoch's validation figures (all_reduced over uneven ranks, after rank 0's BN
    buffers were broadcast) equal one process evaluating the saved last checkpoint."""
    last = json.loads((ddp_run / "metrics.jsonl").read_text().splitlines()[-1])
    one = evaluate_runs(ddp_run, dist=Dist(0, 1, 0, torch.device("cpu")), split="val", which="last", show=False)
    assert one["residual"]["videos"] == 5
    assert last["val_top1"] == one["residual"]["top1"]
    assert last["val_loss"] == pytest.approx(one["residual"]["loss"], rel=1e-5)


def test_distributed_eval_covers_every_video_once(ddp_run):
    torchrun("eval", str(ddp_run), "--split", "test", cwd=ddp_run.parent)
    out = ddp_run / "eval" / "test"
    metrics = json.loads((out / "metrics.json").read_text())["residual"]
    assert metrics["videos"] == metrics["expected_videos"] == 9
    assert metrics["videos_per_rank"] == [5, 4]
    ddp = dict(np.load(out / "residual.npz"))
    assert ddp["ids"].tolist() == [f"test_{i:05d}" for i in range(9)]
    assert ddp["labels"].tolist() == [i % 3 for i in range(9)]

    one = evaluate_runs(ddp_run, dist=Dist(0, 1, 0, torch.device("cpu")), split="test", show=False)["residual"]
    single = np.load(out / "residual.npz")
    assert np.array_equal(single["ids"], ddp["ids"])
    assert np.allclose(single["logits"], ddp["logits"], atol=1e-5)
    assert np.array_equal(single["confusion"], ddp["confusion"])
    assert one["top1"] == metrics["top1"] and one["top5"] == metrics["top5"]
