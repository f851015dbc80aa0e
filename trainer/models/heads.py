"""Internal classifiers (ICs): the paper's early-exit head, one class with parameters.

REFERENCE.md section 1: after layer1, layer2 and layer3 of each network sits
`Conv2d(no bias) -> BatchNorm2d -> AdaptiveAvgPool2d(4) -> flatten -> Linear`, no ReLU;
the network's own fc is the fourth exit. The released code wrote each head out by hand;
here the per-architecture convolution shapes are one table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainer.models.resnet import ARCHS, BasicBlock, Bottleneck, Exits

POOL = 4  # AdaptiveAvgPool2d(4): the Linear sees out_channels * 16 features


@dataclass(frozen=True)
class ICSpec:
    """The convolution of one IC, at full width (64 stem channels)."""

    in_channels: int
    out_channels: int
    kernel_size: int
    padding: int


# The authors' heads (REFERENCE.md section 1), by block type. ResNet-18 is the paper's
# basic-block network and ResNet-50 its bottleneck one; ResNet-34/101/152 have the same
# stage widths as those two, so they take the same heads (the paper trains none of them).
IC_SPECS: dict[type[nn.Module], tuple[ICSpec, ICSpec, ICSpec]] = {
    BasicBlock: (ICSpec(64, 64, 7, 1), ICSpec(128, 128, 3, 1), ICSpec(256, 256, 3, 1)),
    Bottleneck: (ICSpec(256, 64, 3, 1), ICSpec(512, 256, 3, 1), ICSpec(1024, 1024, 3, 1)),
}


def ic_specs(arch: str, width: int = 64) -> tuple[ICSpec, ICSpec, ICSpec]:
    """The three IC specs of `arch`, with channels scaled for a network of `width`."""
    block, _ = ARCHS[arch]
    specs = IC_SPECS[block]
    return tuple(  # type: ignore[return-value]
        ICSpec(s.in_channels * width // 64, s.out_channels * width // 64, s.kernel_size, s.padding) for s in specs
    )


class ICHead(nn.Module):
    """One internal classifier.

    Args:
        spec: its convolution (channels, kernel, padding; stride 1).
        num_classes: outputs of the Linear.
    """

    def __init__(self, spec: ICSpec, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel_size, padding=spec.padding, bias=False)
        self.bn = nn.BatchNorm2d(spec.out_channels)
        self.pool = nn.AdaptiveAvgPool2d(POOL)
        self.fc = nn.Linear(spec.out_channels * POOL * POOL, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.bn(self.conv(x)))  # (N, out, 4, 4)
        return self.fc(torch.flatten(x, 1))  # (N, num_classes)


class InternalClassifiers(nn.Module):
    """The three ICs of one network (after layer1, layer2, layer3).

    Args:
        arch: the backbone's architecture (a key of `trainer.models.resnet.ARCHS`).
        num_classes: classes of every head.
        width: the backbone's width.
    """

    def __init__(self, arch: str, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.heads = nn.ModuleList(ICHead(spec, num_classes) for spec in ic_specs(arch, width))

    def forward(self, exits: Exits, num_segments: int) -> Tensor:
        """Per-exit logits averaged over segments (TSN): (B, 3, num_classes) for B videos."""
        features = (exits.layer1, exits.layer2, exits.layer3)
        logits = [head(f).unflatten(0, (-1, num_segments)) for head, f in zip(self.heads, features, strict=True)]
        return torch.stack(logits, 1).mean(2)  # (B, 3, S, K) -> (B, 3, K)
