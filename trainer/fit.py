"""Backbone training: one modality network with CoViAR's recipe, on one CPU or many GPUs.

`fit(cfg)` is the whole of `cvtrain fit`. Each epoch runs the same steps in the same
order: set the learning rate, train one epoch, evaluate on the validation split (never
on test), checkpoint, log. The run directory (cfg.run.dir) ends up holding:

    config.toml     the resolved config
    metrics.jsonl   one line per epoch: epoch averages over all ranks
    last.pt         everything needed to resume (model, optimizer, RNG states per rank,
                    best-so-far, the metrics history)
    best.pt         the weights with the best validation top-1 so far
    epoch_NNNN.pt   every run.save_every epochs, a copy of last.pt

Under torchrun every rank trains the same number of steps on its own batches and DDP
averages the gradients; only rank 0 writes files. On CUDA the model runs in bf16
autocast and channels_last; torch.compile is an option.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from trainer import checkpoint, distributed
from trainer.batches import Batch, DataModule, open_data
from trainer.config import Config, save_config
from trainer.distributed import Dist
from trainer.evaluate import evaluate_model
from trainer.models import ModalityNet, load_pretrained
from trainer.optim import build_optimizer, lr_at, set_lr

METRICS = "metrics.jsonl"


class EpochMeter:
    """Running sums of one training epoch, kept on the device (no sync per step) and
    averaged over ranks at the end. `wrap` takes exactly `steps` batches from an endless
    loader and shows loss, accuracy and samples/s on rank 0's progress bar."""

    def __init__(self, dist: Dist, steps: int, desc: str, show: bool) -> None:
        self.dist = dist
        self.steps = steps
        self.sums = torch.zeros(4, dtype=torch.float64, device=dist.device)  # loss * n, hits, n, skipped
        self.bar = tqdm(total=steps, desc=desc, unit="step", leave=False, disable=not (show and dist.is_main))
        self.start = time.perf_counter()

    def wrap(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        batches = iter(batches)
        for step in range(self.steps):
            try:
                batch = next(batches)
            except StopIteration:
                raise RuntimeError(f"the training loader ended after {step} of {self.steps} steps; "
                                   "it must be endless (resampled)") from None
            self.sums[3] += batch.get("skipped", 0)
            yield batch
            if not self.bar.disable and (step % 10 == 0 or step == self.steps - 1):
                loss, hits, n, _ = self.sums.tolist()
                rate = n * self.dist.world_size / (time.perf_counter() - self.start)
                self.bar.set_postfix(loss=f"{loss / n:.4f}", acc=f"{hits / n:.1%}", samples_s=f"{rate:.1f}")
            self.bar.update()
        self.bar.close()

    def update(self, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        n = labels.shape[0]
        self.sums[0] += loss.detach().double() * n
        self.sums[1] += (logits.detach().argmax(-1) == labels).sum()
        self.sums[2] += n

    def result(self) -> dict[str, float]:
        loss, hits, n, skipped = distributed.all_reduce_sum(self.sums).tolist()
        seconds = time.perf_counter() - self.start
        return {"train_loss": loss / n, "train_top1": hits / n, "train_videos": int(n), "train_skipped": int(skipped),
                "seconds": seconds, "samples_per_s": n / seconds}


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    meter: EpochMeter,
    *,
    amp: bool,
) -> dict[str, float]:
    model.train()
    device = meter.dist.device
    for batch in meter.wrap(batches):
        x = batch["input"].to(device, non_blocking=True)  # (B, S, C, H, W)
        y = batch["label"].to(device, non_blocking=True)  # (B,)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)  # (B, K), averaged over segments
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        meter.update(loss, logits, y)
    return meter.result()


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _write_metrics(path: Path, history: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in history))
    tmp.replace(path)


def _resume(cfg: Config, run_dir: Path, model: ModalityNet, optimizer: torch.optim.Optimizer,
            dist: Dist) -> tuple[int, dict, list[dict]]:
    """(first epoch to run, best so far, metrics history): from last.pt, or a fresh start."""
    last = run_dir / "last.pt"
    if not last.exists():
        return 0, {"epoch": -1, "top1": -1.0}, []
    if not cfg.run.resume:
        raise FileExistsError(f"{run_dir} already holds a run (last.pt); set run.resume=true to continue it "
                              "or choose another run.dir")
    state = checkpoint.load(last)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if len(state["rng"]) == dist.world_size:
        checkpoint.set_rng_state(state["rng"][dist.rank])
    elif dist.is_main:
        tqdm.write(f"warning: {last} was written by {len(state['rng'])} ranks, this run has {dist.world_size}: "
                   "random states are not restored, so the run will not repeat an uninterrupted one exactly")
    if dist.is_main:
        tqdm.write(f"resuming {run_dir} after epoch {state['epoch']}")
    return state["epoch"], state["best"], state["history"]


def fit(cfg: Config, dist: Dist | None = None, data: DataModule | None = None) -> list[dict]:
    """Trains `cfg.model.modality`'s network; returns the per-epoch metrics.

    Args:
        cfg: the resolved config.
        dist: this process's place in the world (default: from torchrun's environment).
        data: the data module (default: the one `cfg.data.source` names).
    """
    dist = dist or distributed.setup(cfg.run.device)
    run_dir = cfg.run_dir
    _seed_everything(cfg.run.seed)
    data = data or open_data(cfg, rank=dist.rank, world_size=dist.world_size)
    model = ModalityNet(cfg.model.modality, cfg.model.arch, data.num_classes, cfg.model.width)
    cuda = dist.device.type == "cuda"
    if cuda and cfg.run.channels_last:
        model.to(memory_format=torch.channels_last)
    model.to(dist.device)
    optimizer = build_optimizer(model, cfg.optim)
    start, best, history = _resume(cfg, run_dir, model, optimizer, dist)
    if cfg.model.pretrained and start == 0:  # a resumed run has its weights already
        report = load_pretrained(model, cfg.model.pretrained, conv1_init=cfg.model.conv1_init)
        if dist.is_main:
            tqdm.write(f"pretrained {cfg.model.pretrained}: {report.summary()}")
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # The saved config names its own directory ("{modality}" resolved).
        resolved = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=str(run_dir)))
        save_config(resolved, run_dir / "config.toml")
        _write_metrics(run_dir / METRICS, history)

    train_model: torch.nn.Module = model
    if dist.world_size > 1:
        train_model = DistributedDataParallel(model, device_ids=[dist.device] if cuda else None)
    if cfg.run.compile:
        train_model = torch.compile(train_model)
    amp = cfg.run.amp and cuda
    epochs = cfg.optim.epochs
    model_args = {"modality": model.modality, "arch": cfg.model.arch, "num_classes": data.num_classes,
                  "width": cfg.model.width}
    began = time.perf_counter()

    for epoch in range(start, epochs):
        # 1. learning rate
        lr = lr_at(epoch, cfg.optim)
        set_lr(optimizer, lr)
        # 2. one epoch of training
        meter = EpochMeter(dist, data.steps_per_epoch, f"epoch {epoch + 1}/{epochs}", cfg.run.progress)
        record = {"epoch": epoch + 1, "lr": lr, **train_one_epoch(train_model, optimizer, data.train_batches(epoch),
                                                                  meter, amp=amp)}
        distributed.broadcast_buffers(model)
        # 3. validation (model selection), on the bare network
        if (epoch + 1) % cfg.run.eval_every == 0 or epoch + 1 == epochs:
            val = evaluate_model(model, data.eval_batches("val"), data.num_classes, dist=dist,
                                 expected=data.split_size("val"), amp=amp, desc="val", show=cfg.run.progress)
            record.update({f"val_{k}": v for k, v in val.summary.items() if k != "expected_videos"})
            record["is_best"] = val.summary["top1"] > best["top1"]
            if record["is_best"]:
                best = {"epoch": epoch + 1, "top1": val.summary["top1"]}
        record["best_val_top1"] = best["top1"]
        history.append(record)
        # 4. checkpoints (RNG states come from every rank; files only from rank 0)
        rng = distributed.gather_to_main(checkpoint.rng_state())
        if dist.is_main:
            state = {"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "best": best, "history": history, "rng": rng, "model_args": model_args,
                     "class_names": list(data.class_names), "config": dataclasses.asdict(cfg)}
            checkpoint.save(state, run_dir / "last.pt")
            if record.get("is_best"):
                checkpoint.save({k: state[k] for k in ("epoch", "model", "model_args", "class_names", "config")},
                                run_dir / "best.pt")
            if cfg.run.save_every and (epoch + 1) % cfg.run.save_every == 0:
                checkpoint.save(state, run_dir / f"epoch_{epoch + 1:04d}.pt")
        # 5. log
        if dist.is_main:
            with open(run_dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
            if cfg.run.progress:
                tqdm.write(_epoch_line(record, epochs))

    if dist.is_main:
        tqdm.write(f"{cfg.model.modality}: {epochs - start} epochs in {time.perf_counter() - began:.1f} s; "
                   f"best validation top-1 {best['top1']:.2%} at epoch {best['epoch']}; checkpoints in {run_dir}")
    return history


def _epoch_line(record: dict, epochs: int) -> str:
    line = (f"epoch {record['epoch']}/{epochs} lr {record['lr']:.2e} | train loss {record['train_loss']:.4f} "
            f"top-1 {record['train_top1']:.2%} {record['samples_per_s']:.1f} samples/s")
    if "val_top1" in record:
        line += (f" | val loss {record['val_loss']:.4f} top-1 {record['val_top1']:.2%} "
                 f"top-5 {record['val_top5']:.2%} class {record['val_mean_class_acc']:.2%}")
        line += " *" if record["is_best"] else ""
    return line
