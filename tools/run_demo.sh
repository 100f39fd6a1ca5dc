#!/usr/bin/env bash
# The README's main command: set up the environment (idempotent; the first run builds mmcv,
# about 8 min), then train and evaluate a small SG-Former Mask R-CNN and UperNet on synthetic
# data on the CPU (about 10 minutes on 2 cores) and print the before/after table.
# Extra arguments go to tools/demo.py (e.g. --skip-seg, --det-iters 200).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env_paths.sh"
bash "$MMSGFORMER_REPO/tools/setup_env.sh"
PY="$MMSGFORMER_VENV/bin/python"
cd "$MMSGFORMER_REPO"
exec "$PY" tools/demo.py "$@"
