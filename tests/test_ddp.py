"""Two-process DDP on the CPU (gloo) through the real launcher: `torchrun` running
`python -m trainer.cli`. The in-memory source spreads videos unevenly over the ranks
(video i on rank i % 2), so the ranks hold different numbers of training videos and run
different numbers of evaluation batches; training must still finish (every rank takes
the same number of steps) and evaluation must count every video exactly once. The
single-process evaluation of the same checkpoint is the reference.

Then two nodes as deployed, on one machine: one `torchrun --nnodes 2` per node (c10d
rendezvous on a loopback port, one process each) must train exactly as one node with two
processes, fail fast when a node dies and resume to the uninterrupted result, and time out
when a node never arrives."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
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


ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))}
ONE_NODE = ("--standalone", "--nproc_per_node", "2")


def torchrun_command(*args: str, launcher: tuple[str, ...] = ONE_NODE) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "trainer.cli", *args]


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(torchrun_command(*args), cwd=cwd, env=ENV, capture_output=True, text=True,
                              timeout=TIMEOUT)
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


# --- Two nodes on one machine, as deployed: `torchrun --nnodes 2`, one process each ---

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(*args: str, cwd: Path, port: int, ranks: tuple[int, ...] = (0, 1),
                join_timeout: int = 60) -> list[subprocess.Popen]:
    """One torchrun per node (c10d rendezvous on a loopback port), each in a process
    group of its own, so a test can take a node away whole."""
    nodes = []
    for rank in ranks:
        launcher = ("--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                    "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_conf", f"join_timeout={join_timeout}")
        nodes.append(subprocess.Popen(torchrun_command(*args, launcher=launcher), cwd=cwd, env=ENV,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True))
    return nodes


def kill_node(node: subprocess.Popen) -> None:
    """SIGKILL to the node's torchrun and every process under it, as when its machine dies
    (torchrun starts each worker in a session of its own, so its process group is not enough)."""
    def tree(pid: int) -> list[int]:
        children = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if entry.isdigit() and int(f.read().rpartition(")")[2].split()[1]) == pid:
                        children.append(int(entry))
            except OSError:
                continue
        return [pid, *(p for child in children for p in tree(child))]

    for pid in tree(node.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.wait()


def finish(nodes: list[subprocess.Popen]) -> list[tuple[int, str]]:
    """(exit status, stderr) of each node once it ends; a node still running after TIMEOUT fails the test."""
    ends = []
    for node in nodes:
        try:
            _, err = node.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_node(node)
            _, err = node.communicate()
            pytest.fail(f"node {nodes.index(node)} did not finish in {TIMEOUT} s (a rank hung?); "
                        f"the end of its stderr:\n{err[-3000:]}")
        ends.append((node.returncode, err))
    return ends


def longer(config: str) -> str:
    """The config with epochs of a few seconds, long enough to kill a node inside one."""
    return config.replace("epochs = 2", "epochs = 3").replace("train_videos = 13", "train_videos = 600")


def two_node_fit(base: Path, name: str, config: str = CONFIG) -> Path:
    path = base / f"{name}.toml"
    path.write_text(config.format(dir=base / name))
    nodes = start_nodes("fit", "--config", str(path), cwd=base, port=_free_port())
    assert [status for status, _ in finish(nodes)] == [0, 0]
    return base / name


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(run: Path, reference: Path) -> None:
    """Same losses per epoch (to float tolerance: the reduction order may differ) and the same final weights."""
    for ours, theirs in zip(_history(run), _history(reference), strict=True):
        assert ours["epoch"] == theirs["epoch"]
        losses = [key for key in theirs if key.endswith("_loss")]
        assert "train_loss" in losses and len(losses) > 1 and ours.keys() == theirs.keys()
        for key in losses:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key
    ours, theirs = checkpoint.load(run / "last.pt")["model"], checkpoint.load(reference / "last.pt")["model"]
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.allclose(ours[key].float(), theirs[key].float(), rtol=1e-4, atol=1e-5), key


def test_two_nodes_train_as_one_node_with_two_processes(ddp_run, tmp_path):
    assert_same_run(two_node_fit(tmp_path, "run"), ddp_run)


IC_CONFIG = """
[ic]
method = "ce"
backbones = "{backbone}"
"""


def test_two_node_ic_training_equals_one_node(ddp_run, tmp_path):
    config = tmp_path / "ic.toml"
    config.write_text(CONFIG.format(dir="{dir}") + IC_CONFIG.format(backbone=ddp_run / "best.pt"))
    one, two = tmp_path / "one", tmp_path / "two"
    torchrun("ic", "--config", str(config), "--set", f"run.dir={one}", cwd=tmp_path)
    nodes = start_nodes("ic", "--config", str(config), "--set", f"run.dir={two}", cwd=tmp_path, port=_free_port())
    assert [status for status, _ in finish(nodes)] == [0, 0]
    assert_same_run(two, one)


def test_a_node_killed_mid_epoch_then_both_again_resume_to_the_same_run(tmp_path):
    """Node 1 is SIGKILLed (torchrun and its worker) once epoch 1 is logged; node 0 must
    then fail (its next collective finds the peer gone), not hang. The same two commands again resume from epoch 1's last.pt and
    end with the checkpoint of an uninterrupted run."""
    reference = two_node_fit(tmp_path, "reference", longer(CONFIG))
    config = tmp_path / "killed.toml"
    config.write_text(longer(CONFIG).format(dir=tmp_path / "killed"))
    run = tmp_path / "killed"
    nodes = start_nodes("fit", "--config", str(config), cwd=tmp_path, port=_free_port())
    deadline = time.monotonic() + TIMEOUT
    while not ((run / "metrics.jsonl").exists() and _history(run)):
        assert time.monotonic() < deadline and nodes[1].poll() is None, "epoch 1 never ended"
        time.sleep(0.05)
    kill_node(nodes[1])
    (status, err), _ = finish(nodes)
    assert status != 0, "node 0 finished without its peer"
    assert len(_history(run)) < 3, "the run ended before node 1 was killed: nothing was interrupted"

    nodes = start_nodes("fit", "--config", str(config), cwd=tmp_path, port=_free_port())
    assert [status for status, _ in finish(nodes)] == [0, 0]
    assert_same_run(run, reference)


def test_a_node_that_never_arrives_times_the_rendezvous_out(tmp_path):
    config = tmp_path / "alone.toml"
    config.write_text(CONFIG.format(dir=tmp_path / "alone"))
    started = time.monotonic()
    [(status, err)] = finish(start_nodes("fit", "--config", str(config), cwd=tmp_path, port=_free_port(),
                                         ranks=(0,), join_timeout=5))
    assert status != 0 and "RendezvousTimeoutError" in err, err[-2000:]
    assert time.monotonic() - started < 90
    assert not (tmp_path / "alone").exists()   # no rank ever ran


def test_flatness_under_torchrun_equals_one_process(ddp_run):
    """Each rank takes its own training batches and the Hessian-vector products are
    summed over ranks: with every training video in, the same function as one process."""
    from trainer.analysis.flatness import FlatnessOptions, measure_run

    torchrun("flatness", str(ddp_run), "--batches", "100", "--probes", "3", "--directions", "1", cwd=ddp_run.parent)
    [ranks] = json.loads((ddp_run / "flatness" / "flatness.json").read_text())["measurements"]
    [one] = measure_run(ddp_run, Dist(0, 1, 0, torch.device("cpu")), FlatnessOptions(batches=100, probes=3, directions=1))
    assert ranks["videos"] == one.videos == 13
    assert ranks["loss"] == pytest.approx(one.loss, rel=1e-5)
    assert ranks["trace"] == pytest.approx(one.trace, rel=1e-4)
    assert ranks["top_eigenvalue"] == pytest.approx(one.top_eigenvalue, rel=1e-3)
    [curve] = ranks["curves"]
    assert curve == pytest.approx(one.curves[0], rel=1e-5)
