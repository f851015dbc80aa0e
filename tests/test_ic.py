"""Internal-classifier training: the PKD loss against a hand computation, the teacher
schedule, frozen backbones and teachers that stay bit-identical, per-IC model selection
on validation, the command line and two-process DDP. Tiny networks on in-memory data."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import trainer
from trainer.cli import main as cvtrain
from trainer.config import ConfigError, from_dict, load_config
from trainer.data.contract import INPUT_CHANNELS, MODALITIES
from trainer.data.tensors import TensorData
from trainer.models.networks import ModalityNet
from trainer.train import checkpoint
from trainer.train.checkpoint import load_backbone, load_ic_run
from trainer.train.distributed import Dist
from trainer.train.ic import ICTask, train_ics
from trainer.train.loop import train
from trainer.train.pkd import TeacherSchedule, ic_loss, soft_target_loss
from trainer.train.validate import evaluate_exits

CPU = Dist(0, 1, 0, torch.device("cpu"))
SIZE, CLASSES, SEGMENTS = 32, 3, 2
PACKAGE_PARENT = Path(trainer.__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the loss


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_pkd_loss_equals_a_hand_computation():
    z = np.array([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 0.3, -3.0], [-1.0, 4.0, 0.0, 1.0]])
    t = np.array([[1.0, 0.0, 0.0, -1.0], [3.0, -2.0, 0.5, 0.5], [0.0, 0.0, 2.0, 0.0]])
    # mean over the batch of -sum_c softmax(t)_c log softmax(z)_c, by hand in numpy
    p = np.exp(t) / np.exp(t).sum(1, keepdims=True)
    expected = np.mean([-sum(p[b, c] * _log_softmax(z)[b, c] for c in range(4)) for b in range(3)])
    got = soft_target_loss(torch.tensor(z), torch.tensor(t))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # temperature 2: soften both, then scale by T^2 = 4
    p2 = np.exp(t / 2) / np.exp(t / 2).sum(1, keepdims=True)
    expected2 = 4 * np.mean(-(p2 * _log_softmax(z / 2)).sum(1))
    assert soft_target_loss(torch.tensor(z), torch.tensor(t), 2.0).item() == pytest.approx(expected2, rel=1e-6)
    # three ICs learning from one teacher: the sum of their losses; labels add a weighted CE
    ics = torch.tensor(np.stack([z, z[::-1].copy(), 2 * z], 1))  # (B, 3, K)
    per_ic = [soft_target_loss(ics[:, e], torch.tensor(t)).item() for e in range(3)]
    assert ic_loss(ics, torch.tensor([0, 1, 2]), torch.tensor(t)).item() == pytest.approx(sum(per_ic), rel=1e-6)
    ce = [-_log_softmax(ics[:, e].numpy())[np.arange(3), [0, 1, 2]].mean() for e in range(3)]
    mixed = ic_loss(ics, torch.tensor([0, 1, 2]), torch.tensor(t), label_weight=0.5)
    assert mixed.item() == pytest.approx(sum(per_ic) + 0.5 * sum(ce), rel=1e-6)
    assert ic_loss(ics, torch.tensor([0, 1, 2]), None).item() == pytest.approx(sum(ce), rel=1e-6)


def test_pkd_loss_sends_no_gradient_to_the_teacher():
    z = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    soft_target_loss(z, t).backward()
    assert z.grad is not None and t.grad is None


def test_teacher_schedule_switches_at_the_configured_epochs():
    paper = TeacherSchedule.of(["mv", "residual", "self"], [50, 100], student="iframe")
    assert [paper.teacher(e) for e in (0, 49, 50, 99, 100, 299)] == ["mv", "mv", "residual", "residual",
                                                                     "iframe", "iframe"]
    assert TeacherSchedule.of(["mv", "residual", "self"], [50, 100], student="mv").modalities() == ("mv", "residual")
    anti = TeacherSchedule.of(["self", "residual", "mv"], [2, 4], student="residual")
    assert [anti.teacher(e) for e in range(6)] == ["residual"] * 4 + ["mv"] * 2
    single = TeacherSchedule.of(["iframe"], [], student="mv")
    assert {single.teacher(e) for e in range(10)} == {"iframe"}
    for epochs in ([50], [100, 50], [0, 10]):
        with pytest.raises(ValueError):
            TeacherSchedule.of(["mv", "residual", "self"], epochs, student="mv")


# ------------------------------------------------------------------------------ training


class ModalityVideos:
    """Fixed videos with all three modalities, each a class pattern plus noise, for IC
    training with teachers of other modalities (a DataModule, trainer.data.contract). Every
    training step yields the same batch, so an epoch's loss is that batch's loss."""

    def __init__(self, student: str, videos: int = 12, batch: int = 6, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.student = student
        self.num_classes = CLASSES
        self.class_names = [f"class{k}" for k in range(CLASSES)]
        self.steps_per_epoch = 3
        self.batch_size = batch
        labels = torch.arange(videos) % CLASSES
        self.splits = {}
        for s, split in enumerate(("train", "val", "test")):
            inputs = {}
            for m in MODALITIES:
                pattern = torch.randn(CLASSES, INPUT_CHANNELS[m], SIZE, SIZE, generator=g)
                inputs[m] = pattern[labels].unsqueeze(1) + torch.randn(videos, SEGMENTS, INPUT_CHANNELS[m], SIZE,
                                                                       SIZE, generator=g)
            self.splits[split] = (inputs, labels, [f"{split}_{i:03d}" for i in range(videos)])

    def _batch(self, split: str, student: str, rows: slice) -> dict:
        inputs, labels, ids = self.splits[split]
        return {"input": inputs[student][rows], "label": labels[rows], "id": ids[rows],
                "inputs": {m: x[rows] for m, x in inputs.items()}}

    def train_batches(self, epoch: int):
        while True:
            yield self._batch("train", self.student, slice(0, self.batch_size))

    def eval_batches(self, split: str):
        n = len(self.splits[split][2])
        return [self._batch(split, self.student, slice(i, i + self.batch_size)) for i in range(0, n, self.batch_size)]

    def split_size(self, split: str) -> int:
        return len(self.splits[split][2])


def save_backbone(path: Path, modality: str, seed: int) -> dict[str, torch.Tensor]:
    """A backbone checkpoint as `cvtrain fit` writes best.pt, with BatchNorm statistics
    that are not the initial ones (so a drift would show)."""
    torch.manual_seed(seed)
    net = ModalityNet(modality, "resnet18", CLASSES, width=8)
    for name, buffer in net.named_buffers():
        if name.endswith("running_mean"):
            buffer.normal_(0, 0.1)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save({"epoch": 1, "model": net.state_dict(), "model_args": {"modality": modality, "arch": "resnet18",
                                                                            "num_classes": CLASSES, "width": 8}},
                    path)
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    root = tmp_path_factory.mktemp("backbones")
    states = {m: save_backbone(root / m / "best.pt", m, seed=i + 1) for i, m in enumerate(MODALITIES)}
    return root, states


def ic_config(run_dir: Path, backbones: Path, *overrides: str, modality: str = "residual"):
    data = {
        "model": {"modality": modality, "arch": "resnet18", "width": 8},
        "data": {"source": "tensors", "input_size": SIZE, "num_segments": SEGMENTS, "eval_segments": SEGMENTS,
                 "tensors": {"num_classes": CLASSES, "train_videos": 12, "val_videos": 5, "test_videos": 5}},
        "optim": {"lr": 1e-2, "epochs": 2, "batch_size": 6, "weight_decay": 0.0},
        "ic": {"method": "pkd", "backbones": f"{backbones}/{{modality}}/best.pt", "teachers": ["mv", "self"],
               "teacher_epochs": [1]},
        "run": {"dir": str(run_dir), "device": "cpu", "progress": False},
    }
    return from_dict(data, overrides)


def test_frozen_backbone_and_teachers_stay_bit_identical(tmp_path, backbones):
    root, states = backbones
    cfg = ic_config(tmp_path / "run", root, "optim.epochs=2")
    data = ModalityVideos("residual")
    torch.manual_seed(cfg.run.seed)
    task = ICTask(cfg, CPU, data.num_classes)
    before = {k: v.clone() for k, v in task.model.ics.state_dict().items()}
    history = train(cfg, task, data, CPU)
    assert [r["teacher"] for r in history] == ["mv", "residual"]
    for name in ("last.pt", "best.pt"):
        saved = checkpoint.load(tmp_path / "run" / name)["model"]
        backbone = {k.removeprefix("net."): v for k, v in saved.items() if k.startswith("net.")}
        assert backbone.keys() == states["residual"].keys()
        for key, value in states["residual"].items():  # weights and BatchNorm buffers alike
            assert torch.equal(backbone[key], value), (name, key)
    for key, value in states["mv"].items():
        assert torch.equal(task.teachers["mv"].state_dict()[key], value), key
    assert not task.teachers["mv"].training and not task.model.net.training
    assert not any(p.requires_grad for p in task.model.net.parameters())
    # The ICs did learn, and the optimiser held nothing else.
    after = task.model.ics.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before)
    last = checkpoint.load(tmp_path / "run" / "last.pt")
    assert len(last["optimizer"]["state"]) == len(list(task.model.ics.parameters()))


def test_each_epoch_learns_from_its_scheduled_teacher(tmp_path, backbones):
    """lr 0: the ICs stay as initialised, so each epoch's training loss is the soft-target
    loss of the one fixed batch against that epoch's teacher, which we recompute here."""
    root, _ = backbones
    cfg = ic_config(tmp_path / "run", root, "optim.lr=0", "optim.epochs=3", 'ic.teachers=["mv","residual","self"]',
                    "ic.teacher_epochs=[1,2]", modality="iframe")
    data = ModalityVideos("iframe")
    history = train_ics(cfg, CPU, data)
    assert [r["teacher"] for r in history] == ["mv", "residual", "iframe"]
    model = load_ic_run(tmp_path / "run", which="last")
    model.ics.train()  # training-mode BatchNorm, as in the epochs
    batch = next(data.train_batches(0))
    with torch.no_grad():
        logits = model.ics(model.net.forward_exits(batch["input"]), SEGMENTS)
        teachers = {"iframe": model.net(batch["input"])}
        teachers.update({m: load_backbone(root / m / "best.pt")(batch["inputs"][m]) for m in ("mv", "residual")})
    expected = {m: soft_target_loss(logits, t).item() for m, t in teachers.items()}
    assert len({round(v, 4) for v in expected.values()}) == 3  # the teachers are distinguishable
    for record in history:
        assert record["train_loss"] == pytest.approx(expected[record["teacher"]], rel=1e-5)


def test_each_ic_keeps_the_weights_of_its_best_validation_epoch(tmp_path, backbones):
    root, states = backbones
    cfg = ic_config(tmp_path / "run", root, "optim.epochs=4", "run.save_every=1", "ic.method=ce", "optim.lr=3e-2")
    history = train_ics(cfg, CPU, ModalityVideos("residual"))
    best = checkpoint.load(tmp_path / "run" / "best.pt")
    for i, name in enumerate(("ic1", "ic2", "ic3")):
        val = [r[f"val_{name}_top1"] for r in history]
        epoch = 1 + val.index(max(val))  # the first epoch with its best validation top-1
        assert best["best"][name] == {"epoch": epoch, "top1": max(val)}
        at_epoch = checkpoint.load(tmp_path / "run" / f"epoch_{epoch:04d}.pt")["model"]
        prefix = f"ics.heads.{i}."
        for key in (k for k in at_epoch if k.startswith(prefix)):
            assert torch.equal(best["model"][key], at_epoch[key]), key
    assert all(torch.equal(best["model"][f"net.{k}"], v) for k, v in states["residual"].items())
    assert "teacher" not in history[0] and all("val_fc_top1" in r for r in history)


def test_configuration_errors(tmp_path, backbones):
    root, _ = backbones
    with pytest.raises(ConfigError, match="the teachers mv need their own inputs"):
        train_ics(ic_config(tmp_path / "a", root), CPU)
    with pytest.raises(ConfigError, match="phase starting at epoch 5 never runs"):
        train_ics(ic_config(tmp_path / "b", root, "ic.teacher_epochs=[5]"), CPU, ModalityVideos("residual"))
    with pytest.raises(ConfigError, match="model.width = 16"):
        train_ics(ic_config(tmp_path / "c", root, "model.width=16", "ic.method=ce"), CPU)
    with pytest.raises(ConfigError, match="ic.teachers: 'rgb' is not one of"):
        ic_config(tmp_path, root, 'ic.teachers=["rgb", "self"]')
    with pytest.raises(ConfigError, match="2 teachers need 1 switch epochs"):
        ic_config(tmp_path, root, "ic.teacher_epochs=[]")


def test_cli_ic_options_reach_the_config(tmp_path, backbones, capsys):
    root, _ = backbones
    cfg_file = tmp_path / "ic.toml"
    cfg_file.write_text(f"""
[model]
modality = "mv"
arch = "resnet18"
width = 8
[data]
source = "tensors"
input_size = {SIZE}
num_segments = {SEGMENTS}
eval_segments = {SEGMENTS}
[data.tensors]
num_classes = {CLASSES}
train_videos = 8
[optim]
lr = 1e-2
epochs = 1
batch_size = 8
[ic]
backbones = "{root}/{{modality}}/best.pt"
[run]
dir = "{tmp_path}/{{modality}}"
device = "cpu"
progress = false
""")
    assert cvtrain(["ic", "--config", str(cfg_file), "--method", "pkd", "--teachers", "self", "--teacher-epochs="]) == 0
    saved = load_config(tmp_path / "mv" / "config.toml")
    assert (saved.ic.method, saved.ic.teachers, saved.ic.teacher_epochs) == ("pkd", ["self"], [])
    record = json.loads((tmp_path / "mv" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["teacher"] == "mv" and record["train_videos"] == 8
    with pytest.raises(SystemExit) as e:
        cvtrain(["ic", "--config", str(cfg_file), "--teachers", "mv,self", "--teacher-epochs", "x"])
    assert e.value.code == 2 and "comma-separated integers" in capsys.readouterr().err


def test_ic_training_under_torchrun(tmp_path, backbones):
    """Two gloo ranks with uneven videos: the run finishes, the frozen backbone stays
    bit-identical, and the last epoch's per-IC validation equals one process scoring the
    saved ICs."""
    root, states = backbones
    cfg_file = tmp_path / "ddp.toml"
    cfg_file.write_text(f"""
[model]
modality = "residual"
arch = "resnet18"
width = 8
[data]
source = "tensors"
input_size = {SIZE}
num_segments = {SEGMENTS}
eval_segments = {SEGMENTS}
[data.tensors]
num_classes = {CLASSES}
train_videos = 13
val_videos = 5
[optim]
lr = 1e-2
epochs = 2
batch_size = 4
[ic]
method = "pkd"
backbones = "{root}/{{modality}}/best.pt"
teachers = ["self"]
teacher_epochs = []
[run]
dir = "{tmp_path}/run"
device = "cpu"
progress = false
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "trainer.cli", "ic", "--config", str(cfg_file)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2] and all(r["train_videos"] == 3 * 4 for r in history)
    assert all(r["val_videos"] == 5 for r in history)
    last = checkpoint.load(tmp_path / "run" / "last.pt")
    assert len(last["rng"]) == 2
    for key, value in states["residual"].items():
        assert torch.equal(last["model"][f"net.{key}"], value), key
    cfg = load_config(tmp_path / "run" / "config.toml")
    model = load_ic_run(tmp_path / "run", which="last")
    data = TensorData(cfg, rank=0, world_size=1)
    (ev,) = evaluate_exits(model.net, [model.ics], data.eval_batches("val"), CLASSES, dist=CPU, expected=5, show=False)
    for name in ("ic1", "ic2", "ic3", "fc"):
        assert history[-1][f"val_{name}_top1"] == ev.summaries[name]["top1"]
        assert history[-1][f"val_{name}_loss"] == pytest.approx(ev.summaries[name]["loss"], rel=1e-5)


@pytest.mark.parametrize("dataset", ["ucf101", "hmdb51"])
def test_bundled_paper_recipes(dataset):
    ce, pkd = (load_config(f"{dataset}_ic_{m}") for m in ("ce", "pkd"))
    assert (ce.ic.method, ce.optim.epochs, ce.optim.lr_steps, ce.optim.batch_size) == ("ce", 150, [50, 100], 32)
    assert (pkd.ic.method, pkd.optim.epochs, pkd.optim.lr_steps, pkd.optim.batch_size) == ("pkd", 300,
                                                                                          [150, 200, 250], 32)
    assert pkd.optim.weight_decay == 0 and (pkd.ic.temperature, pkd.ic.label_weight) == (1.0, 0.0)
    # The authors' run scripts, both methods: one rate per network, Adam eps 1e-3, no weight decay.
    for method in ("ce", "pkd"):
        for m, (arch, lr) in {"iframe": ("resnet50", 3e-4), "mv": ("resnet18", 1e-2),
                              "residual": ("resnet18", 5e-3)}.items():
            cfg = load_config(f"{dataset}_ic_{method}", [f"model.modality={m}"])
            assert (cfg.model.arch, cfg.optim.lr, cfg.optim.eps, cfg.optim.weight_decay) == (arch, lr, 1e-3, 0.0)
    schedule = TeacherSchedule.of(pkd.ic.teachers, pkd.ic.teacher_epochs, student="iframe")
    assert [schedule.teacher(e) for e in (0, 49, 50, 99, 100, 299)] == ["mv", "mv", "residual", "residual",
                                                                        "iframe", "iframe"]
    # The backbones are where `cvtrain fit --config DATASET_MODALITY` puts them.
    for m in MODALITIES:
        assert Path(pkd.ic.backbones.replace("{modality}", m)).parent == load_config(f"{dataset}_{m}").run_dir
    # ICs read the data as their backbones were trained on them (flips, sizes, segments).
    assert ce.data == pkd.data == load_config(f"{dataset}_mv").data
    tiny_ce, tiny_pkd = load_config("tiny_synth_ic_ce"), load_config("tiny_synth_ic_pkd")
    # The paper's protocol shrunk: CE gets half of PKD's epochs, steps at 1/3 and 2/3.
    assert 2 * tiny_ce.optim.epochs == tiny_pkd.optim.epochs and tiny_ce.optim == dataclasses.replace(
        tiny_pkd.optim, epochs=tiny_ce.optim.epochs, lr_steps=tiny_ce.optim.lr_steps)
    assert [3 * s for s in tiny_ce.optim.lr_steps] == [tiny_ce.optim.epochs, 2 * tiny_ce.optim.epochs]
    for name in ("tiny_synth_ic_ce", "tiny_synth_ic_pkd"):
        tiny = load_config(name)
        assert tiny.data == load_config("tiny_synth").data
        assert Path(tiny.ic.backbones.replace("{modality}", "mv")).parent == load_config(
            "tiny_synth", ["model.modality=mv"]).run_dir
