"""The training loop, resume, checkpoints, evaluation and fusion, metrics, config and
command line, on the in-memory `tensors` source (a unit test of the loop, not the data)
with tiny networks on the CPU."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.analysis.evaluate import evaluate_runs, fuse
from trainer.cli import main as cvtrain
from trainer.config import BUNDLED, Config, ConfigError, from_dict, load_config, save_config, to_toml
from trainer.data.tensors import TensorData
from trainer.models.networks import ModalityNet
from trainer.train import checkpoint
from trainer.train.distributed import Dist
from trainer.train.loop import fit
from trainer.train.metrics import Counts, summarize
from trainer.train.optim import build_optimizer, lr_at, set_lr

CPU = Dist(0, 1, 0, torch.device("cpu"))
TIMING = ("seconds", "samples_per_s", "data_wait_s", "compute_s")


def tiny(run_dir: Path, *overrides: str, modality: str = "iframe") -> Config:
    data = {
        "model": {"modality": modality, "arch": "resnet18", "width": 8},
        "data": {"source": "tensors", "input_size": 32, "num_segments": 2, "eval_segments": 2,
                 "tensors": {"num_classes": 3, "train_videos": 16, "val_videos": 6, "test_videos": 7, "noise": 0.5}},
        "optim": {"lr": 3e-3, "epochs": 4, "batch_size": 8, "lr_steps": [3], "lr_mult_stem": 1.0,
                  "lr_mult_body": 1.0, "lr_mult_fc": 1.0},
        "run": {"dir": str(run_dir), "device": "cpu", "progress": False, "save_every": 2},
    }
    return from_dict(data, overrides)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------ training


class FixedVideos:
    """A handful of pure-noise videos with random labels, the same every step: the
    network can only fit them by memorising (a DataModule, trainer.data.contract)."""

    def __init__(self, videos: int = 8, num_classes: int = 4) -> None:
        g = torch.Generator().manual_seed(0)
        self.num_classes = num_classes
        self.class_names = [str(k) for k in range(num_classes)]
        self.steps_per_epoch = 5
        self.batch = {"input": torch.randn(videos, 2, 3, 32, 32, generator=g),
                      "label": torch.randint(num_classes, (videos,), generator=g),
                      "id": [f"v{i}" for i in range(videos)]}

    def train_batches(self, epoch):
        while True:
            yield self.batch

    def eval_batches(self, split):
        return [self.batch]

    def split_size(self, split):
        return len(self.batch["id"])


def test_tiny_model_overfits_a_handful_of_videos(tmp_path):
    cfg = tiny(tmp_path / "run", "optim.epochs=4", "optim.lr_steps=[]", "run.eval_every=4", "run.save_every=0")
    history = fit(cfg, CPU, FixedVideos())
    assert history[-1]["train_top1"] == 1.0
    assert history[-1]["train_loss"] < min(0.05, history[0]["train_loss"] / 10)
    assert history[-1]["train_videos"] == 5 * 8  # 5 steps of the 8 videos


def test_resume_repeats_an_uninterrupted_run_exactly(tmp_path):
    whole = tiny(tmp_path / "whole")
    fit(whole, CPU)
    split = tiny(tmp_path / "split", "optim.epochs=2")
    fit(split, CPU)
    assert len(read_jsonl(tmp_path / "split" / "metrics.jsonl")) == 2
    fit(tiny(tmp_path / "split"), CPU)  # the same run, now to 4 epochs: resumes after epoch 2

    def strip(records):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in records]

    a, b = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("whole", "split"))
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    assert strip(a) == strip(b)
    assert (a[2]["lr"], a[3]["lr"]) == pytest.approx((3e-3, 3e-4))  # lr_steps [3] took effect after resuming
    last_a, last_b = (checkpoint.load(tmp_path / d / "last.pt") for d in ("whole", "split"))
    for key, value in last_a["model"].items():
        assert torch.equal(value, last_b["model"][key]), key
    for pid, s in last_a["optimizer"]["state"].items():
        for name, value in s.items():
            assert torch.equal(value, last_b["optimizer"]["state"][pid][name]), (pid, name)


def test_run_directory_and_checkpoints(tmp_path):
    cfg = tiny(tmp_path / "{modality}", modality="mv")
    history = fit(cfg, CPU)
    run = tmp_path / "mv"
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt", "config.toml", "epoch_0002.pt", "epoch_0004.pt", "last.pt", "metrics.jsonl"]
    for name in ("best.pt", "last.pt", "epoch_0002.pt"):
        state = torch.load(run / name, map_location="cpu", weights_only=True)
        assert state["model_args"] == {"modality": "mv", "arch": "resnet18", "num_classes": 3, "width": 8}
    last = checkpoint.load(run / "last.pt")
    assert last["epoch"] == 4 and last["history"] == history
    best = checkpoint.load(run / "best.pt")
    val = [r["val_top1"] for r in history]
    assert best["epoch"] == 1 + val.index(max(val))  # the first epoch with the best validation top-1
    assert last["best"] == {"epoch": best["epoch"], "top1": max(val)}
    assert [r["is_best"] for r in history] == [v > max([-1.0] + val[:i]) for i, v in enumerate(val)]
    # The saved config is the resolved one and reads back to the same config.
    saved = load_config(run / "config.toml")
    assert saved.run.dir == str(run) and saved.model == cfg.model and saved.optim == cfg.optim
    # Epoch averages: every training video of the epoch is counted (2 steps of 8).
    assert all(r["train_videos"] == 16 and r["val_videos"] == 6 and r["val_clips"] == 12 for r in history)


def test_validation_every_n_epochs_and_always_the_last(tmp_path):
    history = fit(tiny(tmp_path / "run", "run.eval_every=3", "optim.epochs=4"), CPU)
    assert ["val_top1" in r for r in history] == [False, False, True, True]


def test_existing_run_is_not_overwritten(tmp_path):
    fit(tiny(tmp_path / "run", "optim.epochs=1"), CPU)
    with pytest.raises(FileExistsError, match="run.resume"):
        fit(tiny(tmp_path / "run", "optim.epochs=2", "run.resume=false"), CPU)


def test_fit_starts_from_pretrained_weights(tmp_path):
    torch.manual_seed(1)  # not the run's seed 0: a model fit() would build differs
    source = ModalityNet("mv", "resnet18", num_classes=3, width=8)
    torch.save(source.state_dict(), tmp_path / "pretrained.pt")
    # lr 0: the weights stay what was loaded (BatchNorm statistics still move in training)
    fit(tiny(tmp_path / "run", "optim.epochs=1", "optim.lr=0", f"model.pretrained={tmp_path / 'pretrained.pt'}",
             modality="mv"), CPU)
    trained = checkpoint.load(tmp_path / "run" / "last.pt")["model"]
    for name, value in source.named_parameters():
        assert torch.equal(trained[name], value), name


def test_training_loader_that_ends_is_an_error(tmp_path):
    cfg = tiny(tmp_path / "run")
    data = TensorData(cfg, rank=0, world_size=1)
    endless = data.train_batches
    data.train_batches = lambda epoch: itertools.islice(endless(epoch), 1)  # one batch, not two
    with pytest.raises(RuntimeError, match="ended after 1 of 2 steps"):
        fit(cfg, CPU, data)


def test_tensor_data_contract():
    cfg = tiny(Path("unused"), "data.tensors.test_videos=9")
    ranks = [TensorData(cfg, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].steps_per_epoch == ranks[1].steps_per_epoch == 2
    seen = [vid for d in ranks for b in d.eval_batches("test") for vid in b["id"]]
    assert sorted(seen) == [f"test_{i:05d}" for i in range(9)]
    batch = next(ranks[1].train_batches(0))
    assert batch["input"].shape == (4, 2, 3, 32, 32) and batch["label"].dtype == torch.int64
    again = next(TensorData(cfg, rank=1, world_size=2).train_batches(0))
    assert torch.equal(batch["input"], again["input"])  # a function of (seed, epoch, rank)
    assert not torch.equal(batch["input"], next(ranks[1].train_batches(1))["input"])


def test_optimizer_schedule_and_multipliers():
    cfg = load_config("ucf101_mv")
    assert [lr_at(e, cfg.optim) for e in (0, 149, 150, 269, 270, 389, 390, 509)] == pytest.approx(
        [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    optimizer = build_optimizer(ModalityNet("mv", "resnet18", 101), cfg.optim)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["eps"] == 1e-3
    set_lr(optimizer, 1e-3)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([1e-5, 1e-4, 1e-3])


def test_rng_state_round_trip():
    state = checkpoint.rng_state()
    expected = (torch.rand(3), random.random(), np.random.rand(2), np.random.randn())
    checkpoint.set_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand(2), np.random.randn())
    assert torch.equal(expected[0], again[0]) and expected[1] == again[1]
    assert np.array_equal(expected[2], again[2]) and expected[3] == again[3]


# ---------------------------------------------------------------------------- evaluation


def test_counts_on_a_hand_example():
    logits = torch.tensor([[3.0, 2, 1, 0, 0, 0], [0, 3, 2, 1, 0, 0], [-1, 0.1, 0.2, 0.3, 0.4, 5], [0, 1, 3, 0.5, 0, 0]])
    labels = torch.tensor([0, 2, 0, 1])
    counts = Counts.zeros(6)
    counts.add(logits, labels)
    s = counts.summary()
    # predictions 0, 1, 5, 2: one right; labels rank 1st, 2nd, 6th, 2nd: three in the top 5
    assert s["top1"] == 0.25 and s["videos"] == 4
    assert s["top5"] == 0.75
    # classes 0 (1 of 2), 1 (0 of 1), 2 (0 of 1) are present: (0.5 + 0 + 0) / 3
    assert s["mean_class_acc"] == pytest.approx(0.5 / 3)
    expected = np.zeros((6, 6), np.int64)
    for t, p in [(0, 0), (2, 1), (0, 5), (1, 2)]:
        expected[t, p] += 1
    assert np.array_equal(counts.confusion.numpy(), expected)
    assert s["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())


def test_clip_metrics_count_each_segment():
    clips = torch.tensor([[[2.0, 0], [0, 1]], [[0, 1], [0, 3]]])  # 2 videos x 2 clips
    counts = Counts.zeros(2)
    counts.add(clips.mean(1), torch.tensor([0, 1]), clips)
    s = counts.summary()
    assert (s["clips"], s["clip_top1"], s["top1"]) == (4, 0.75, 1.0)


def test_fusion_logits_and_softmax():
    i, mv, r = np.array([[2.0, 0.0]]), np.array([[0.0, 3.0]]), np.array([[0.0, 0.5]])
    weights = {"iframe": 2.0, "mv": 1.0, "residual": 1.0}
    assert np.allclose(fuse({"iframe": i, "mv": mv, "residual": r}, weights), [[4.0, 3.5]])
    soft = fuse({"iframe": i, "mv": mv, "residual": r}, weights, "softmax")
    sm = lambda x: np.exp(x) / np.exp(x).sum()  # noqa: E731
    assert np.allclose(soft, 2 * sm(i) + sm(mv) + sm(r))
    with pytest.raises(ValueError, match="logits, softmax"):
        fuse({"mv": mv}, weights, "mean")


def test_evaluate_runs_writes_logits_metrics_and_fusion(tmp_path):
    for modality in ("iframe", "mv", "residual"):
        fit(tiny(tmp_path / "{modality}", "optim.epochs=1", modality=modality), CPU)
    results = evaluate_runs(tmp_path, dist=CPU, show=False)
    out = tmp_path / "eval" / "test"
    assert set(results) == {"iframe", "mv", "residual", "fused"}
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(results))
    saved = {m: np.load(out / f"{m}.npz") for m in ("iframe", "mv", "residual", "fused")}
    ids = [f"test_{i:05d}" for i in range(7)]
    for m, d in saved.items():
        assert d["ids"].tolist() == ids and d["labels"].tolist() == [i % 3 for i in range(7)]
        assert (out / f"confusion_{m}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        top1 = float((d["logits"].argmax(1) == d["labels"]).mean())
        assert results[m]["top1"] == pytest.approx(top1)
        assert d["confusion"].sum() == 7
    for m in ("iframe", "mv", "residual"):
        assert saved[m]["clip_logits"].shape == (7, 2, 3)
        assert np.allclose(saved[m]["clip_logits"].mean(1), saved[m]["logits"], atol=1e-6)
    fused = 2 * saved["iframe"]["logits"] + saved["mv"]["logits"] + saved["residual"]["logits"]
    assert np.allclose(saved["fused"]["logits"], fused, atol=1e-5)  # CoViAR: 2:1:1 on logits

    # One run alone, on validation, with the last checkpoint.
    single = evaluate_runs(tmp_path / "mv", dist=CPU, split="val", which="last", show=False)
    assert set(single) == {"mv"} and single["mv"]["videos"] == 6
    assert (tmp_path / "mv" / "eval" / "val" / "mv.npz").is_file()


def test_summarize_matches_counts():
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=(50, 7)), rng.integers(0, 7, 50)
    summary, confusion = summarize(scores, labels, 7)
    assert summary["top1"] == pytest.approx((scores.argmax(1) == labels).mean())
    top5 = np.argsort(-scores, 1)[:, :5]
    assert summary["top5"] == pytest.approx(np.mean([labels[i] in top5[i] for i in range(50)]))
    assert confusion.sum() == 50 and np.trace(confusion) == (scores.argmax(1) == labels).sum()


# -------------------------------------------------------------------------------- config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


BASE = """
[model]
modality = "mv"
[optim]
lr = 0.01
epochs = 3
batch_size = 8
[run]
dir = "runs/x"
"""


@pytest.mark.parametrize("text, message", [
    (BASE + "[data]\nsegments = 3\n", r"unknown key data\.segments; valid in \[data\]: source, root"),
    (BASE.replace("lr = 0.01", "lr = 0.01\nlrr = 1"), r"unknown key optim\.lrr"),
    (BASE + "[extra]\n", r"unknown key extra"),
    (BASE.replace("epochs = 3", 'epochs = "3"'), r"optim\.epochs: expected int, got '3'"),
    (BASE.replace("epochs = 3", "epochs = 3.5"), r"optim\.epochs: expected int"),
    (BASE.replace("epochs = 3", "epochs = true"), r"optim\.epochs: expected int, got True"),
    (BASE + "[data]\nnum_segments = 0\n", r"data\.num_segments: 0 must be at least 1"),
    (BASE.replace("lr = 0.01", "lr = inf"), r"optim\.lr: inf is not a finite number"),
    (BASE.replace("lr = 0.01", "lr = nan"), r"optim\.lr: nan is not a finite number"),
    (BASE.replace("lr = 0.01", "lr = 0.01\nlr_mult_body = -0.5"), r"optim\.lr_mult_body: -0\.5 must be at least 0"),
    (BASE.replace("lr = 0.01", "lr = 0.01\nlr_decay = -0.1"), r"optim\.lr_decay: -0\.1 must be above 0"),
    (BASE.replace("lr = 0.01", "lr = 0.01\nlr_decay = 10"), r"optim\.lr_decay: 10\.0 must be at most 1"),
    (BASE + "[data]\ncrop_scales = [-1, 5]\n", r"data\.crop_scales\[0\]: -1\.0 must be above 0"),
    (BASE + "[data]\ncrop_scales = [0.5, 5]\n", r"data\.crop_scales\[1\]: 5\.0 must be at most 1"),
    (BASE + "[wise]\ntaus = [0.5, 1.5]\n", r"wise\.taus\[1\]: 1\.5 must be at most 1"),
    (BASE.replace('"mv"', '"flow"'), r"model\.modality: 'flow' is not one of iframe, mv, residual"),
    (BASE + "[data.tensors]\nnoise = [1]\n", r"data\.tensors\.noise: expected float"),
    (BASE.replace("[run]\n", "[run]\nseed = 1\n").replace('dir = "runs/x"', ""), r"missing required key run\.dir"),
    (BASE.replace("lr = 0.01", "lr = 0.01\nlr_steps = [1, 2.5]"), r"optim\.lr_steps\[1\]: expected int"),
    (BASE.replace("[model]", "[model]\narch = \"resnet9\""), r"model\.arch: 'resnet9' is not one of resnet18"),
    ("[model\n", r"c\.toml"),
])
def test_config_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_overrides_are_typed(tmp_path):
    path = write(tmp_path, BASE)
    cfg = load_config(path, ["optim.lr=3e-4", "optim.lr_steps=[1, 2]", "run.dir=out/a b", "run.resume=false",
                             "data.tensors.noise=2", "model.arch=resnet50"])
    assert cfg.optim.lr == 3e-4 and cfg.optim.lr_steps == [1, 2] and cfg.run.dir == "out/a b"
    assert cfg.run.resume is False and cfg.data.tensors.noise == 2.0 and cfg.model.arch == "resnet50"
    with pytest.raises(ConfigError, match=r"run\.seed: expected int, got '007'"):
        load_config(path, ["run.seed=007"])  # not TOML: a string, which is the wrong type
    with pytest.raises(ConfigError, match=r"unknown key optim\.momentum"):
        load_config(path, ["optim.momentum=0.9"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(path, ["optim.lr"])


def test_a_value_per_network_is_picked_by_the_modality(tmp_path):
    table = BASE.replace("lr = 0.01", "lr = {iframe = 3e-4, mv = 0.01, residual = 0.005}")
    path = write(tmp_path, table)
    assert load_config(path).optim.lr == 0.01  # BASE's modality is mv
    assert load_config(path, ["model.modality=iframe"]).optim.lr == 3e-4
    assert load_config(path, ["model.modality=residual", "optim.lr=0.2"]).optim.lr == 0.2  # a number replaces it
    assert load_config(path, ["optim.lr.mv=0.5"]).optim.lr == 0.5
    cfg = load_config(path, ["model.modality=iframe"])
    save_config(cfg, tmp_path / "saved.toml")  # a run's config holds the number it used
    assert load_config(tmp_path / "saved.toml") == cfg and "lr = 0.0003\n" in to_toml(cfg)
    with pytest.raises(ConfigError, match=r"optim\.lr: no value for model\.modality 'residual'"):
        load_config(write(tmp_path, BASE.replace("lr = 0.01", "lr = {mv = 0.01}")), ["model.modality=residual"])
    with pytest.raises(ConfigError, match=r"optim\.lr: 'rgb' is not a modality"):
        load_config(write(tmp_path, BASE.replace("lr = 0.01", "lr = {mv = 0.01, rgb = 1.0}")))
    arch = BASE.replace("[model]", '[model]\narch = {iframe = "resnet50", mv = "resnet18", residual = "resnet18"}')
    assert load_config(write(tmp_path, arch), ["model.modality=iframe"]).model.arch == "resnet50"


def test_config_round_trips_through_toml(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ['run.dir=with "quotes" and \\ back', "optim.lr_steps=[5]"])
    save_config(cfg, tmp_path / "saved.toml")
    assert load_config(tmp_path / "saved.toml") == cfg
    assert to_toml(cfg).startswith("[model]\n")


# The paper's backbone recipe (REFERENCE.md section 1) and CoViAR's HMDB-51 commands.
RECIPES = {
    "ucf101_iframe": ("resnet50", 3e-4, 40, 510, [150, 270, 390]),
    "ucf101_mv": ("resnet18", 1e-2, 80, 510, [150, 270, 390]),
    "ucf101_residual": ("resnet18", 5e-3, 80, 510, [150, 270, 390]),
    "hmdb51_iframe": ("resnet50", 3e-4, 40, 220, [55, 110, 165]),
    "hmdb51_mv": ("resnet18", 5e-3, 80, 360, [120, 200, 280]),
    "hmdb51_residual": ("resnet18", 1e-3, 80, 300, [120, 180, 240]),
}


def test_bundled_configs():
    # The backbone recipes (the *_ic_* files are the internal classifiers', tests/test_ic.py;
    # the *_teamnet* ones TEAM-Net's, tests/test_teamnet.py)
    assert {p.stem for p in BUNDLED.glob("*.toml")
            if "_ic_" not in p.stem and "_teamnet" not in p.stem} == set(RECIPES) | {"tiny_synth"}
    for name, (arch, lr, batch, epochs, steps) in RECIPES.items():
        cfg = load_config(name)
        assert cfg.model.modality == name.split("_")[1] and cfg.model.arch == arch
        o = cfg.optim
        assert (o.lr, o.batch_size, o.epochs, o.lr_steps, o.lr_decay) == (lr, batch, epochs, steps, 0.1)
        assert (o.eps, o.weight_decay, o.lr_mult_stem, o.lr_mult_body, o.lr_mult_fc) == (1e-3, 1e-4, 0.1, 0.01, 1.0)
        assert cfg.data.num_segments == 3 and cfg.data.input_size == 224
    tiny_cfg = load_config("tiny_synth", ["model.modality=residual"])
    assert tiny_cfg.run_dir == Path("runs/tiny_synth/residual") and tiny_cfg.data.input_size == 96


# ---------------------------------------------------------------------------- command line


def test_cli_fit_then_eval(tmp_path, capsys):
    cfg = tiny(tmp_path / "run", "optim.epochs=1")
    save_config(cfg, tmp_path / "cfg.toml")
    assert cvtrain(["fit", "--config", str(tmp_path / "cfg.toml"), "--set", "run.progress=false"]) == 0
    assert cvtrain(["eval", str(tmp_path / "run"), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "iframe" in out and "top1" in out and (tmp_path / "run" / "eval" / "val" / "iframe.npz").is_file()


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cvtrain(["fit", "--config", "no_such_config"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "bundled configs: " in err and "hmdb51_iframe," in err
    with pytest.raises(SystemExit):
        cvtrain(["eval", str(tmp_path), "--fusion-weights", "1,2"])
    assert "expected 3 comma-separated weights" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cvtrain(["eval", str(tmp_path)])
    assert e.value.code == 2 and "no training run here" in capsys.readouterr().err


def test_resuming_under_another_config_is_refused_naming_the_keys(tmp_path):
    run = tmp_path / "run"
    fit(tiny(run, "optim.epochs=1"), CPU)
    last = (run / "last.pt").read_bytes()
    for changes, named in ((["optim.lr=0.1"], "optim.lr: 0.003 -> 0.1"),
                           (["model.width=16"], "model.width: 8 -> 16"),
                           (["model.modality=mv"], "model.modality: 'iframe' -> 'mv'"),
                           (["data.root=/elsewhere"], "data.root: '' -> '/elsewhere'")):
        with pytest.raises(FileExistsError, match="written under another config") as raised:
            fit(tiny(run, "optim.epochs=2", *changes), CPU)
        assert named in str(raised.value) and "run.force_resume=true" in str(raised.value)
    assert (run / "last.pt").read_bytes() == last                     # nothing was touched
    history = fit(tiny(run, "optim.epochs=2", "run.progress=true"), CPU)   # longer, chattier: the same run
    assert [r["epoch"] for r in history] == [1, 2]
    history = fit(tiny(run, "optim.epochs=3", "optim.lr=0.1", "run.force_resume=true"), CPU)
    assert history[-1]["epoch"] == 3 and history[-1]["lr"] == pytest.approx(0.1)


def test_a_loss_that_turns_non_finite_stops_the_run_before_its_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    fit(tiny(run, "optim.epochs=1"), CPU)
    saved = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt")}
    args = ["fit", "--config", str(tmp_path / "c.toml"), "--set", "optim.epochs=2", "--set", "optim.lr=1e30",
            "--set", "run.force_resume=true"]
    save_config(tiny(run, "optim.epochs=1"), tmp_path / "c.toml")
    with pytest.raises(SystemExit) as raised:
        cvtrain(args)
    assert raised.value.code == 1
    error = capsys.readouterr().err
    assert "cvtrain: error: epoch 2, step " in error and "the training loss is not finite" in error, error
    assert {name: (run / name).read_bytes() for name in saved} == saved
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1]
