#!/usr/bin/env bash
# The main job, end to end on the embedded synthetic dataset: set up, generate and encode
# the dataset, then look at what the extractor sees. Outputs: data/synth/ (videos,
# manifests) and runs/main/ (pictures). Safe to run again: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p runs/main

echo "== 1. the synthetic action dataset (cvpipe synth --list-classes describes the classes)"
if [ ! -f data/synth/all.jsonl ]; then
  cvpipe synth --out data/synth
fi

echo "== 2. what the extractor sees in one video of each class"
videos=$(python - <<'PY'
from cvpipe.manifest import read_manifest
first = {}
for e in read_manifest("data/synth/test.jsonl"):
    first.setdefault(e.label, e.path)
print(" ".join(first[k] for k in sorted(first)))
PY
)
cvpipe info $videos | tee runs/main/info.txt
for v in $videos; do
  cvpipe show "$v" --frame 17 --out "runs/main/show-$(basename "$v" .m4v).png"
done
echo "main job done: runs/main/"
