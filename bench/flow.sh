#!/usr/bin/env bash
# One whole flow on the real data, timed, as a user runs it (docs/results.md, "The whole CPU flow under a time
# budget"): search.run with --time-budget, then train.final --study best, then the submission check. The study goes
# to docs/studies/budget-flow-s<SEED>.journal. Running it again resumes: the search without the flag (the study
# keeps its budget and its start), the final from its checkpoint. `python -m bench.flow_rows OUT ...` makes the table.
#
#   bench/flow.sh DATA SEED BUDGET OUT        e.g. bench/flow.sh ../shared/data/celebamask-mini 0 3h runs/flow-s0
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 4 ] || { echo "usage: bench/flow.sh DATA SEED BUDGET OUT" >&2; exit 2; }
data=$1 seed=$2 budget=$3 out=$4
PY=${PY:-.venv/bin/python}
study=budget-flow-s$seed journal=docs/studies/budget-flow-s$seed.journal
mkdir -p "$out"
printf '{"study": "%s", "storage": "%s", "seed": %s, "budget": "%s"}\n' "$study" "$journal" "$seed" "$budget" \
  > "$out/flow.json"  # what bench.flow_rows reads
flag=(--time-budget "$budget")
[ -f "$journal" ] && flag=()  # a resume keeps the recorded budget
t0=$(date +%s)
"$PY" -m search.run --data "$data" --study "$study" --storage "$journal" --workers 2 --device cpu --seed "$seed" \
  --artifact-dir "$out/artifacts" "${flag[@]}" 2>&1 | tee -a "$out/search.log"
t1=$(date +%s)
"$PY" -m train.final --study "$study" --storage "$journal" --seed 0 --device cpu --out "$out/final" 2>&1 \
  | tee -a "$out/final.log"
t2=$(date +%s)
"$PY" -m train.submission check "$out/final/submission.zip" --images "$data/test/images" 2>&1 | tee "$out/check.log"
echo "search $((t1 - t0)) s, final $((t2 - t1)) s, whole $((t2 - t0)) s (this invocation)" | tee -a "$out/times.txt"
