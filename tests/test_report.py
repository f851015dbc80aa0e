"""WISE and the report over seeds, from small fake runs (logits written here), and the
whole paper pipeline on real shards: backbones, ICs (CE and PKD), logits, WISE, report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.analysis.logits import load_logits
from trainer.analysis.results import find_methods
from trainer.analysis.wise import EXIT_NAMES, ORDER
from trainer.cli import main as cvtrain
from trainer.config import load_config
from trainer.data.contract import INPUT_CHANNELS, MODALITIES
from trainer.models.networks import ModalityNet, count_macs
from trainer.models.teamnet import TeamNet

CLASSES, VIDEOS = 4, {"train": 40, "val": 16, "test": 24}
COSTS = {m: {"input_size": 32, "stages": [10, 20, 20, 20, 30], "heads": [5, 3, 2], "eval_segments": 3}
         for m in MODALITIES}


def run_config(method: str, modality: str, run_dir: Path) -> str:
    ic = '[ic]\nmethod = "pkd"\nteachers = ["mv", "residual", "self"]\nteacher_epochs = [1, 2]'
    ic = ic if method != "ce" else ""
    return f"""[model]
modality = "{modality}"
[optim]
lr = 0.001
epochs = 3
batch_size = 8
[run]
dir = "{run_dir}"
{ic}
[wise]
iterations = 100
taus = [0.0, 0.6, 0.9, 1.0]
[wise.segments]
iframe = [1, 3]
mv = [1, 3]
residual = [1, 3]
"""


def fake_method(method_dir: Path, strength: float, seed: int) -> dict[str, np.ndarray]:
    """IC runs' configs and the logits `cvtrain logits` would write: exit j of every
    network carries the label with a strength growing along the exits. Returns the test
    logits at 3 segments, (N, 12, K) in exit order, and the test labels."""
    rng = np.random.default_rng(seed)
    labels = {split: np.arange(n) % CLASSES for split, n in VIDEOS.items()}
    test = {}
    for modality in MODALITIES:
        (method_dir / modality).mkdir(parents=True)
        (method_dir / modality / "config.toml").write_text(run_config(method_dir.name, modality, method_dir / modality))
        for split, y in labels.items():
            for segments in ([3] if split == "train" else [1, 3]):
                bump = strength * (np.arange(1, 5) / 4)[None, :, None] * np.eye(CLASSES)[y][:, None, :]
                logits = (bump + rng.normal(0, 1, (len(y), 4, CLASSES))).astype(np.float32)
                path = method_dir / "logits" / modality / f"{split}_s{segments}.npz"
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(path, ids=np.array([f"v{i:03d}" for i in range(len(y))]), labels=y, logits=logits)
                if split == "test" and segments == 3:
                    test[modality] = logits
    (method_dir / "logits" / "costs.json").write_text(json.dumps(COSTS))
    return {"z": np.concatenate([test[m] for m in ORDER], 1), "labels": labels["test"]}


@pytest.fixture(scope="module")
def fake_runs(tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("fake") / "paper"
    truth = {}
    for seed in (0, 1, 2):
        for method, strength in (("ce", 1.0), ("pkd", 1.5)):
            truth[seed, method] = fake_method(run / f"seed{seed}" / method, strength, seed=10 * seed + len(method))
    return run, truth


def test_report_from_fake_runs(fake_runs, capsys):
    run, truth = fake_runs
    dirs = sorted(str(p) for p in run.glob("seed*/*"))
    assert cvtrain(["wise", *dirs]) == 0
    assert "fusion 2:1:1" in capsys.readouterr().out
    assert cvtrain(["report", str(run)]) == 0
    printed = capsys.readouterr().out
    report = (run / "report" / "report.md").read_text()
    # The main table's single-exit cells are mean ± std over the seeds of each exit's
    # top-1 alone, recomputed here from the fake logits.
    for method in ("ce", "pkd"):
        acc = np.array([(truth[s, method]["z"].argmax(-1) == truth[s, method]["labels"][:, None]).mean(0)
                        for s in range(3)])
        mean, std = acc.mean(0) * 100, acc.std(0, ddof=1) * 100
        for k in (0, 7, 11):
            cell = f"{mean[k]:.1f} ± {std[k]:.1f}"
            row = next(line for line in printed.splitlines() if line.startswith(f"| {EXIT_NAMES[k]:>4} |"))
            assert row.split("|")[2 if method == "ce" else 3].strip() == cell, (method, k, row)
    assert printed.strip().splitlines()[0] in report
    assert "seed0, seed1, seed2" in report
    # PKD - CE pooled over the 9 ICs: the mean over seeds, videos and ICs of right minus wrong.
    ics = [k for k, name in enumerate(EXIT_NAMES) if not name.endswith("4")]
    right = {m: np.array([truth[s, m]["z"].argmax(-1) == truth[s, m]["labels"][:, None] for s in range(3)])
             for m in ("ce", "pkd")}
    pooled = (right["pkd"][..., ics].astype(float) - right["ce"][..., ics]).mean() * 100
    assert re.search(rf"\| +pkd - ce, the 9 ICs pooled \| +{re.escape(f'{pooled:+.1f}')} \[[-+]\d+\.\d, [-+]\d+\.\d\] \|", report)
    assert "PKD, T = 1: mv (from epoch 0) -> residual (from epoch 1) -> self (from epoch 2)" in report
    for name in ("ic_accuracy.png", "wise.png", "tradeoff.png"):
        png = (run / "report" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, name


def test_wise_results_agree_with_their_inputs(fake_runs):
    run, truth = fake_runs
    (method,) = [m for m in find_methods(run) if m.name == "pkd"]
    results = method.seeds["seed0"]
    z, y = truth[0, "pkd"]["z"], truth[0, "pkd"]["labels"]
    assert results["accuracy"]["test"]["no_lateral"] == pytest.approx((z.argmax(-1) == y[:, None]).mean(0).tolist())
    assert results["accuracy"]["test"]["no_scaling"][11] == pytest.approx((z.mean(1).argmax(-1) == y).mean())
    weights = np.array(results["weights"])
    s = np.einsum("kj,njc->nkc", weights, z.astype(np.float64))
    assert results["accuracy"]["test"]["wise"] == pytest.approx((s.argmax(-1) == y[:, None]).mean(0).tolist())
    # Early exit at tau = 1 is WISE's last exit at the full cost; four segment combinations
    # (R/MV/I each 1 or 3) for 3 variants and 4 taus.
    never = [p for p in results["sweep"]["test"] if p["variant"] == "wise" and p["tau"] == 1.0
             and p["segments"] == {"residual": 3, "mv": 3, "iframe": 3}]
    assert never[0]["accuracy"] == results["accuracy"]["test"]["wise"][11]
    assert never[0]["macs"] == 3 * 3 * (100 + 10)
    assert len(results["sweep"]["test"]) == 8 * 3 * 4 and len(results["fusion"]["test"]) == 8
    fused = 2 * z[:, 11] + z[:, 7] + z[:, 3]
    (point,) = [f for f in results["fusion"]["test"] if f["segments"]["iframe"] == 3 and f["segments"]["mv"] == 3
                and f["segments"]["residual"] == 3]
    assert point["accuracy"] == pytest.approx((fused.argmax(-1) == y).mean()) and point["macs"] == 3 * 3 * 100


def test_wise_refuses_runs_that_disagree(fake_runs, tmp_path, capsys):
    run, _ = fake_runs
    with pytest.raises(SystemExit) as e:
        cvtrain(["report", str(tmp_path)])
    assert e.value.code == 2 and "no METHOD/wise/results.json" in capsys.readouterr().err
    method = run / "seed0" / "ce"
    config = method / "mv" / "config.toml"
    original = config.read_text()
    config.write_text(original.replace("iterations = 100", "iterations = 7"))
    try:
        with pytest.raises(SystemExit):
            cvtrain(["wise", str(method)])
        assert "disagree on wise.iterations" in capsys.readouterr().err
    finally:
        config.write_text(original)


# ------------------------------------------------------------------- the whole pipeline


@pytest.fixture(scope="module")
def shards(ray_cluster, shard_dataset, tmp_path_factory) -> Path:
    from cvpipe.shards.job import ShardOptions, run_job

    out = tmp_path_factory.mktemp("paper") / "shards"
    assert run_job(shard_dataset.manifest, out, ShardOptions(), shard_size=2, progress=False).ok
    return out


def test_paper_pipeline_on_real_shards(shards, tmp_path, capsys):
    """fit -> ic (CE and PKD) -> logits -> wise -> report through the command line, on
    the conftest's real clips; the fc exit's logits equal `cvtrain eval`'s of the backbone."""
    small = ["--set", f"data.root={shards}", "--set", "data.input_size=32", "--set", "data.workers=0",
             "--set", "model.width=8", "--set", "optim.batch_size=2", "--set", "run.progress=false"]
    for m in MODALITIES:
        assert cvtrain(["fit", "--config", "tiny_synth", "--set", "optim.epochs=1", "--set", f"model.modality={m}",
                        "--set", f"run.dir={tmp_path}/backbones/{{modality}}", *small]) == 0
    method_dirs = []
    for method, epochs in (("ce", 1), ("pkd", 3)):
        method_dirs.append(tmp_path / "paper" / "seed0" / method)
        for m in MODALITIES:
            assert cvtrain(["ic", "--config", f"tiny_synth_ic_{method}", "--set", f"model.modality={m}",
                            "--set", f"optim.epochs={epochs}", "--set", "optim.lr_steps=[]",
                            "--set", f"ic.backbones={tmp_path}/backbones/{{modality}}/best.pt",
                            "--set", f"run.dir={method_dirs[-1]}/{{modality}}", *small]
                           + (["--set", "ic.teacher_epochs=[1,2]"] if method == "pkd" else [])) == 0
    history = [json.loads(x) for x in (method_dirs[1] / "iframe" / "metrics.jsonl").read_text().splitlines()]
    assert [r["teacher"] for r in history] == ["mv", "residual", "iframe"]
    # The gate reads the CE runs' own validation records.
    assert cvtrain(["gate", str(method_dirs[0])]) in (0, 1)
    gate = json.loads((method_dirs[0] / "gate.json").read_text())
    for network in gate["networks"]:
        last = json.loads((method_dirs[0] / network["modality"] / "metrics.jsonl").read_text().splitlines()[-1])
        assert network["top1"]["ic1"] == pytest.approx(100 * last["best_val_ic1_top1"])
        assert network["top1"]["fc"] == pytest.approx(100 * last["val_fc_top1"])
    assert cvtrain(["logits", *map(str, method_dirs)]) == 0
    assert cvtrain(["eval", str(tmp_path / "backbones"), "--split", "test"]) == 0
    for m in MODALITIES:
        dumped = load_logits(method_dirs[0], m, "test", 3)
        with np.load(tmp_path / "backbones" / "eval" / "test" / f"{m}.npz") as backbone:
            assert np.array_equal(dumped["ids"], backbone["ids"])
            assert np.allclose(dumped["logits"][:, 3], backbone["logits"], atol=1e-5)
        assert load_logits(method_dirs[0], m, "train", 3)["ids"].tolist() == ["gop10", "pan_a", "pan_b", "pan_c"]
        counts = load_config(method_dirs[0] / m / "config.toml").wise.segments
        assert sorted(p.name for p in (method_dirs[0] / "logits" / m).glob("val_*")) == sorted(
            f"val_s{s}.npz" for s in {3, *getattr(counts, m)})
    costs = json.loads((method_dirs[0] / "logits" / "costs.json").read_text())
    assert sum(costs["mv"]["stages"]) == ModalityNet("mv", "resnet18", 2, width=8).count_macs(32)
    assert cvtrain(["wise", *map(str, method_dirs)]) == 0
    team_dirs = teamnet_pipeline(tmp_path, small)
    flat = ["--batches", "1", "--probes", "2", "--directions", "1"]
    assert cvtrain(["flatness", *(str(tmp_path / "backbones" / m) for m in MODALITIES), *flat]) == 0
    assert cvtrain(["flatness", *(str(d / m) for d in method_dirs for m in MODALITIES), *flat]) == 0
    assert cvtrain(["report", str(tmp_path / "paper"), "--teamnet", str(team_dirs[0].parent.parent)]) == 0
    printed = re.sub(" +", " ", capsys.readouterr().out)
    assert "| exit | ce alone | pkd alone | pkd no scaling | pkd WISE | MMACs |" in printed
    assert (tmp_path / "paper" / "report" / "tradeoff.png").is_file()
    report = (tmp_path / "paper" / "report" / "report.md").read_text()
    assert f"Checked by `cvtrain gate {method_dirs[0]}`" in report and "## Differences with intervals" in report
    assert f"- Shards: `{shards}` (schema 4); 2 classes" in report and "pkd - ce, the 9 ICs pooled" in report
    # Flatness: a row per backbone and per (network, IC, method), the two orderings said in words.
    flatness = report.partition("## Flatness")[2].partition("## ")[0]
    assert re.search(r"Backbones by trace per parameter: the paper's order, .* (shows|does NOT show)", flatness)
    assert re.search(r"ICs: PKD's are flatter than CE's .* on \d of 9 ICs", flatness)
    rows = [line for line in flatness.splitlines() if line.startswith("|") and "---" not in line][1:]
    assert len(rows) == 3 + 2 * 9 and all(row.count("|") == 8 for row in rows)
    assert (tmp_path / "paper" / "report" / "flatness.png").is_file()
    # TEAM-Net's section: its 3 shared ICs compared, its four exits in its main table.
    team = report.partition("## TEAM-Net")[2].partition("## ")[0]
    assert "pkd - ce, the 3 ICs pooled" in team and "T4 alone" in team
    assert [line.split("|")[1].strip() for line in team.splitlines() if re.match(r"\|\s+T\d \|", line)] == [
        "T1", "T2", "T3", "T4"]


def teamnet_pipeline(tmp_path: Path, small: list[str]) -> list[Path]:
    """TEAM-Net from the three trained networks, its shared ICs by CE and PKD, their logits
    and WISE; its output exit's logits equal `cvtrain eval`'s of the TEAM-Net run."""
    team = tmp_path / "backbones" / "teamnet"
    assert cvtrain(["fit", "--config", "tiny_synth_teamnet", "--set", "optim.epochs=1", "--set", "optim.lr_steps=[]",
                    "--set", f"team.pretrained={tmp_path}/backbones/{{modality}}/best.pt",
                    "--set", f"run.dir={team}", *small]) == 0
    dirs = [tmp_path / "teamnet" / "seed0" / method for method in ("ce", "pkd")]
    for method, folder in zip(("ce", "pkd"), dirs, strict=True):
        assert cvtrain(["ic", "--config", "tiny_synth_teamnet_ic", "--method", method, "--set", "optim.epochs=3",
                        "--set", "optim.lr_steps=[]", "--set", f"ic.backbones={team}/best.pt",
                        "--set", f"run.dir={folder}/teamnet", *small]) == 0
    history = [json.loads(x) for x in (dirs[1] / "teamnet" / "metrics.jsonl").read_text().splitlines()]
    assert [r["teacher"] for r in history] == ["mv", "residual", "iframe"]
    assert cvtrain(["logits", *map(str, dirs)]) == 0
    assert cvtrain(["eval", str(team), "--split", "test"]) == 0
    dumped = load_logits(dirs[0], "teamnet", "test", 3)
    with np.load(team / "eval" / "test" / "teamnet.npz") as evaluated:
        assert np.array_equal(dumped["ids"], evaluated["ids"])
        assert np.allclose(dumped["logits"][:, 3], evaluated["logits"], atol=1e-5)
    costs = json.loads((dirs[0] / "logits" / "costs.json").read_text())["teamnet"]
    net = TeamNet({m: "resnet18" for m in MODALITIES}, 2, width=8)
    inputs = {m: torch.zeros(1, 1, INPUT_CHANNELS[m], 32, 32) for m in MODALITIES}
    assert sum(costs["stages"]) == count_macs(net, inputs) and costs["first_ic_after"] == 0
    assert cvtrain(["wise", *map(str, dirs)]) == 0
    results = json.loads((dirs[1] / "wise" / "results.json").read_text())
    assert results["exits"] == ["T1", "T2", "T3", "T4"] and results["fusion"]["test"] == []
    assert min(min(row) for row in results["weights"]) >= 0  # the TEAM-Net variant clips negative weights
    return dirs
