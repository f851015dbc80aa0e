#!/usr/bin/env bash
# Sets up everything the tests need (scripts/setup.sh with the test extras) and runs them:
# the pytest suite against the checkout (installed editable), then the fuzz corpus under
# AddressSanitizer + UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh test
.venv/bin/python -m pytest "$@"
if [ -f scripts/sanitizer-check.sh ]; then
  PYTHON=.venv/bin/python bash scripts/sanitizer-check.sh
fi
