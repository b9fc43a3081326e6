#!/usr/bin/env bash
# The final's schedule ladder (docs/results.md, "The final's schedule ladder"): the portfolio's best network,
# arch-tpe #28 at R85, trained by train.final at each SCHEDULE/SEED given, two runs at a time on one thread each
# (the thread count changes the numerics: every row of the ladder uses the same). A run writes OUT/<schedule>-s<seed>/
# (log, final.json); running the same command again resumes unfinished runs from their checkpoint and skips
# finished ones.
#
#   bench/ladder.sh DATA OUT 128:16,256:8,384:6/0 128:16,256:8,384:6/1 ...
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: bench/ladder.sh DATA OUT SCHEDULE/SEED ..." >&2; exit 2; }
data=$1 out=$2
shift 2
mkdir -p "$out"
cp -n docs/studies/arch-r85.journal "$out/arch-r85.journal"  # a copy: train.final only reads it
PY=${PY:-.venv/bin/python}
one() {
  local schedule=${1%/*} seed=${1#*/}
  local dir="$out/${schedule//[:,]/_}-s$seed"
  [ -f "$dir/final.json" ] && { echo "done: $dir"; return 0; }
  mkdir -p "$dir"
  echo "start: $dir ($(date -u +%FT%TZ))"
  OMP_NUM_THREADS=1 /usr/bin/time -f "wall %e s" "$PY" -m train.final --study arch-tpe \
    --storage "$out/arch-r85.journal" --trial 28 --data "$data" --size "$schedule" --seed "$seed" --device cpu \
    --out "$dir" >>"$dir/log" 2>&1 || { echo "failed: $dir (see $dir/log)"; return 0; }
  echo "end: $dir ($(date -u +%FT%TZ)) $(tail -n 1 "$dir/log")"
}
export -f one
export out data PY
printf '%s\n' "$@" | xargs -P 2 -I{} bash -c 'one "$@"' _ {}
