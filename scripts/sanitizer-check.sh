#!/usr/bin/env bash
# Builds cvpipe._native with AddressSanitizer + UBSan into build/sanitize/ (the normal
# install is left alone), then extracts the fuzz corpus and its clean clips under it
# (scripts/fuzz_extract.py) and fails on any sanitizer report, crash or hang.
#
#   scripts/sanitizer-check.sh [MUTANTS]     (default 240; .ci/run calls it)
#
# The sanitized package is installed with `pip install --target`, and Python runs with -S
# so that the editable install's import hook (a .pth file) cannot redirect `cvpipe` to
# the normal build; site-packages is put on PYTHONPATH by hand for numpy and tqdm.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work="$root/build/sanitize"
mutants=${1:-240}
python=${PYTHON:-python3}
started=$SECONDS

echo "== building the sanitized extension in $work"
rm -rf "$work/wheel" "$work/site" "$work/corpus" "$work/logs" "$work/selftest"
mkdir -p "$work/wheel" "$work/logs"
# Without build isolation the CMake build dir stays valid between runs (incremental
# rebuilds); an isolated build's pybind11 lives in a throwaway env, so start afresh.
if "$python" -c 'import scikit_build_core, pybind11' 2>/dev/null; then
  isolation=--no-build-isolation
else
  isolation=
  rm -rf "$work/cmake"
fi
CVPIPE_SANITIZE=ON "$python" -m pip wheel $isolation --no-deps -q "$root" -w "$work/wheel" \
  --config-settings=build-dir="$work/cmake"
"$python" -m pip install -q --no-deps --no-compile --target "$work/site" "$work"/wheel/cvpipe-*.whl
built=$SECONDS

libasan=$(gcc -print-file-name=libasan.so)
libstdcxx=$(gcc -print-file-name=libstdc++.so)
if [[ ! -e "$libasan" || ! -e "$libstdcxx" ]]; then
  echo "gcc's libasan.so or libstdc++.so was not found (apt-get install gcc g++)" >&2
  exit 1
fi
site_packages=$("$python" -c 'import site; print(":".join(site.getsitepackages()))')
export PYTHONPATH="$work/site:$site_packages"
export ASAN_OPTIONS="detect_leaks=0:log_path=$work/logs/asan"  # CPython keeps memory until exit by design
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$work/logs/ubsan"
# ASan must be loaded first; libstdc++ too, or its C++ exception interceptor finds no
# __cxa_throw (python itself does not link libstdc++) and aborts at the first throw.
# -P: never import `cvpipe` from the current directory (the source tree) either.
sanitized() { LD_PRELOAD="$libasan $libstdcxx" "$python" -S -P "$@"; }

module=$(sanitized -c 'import cvpipe._native as n; print(n.__file__)')
if [[ "$module" != "$work/site/"* ]] || ! grep -q __asan_init < <(nm -D "$module"); then
  echo "the sanitized module was not the one imported: $module" >&2
  exit 1
fi
# The report path must work, or a clean run would prove nothing: a deliberate ASan report
# has to end the process with a failure status and leave a log.
if ASAN_OPTIONS="detect_leaks=0:log_path=$work/selftest/asan" \
    sanitized -c 'import ctypes; ctypes.CDLL(None).__asan_report_load1(ctypes.c_void_p(16))' 2>/dev/null \
    || [[ -z $(find "$work/selftest" -type f 2>/dev/null) ]]; then
  echo "ASan did not report a deliberate bad load: the sanitizer run would prove nothing" >&2
  exit 1
fi
echo "== running the fuzz corpus under ASan + UBSan with $module"
"$python" "$root/scripts/fuzz_extract.py" corpus "$work/corpus" --count "$mutants"
status=0
sanitized "$root/scripts/fuzz_extract.py" check "$work/corpus" --batch 20 --timeout 300 > "$work/outcomes.tsv" || status=$?
grep -E '^(summary|FAILURE)' "$work/outcomes.tsv" || true

reports=$(find "$work/logs" -type f | sort)
if [[ -n "$reports" ]]; then
  echo "sanitizer reports:" >&2
  for report in $reports; do
    echo "---- $report" >&2
    head -60 "$report" >&2
  done
  status=1
fi
echo "sanitizer check: build $((built - started)) s, run $((SECONDS - built)) s, total $((SECONDS - started)) s;" \
  "outcomes in $work/outcomes.tsv; $([[ $status == 0 ]] && echo passed || echo FAILED)"
exit "$status"
