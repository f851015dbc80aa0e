"""Scoring trained networks over a split on every rank: the validation of training, and
the measurements analysis builds on.

Each rank scores its own videos; counts are summed with one all_reduce
(trainer.train.metrics), and ids, labels and logits gathered to rank 0 when asked, sorted
by video id. `evaluate_model` scores one network (a modality's, or TEAM-Net);
`evaluate_exits` the four exits of a frozen backbone with several sets of internal
classifiers in one pass (IC validation, `cvtrain logits`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from trainer.data.contract import Batch, report_skipped
from trainer.models.exits import EXITS
from trainer.models.heads import InternalClassifiers
from trainer.models.networks import ModalityNet
from trainer.models.teamnet import SharedICs, TeamNet
from trainer.train import distributed
from trainer.train.distributed import Dist
from trainer.train.metrics import Counts


@dataclass
class Evaluation:
    """Metrics of a split over all ranks; the arrays are filled on rank 0 when gathered,
    sorted by video id."""

    summary: dict[str, float]
    confusion: np.ndarray
    ids: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))
    labels: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))
    logits: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    clip_logits: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=np.float32))


def check_once(ids: Sequence[str], where: str) -> None:
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    if duplicates:
        raise RuntimeError(f"{where}: {len(duplicates)} videos were evaluated more than once "
                           f"(e.g. {', '.join(duplicates[:5])}); the loader must split the videos over ranks")


class _Videos:
    """This rank's evaluation batches that hold videos, behind rank 0's progress bar; the
    videos the loader skipped are reported and counted."""

    def __init__(self, batches: Iterable[Batch], dist: Dist, desc: str, show: bool) -> None:
        self.batches, self.dist, self.desc, self.show = batches, dist, desc, show
        self.skipped = 0

    def __iter__(self) -> Iterator[Batch]:
        for batch in tqdm(self.batches, desc=self.desc, unit="batch", leave=False,
                          disable=None if self.show and self.dist.is_main else True):
            self.skipped += report_skipped(batch)
            if batch["id"]:
                yield batch

    def finish(self, videos: int, expected: int) -> int:
        """The skipped videos of all ranks; warns on rank 0 when not every video was scored."""
        skipped = int(distributed.all_reduce_sum(torch.tensor(self.skipped, device=self.dist.device)).item())
        if videos != expected and self.dist.is_main:
            tqdm.write(f"warning: {self.desc}: {videos} of {expected} videos were evaluated, {skipped} skipped "
                       "(the lines above say why)")
        return skipped


@torch.no_grad()
def evaluate_model(
    model: ModalityNet | TeamNet,
    batches: Iterable[Batch],
    num_classes: int,
    *,
    dist: Dist,
    expected: int,
    amp: bool = False,
    gather: bool = False,
    desc: str = "eval",
    show: bool = True,
) -> Evaluation:
    """Scores every video of `batches` (this rank's share of a split).

    Args:
        model: the bare network (not DDP: ranks run different numbers of batches).
        batches: this rank's evaluation batches.
        num_classes: classes of the logits.
        dist: this process's place in the world.
        expected: videos in the whole split; a different count is reported, duplicates are an error.
        amp: bf16 autocast (CUDA).
        gather: also collect ids, labels and logits on rank 0.
        desc, show: the progress bar's label, and whether rank 0 shows it.
    """
    model.eval()
    counts = Counts.zeros(num_classes, dist.device)
    ids: list[str] = []
    labels, logits, clip_logits = [], [], []
    videos = _Videos(batches, dist, desc, show)
    for batch in videos:
        x = model.read(batch, dist.device)
        y = batch["label"].to(dist.device, non_blocking=True)
        with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=amp):
            clips = model(x, average=False).float()  # (B, S, K)
        video = clips.mean(1)
        counts.add(video, y, clips)
        if gather:
            ids += batch["id"]
            labels.append(y.cpu())
            logits.append(video.cpu())
            clip_logits.append(clips.cpu())
    summary = counts.all_reduce().summary()
    summary.update(expected_videos=expected, skipped=videos.finish(summary["videos"], expected))
    out = Evaluation(summary, counts.confusion.cpu().numpy())
    if not gather:
        return out
    k = num_classes
    mine = (ids, torch.cat(labels).numpy() if labels else np.zeros(0, np.int64),
            torch.cat(logits).numpy() if logits else np.zeros((0, k), np.float32),
            torch.cat(clip_logits).numpy() if clip_logits else None)
    parts = distributed.gather_to_main(mine)
    if parts is None:
        return out
    all_ids = [i for part in parts for i in part[0]]
    check_once(all_ids, desc)
    order = np.argsort(np.array(all_ids, dtype=str), kind="stable")
    out.ids = np.array(all_ids, dtype=str)[order]
    out.labels = np.concatenate([p[1] for p in parts])[order]
    out.logits = np.concatenate([p[2] for p in parts]).astype(np.float32)[order]
    clip_parts = [p[3] for p in parts if p[3] is not None]
    if clip_parts:
        out.clip_logits = np.concatenate(clip_parts).astype(np.float32)[order]
    out.summary["videos_per_rank"] = [len(p[0]) for p in parts]
    return out


@dataclass
class ExitEvaluation:
    """Per-exit metrics of one set of ICs over a split; arrays on rank 0 when gathered,
    sorted by video id."""

    summaries: dict[str, dict[str, float]]  # exit name -> metrics
    ids: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    logits: np.ndarray = field(default_factory=lambda: np.zeros((0, len(EXITS), 0), dtype=np.float32))


@torch.no_grad()
def evaluate_exits(
    net: ModalityNet | TeamNet,
    ic_sets: Sequence[InternalClassifiers | SharedICs],
    batches: Iterable[Batch],
    num_classes: int,
    *,
    dist: Dist,
    expected: int,
    amp: bool = False,
    gather: bool = False,
    desc: str = "eval",
    show: bool = True,
) -> list[ExitEvaluation]:
    """Scores the four exits of `net` with each of `ic_sets` (several sets of ICs trained
    on the same frozen backbone share one pass over the data and the backbone).

    Args:
        net: the frozen backbone network (a CoViAR network, or TEAM-Net with its shared ICs).
        ic_sets: ICs of that backbone (e.g. the CE and PKD ones of several seeds).
        batches: this rank's evaluation batches of a split.
        num_classes: classes of the logits.
        dist: this process's place in the world.
        expected: videos in the whole split (a different count is reported).
        amp: bf16 autocast (CUDA).
        gather: also collect ids, labels and (N, 4, K) logits on rank 0.
        desc, show: the progress bar's label, and whether rank 0 shows it.
    """
    net.eval()
    for ics in ic_sets:
        ics.eval()
    counts = [[Counts.zeros(num_classes, dist.device) for _ in EXITS] for _ in ic_sets]
    ids: list[str] = []
    labels: list[Tensor] = []
    logits: list[list[Tensor]] = [[] for _ in ic_sets]
    videos = _Videos(batches, dist, desc, show)
    for batch in videos:
        x = net.read(batch, dist.device)
        y = batch["label"].to(dist.device, non_blocking=True)
        segments = batch["input"].shape[1]
        with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=amp):
            exits = net.forward_exits(x)
            final = net.final_logits(exits, segments).float().unsqueeze(1)  # (B, 1, K)
            for i, ics in enumerate(ic_sets):
                scores = torch.cat([ics(exits, segments).float(), final], 1)  # (B, 4, K)
                for e in range(len(EXITS)):
                    counts[i][e].add(scores[:, e], y)
                if gather:
                    logits[i].append(scores.cpu())
        if gather:
            ids += batch["id"]
            labels.append(y.cpu())
    out = []
    for i in range(len(ic_sets)):
        summaries = {name: c.all_reduce().summary() for name, c in zip(EXITS, counts[i], strict=True)}
        out.append(ExitEvaluation(summaries))
    skipped = videos.finish(out[0].summaries[EXITS[0]]["videos"], expected)
    for ev in out:
        for summary in ev.summaries.values():
            summary["skipped"] = skipped
    if not gather:
        return out
    mine = (ids, torch.cat(labels).numpy() if labels else np.zeros(0, np.int64),
            [torch.cat(part).numpy() if part else np.zeros((0, len(EXITS), num_classes), np.float32)
             for part in logits])
    parts = distributed.gather_to_main(mine)
    if parts is None:
        return out
    all_ids = [vid for part in parts for vid in part[0]]
    check_once(all_ids, desc)
    order = np.argsort(np.array(all_ids, dtype=str), kind="stable")
    for i, ev in enumerate(out):
        ev.ids = np.array(all_ids, dtype=str)[order]
        ev.labels = np.concatenate([p[1] for p in parts])[order]
        ev.logits = np.concatenate([p[2][i] for p in parts]).astype(np.float32)[order]
    return out
