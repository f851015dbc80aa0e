"""The three CoViAR modality networks: a ResNet per representation, TSN over segments.

CoViAR (and the paper) train one network per representation (REFERENCE.md section 1):
- "iframe":   RGB I-frames, ResNet-50 in the paper (ResNet-152 in CoViAR);
- "mv":       accumulated motion vectors, ResNet-18 with a 2-channel conv1, and a
              BatchNorm2d(2) on the input ("data_bn");
- "residual": accumulated residuals, ResNet-18 with a BatchNorm2d(3) on the input.
Each segment of a video goes through the network on its own; the video's logits are the
mean over its segments (TSN). The network owns its optimiser parameter groups (CoViAR's
learning-rate multipliers) and counts its own multiply-accumulates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from trainer.data.contract import INPUT_CHANNELS, MODALITIES, Batch
from trainer.models.resnet import Exits, ResNet

CONV1_INITS = ("random", "rgb_mean")


class ModalityNet(nn.Module):
    """One modality's network: optional input BatchNorm, a ResNet, TSN averaging.

    Args:
        modality: one of `MODALITIES`.
        arch: backbone architecture (a key of `trainer.models.resnet.ARCHS`).
        num_classes: action classes.
        width: backbone width (64 for every published ResNet).
    """

    def __init__(self, modality: str, arch: str, num_classes: int, width: int = 64) -> None:
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; valid: {', '.join(MODALITIES)}")
        self.modality = modality
        self.num_classes = num_classes
        channels = INPUT_CHANNELS[modality]
        # CoViAR normalises MV and residual inputs with a learnt BatchNorm; the I-frame
        # input is already ImageNet-normalised RGB.
        self.data_bn = nn.BatchNorm2d(channels) if modality != "iframe" else None
        self.backbone = ResNet(arch, num_classes, in_channels=channels, width=width)

    def forward_exits(self, x: Tensor) -> Exits:
        """x: (B, S, C, H, W) -> per-segment exits over N = B * S images."""
        x = x.flatten(0, 1)  # (B*S, C, H, W)
        if self.data_bn is not None:
            x = self.data_bn(x)
        return self.backbone.forward_exits(x)

    def read(self, batch: Batch, device: torch.device) -> Tensor:
        """The input this network takes from a batch: its modality's, (B, S, C, H, W)."""
        return batch["input"].to(device, non_blocking=True)

    def final_logits(self, exits: Exits, segments: int) -> Tensor:
        """The network's own output from `forward_exits`, averaged over segments in float32: (B, K)."""
        return exits.logits.float().unflatten(0, (-1, segments)).mean(1)

    def forward(self, x: Tensor, average: bool = True) -> Tensor:
        """x: (B, S, C, H, W) -> logits (B, K), or (B, S, K) per segment when not `average`."""
        logits = self.forward_exits(x).logits.unflatten(0, x.shape[:2])  # (B, S, K)
        return logits.mean(1) if average else logits

    def param_groups(
        self,
        *,
        weight_decay: float,
        lr_mult_stem: float,
        lr_mult_body: float,
        lr_mult_fc: float,
        decay_norm: bool = True,
    ) -> list[dict]:
        """Optimiser parameter groups, each with an `lr_mult` for the schedule to scale.

        CoViAR's rule: fc gets `lr_mult_fc`; conv1, bn1 and data_bn of the MV and residual
        networks get `lr_mult_stem` (their input differs most from ImageNet's); everything
        else, the I-frame network's stem included, gets `lr_mult_body`. Weight decay is 0 on
        biases; CoViAR decays BatchNorm weights, `decay_norm=False` exempts them too.
        """
        stem_prefixes = ("data_bn.", "backbone.conv1.", "backbone.bn1.") if self.data_bn is not None else ()
        norm_weights = {f"{name}.weight" for name, m in self.named_modules() if isinstance(m, nn.BatchNorm2d)}
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if name.startswith("backbone.fc."):
                mult = lr_mult_fc
            elif name.startswith(stem_prefixes):
                mult = lr_mult_stem
            else:
                mult = lr_mult_body
            decays = not name.endswith(".bias") and (decay_norm or name not in norm_weights)
            groups.setdefault((mult, weight_decay if decays else 0.0), []).append(param)
        return [{"params": params, "lr_mult": mult, "weight_decay": wd} for (mult, wd), params in groups.items()]

    def count_macs(self, input_size: int = 224) -> int:
        """Multiply-accumulates of one segment at `input_size` x `input_size`, counted by
        running the real module (the I-frame, MV and residual inputs differ in channels)."""
        example = torch.zeros(1, 1, INPUT_CHANNELS[self.modality], input_size, input_size)
        return count_macs(self, example)


def count_macs(module: nn.Module, *inputs: Tensor) -> int:
    """MACs of `module(*inputs)` as torch's FlopCounterMode counts them (convolutions and
    matrix products; it reports 2 FLOPs per MAC). Runs in eval mode without gradients."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2


@dataclass
class LoadReport:
    """What `load_pretrained` did with a checkpoint's tensors."""

    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # reshaped to fit (MV conv1)
    dropped: list[str] = field(default_factory=list)  # deliberately left at their init
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded"]
        for name in ("adapted", "dropped", "missing", "unexpected"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{name}: {', '.join(keys)}")
        return "; ".join(parts)


def _state_dict_in(checkpoint: object, path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict inside a checkpoint file: a bare one, or one under "state_dict" or
    "model" (our checkpoints), without DataParallel's "module." prefix."""
    state = checkpoint
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: no state dict of tensors found")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_pretrained(
    model: ModalityNet,
    path: str | os.PathLike,
    *,
    conv1_init: str = "random",
    strict: bool = True,
) -> LoadReport:
    """Loads pretrained weights: a torchvision-layout ResNet (ImageNet, Kinetics, ...) into
    the backbone, or a whole `ModalityNet` saved by this trainer (data_bn included).

    Adapts what cannot match: an RGB `conv1` loaded into the 2-channel MV network is
    either left at its random initialisation (`conv1_init="random"`, what CoViAR does: it
    replaces conv1 with a new Conv2d) or set to the RGB kernel averaged over its input
    channels and repeated (`"rgb_mean"`, TSN's cross-modality initialisation); `fc` is
    left at its initialisation when the class counts differ. Any other shape mismatch
    is an error naming the tensor; with `strict`, so are missing and unexpected keys
    (a torchvision file has no data_bn: that input BatchNorm keeps its initialisation).

    Args:
        model: the network to load into.
        path: a file saved with `torch.save`, read with `weights_only=True`.
        conv1_init: "random" or "rgb_mean", for a conv1 whose input channels differ.
        strict: raise when keys are missing or unexpected (after the adaptations).

    Returns:
        What was loaded, adapted, dropped, missing and unexpected, by model key.
    """
    if conv1_init not in CONV1_INITS:
        raise ValueError(f"conv1_init {conv1_init!r}; valid: {', '.join(CONV1_INITS)}")
    source = _state_dict_in(torch.load(path, map_location="cpu", weights_only=True), path)
    whole_model = any(k.startswith(("backbone.", "data_bn.")) for k in source)
    if not whole_model:
        source = {f"backbone.{k}": v for k, v in source.items()}
    target = {k: v for k, v in model.state_dict().items() if whole_model or k.startswith("backbone.")}
    report = LoadReport()
    state: dict[str, Tensor] = {}
    for key, value in source.items():
        if key not in target:
            report.unexpected.append(key)
        elif value.shape == target[key].shape:
            state[key] = value
            report.loaded.append(key)
        elif key == "backbone.conv1.weight" and conv1_init == "rgb_mean" and value.shape[2:] == target[key].shape[2:]:
            channels = target[key].shape[1]
            state[key] = value.mean(1, keepdim=True).expand(-1, channels, -1, -1).clone()
            report.adapted.append(key)
        elif key == "backbone.conv1.weight" or key.startswith("backbone.fc."):
            report.dropped.append(key)
        else:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, "
                             f"the model needs {tuple(target[key].shape)}")
    report.missing = [k for k in target if k not in source]
    if strict and (report.missing or report.unexpected):
        raise ValueError(f"{path}: checkpoint does not fit this {model.backbone.arch}: {report.summary()}")
    model.load_state_dict(state, strict=False)
    return report
