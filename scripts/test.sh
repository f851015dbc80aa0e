#!/usr/bin/env bash
# Sets up everything the tests need (scripts/setup.sh with the test extras) and runs them:
# the pytest suite against the installed package, then the fuzz corpus under
# AddressSanitizer + UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh test
# -P keeps the source tree off sys.path, so the tests import the installed package, whose
# compiled extension the source tree lacks.
.venv/bin/python -P -m pytest "$@"
if [ -f scripts/sanitizer-check.sh ]; then
  PYTHON=.venv/bin/python bash scripts/sanitizer-check.sh
fi
