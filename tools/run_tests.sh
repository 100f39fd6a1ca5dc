#!/usr/bin/env bash
# Set up the environment (idempotent; the first run builds mmcv, later runs take well under a
# minute) and run the test suite there. Extra arguments go to pytest.
#
# Usage: bash tools/run_tests.sh [--torch X.Y.Z] [PYTEST ARGS...]
#   bash tools/run_tests.sh -k sgformer
#   bash tools/run_tests.sh tests/test_op.py tests/test_compat.py
#   bash tools/run_tests.sh --torch 2.1.2 -k "op or sgformer or checkpoint or configs"
# Without --torch: the main environment (the torch== pin of requirements/constraints.txt).
set -euo pipefail
SETUP_ARGS=()
case "${1:-}" in
  --torch) [ $# -ge 2 ] || { echo '[tests] --torch needs a version, e.g. --torch 2.1.2' >&2; exit 2; }
           export MMSGFORMER_TORCH_VERSION="$2"; SETUP_ARGS=(--torch "$2"); shift 2 ;;
  --torch=*) export MMSGFORMER_TORCH_VERSION="${1#--torch=}"; SETUP_ARGS=(--torch "${1#--torch=}"); shift ;;
esac
source "$(dirname "${BASH_SOURCE[0]}")/env_paths.sh"
bash "$MMSGFORMER_REPO/tools/setup_env.sh" "${SETUP_ARGS[@]}"
# Another torch runs the tests in its copy of the working tree (made by setup_env.sh).
cd "$MMSGFORMER_SRC"
echo "[tests] running pytest in $MMSGFORMER_SRC with $MMSGFORMER_VENV/bin/python (torch $MMSGFORMER_TORCH_VERSION)"
# The whole suite unless test paths are given (bash tools/run_tests.sh tests/test_op.py).
TARGETS=(tests)
for arg in "$@"; do case "$arg" in tests|tests/*) TARGETS=() ;; esac; done
# pytest exits 5 when no test was collected: that is a failure here too.
exec "$MMSGFORMER_VENV/bin/python" -m pytest "${TARGETS[@]}" -q -p no:cacheprovider "$@"
