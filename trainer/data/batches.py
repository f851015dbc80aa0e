"""A batch on its way from the loader workers to the model: stored frames, then inputs.

Workers only read and decompress. What they hand over (`StoredBatch`) is, per modality,
the members' uint8 planes as stored, copied once into one (B, S, C, H, W) array (frames
smaller than the batch's largest sit at its top left), what is left to undo on each
video's planes (cvpipe.shards.codec.Undo: the running sums and the colour filter of
planar.npy.zst), and each video's views (trainer.data.transforms.View) as numbers.
`to_device` moves that to the training device (pinned memory, non-blocking) and makes the
`Batch` of trainer.data.contract there: the filters undone (`unfilter`), then crops,
resizes, flips and CoViAR's normalisation for the whole batch (`apply_views`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch
from torch import Tensor

from cvpipe.shards.codec import Undo, unfilter_planes
from trainer.data.contract import Batch
from trainer.data.transforms import CHANNELS, View, apply_views, views_tensor


@dataclass
class StoredVideo:
    """One video's sampled members as stored: per modality, per segment, (C, H, W) uint8
    planes (maybe a read-only or transposed view of decompressed bytes) and what is left
    to undo on them; its views, shared by every segment and modality; its label and id."""

    arrays: dict[str, list[tuple[np.ndarray, Undo]]]
    views: list[View]
    label: int
    id: str


class StoredBatch(TypedDict):
    frames: dict[str, Tensor]      # modality -> uint8 (B, S, C, H, W); the first is the Batch's "input"
    undo: dict[str, Tensor]        # modality -> int64 (B,): each video's codec.Undo flags
    views: Tensor                  # int64 (B, V, VIEW_FIELDS): transforms.views_tensor
    label: Tensor                  # int64 (B,)
    id: list[str]
    skipped: list[str]


def collate(videos: Sequence[StoredVideo], modalities: Sequence[str], segments: int, views: int,
            skipped: list[str]) -> StoredBatch:
    """The batch of `videos` (maybe none, when all were skipped): one copy of each array."""
    frames, undo = {}, {}
    for modality in modalities:
        shapes = [a.shape for video in videos for a, _ in video.arrays[modality]]
        height, width = (max(s[1] for s in shapes), max(s[2] for s in shapes)) if shapes else (1, 1)
        uneven = any(s[1:] != (height, width) for s in shapes)
        out = (np.zeros if uneven else np.empty)((len(videos), segments, CHANNELS[modality], height, width), np.uint8)
        flags = []
        for b, video in enumerate(videos):
            undos = {u for _, u in video.arrays[modality]}
            if len(undos) > 1:  # one set of flags per video and modality is all the device step reads
                raise ValueError(f"{video.id}: {modality} members were stored with different filters")
            flags.append(int(undos.pop()))
            for s, (array, _) in enumerate(video.arrays[modality]):
                out[b, s, :, :array.shape[1], :array.shape[2]] = array
        frames[modality] = torch.from_numpy(out)
        undo[modality] = torch.tensor(flags, dtype=torch.int64)
    return StoredBatch(frames=frames, undo=undo, views=views_tensor([v.views for v in videos], views),
                       label=torch.tensor([v.label for v in videos], dtype=torch.int64),
                       id=[v.id for v in videos], skipped=skipped)


def unfilter(frames: Tensor, undo: Tensor) -> Tensor:
    """Stored planes uint8 (B, ..., C, H, W) with each video's Undo flags (B,) (on the
    CPU, so deciding what to do costs no device sync) -> the planes before the shard
    writer's filters: codec.unfilter_planes, for a batch on any device."""
    codes = sorted(set(undo.tolist()))
    if len(codes) == 1:
        return unfilter_planes(frames, Undo(codes[0]))
    out = frames.clone()
    for code in codes:
        rows = (undo == code).nonzero().flatten().to(frames.device, non_blocking=True)
        out[rows] = unfilter_planes(frames[rows], Undo(code))
    return out


def to_device(stored: StoredBatch, size: int, device: torch.device) -> Batch:
    """The model's inputs on `device`: per modality float32 (B, S x V, C, size, size)."""
    views = stored["views"].to(device, non_blocking=True)
    inputs = {}
    for modality, frames in stored["frames"].items():
        frames = unfilter(frames.to(device, non_blocking=True), stored["undo"][modality])
        inputs[modality] = apply_views(frames, views, modality, size)
    batch: Batch = {"input": next(iter(inputs.values())), "label": stored["label"].to(device, non_blocking=True),
                    "id": stored["id"], "skipped": stored["skipped"]}
    if len(inputs) > 1:
        batch["inputs"] = inputs
    return batch
