"""A modality network with four exits: the frozen backbone, its three internal
classifiers (ICs) and its own fc, and their measured cost.

The ICs (trainer.models.heads) sit after layer1, layer2 and layer3; the network's fc is
the fourth exit. Every exit's logits are averaged over a video's segments (TSN), as the
backbone's are. `ICNet.exit_costs` measures the MACs of each backbone stage and each IC
head by running the real modules; trainer.train.validate's `evaluate_exits` scores them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainer.data.contract import INPUT_CHANNELS
from trainer.models.heads import InternalClassifiers
from trainer.models.networks import ModalityNet, count_macs

EXITS = ("ic1", "ic2", "ic3", "fc")  # a network's exits, cheapest first; fc is the backbone's own
IC_EXITS = EXITS[:3]


def freeze(module: nn.Module) -> nn.Module:
    """No gradients and eval mode: a frozen network's BatchNorm statistics never move."""
    module.requires_grad_(False)
    return module.eval()


@dataclass(frozen=True)
class ExitCosts:
    """Multiply-accumulates of one segment through one network, measured by running its
    modules: backbone stages (stem, layer1, layer2, layer3, layer4 + pool + fc) and IC heads.
    IC1 reads the output of stage `first_ic_after` (layer1 in a CoViAR network; TEAM-Net's
    first IC reads the module after the stem), each later IC the next stage's."""

    stages: tuple[int, ...]
    heads: tuple[int, ...]
    first_ic_after: int = 1

    @property
    def backbone(self) -> int:
        return sum(self.stages)

    def to_exit(self, j: int) -> int:
        """MACs of one segment up to and including exit j (0-based, 0..3) of this network:
        the stages it needs and every IC evaluated on the way (all three for the fc exit)."""
        if j == len(self.heads):
            return self.backbone + sum(self.heads)
        return sum(self.stages[:j + self.first_ic_after + 1]) + sum(self.heads[:j + 1])


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

    def train(self, mode: bool = True) -> ICNet:
        super().train(mode)
        self.net.eval()  # the backbone stays in eval mode whatever the ICs do
        return self

    def forward(self, x: Tensor | dict[str, Tensor]) -> Tensor:
        """x: (B, S, C, H, W), or TEAM-Net's modality -> (B, S, C, H, W) -> (B, 4, K)
        segment-averaged logits of IC1..IC3 and the network's own output."""
        exits = self.net.forward_exits(x)
        segments = (x if isinstance(x, Tensor) else next(iter(x.values()))).shape[1]
        return torch.cat([self.ics(exits, segments), self.net.final_logits(exits, segments).unsqueeze(1)], 1)

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
