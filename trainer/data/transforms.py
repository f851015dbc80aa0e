"""CoViAR's input pipeline for one segment: crops, flips and normalisation.

Arrays come in as the shards store them, uint8 (H, W, C): BGR I-frames, and MV and
residual already in CoViAR's uint8 quantisation (cvpipe.shards.schema). Out come float32
(C, size, size) tensors normalised exactly as CoViAR's data loader does:

    iframe:    BGR -> RGB, x / 255, then (x - mean) / std      (ImageNet mean and std)
    mv:        x / 255 - 0.5
    residual:  (x / 255 - 0.5) / std                            (channels stay BGR)

Training crops are TSN's multi-scale corner crops resized to `size`, and a horizontal
flip that also negates the motion's x (256 - q on the quantised value, as CoViAR does);
testing scales the shorter side to size * 256 / 224 and takes the centre crop (or the
ten-crop view: four corners and the centre, each also flipped).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

MODALITIES = ("iframe", "mv", "residual")
CHANNELS = {"iframe": 3, "mv": 2, "residual": 3}
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
# TSN's crop scales relative to the shorter side: CoViAR keeps .66 for I-frames only.
CROP_SCALES = {"iframe": (1.0, 0.875, 0.75, 0.66), "mv": (1.0, 0.875, 0.75), "residual": (1.0, 0.875, 0.75)}
MAX_DISTORT = 1  # crop width and height scale indices may differ by at most this


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W), values unchanged (0..255)."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()


def normalise(x: torch.Tensor, modality: str) -> torch.Tensor:
    """CoViAR's normalisation of a (C, H, W) tensor of stored values 0..255."""
    if modality == "iframe":
        return (x.flip(0) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    if modality == "mv":
        return x / 255 - 0.5
    if modality == "residual":
        return (x / 255 - 0.5) / IMAGENET_STD
    raise ValueError(f"unknown modality {modality!r}; valid: {', '.join(MODALITIES)}")


def flip(x: torch.Tensor, modality: str) -> torch.Tensor:
    """Horizontal flip; a flipped motion field also points the other way in x."""
    x = x.flip(-1)
    if modality == "mv":
        x = x.clone()
        x[0] = 256 - x[0]
    return x


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear, half-pixel centres, no antialiasing (OpenCV's INTER_LINEAR, as CoViAR)."""
    if x.shape[-2:] == (height, width):
        return x
    return F.interpolate(x[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def corner_offsets(width: int, height: int, crop_w: int, crop_h: int, more: bool) -> list[tuple[int, int]]:
    """TSN's fixed crop positions: corners and centre, and with `more` eight more between."""
    w, h = (width - crop_w) // 4, (height - crop_h) // 4
    offsets = [(0, 0), (4 * w, 0), (0, 4 * h), (4 * w, 4 * h), (2 * w, 2 * h)]
    if more:
        offsets += [(0, 2 * h), (4 * w, 2 * h), (2 * w, 4 * h), (2 * w, 0),
                    (w, h), (3 * w, h), (w, 3 * h), (3 * w, 3 * h)]
    return offsets


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


def train_view(array: np.ndarray, modality: str, size: int, crop: tuple[int, int, int, int, bool]) -> torch.Tensor:
    """One training segment: the video's crop, resized to size x size, maybe flipped, normalised."""
    x0, y0, w, h, flipped = crop
    x = resize(to_tensor(array)[:, y0:y0 + h, x0:x0 + w], size, size)
    if flipped:
        x = flip(x, modality)
    return normalise(x, modality)


def test_views(array: np.ndarray, modality: str, size: int, crops: int = 1) -> torch.Tensor:
    """A test segment: the shorter side scaled to size * 256 / 224, then the centre crop
    (crops=1) or the ten-crop view (crops=10). Returns (crops, C, size, size)."""
    if crops not in (1, 10):
        raise ValueError(f"test crops must be 1 or 10, not {crops}")
    x = to_tensor(array)
    height, width = x.shape[-2:]
    short = size * 256 // 224
    factor = short / min(height, width)
    x = resize(x, round(height * factor), round(width * factor))
    height, width = x.shape[-2:]
    if crops == 1:
        y0, x0 = int(round((height - size) / 2)), int(round((width - size) / 2))
        views = [x[:, y0:y0 + size, x0:x0 + size]]
    else:
        views = [x[:, y0:y0 + size, x0:x0 + size] for x0, y0 in corner_offsets(width, height, size, size, more=False)]
        views += [flip(v, modality) for v in views]
    return torch.stack([normalise(v, modality) for v in views])
