#!/usr/bin/env bash
# Fill DIR with the wheels that `python tools/gpu_check.py --wheels DIR` installs on a bare GPU
# machine (no network there): mmengine, which the backbones import for BaseModule, the MODELS
# registry and print_log, and what `import mmengine.model/.registry/.logging` needs. Run it where
# pip reaches PyPI. Only wheels are fetched (`--only-binary :all: --no-deps`), for CPython
# PYVER (default 3.12) on manylinux x86_64; all are pure Python (py3-none-any) except PyYAML,
# which has no pure-Python wheel. gpu_check.py installs only those whose distribution is
# missing on the GPU machine, so a machine that already has rich or PyYAML keeps its own.
# mmengine's other requirements (numpy, opencv-python, matplotlib) are not needed by those
# imports and are not fetched.
#
# Usage: bash tools/gpu_wheels.sh DIR [PYVER]       e.g. bash tools/gpu_wheels.sh .whl 3.12
# Keep DIR out of git (echo /.whl/ >> .git/info/exclude); the device tool carries it.
set -euo pipefail

DIR=${1:?usage: bash tools/gpu_wheels.sh DIR [PYVER]}
PYVER=${2:-3.12}
PYTHON=${PYTHON:-python3}

# pinned: mmengine as in tools/setup_env.sh; the rest are versions seen working with it
PURE=(
  mmengine==0.10.7
  addict==2.4.0
  termcolor==3.3.0
  yapf==0.43.0
  platformdirs==4.14.5
  rich==15.0.0
  markdown-it-py==4.0.0
  mdurl==0.1.2
  pygments==2.19.2
)
BINARY=(pyyaml==6.0.3)

mkdir -p "$DIR"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DIR" "${PURE[@]}" "${BINARY[@]}"

# every wheel but PyYAML must be pure Python; one version per distribution
status=0
declare -A seen=()
for whl in "$DIR"/*.whl; do
  base=$(basename "$whl")
  name=$(echo "${base%%-*}" | tr 'A-Z_.' 'a-z--')
  if [[ -n "${seen[$name]:-}" ]]; then
    echo "error: two wheels of $name in $DIR: ${seen[$name]} and $base (keep one)" >&2
    status=1
  fi
  seen[$name]=$base
  if [[ "$base" != *-none-any.whl && "$name" != pyyaml ]]; then
    echo "error: $base is not a pure-Python wheel" >&2
    status=1
  fi
done
ls -1 "$DIR"/*.whl
du -sh "$DIR" | awk '{print "total " $1}'
exit $status
