"""An in-memory `DataModule` (data.source = "tensors"): a small learnable problem.

Video i of a split has class i % num_classes; each of its segments is that class's fixed
smooth pattern plus Gaussian noise (data.tensors.noise). It stands in for the shard
reader where a test or benchmark needs the training loop and not the data: it follows
the same contract (trainer.data.contract), including the deliberately uneven spread of videos
over ranks (video i belongs to rank i % world_size).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from trainer.data.contract import INPUT_CHANNELS, MODALITIES, SPLITS, Batch, per_rank_batch, steps_per_epoch

if TYPE_CHECKING:
    from trainer.config import Config

# The data do not depend on the run's seed (that seeds the model and the draws): two
# runs with different seeds train on the same problem.
DATA_SEED = 12345
# Each split's own random stream for evaluation (val and test kept the keys they always had).
EVAL_KEYS = {SPLITS[0]: 1, SPLITS[1]: 2, "train": 3}


def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))


class TensorData:
    """Batches hold `cfg.model.modality` as "input"; with more `modalities` (TEAM-Net reads
    all three) also "inputs", each modality with its own class patterns and noise."""

    def __init__(self, cfg: Config, *, rank: int, world_size: int, modalities: Sequence[str] = ()) -> None:
        t = cfg.data.tensors
        self.num_classes = t.num_classes
        self.class_names = [f"class{k}" for k in range(t.num_classes)]
        self.rank, self.world_size = rank, world_size
        self.seed = cfg.run.seed
        self.batch_size = per_rank_batch(cfg, world_size)
        self.noise = t.noise
        self.segments = {"train": cfg.data.num_segments, "val": cfg.data.eval_segments, "test": cfg.data.eval_segments}
        self.sizes = {"train": t.train_videos, "val": t.val_videos, "test": t.test_videos}
        self.steps_per_epoch = steps_per_epoch(t.train_videos, cfg)
        self.modalities = (cfg.model.modality,) + tuple(m for m in modalities if m != cfg.model.modality)
        size = cfg.data.input_size
        self.patterns = {}
        for i, m in enumerate(self.modalities):
            # The student's patterns are the one-modality source's, whatever else is asked for.
            key = (DATA_SEED,) if i == 0 else (DATA_SEED, MODALITIES.index(m) + 1)
            coarse = torch.randn(t.num_classes, INPUT_CHANNELS[m], 4, 4, generator=_generator(*key))
            self.patterns[m] = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def split_size(self, split: str) -> int:
        return self.sizes[split]

    def _mine(self, split: str) -> list[int]:
        return list(range(self.rank, self.sizes[split], self.world_size))

    def _batch(self, split: str, indices: list[int], generators: list[torch.Generator]) -> Batch:
        labels = torch.tensor([i % self.num_classes for i in indices], dtype=torch.int64)
        inputs = {}
        for m in self.modalities:
            clean = self.patterns[m][labels]  # (B, C, H, W)
            shape = (self.segments[split], *clean.shape[1:])
            noise = torch.stack([torch.randn(shape, generator=g) for g in generators])  # (B, S, C, H, W)
            inputs[m] = clean.unsqueeze(1) + noise * self.noise
        batch = Batch(input=inputs[self.modalities[0]], label=labels, id=[f"{split}_{i:05d}" for i in indices])
        if len(self.modalities) > 1:
            batch["inputs"] = inputs
        return batch

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        mine = self._mine("train")
        if not mine:
            raise ValueError(f"rank {self.rank} holds no training videos: "
                             f"{self.sizes['train']} videos over {self.world_size} ranks")
        generator = _generator(self.seed, epoch, self.rank)
        while True:
            picks = torch.randint(len(mine), (self.batch_size,), generator=generator).tolist()
            yield self._batch("train", [mine[p] for p in picks], [generator] * len(picks))

    def eval_batches(self, split: str) -> Iterator[Batch]:
        """Any split, the training one too (as the shard reader: what WISE and flatness
        read), each video with its own fixed noise."""
        if split not in EVAL_KEYS:
            raise ValueError(f"split {split!r}; valid: {', '.join(EVAL_KEYS)}")
        mine = self._mine(split)
        for start in range(0, len(mine), self.batch_size):
            indices = mine[start:start + self.batch_size]
            # Each video's noise is its own, fixed: an evaluation sees the same split
            # every time, on any number of ranks.
            generators = [_generator(DATA_SEED, EVAL_KEYS[split], i) for i in indices]
            yield self._batch(split, indices, generators)
