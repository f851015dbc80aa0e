"""CoViAR's input pipeline for a whole batch, on the training device: crops, flips and
normalisation in a few tensor operations.

Loader workers only read and decompress: they hand over uint8 frames as the shards store
them, (B, S, C, H, W) planes per modality (BGR I-frames; MV and residual already in CoViAR's
uint8 quantisation, cvpipe.shards.codec), and each video's views as numbers (`View`): the
crop and flip drawn where TSN draws them, so seeds, DDP and resuming are unchanged.
`apply_views` then runs where the frames are (the GPU, or the CPU where there is none) and
returns float32 (B, S x V, C, size, size), normalised exactly as CoViAR's data loader does:

    iframe:    BGR -> RGB, x / 255, then (x - mean) / std      (ImageNet mean and std)
    mv:        x / 255 - 0.5
    residual:  (x / 255 - 0.5) / std                            (channels stay BGR)

Training views are TSN's multi-scale corner crops resized to `size`, and a horizontal flip
that also negates the motion's x (256 - q on the quantised value, as CoViAR does); testing
scales the shorter side to size * 256 / 224 and takes the centre crop (or the ten-crop
view: four corners and the centre, each also flipped).

Resizing is bilinear with half-pixel centres and no antialiasing (OpenCV's INTER_LINEAR,
as CoViAR; torch's `interpolate(mode="bilinear", align_corners=False)`): each output
pixel's source position is computed per axis as `interpolate` computes it (clamped to the
crop), so a crop-then-resize or a resize-then-crop is one `grid_sample` per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.data.contract import INPUT_CHANNELS as CHANNELS
from trainer.data.contract import MODALITIES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TSN's crop scales relative to the shorter side: CoViAR keeps .66 for I-frames only.
CROP_SCALES = {"iframe": (1.0, 0.875, 0.75, 0.66), "mv": (1.0, 0.875, 0.75), "residual": (1.0, 0.875, 0.75)}
MAX_DISTORT = 1  # crop width and height scale indices may differ by at most this
AXIS_FIELDS = 4  # per axis of a view: source length, resized length, offset in it, origin in the frame
VIEW_FIELDS = 2 * AXIS_FIELDS + 1  # x, y, flip


@dataclass(frozen=True)
class View:
    """Where one output image comes from, per axis: the stored frame's `origin`.. span
    of `length` pixels is resized to `resized` pixels, of which the output takes `size`
    from `offset` on. A training crop: length = crop, resized = size, offset 0; a test
    view: length = the frame, resized = its scaled size, offset = the crop's corner."""

    x: tuple[int, int, int, int]  # (length, resized, offset, origin)
    y: tuple[int, int, int, int]
    flip: bool = False


def draw_crop(width: int, height: int, size: int, scales: Sequence[float],
              rng: np.random.Generator, flip_chance: float = 0.5) -> tuple[int, int, int, int, bool]:
    """One random multi-scale crop (x, y, w, h) and whether to flip (with `flip_chance`),
    shared by all segments of a video, as TSN's group transforms share them."""
    base = min(width, height)
    sizes = [int(base * s) for s in scales]
    # Sizes within 3 pixels of the target snap to it (TSN), saving a resize.
    snapped = [size if abs(s - size) < 3 else s for s in sizes]
    pairs = [(cw, ch) for i, ch in enumerate(snapped) for j, cw in enumerate(snapped) if abs(i - j) <= MAX_DISTORT]
    crop_w, crop_h = pairs[rng.integers(len(pairs))]
    offsets = corner_offsets(width, height, crop_w, crop_h, more=True)
    x, y = offsets[rng.integers(len(offsets))]
    return x, y, crop_w, crop_h, bool(rng.random() < flip_chance)


def corner_offsets(width: int, height: int, crop_w: int, crop_h: int, more: bool) -> list[tuple[int, int]]:
    """TSN's fixed crop positions: corners and centre, and with `more` eight more between."""
    w, h = (width - crop_w) // 4, (height - crop_h) // 4
    offsets = [(0, 0), (4 * w, 0), (0, 4 * h), (4 * w, 4 * h), (2 * w, 2 * h)]
    if more:
        offsets += [(0, 2 * h), (4 * w, 2 * h), (2 * w, 4 * h), (2 * w, 0),
                    (w, h), (3 * w, h), (w, 3 * h), (3 * w, 3 * h)]
    return offsets


def train_views(crop: tuple[int, int, int, int, bool], size: int) -> list[View]:
    """A drawn crop (x, y, w, h, flip) as the one view of a training segment."""
    x0, y0, w, h, flipped = crop
    return [View(x=(w, size, 0, x0), y=(h, size, 0, y0), flip=flipped)]


def eval_views(width: int, height: int, size: int, crops: int = 1) -> list[View]:
    """A test segment's views: the shorter side scaled to size * 256 / 224, then the
    centre crop (crops=1) or the ten-crop view (crops=10: four corners and the centre,
    then the same five flipped)."""
    if crops not in (1, 10):
        raise ValueError(f"test crops must be 1 or 10, not {crops}")
    factor = (size * 256 // 224) / min(height, width)
    resized_h, resized_w = round(height * factor), round(width * factor)
    if crops == 1:
        corners = [(int(round((resized_w - size) / 2)), int(round((resized_h - size) / 2)))]
    else:
        corners = corner_offsets(resized_w, resized_h, size, size, more=False)
    views = [View(x=(width, resized_w, x0, 0), y=(height, resized_h, y0, 0)) for x0, y0 in corners]
    if crops == 10:
        views += [View(v.x, v.y, flip=True) for v in views]
    return views


def views_tensor(views: Sequence[Sequence[View]], per_video: int) -> Tensor:
    """Per video, its `per_video` views as int64 (B, V, VIEW_FIELDS): x, y, flip; what a
    batch carries from the loader to `apply_views`."""
    rows = [[[*v.x, *v.y, int(v.flip)] for v in video] for video in views]
    return torch.tensor(rows, dtype=torch.int64).view(len(rows), per_video, VIEW_FIELDS)


def _grid_axis(axis: Tensor, size: int, frame_length: int, flip: Tensor | None) -> Tensor:
    """For (..., AXIS_FIELDS) axis specs: each output pixel's source position, (..., size),
    as torch's bilinear `interpolate` computes it (float32, half-pixel centres, clamped to
    the span), in grid_sample's coordinates for a frame axis of `frame_length` pixels."""
    length, resized, offset, origin = axis.unbind(-1)
    scale = length.float() / resized.float()
    j = torch.arange(size, device=axis.device, dtype=torch.float32)
    source = scale[..., None] * ((j + offset[..., None]) + 0.5) - 0.5
    source = torch.minimum(source.clamp(min=0), (length - 1)[..., None].float()) + origin[..., None]
    if flip is not None:  # a mirrored view reads its columns right to left
        source = torch.where(flip[..., None].bool(), source.flip(-1), source)
    return (2 * source + 1) / frame_length - 1  # align_corners=False: -1 and 1 are the outer pixel edges


def apply_views(frames: Tensor, views: Tensor, modality: str, size: int) -> Tensor:
    """Stored frames uint8 (B, S, C, H, W) and views int64 (B, V, VIEW_FIELDS) (`views_tensor`) ->
    float32 (B, S x V, C, size, size), segment-major, normalised; on `frames.device`.
    Frames smaller than H x W sit at the top left (the views never reach the padding).
    One bilinear `grid_sample` serves every segment, channel and view of a video."""
    if frames.dtype != torch.uint8 or frames.dim() != 5 or frames.shape[2] != CHANNELS[modality]:
        raise ValueError(f"{modality} frames must be uint8 (B, S, {CHANNELS[modality]}, H, W), "
                         f"not {tuple(frames.shape)} {frames.dtype}")
    views = views.to(frames.device)
    b, s, c, height, width = frames.shape
    v = views.shape[1]
    gx = _grid_axis(views[..., :AXIS_FIELDS], size, width, views[..., -1])  # (B, V, size)
    gy = _grid_axis(views[..., AXIS_FIELDS:2 * AXIS_FIELDS], size, height, None)
    # Views stacked along the output's height: (B, V * size, size, 2) as (x, y).
    grid = torch.stack(torch.broadcast_tensors(gx[:, :, None, :], gy[:, :, :, None]), dim=-1).view(b, v * size, size, 2)
    x = frames.reshape(b, s * c, height, width).float()
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = x.view(b, s, c, v, size, size).transpose(2, 3)  # (B, S, V, C, size, size)
    if modality == "mv":  # a mirrored motion field points the other way in x
        flipped = views[..., -1].bool().view(b, 1, v, 1, 1)
        x[:, :, :, 0] = torch.where(flipped, 256 - x[:, :, :, 0], x[:, :, :, 0])
    return normalise(x.reshape(b, s * v, c, size, size), modality)


def normalise(x: Tensor, modality: str) -> Tensor:
    """CoViAR's normalisation of stored values 0..255, channels at dim -3."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; valid: {', '.join(MODALITIES)}")
    if modality == "mv":
        return x / 255 - 0.5
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    if modality == "residual":
        return (x / 255 - 0.5) / std
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    return (x.flip(-3) / 255 - mean) / std
