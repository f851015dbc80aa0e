#!/usr/bin/env bash
# The paper's contribution on trained backbones: internal classifiers trained with
# cross-entropy and with PKD for the three networks, for several seeds; the 12 exits'
# logits and measured cost; WISE, its ablations and the early-exit trade-off; the report.
#
#   scripts/paper_pipeline.sh SHARDS RUNS
#
# SHARDS: the shard folder (manifest.json); RUNS: the backbone runs, RUNS/{iframe,mv,residual}/best.pt
# (`cvtrain fit --config tiny_synth --set run.dir=RUNS/{modality}`). Writes RUNS/paper/seed{N}/{ce,pkd}/...
# and RUNS/paper/report/, and prints the report's main table. Environment:
#   SEEDS="0 1 2"     IC-training seeds
#   CONFIG=tiny_synth IC configs CONFIG_ic_ce and CONFIG_ic_pkd (bundled name or path prefix)
#   ABLATIONS=1       also PKD's anti-curriculum order and a single I-frame teacher
#   IC_SETS="K=V ..." config overrides for every IC run (e.g. "optim.epochs=3 optim.lr_steps=[2]")
#   OMP_NUM_THREADS   torch's threads per process (default 1: one core computes while the data
#                     loader's worker decodes on the other; with more threads than free cores,
#                     their spin-waits made every step ~10x slower on 2 cores, measured)
# Safe to run again: finished IC runs resume at their end; logits, WISE and report are redone.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ $# -ne 2 ]; then
  sed -n '2,18p' "$0" >&2
  exit 2
fi
shards=$1
runs=$2
out=$runs/paper
seeds=${SEEDS:-0 1 2}
config=${CONFIG:-tiny_synth}
for m in iframe mv residual; do
  [ -f "$runs/$m/best.pt" ] || { echo "paper_pipeline: $runs/$m/best.pt is missing: train the backbones first" >&2; exit 2; }
done
[ -f "$shards/manifest.json" ] || { echo "paper_pipeline: no $shards/manifest.json" >&2; exit 2; }

# method folder name | config | extra options
methods=("ce|${config}_ic_ce|" "pkd|${config}_ic_pkd|")
if [ "${ABLATIONS:-0}" = 1 ]; then
  methods+=("pkd_anti|${config}_ic_pkd|--teachers self,residual,mv" "pkd_iframe|${config}_ic_pkd|--teachers iframe --teacher-epochs=")
fi

ic_sets=()
for kv in ${IC_SETS:-}; do
  ic_sets+=(--set "$kv")
done

began=$(date +%s)
dirs=()
for seed in $seeds; do
  for spec in "${methods[@]}"; do
    IFS='|' read -r name cfg extra <<<"$spec"
    dir=$out/seed$seed/$name
    dirs+=("$dir")
    for m in residual mv iframe; do
      echo "== seed $seed, $name: $m internal classifiers"
      # shellcheck disable=SC2086  # $extra is a list of options
      cvtrain ic --config "$cfg" $extra --set model.modality=$m --set run.seed="$seed" \
        --set "run.dir=$dir/{modality}" --set "data.root=$shards" --set "ic.backbones=$runs/{modality}/best.pt" \
        --set run.progress=false "${ic_sets[@]}"
    done
  done
done
trained=$(date +%s)
echo "== logits of the 12 exits (runs on one backbone share passes)"
cvtrain logits "${dirs[@]}"
echo "== WISE, early exit, cost"
cvtrain wise "${dirs[@]}" > "$out/wise.txt"
echo "written $out/wise.txt"
echo "== report"
cvtrain report "$out"
echo "paper pipeline: $(( $(date +%s) - began )) s (IC training $(( trained - began )) s); report in $out/report/"
