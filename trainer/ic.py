"""Internal classifiers (ICs) on frozen backbones: the network with four exits, its
training task (cross-entropy or PKD), its per-exit evaluation and its measured cost.

`cvtrain ic` is `train_ics(cfg)`: it loads the trained backbone of `cfg.model.modality`
(`ic.backbones`, "{modality}" replaced), freezes it (no gradients, eval mode, so its
BatchNorm statistics never move), attaches three ICs after layer1..layer3 and trains
only those, in `trainer.fit.train`'s loop: on labels (`ic.method = "ce"`) or on the
final logits of the schedule's teacher of the epoch (`"pkd"`). Teachers are other
trained backbones, frozen, run under no_grad outside DDP; "self" is the student's own
backbone, whose final logits come from the same forward pass. Each IC is selected on
the validation split by its own top-1 (never on test), so best.pt holds every IC at its
own best epoch (and the unchanged backbone).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from trainer import checkpoint, distributed
from trainer.batches import Batch, DataModule, open_data
from trainer.config import Config, ConfigError
from trainer.distributed import Dist
from trainer.evaluate import check_once
from trainer.fit import _seed_everything, train
from trainer.heads import InternalClassifiers
from trainer.metrics import Counts
from trainer.models import INPUT_CHANNELS, ModalityNet, count_macs
from trainer.pkd import TeacherSchedule, ic_loss

EXITS = ("ic1", "ic2", "ic3", "fc")  # a network's exits, cheapest first; fc is the backbone's own
IC_EXITS = EXITS[:3]


def freeze(module: nn.Module) -> nn.Module:
    """No gradients and eval mode: a frozen network's BatchNorm statistics never move."""
    module.requires_grad_(False)
    return module.eval()


def load_backbone(path: str | Path, device: torch.device | str = "cpu") -> ModalityNet:
    """A trained modality network from a `cvtrain fit` checkpoint (best.pt), frozen."""
    state = checkpoint.load(path)
    if "model_args" not in state:
        raise ValueError(f"{path}: not a checkpoint of `cvtrain fit` (no model_args)")
    net = ModalityNet(**state["model_args"])
    net.load_state_dict(state["model"])
    return freeze(net.to(device))


def backbone_path(cfg: Config, modality: str) -> Path:
    if not cfg.ic.backbones:
        raise ConfigError("ic.backbones is not set: it names the trained backbone checkpoints, "
                          "e.g. runs/tiny_synth/{modality}/best.pt")
    return Path(cfg.ic.backbones.replace("{modality}", modality))


@dataclass(frozen=True)
class ExitCosts:
    """Multiply-accumulates of one segment through one network, measured by running its
    modules: backbone stages (stem, layer1, layer2, layer3, layer4 + pool + fc) and IC heads."""

    stages: tuple[int, ...]
    heads: tuple[int, ...]

    @property
    def backbone(self) -> int:
        return sum(self.stages)

    def to_exit(self, j: int) -> int:
        """MACs of one segment up to and including exit j (0-based, 0..3) of this network:
        the stages it needs and every IC evaluated on the way (all three for the fc exit)."""
        if j == len(self.heads):
            return self.backbone + sum(self.heads)
        return sum(self.stages[:j + 2]) + sum(self.heads[:j + 1])


class ICNet(nn.Module):
    """A trained modality network (frozen) with its three ICs: four exits.

    Args:
        net: the trained backbone network; it is frozen here.
        ics: the internal classifiers (what trains).
    """

    def __init__(self, net: ModalityNet, ics: InternalClassifiers) -> None:
        super().__init__()
        self.net = freeze(net)
        self.ics = ics

    @classmethod
    def build(cls, modality: str, arch: str, num_classes: int, width: int = 64) -> ICNet:
        """An untrained one of the shape `model_args` describes (to load a checkpoint into)."""
        return cls(ModalityNet(modality, arch, num_classes, width), InternalClassifiers(arch, num_classes, width))

    def train(self, mode: bool = True) -> ICNet:
        super().train(mode)
        self.net.eval()  # the backbone stays in eval mode whatever the ICs do
        return self

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, S, C, H, W) -> (B, 4, K) segment-averaged logits of IC1..IC3 and fc."""
        exits = self.net.forward_exits(x)
        final = exits.logits.unflatten(0, x.shape[:2]).mean(1)  # (B, K)
        return torch.cat([self.ics(exits, x.shape[1]), final.unsqueeze(1)], 1)

    def exit_costs(self, input_size: int) -> ExitCosts:
        """Measured MACs per segment at `input_size` x `input_size` (FlopCounterMode on
        the real modules, each fed the feature map it sees in the network)."""
        was_training = self.training
        self.eval()
        b = self.net.backbone
        stem = nn.Sequential(*([self.net.data_bn] if self.net.data_bn is not None else []),
                             b.conv1, b.bn1, b.relu, b.maxpool).eval()
        tail = nn.Sequential(b.layer4, b.avgpool, nn.Flatten(1), b.fc).eval()
        x = torch.zeros(1, INPUT_CHANNELS[self.net.modality], input_size, input_size,
                        device=next(self.parameters()).device)
        with torch.no_grad():
            stages, heads = [count_macs(stem, x)], []
            x = stem(x)
            for layer, head in zip((b.layer1, b.layer2, b.layer3), self.ics.heads, strict=True):
                stages.append(count_macs(layer, x))
                x = layer(x)
                heads.append(count_macs(head, x))
            stages.append(count_macs(tail, x))
        self.train(was_training)
        return ExitCosts(tuple(stages), tuple(heads))


# ---------------------------------------------------------------------------- evaluation


@dataclass
class ExitEvaluation:
    """Per-exit metrics of one set of ICs over a split; arrays on rank 0 when gathered,
    sorted by video id."""

    summaries: dict[str, dict[str, float]]  # exit name -> metrics
    ids: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    logits: np.ndarray = field(default_factory=lambda: np.zeros((0, len(EXITS), 0), dtype=np.float32))


@torch.no_grad()
def evaluate_exits(
    net: ModalityNet,
    ic_sets: Sequence[InternalClassifiers],
    batches: Iterable[Batch],
    num_classes: int,
    *,
    dist: Dist,
    expected: int,
    amp: bool = False,
    gather: bool = False,
    desc: str = "eval",
    show: bool = True,
) -> list[ExitEvaluation]:
    """Scores the four exits of `net` with each of `ic_sets` (several sets of ICs trained
    on the same frozen backbone share one pass over the data and the backbone).

    Args:
        net: the frozen backbone network.
        ic_sets: ICs of that backbone (e.g. the CE and PKD ones of several seeds).
        batches: this rank's evaluation batches of a split.
        num_classes: classes of the logits.
        dist: this process's place in the world.
        expected: videos in the whole split (a different count is reported).
        amp: bf16 autocast (CUDA).
        gather: also collect ids, labels and (N, 4, K) logits on rank 0.
        desc, show: the progress bar's label, and whether rank 0 shows it.
    """
    net.eval()
    for ics in ic_sets:
        ics.eval()
    counts = [[Counts.zeros(num_classes, dist.device) for _ in EXITS] for _ in ic_sets]
    ids: list[str] = []
    labels: list[Tensor] = []
    logits: list[list[Tensor]] = [[] for _ in ic_sets]
    for batch in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not (show and dist.is_main)):
        x = batch["input"].to(dist.device, non_blocking=True)
        y = batch["label"].to(dist.device, non_blocking=True)
        with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=amp):
            exits = net.forward_exits(x)
            final = exits.logits.unflatten(0, x.shape[:2]).float().mean(1, keepdim=True)  # (B, 1, K)
            for i, ics in enumerate(ic_sets):
                scores = torch.cat([ics(exits, x.shape[1]).float(), final], 1)  # (B, 4, K)
                for e in range(len(EXITS)):
                    counts[i][e].add(scores[:, e], y)
                if gather:
                    logits[i].append(scores.cpu())
        if gather:
            ids += batch["id"]
            labels.append(y.cpu())
    out = []
    for i in range(len(ic_sets)):
        summaries = {name: c.all_reduce().summary() for name, c in zip(EXITS, counts[i], strict=True)}
        out.append(ExitEvaluation(summaries))
    videos = out[0].summaries[EXITS[0]]["videos"]
    if videos != expected and dist.is_main:
        tqdm.write(f"warning: {desc}: {videos} of {expected} videos were evaluated")
    if not gather:
        return out
    mine = (ids, torch.cat(labels).numpy() if labels else np.zeros(0, np.int64),
            [torch.cat(part).numpy() if part else np.zeros((0, len(EXITS), num_classes), np.float32)
             for part in logits])
    parts = distributed.gather_to_main(mine)
    if parts is None:
        return out
    all_ids = [vid for part in parts for vid in part[0]]
    check_once(all_ids, desc)
    order = np.argsort(np.array(all_ids, dtype=str), kind="stable")
    for i, ev in enumerate(out):
        ev.ids = np.array(all_ids, dtype=str)[order]
        ev.labels = np.concatenate([p[1] for p in parts])[order]
        ev.logits = np.concatenate([p[2][i] for p in parts]).astype(np.float32)[order]
    return out


# ------------------------------------------------------------------------------ training


class TeacherData:
    """The shard reader for IC training: each epoch's batches carry the student's input
    and, when the epoch's teacher is another network, that network's input at the same
    frames and crops (trainer.data). A loader per set of modalities, opened when first
    needed, so an epoch decodes only the modalities it uses."""

    def __init__(self, cfg: Config, dist: Dist, schedule: TeacherSchedule | None) -> None:
        from trainer.data import open_shards  # the shard reader: torch + webdataset only

        self._open_shards = open_shards
        self.cfg, self.dist, self.schedule = cfg, dist, schedule
        self._loaders: dict[tuple[str, ...], DataModule] = {}
        student = self._loader(())
        self.num_classes, self.class_names = student.num_classes, student.class_names
        self.steps_per_epoch = student.steps_per_epoch

    def _loader(self, teachers: tuple[str, ...]) -> DataModule:
        if teachers not in self._loaders:
            self._loaders[teachers] = self._open_shards(self.cfg, rank=self.dist.rank,
                                                        world_size=self.dist.world_size, modalities=teachers)
        return self._loaders[teachers]

    def train_batches(self, epoch: int) -> Iterable[Batch]:
        teacher = self.schedule.teacher(epoch) if self.schedule else self.cfg.model.modality
        return self._loader(() if teacher == self.cfg.model.modality else (teacher,)).train_batches(epoch)

    def eval_batches(self, split: str) -> Iterable[Batch]:
        return self._loader(()).eval_batches(split)

    def split_size(self, split: str) -> int:
        return self._loader(()).split_size(split)


def _schedule(cfg: Config) -> TeacherSchedule | None:
    if cfg.ic.method != "pkd":
        return None
    schedule = TeacherSchedule.of(cfg.ic.teachers, cfg.ic.teacher_epochs, cfg.model.modality)
    late = [e for e in schedule.switch_epochs if e >= cfg.optim.epochs]
    if late:
        raise ConfigError(f"ic.teacher_epochs: the phase starting at epoch {late[0]} never runs in "
                          f"optim.epochs = {cfg.optim.epochs}")
    return schedule


def open_ic_data(cfg: Config, dist: Dist) -> DataModule:
    """The data module IC training reads: the shard reader with teacher inputs, or the
    in-memory source when the schedule needs no other network's input."""
    schedule = _schedule(cfg)
    if cfg.data.source == "shards":
        return TeacherData(cfg, dist, schedule)
    others = [m for m in (schedule.modalities() if schedule else ()) if m != cfg.model.modality]
    if others:
        raise ConfigError(f"data.source 'tensors' holds one modality; the teachers {', '.join(others)} "
                          "need their own inputs: use shards, or ic.teachers = [\"self\"]")
    return open_data(cfg, rank=dist.rank, world_size=dist.world_size)


class ICTask:
    """The three ICs of one frozen network (a `trainer.fit.Task`)."""

    exits = IC_EXITS

    def __init__(self, cfg: Config, dist: Dist, num_classes: int) -> None:
        self.cfg, self.dist = cfg, dist
        modality = cfg.model.modality
        path = backbone_path(cfg, modality)
        net = load_backbone(path, dist.device)
        args = checkpoint.load(path)["model_args"]
        expected = {"modality": modality, "arch": cfg.model.arch, "width": cfg.model.width, "num_classes": num_classes}
        for key, value in expected.items():
            if args[key] != value:
                where = "the data have" if key == "num_classes" else f"the config says model.{key} ="
                raise ConfigError(f"ic.backbones: {path} has {key} {args[key]!r}, {where} {value!r}")
        self.model = ICNet(net, InternalClassifiers(cfg.model.arch, num_classes, cfg.model.width)).to(dist.device)
        self.model_args = {"modality": modality, "arch": cfg.model.arch, "num_classes": num_classes,
                           "width": cfg.model.width}
        self.schedule = _schedule(cfg)
        self.teachers = {m: load_backbone(backbone_path(cfg, m), dist.device)
                         for m in (self.schedule.modalities() if self.schedule else ()) if m != modality}
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

    def _teacher_logits(self, batch: Batch, epoch: int, exits_logits: Tensor) -> Tensor | None:
        if self.schedule is None:
            return None
        teacher = self.schedule.teacher(epoch)
        if teacher == self.cfg.model.modality:
            return exits_logits  # the student's own backbone: the same forward pass
        inputs = batch.get("inputs", {})
        if teacher not in inputs:
            raise KeyError(f"the {teacher} teacher needs the {teacher} input; the batch holds "
                           f"{', '.join(inputs) or 'only the student input'}")
        x = inputs[teacher].to(self.dist.device, non_blocking=True)
        with torch.no_grad(), torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.teachers[teacher](x).float()

    def loss(self, train_model: nn.Module, batch: Batch, epoch: int) -> tuple[Tensor, Tensor]:
        x = batch["input"].to(self.dist.device, non_blocking=True)  # (B, S, C, H, W)
        y = batch["label"].to(self.dist.device, non_blocking=True)
        with torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.amp):
            with torch.no_grad():
                exits = self.model.net.forward_exits(x)  # frozen features, no graph
            logits = train_model(exits, x.shape[1])  # (B, 3, K)
        final = exits.logits.unflatten(0, x.shape[:2]).float().mean(1)  # (B, K) the student's own fc
        teacher = self._teacher_logits(batch, epoch, final)
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
        for i, name in enumerate(IC_EXITS):
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
    _seed_everything(cfg.run.seed)
    data = data or open_ic_data(cfg, dist)
    return train(cfg, ICTask(cfg, dist, data.num_classes), data, dist)


def load_ic_run(run_dir: str | Path, device: torch.device | str = "cpu", which: str = "best") -> ICNet:
    """The network and ICs of a `cvtrain ic` run, from its best.pt (each IC at its best
    validation epoch) or last.pt."""
    state = checkpoint.load(Path(run_dir) / f"{which}.pt")
    model = ICNet.build(**state["model_args"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()
