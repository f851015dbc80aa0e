"""Which network a config trains: a CoViAR modality network or TEAM-Net, from the
arguments every checkpoint stores (`model_args`), so any checkpoint rebuilds its network,
and the internal classifiers that belong on each."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from trainer.data.contract import MODALITIES
from trainer.models.exits import ICNet
from trainer.models.heads import InternalClassifiers
from trainer.models.networks import ModalityNet
from trainer.models.teamnet import SharedICs, TeamICNet, TeamNet

if TYPE_CHECKING:
    from trainer.config import Config

COVIAR, TEAMNET = "coviar", "teamnet"
NETWORKS = (*MODALITIES, TEAMNET)  # what a run trains: one modality's network, or TEAM-Net
# The config key behind each of `network_args`' arguments (for messages).
CONFIG_KEYS = {"backbone": "model.backbone", "modality": "model.modality", "arch": "model.arch",
               "width": "model.width", "archs": "team.arch", "ratio": "team.squeeze_ratio",
               "dropout": "team.dropout", "temporal_shift": "team.temporal_shift"}


def network_args(cfg: Config, num_classes: int) -> dict[str, Any]:
    """The arguments of the network `cfg.model` describes (saved in its checkpoints)."""
    if cfg.model.backbone == TEAMNET:
        t = cfg.team
        return {"backbone": TEAMNET, "archs": dataclasses.asdict(t.arch), "num_classes": num_classes,
                "width": cfg.model.width, "ratio": t.squeeze_ratio, "dropout": t.dropout,
                "temporal_shift": t.temporal_shift}
    return {"modality": cfg.model.modality, "arch": cfg.model.arch, "num_classes": num_classes,
            "width": cfg.model.width}


def backbone_of(args: dict[str, Any]) -> str:
    """"coviar" or "teamnet": which network `args` describe (CoViAR's do not say)."""
    return args.get("backbone", COVIAR)


def build_network(args: dict[str, Any]) -> ModalityNet | TeamNet:
    """An untrained network of the shape `args` (from `network_args`) describes."""
    rest = {k: v for k, v in args.items() if k != "backbone"}
    return TeamNet(**rest) if backbone_of(args) == TEAMNET else ModalityNet(**rest)


def attach_ics(net: ModalityNet | TeamNet) -> ICNet | TeamICNet:
    """`net` frozen, with fresh internal classifiers of its kind: the paper's three heads
    after layers 1..3 of a CoViAR network, or TEAM-Net's three shared ones."""
    if isinstance(net, TeamNet):
        return TeamICNet(net, SharedICs(net.squeezed_sizes(), net.num_classes))
    b = net.backbone
    return ICNet(net, InternalClassifiers(b.arch, net.num_classes, b.conv1.out_channels))


def build_ic_network(args: dict[str, Any]) -> ICNet | TeamICNet:
    """An untrained network with its ICs, of the shape an IC run's `model_args` describe."""
    return attach_ics(build_network(args))


def input_modalities(cfg: Config) -> tuple[str, ...]:
    """The modalities a batch must carry besides cfg.model.modality's: TEAM-Net reads all three."""
    return MODALITIES if cfg.model.backbone == TEAMNET else ()


def network_name(cfg: Config) -> str:
    """What a run trains, in its messages: the modality, or "teamnet"."""
    return TEAMNET if cfg.model.backbone == TEAMNET else cfg.model.modality
