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
.venv/bin/python -m pip install -q --disable-pip-version-check ".${extras:+[$extras]}"
echo "setup: cvpipe installed in .venv ($(.venv/bin/python -c 'import cvpipe; print(cvpipe.__version__)'))"
