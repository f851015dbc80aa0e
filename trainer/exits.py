"""A modality network with four exits: the frozen backbone, its three internal
classifiers (ICs) and its own fc; their evaluation over a split, and their measured cost.

The ICs (trainer.heads) sit after layer1, layer2 and layer3; the network's fc is the
fourth exit. Every exit's logits are averaged over a video's segments (TSN), as the
backbone's are. `evaluate_exits` scores several sets of ICs trained on one frozen
backbone in a single pass (IC validation, `cvtrain logits`); `ICNet.exit_costs` measures
the MACs of each backbone stage and each IC head by running the real modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from trainer import checkpoint, distributed
from trainer.batches import Batch
from trainer.distributed import Dist
from trainer.evaluate import check_once
from trainer.heads import InternalClassifiers
from trainer.metrics import Counts
from trainer.models import INPUT_CHANNELS, ModalityNet, count_macs

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
    for batch in tqdm(batches, desc=desc, unit="batch", leave=False, disable=None if show and dist.is_main else True):
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


def load_ic_run(run_dir: str | Path, device: torch.device | str = "cpu", which: str = "best") -> ICNet:
    """The network and ICs of a `cvtrain ic` run, from its best.pt (each IC at its best
    validation epoch) or last.pt."""
    state = checkpoint.load(Path(run_dir) / f"{which}.pt")
    model = ICNet.build(**state["model_args"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()
