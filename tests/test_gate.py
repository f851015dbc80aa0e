"""`cvtrain gate`: the check that final exits lead their ICs, on the figures IC runs record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.analysis.gate import GATE, check_gate
from trainer.cli import main as cvtrain


def write_runs(method_dir: Path, top1: dict[str, dict[str, float]]) -> None:
    """IC runs' config.toml and metrics.jsonl as `cvtrain ic` writes them: per epoch
    val_{exit}_top1 and the best so far per IC (the epoch best.pt keeps), as fractions."""
    for modality, exits in top1.items():
        run = method_dir / modality
        run.mkdir(parents=True)
        records = []
        for epoch, scale in ((1, 0.5), (2, 1.0), (3, 0.9)):  # the best ICs are epoch 2's
            record = {"epoch": epoch, "val_fc_top1": exits["fc"] / 100}
            record |= {f"val_{n}_top1": exits[n] * scale / 100 for n in ("ic1", "ic2", "ic3")}
            record |= {f"best_val_{n}_top1": exits[n] * min(scale, 1.0) / 100 for n in ("ic1", "ic2", "ic3")}
            records.append(record)
        records[-1] |= {f"best_val_{n}_top1": exits[n] / 100 for n in ("ic1", "ic2", "ic3")}
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (run / "config.toml").write_text(f'[model]\nmodality = "{modality}"\n[optim]\nlr = 0.001\nepochs = 3\n'
                                         f'batch_size = 8\n[run]\ndir = "{run}"\n[ic]\nmethod = "ce"\n')


HELD = {"ic1": 60.0, "ic2": 70.0, "ic3": 74.0, "fc": 80.0}  # fc - IC3 = 6, fc - IC1 = 20


@pytest.mark.parametrize("change, held", [
    ({}, True),
    ({"ic3": 76.0}, False),          # fc leads IC3 by 4 < 5
    ({"ic3": 75.0}, True),           # by exactly 5
    ({"ic1": 45.0}, False),          # trails by 35 > 30: early exits too weak
    ({"ic1": 68.0}, False),          # trails by only 12
])
def test_thresholds(tmp_path, change, held):
    exits = HELD | change
    write_runs(tmp_path / "ce", {"residual": HELD, "mv": exits, "iframe": HELD})
    result = check_gate(tmp_path / "ce")
    assert result["held"] is held
    mv = next(n for n in result["networks"] if n["modality"] == "mv")
    assert mv["top1"] == pytest.approx(exits) and mv["held"] is held
    assert json.loads((tmp_path / "ce" / GATE).read_text()) == result


def test_the_command_line_exits_1_when_the_gate_fails(tmp_path, capsys):
    write_runs(tmp_path / "ok", {m: HELD for m in ("residual", "mv", "iframe")})
    assert cvtrain(["gate", str(tmp_path / "ok")]) == 0
    assert "the gate held" in capsys.readouterr().out
    assert cvtrain(["gate", str(tmp_path / "ok"), "--margin", "7"]) == 1
    assert "did NOT hold" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cvtrain(["gate", str(tmp_path / "ok"), "--ic1-gap", "30,15"])
    assert e.value.code == 2
    write_runs(tmp_path / "partial", {"mv": HELD})
    with pytest.raises(SystemExit) as e:
        cvtrain(["gate", str(tmp_path / "partial")])
    assert e.value.code == 2 and "no IC run of residual, iframe" in capsys.readouterr().err
