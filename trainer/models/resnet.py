"""ResNets with torchvision's state-dict layout and one pass that returns every exit.

The parameter and buffer names (conv1, bn1, layer1..layer4 of blocks with conv1/bn1/
conv2/bn2[/conv3/bn3] and downsample.0/.1, fc) and shapes are torchvision's, so an
ImageNet or Kinetics checkpoint saved from torchvision loads with `strict=True`. The
bottleneck strides its 3x3 convolution (torchvision's "v1.5"), which is what those
weights were trained with.

`forward_exits` returns the outputs of layer1..layer3 (where the internal classifiers of
`trainer.models.heads` attach) and the logits of the network's own fc in one pass: no hooks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class Exits(NamedTuple):
    """Everything the exits need from one forward pass over N = batch * segments images."""

    layer1: Tensor  # (N, C1, H/4,  W/4)
    layer2: Tensor  # (N, C2, H/8,  W/8)
    layer3: Tensor  # (N, C3, H/16, W/16)
    logits: Tensor  # (N, num_classes)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4 (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = _conv1x1(channels, channels * self.expansion)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]

# Architecture registry: name -> (block, blocks per stage). A variant is an entry here.
ARCHS: dict[str, tuple[Block, tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """A torchvision-layout ResNet.

    Args:
        arch: a key of `ARCHS`.
        num_classes: outputs of `fc`.
        in_channels: input channels of `conv1` (2 for motion vectors).
        width: channels of the stem and layer1 (64 in every published ResNet); smaller
            values give narrow networks for CPU tests. Stage widths are width * 1, 2, 4, 8.
    """

    def __init__(
        self,
        arch: str,
        num_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")
        block, blocks = ARCHS[arch]
        self.arch = arch
        self._channels = width  # input channels of the next stage, while building
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._stage(block, width, blocks[0], stride=1)
        self.layer2 = self._stage(block, width * 2, blocks[1], stride=2)
        self.layer3 = self._stage(block, width * 4, blocks[2], stride=2)
        self.layer4 = self._stage(block, width * 8, blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

        # torchvision's initialisation, so a network trained from scratch behaves like one.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _stage(self, block: Block, channels: int, count: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._channels != channels * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self._channels, channels * block.expansion, stride),
                nn.BatchNorm2d(channels * block.expansion),
            )
        layers = [block(self._channels, channels, stride, downsample)]
        self._channels = channels * block.expansion
        layers += [block(self._channels, channels) for _ in range(count - 1)]
        return nn.Sequential(*layers)

    def forward_exits(self, x: Tensor) -> Exits:
        """x: (N, C, H, W) -> layer1..layer3 feature maps and the fc logits."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, w, H/4, W/4)
        f1 = self.layer1(x)  # (N, w*e, H/4, W/4)
        f2 = self.layer2(f1)  # (N, 2w*e, H/8, W/8)
        f3 = self.layer3(f2)  # (N, 4w*e, H/16, W/16)
        f4 = self.layer4(f3)  # (N, 8w*e, H/32, W/32)
        logits = self.fc(torch.flatten(self.avgpool(f4), 1))  # (N, num_classes)
        return Exits(f1, f2, f3, logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_exits(x).logits
