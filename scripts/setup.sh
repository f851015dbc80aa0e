#!/usr/bin/env bash
# Sets up a machine for cvpipe from nothing: the system packages, a virtual environment in
# .venv (it sees the interpreter's installed packages, so nothing present is fetched twice)
# and cvpipe built and installed into it, with the extras given as the first argument
# (e.g. "test"). Safe to run again: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-system-packages.sh
[ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv
extras="${1:-}"
# The trainer's torch: the CPU build pinned here unless the environment already has one
# (a GPU machine brings its own CUDA build); an unpinned install would fetch several GB.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi
.venv/bin/python -m pip install -q --disable-pip-version-check ".${extras:+[$extras]}"
echo "setup: cvpipe installed in .venv ($(.venv/bin/python -c 'import cvpipe; print(cvpipe.__version__)'))"
