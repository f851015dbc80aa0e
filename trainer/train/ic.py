"""Internal-classifier training (`cvtrain ic`): cross-entropy or PKD on a frozen backbone.

`train_ics(cfg)` loads the trained backbone of `cfg.model.modality` (`ic.backbones`,
"{modality}" replaced), freezes it (no gradients, eval mode, so its BatchNorm statistics
never move), attaches three ICs after layer1..layer3 (trainer.models.exits) and trains only
those, in `trainer.train.loop.train`'s loop: on labels (`ic.method = "ce"`) or on the final
logits of the schedule's teacher of the epoch (`"pkd"`, trainer.train.pkd). Teachers are other
trained backbones, frozen, run under no_grad outside DDP; "self" is the student's own
backbone, whose final logits come from the same forward pass. Each IC is selected on
the validation split by its own top-1 (never on test), so best.pt holds every IC at its
own best epoch (and the unchanged backbone).

With model.backbone = "teamnet" the frozen network is TEAM-Net (trainer.models.teamnet)
and the ICs its three shared ones; its teachers are its own heads ("mv", "residual",
"iframe") and "self" its fused output, all from the student's forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainer.config import Config, ConfigError
from trainer.data.contract import MODALITIES, Batch, DataModule
from trainer.data.sources import open_data
from trainer.models.build import CONFIG_KEYS, TEAMNET, attach_ics, backbone_of, network_args
from trainer.models.exits import EXITS, IC_EXITS
from trainer.train import distributed
from trainer.train.checkpoint import load_backbone, load_network
from trainer.train.distributed import Dist
from trainer.train.loop import seed_everything, train
from trainer.train.pkd import SELF, TeacherSchedule, ic_loss
from trainer.train.validate import evaluate_exits


def backbone_path(cfg: Config, modality: str) -> Path:
    if not cfg.ic.backbones:
        raise ConfigError("ic.backbones is not set: it names the trained backbone checkpoints, "
                          "e.g. runs/tiny_synth/{modality}/best.pt")
    return Path(cfg.ic.backbones.replace("{modality}", modality))


class TeacherData:
    """The shard reader for IC training: each epoch's batches carry the student's input
    and, when the epoch's teacher is another network, that network's input at the same
    frames and crops (trainer.data.shard_reader). A loader per set of modalities, opened when first
    needed, so an epoch decodes only the modalities it uses."""

    def __init__(self, cfg: Config, dist: Dist, schedule: TeacherSchedule | None) -> None:
        self.cfg, self.dist, self.schedule = cfg, dist, schedule
        self._loaders: dict[tuple[str, ...], DataModule] = {}
        student = self._loader(())
        self.num_classes, self.class_names = student.num_classes, student.class_names
        self.steps_per_epoch = student.steps_per_epoch

    def _loader(self, teachers: tuple[str, ...]) -> DataModule:
        from trainer.data.shard_reader import open_shards  # the shard reader: torch + webdataset only

        if teachers not in self._loaders:
            self._loaders[teachers] = open_shards(self.cfg, rank=self.dist.rank, world_size=self.dist.world_size,
                                                  modalities=teachers, device=self.dist.device)
        return self._loaders[teachers]

    def train_batches(self, epoch: int) -> Iterable[Batch]:
        teacher = self.schedule.teacher(epoch) if self.schedule else self.cfg.model.modality
        return self._loader(() if teacher == self.cfg.model.modality else (teacher,)).train_batches(epoch)

    def eval_batches(self, split: str) -> Iterable[Batch]:
        return self._loader(()).eval_batches(split)

    def split_size(self, split: str) -> int:
        return self._loader(()).split_size(split)


def _teamnet(cfg: Config) -> bool:
    return cfg.model.backbone == TEAMNET


def _schedule(cfg: Config) -> TeacherSchedule | None:
    if cfg.ic.method != "pkd":
        return None
    # TEAM-Net's teachers are its own heads, "self" its fused output; a CoViAR network's
    # are the other networks, "self" the student network.
    student = SELF if _teamnet(cfg) else cfg.model.modality
    schedule = TeacherSchedule.of(cfg.ic.teachers, cfg.ic.teacher_epochs, student)
    late = [e for e in schedule.switch_epochs if e >= cfg.optim.epochs]
    if late:
        raise ConfigError(f"ic.teacher_epochs: the phase starting at epoch {late[0]} never runs in "
                          f"optim.epochs = {cfg.optim.epochs}")
    return schedule


def open_ic_data(cfg: Config, dist: Dist) -> DataModule:
    """The data module IC training reads: the shard reader with teacher inputs, or the
    in-memory source when the schedule needs no other network's input."""
    schedule = _schedule(cfg)
    if _teamnet(cfg):  # its teachers are its own heads: every batch carries the three inputs anyway
        return open_data(cfg, rank=dist.rank, world_size=dist.world_size, device=dist.device, modalities=MODALITIES)
    if cfg.data.source == "shards":
        return TeacherData(cfg, dist, schedule)
    others = [m for m in (schedule.modalities() if schedule else ()) if m != cfg.model.modality]
    if others:
        raise ConfigError(f"data.source 'tensors' holds one modality; the teachers {', '.join(others)} "
                          "need their own inputs: use shards, or ic.teachers = [\"self\"]")
    return open_data(cfg, rank=dist.rank, world_size=dist.world_size, device=dist.device)


class ICTask:
    """The three ICs of one frozen network (a `trainer.train.loop.Task`): a CoViAR
    network's, or TEAM-Net's shared ones."""

    exits = IC_EXITS

    def __init__(self, cfg: Config, dist: Dist, num_classes: int) -> None:
        self.cfg, self.dist = cfg, dist
        path = backbone_path(cfg, cfg.model.modality)
        net, found = load_network(path)
        expected = network_args(cfg, num_classes)
        if backbone_of(found) != cfg.model.backbone:
            raise ConfigError(f"ic.backbones: {path} is a {backbone_of(found)} network, the config says "
                              f"model.backbone = {cfg.model.backbone!r}")
        for key, value in expected.items():
            if found.get(key) != value:
                where = "the data have" if key == "num_classes" else f"the config says {CONFIG_KEYS[key]} ="
                raise ConfigError(f"ic.backbones: {path} has {key} {found.get(key)!r}, {where} {value!r}")
        self.model = attach_ics(net).to(dist.device)
        self.model_args = found
        self.schedule = _schedule(cfg)
        own = (*MODALITIES, SELF) if _teamnet(cfg) else (cfg.model.modality,)
        self.teachers = {m: load_backbone(backbone_path(cfg, m), dist.device)
                         for m in (self.schedule.modalities() if self.schedule else ()) if m not in own}
        for m, teacher in self.teachers.items():
            if teacher.num_classes != num_classes:
                raise ConfigError(f"ic.backbones: the {m} teacher has {teacher.num_classes} classes, "
                                  f"the data have {num_classes}")
        self.amp = cfg.run.amp and dist.device.type == "cuda"
        self.best: dict[str, Any] = {name: {"epoch": -1, "top1": -1.0} for name in IC_EXITS}

    def trainable(self) -> nn.Module:
        return self.model.ics

    def param_groups(self) -> list[dict]:
        """The ICs only (the backbone is not in the optimiser); no weight decay on biases,
        nor on BatchNorm weights when optim.decay_norm is off."""
        o = self.cfg.optim
        norm = {f"{n}.weight" for n, m in self.model.ics.named_modules() if isinstance(m, nn.BatchNorm2d)}
        decay, rest = [], []
        for name, param in self.model.ics.named_parameters():
            exempt = name.endswith(".bias") or (not o.decay_norm and name in norm)
            (rest if exempt else decay).append(param)
        return [{"params": decay, "lr_mult": 1.0, "weight_decay": o.weight_decay},
                {"params": rest, "lr_mult": 1.0, "weight_decay": 0.0}]

    def init_weights(self) -> None:
        """Nothing to do: the backbone was loaded and the ICs initialised from the run's seed."""

    def train_mode(self) -> None:
        self.model.train()

    def epoch_info(self, epoch: int) -> dict[str, Any]:
        return {"teacher": self.schedule.teacher(epoch)} if self.schedule else {}

    def _teacher_logits(self, batch: Batch, epoch: int, exits: Any, segments: int) -> Tensor | None:
        if self.schedule is None:
            return None
        teacher = self.schedule.teacher(epoch)
        net = self.model.net
        # TEAM-Net's output or one of its heads, or the student's own network: the same forward pass.
        if _teamnet(self.cfg):
            return (net.final_logits(exits, segments) if teacher == SELF
                    else net.head_logits(exits, segments)[teacher]).float()
        if teacher == self.cfg.model.modality:
            return net.final_logits(exits, segments).float()
        inputs = batch.get("inputs", {})
        if teacher not in inputs:
            raise KeyError(f"the {teacher} teacher needs the {teacher} input; the batch holds "
                           f"{', '.join(inputs) or 'only the student input'}")
        x = inputs[teacher].to(self.dist.device, non_blocking=True)
        with torch.no_grad(), torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.teachers[teacher](x).float()

    def loss(self, train_model: nn.Module, batch: Batch, epoch: int) -> tuple[Tensor, Tensor]:
        x = self.model.net.read(batch, self.dist.device)  # (B, S, C, H, W), or TEAM-Net's three
        y = batch["label"].to(self.dist.device, non_blocking=True)
        segments = batch["input"].shape[1]
        with torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.amp):
            with torch.no_grad():
                exits = self.model.net.forward_exits(x)  # frozen features, no graph
            logits = train_model(exits, segments)  # (B, 3, K)
            teacher = self._teacher_logits(batch, epoch, exits, segments)
        loss = ic_loss(logits, y, teacher, temperature=self.cfg.ic.temperature, label_weight=self.cfg.ic.label_weight)
        return loss, logits

    def validate(self, data: DataModule) -> dict[str, Any]:
        (ev,) = evaluate_exits(self.model.net, [self.model.ics], data.eval_batches("val"), data.num_classes,
                               dist=self.dist, expected=data.split_size("val"), amp=self.amp, desc="val",
                               show=self.cfg.run.progress)
        out: dict[str, Any] = {"videos": ev.summaries[EXITS[0]]["videos"]}
        for name, s in ev.summaries.items():
            out.update({f"{name}_top1": s["top1"], f"{name}_loss": s["loss"]})
        return out

    def select(self, val: dict[str, Any] | None, epoch: int) -> tuple[list[str], dict[str, Any]]:
        improved = []
        for name in IC_EXITS:
            if val is not None and val[f"{name}_top1"] > self.best[name]["top1"]:
                self.best[name] = {"epoch": epoch, "top1": val[f"{name}_top1"]}
                improved.append(name)
        fields: dict[str, Any] = {f"best_val_{n}_top1": self.best[n]["top1"] for n in IC_EXITS}
        if val is not None:
            fields["improved"] = improved
        return [f"ics.heads.{IC_EXITS.index(n)}." for n in improved], fields


def train_ics(cfg: Config, dist: Dist | None = None, data: DataModule | None = None) -> list[dict]:
    """Trains the ICs of `cfg.model.modality`'s frozen network; returns the per-epoch metrics.

    Args:
        cfg: the resolved config ([ic] says how).
        dist: this process's place in the world (default: from torchrun's environment).
        data: the data module (default: shards with the teachers' inputs, or the tensors source).
    """
    dist = dist or distributed.setup(cfg.run.device)
    seed_everything(cfg.run.seed)
    data = data or open_ic_data(cfg, dist)
    return train(cfg, ICTask(cfg, dist, data.num_classes), data, dist)
