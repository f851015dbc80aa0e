"""The batched device augmentation (trainer.data.transforms, trainer.data.batches) against
a per-segment reference (below: slice the crop, torch's interpolate, flip, normalise, one
(C, H, W) segment at a time, as the trainer did it on the CPU before the batched path),
for every modality, crop scale, flip and test view."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cvpipe.shards import codec
from trainer.data.batches import StoredVideo, collate, to_device
from trainer.data.transforms import (
    CHANNELS,
    CROP_SCALES,
    MODALITIES,
    apply_views,
    corner_offsets,
    draw_crop,
    eval_views,
    train_views,
)

SIZE = 56
ATOL = 5e-5  # float32 rounding of the same blend, in normalised units (|x| <= ~2.7)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# --- The reference -------------------------------------------------------------------

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()


def _normalise(x: torch.Tensor, modality: str) -> torch.Tensor:
    if modality == "iframe":
        return (x.flip(0) / 255 - MEAN) / STD
    if modality == "mv":
        return x / 255 - 0.5
    return (x / 255 - 0.5) / STD


def _flip(x: torch.Tensor, modality: str) -> torch.Tensor:
    x = x.flip(-1)
    if modality == "mv":
        x = x.clone()
        x[0] = 256 - x[0]
    return x


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if x.shape[-2:] == (height, width):
        return x
    return F.interpolate(x[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def reference_train_view(array: np.ndarray, modality: str, size: int, crop: tuple[int, int, int, int, bool]) -> torch.Tensor:
    x0, y0, w, h, flipped = crop
    x = _resize(_to_tensor(array)[:, y0:y0 + h, x0:x0 + w], size, size)
    if flipped:
        x = _flip(x, modality)
    return _normalise(x, modality)


def reference_test_views(array: np.ndarray, modality: str, size: int, crops: int = 1) -> torch.Tensor:
    x = _to_tensor(array)
    height, width = x.shape[-2:]
    factor = (size * 256 // 224) / min(height, width)
    x = _resize(x, round(height * factor), round(width * factor))
    height, width = x.shape[-2:]
    if crops == 1:
        y0, x0 = int(round((height - size) / 2)), int(round((width - size) / 2))
        views = [x[:, y0:y0 + size, x0:x0 + size]]
    else:
        views = [x[:, y0:y0 + size, x0:x0 + size] for x0, y0 in corner_offsets(width, height, size, size, more=False)]
        views += [_flip(v, modality) for v in views]
    return torch.stack([_normalise(v, modality) for v in views])


# --- The tests -----------------------------------------------------------------------


def frames(rng: np.random.Generator, modality: str, segments: int, height: int, width: int) -> np.ndarray:
    """Segments' frames (S, H, W, C), as the extractor gives them."""
    return rng.integers(0, 256, (segments, height, width, CHANNELS[modality]), dtype=np.uint8)


def planes(stored: np.ndarray) -> np.ndarray:
    """(..., H, W, C) -> (..., C, H, W), as the shards' members are read."""
    return np.ascontiguousarray(np.moveaxis(stored, -1, -3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("modality", MODALITIES)
def test_training_views_equal_the_per_segment_path_for_every_crop_scale_and_flip(modality: str, device: str) -> None:
    rng = np.random.default_rng(1)
    width, height = 90, 70
    stored = frames(rng, modality, 3, height, width)
    seen_scales, seen_flips = set(), set()
    for _ in range(40):
        crop = draw_crop(width, height, SIZE, CROP_SCALES[modality], rng)
        seen_scales.add(crop[2:4])
        seen_flips.add(crop[4])
        views = collate([StoredVideo({modality: [(a, codec.Undo.NONE) for a in planes(stored)]}, train_views(crop, SIZE), 0, "v")],
                        [modality], 3, 1, [])["views"]
        out = apply_views(torch.from_numpy(planes(stored))[None].to(device), views, modality, SIZE)
        expected = torch.stack([reference_train_view(a, modality, SIZE, crop) for a in stored])
        torch.testing.assert_close(out[0].cpu(), expected, rtol=0, atol=ATOL)
    assert seen_flips == {False, True} and len(seen_scales) >= 5  # the draws covered the cases


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("crops", [1, 10])
@pytest.mark.parametrize("modality", MODALITIES)
def test_test_views_equal_the_per_segment_path(modality: str, crops: int, device: str) -> None:
    rng = np.random.default_rng(2)
    for width, height in ((90, 70), (64, 64), (340, 256)):
        stored = frames(rng, modality, 2, height, width)
        views = collate([StoredVideo({modality: [(a, codec.Undo.NONE) for a in planes(stored)]}, eval_views(width, height, SIZE, crops),
                                     0, "v")], [modality], 2, crops, [])["views"]
        out = apply_views(torch.from_numpy(planes(stored))[None].to(device), views, modality, SIZE)
        expected = torch.cat([reference_test_views(a, modality, SIZE, crops) for a in stored])
        assert out.shape == (1, 2 * crops, CHANNELS[modality], SIZE, SIZE)
        torch.testing.assert_close(out[0].cpu(), expected, rtol=0, atol=ATOL)


# Per modality, per video of the batch below: what the shard writer filtered its planes with.
U = codec.Undo
FILTERS = {m: [U.UP | U.LEFT | (U.COLOUR if CHANNELS[m] == 3 else U.NONE), U.NONE, U.UP] for m in MODALITIES}


@pytest.mark.parametrize("device", DEVICES)
def test_a_batch_of_videos_of_different_sizes_and_filters(device: str) -> None:
    """Each video of a collated batch (padded to the largest; each video's filters undone
    on the device) equals that video augmented alone by the reference."""
    rng = np.random.default_rng(3)
    sizes = [(70, 90), (64, 64), (80, 60)]
    videos, expected = [], []
    for i, (height, width) in enumerate(sizes):
        arrays = {m: frames(rng, m, 3, height, width) for m in MODALITIES}
        crop = draw_crop(width, height, SIZE, CROP_SCALES["iframe"], rng)
        stored = {m: [(codec.filter_planes(p, FILTERS[m][i]), FILTERS[m][i]) for p in planes(arrays[m])]
                  for m in MODALITIES}
        videos.append(StoredVideo(stored, train_views(crop, SIZE), i, f"v{i}"))
        expected.append({m: torch.stack([reference_train_view(a, m, SIZE, crop) for a in arrays[m]])
                         for m in MODALITIES})
    batch = to_device(collate(videos, list(MODALITIES), 3, 1, ["skipped one"]), SIZE, torch.device(device))
    assert batch["id"] == ["v0", "v1", "v2"] and batch["label"].tolist() == [0, 1, 2]
    assert batch["skipped"] == ["skipped one"] and batch["input"] is batch["inputs"]["iframe"]
    for i in range(len(sizes)):
        for m in MODALITIES:
            torch.testing.assert_close(batch["inputs"][m][i].cpu(), expected[i][m], rtol=0, atol=ATOL)


def test_a_batch_of_only_skipped_videos_is_empty() -> None:
    batch = to_device(collate([], ["mv"], 3, 10, ["a", "b"]), SIZE, torch.device("cpu"))
    assert batch["input"].shape == (0, 30, 2, SIZE, SIZE) and batch["skipped"] == ["a", "b"]


def test_flipping_motion_negates_its_x() -> None:
    """Quantised q = v + 128: a mirrored view reads the columns right to left and maps v -> -v."""
    q = np.random.default_rng(0).integers(0, 256, (1, 1, 2, 8, 8), dtype=np.uint8)
    full = [[8, 8, 0, 0, 8, 8, 0, 0]]  # the whole frame at its own size: no resampling
    plain = apply_views(torch.from_numpy(q), torch.tensor([[full[0] + [0]]]), "mv", 8)
    mirrored = apply_views(torch.from_numpy(q), torch.tensor([[full[0] + [1]]]), "mv", 8)
    torch.testing.assert_close((mirrored[0, 0, 0] + 0.5) * 255 - 128, -((plain[0, 0, 0] + 0.5) * 255 - 128).flip(-1))
    torch.testing.assert_close(mirrored[0, 0, 1], plain[0, 0, 1].flip(-1))
