"""`cvtrain logits`: the segment-averaged logits of all 12 exits, and their measured cost.

A method folder holds the IC runs of the three networks (`cvtrain ic` runs, one per
modality, e.g. RUN/seed0/pkd/{iframe,mv,residual}), or TEAM-Net's (RUN/seed0/pkd/teamnet,
its four exits). For each network this writes

    METHOD/logits/MODALITY/SPLIT_sS.npz   ids, labels (N,), logits (N, 4, K) of the exits
                                          IC1, IC2, IC3, fc, for S segments per video
    METHOD/logits/costs.json              per network: measured MACs of one segment
                                          through each backbone stage and each IC head

for the training split at data.eval_segments (what WISE fits on) and for the validation
and test splits at every count of wise.segments.MODALITY (and data.eval_segments), all
with test-time sampling (segment centres, centre crop). Several method folders given at
once share passes: IC runs on the same frozen backbone (the CE and PKD runs of every
seed) are scored together, one backbone forward for all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.analysis.evaluate import find_runs
from trainer.config import Config, load_config
from trainer.data.contract import MODALITIES, require_split
from trainer.data.sources import open_data
from trainer.models.build import NETWORKS, input_modalities
from trainer.models.exits import EXITS, ICNet
from trainer.models.teamnet import TeamICNet
from trainer.train.checkpoint import load_ic_run
from trainer.train.distributed import Dist
from trainer.train.validate import evaluate_exits

LOGITS = "logits"
COSTS = "costs.json"
TRAIN = "train"


def logits_file(method_dir: Path, modality: str, split: str, segments: int) -> Path:
    return Path(method_dir) / LOGITS / modality / f"{split}_s{segments}.npz"


def segment_counts(cfg: Config, network: str) -> dict[str, list[int]]:
    """Split -> segment counts to score: train at data.eval_segments (WISE fits there),
    val and test at every wise.segments count and data.eval_segments (TEAM-Net's streams
    share their segments: data.eval_segments only)."""
    extra = getattr(cfg.wise.segments, network) if network in MODALITIES else []
    counts = sorted({cfg.data.eval_segments, *extra})
    return {TRAIN: [cfg.data.eval_segments], "val": counts, "test": counts}


def _digest(model: ICNet | TeamICNet) -> str:
    """Identity of a frozen backbone: a hash of its weights and buffers."""
    h = hashlib.sha1()
    for name, tensor in sorted(model.net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def dump_logits(
    method_dirs: Sequence[str | Path],
    *,
    dist: Dist,
    which: str = "best",
    overrides: Sequence[str] = (),
    show: bool = True,
) -> dict[str, dict]:
    """Scores every exit of every IC run under `method_dirs` (see the module docstring).

    Args:
        method_dirs: folders of IC runs (one run per modality in each).
        dist: this process's place in the world.
        which: "best" (each IC at its best validation epoch) or "last".
        overrides: `--set` assignments applied to every run's saved config (data.root, ...).
        show: progress bars on rank 0.

    Returns:
        On rank 0, per method folder and modality, test top-1 of each exit at data.eval_segments.
    """
    dirs = [Path(d) for d in method_dirs]
    # Runs that share a frozen backbone and their data settings are scored in one pass.
    groups: dict[tuple, list[tuple[Path, str, Config, ICNet | TeamICNet]]] = {}
    for method_dir in dirs:
        for modality, run in find_runs(method_dir).items():
            cfg = load_config(run / "config.toml", overrides)
            model = load_ic_run(run, dist.device, which)
            key = (modality, _digest(model), json.dumps(dataclasses.asdict(cfg.data), sort_keys=True),
                   json.dumps(segment_counts(cfg, modality)))
            groups.setdefault(key, []).append((method_dir, modality, cfg, model))
    summary: dict[str, dict] = {str(d): {} for d in dirs}
    costs: dict[Path, dict] = {d: {} for d in dirs}
    for (modality, *_), members in groups.items():
        cfg, model = members[0][2], members[0][3]
        measured = model.exit_costs(cfg.data.input_size)
        for method_dir, *_ in members:
            costs[method_dir][modality] = {"input_size": cfg.data.input_size, "stages": list(measured.stages),
                                           "heads": list(measured.heads), "first_ic_after": measured.first_ic_after,
                                           "eval_segments": cfg.data.eval_segments}
        for split, counts in segment_counts(cfg, modality).items():
            for segments in counts:
                scfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval_segments=segments))
                data = open_data(scfg, rank=dist.rank, world_size=dist.world_size, device=dist.device,
                                 modalities=input_modalities(cfg))
                require_split(data, split, cfg)
                if data.num_classes != model.net.num_classes:
                    raise ValueError(f"{members[0][0]}: the {modality} network has {model.net.num_classes} "
                                     f"classes, the data at {cfg.data.root} have {data.num_classes}")
                evaluations = evaluate_exits(
                    model.net, [m.ics for *_, m in members], data.eval_batches(split), data.num_classes,
                    dist=dist, expected=data.split_size(split), amp=cfg.run.amp and dist.device.type == "cuda",
                    gather=True, desc=f"{modality} {split} x{segments} ({len(members)} runs)", show=show)
                if not dist.is_main:
                    continue
                for (method_dir, *_), ev in zip(members, evaluations, strict=True):
                    path = logits_file(method_dir, modality, split, segments)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(path, ids=ev.ids, labels=ev.labels, logits=ev.logits, exits=np.array(EXITS),
                             class_names=np.array(list(data.class_names), dtype=str))
                    if split == "test" and segments == cfg.data.eval_segments:
                        summary[str(method_dir)][modality] = {e: s["top1"] for e, s in ev.summaries.items()}
    if dist.is_main:
        for method_dir, per_modality in costs.items():
            ordered = {m: per_modality[m] for m in NETWORKS if m in per_modality}
            (method_dir / LOGITS / COSTS).write_text(json.dumps(ordered, indent=2) + "\n")
    return summary if dist.is_main else {}


def load_logits(method_dir: str | Path, modality: str, split: str, segments: int) -> dict[str, np.ndarray]:
    path = logits_file(Path(method_dir), modality, split, segments)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `cvtrain logits {method_dir}` "
                                f"(with {segments} segments for {modality} in wise.segments)")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def format_summary(summary: dict[str, dict]) -> str:
    rows = [(f"{method_dir} {modality}", top1) for method_dir, per_modality in summary.items()
            for modality, top1 in per_modality.items()]
    width = max([len("test top-1"), *(len(name) for name, _ in rows)])
    lines = [f"{'test top-1':{width}} " + " ".join(f"{e:>7}" for e in EXITS)]
    lines += [f"{name:{width}} " + " ".join(f"{top1[e]:7.2%}" for e in EXITS) for name, top1 in rows]
    return "\n".join(lines)

