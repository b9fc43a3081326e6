#!/usr/bin/env bash
# One whole flow on the real data, timed, as a user runs it (docs/results.md, "The whole CPU flow under a time
# budget"): search.run with --time-budget, then train.final --study best, then the submission check. The study goes
# to docs/studies/budget-flow-s<SEED>.journal. Running it again resumes: the search without the flag (the study
# keeps its budget and its start), the final from its checkpoint. Each step's start and end (with its exit status)
# go to OUT/times.txt as it happens, also when it fails or is stopped by Ctrl-C or by `kill -TERM -- -PGID` (a flow
# started in the background ignores SIGINT; stop a final that must resume later that way: a SIGKILL leaves its
# invocation untimed). `python -m bench.flow_rows OUT ...` makes the table.
#
#   bench/flow.sh DATA SEED BUDGET OUT        e.g. bench/flow.sh ../shared/data/celebamask-mini 0 3h runs/flow-s0
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 4 ] || { echo "usage: bench/flow.sh DATA SEED BUDGET OUT" >&2; exit 2; }
data=$1 seed=$2 budget=$3 out=$4
PY=${PY:-.venv/bin/python}
study=budget-flow-s$seed journal=docs/studies/budget-flow-s$seed.journal
mkdir -p "$out" || exit 2
printf '{"study": "%s", "storage": "%s", "seed": "%s"}\n' "$study" "$journal" "$seed" > "$out/flow.json"
flag=(--time-budget "$budget")
[ -f "$journal" ] && flag=()  # a resume keeps the recorded budget

step() {  # step NAME LOG COMMAND...: run it, its output appended to LOG, its start and end stamped in times.txt
  local name=$1 log=$2 rc
  shift 2
  echo "$name start $(date +%s)" >> "$out/times.txt"
  "$@" 2>&1 | tee -a "$log"
  rc=$?
  echo "$name end $(date +%s) rc $rc" >> "$out/times.txt"
  return $rc
}
trap 'stopped=1' INT TERM  # the step's child gets the signal too (send it to the process group); its end is stamped

step search "$out/search.log" "$PY" -m search.run --data "$data" --study "$study" --storage "$journal" --workers 2 \
  --device cpu --seed "$seed" --artifact-dir "$out/artifacts" "${flag[@]}" || exit $?
step final "$out/final.log" "$PY" -m train.final --study "$study" --storage "$journal" --seed 0 --device cpu \
  --out "$out/final" || exit $?
rm -f "$out/check.log"
step check "$out/check.log" "$PY" -m train.submission check "$out/final/submission.zip" --images "$data/test/images"
