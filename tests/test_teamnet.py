"""TEAM-Net: shapes at every exit, the temporal shift against its definition, segments
that interact only through it, measured MACs against one count of the whole pass, frozen
parts that stay bit-identical while the shared ICs train, PKD against the scheduled head,
streams started from CoViAR checkpoints, the bundled configs running a step, and
`cvtrain fit` + `cvtrain ic` under torchrun. Tiny networks on in-memory data."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import trainer
from trainer.config import ConfigError, from_dict, load_config, save_config
from trainer.data.contract import INPUT_CHANNELS, MODALITIES
from trainer.data.tensors import TensorData
from trainer.models.build import attach_ics, build_network, network_args
from trainer.models.networks import ModalityNet, count_macs
from trainer.models.teamnet import SHIFT_FRACTION, TeamFusion, TeamNet, temporal_shift
from trainer.train import checkpoint
from trainer.train.checkpoint import load_ic_run
from trainer.train.distributed import Dist
from trainer.train.ic import ICTask, train_ics
from trainer.train.loop import BackboneTask, fit
from trainer.train.pkd import ic_loss
from trainer.train.validate import evaluate_exits

CPU = Dist(0, 1, 0, torch.device("cpu"))
SIZE, CLASSES, SEGMENTS, WIDTH = 32, 3, 2, 8
ARCHS = {"iframe": "resnet50", "mv": "resnet18", "residual": "resnet18"}
PACKAGE_PARENT = Path(trainer.__file__).resolve().parents[1]


def inputs(batch: int = 2, segments: int = SEGMENTS, size: int = SIZE, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, segments, INPUT_CHANNELS[m], size, size, generator=g) for m in MODALITIES}


def config(run_dir: Path, *overrides: str, ic: dict | None = None) -> object:
    data = {
        "model": {"modality": "iframe", "backbone": "teamnet", "width": WIDTH},
        "team": {"arch": ARCHS},
        "data": {"source": "tensors", "input_size": SIZE, "num_segments": SEGMENTS, "eval_segments": SEGMENTS,
                 "tensors": {"num_classes": CLASSES, "train_videos": 12, "val_videos": 5, "test_videos": 5}},
        "optim": {"lr": 1e-2, "epochs": 2, "batch_size": 4, "weight_decay": 0.0},
        "run": {"dir": str(run_dir), "device": "cpu", "progress": False},
    }
    if ic is not None:
        data["ic"] = ic
    return from_dict(data, overrides)


# ------------------------------------------------------------------------------ the model


@pytest.mark.parametrize("shift", [False, True])
def test_shapes_at_every_exit(shift):
    torch.manual_seed(0)
    net = TeamNet(ARCHS, CLASSES, width=WIDTH, temporal_shift=shift).eval()
    x = inputs(batch=2)
    exits = net.forward_exits(x)
    # The squeezed vector of each module: the streams' total width / 4 (stem 3 x 8, layer1 32 + 8 + 8, ...).
    assert net.squeezed_sizes() == (6, 12, 24, 48)
    assert [tuple(s.shape) for s in exits.squeezed] == [(2 * SEGMENTS, d) for d in net.squeezed_sizes()]
    assert {m: tuple(h.shape) for m, h in exits.heads.items()} == {m: (2 * SEGMENTS, CLASSES) for m in MODALITIES}
    heads = net.head_logits(exits, SEGMENTS)
    torch.testing.assert_close(net(x), sum(heads.values()))
    model = attach_ics(net)
    out = model(x)
    assert out.shape == (2, 4, CLASSES)
    torch.testing.assert_close(out[:, 3], net(x))


def test_temporal_shift_moves_an_eighth_each_way():
    x = torch.arange(2 * 3 * 16, dtype=torch.float32).reshape(2 * 3, 16, 1, 1)
    out = temporal_shift(x, 3).unflatten(0, (2, 3))
    v = x.unflatten(0, (2, 3))
    f = 16 // SHIFT_FRACTION
    assert torch.equal(out[:, :2, :f], v[:, 1:, :f]) and torch.equal(out[:, 2, :f], torch.zeros_like(out[:, 2, :f]))
    assert torch.equal(out[:, 1:, f:2 * f], v[:, :2, f:2 * f]) and not out[:, 0, f:2 * f].any()
    assert torch.equal(out[:, :, 2 * f:], v[:, :, 2 * f:])


@pytest.mark.parametrize("shift", [False, True])
def test_segments_interact_only_through_the_temporal_shift(shift):
    torch.manual_seed(0)
    net = TeamNet(ARCHS, CLASSES, width=WIDTH, temporal_shift=shift).eval()
    x = inputs(batch=1, segments=3)
    changed = {m: t.clone() for m, t in x.items()}
    changed["mv"][:, 2] += 1.0  # only the last segment's MV
    with torch.no_grad():
        a, b = net(x, average=False), net(changed, average=False)
    assert not torch.allclose(a[:, 2], b[:, 2])  # the fusion carries MV into the sum of the heads
    assert torch.allclose(a[:, 0], b[:, 0]) != shift  # two segments away: reached only through shifts


def test_attention_only_adds_to_what_a_stream_sees():
    torch.manual_seed(0)
    fusion = TeamFusion((16, 8, 8))
    streams = [torch.rand(3, c, 5, 5) for c in (16, 8, 8)]  # non-negative, as after a ReLU
    out, squeezed = fusion(streams)
    assert squeezed.shape == (3, 8) and (squeezed >= 0).all()  # the total width 32, over 4
    for s, o in zip(streams, out, strict=True):
        ratio = o / s
        assert (ratio >= 1).all() and (ratio <= 2).all()


def test_measured_macs_add_up_to_one_count_of_the_whole_pass():
    torch.manual_seed(0)
    model = attach_ics(TeamNet(ARCHS, CLASSES, width=WIDTH))
    costs = model.exit_costs(SIZE)
    one = {m: torch.zeros(1, 1, INPUT_CHANNELS[m], SIZE, SIZE) for m in MODALITIES}
    assert costs.to_exit(3) == count_macs(model, one)  # the three streams, four modules and three ICs
    assert costs.backbone == count_macs(model.net, one)
    streams = sum(model.net.streams[m].count_macs(SIZE) for m in MODALITIES)
    assert streams < costs.backbone < 1.1 * streams  # the modules are a small addition
    # IC1 reads the module after the stem: the stems, that module and one Linear.
    assert costs.to_exit(0) == costs.stages[0] + costs.heads[0]
    assert costs.heads == tuple(d * CLASSES for d in model.net.squeezed_sizes()[:3])


# ------------------------------------------------------------------------------ training


def save_coviar_streams(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Three CoViAR networks as `cvtrain fit` saves them, for team.pretrained."""
    states = {}
    for i, m in enumerate(MODALITIES):
        torch.manual_seed(10 + i)
        net = ModalityNet(m, ARCHS[m], CLASSES, WIDTH)
        (root / m).mkdir(parents=True)
        checkpoint.save({"epoch": 1, "model": net.state_dict(),
                         "model_args": {"modality": m, "arch": ARCHS[m], "num_classes": CLASSES, "width": WIDTH}},
                        root / m / "best.pt")
        states[m] = {k: v.clone() for k, v in net.state_dict().items()}
    return states


@pytest.fixture(scope="module")
def teamnet_run(tmp_path_factory) -> Path:
    """A TEAM-Net fit run whose streams started from CoViAR checkpoints."""
    root = tmp_path_factory.mktemp("teamnet")
    save_coviar_streams(root / "coviar")
    cfg = config(root / "fit", f"team.pretrained={root}/coviar/{{modality}}/best.pt")
    fit(cfg, CPU)
    return root / "fit"


def test_streams_start_from_the_coviar_checkpoints(tmp_path):
    states = save_coviar_streams(tmp_path / "coviar")
    task = BackboneTask(config(tmp_path / "run", f"team.pretrained={tmp_path}/coviar/{{modality}}/best.pt"), CPU,
                        CLASSES)
    task.init_weights()
    for m in MODALITIES:
        for key, value in task.model.streams[m].state_dict().items():
            assert torch.equal(value, states[m][key]), (m, key)


def test_the_fit_run_checkpoints_rebuild_teamnet(teamnet_run):
    state = checkpoint.load(teamnet_run / "best.pt")
    assert state["model_args"]["backbone"] == "teamnet" and state["model_args"]["archs"] == ARCHS
    net = build_network(state["model_args"])
    net.load_state_dict(state["model"])
    history = [json.loads(line) for line in (teamnet_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2] and all(r["val_videos"] == 5 for r in history)


PKD = {"method": "pkd", "teachers": ["mv", "residual", "iframe"], "teacher_epochs": [1, 2]}


def test_frozen_teamnet_stays_bit_identical_while_the_shared_ics_train(tmp_path, teamnet_run):
    cfg = config(tmp_path / "ic", "optim.epochs=3", ic={**PKD, "backbones": str(teamnet_run / "best.pt")})
    before = checkpoint.load(teamnet_run / "best.pt")["model"]
    history = train_ics(cfg, CPU)
    assert [r["teacher"] for r in history] == ["mv", "residual", "iframe"]
    last = checkpoint.load(tmp_path / "ic" / "last.pt")
    for key, value in before.items():
        assert torch.equal(last["model"][f"net.{key}"], value), key
    trained = [k for k in last["model"] if k.startswith("ics.")]
    assert trained and any(not torch.equal(last["model"][k], torch.zeros_like(last["model"][k])) for k in trained)
    assert_validation_is_one_process_scoring_the_run(tmp_path / "ic", history)


def test_each_epoch_distils_from_the_scheduled_head(tmp_path, teamnet_run):
    cfg = config(tmp_path / "ic", "optim.epochs=3", ic={**PKD, "teachers": ["mv", "residual", "self"],
                                                        "backbones": str(teamnet_run / "best.pt")})
    task = ICTask(cfg, CPU, CLASSES)
    batch = next(iter(TensorData(cfg, rank=0, world_size=1, modalities=MODALITIES).train_batches(0)))
    net = task.model.net
    with torch.no_grad():
        exits = net.forward_exits(net.read(batch, CPU.device))
        heads = net.head_logits(exits, SEGMENTS)
        ic_logits = task.model.ics(exits, SEGMENTS)
        expected = [heads["mv"], heads["residual"], sum(heads.values())]
        for epoch, teacher in enumerate(expected):
            loss, logits = task.loss(task.model.ics, batch, epoch)
            torch.testing.assert_close(logits, ic_logits)
            torch.testing.assert_close(loss, ic_loss(ic_logits, batch["label"], teacher))
        ce = config(tmp_path / "ce", ic={"method": "ce", "backbones": str(teamnet_run / "best.pt")})
        loss, _ = ICTask(ce, CPU, CLASSES).loss(task.model.ics, batch, 0)
        torch.testing.assert_close(loss, ic_loss(ic_logits, batch["label"], None))


def test_a_coviar_checkpoint_is_not_a_teamnet(tmp_path):
    save_coviar_streams(tmp_path / "coviar")
    cfg = config(tmp_path / "ic", ic={"method": "ce", "backbones": f"{tmp_path}/coviar/mv/best.pt"})
    with pytest.raises(ConfigError, match="is a coviar network, the config says model.backbone = 'teamnet'"):
        train_ics(cfg, CPU)


def _one_step(task, batch: dict) -> None:
    optimizer = torch.optim.Adam(task.param_groups(), lr=1e-3)
    task.train_mode()
    loss, _ = task.loss(task.trainable(), batch, 0)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("dataset", ["ucf101", "hmdb51"])
def test_bundled_teamnet_configs_run_a_step(dataset, tmp_path):
    fit_cfg, ic_cfg = load_config(f"{dataset}_teamnet"), load_config(f"{dataset}_teamnet_ic")
    classes = {"ucf101": 101, "hmdb51": 51}[dataset]
    assert fit_cfg.model.backbone == ic_cfg.model.backbone == "teamnet"
    # The ICs' network is the fit run's (the IC run loads its weights: no team.pretrained).
    assert dataclasses.replace(fit_cfg.team, pretrained="") == ic_cfg.team and fit_cfg.data == ic_cfg.data
    assert fit_cfg.data.num_segments == 8
    assert (ic_cfg.ic.teachers, ic_cfg.ic.teacher_epochs, ic_cfg.optim.epochs) == (["mv", "residual", "iframe"],
                                                                                 [3, 6], 40)
    assert (ic_cfg.wise.alpha, ic_cfg.wise.clip_negative) == (0.01, True)
    assert Path(ic_cfg.ic.backbones).parent == fit_cfg.run_dir
    # One training step of each at the configs' own shapes (a video of 8 segments at 224).
    torch.manual_seed(0)
    batch = {"input": None, "label": torch.tensor([classes - 1]), "id": ["v"],
             "inputs": inputs(batch=1, segments=8, size=fit_cfg.data.input_size)}
    batch["input"] = batch["inputs"]["iframe"]
    task = BackboneTask(fit_cfg, CPU, classes)  # weights random: team.pretrained is not on this machine
    assert task.model.dropout.p == 0.5 and task.model.fusions[0].squeezed == 3 * 64 // 4
    _one_step(task, batch)
    checkpoint.save({"epoch": 1, "model": task.model.state_dict(), "model_args": network_args(fit_cfg, classes)},
                    tmp_path / "best.pt")
    ic = ICTask(load_config(f"{dataset}_teamnet_ic", [f"ic.backbones={tmp_path}/best.pt"]), CPU, classes)
    _one_step(ic, batch)


def test_bundled_tiny_teamnet_configs_follow_the_tiny_networks():
    fit_cfg, ic_cfg, tiny = load_config("tiny_synth_teamnet"), load_config("tiny_synth_teamnet_ic"), {}
    for m in MODALITIES:
        tiny[m] = load_config("tiny_synth", [f"model.modality={m}"])
        assert Path(fit_cfg.team.pretrained.replace("{modality}", m)).parent == tiny[m].run_dir
        assert getattr(fit_cfg.team.arch, m) == tiny[m].model.arch
    assert fit_cfg.data == ic_cfg.data == tiny["mv"].data and fit_cfg.model.width == tiny["mv"].model.width
    assert Path(ic_cfg.ic.backbones).parent == fit_cfg.run_dir
    assert load_config("tiny_synth_teamnet_ic", ["ic.method=ce"]).run_dir.name == "ce"


def test_fit_and_ic_under_torchrun(tmp_path):
    """Two gloo ranks with uneven videos: TEAM-Net trains, then its shared ICs; the frozen
    network stays bit-identical and the ICs' last validation equals one process scoring them."""
    save_config(config(tmp_path / "fit", "data.tensors.train_videos=13"), tmp_path / "fit.toml")
    save_config(config(tmp_path / "ic", "data.tensors.train_videos=13",
                       ic={**PKD, "teachers": ["mv", "iframe"], "teacher_epochs": [1],
                           "backbones": str(tmp_path / "fit" / "best.pt")}), tmp_path / "ic.toml")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))}
    for command in ("fit", "ic"):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "trainer.cli", command, "--config", str(tmp_path / f"{command}.toml")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    history = [json.loads(line) for line in (tmp_path / "ic" / "metrics.jsonl").read_text().splitlines()]
    assert [r["teacher"] for r in history] == ["mv", "iframe"] and all(r["val_videos"] == 5 for r in history)
    fitted = checkpoint.load(tmp_path / "fit" / "best.pt")["model"]
    last = checkpoint.load(tmp_path / "ic" / "last.pt")
    assert len(last["rng"]) == 2
    for key, value in fitted.items():
        assert torch.equal(last["model"][f"net.{key}"], value), key
    assert_validation_is_one_process_scoring_the_run(tmp_path / "ic", history)


def assert_validation_is_one_process_scoring_the_run(run: Path, history: list[dict]) -> None:
    """The run's last validation equals one process scoring its saved ICs (last.pt)."""
    cfg = load_config(run / "config.toml")
    model = load_ic_run(run, which="last")
    data = TensorData(cfg, rank=0, world_size=1, modalities=MODALITIES)
    (ev,) = evaluate_exits(model.net, [model.ics], data.eval_batches("val"), CLASSES, dist=CPU, expected=5,
                           show=False)
    for name in ("ic1", "ic2", "ic3", "fc"):
        assert history[-1][f"val_{name}_top1"] == ev.summaries[name]["top1"]
        assert history[-1][f"val_{name}_loss"] == pytest.approx(ev.summaries[name]["loss"], rel=1e-5)
