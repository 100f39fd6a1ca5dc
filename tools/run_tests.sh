#!/usr/bin/env bash
# Set up the environment (idempotent; first run ~8 min, later runs well under a minute) and run
# the test suite. Extra arguments go to pytest, e.g. `bash tools/run_tests.sh -k sgformer`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env_paths.sh"
bash "$MMSGFORMER_REPO/tools/setup_env.sh"
cd "$MMSGFORMER_REPO"
echo "[tests] running pytest with $MMSGFORMER_VENV/bin/python"
# pytest exits 5 when no test was collected: that is a failure here too.
exec "$MMSGFORMER_VENV/bin/python" -m pytest tests -q -p no:cacheprovider "$@"
