#!/usr/bin/env bash
# Sets up a checkout of cvpipe from nothing: the system packages, an isolated virtual
# environment in .venv, and cvpipe installed into it in editable mode with the extras given
# as the first argument (e.g. "test").
#
# Editable, so that the checkout is a working place: every process that runs the venv's
# Python (Ray workers, subprocesses, `python -c`, a REPL), from any directory, the checkout's
# root included, imports these sources with their compiled extension (built in
# build/<wheel tag>/, ignored by git). Run it again after changing native/ to rebuild
# (incremental). Safe to run again: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-system-packages.sh

# A venv that sees the interpreter's site-packages also sees any editable install made
# there (another checkout's import hook), so an older --system-site-packages .venv is
# replaced.
if [ -f .venv/pyvenv.cfg ] && grep -qi '^include-system-site-packages *= *true' .venv/pyvenv.cfg; then
  echo "setup: replacing .venv, which saw the system's site-packages"
  rm -rf .venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)

# The build runs in the venv (no build isolation), so that a rebuild reuses the CMake tree:
# the build requirements of pyproject.toml, with the CMake and Ninja that scikit-build-core
# would otherwise fetch into a throwaway environment.
mapfile -t build_requires < <(.venv/bin/python -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
print("\n".join(project["build-system"]["requires"]))
print("cmake" + project["tool"]["scikit-build"]["cmake"]["version"])
print("ninja")')
"${pip[@]}" "${build_requires[@]}"
# The trainer's torch: the CPU build pinned here unless the environment already has one
# (a GPU machine brings its own CUDA build); an unpinned install would fetch several GB.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" "torch==2.13.0"
fi
"${pip[@]}" --no-build-isolation --editable ".${1:+[$1]}"

# From the root, where the source tree is first on sys.path: the one place a broken setup shows.
.venv/bin/python -c 'import cvpipe, cvpipe.video; print(f"setup: cvpipe {cvpipe.__version__} in .venv, editable: {cvpipe.__file__}, extension {cvpipe.video._native.__file__}")'
