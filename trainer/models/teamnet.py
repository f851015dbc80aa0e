"""TEAM-Net (Wang, She, Smolic, BMVC 2021): the three modality streams in one network,
exchanging information through TEAM fusion modules, and its three shared internal classifiers.

The streams are the CoViAR networks (trainer.models.networks: an I-frame ResNet-50, MV and
residual ResNet-18s with their input BatchNorm), fed the same segments at the same crops.
After the stem and after layers 1, 2 and 3 a `TeamFusion` module reads the three streams'
feature maps (the same spatial size in every stream) and re-weights each of them:

- channel attention: every stream's map average-pooled, the three vectors concatenated
  and squeezed by a Linear + ReLU to their total width over the squeeze ratio (4);
  one Linear + sigmoid per stream expands that squeezed vector back to its channels;
- spatial attention: the channel mean and max of every stream (six maps), a 7x7
  convolution and a sigmoid: one map that every stream shares;
- each stream leaves as `x * (1 + channel * spatial)`: attention can only add to what a
  stream sees, so streams loaded from trained CoViAR networks start from their own features.

Each stream keeps its own head (dropout 0.5, its fc); TEAM-Net's output is the sum of the
three heads' segment-averaged logits. The shared internal classifiers are one Linear each on
the squeezed vector of the modules after the stem, layer1 and layer2, averaged over segments:
exits IC1, IC2, IC3 and the fused output. A temporal shift (TSM: an eighth of the channels
from the next segment, an eighth from the previous) on the residual branch of every block
is an option. This is our reading of the paper's description, written for this codebase.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from trainer.data.contract import INPUT_CHANNELS, MODALITIES, Batch
from trainer.models.exits import ExitCosts, ICNet
from trainer.models.networks import ModalityNet, count_macs
from trainer.models.resnet import ARCHS

FUSED_STAGES = ("stem", "layer1", "layer2", "layer3")  # a TEAM module after each
IC_STAGES = FUSED_STAGES[:3]  # the shared ICs read these modules' squeezed vectors
SHIFT_FRACTION = 8  # TSM: 1/8 of the channels from the next segment, 1/8 from the previous


def stage_channels(arch: str, width: int) -> tuple[int, int, int, int]:
    """Output channels of the stem and layers 1..3 of a ResNet."""
    block, _ = ARCHS[arch]
    return (width, *(width * m * block.expansion for m in (1, 2, 4)))  # type: ignore[return-value]


def squeezed_size(channels: tuple[int, ...], ratio: int) -> int:
    """Width of a TEAM module's squeezed channel-attention vector: the concatenated
    streams' width / ratio, as a squeeze-and-excitation block over the concatenation has."""
    return max(1, sum(channels) // ratio)


def temporal_shift(x: Tensor, segments: int) -> Tensor:
    """x: (B*S, C, H, W) -> the same with C/8 channels taken from the next segment and C/8
    from the previous one (zeros past the ends), the rest unchanged."""
    v = x.unflatten(0, (-1, segments))  # (B, S, C, H, W)
    f = v.shape[2] // SHIFT_FRACTION
    out = torch.zeros_like(v)
    out[:, :-1, :f] = v[:, 1:, :f]
    out[:, 1:, f:2 * f] = v[:, :-1, f:2 * f]
    out[:, :, 2 * f:] = v[:, :, 2 * f:]
    return out.flatten(0, 1)


class TeamFusion(nn.Module):
    """One TEAM module over the streams' feature maps (see the module docstring).

    Args:
        channels: each stream's channels, in `MODALITIES` order.
        ratio: the squeeze ratio of the channel attention.
    """

    def __init__(self, channels: tuple[int, ...], ratio: int = 4) -> None:
        super().__init__()
        self.squeezed = squeezed_size(channels, ratio)
        self.squeeze = nn.Sequential(nn.Linear(sum(channels), self.squeezed), nn.ReLU(inplace=True))
        self.excite = nn.ModuleList(nn.Linear(self.squeezed, c) for c in channels)
        self.spatial = nn.Conv2d(2 * len(channels), 1, kernel_size=7, padding=3)

    def forward(self, streams: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """streams: (N, C_m, H, W) each -> the re-weighted streams and the squeezed vector (N, d)."""
        squeezed = self.squeeze(torch.cat([s.mean((2, 3)) for s in streams], 1))
        maps = torch.cat([torch.cat([s.mean(1, keepdim=True), s.amax(1, keepdim=True)], 1) for s in streams], 1)
        spatial = torch.sigmoid(self.spatial(maps))  # (N, 1, H, W)
        channel = [torch.sigmoid(e(squeezed))[:, :, None, None] for e in self.excite]
        return [s * (1 + c * spatial) for s, c in zip(streams, channel, strict=True)], squeezed


class TeamExits(NamedTuple):
    """Everything TEAM-Net's exits need from one pass over N = batch * segments segments."""

    squeezed: tuple[Tensor, ...]  # (N, d_k) after the stem, layer1, layer2, layer3
    heads: dict[str, Tensor]  # modality -> (N, num_classes) that stream's head


class TeamNet(nn.Module):
    """The three streams and their four TEAM modules.

    Args:
        archs: the ResNet of each stream, by modality.
        num_classes: action classes.
        width: the streams' width (64 for the published ResNets).
        ratio: squeeze ratio of the TEAM modules' channel attention.
        dropout: before each stream's fc.
        temporal_shift: TSM on the residual branch of every block.
    """

    modalities = MODALITIES  # a batch's inputs TEAM-Net reads

    def __init__(self, archs: dict[str, str], num_classes: int, width: int = 64, ratio: int = 4,
                 dropout: float = 0.5, temporal_shift: bool = False) -> None:
        super().__init__()
        missing = [m for m in MODALITIES if m not in archs]
        if missing:
            raise ValueError(f"TEAM-Net needs an architecture for every stream; missing: {', '.join(missing)}")
        self.num_classes = num_classes
        self.streams = nn.ModuleDict({m: ModalityNet(m, archs[m], num_classes, width) for m in MODALITIES})
        per_stage = list(zip(*(stage_channels(archs[m], width) for m in MODALITIES), strict=True))
        self.fusions = nn.ModuleList(TeamFusion(channels, ratio) for channels in per_stage)
        self.dropout = nn.Dropout(dropout)
        self.shift = temporal_shift
        self._segments = 1
        if temporal_shift:
            # A hook on each block's first convolution shifts only the residual branch (TSM's
            # "residual shift") and keeps the streams' torchvision layout, so CoViAR or
            # ImageNet checkpoints still load into them.
            for stream in self.streams.values():
                for layer in _layers(stream):
                    for block in layer:
                        block.conv1.register_forward_pre_hook(self._shift_hook)

    def _shift_hook(self, module: nn.Module, args: tuple[Tensor]) -> tuple[Tensor]:
        return (temporal_shift(args[0], self._segments),)

    def read(self, batch: Batch, device: torch.device) -> dict[str, Tensor]:
        """The inputs TEAM-Net takes from a batch: every modality, same frames and crops."""
        inputs = batch.get("inputs", {})
        missing = [m for m in MODALITIES if m not in inputs]
        if missing:
            raise KeyError(f"TEAM-Net reads every modality; the batch lacks {', '.join(missing)}")
        return {m: inputs[m].to(device, non_blocking=True) for m in MODALITIES}

    def features(self, inputs: dict[str, Tensor], upto: int = len(FUSED_STAGES)) -> tuple[list[Tensor], list[Tensor]]:
        """The streams' feature maps and the squeezed vectors after the first `upto` TEAM modules."""
        self._segments = inputs[MODALITIES[0]].shape[1]
        xs = []
        for m in MODALITIES:
            stream, x = self.streams[m], inputs[m].flatten(0, 1)
            if stream.data_bn is not None:
                x = stream.data_bn(x)
            b = stream.backbone
            xs.append(b.maxpool(b.relu(b.bn1(b.conv1(x)))))
        squeezed = []
        for stage, fusion in enumerate(self.fusions[:upto]):
            if stage:
                xs = [_layers(self.streams[m])[stage - 1](x) for m, x in zip(MODALITIES, xs, strict=True)]
            xs, s = fusion(xs)
            squeezed.append(s)
        return xs, squeezed

    def forward_exits(self, inputs: dict[str, Tensor]) -> TeamExits:
        """inputs: modality -> (B, S, C, H, W) -> the squeezed vectors and the heads' logits."""
        xs, squeezed = self.features(inputs)
        heads = {}
        for m, x in zip(MODALITIES, xs, strict=True):
            b = self.streams[m].backbone
            heads[m] = b.fc(self.dropout(torch.flatten(b.avgpool(b.layer4(x)), 1)))
        return TeamExits(tuple(squeezed), heads)

    def head_logits(self, exits: TeamExits, segments: int) -> dict[str, Tensor]:
        """Each stream's head averaged over segments in float32: modality -> (B, K)."""
        return {m: h.float().unflatten(0, (-1, segments)).mean(1) for m, h in exits.heads.items()}

    def final_logits(self, exits: TeamExits, segments: int) -> Tensor:
        """TEAM-Net's output: the sum of the heads' segment-averaged logits, (B, K)."""
        return sum(self.head_logits(exits, segments).values())

    def forward(self, inputs: dict[str, Tensor], average: bool = True) -> Tensor:
        """The sum of the heads: (B, K) averaged over segments, or (B, S, K) per segment."""
        exits = self.forward_exits(inputs)
        segments = inputs[MODALITIES[0]].shape[1]
        logits = sum(h.unflatten(0, (-1, segments)) for h in exits.heads.values())  # (B, S, K)
        return logits.mean(1) if average else logits

    def param_groups(self, *, weight_decay: float, lr_mult_stem: float, lr_mult_body: float, lr_mult_fc: float,
                     decay_norm: bool = True) -> list[dict]:
        """Each stream's groups (trainer.models.networks: CoViAR's multipliers) and the TEAM
        modules at `lr_mult_fc`, new layers as the fc is (no weight decay on their biases)."""
        groups = [g for stream in self.streams.values()
                  for g in stream.param_groups(weight_decay=weight_decay, lr_mult_stem=lr_mult_stem,
                                               lr_mult_body=lr_mult_body, lr_mult_fc=lr_mult_fc,
                                               decay_norm=decay_norm)]
        named = list(self.fusions.named_parameters())
        groups.append({"params": [p for n, p in named if not n.endswith(".bias")], "lr_mult": lr_mult_fc,
                       "weight_decay": weight_decay})
        groups.append({"params": [p for n, p in named if n.endswith(".bias")], "lr_mult": lr_mult_fc,
                       "weight_decay": 0.0})
        return groups

    def squeezed_sizes(self) -> tuple[int, ...]:
        return tuple(f.squeezed for f in self.fusions)


def _layers(stream: ModalityNet) -> tuple[nn.Module, ...]:
    b = stream.backbone
    return (b.layer1, b.layer2, b.layer3, b.layer4)


class SharedICs(nn.Module):
    """TEAM-Net's three internal classifiers: a Linear on the squeezed vector of the TEAM
    module after the stem, layer1 and layer2, averaged over segments.

    Args:
        squeezed: the sizes of those three squeezed vectors.
        num_classes: classes of every head.
    """

    def __init__(self, squeezed: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(d, num_classes) for d in squeezed[:len(IC_STAGES)])

    def forward(self, exits: TeamExits, segments: int) -> Tensor:
        """(B, 3, num_classes) for B videos of `segments` segments."""
        read = exits.squeezed[:len(self.heads)]
        logits = [head(s).unflatten(0, (-1, segments)) for head, s in zip(self.heads, read, strict=True)]
        return torch.stack(logits, 1).mean(2)


class TeamICNet(ICNet):
    """A trained TEAM-Net (frozen) with its shared ICs: four exits, IC1..IC3 and the fused
    output (trainer.models.exits.ICNet's forward and freezing; its own cost measurement).

    Args:
        net: the trained TEAM-Net; it is frozen here.
        ics: the shared internal classifiers (what trains).
    """

    def exit_costs(self, input_size: int) -> ExitCosts:
        """Measured MACs of one segment at `input_size`: stages (the three stems with their
        TEAM module, each of layers 1..3 with its module, then the three layer4s, pools and
        fcs) and the IC heads. IC1 sits after the first stage."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        inputs = {m: torch.zeros(1, 1, INPUT_CHANNELS[m], input_size, input_size, device=device)
                  for m in MODALITIES}
        stages = _stage_macs(self.net, inputs)
        with torch.no_grad():
            exits = self.net.forward_exits(inputs)
        read = exits.squeezed[:len(self.ics.heads)]
        heads = tuple(count_macs(h, s) for h, s in zip(self.ics.heads, read, strict=True))
        self.train(was_training)
        return ExitCosts(stages, heads, first_ic_after=0)


class _UpTo(nn.Module):
    """TEAM-Net cut after its first `stages` TEAM modules (to count what each stage costs)."""

    def __init__(self, net: TeamNet, stages: int) -> None:
        super().__init__()
        self.net, self.stages = net, stages

    def forward(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        return self.net.features(inputs, self.stages)[0]


def _stage_macs(net: TeamNet, inputs: dict[str, Tensor]) -> tuple[int, ...]:
    """MACs of each stage of one pass: the pass cut after each TEAM module, then the whole."""
    totals = [count_macs(_UpTo(net, k).eval(), inputs) for k in range(1, len(FUSED_STAGES) + 1)]
    totals.append(count_macs(net, inputs))
    return tuple(b - a for a, b in zip([0, *totals[:-1]], totals, strict=True))
