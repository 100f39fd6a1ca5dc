#!/usr/bin/env bash
# Create (or reuse) the mmsgformer environment: torch, mmcv with compiled ops, mmengine, mmdet,
# mmsegmentation, mmpretrain, openmim, then mmsgformer itself (editable, with its C++ op).
#
# Idempotent: the venv and the built mmcv wheel live in a user-level cache and are reused. The
# first run builds mmcv 2.1.0 from source (about 6 minutes on 2 cores); later runs only check
# versions and reinstall mmsgformer (well under a minute).
#
# Environment knobs:
#   MMSGFORMER_CACHE  cache root             (default: ${XDG_CACHE_HOME:-~/.cache}/mmsgformer)
#   MMSGFORMER_VENV   venv path              (default: $MMSGFORMER_CACHE/venv-py311-torch2.14.1)
#   PYTHON            interpreter for venv   (default: python3.11, else python3)
#   FORCE_CUDA=1      also build the CUDA kernel of mmsgformer's op (needs nvcc)
set -euo pipefail

# shellcheck source=tools/env_paths.sh
source "$(dirname "${BASH_SOURCE[0]}")/env_paths.sh"
REPO_DIR="$MMSGFORMER_REPO"
CACHE="$MMSGFORMER_CACHE"
TORCH_VERSION="$MMSGFORMER_TORCH_VERSION"
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
VENV="$MMSGFORMER_VENV"
WHEEL_DIR="$CACHE/wheels/torch$TORCH_VERSION"
STEP="start"
T0=$(date +%s)

log() { printf '[setup %4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
fail() { printf '[setup] FAILED at step "%s": %s\n' "$STEP" "$*" >&2; exit 1; }
trap 'rc=$?; [ $rc -ne 0 ] && printf "[setup] FAILED at step \"%s\" (exit %d); see the output above\n" "$STEP" "$rc" >&2' EXIT

# The stack tested together on this machine kind (see README "Environment").
STACK_PINS=(
  "setuptools>=77.0.3,<81" wheel
  "mmengine==0.10.7" "mmdet==3.3.0" "mmsegmentation==1.2.2" "mmpretrain==1.2.0"
  ftfy regex pycocotools matplotlib pytest
  click colorama model-index pandas requests rich tabulate
)
STAMP_TEXT="torch=$TORCH_VERSION tv=$TORCHVISION_VERSION mmcv=$MMCV_VERSION openmim=0.3.9 ${STACK_PINS[*]}"

STEP="check tools"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
command -v "$PY" >/dev/null 2>&1 || fail "no Python interpreter '$PY' found"
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || fail "Python 3.11 is required (torch $TORCH_VERSION wheels on this machine are cp311)"
command -v g++ >/dev/null 2>&1 || fail "no C++ compiler (g++) found: mmcv's ops and mmsgformer's op are compiled"

STEP="create venv"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv at $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV" || fail "python -m venv $VENV"
fi
VPY="$VENV/bin/python"
VPIP=(pip_quiet)

# pip, minus the noise of this machine's unused local index folders.
pip_quiet() {
  "$VPY" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2)
}

stack_ok() {
  [ -f "$VENV/.mmsgformer-stack" ] && [ "$(cat "$VENV/.mmsgformer-stack")" = "$STAMP_TEXT" ] || return 1
  "$VPY" - <<PYEOF >/dev/null 2>&1
import torch, torchvision, mmcv, mmengine, mmdet, mmseg, mmpretrain, mim
from mmcv.ops import nms, RoIAlign
assert torch.__version__.split('+')[0] == '$TORCH_VERSION', torch.__version__
assert mmcv.__version__ == '$MMCV_VERSION', mmcv.__version__
PYEOF
}

if stack_ok; then
  log "OpenMMLab stack already installed in $VENV (skipping)"
else
  STEP="install torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION"
  log "$STEP"
  "${VPIP[@]}" install "setuptools>=77.0.3,<81" wheel
  "${VPIP[@]}" install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

  STEP="build mmcv $MMCV_VERSION with ops"
  mkdir -p "$WHEEL_DIR"
  MMCV_WHEEL=$(ls "$WHEEL_DIR"/mmcv-$MMCV_VERSION-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$MMCV_WHEEL" ]; then
    log "no cached mmcv wheel in $WHEEL_DIR: building from source (about 6 min on 2 cores)"
    BUILD_DIR=$(mktemp -d)
    "${VPIP[@]}" download --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$BUILD_DIR" \
      || fail "could not download the mmcv $MMCV_VERSION source distribution"
    tar -xzf "$BUILD_DIR"/mmcv-$MMCV_VERSION.tar.gz -C "$BUILD_DIR"
    SRC="$BUILD_DIR/mmcv-$MMCV_VERSION"
    # torch >= 2.10 headers need C++20; mmcv 2.1.0 hard-codes -std=c++17.
    sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
    grep -q 'c++20' "$SRC/setup.py" || fail "could not patch mmcv's setup.py to C++20"
    # -g0 (no debug info): 6 min and a 1.4 MB wheel instead of 23 min and 32 MB. CFLAGS replaces
    # Python's defaults, so give the full set.
    ( cd "$SRC" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=2 CFLAGS="-DNDEBUG -O3 -g0 -fwrapv -Wall" \
        "$VPY" -m pip wheel --no-build-isolation --no-deps -w "$BUILD_DIR/out" . \
        > "$BUILD_DIR/build.log" 2>&1 ) &
    BUILD_PID=$!
    while kill -0 "$BUILD_PID" 2>/dev/null; do
      sleep 60
      kill -0 "$BUILD_PID" 2>/dev/null && log "still building mmcv ops: $(find "$SRC/build" -name '*.o' 2>/dev/null | wc -l) of about $(find "$SRC/mmcv/ops/csrc/pytorch" -name '*.cpp' -not -path '*cuda*' -not -path '*npu*' -not -path '*mlu*' -not -path '*mps*' | wc -l) sources compiled"
    done
    if ! wait "$BUILD_PID"; then
      tail -n 40 "$BUILD_DIR/build.log" >&2
      fail "mmcv build failed (full log: $BUILD_DIR/build.log)"
    fi
    cp "$BUILD_DIR"/out/mmcv-*.whl "$WHEEL_DIR/"
    MMCV_WHEEL=$(ls "$WHEEL_DIR"/mmcv-$MMCV_VERSION-*.whl | head -n 1)
    rm -rf "$BUILD_DIR"
    log "built $MMCV_WHEEL"
  else
    log "using cached mmcv wheel $MMCV_WHEEL"
  fi

  STEP="install mmcv wheel and the OpenMMLab stack"
  log "$STEP"
  "${VPIP[@]}" install "$MMCV_WHEEL" "${STACK_PINS[@]}"
  # openmim's extras pin old setuptools/requests/rich: install it alone, its real needs come above.
  "${VPIP[@]}" install --no-deps "openmim==0.3.9"
  stack_ok_msg=$("$VPY" -c 'import mmcv.ops, mmdet.models, mmseg.models, mmpretrain.models, mim; print("ok")' 2>&1) \
    || fail "the installed stack does not import: $stack_ok_msg"
  echo "$STAMP_TEXT" > "$VENV/.mmsgformer-stack"
fi

STEP="install mmsgformer (editable, builds its C++ op)"
log "$STEP"
"${VPIP[@]}" install --no-build-isolation --use-pep517 --no-deps -e "$REPO_DIR" \
  || fail "pip install -e $REPO_DIR"
"$VPY" -c 'import mmsgformer' || fail "mmsgformer does not import after install"
log "environment ready: $VENV (activate with: source $VENV/bin/activate)"
trap - EXIT
