"""Continuing a run from its last checkpoint: only under the config it was written with
(but for what does not change its results), with the model, optimiser, best-so-far and
every rank's random state restored, so it repeats an uninterrupted run exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm import tqdm

from trainer.config import Config
from trainer.train import checkpoint
from trainer.train.distributed import Dist

if TYPE_CHECKING:
    from trainer.train.loop import Task


# Keys a resumed run may change without changing what it computes (how long it runs, how
# it shows progress, how many loader processes it uses, where it runs).
RESUMABLE_CHANGES = {"optim.epochs", "run.dir", "run.resume", "run.force_resume", "run.progress", "run.save_every",
                     "run.device", "run.compile", "data.workers"}


def config_changes(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """'key: old -> new' for every value of `current` that differs from `saved` (nested
    dicts by dotted key), but for RESUMABLE_CHANGES."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_changes(old, new, f"{dotted}.")
        elif old != new and dotted not in RESUMABLE_CHANGES:
            changes.append(f"{dotted}: {old!r} -> {new!r}")
    return changes


def resume(cfg: Config, run_dir: Path, task: Task, optimizer: torch.optim.Optimizer,
           dist: Dist) -> tuple[int, list[dict], dict[str, Tensor] | None]:
    """(first epoch to run, metrics history, the best weights so far): from last.pt and
    best.pt, or a fresh start."""
    last = run_dir / "last.pt"
    if not last.exists():
        return 0, [], None
    if not cfg.run.resume:
        raise FileExistsError(f"{run_dir} already holds a run (last.pt); set run.resume=true to continue it "
                              "or choose another run.dir")
    state = checkpoint.load(last)
    changed = config_changes(state.get("config", {}), dataclasses.asdict(cfg))
    if changed and not cfg.run.force_resume:
        raise FileExistsError(f"{last} was written under another config: {'; '.join(changed)}. Resume it anyway with "
                              "--set run.force_resume=true (the new values apply from here on), or choose another "
                              "run.dir")
    if changed and dist.is_main:
        tqdm.write(f"warning: resuming {run_dir} under a changed config: {'; '.join(changed)}")
    task.model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    task.best = state["best"]
    best_file = run_dir / "best.pt"
    best_state = checkpoint.load(best_file)["model"] if best_file.exists() else None
    if len(state["rng"]) == dist.world_size:
        checkpoint.set_rng_state(state["rng"][dist.rank])
    elif dist.is_main:
        tqdm.write(f"warning: {last} was written by {len(state['rng'])} ranks, this run has {dist.world_size}: "
                   "random states are not restored, so the run will not repeat an uninterrupted one exactly")
    if dist.is_main:
        tqdm.write(f"resuming {run_dir} after epoch {state['epoch']}")
    return state["epoch"], state["history"], best_state
