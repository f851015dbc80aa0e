"""A batch on its way from the loader workers to the model: stored frames, then inputs.

Workers only read and decompress. What they hand over (`StoredBatch`) is, per modality,
the members' uint8 arrays as stored, copied once into one (B, S, H, W, C) array (frames
smaller than the batch's largest sit at its top left), whether each video's arrays are
row deltas (codec's delta.npy.zst), and each video's views (trainer.data.transforms.View)
as numbers. `to_device` moves that to the training device (pinned memory, non-blocking)
and makes the `Batch` of trainer.data.contract there: row deltas summed back, then crops,
resizes, flips and CoViAR's normalisation for the whole batch (`apply_views`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch
from torch import Tensor

from trainer.data.contract import Batch
from trainer.data.transforms import CHANNELS, View, apply_views, views_tensor


@dataclass
class StoredVideo:
    """One video's sampled members as stored: per modality, per segment, an (H, W, C)
    uint8 array (maybe a read-only view of decompressed bytes) and whether it holds row
    deltas; its views, shared by every segment and modality; its label and id."""

    arrays: dict[str, list[tuple[np.ndarray, bool]]]
    views: list[View]
    label: int
    id: str


class StoredBatch(TypedDict):
    frames: dict[str, Tensor]      # modality -> uint8 (B, S, H, W, C); the first is the Batch's "input"
    row_deltas: dict[str, Tensor]  # modality -> bool (B,)
    views: Tensor                  # int64 (B, V, VIEW_FIELDS): transforms.views_tensor
    label: Tensor                  # int64 (B,)
    id: list[str]
    skipped: list[str]


def collate(videos: Sequence[StoredVideo], modalities: Sequence[str], segments: int, views: int,
            skipped: list[str]) -> StoredBatch:
    """The batch of `videos` (maybe none, when all were skipped): one copy of each array."""
    frames, row_deltas = {}, {}
    for modality in modalities:
        shapes = [a.shape for video in videos for a, _ in video.arrays[modality]]
        height, width = (max(s[0] for s in shapes), max(s[1] for s in shapes)) if shapes else (1, 1)
        uneven = any(s[:2] != (height, width) for s in shapes)
        out = (np.zeros if uneven else np.empty)((len(videos), segments, height, width, CHANNELS[modality]), np.uint8)
        deltas = []
        for b, video in enumerate(videos):
            flags = {d for _, d in video.arrays[modality]}
            if len(flags) > 1:  # one flag per video and modality is all the device step reads
                raise ValueError(f"{video.id}: {modality} members mix row deltas and plain arrays")
            deltas.append(flags.pop())
            for s, (array, _) in enumerate(video.arrays[modality]):
                out[b, s, :array.shape[0], :array.shape[1]] = array
        frames[modality] = torch.from_numpy(out)
        row_deltas[modality] = torch.tensor(deltas, dtype=torch.bool)
    return StoredBatch(frames=frames, row_deltas=row_deltas, views=views_tensor([v.views for v in videos], views),
                       label=torch.tensor([v.label for v in videos], dtype=torch.int64),
                       id=[v.id for v in videos], skipped=skipped)


def to_device(stored: StoredBatch, size: int, device: torch.device) -> Batch:
    """The model's inputs on `device`: per modality float32 (B, S x V, C, size, size)."""
    views = stored["views"].to(device, non_blocking=True)
    inputs = {}
    for modality, frames in stored["frames"].items():
        frames = frames.to(device, non_blocking=True)
        deltas = stored["row_deltas"][modality]
        if bool(deltas.any()):  # decided on the CPU copy: no device sync
            summed = torch.cumsum(frames, dim=2, dtype=torch.uint8)  # mod 256, as the deltas were taken
            frames = summed if bool(deltas.all()) else torch.where(
                deltas.to(device, non_blocking=True).view(-1, 1, 1, 1, 1), summed, frames)
        inputs[modality] = apply_views(frames, views, modality, size)
    batch: Batch = {"input": next(iter(inputs.values())), "label": stored["label"].to(device, non_blocking=True),
                    "id": stored["id"], "skipped": stored["skipped"]}
    if len(inputs) > 1:
        batch["inputs"] = inputs
    return batch
