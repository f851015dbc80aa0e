"""`cvtrain gate METHOD_DIR`: is this the regime the paper describes, before comparing methods?

Distilling into internal classifiers (ICs) can only help where the network's final exit
knows more than its early exits do. So before the seeds of the CE/PKD comparison are
read, one CE-trained set of ICs per network is checked on the validation split:
- the final exit (fc) beats IC3 by at least `margin` points: deep layers add something;
- IC1 trails the final exit by `ic1_gap` points (low to high): early exits are weak but
  not useless.
The figures are each IC's best validation top-1 (the epoch its checkpoint keeps) and the
frozen fc's. Writes METHOD_DIR/gate.json; the report says whether the gate held.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.analysis.evaluate import find_runs
from trainer.analysis.wise import ORDER, SHORT
from trainer.models.exits import IC_EXITS
from trainer.train.loop import METRICS

GATE = "gate.json"
MARGIN = 5.0           # points of top-1 the final exit must lead IC3 by
IC1_GAP = (15.0, 30.0)  # points IC1 must trail the final exit by


@dataclass(frozen=True)
class NetworkGate:
    modality: str
    top1: dict[str, float]   # exit -> validation top-1 in %: ic1, ic2, ic3, fc
    fc_over_ic3: float
    fc_over_ic1: float
    held: bool


def _validation_top1(run: Path) -> dict[str, float]:
    records = [json.loads(line) for line in (run / METRICS).read_text().splitlines() if line.strip()]
    last = records[-1]
    validated = [r for r in records if "val_fc_top1" in r]
    if not validated or any(f"best_val_{n}_top1" not in last for n in IC_EXITS):
        raise ValueError(f"{run}/{METRICS}: no validation of the ICs recorded (is it an IC run with val data?)")
    top1 = {n: 100 * last[f"best_val_{n}_top1"] for n in IC_EXITS}
    top1["fc"] = 100 * validated[-1]["val_fc_top1"]  # the frozen backbone's: the same every epoch
    return top1


def check_gate(method_dir: str | Path, margin: float = MARGIN, ic1_gap: tuple[float, float] = IC1_GAP
               ) -> dict[str, Any]:
    """Checks the gate on METHOD_DIR's three IC runs and writes METHOD_DIR/gate.json."""
    method_dir = Path(method_dir)
    runs = find_runs(method_dir)
    missing = [m for m in ORDER if m not in runs]
    if missing:
        raise FileNotFoundError(f"{method_dir}: no IC run of {', '.join(missing)}; the gate checks all three networks")
    networks = []
    for m in ORDER:
        top1 = _validation_top1(runs[m])
        over3, over1 = top1["fc"] - top1["ic3"], top1["fc"] - top1["ic1"]
        networks.append(NetworkGate(m, top1, over3, over1, over3 >= margin and ic1_gap[0] <= over1 <= ic1_gap[1]))
    result = {"method_dir": str(method_dir), "split": "val", "margin": margin, "ic1_gap": list(ic1_gap),
              "held": all(n.held for n in networks), "networks": [asdict(n) for n in networks]}
    (method_dir / GATE).write_text(json.dumps(result, indent=1) + "\n")
    return result


def format_gate(result: dict[str, Any]) -> str:
    lo, hi = result["ic1_gap"]
    lines = [f"gate on {result['split']} top-1 (%): fc - IC3 >= {result['margin']:g} and "
             f"{lo:g} <= fc - IC1 <= {hi:g}, for every network",
             f"  {'network':8} {'IC1':>6} {'IC2':>6} {'IC3':>6} {'fc':>6} {'fc-IC3':>7} {'fc-IC1':>7}  held"]
    for n in result["networks"]:
        t = n["top1"]
        lines.append(f"  {SHORT[n['modality']]:8} {t['ic1']:6.1f} {t['ic2']:6.1f} {t['ic3']:6.1f} {t['fc']:6.1f} "
                     f"{n['fc_over_ic3']:+7.1f} {n['fc_over_ic1']:+7.1f}  {'yes' if n['held'] else 'NO'}")
    lines.append(f"the gate {'held' if result['held'] else 'did NOT hold'}")
    return "\n".join(lines)
