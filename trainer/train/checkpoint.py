"""Checkpoints: written atomically, read back with `torch.load(weights_only=True)`; and
the trained networks a run's checkpoint holds (`load_backbone`, `load_ic_run`).

A checkpoint is one dict of tensors, numbers, strings, lists and dicts: no pickled
objects (no argparse.Namespace, no numpy RNG state), so the safe loader reads it. Random
number generator states are stored as tensors, one set per rank, so a resumed run draws
exactly what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.models.build import build_ic_network, build_network
from trainer.models.exits import ICNet, freeze
from trainer.models.networks import ModalityNet
from trainer.models.teamnet import TeamICNet, TeamNet

FORMAT = 1


def save(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Writes `state` to `path` through a temporary file and a rename, so a crash never
    leaves a truncated checkpoint under the final name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str | os.PathLike) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a cvtrain checkpoint of format {FORMAT}")
    return state


def rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states (torch CPU and CUDA, Python, numpy's legacy global) as tensors."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor([version, *mt], dtype=torch.int64),
        "python_gauss": torch.tensor([] if gauss is None else [gauss], dtype=torch.float64),
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_extra": torch.tensor([pos, has_gauss, cached], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    version, *mt = state["python"].tolist()
    gauss = state["python_gauss"].tolist()
    random.setstate((version, tuple(mt), gauss[0] if gauss else None))
    pos, has_gauss, cached = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def load_network(path: str | Path) -> tuple[ModalityNet | TeamNet, dict[str, Any]]:
    """The trained network of a `cvtrain fit` checkpoint and the arguments it was built with."""
    state = load(path)
    if "model_args" not in state:
        raise ValueError(f"{path}: not a checkpoint of `cvtrain fit` (no model_args)")
    net = build_network(state["model_args"])
    net.load_state_dict(state["model"])
    return net, state["model_args"]


def load_backbone(path: str | Path, device: torch.device | str = "cpu") -> ModalityNet | TeamNet:
    """A trained network from a `cvtrain fit` checkpoint (best.pt), frozen."""
    return freeze(load_network(path)[0].to(device))


def load_ic_run(run_dir: str | Path, device: torch.device | str = "cpu", which: str = "best") -> ICNet | TeamICNet:
    """The network and ICs of a `cvtrain ic` run, from its best.pt (each IC at its best
    validation epoch) or last.pt."""
    state = load(Path(run_dir) / f"{which}.pt")
    model = build_ic_network(state["model_args"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()
