"""What a set of runs was trained on and how, as report lines.

The data: read from the shard folder's manifest.json (classes, videos and frames per split) and,
when the source manifest sits beside a `cvpipe synth` synth.json, from that (frame size,
frames per video, the cue probabilities and how many videos of each split show each
modality's cue). The training: read from the IC runs' config.toml and their backbones'.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from trainer.analysis.wise import SHORT
from trainer.config import load_config

SPLITS = ("train", "val", "test")
NETWORK = {"residual": "Residual", "mv": "MV", "iframe": "I-frame"}


def shard_root(method_dir: Path) -> Path:
    """The shard folder the IC runs of a method folder read (their data.root)."""
    configs = sorted(method_dir.glob("*/config.toml"))
    if not configs:
        raise FileNotFoundError(f"{method_dir}: no IC run config.toml to find the data from")
    return Path(load_config(configs[0]).data.root)


def _synth_description(manifest: dict) -> dict:
    """The `cvpipe synth` synth.json beside the shards' source manifest, or {} for other data."""
    path = Path(manifest["source"]["manifest"]).parent / "synth.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def describe_dataset(root: Path) -> list[str]:
    """Markdown lines: the dataset's classes, splits and, for synthetic data, how it was drawn."""
    manifest_path = root / "manifest.json"
    if not str(root) or not manifest_path.is_file():
        return [f"No shard manifest at `{root}`, so the data cannot be described here."]
    manifest = json.loads(manifest_path.read_text())
    splits = manifest["splits"]
    classes = manifest["classes"]
    counts = ", ".join(f"{s} {splits[s]['samples']}" for s in SPLITS if s in splits)
    frames = sum(splits[s]["frames"] for s in splits) / max(sum(splits[s]["samples"] for s in splits), 1)
    lines = [f"- Shards: `{root}` (schema {manifest['schema_version']}); {len(classes)} classes; videos per split: "
             f"{counts}; {frames:.0f} frames per video on average."]
    synth = _synth_description(manifest)
    if synth:
        c = synth["config"]
        lines.append(f"- Drawn by `cvpipe synth` (seed {c['seed']}): {c['width']}x{c['height']} pixels, {c['frames']} "
                     f"frames at {synth['fps']} fps, GOP {c['gop']}, MPEG-4 Part 2 at q {c['quality']}.")
        lines.append(f"- Each video shows its class's cue for each modality with probability I-frame "
                     f"{c['iframe_cue']:.2f}, residual {c['residual_cue']:.2f}, MV {c['mv_cue']:.2f} (drawn "
                     "independently; otherwise a neutral cue shared by all classes).")
        shown = synth.get("cues", {})
        ids = {s: [i for m in manifest["shards"] if m.get("split") == s for i in m["ids"]] for s in SPLITS}
        test = [shown[i] for i in ids.get("test", []) if i in shown]
        if test:
            share = {m: 100 * sum(v[m] for v in test) / len(test) for m in ("iframe", "residual", "mv")}
            lines.append(f"- Test videos showing each cue: I-frame {share['iframe']:.1f}%, residual "
                         f"{share['residual']:.1f}%, MV {share['mv']:.1f}% of {len(test)}.")
    names = ", ".join(f"{k['label']} {k['name']}" for k in classes)
    lines.append(f"- Classes: {names}.")
    return lines


def describe_training(method_dirs: Sequence[Path]) -> list[str]:
    """Markdown lines: what was trained and for how long, the backbones (those of the first
    method folder's IC runs) and each method's IC recipe."""
    lines = []
    for run in sorted(method_dirs[0].glob("*/config.toml")):
        ic = load_config(run)
        backbone_cfg = Path(ic.ic.backbones.replace("{modality}", ic.model.modality)).parent / "config.toml"
        if ic.ic.backbones and backbone_cfg.is_file():
            b = load_config(backbone_cfg)
            lines.append(f"- {NETWORK[b.model.modality]} backbone: {b.model.arch} width {b.model.width}, "
                         f"{b.data.input_size} px input, {b.data.num_segments} segments, {b.optim.epochs} epochs "
                         f"(lr {b.optim.lr:g}, x{b.optim.lr_decay:g} at {b.optim.lr_steps}), batch {b.optim.batch_size}, "
                         f"{_training_seconds([backbone_cfg.parent / 'metrics.jsonl']):.0f} s.")
    for method_dir in method_dirs:
        configs = {c.model.modality: c for c in map(load_config, sorted(method_dir.glob("*/config.toml")))}
        o = next(iter(configs.values())).optim
        rates = ", ".join(f"{SHORT[k]} {c.optim.lr:g}" for k, c in configs.items())
        lines.append(f"- ICs by `{method_dir.name}`: {o.epochs} epochs, x{o.lr_decay:g} at {o.lr_steps}, Adam lr {rates}, "
                     f"eps {o.eps:g}, weight decay {o.weight_decay:g}, batch {o.batch_size}; backbones frozen "
                     f"in eval mode; {_training_seconds(method_dir.glob('*/metrics.jsonl')):.0f} s of training for the three networks.")
    return lines


def _training_seconds(metrics: Iterable[Path]) -> float:
    """Seconds of training epochs recorded in metrics.jsonl files."""
    return sum(json.loads(line).get("seconds", 0.0) for path in metrics if path.is_file()
               for line in path.read_text().splitlines() if line.strip())


def backbone_folder(method_dir: Path) -> Path | None:
    """The folder of the frozen backbones (one run per modality) a method's IC runs read."""
    configs = sorted(method_dir.glob("*/config.toml"))
    if not configs or not load_config(configs[0]).ic.backbones:
        return None
    cfg = load_config(configs[0])
    return Path(cfg.ic.backbones.replace("{modality}", cfg.model.modality)).parent.parent


def describe_backbones(method_dir: Path) -> list[str]:
    """Markdown lines: the frozen backbones' validation and test top-1 (from `cvtrain eval` of
    their folder), whether validation shows real data's order I-frame > residual > MV, and,
    on synthetic data, each network's test top-1 on the videos that show its cue and on those
    that do not."""
    folder = backbone_folder(method_dir)
    if folder is None:
        return []
    cfg = load_config(sorted(method_dir.glob("*/config.toml"))[0])
    found = {split: folder / "eval" / split / "metrics.json" for split in ("val", "test")}
    if not all(p.is_file() for p in found.values()):
        return [f"No `cvtrain eval {folder} --split val/test` results to describe the backbones with."]
    metrics = {split: json.loads(p.read_text()) for split, p in found.items()}
    rows = ", ".join(f"{NETWORK[m]} {100 * metrics['val'][m]['top1']:.1f} / {100 * metrics['test'][m]['top1']:.1f}"
                     for m in ("iframe", "residual", "mv"))
    val = {m: metrics["val"][m]["top1"] for m in ("iframe", "residual", "mv")}
    order = val["iframe"] > val["residual"] > val["mv"]
    team = (f"; TEAM-Net {100 * metrics['val']['teamnet']['top1']:.1f} / {100 * metrics['test']['teamnet']['top1']:.1f}"
            if all("teamnet" in m for m in metrics.values()) else "")
    lines = [f"- Backbones' top-1 (%), validation / test: {rows}; CoViAR's fusion "
             f"{100 * metrics['val']['fused']['top1']:.1f} / {100 * metrics['test']['fused']['top1']:.1f}{team}. "
             f"Validation {'shows' if order else 'does NOT show'} real data's order I-frame > residual > MV."]
    manifest = json.loads((Path(cfg.data.root) / "manifest.json").read_text()) if cfg.data.root else {}
    synth = _synth_description(manifest) if manifest else {}
    if synth:
        shown = synth.get("cues", {})
        parts = []
        for m in ("iframe", "residual", "mv"):
            with np.load(folder / "eval" / "test" / f"{m}.npz") as ev:
                right = ev["logits"].argmax(-1) == ev["labels"]
                cue = np.array([shown.get(str(i), {}).get(m, False) for i in ev["ids"]])
            if cue.any() and (~cue).any():
                parts.append(f"{NETWORK[m]} {100 * right[cue].mean():.1f} with its cue ({cue.sum()} videos), "
                             f"{100 * right[~cue].mean():.1f} without ({(~cue).sum()})")
        if parts:
            lines.append("- Test top-1 (%) by whether a video shows the network's own cue: " + "; ".join(parts)
                         + f" (chance {100 / len(manifest['classes']):.0f}).")
    return lines
