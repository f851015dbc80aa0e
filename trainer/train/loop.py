"""The training loop, and backbone training: one modality network with CoViAR's recipe.

`train(cfg, task, data, dist)` is the one loop of the trainer; a `Task` says what trains.
`fit(cfg)`, the whole of `cvtrain fit`, runs it with a `BackboneTask`; `cvtrain ic` runs
it with the internal classifiers' task (trainer.train.ic). Each epoch runs the same steps in
the same order: set the learning rate, train one epoch, evaluate on the validation split
(never on test), checkpoint, log. The run directory (cfg.run.dir) ends up holding:

    config.toml     the resolved config
    metrics.jsonl   one line per epoch: epoch averages over all ranks
    last.pt         everything needed to resume (model, optimizer, RNG states per rank,
                    best-so-far, the metrics history)
    best.pt         the weights with the best validation top-1 so far (per selection
                    unit: the backbone is one, each internal classifier is its own)
    epoch_NNNN.pt   every run.save_every epochs, a copy of last.pt

Under torchrun every rank trains the same number of steps on its own batches and DDP
averages the gradients; only rank 0 writes files. On CUDA the model runs in bf16
autocast and channels_last; torch.compile is an option.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from trainer.config import Config, save_config
from trainer.data.contract import Batch, DataModule, report_skipped, require_split
from trainer.data.sources import open_data
from trainer.models.build import TEAMNET, build_network, input_modalities, network_args, network_name
from trainer.models.networks import load_pretrained
from trainer.train import checkpoint, distributed
from trainer.train.distributed import Dist
from trainer.train.optim import lr_at, set_lr
from trainer.train.resume import resume
from trainer.train.validate import evaluate_model

METRICS = "metrics.jsonl"


class TrainingDiverged(RuntimeError):
    """The loss turned NaN or infinite; the message names the epoch and step."""


class EpochMeter:
    """Running sums of one training epoch, kept on the device (no sync per step) and
    averaged over ranks at the end. `wrap` takes exactly `steps` batches from an endless
    loader and shows loss, accuracy and samples/s on rank 0's progress bar. A task with
    several scored outputs (the internal classifiers) gets a top-1 per output, by name.
    It also times how long the loop waited for batches (the loader, and on the device
    its augmentation): with CUDA's asynchronous steps that wait stays near zero while the
    model is the bottleneck and grows when input cannot keep up."""

    def __init__(self, dist: Dist, steps: int, desc: str, show: bool, exits: Sequence[str] = ("",)) -> None:
        self.dist = dist
        self.steps = steps
        self.exits = tuple(exits)
        # loss * n, n, skipped, then hits per exit
        self.sums = torch.zeros(3 + len(self.exits), dtype=torch.float64, device=dist.device)
        # The first step whose loss was not finite (-1: none), kept on the device: no sync per step.
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=dist.device)
        self.step = 0
        self.data_wait = 0.0
        self.bar = tqdm(total=steps, desc=desc, unit="step", leave=False, disable=None if show and dist.is_main else True)
        self.start = time.perf_counter()

    def wrap(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        batches = iter(batches)
        for step in range(self.steps):
            waiting = time.perf_counter()
            try:
                batch = next(batches)
                self.data_wait += time.perf_counter() - waiting
            except StopIteration:
                raise RuntimeError(f"the training loader ended after {step} of {self.steps} steps; "
                                   "it must be endless (resampled)") from None
            self.sums[2] += report_skipped(batch)
            self.step = step
            yield batch
            if not self.bar.disable and (step % 10 == 0 or step == self.steps - 1):
                loss, n, _, *hits = self.sums.tolist()
                rate = n * self.dist.world_size / (time.perf_counter() - self.start)
                self.bar.set_postfix(loss=f"{loss / n:.4f}", acc="/".join(f"{h / n:.0%}" for h in hits),
                                     samples_s=f"{rate:.1f}")
            self.bar.update()
        self.bar.close()

    def update(self, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        """logits: (B, K), or (B, E, K) for E named exits."""
        n = labels.shape[0]
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, torch.tensor(self.step + 1, device=self.first_bad_step.device),
                                          self.first_bad_step)
        hits = (logits.detach().argmax(-1) == labels.view(n, *[1] * (logits.dim() - 2))).reshape(n, -1).sum(0)
        self.sums[0] += loss.detach().double() * n
        self.sums[1] += n
        self.sums[3:] += hits

    def result(self, epoch: int) -> dict[str, float]:
        """The epoch's averages over ranks; TrainingDiverged if a loss was not finite."""
        loss, n, skipped, *hits = distributed.all_reduce_sum(self.sums).tolist()
        if not math.isfinite(loss):   # summed over ranks: every rank stops together
            step = int(self.first_bad_step.item())
            where = f"step {step}" if step > 0 else "a step of another rank"
            raise TrainingDiverged(f"epoch {epoch + 1}, {where} of {self.steps}: the training loss is not finite; "
                                   "stopped before this epoch's checkpoints, so last.pt and best.pt are from the "
                                   "epochs before (lower optim.lr?)")
        seconds = time.perf_counter() - self.start
        top1 = {f"train_{name}_top1" if name else "train_top1": h / n for name, h in zip(self.exits, hits, strict=True)}
        return {"train_loss": loss / n, **top1, "train_videos": int(n), "train_skipped": int(skipped),
                "seconds": seconds, "samples_per_s": n / seconds, "data_wait_s": self.data_wait,
                "compute_s": seconds - self.data_wait}


class Task(Protocol):
    """What `train` trains. The loop is the same for every task; a task says which module
    learns, how a batch gives a loss, how validation scores the model, and which weights
    each validation score selects (`BackboneTask` below; the internal classifiers'
    task in trainer.train.ic)."""

    model: nn.Module  # everything a checkpoint holds; validation runs it
    model_args: dict[str, Any]  # what rebuilds `model` (saved in every checkpoint)
    exits: tuple[str, ...]  # names of the outputs `loss` scores ("" for a single one)
    best: dict[str, Any]  # model selection so far (saved in last.pt, restored on resume)

    def trainable(self) -> nn.Module:
        """The part that learns: the optimiser's parameters, and what DDP wraps."""
        ...

    def param_groups(self) -> list[dict]:
        """Optimiser groups, each with an `lr_mult` (trainer.train.optim)."""
        ...

    def init_weights(self) -> None:
        """Weights for a fresh run (not called when resuming)."""
        ...

    def train_mode(self) -> None:
        """Training mode for what learns; frozen parts stay in eval mode."""
        ...

    def epoch_info(self, epoch: int) -> dict[str, Any]:
        """Anything the epoch's record should say about how it trains (a teacher)."""
        ...

    def loss(self, train_model: nn.Module, batch: Batch, epoch: int) -> tuple[Tensor, Tensor]:
        """(loss, logits (B, K) or (B, len(exits), K)) of one training batch."""
        ...

    def validate(self, data: DataModule) -> dict[str, Any]:
        """Validation metrics over the whole split (all ranks)."""
        ...

    def select(self, val: dict[str, Any] | None, epoch: int) -> tuple[list[str], dict[str, Any]]:
        """Updates `best` from this epoch's validation (None: not validated): the
        state-dict prefixes whose weights improved ("" = the whole model) and the record
        fields that say so."""
        ...


def train_one_epoch(
    task: Task,
    train_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    meter: EpochMeter,
    epoch: int,
) -> dict[str, float]:
    task.train_mode()
    for batch in meter.wrap(batches):
        loss, logits = task.loss(train_model, batch, epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        meter.update(loss, logits, batch["label"].to(meter.dist.device))
    return meter.result(epoch)


class BackboneTask:
    """The network cfg.model names (a CoViAR modality network, or TEAM-Net with its three
    streams) trained end to end on labels (CoViAR's recipe), selected on validation top-1
    as a whole."""

    exits = ("",)

    def __init__(self, cfg: Config, dist: Dist, num_classes: int) -> None:
        self.cfg, self.dist = cfg, dist
        self.model_args = network_args(cfg, num_classes)
        self.model = build_network(self.model_args)
        self.cuda = dist.device.type == "cuda"
        if self.cuda and cfg.run.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.model.to(dist.device)
        self.amp = cfg.run.amp and self.cuda
        self.best: dict[str, Any] = {"epoch": -1, "top1": -1.0}

    def trainable(self) -> nn.Module:
        return self.model

    def param_groups(self) -> list[dict]:
        o = self.cfg.optim
        return self.model.param_groups(weight_decay=o.weight_decay, lr_mult_stem=o.lr_mult_stem,
                                       lr_mult_body=o.lr_mult_body, lr_mult_fc=o.lr_mult_fc, decay_norm=o.decay_norm)

    def init_weights(self) -> None:
        m = self.cfg.model
        pretrained = self.cfg.team.pretrained if m.backbone == TEAMNET else m.pretrained
        if not pretrained:
            return
        streams = self.model.streams.items() if m.backbone == TEAMNET else [(m.modality, self.model)]
        for modality, net in streams:
            path = pretrained.replace("{modality}", modality)
            report = load_pretrained(net, path, conv1_init=m.conv1_init)
            if self.dist.is_main:
                tqdm.write(f"pretrained {path}: {report.summary()}")

    def train_mode(self) -> None:
        self.model.train()

    def epoch_info(self, epoch: int) -> dict[str, Any]:
        return {}

    def loss(self, train_model: nn.Module, batch: Batch, epoch: int) -> tuple[Tensor, Tensor]:
        x = self.model.read(batch, self.dist.device)  # (B, S, C, H, W), or TEAM-Net's three
        y = batch["label"].to(self.dist.device, non_blocking=True)  # (B,)
        with torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = train_model(x)  # (B, K), averaged over segments
        return F.cross_entropy(logits.float(), y), logits

    def validate(self, data: DataModule) -> dict[str, Any]:
        val = evaluate_model(self.model, data.eval_batches("val"), data.num_classes, dist=self.dist,
                             expected=data.split_size("val"), amp=self.amp, desc="val", show=self.cfg.run.progress)
        return {k: v for k, v in val.summary.items() if k != "expected_videos"}

    def select(self, val: dict[str, Any] | None, epoch: int) -> tuple[list[str], dict[str, Any]]:
        if val is None:
            return [], {"best_val_top1": self.best["top1"]}
        improved = val["top1"] > self.best["top1"]
        if improved:
            self.best = {"epoch": epoch, "top1": val["top1"]}
        return [""] if improved else [], {"is_best": improved, "best_val_top1": self.best["top1"]}


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _write_metrics(path: Path, history: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in history))
    tmp.replace(path)


def fit(cfg: Config, dist: Dist | None = None, data: DataModule | None = None) -> list[dict]:
    """Trains `cfg.model.modality`'s network; returns the per-epoch metrics.

    Args:
        cfg: the resolved config.
        dist: this process's place in the world (default: from torchrun's environment).
        data: the data module (default: the one `cfg.data.source` names).
    """
    dist = dist or distributed.setup(cfg.run.device)
    seed_everything(cfg.run.seed)
    data = data or open_data(cfg, rank=dist.rank, world_size=dist.world_size, device=dist.device,
                             modalities=input_modalities(cfg))
    return train(cfg, BackboneTask(cfg, dist, data.num_classes), data, dist)


def train(cfg: Config, task: Task, data: DataModule, dist: Dist) -> list[dict]:
    """The training loop: runs `task` for cfg.optim.epochs epochs (resuming from
    cfg.run_dir/last.pt when it exists); returns the per-epoch metrics. Seed the run
    before building the task, so its initial weights are the seed's."""
    for split in ("train", "val"):  # training and model selection
        require_split(data, split, cfg)
    run_dir = cfg.run_dir
    model = task.model
    # Adam as trainer.train.optim builds it; its weight_decay is CoViAR's L2 term, per group.
    optimizer = torch.optim.Adam(task.param_groups(), lr=cfg.optim.lr, eps=cfg.optim.eps)
    start, history, best_state = resume(cfg, run_dir, task, optimizer, dist)
    if start == 0:  # a resumed run has its weights already
        task.init_weights()
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # The saved config names its own directory ("{modality}" resolved).
        resolved = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=str(run_dir)))
        save_config(resolved, run_dir / "config.toml")
        _write_metrics(run_dir / METRICS, history)

    cuda = dist.device.type == "cuda"
    train_model: nn.Module = task.trainable()
    if dist.world_size > 1:
        train_model = DistributedDataParallel(train_model, device_ids=[dist.device] if cuda else None)
    if cfg.run.compile:
        train_model = torch.compile(train_model)
    epochs = cfg.optim.epochs
    began = time.perf_counter()

    for epoch in range(start, epochs):
        # 1. learning rate
        lr = lr_at(epoch, cfg.optim)
        set_lr(optimizer, lr)
        # 2. one epoch of training
        meter = EpochMeter(dist, data.steps_per_epoch, f"epoch {epoch + 1}/{epochs}", cfg.run.progress, task.exits)
        record = {"epoch": epoch + 1, "lr": lr, **task.epoch_info(epoch),
                  **train_one_epoch(task, train_model, optimizer, data.train_batches(epoch), meter, epoch)}
        distributed.broadcast_buffers(model)
        # 3. validation (model selection), on the bare network
        val = None
        if (epoch + 1) % cfg.run.eval_every == 0 or epoch + 1 == epochs:
            val = task.validate(data)
            record.update({f"val_{k}": v for k, v in val.items()})
        improved, selection = task.select(val, epoch + 1)
        record.update(selection)
        history.append(record)
        # 4. checkpoints (RNG states come from every rank; files only from rank 0)
        rng = distributed.gather_to_main(checkpoint.rng_state())
        if dist.is_main:
            model_state = model.state_dict()
            state = {"epoch": epoch + 1, "model": model_state, "optimizer": optimizer.state_dict(),
                     "best": task.best, "history": history, "rng": rng, "model_args": task.model_args,
                     "class_names": list(data.class_names), "config": dataclasses.asdict(cfg)}
            checkpoint.save(state, run_dir / "last.pt")
            if improved:
                # The first best is the whole model (frozen parts included); then each
                # improved unit's weights replace its old best ones.
                chosen = "" if best_state is None else tuple(improved)
                best_state = {**(best_state or {}),
                              **{k: v.detach().clone() for k, v in model_state.items() if k.startswith(chosen)}}
                checkpoint.save({"epoch": epoch + 1, "model": best_state, "best": task.best,
                                 **{k: state[k] for k in ("model_args", "class_names", "config")}},
                                run_dir / "best.pt")
            if cfg.run.save_every and (epoch + 1) % cfg.run.save_every == 0:
                checkpoint.save(state, run_dir / f"epoch_{epoch + 1:04d}.pt")
        # 5. log
        if dist.is_main:
            with open(run_dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
            # A line per epoch even without progress bars: a log shows the run advancing.
            tqdm.write(_epoch_line(record, epochs, task.exits))

    if dist.is_main:
        tqdm.write(f"{network_name(cfg)}: {epochs - start} epochs in {time.perf_counter() - began:.1f} s; "
                   f"best {_best_line(task.best)}; checkpoints in {run_dir}")
    return history


def _best_line(best: dict[str, Any]) -> str:
    if "top1" in best:
        return f"validation top-1 {best['top1']:.2%} at epoch {best['epoch']}"
    return "validation top-1 " + ", ".join(f"{name} {b['top1']:.2%} (epoch {b['epoch']})" for name, b in best.items())


def _epoch_line(record: dict, epochs: int, exits: Sequence[str]) -> str:
    def top1(prefix: str) -> str:
        return "/".join(f"{record[f'{prefix}_{e}_top1' if e else f'{prefix}_top1']:.2%}" for e in exits)

    info = "".join(f" {k} {record[k]}" for k in ("teacher",) if record.get(k))
    line = (f"epoch {record['epoch']}/{epochs} lr {record['lr']:.2e}{info} | train loss {record['train_loss']:.4f} "
            f"top-1 {top1('train')} {record['samples_per_s']:.1f} samples/s, "
            f"waiting for data {record['data_wait_s']:.1f} s of {record['seconds']:.1f}")
    if "val_loss" in record:
        line += (f" | val loss {record['val_loss']:.4f} top-1 {record['val_top1']:.2%} "
                 f"top-5 {record['val_top5']:.2%} class {record['val_mean_class_acc']:.2%}")
        line += " *" if record["is_best"] else ""
    elif any(k.startswith("val_") for k in record):
        line += f" | val top-1 {top1('val')}"
        line += f" * {','.join(record['improved'])}" if record.get("improved") else ""
    return line
