# Shared locations of the mmsgformer environment (sourced by setup_env.sh, run_tests.sh,
# run_demo.sh). The torch version is MMSGFORMER_TORCH_VERSION when set (setup_env.sh and
# run_tests.sh set it from `--torch X`), else the one pinned in requirements/constraints.txt.
MMSGFORMER_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MMSGFORMER_CONSTRAINTS="$MMSGFORMER_REPO/requirements/constraints.txt"
MMSGFORMER_DEFAULT_TORCH="$(sed -n 's/^torch==\([0-9][0-9.]*\).*/\1/p' "$MMSGFORMER_CONSTRAINTS")"
MMSGFORMER_TORCH_VERSION="${MMSGFORMER_TORCH_VERSION:-$MMSGFORMER_DEFAULT_TORCH}"
MMSGFORMER_CACHE="${MMSGFORMER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmsgformer}"
MMSGFORMER_VENV="${MMSGFORMER_VENV:-$MMSGFORMER_CACHE/venv-py311-torch$MMSGFORMER_TORCH_VERSION}"
# Where the venv's editable mmsgformer lives. The main torch uses the repository itself. Another
# torch uses a copy of the working tree: the op's in-place build (mmsgformer/_C*.so) is specific
# to one torch, and a build for torch 2.1 in the repository would break the main environment.
if [ "$MMSGFORMER_TORCH_VERSION" = "$MMSGFORMER_DEFAULT_TORCH" ]; then
  MMSGFORMER_SRC="$MMSGFORMER_REPO"
else
  MMSGFORMER_SRC="$MMSGFORMER_CACHE/src-torch$MMSGFORMER_TORCH_VERSION"
fi
