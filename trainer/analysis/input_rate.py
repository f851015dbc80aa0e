"""`cvtrain bench-data`: whether the loader keeps a model busy, measured on this machine.

Two rates in videos/s at the config's batch size, input size and segments:
- the loader: the shard reader's training batches (workers reading and decompressing,
  then the augmentation on the training device), for each number of workers asked for;
- the model: training steps of the config's network (forward, backward, Adam, with the
  run's bf16 autocast and channels_last on CUDA) on random inputs of the batch's shape
  (a step's time does not depend on the values).
A worker's share is the best loader rate over its workers; the model's rate divided by it
says how many workers keep the model busy. Times are wall-clock, after a warm-up.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from trainer.config import Config
from trainer.data.contract import INPUT_CHANNELS, Batch
from trainer.data.shard_reader import loader_workers, open_shards
from trainer.train.distributed import Dist
from trainer.train.loop import BackboneTask


def loader_rate(cfg: Config, workers: int, batches: int, device: torch.device) -> float:
    """Videos/s of `batches` training batches after the first (which starts the workers
    and fills the shuffle buffer), made on `device`."""
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, workers=workers))
    stream = iter(open_shards(cfg, rank=0, world_size=1, device=device).train_batches(0))
    next(stream)
    _synchronize(device)
    start = time.perf_counter()
    videos = 0
    for _ in range(batches):
        batch = next(stream)
        videos += len(batch["id"])
    _synchronize(device)
    return videos / (time.perf_counter() - start)


def model_rate(cfg: Config, num_classes: int, steps: int, device: torch.device) -> float:
    """Videos/s of the config's training step on `device` (after two warm-up steps): the
    backbone task `cvtrain fit` trains (its model placement, autocast and loss), with the
    same optimiser."""
    task = BackboneTask(cfg, Dist(0, 1, 0, device), num_classes)
    task.train_mode()
    optimizer = torch.optim.Adam(task.param_groups(), lr=cfg.optim.lr, eps=cfg.optim.eps)
    size, batch = cfg.data.input_size, cfg.optim.batch_size
    inputs = Batch(input=torch.randn(batch, cfg.data.num_segments, INPUT_CHANNELS[cfg.model.modality], size, size,
                                     device=device),
                   label=torch.randint(num_classes, (batch,), device=device), id=[""] * batch)
    for step in range(2 + steps):
        if step == 2:
            _synchronize(device)
            start = time.perf_counter()
        loss, _ = task.loss(task.model, inputs, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_data(cfg: Config, workers: list[int], batches: int, steps: int, device: torch.device) -> dict[str, Any]:
    """The loader's rate per number of workers, the model's rate, and the workers it needs."""
    loader = {w: loader_rate(cfg, w, batches, device) for w in workers}
    per_worker = max(rate / max(w, 1) for w, rate in loader.items())
    model = model_rate(cfg, open_shards(cfg, rank=0, world_size=1).num_classes, steps, device)
    return {"device": str(device), "modality": cfg.model.modality, "batch_size": cfg.optim.batch_size,
            "input_size": cfg.data.input_size, "segments": cfg.data.num_segments, "loader_videos_s": loader,
            "per_worker_videos_s": per_worker, "model_videos_s": model, "workers_needed": model / per_worker,
            "default_workers": loader_workers(-1)}


def format_bench(result: dict[str, Any]) -> str:
    lines = [f"{result['modality']} on {result['device']}: batch {result['batch_size']} x {result['segments']} segments "
             f"at {result['input_size']} px", "workers  loader videos/s"]
    lines += [f"{w:>7}  {rate:15.1f}" for w, rate in result["loader_videos_s"].items()]
    lines.append(f"model step: {result['model_videos_s']:.1f} videos/s; one worker gives up to "
                 f"{result['per_worker_videos_s']:.1f} videos/s, so about {result['workers_needed']:.1f} workers keep "
                 f"the model busy (data.workers=-1 gives {result['default_workers']} here)")
    return "\n".join(lines)
