"""`open_data`: the data module that `data.source` names, for one rank.

"shards" is the shard reader (trainer.data.shard_reader: WebDataset shards from
`cvpipe shard`); "tensors" the small in-memory source of tests and benchmarks
(trainer.data.tensors). Both implement trainer.data.contract's DataModule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from trainer.data.contract import DataModule

if TYPE_CHECKING:
    from trainer.config import Config


def open_data(cfg: Config, *, rank: int, world_size: int, device: torch.device | None = None,
              modalities: Sequence[str] = ()) -> DataModule:
    """The data module `cfg.data.source` names, for this rank; batches carry `modalities`
    beside cfg.model.modality as "inputs" (TEAM-Net's streams, PKD's teachers). The shard
    reader makes its batches on `device` (default the CPU)."""
    if cfg.data.source == "tensors":
        from trainer.data.tensors import TensorData

        return TensorData(cfg, rank=rank, world_size=world_size, modalities=modalities)
    # Imported here: webdataset is only needed for shards.
    from trainer.data.shard_reader import open_shards

    return open_shards(cfg, rank=rank, world_size=world_size, device=device, modalities=modalities)
