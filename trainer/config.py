"""Typed training configuration, read from TOML.

A config file has the sections [model], [data], [optim] and [run] (the dataclasses
below), [team] for TEAM-Net, and for the paper's stages [ic] (internal-classifier
training) and [wise] (logits, WISE, early exit). Loading is strict (trainer.typed_toml):
an unknown key, a missing required key, a value of the wrong type or outside its valid
set is a `ConfigError` naming the key. `--set a.b=c` overrides
are applied before that check, with values read as TOML (`c` may be a number, a list,
`true`; text that is not TOML, such as a path, is taken as a string). The resolved config
is written back as TOML into the run directory, and reads back equal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from trainer.data.contract import MODALITIES
from trainer.models.networks import CONV1_INITS
from trainer.models.resnet import ARCHS
from trainer.train.pkd import SELF, TeacherSchedule
from trainer.typed_toml import ConfigError, apply_override, at_least, build, choices, in_range, items_in, to_toml

BUNDLED = Path(__file__).parent / "configs"


BACKBONES = ("coviar", "teamnet")


@dataclass
class ModelConfig:
    # The input of a CoViAR network; TEAM-Net reads all three (its crops are this modality's).
    modality: str = field(metadata=choices(*MODALITIES))
    # "coviar": one network per modality (trainer.models.networks); "teamnet": the three
    # streams fused in one network (trainer.models.teamnet, configured by [team]).
    backbone: str = field(default="coviar", metadata=choices(*BACKBONES))
    # Or a table by network (`arch = {iframe = "resnet50", mv = "resnet18", residual = "resnet18"}`),
    # so one config serves the three networks; see PER_MODALITY.
    arch: str = field(default="resnet18", metadata=choices(*ARCHS))
    width: int = field(default=64, metadata=at_least(1))  # 64 = the published ResNets
    pretrained: str = ""  # torchvision-layout checkpoint file; "" = random initialisation
    conv1_init: str = field(default="random", metadata=choices(*CONV1_INITS))  # MV conv1 from RGB weights


@dataclass
class StreamArchs:
    iframe: str = field(default="resnet50", metadata=choices(*ARCHS))
    mv: str = field(default="resnet18", metadata=choices(*ARCHS))
    residual: str = field(default="resnet18", metadata=choices(*ARCHS))


@dataclass
class TeamConfig:
    """TEAM-Net (model.backbone = "teamnet"): the streams' ResNets (model.width wide) and
    their TEAM fusion modules."""

    arch: StreamArchs = field(default_factory=StreamArchs)
    squeeze_ratio: int = field(default=4, metadata=at_least(1))  # of the channel attention
    dropout: float = field(default=0.5, metadata=in_range(0, 1))  # before each stream's fc
    temporal_shift: bool = False  # TSM on every block's residual branch
    # Stream weights to start from, "{modality}" replaced: `cvtrain fit` checkpoints of the
    # CoViAR networks or torchvision-layout files; "" = random initialisation.
    pretrained: str = ""


@dataclass
class TensorDataConfig:
    """The in-memory `tensors` source: a class-dependent pattern plus noise (tests, benchmarks)."""

    num_classes: int = field(default=4, metadata=at_least(2))
    train_videos: int = field(default=64, metadata=at_least(1))
    val_videos: int = field(default=16, metadata=at_least(1))
    test_videos: int = field(default=16, metadata=at_least(1))
    noise: float = field(default=1.0, metadata=at_least(0))


@dataclass
class DataConfig:
    source: str = field(default="shards", metadata=choices("shards", "tensors"))
    root: str = ""  # folder with the shards and their manifest.json
    num_segments: int = field(default=3, metadata=at_least(1))  # TSN segments in training
    eval_segments: int = field(default=3, metadata=at_least(1))  # segments per video in evaluation
    input_size: int = field(default=224, metadata=at_least(16))
    workers: int = field(default=-1, metadata=at_least(-1))  # data-loader processes per rank; -1 = one per core
    # training crop scales, fractions of the shorter side; [] = CoViAR's per modality
    crop_scales: list[float] = field(default_factory=list, metadata=in_range(0, 1, above=True))
    test_crops: int = field(default=1, metadata=choices(1, 10))  # centre crop, or the ten-crop view
    flip: bool = True  # random horizontal flips in training (off where direction is the label)
    # "index": local tars, read headers then only the sampled members; "stream": every
    # byte in order, as WebDataset reads pipes and object stores
    read: str = field(default="index", metadata=choices("index", "stream"))
    shuffle_buffer: int = field(default=256, metadata=at_least(0))  # training videos shuffled across shards
    tensors: TensorDataConfig = field(default_factory=TensorDataConfig)


@dataclass
class OptimConfig:
    """Adam with CoViAR's step schedule and per-layer learning-rate multipliers."""

    lr: float = field(metadata=at_least(0))  # or a table by network, as model.arch
    epochs: int = field(metadata=at_least(1))
    batch_size: int = field(metadata=at_least(1))  # videos per step over all ranks
    lr_steps: list[int] = field(default_factory=list, metadata=at_least(0))  # epochs where lr is multiplied by lr_decay
    lr_decay: float = field(default=0.1, metadata=in_range(0, 1, above=True))
    weight_decay: float = field(default=1e-4, metadata=at_least(0))
    eps: float = field(default=1e-3, metadata=at_least(0))
    lr_mult_stem: float = field(default=0.1, metadata=at_least(0))  # conv1, bn1, data_bn of the MV and residual nets
    lr_mult_body: float = field(default=0.01, metadata=at_least(0))
    lr_mult_fc: float = field(default=1.0, metadata=at_least(0))
    decay_norm: bool = True  # CoViAR decays BatchNorm weights (never biases)


@dataclass
class RunConfig:
    dir: str  # "{modality}" is replaced by model.modality, "{method}" by ic.method
    seed: int = 0
    eval_every: int = field(default=1, metadata=at_least(1))  # validate every N epochs (and the last)
    save_every: int = field(default=0, metadata=at_least(0))  # keep a checkpoint every N epochs; 0 = never
    resume: bool = True  # continue from DIR/last.pt when it exists
    force_resume: bool = False  # continue it even under a config that differs in what shapes results
    device: str = field(default="auto", metadata=choices("auto", "cpu", "cuda"))
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    compile: bool = False  # torch.compile the training model
    progress: bool = True  # progress bars on rank 0


TEACHERS = (*MODALITIES, SELF)  # SELF: the student network's own final logits


@dataclass
class ICConfig:
    """Internal-classifier training (`cvtrain ic`, REFERENCE.md section 1): the backbones
    are frozen (eval mode, no gradients) and only the three ICs of model.modality's
    network train, on labels ("ce") or on a teacher's soft targets ("pkd")."""

    method: str = field(default="ce", metadata=choices("ce", "pkd"))
    # Trained backbone checkpoints, "{modality}" replaced: the student's and the teachers'.
    backbones: str = ""
    # PKD's teacher schedule: the teacher of each phase, and the epochs (0-based) where
    # the next phase begins. The paper: MV, residual, the student's own network, switching
    # at 50 and 100 of 300 epochs; its ablations: ["self", "residual", "mv"], ["iframe"].
    teachers: list[str] = field(default_factory=lambda: ["mv", "residual", "self"], metadata=items_in(*TEACHERS))
    teacher_epochs: list[int] = field(default_factory=lambda: [50, 100])
    temperature: float = field(default=1.0, metadata=at_least(1e-3))
    label_weight: float = field(default=0.0, metadata=at_least(0))  # weight of a cross-entropy on labels (PKD)

    def __post_init__(self) -> None:
        try:
            TeacherSchedule.of(self.teachers, self.teacher_epochs, student=MODALITIES[0])
        except ValueError as e:
            raise ConfigError(f"ic.teacher_epochs: {e}") from None


@dataclass
class SegmentCounts:
    """Segments per video, per modality, at which `cvtrain logits` scores the val and
    test videos (the paper's sweep goes from MV/R/I 1/1/1 up to 3/5/3)."""

    iframe: list[int] = field(default_factory=lambda: [1, 3])
    mv: list[int] = field(default_factory=lambda: [1, 3])
    residual: list[int] = field(default_factory=lambda: [1, 3, 5])

    def __post_init__(self) -> None:
        for modality, counts in dataclasses.asdict(self).items():
            if not counts or min(counts) < 1:
                raise ConfigError(f"wise.segments.{modality}: {counts} must list segment counts of at least 1")


@dataclass
class WiseConfig:
    """WISE (REFERENCE.md section 1): one weight vector per exit over every exit up to
    it, fit on training logits by full-batch SGD; early exit at a confidence threshold."""

    lr: float = field(default=0.1, metadata=at_least(0))
    iterations: int = field(default=500, metadata=at_least(1))
    alpha: float = field(default=0.1, metadata=at_least(0))  # L1 weight (the TEAM-Net variant: 0.01)
    # The first vectors (counting R1's, which keeps its raw logits) are fit without the L1
    # term: the authors' five, up to the one ending at MV1.
    unpenalised: int = field(default=5, metadata=at_least(0))
    clip_negative: bool = False  # negative weights set to zero once, after fitting (TEAM-Net variant)
    taus: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999,
                                                       0.99999, 0.9999999, 1.0], metadata=in_range(0, 1))
    segments: SegmentCounts = field(default_factory=SegmentCounts)


@dataclass
class Config:
    model: ModelConfig
    optim: OptimConfig
    run: RunConfig
    data: DataConfig = field(default_factory=DataConfig)
    team: TeamConfig = field(default_factory=TeamConfig)
    ic: ICConfig = field(default_factory=ICConfig)
    wise: WiseConfig = field(default_factory=WiseConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir.replace("{modality}", self.model.modality).replace("{method}", self.ic.method))


# ----------------------------------------------------------------------------------- loading



def resolve_path(name: str | os.PathLike) -> Path:
    """A config file path, or the name of a bundled config (`ucf101_iframe`, `tiny_synth`)."""
    path = Path(name)
    if path.is_file():
        return path
    bundled = BUNDLED / f"{path.name.removesuffix('.toml')}.toml"
    if path.parent == Path(".") and bundled.is_file():
        return bundled
    names = ", ".join(sorted(p.stem for p in BUNDLED.glob("*.toml")))
    raise ConfigError(f"no config file {str(name)!r}; bundled configs: {names}")


# Values a config may give per network, as a table keyed by modality; the run's own
# modality picks its value before the config is checked, so a run's config.toml holds a number.
PER_MODALITY = (("model", "arch"), ("optim", "lr"))


def _pick_modality_values(data: dict) -> None:
    modality = data.get("model", {}).get("modality")
    for section, name in PER_MODALITY:
        table = data.get(section, {}).get(name)
        if not isinstance(table, dict):
            continue
        unknown = sorted(set(table) - set(MODALITIES))
        if unknown:
            raise ConfigError(f"{section}.{name}: {unknown[0]!r} is not a modality; the table is keyed by "
                              f"{', '.join(MODALITIES)}")
        if modality not in table:
            raise ConfigError(f"{section}.{name}: no value for model.modality {modality!r} "
                              f"(the table has {', '.join(table) or 'none'})")
        data[section][name] = table[modality]


def from_dict(data: dict, overrides: typing.Sequence[str] = ()) -> Config:
    data = json.loads(json.dumps(data))  # a deep copy the overrides may change
    for assignment in overrides:
        apply_override(Config, data, assignment)
    _pick_modality_values(data)
    return build(Config, data)


def load_config(path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> Config:
    """Reads a config file (or bundled config name), applies `--set` overrides, checks it."""
    path = resolve_path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    try:
        return from_dict(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------------- writing


def save_config(config: Config, path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_toml(config))
    os.replace(tmp, path)
