#!/usr/bin/env bash
# Create (or reuse) the mmsgformer environment: torch, mmcv with compiled ops, mmengine, mmdet,
# mmsegmentation, mmpretrain, openmim, then mmsgformer itself (editable, with its C++ op).
#
# Usage: tools/setup_env.sh [--torch X.Y.Z] [--print-constraints]
#   --torch X.Y.Z   torch version of the environment (default: the torch== pin of
#                   requirements/constraints.txt); torchvision is the matching release. Each
#                   version gets its own venv: $MMSGFORMER_CACHE/venv-py311-torchX.Y.Z.
#   --print-constraints  print the versions this would install, and stop.
#
# The versions come from requirements/constraints.txt (one place); for another torch its
# `#@torchX` lines replace the pins of the same packages.
#
# Idempotent: the venv and the built mmcv wheel live in a user-level cache shared by every clone
# and are reused. The first run for a torch version builds mmcv 2.1.0 from source against it
# (about 6 minutes on 2 idle cores); later runs only check versions and reinstall mmsgformer.
#
# Environment knobs:
#   MMSGFORMER_CACHE  cache root             (default: ${XDG_CACHE_HOME:-~/.cache}/mmsgformer)
#   MMSGFORMER_VENV   venv path              (default: $MMSGFORMER_CACHE/venv-py311-torch<version>)
#   PYTHON            interpreter for venv   (default: python3.11, else python3)
#   MAX_JOBS          parallel compile jobs  (default: the number of CPUs, nproc)
#   FORCE_CUDA=1      also build the CUDA kernel of mmsgformer's op (needs nvcc)
set -euo pipefail

STEP="parse arguments"
PRINT_CONSTRAINTS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --torch) [ $# -ge 2 ] || { echo '[setup] FAILED: --torch needs a version, e.g. --torch 2.1.2' >&2; exit 2; }
             export MMSGFORMER_TORCH_VERSION="$2"; shift 2 ;;
    --torch=*) export MMSGFORMER_TORCH_VERSION="${1#--torch=}"; shift ;;
    --print-constraints) PRINT_CONSTRAINTS=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "[setup] FAILED: unknown argument '$1' (usage: tools/setup_env.sh [--torch X.Y.Z])" >&2; exit 2 ;;
  esac
done

# shellcheck source=tools/env_paths.sh
source "$(dirname "${BASH_SOURCE[0]}")/env_paths.sh"
REPO_DIR="$MMSGFORMER_REPO"
CACHE="$MMSGFORMER_CACHE"
TORCH_VERSION="$MMSGFORMER_TORCH_VERSION"
VENV="$MMSGFORMER_VENV"
WHEEL_DIR="$CACHE/wheels/torch$TORCH_VERSION"
T0=$(date +%s)

log() { printf '[setup %4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
fail() { printf '[setup] FAILED at step "%s": %s\n' "$STEP" "$*" >&2; exit 1; }
trap 'rc=$?; [ $rc -ne 0 ] && printf "[setup] FAILED at step \"%s\" (exit %d); see the output above\n" "$STEP" "$rc" >&2' EXIT

STEP="check tools"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
command -v "$PY" >/dev/null 2>&1 || fail "no Python interpreter '$PY' found"
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || fail "Python 3.11 is required (the tested torch wheels are cp311)"
command -v g++ >/dev/null 2>&1 || fail "no C++ compiler (g++) found: mmcv's ops and mmsgformer's op are compiled"
JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}"

STEP="read constraints"
[[ "$TORCH_VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] \
  || fail "--torch '$TORCH_VERSION' is not a release like 2.1.2"
TORCH_MINOR=$(echo "$TORCH_VERSION" | cut -d. -f2)
[ "$(echo "$TORCH_VERSION" | cut -d. -f1)" = 2 ] && [ "$TORCH_MINOR" -ge 1 ] \
  || fail "torch $TORCH_VERSION is not supported: mmsgformer needs torch >= 2.1 (mmsgformer/version.py)"
# The effective constraints: the main pins, with those of packages the `#@torchX` lines (or, for a
# torch without such lines, the torch/torchvision pair) name replaced.
pkg_name() { sed 's/[<>=!~; ].*//' | tr 'A-Z_' 'a-z-'; }
if [ "$TORCH_VERSION" = "$MMSGFORMER_DEFAULT_TORCH" ]; then
  OVERRIDES=""
else
  OVERRIDES=$(sed -n "s/^#@torch$TORCH_VERSION //p" "$MMSGFORMER_CONSTRAINTS")
  if [ -z "$OVERRIDES" ]; then
    # torchvision 0.(m+15).p goes with torch 2.m.p (2.1.2 -> 0.16.2 ... 2.14.1 -> 0.29.1).
    OVERRIDES=$(printf 'torch==%s\ntorchvision==0.%d.%s\n' "$TORCH_VERSION" $(( TORCH_MINOR + 15 )) \
      "$(echo "$TORCH_VERSION" | cut -d. -f3)")
    [ "$TORCH_MINOR" -lt 3 ] && OVERRIDES="$OVERRIDES"$'\nnumpy<2'
    echo "[setup] torch $TORCH_VERSION is not one of the tested sets of requirements/constraints.txt; using: $(echo $OVERRIDES)" >&2
  fi
fi
MERGED=$(
  replaced=" $(echo "$OVERRIDES" | pkg_name | tr '\n' ' ') "
  grep -v '^[[:space:]]*#' "$MMSGFORMER_CONSTRAINTS" | grep -v '^[[:space:]]*$' | while read -r line; do
    case "$replaced" in *" $(echo "$line" | pkg_name) "*) ;; *) echo "$line" ;; esac
  done
  if [ -n "$OVERRIDES" ]; then echo "$OVERRIDES"; fi
)
pin() { echo "$MERGED" | sed -n "s/^$1==\([^ ;]*\).*/\1/p"; }
[ "$(pin torch)" = "$TORCH_VERSION" ] || fail "constraints pin torch==$(pin torch), not $TORCH_VERSION"
TORCHVISION_VERSION=$(pin torchvision)
MMCV_VERSION=$(pin mmcv)
[ -n "$TORCHVISION_VERSION" ] && [ -n "$MMCV_VERSION" ] || fail "no torchvision== or mmcv== pin in $MMSGFORMER_CONSTRAINTS"
STACK=(
  "mmengine" "mmdet" "mmsegmentation" "mmpretrain" "setuptools" wheel
  ftfy regex pycocotools matplotlib pytest
  click colorama model-index pandas requests rich tabulate
)
# The ONNX export (mmsgformer[deploy]) and its tests need the dynamo-based exporter: torch >= 2.9.
if [ "$TORCH_MINOR" -ge 9 ]; then STACK+=(onnx onnxscript onnxruntime); fi
if [ "$PRINT_CONSTRAINTS" = 1 ]; then echo "$MERGED"; trap - EXIT; exit 0; fi
STAMP_TEXT="python311 $(echo "$MERGED" | tr '\n' ' ')${STACK[*]}"

VPY="$VENV/bin/python"
pip_quiet() {  # pip in the venv, minus the noise of this machine's unused local index folders
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

# A torch version with no wheel for this Python: say which versions exist (before creating
# anything). Skipped when the index cannot be listed (offline): pip install says it then.
check_torch_wheel() {
  local listing versions
  listing=$("$PY" -m pip index versions torch 2>/dev/null) || return 0
  versions=$(echo "$listing" | sed -n 's/^Available versions: //p')
  [ -n "$versions" ] || return 0
  case ", $versions, " in
    *", $TORCH_VERSION, "*) return 0 ;;
  esac
  fail "torch $TORCH_VERSION has no wheel for Python $("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') on this platform; versions with one: $versions"
}

if [ -x "$VPY" ] && stack_ok; then
  log "OpenMMLab stack (torch $TORCH_VERSION) already installed in $VENV (skipping)"
else
  STEP="check torch $TORCH_VERSION"
  check_torch_wheel
  STEP="create venv"
  if [ ! -x "$VPY" ]; then
    log "creating venv at $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV" || fail "python -m venv $VENV"
  fi
  CONSTRAINTS_FILE="$VENV/.mmsgformer-constraints.txt"
  echo "$MERGED" > "$CONSTRAINTS_FILE"

  STEP="install torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION"
  log "$STEP"
  pip_quiet install -c "$CONSTRAINTS_FILE" setuptools wheel
  pip_quiet install -c "$CONSTRAINTS_FILE" torch torchvision

  STEP="build mmcv $MMCV_VERSION with ops"
  mkdir -p "$WHEEL_DIR"
  MMCV_WHEEL=$(ls "$WHEEL_DIR"/mmcv-$MMCV_VERSION-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$MMCV_WHEEL" ]; then
    log "no cached mmcv wheel in $WHEEL_DIR: building from source with $JOBS jobs (about 6 min on 2 idle cores)"
    BUILD_DIR=$(mktemp -d)
    pip_quiet download --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$BUILD_DIR" \
      || fail "could not download the mmcv $MMCV_VERSION source distribution"
    tar -xzf "$BUILD_DIR"/mmcv-$MMCV_VERSION.tar.gz -C "$BUILD_DIR"
    SRC="$BUILD_DIR/mmcv-$MMCV_VERSION"
    if [ "$TORCH_MINOR" -ge 10 ]; then
      # torch >= 2.10 headers need C++20; mmcv 2.1.0 hard-codes -std=c++17.
      sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
      grep -q 'c++20' "$SRC/setup.py" || fail "could not patch mmcv's setup.py to C++20"
    fi
    # -g0 (no debug info): 6 min and a 1.4 MB wheel instead of 23 min and 32 MB. CFLAGS replaces
    # Python's defaults, so give the full set. mmcv's own default is MAX_JOBS=max(4, ncpu-1).
    ( cd "$SRC" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="$JOBS" CFLAGS="-DNDEBUG -O3 -g0 -fwrapv -Wall" \
        "$VPY" -m pip wheel --no-build-isolation --no-deps -w "$BUILD_DIR/out" . \
        > "$BUILD_DIR/build.log" 2>&1 ) &
    BUILD_PID=$!
    TOTAL=$(find "$SRC/mmcv/ops/csrc/pytorch" -name '*.cpp' -not -path '*cuda*' -not -path '*npu*' -not -path '*mlu*' -not -path '*mps*' | wc -l)
    while kill -0 "$BUILD_PID" 2>/dev/null; do
      sleep 60
      kill -0 "$BUILD_PID" 2>/dev/null && log "still building mmcv ops: $(find "$SRC/build" -name '*.o' 2>/dev/null | wc -l) of about $TOTAL sources compiled"
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
  pip_quiet install -c "$CONSTRAINTS_FILE" "$MMCV_WHEEL" "${STACK[@]}"
  # openmim's extras pin old setuptools/requests/rich: install it alone, its real needs come above.
  pip_quiet install -c "$CONSTRAINTS_FILE" --no-deps openmim
  stack_ok_msg=$("$VPY" -c 'import mmcv.ops, mmdet.models, mmseg.models, mmpretrain.models, mim; print("ok")' 2>&1) \
    || fail "the installed stack does not import: $stack_ok_msg"
  echo "$STAMP_TEXT" > "$VENV/.mmsgformer-stack"
fi

if [ "$MMSGFORMER_SRC" != "$REPO_DIR" ]; then
  STEP="copy the working tree to $MMSGFORMER_SRC"
  log "$STEP (this torch's op build stays out of the repository)"
  mkdir -p "$MMSGFORMER_SRC"
  # Fresh sources, kept build outputs (unchanged sources are not recompiled).
  find "$MMSGFORMER_SRC" -type f ! -name '*.so' ! -path "$MMSGFORMER_SRC/build/*" \
    ! -path '*.egg-info/*' -delete
  ( cd "$REPO_DIR" && git ls-files -z -co --exclude-standard | tar --null -cf - -T - ) \
    | tar -xf - -C "$MMSGFORMER_SRC" || fail "could not copy $REPO_DIR to $MMSGFORMER_SRC"
fi
# The editable install is current when this venv points at $MMSGFORMER_SRC and the op library
# there is the one this script built last (its stamp) and newer than the op sources and the
# packaging files: then the 40-120 s rebuild is skipped.
op_stamp() {
  local so
  so=$(ls "$MMSGFORMER_SRC"/mmsgformer/_C*.so 2>/dev/null | head -n 1) || true
  [ -n "$so" ] || return 0
  [ -z "$(find "$MMSGFORMER_SRC/mmsgformer/ops/csrc" "$MMSGFORMER_SRC/setup.py" \
          "$MMSGFORMER_SRC/pyproject.toml" "$MMSGFORMER_SRC/mmsgformer/version.py" -type f -newer "$so" 2>/dev/null)" ] || return 0
  echo "$MMSGFORMER_SRC torch=$TORCH_VERSION FORCE_CUDA=${FORCE_CUDA:-} $(cksum < "$so")"
}
STEP="install mmsgformer (editable, builds its C++ op)"
EDITABLE_AT=$(cd / && "$VPY" -c 'import importlib.util as u; s = u.find_spec("mmsgformer"); print(s.origin if s else "")' 2>/dev/null || true)
CURRENT=$(op_stamp)
if [ "$EDITABLE_AT" = "$MMSGFORMER_SRC/mmsgformer/__init__.py" ] && [ -n "$CURRENT" ] \
    && [ "$(cat "$VENV/.mmsgformer-op" 2>/dev/null)" = "$CURRENT" ]; then
  log "mmsgformer already installed from $MMSGFORMER_SRC, op up to date (skipping the rebuild)"
else
  log "$STEP"
  pip_quiet install --no-build-isolation --use-pep517 --no-deps -e "$MMSGFORMER_SRC" \
    || fail "pip install -e $MMSGFORMER_SRC"
  op_stamp > "$VENV/.mmsgformer-op"
fi
( cd "$MMSGFORMER_SRC" && "$VPY" -c 'import mmsgformer, mmsgformer.ops as o; assert o.op_available()' ) \
  || fail "mmsgformer (with its compiled op) does not import after install"
log "environment ready: $VENV (activate with: source $VENV/bin/activate)"
trap - EXIT
