"""The contract between the training loop and a data source.

Training and evaluation only ever see a `DataModule`: the shard reader
(`trainer.data.shard_reader`) implements it over WebDataset shards, `trainer.data.tensors`
over small in-memory tensors for tests and benchmarks; `trainer.data.sources.open_data`
picks one by `data.source`. The modalities and their input channels are named here.

A data module is built for one modality, one rank of a world, and one seed. Its batches:

    input: float32 (B, S, C, H, W), already normalised as CoViAR does (C = 3 for "iframe"
           and "residual", 2 for "mv"; H = W = data.input_size)
    label: int64 (B,)
    id:    list of B video ids (str)

Rules that make DDP and resuming exact:
- `train_batches(epoch)` never ends (resampled); the loop takes `steps_per_epoch` batches
  from it. Every rank reports the same `steps_per_epoch` (from manifest counts, not from
  what its shards happen to hold), so no rank waits for a gradient all-reduce that never
  comes. What it yields is a function of (seed, epoch, rank) only, so epoch e of a
  resumed run sees exactly the batches of an uninterrupted one.
- `eval_batches(split)` ends, and across all ranks yields every video of the split
  exactly once (ranks may get different numbers of videos and batches: evaluation has
  no per-batch collectives). Segments per video: data.eval_segments, taken at the
  segment centres.
- `split_size(split)` is the number of videos in the split (from the manifest), which
  evaluation checks its gathered count against.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NotRequired, Protocol, TypedDict

from torch import Tensor

if TYPE_CHECKING:
    from trainer.config import Config

SPLITS = ("val", "test")
MODALITIES = ("iframe", "mv", "residual")
INPUT_CHANNELS = {"iframe": 3, "mv": 2, "residual": 3}


class DataError(ValueError):
    """Data a command cannot run on (no samples, an empty split); the message names the
    folder and what is missing."""


class Batch(TypedDict):
    input: Tensor  # (B, S, C, H, W) float32
    label: Tensor  # (B,) int64
    id: list[str]
    skipped: NotRequired[list[str]]  # why each video since the last batch was skipped (corrupt members)
    inputs: NotRequired[dict[str, Tensor]]  # every modality asked for, same frames and crops


class DataModule(Protocol):
    num_classes: int
    class_names: Sequence[str]
    steps_per_epoch: int  # identical on every rank

    def train_batches(self, epoch: int) -> Iterable[Batch]: ...

    def eval_batches(self, split: str) -> Iterable[Batch]: ...

    def split_size(self, split: str) -> int: ...


def per_rank_batch(cfg: Config, world_size: int) -> int:
    """optim.batch_size is the recipe's batch over all ranks (CoViAR's 40 / 80); each rank
    takes an equal share, so the global batch and hence the recipe hold on any world."""
    if cfg.optim.batch_size % world_size:
        raise ValueError(f"optim.batch_size {cfg.optim.batch_size} does not divide over {world_size} ranks")
    return cfg.optim.batch_size // world_size


def steps_per_epoch(train_videos: int, cfg: Config) -> int:
    """Steps in one epoch: one pass over the training videos' count at the global batch
    size (at least one). Every rank computes it from the same count, so all agree."""
    return max(1, train_videos // cfg.optim.batch_size)


def report_skipped(batch: Batch) -> int:
    """Prints why each video before this batch was skipped; returns how many. Reported by
    whoever takes the batch, so every printed skip is a counted one."""
    for problem in batch.get("skipped", ()):
        print(f"skipped {problem}", file=sys.stderr)
    return len(batch.get("skipped", ()))


def require_split(data: DataModule, split: str, cfg: Config) -> None:
    """Raises DataError when `split` holds no video, before a run spends time on the others."""
    if data.split_size(split) == 0:
        raise DataError(f"{cfg.data.root}: the {split} split holds no video (manifest.json lists none stored; "
                        "its errors list says why, and `cvpipe verify` shows it)")
