"""Batches from WebDataset shards (`cvpipe shard`'s output): the shard reader.

It reads `manifest.json` beside the shards for the split lists and counts, streams each
tar with webdataset's tar iterator, and for every video decodes only the members its
segments sample (cvpipe.shards.schema says where each lives). One frame index is drawn per
TSN segment and serves every modality, so a segment's I-frame, MV and residual come from
the same GOP (the MV's, which for a GOP's first frame is the previous GOP, as CoViAR maps
it).

Training is resampled: each step's videos come from shards drawn at random with
replacement, through a shuffle buffer (of the few compressed members each video's
segments sample, so it can be large), forever; the loop takes `steps_per_epoch` batches,
which every rank computes from the manifest's count, so DDP ranks never wait on each
other. All randomness is seeded by (seed, epoch, rank, loader worker), so a resumed run
sees exactly the batches an uninterrupted one would. Evaluation splits the split's
shards over ranks and loader workers, each shard read by exactly one of them.

A member that fails to decode, or a truncated tar, is reported on stderr with its shard
and key, and the video is skipped: the next batch carries why (`Batch["skipped"]`), and
whoever takes the batch prints and counts it (`report_skipped`), never silently.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import tar_file_iterator

from cvpipe.shards import listing, schema
from trainer.data.batches import StoredBatch, StoredVideo, collate, to_device
from trainer.data.contract import Batch, DataError, per_rank_batch, steps_per_epoch
from trainer.data.transforms import CROP_SCALES, draw_crop, eval_views, train_views

if TYPE_CHECKING:
    from trainer.config import Config

KIND = {"iframe": schema.IFRAME, "mv": schema.MV, "residual": schema.RESIDUAL}
MAX_SKIPPED_IN_A_ROW = 1000


class ShardProblem(Exception):
    """A sample that cannot be used; the message names the shard and the key."""


@dataclass(frozen=True)
class Sampling:
    """What one loader produces: which modalities (the first is the batch's "input"),
    how many segments, and how."""

    modalities: tuple[str, ...]
    segments: int
    size: int
    train: bool
    test_crops: int = 1
    scales: tuple[float, ...] = ()
    flip: bool = True
    read: str = "index"


def read_manifest(root: Path) -> dict[str, Any]:
    """The shard folder's manifest.json, if this trainer can read it and its counts (the
    epoch lengths) agree with its shard list; DataError naming the folder otherwise."""
    try:
        manifest = listing.read_listing(root)
    except ValueError as e:
        raise DataError(str(e)) from None
    path = root / listing.MANIFEST_NAME
    problems = listing.count_problems(manifest)
    if problems:
        raise DataError(f"{path}: its counts disagree with its own shard list, so its epoch lengths cannot be "
                        f"trusted ({'; '.join(problems[:3])}); `cvpipe verify {root}` shows all")
    return manifest


def segment_frames(header: schema.Header, segments: int, rng: np.random.Generator | None) -> list[int]:
    """One frame index per TSN segment: random within it for training, its centre for testing."""
    if rng is None:
        return [schema.segment_centre(header.num_frames, segments, s, schema.MV) for s in range(segments)]
    return [int(rng.integers(*schema.segment_range(header.num_frames, segments, s, schema.MV)))
            for s in range(segments)]


@dataclass
class Picked:
    """One video's members that its segments sample (compressed), ready to decode: all a
    shuffle buffer holds, so it stays small whatever the videos' length."""

    header: schema.Header
    members: dict[tuple[str, int], bytes]  # (modality, segment) -> stored bytes
    names: dict[tuple[str, int], str]      # the same keys -> member field, for messages
    where: str                             # "shard: key"


def pick(header: schema.Header, sample: dict[str, bytes], sampling: Sampling, rng: np.random.Generator | None,
         where: str) -> Picked:
    """Draws the segments' frames and keeps the members that serve them: per frame, the
    I-frame of the GOP its MV comes from, or the accumulated MV / residual at the position
    serving it."""
    frames = segment_frames(header, sampling.segments, rng if sampling.train else None)
    members, names = {}, {}
    for segment, frame in enumerate(frames):
        gop, position = header.serve(frame, schema.MV)
        for modality in sampling.modalities:
            kind = KIND[modality]
            name = header.field(kind, gop, 0 if kind == schema.IFRAME else position)
            try:
                members[modality, segment] = sample[name]
            except KeyError:
                raise ShardProblem(f"{where}: member '{name}' is missing") from None
            names[modality, segment] = name
    return Picked(header, members, names, where)


def video_frames(picked: Picked, sampling: Sampling, rng: np.random.Generator | None) -> StoredVideo:
    """One video's members as stored and its views: the same frames and, in training, the
    same crop and flip for every modality. Decompressed here; augmented on the device."""
    header = picked.header
    if sampling.train:
        crop = draw_crop(header.width, header.height, sampling.size, sampling.scales, rng,
                         0.5 if sampling.flip else 0.0)
        views = train_views(crop, sampling.size)
    else:
        views = eval_views(header.width, header.height, sampling.size, sampling.test_crops)
    arrays = {}
    for modality in sampling.modalities:
        arrays[modality] = []
        for segment in range(sampling.segments):
            try:
                arrays[modality].append(header.read(picked.names[modality, segment], picked.members[modality, segment]))
            except Exception as e:  # noqa: BLE001 - any decoder failure means a corrupt member
                raise ShardProblem(f"{picked.where}: member '{picked.names[modality, segment]}' "
                                   f"does not decode: {e}") from None
    return StoredVideo(arrays, views, header.label, header.id)


class StoredSample(Mapping[str, bytes]):
    """A sample's members in a local tar, read on access (pread at indexed offsets), so a
    video costs the bytes its segments sample, not the whole sample. `fields`: the members
    whose tar headers were read, {field: (offset, size)}; the others are where `header`'s
    layout puts them, from byte `base` on (schema 3 and later). `header` is the parsed
    header where finding the members needed it. Valid while the shard_samples generator
    that made it is at this sample."""

    def __init__(self, fd: int, fields: dict[str, tuple[int, int]], header: schema.Header | None = None,
                 base: int | None = None) -> None:
        self.fd, self.fields, self.header, self.base = fd, fields, header, base

    def _place(self, field: str) -> tuple[int, int]:
        if field in self.fields:
            return self.fields[field]
        if self.base is None:
            raise KeyError(field)
        offset, size = self.header.where(field)
        return self.base + offset, size

    def __getitem__(self, field: str) -> bytes:
        offset, size = self._place(field)
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise ShardProblem(f"member '{field}' is cut short ({len(data)} of {size} bytes)")
        return data

    def __contains__(self, field: object) -> bool:
        try:
            self._place(field)
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        laid_out = self.header.fields() if self.base is not None else []
        return iter([*self.fields, *laid_out])

    def __len__(self) -> int:
        return len(self.fields) + (self.header.num_members if self.base is not None else 0)


def sample_header(sample: Mapping[str, bytes]) -> schema.Header:
    """A sample's header, parsed once."""
    header = getattr(sample, "header", None)
    return header if header is not None else schema.Header.from_json(sample[schema.HEADER_FIELD])


def shard_samples(path: Path, read: str = "index") -> Iterator[tuple[str, Mapping[str, bytes]]]:
    """(key, {field: bytes}) per sample of a tar, in order. `read="index"` (local files)
    reads tar headers and then only the members asked for: of a sample whose header lists
    its layout (schema 3) only the header member's, jumping over the rest; "stream" reads
    every byte in order, as WebDataset does (pipes, object stores). A truncated or corrupt
    tar raises ShardProblem naming it, after every sample it could read whole."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ShardProblem(f"{path.name}: cannot open: {e}") from None
    with f:
        samples = _indexed(f) if read == "index" else _streamed(f)
        key = None
        try:
            for key, sample in samples:
                yield key, sample
        except Exception as e:  # noqa: BLE001 - tarfile raises many kinds
            raise ShardProblem(f"{path.name}: unreadable tar after sample {key!r}: {e}") from None


def _streamed(f) -> Iterator[tuple[str, dict[str, bytes]]]:
    key, sample = None, {}
    try:
        for member in tar_file_iterator(f):
            name_key, field = member["fname"].split(".", 1)
            if name_key != key:
                if key is not None:
                    yield key, sample
                key, sample = name_key, {}
            sample[field] = member["data"]
    except Exception:
        # The sample being read when the tar broke is still good if it is whole.
        if key is not None and _whole(sample):
            yield key, sample
        raise
    if key is not None:
        yield key, sample


def _indexed(f) -> Iterator[tuple[str, StoredSample]]:
    end = os.fstat(f.fileno()).st_size
    tar = tarfile.open(fileobj=f, mode="r:")
    key, fields, header, base = None, {}, None, None

    def sample() -> StoredSample:
        return StoredSample(f.fileno(), fields, header, base)

    try:
        while (info := tar.next()) is not None:
            if not info.isfile():
                continue
            name_key, field = info.name.split(".", 1)
            if name_key != key:
                if key is not None:
                    yield key, sample()
                key, fields, header, base = name_key, {}, None, None
            if info.offset_data + info.size > end:
                raise ShardProblem(f"member '{info.name}' is cut short (the file ends at byte {end})")
            fields[field] = (info.offset_data, info.size)
            if field == schema.HEADER_FIELD:
                header = _parsed(sample())
                if header is not None and header.layout:
                    base = tar.offset  # the header member's data end, padded: where its layout counts from
                    if base + header.span > end:
                        raise ShardProblem(f"sample {key!r} is cut short (it ends past byte {end})")
                    tar.offset = base + header.span  # tarfile reads on from there: the next sample
    except Exception:
        if key is not None and _whole(sample()):
            yield key, sample()
        raise
    if key is not None:
        yield key, sample()


def _parsed(sample: StoredSample) -> schema.Header | None:
    """The sample's header, or None when it does not parse (the sample is then reported
    when it is picked, and the tar read on header by header)."""
    try:
        return schema.Header.from_json(sample[schema.HEADER_FIELD])
    except (ValueError, ShardProblem):
        return None


def _whole(sample: Mapping[str, bytes]) -> bool:
    try:
        header = sample_header(sample)
    except (KeyError, ValueError, ShardProblem):
        return False
    return all(field in sample for field in header.fields())


class VideoStream(IterableDataset):
    """Batches from a list of shards, for one rank.

    Training (`epoch` given): endless, shards drawn with replacement, a shuffle buffer.
    Evaluation: each of `shards` once, split over the loader's workers.
    """

    def __init__(self, shards: Sequence[Path], sampling: Sampling, batch_size: int, seed: int, rank: int,
                 epoch: int | None = None, shuffle_buffer: int = 0) -> None:
        self.shards = list(shards)
        self.sampling = sampling
        self.batch_size = batch_size
        self.seed, self.rank, self.epoch = seed, rank, epoch
        self.shuffle_buffer = shuffle_buffer

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if self.epoch is None:
            return self._batches(self._videos(self.shards[worker::workers], None))
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        return self._batches(self._videos(self._resampled(rng), rng))

    def _resampled(self, rng: np.random.Generator) -> Iterator[Path]:
        while True:
            yield self.shards[rng.integers(len(self.shards))]

    def _videos(self, shards, rng: np.random.Generator | None) -> Iterator[StoredVideo | str]:
        """Per usable video its stored frames; per skipped one, why (shard, key, member)."""
        for picked in self._shuffled(self._picked(shards, rng), rng):
            if isinstance(picked, str):
                yield picked
                continue
            try:
                yield video_frames(picked, self.sampling, rng)
            except ShardProblem as e:
                yield str(e)

    def _picked(self, shards, rng: np.random.Generator | None) -> Iterator[Picked | str]:
        for shard in shards:
            try:
                for key, sample in shard_samples(shard, self.sampling.read):
                    where = f"{shard.name}: {key}"
                    try:
                        if schema.HEADER_FIELD not in sample:
                            raise ShardProblem(f"{where}: no header member")
                        yield pick(sample_header(sample), sample, self.sampling, rng, where)
                    except (ShardProblem, ValueError, KeyError) as e:
                        yield f"{where}: {e}"
            except ShardProblem as e:
                yield f"the rest of {shard.name}: {e}"

    def _shuffled(self, samples, rng: np.random.Generator | None):
        if rng is None or self.shuffle_buffer <= 1:
            yield from samples
            return
        buffer = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.integers(len(buffer)))
        while buffer:
            yield buffer.pop(rng.integers(len(buffer)))

    def _batches(self, videos) -> Iterator[StoredBatch]:
        batch, skipped = [], []
        for video in videos:
            if isinstance(video, str):
                skipped.append(video)
                # An endless stream over shards that are all broken would never yield.
                if len(skipped) > MAX_SKIPPED_IN_A_ROW:
                    raise RuntimeError(f"{len(skipped)} videos in a row could not be read, e.g. {skipped[-1]}")
                continue
            batch.append(video)
            if len(batch) == self.batch_size:
                yield self._collate(batch, skipped)
                batch, skipped = [], []
        if batch or skipped:
            yield self._collate(batch, skipped)

    def _collate(self, videos: list[StoredVideo], skipped: list[str]) -> StoredBatch:
        s = self.sampling
        return collate(videos, s.modalities, s.segments, 1 if s.train else s.test_crops, skipped)


class ShardData:
    """The DataModule (trainer.data.contract) over a folder of shards, for one rank.

    Batches hold `cfg.model.modality` as "input"; with more `modalities` (the teachers of
    PKD, the fused evaluation) they also hold "inputs", a dict of all of them, sampled at
    the same frames with the same crops. Batches are made on `device` (trainer.data.batches:
    workers decompress, the device augments).
    """

    def __init__(self, cfg: Config, *, rank: int, world_size: int, modalities: Sequence[str] = (),
                 device: torch.device | None = None) -> None:
        self.cfg = cfg
        self.device = device or torch.device("cpu")
        self.modalities = (cfg.model.modality,) + tuple(m for m in modalities if m != cfg.model.modality)
        self.root = Path(cfg.data.root)
        self.rank, self.world_size = rank, world_size
        self.manifest = read_manifest(self.root)
        classes = self.manifest["classes"]
        if not classes:
            failed = len(self.manifest.get("errors", ()))
            raise DataError(f"{self.root}: the shards hold no sample ({failed} videos failed; see manifest.json's "
                            "errors or `cvpipe verify`)")
        self.num_classes = max(c["label"] for c in classes) + 1
        names = {c["label"]: c.get("name", str(c["label"])) for c in classes}
        self.class_names = [names.get(i, str(i)) for i in range(self.num_classes)]
        self.batch_size = per_rank_batch(cfg, world_size)
        self.steps_per_epoch = steps_per_epoch(self.split_size("train"), cfg)
        if not self._shards("train"):
            raise DataError(f"{self.root}: manifest.json lists no training shard")

    def split_size(self, split: str) -> int:
        return int(self.manifest["splits"][split]["samples"])

    def _shards(self, split: str) -> list[Path]:
        return [self.root / s["name"] for s in self.manifest["shards"] if s["split"] == split]

    def _sampling(self, train: bool) -> Sampling:
        modality = self.cfg.model.modality
        data = self.cfg.data
        return Sampling(modalities=self.modalities, segments=data.num_segments if train else data.eval_segments,
                        size=data.input_size, train=train, test_crops=data.test_crops,
                        scales=tuple(data.crop_scales) or CROP_SCALES[modality], flip=data.flip,
                        read=data.read)

    def _batches(self, stream: VideoStream) -> Iterator[Batch]:
        workers = loader_workers(self.cfg.data.workers)
        loader = DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=False,
                            prefetch_factor=2 if workers else None, pin_memory=self.device.type == "cuda")
        for stored in loader:
            yield to_device(stored, self.cfg.data.input_size, self.device)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        stream = VideoStream(self._shards("train"), self._sampling(True), self.batch_size, self.cfg.run.seed,
                             self.rank, epoch=epoch, shuffle_buffer=self.cfg.data.shuffle_buffer)
        return self._batches(stream)

    def eval_batches(self, split: str) -> Iterator[Batch]:
        shards = self._shards(split)[self.rank::self.world_size]
        stream = VideoStream(shards, self._sampling(False), self.batch_size, self.cfg.run.seed, self.rank)
        return self._batches(stream)


def loader_workers(configured: int) -> int:
    """data.workers, or for -1 one per CPU core this rank may use (the cores this
    process may run on, shared by torchrun's local ranks): workers only read and
    decompress, so a core keeps one busy."""
    if configured >= 0:
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def open_shards(cfg: Config, *, rank: int, world_size: int, modalities: Sequence[str] = (),
                device: torch.device | None = None) -> ShardData:
    return ShardData(cfg, rank=rank, world_size=world_size, modalities=modalities, device=device)
