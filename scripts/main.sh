#!/usr/bin/env bash
# The main job, end to end on the embedded synthetic dataset: set up; generate and encode
# the dataset; look at what the extractor sees; shard it with a local Ray; train the
# three CoViAR networks and evaluate them and their fusion; then the paper's pipeline
# (internal classifiers with CE and PKD, WISE, early exit, report).
# Outputs: data/ (videos, manifests, shards) and runs/main/ (pictures, runs, report).
# Safe to run again: finished steps are kept.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export RAY_AUTH_MODE=disabled
out=runs/main
mkdir -p "$out"

echo "== 1. the synthetic action dataset (cvpipe synth --list-classes describes the classes)"
[ -f data/synth/all.jsonl ] || cvpipe synth --out data/synth

echo "== 2. what the extractor sees in one video of each class"
videos=$(python - <<'PY'
from cvpipe.manifest import read_manifest
first = {}
for e in read_manifest("data/synth/test.jsonl"):
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

echo "== 3. WebDataset shards of I-frames, accumulated MV and residuals (embedded Ray)"
cvpipe shard --manifest data/synth/all.jsonl --out data/shards --no-progress
cvpipe verify data/shards

echo "== 4. the three networks (CoViAR recipe, tiny config), evaluated with their fusion"
for modality in mv residual iframe; do
  cvtrain fit --config tiny_synth --set data.root=data/shards --set model.modality=$modality \
      --set "run.dir=$out/backbones/{modality}" --set run.progress=false
done
cvtrain eval "$out/backbones" | tee "$out/backbones.txt"

echo "== 5. internal classifiers (CE, PKD), WISE, early exit and cost: the paper's pipeline"
bash scripts/paper_pipeline.sh data/shards "$out/backbones"
echo "main job done: $out/"
