#!/usr/bin/env bash
# The paper's contribution on trained backbones: internal classifiers trained with
# cross-entropy and with PKD for the three networks, for several seeds; the gate (after the
# first seed's CE runs: do final exits lead their ICs?); the 12 exits' logits and measured
# cost; WISE, its ablations and the early-exit trade-off; the flatness of the backbones and
# the ICs; the report with paired intervals.
#
#   scripts/paper_pipeline.sh SHARDS RUNS
#
# SHARDS: the shard folder (manifest.json); RUNS: the backbone runs, RUNS/{iframe,mv,residual}/best.pt
# (`cvtrain fit --config tiny_synth --set run.dir=RUNS/{modality}`); backbones of more
# training seeds, RUNS/seeds/seed{N}/{iframe,mv,residual}, are measured for flatness too.
# Writes RUNS/paper/seed{N}/{ce,pkd}/... and RUNS/paper/report/, and prints the report's
# main table. Environment:
#   NETWORKS=teamnet  TEAM-Net's shared ICs instead (RUNS/teamnet/best.pt; IC config CONFIG_ic with
#                     --method ce / pkd); stops after WISE: the CoViAR report shows them (TEAMNET)
#   OUT=DIR           where the IC runs go (default RUNS/paper)
#   TEAMNET=DIR       a TEAM-Net run of this script's OUT: the report gets its section and curves
#   SEEDS="0 1 2 3 4" IC-training seeds
#   CONFIG=tiny_synth IC configs CONFIG_ic_ce and CONFIG_ic_pkd (bundled name or path prefix)
#   ABLATIONS=1       also PKD's anti-curriculum order and a single I-frame teacher
#   IC_SETS="K=V ..." config overrides for every IC run (e.g. "optim.epochs=3 optim.lr_steps=[2]")
#   PARALLEL=N        IC runs at once (default: the number of cores); each logs to its RUN/log.txt
#   FLATNESS="..."    cvtrain flatness options (default: --batches 2 --probes 10 --directions 2)
#   OMP_NUM_THREADS   torch's threads per process (default 1: with more threads than free cores,
#                     their spin-waits made every step ~10x slower on 2 cores, measured)
# Safe to run again: finished IC runs resume at their end; logits, WISE and report are redone.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ $# -ne 2 ]; then
  sed -n '2,27p' "$0" >&2
  exit 2
fi
shards=$1
runs=$2
out=${OUT:-$runs/paper}
seeds=${SEEDS:-0 1 2 3 4}
flatness_options=${FLATNESS:---batches 2 --probes 10 --directions 2}
config=${CONFIG:-tiny_synth}
networks=${NETWORKS:-residual mv iframe}
for m in $networks; do
  [ -f "$runs/$m/best.pt" ] || { echo "paper_pipeline: $runs/$m/best.pt is missing: train the backbones first" >&2; exit 2; }
done
[ -f "$shards/manifest.json" ] || { echo "paper_pipeline: no $shards/manifest.json" >&2; exit 2; }

# method folder name | config | extra options
if [ "$networks" = teamnet ]; then
  methods=("ce|${config}_ic|--method ce" "pkd|${config}_ic|--method pkd")
else
  methods=("ce|${config}_ic_ce|" "pkd|${config}_ic_pkd|")
fi
if [ "${ABLATIONS:-0}" = 1 ]; then
  methods+=("pkd_anti|${config}_ic_pkd|--teachers self,residual,mv" "pkd_iframe|${config}_ic_pkd|--teachers iframe --teacher-epochs=")
fi

ic_sets=()
for kv in ${IC_SETS:-}; do
  ic_sets+=(--set "$kv")
done

# IC runs are independent processes: up to $parallel at once, each with one compute thread.
# GNU nproc counts OMP_NUM_THREADS (set to 1 above), so ask it with that unset.
parallel=${PARALLEL:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
running=0
reap() {  # waits for one run; a failed run stops the pipeline (set -e)
  wait -n
  running=$((running - 1))
}
ic_run() {  # seed method-name config extra-options network method-dir
  local seed=$1 name=$2 cfg=$3 extra=$4 m=$5 dir=$6
  # A CoViAR network's teachers are the other networks ("{modality}"); TEAM-Net's are its own heads.
  local network=(--set model.modality="$m" --set "ic.backbones=$runs/{modality}/best.pt")
  [ "$m" = teamnet ] && network=(--set "ic.backbones=$runs/teamnet/best.pt")
  mkdir -p "$dir/$m"
  # shellcheck disable=SC2086  # $extra is a list of options
  if cvtrain ic --config "$cfg" $extra "${network[@]}" --set run.seed="$seed" --set "run.dir=$dir/$m" \
      --set "data.root=$shards" --set run.progress=false "${ic_sets[@]}" > "$dir/$m/log.txt" 2>&1; then
    echo "== seed $seed, $name: $(tail -n 1 "$dir/$m/log.txt")"
  else
    echo "== seed $seed, $name, $m FAILED; the end of $dir/$m/log.txt:" >&2
    tail -n 20 "$dir/$m/log.txt" >&2
    return 1
  fi
}

began=$(date +%s)
dirs=()
for seed in $seeds; do
  for spec in "${methods[@]}"; do
    IFS='|' read -r name cfg extra <<<"$spec"
    dir=$out/seed$seed/$name
    dirs+=("$dir")
    for m in $networks; do
      ic_run "$seed" "$name" "$cfg" "$extra" "$m" "$dir" &
      running=$((running + 1))
      if [ "$running" -ge "$parallel" ]; then reap; fi
    done
    if [ "$name" = ce ] && [ "$networks" != teamnet ] && [ ! -f "$out/gate.txt" ]; then
      while [ "$running" -gt 0 ]; do reap; done
      echo "== the gate, on $dir (validation), before the other runs are read"
      # The report says whether it held; the comparison runs either way, so a failed gate is seen, not hidden.
      cvtrain gate "$dir" | tee "$out/gate.txt.part" || true
      mv "$out/gate.txt.part" "$out/gate.txt"
    fi
  done
done
while [ "$running" -gt 0 ]; do reap; done
trained=$(date +%s)
echo "== logits of every exit (runs on one backbone share passes)"
cvtrain logits "${dirs[@]}"
echo "== WISE, early exit, cost"
cvtrain wise "${dirs[@]}" > "$out/wise.txt"
echo "written $out/wise.txt"
if [ "$networks" = teamnet ]; then
  echo "paper pipeline (TEAM-Net): $(( $(date +%s) - began )) s (IC training $(( trained - began )) s); WISE in $out/"
  exit 0
fi
echo "== flatness of the backbones and of every IC run, $flatness_options"
rm -f "$out"/flatness.*.txt
flatness_run() {  # name run-dirs...: one cvtrain flatness process, its table in $out/flatness.NAME.txt
  local name=$1
  shift
  # shellcheck disable=SC2086  # $flatness_options is a list of options
  cvtrain flatness "$@" $flatness_options --device cpu > "$out/flatness.$name.txt" 2>&1 ||
    { echo "== flatness of $name FAILED:" >&2; tail -n 20 "$out/flatness.$name.txt" >&2; return 1; }
}
flatness_run backbones "$runs/iframe" "$runs/residual" "$runs/mv" &
running=1
for extra in "$runs"/seeds/seed*; do
  [ -f "$extra/mv/best.pt" ] || continue
  flatness_run "backbones-$(basename "$extra")" "$extra/iframe" "$extra/residual" "$extra/mv" &
  running=$((running + 1))
  if [ "$running" -ge "$parallel" ]; then reap; fi
done
for dir in "${dirs[@]}"; do
  flatness_run "$(basename "$(dirname "$dir")")-$(basename "$dir")" "$dir/residual" "$dir/mv" "$dir/iframe" &
  running=$((running + 1))
  if [ "$running" -ge "$parallel" ]; then reap; fi
done
while [ "$running" -gt 0 ]; do reap; done
cat "$out"/flatness.*.txt > "$out/flatness.txt"
echo "written $out/flatness.txt"
echo "== report"
cvtrain report "$out" ${TEAMNET:+--teamnet "$TEAMNET"}
echo "paper pipeline: $(( $(date +%s) - began )) s (IC training $(( trained - began )) s); report in $out/report/"
