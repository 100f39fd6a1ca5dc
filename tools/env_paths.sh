# Shared locations of the mmsgformer environment (sourced by setup_env.sh, run_tests.sh, run_demo.sh).
MMSGFORMER_TORCH_VERSION=2.14.1
MMSGFORMER_CACHE="${MMSGFORMER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmsgformer}"
MMSGFORMER_VENV="${MMSGFORMER_VENV:-$MMSGFORMER_CACHE/venv-py311-torch$MMSGFORMER_TORCH_VERSION}"
MMSGFORMER_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
