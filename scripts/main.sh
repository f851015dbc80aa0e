#!/usr/bin/env bash
# The main job, end to end on the embedded synthetic dataset: set up; generate and encode
# the dataset; look at what the extractor sees; shard it with a local Ray; train the
# three CoViAR networks and TEAM-Net, and evaluate them and the CoViAR fusion; then the
# paper's pipeline for both backbones (internal classifiers with CE and PKD, WISE, early
# exit, flatness, report).
#
#   bash scripts/main.sh           10 classes x 80 videos of 24 frames (30 train, 20 val and
#                                  30 test per class: 300 test videos), 5 IC seeds; writes
#                                  data/ and runs/main/
#   bash scripts/main.sh --quick   every step, the same code, on a slice: 4 classes x 12
#                                  videos, 2 epochs per network, 3 IC epochs, one IC seed;
#                                  writes data/quick/ and runs/quick/ (CI runs this)
#
# Safe to run again: finished steps are kept.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  "") quick=0 ;;
  --quick) quick=1 ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
if [ "$quick" = 1 ]; then
  data=data/quick
  out=runs/quick
  synth_options=(--classes 4 --videos-per-class 12 --frames 24)
  fit_options=(--set optim.epochs=2 --set "optim.lr_steps=[1]")
  export SEEDS=0 IC_SETS="optim.epochs=3 optim.lr_steps=[2] ic.teacher_epochs=[1,2]"
else
  data=data
  out=runs/main
  # At least 300 test videos, so differences of a few points have intervals that can tell;
  # 200 validation videos, so the gate and each IC's selected epoch rest on more than a few.
  synth_options=(--classes 10 --videos-per-class 80 --frames 24 --val-fraction 0.25 --test-fraction 0.375)
  fit_options=()
fi

bash scripts/setup.sh train   # the trainer's extra: torch and webdataset
export PATH="$PWD/.venv/bin:$PATH"
export RAY_AUTH_MODE=disabled
mkdir -p "$out"
began=$SECONDS
step() {
  echo "== $*   [$((SECONDS - began)) s]"
}

step "1. the synthetic action dataset (cvpipe synth --list-classes describes the classes)"
[ -f "$data/synth/all.jsonl" ] || cvpipe synth --out "$data/synth" "${synth_options[@]}"

step "2. what the extractor sees in one video of each class"
videos=$(python - "$data/synth/test.jsonl" <<'PY'
import sys
from cvpipe.datasets.manifest import read_manifest
first = {}
for e in read_manifest(sys.argv[1]):
    first.setdefault(e.label, e.path)
print(" ".join(first[k] for k in sorted(first)))
PY
)
cvpipe info $videos > "$out/info.txt"
head -4 "$out/info.txt"
for v in $videos; do
  cvpipe show "$v" --frame 17 --out "$out/show-$(basename "$v" .m4v).png" > /dev/null
done
echo "pictures: $out/show-*.png"

step "3. WebDataset shards of I-frames, accumulated MV and residuals (embedded Ray)"
cvpipe shard --manifest "$data/synth/all.jsonl" --out "$data/shards" --no-progress
cvpipe verify "$data/shards"

step "4. the three networks (CoViAR recipe, tiny config), evaluated with their fusion"
for modality in mv residual iframe; do
  echo "-- $modality network"
  cvtrain fit --config tiny_synth --set "data.root=$data/shards" --set model.modality=$modality \
      --set "run.dir=$out/backbones/{modality}" --set run.progress=false "${fit_options[@]}"
done
echo "-- TEAM-Net: the three networks as its streams, fused by TEAM modules, fine-tuned together"
cvtrain fit --config tiny_synth_teamnet --set "data.root=$data/shards" \
    --set "team.pretrained=$out/backbones/{modality}/best.pt" --set "run.dir=$out/backbones/teamnet" \
    --set run.progress=false "${fit_options[@]}"
echo "-- validation: does it show real data's order, I-frame > residual > MV?"
cvtrain eval "$out/backbones" --split val --set run.progress=false | tee "$out/backbones_val.txt"
echo "-- test"
cvtrain eval "$out/backbones" --set run.progress=false | tee "$out/backbones.txt"
if [ "$quick" = 0 ]; then
  echo "-- two more training seeds of each network (their flatness is measured over seeds)"
  # The two seeds side by side, one thread each: on 2 cores faster than one after the other.
  pids=()
  for seed in 1 2; do
    for modality in mv residual iframe; do
      OMP_NUM_THREADS=1 cvtrain fit --config tiny_synth --set "data.root=$data/shards" --set model.modality=$modality \
          --set run.seed=$seed --set "run.dir=$out/backbones/seeds/seed$seed/{modality}" --set run.progress=false \
          | tail -n 1
    done &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done  # a failed fit fails the job
fi

step "5. TEAM-Net's shared internal classifiers (CE, PKD), their logits and WISE"
# Three IC seeds, not five: each TEAM-Net IC run costs about the three CoViAR ones together,
# and the main job keeps to 30 minutes.
NETWORKS=teamnet CONFIG=tiny_synth_teamnet OUT="$out/backbones/paper_teamnet" SEEDS="${SEEDS:-0 1 2}" \
    bash scripts/paper_pipeline.sh "$data/shards" "$out/backbones"

step "6. internal classifiers (CE, PKD), WISE, early exit and cost: the paper's pipeline, TEAM-Net beside"
TEAMNET="$out/backbones/paper_teamnet" bash scripts/paper_pipeline.sh "$data/shards" "$out/backbones"
step "main job done: $out/"
