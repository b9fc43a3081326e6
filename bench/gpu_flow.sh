#!/usr/bin/env bash
# The GPU flow of issue 30 in one command (python -m bench.gpu_flow holds the steps; its --help says what they do).
#
#   here, in the checkout:       bench/gpu_flow.sh prepare
#       copies train/ and val/ of ../shared/data/celebamask-mini into data/gpu-carry/ (git-ignored; test/ stays
#       behind) and the GPU wheels into .whl/, then checks that what travels (the checkout's files and those two
#       folders) is under the device tool's 64 MiB;
#   there (device run, carry .whl and data/gpu-carry, timeout 600):   bash bench/gpu_flow.sh run "$OUT"
#       installs the wheels, then runs python -m bench.gpu_flow --data data/gpu-carry --out "$OUT";
#   a CPU dry run of the same:   bench/gpu_flow.sh run OUT --dry-run   (PYTHON=.venv/bin/python; a test runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LIMIT_MIB=64
CARRY=data/gpu-carry

case "${1:-}" in
  prepare)
    src=${2:-../shared/data/celebamask-mini}
    for split in train val; do
      [ -d "$src/$split/images" ] && [ -d "$src/$split/masks" ] || { echo "error: $src/$split/{images,masks} missing" >&2; exit 2; }
    done
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    rm -rf "$CARRY" && mkdir -p "$CARRY" .whl
    cp -r "$src/train" "$src/val" "$CARRY/"
    cp ../shared/wheels/gpu-py312/*.whl .whl/ 2>/dev/null || echo "note: no wheels in ../shared/wheels/gpu-py312"
    tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
    carried=$(du -cb "$CARRY" .whl | tail -1 | cut -f1)
    total=$(( (tree + carried) / 1048576 ))
    echo "gpu_flow.sh: the checkout ${tree} bytes + $CARRY and .whl ${carried} bytes = ${total} MiB of ${LIMIT_MIB}"
    [ "$total" -lt "$LIMIT_MIB" ] || { echo "error: ${total} MiB would travel; the device tool takes ${LIMIT_MIB}" >&2; exit 2; }
    ;;
  run)
    out=${2:?usage: bench/gpu_flow.sh run OUT [bench.gpu_flow args]}
    shift 2
    if [[ " $* " != *" --dry-run "* ]] && ls .whl/*.whl >/dev/null 2>&1; then
      "$PYTHON" -m pip install -q --no-index --no-deps --target .site .whl/*.whl
      export PYTHONPATH="$PWD/.site:$PWD"
    fi
    export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
    exec "$PYTHON" -m bench.gpu_flow --data "$CARRY" --out "$out" "$@"
    ;;
  *)
    echo "usage: bench/gpu_flow.sh prepare [DATA] | run OUT [--dry-run ...]" >&2
    exit 2
    ;;
esac
