"""`python -m bench.flow_rows OUT [OUT ...]`: the table of whole flows run under a time budget (bench/flow.sh), one
column per flow, as docs/results.md gives it: the proxy trials and rung runs, the plan the study recorded, each
phase's wall time and the whole against the budget, val F, the submission check; then val F per class.

Each OUT is a bench/flow.sh output folder: flow.json (the study and its storage), times.txt (each step's start and
end), final/final.json and check.log. The whole flow is given twice: the steps' timed seconds together, and on the
budget's clock, from its start to the final's end, where the gaps between invocations count.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import optuna

from search.plan import BUDGET_ATTR, PLAN_ATTR, made_under, say_minutes
from search.rung import rung_records
from search.storage import StorageError, load_existing_study
from search.timebudget import skipped_runs
from train.cli import parser


def phase_seconds(out: Path) -> dict[str, dict] | None:
    """Per step (search, final, check): the seconds of its timed invocations, how many invocations were stopped
    untimed (a start with no end: a SIGKILL), and the last end; from times.txt's `NAME start T` / `NAME end T rc R`
    lines, which bench/flow.sh writes as each step starts and ends."""
    path = out / "times.txt"
    if not path.exists():
        return None
    steps: dict[str, dict] = {}
    for name, what, stamp in re.findall(r"^(\w+) (start|end) (\d+)", path.read_text(), flags=re.M):
        step = steps.setdefault(name, {"seconds": 0.0, "untimed": 0, "first": int(stamp), "last": None, "open": None})
        if what == "start":
            step["untimed"] += step["open"] is not None
            step["open"] = int(stamp)
        elif step["open"] is not None:
            step["seconds"] += int(stamp) - step["open"]
            step["open"], step["last"] = None, int(stamp)
    for step in steps.values():
        step["untimed"] += step.pop("open") is not None
    return steps or None


def flow(out: Path) -> dict:
    """One flow's figures from its folder and its study."""
    meta = json.loads((out / "flow.json").read_text())
    study = load_existing_study(meta["storage"], meta["study"])
    trials = [t for t in study.get_trials(deepcopy=False) if "recipe_stage" not in t.user_attrs]
    states = [t.state for t in trials]
    counts = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState if states.count(s)}
    proxy = [t for t in trials if t.datetime_complete is not None]
    budget, plan = study.user_attrs.get(BUDGET_ATTR) or {}, study.user_attrs.get(PLAN_ATTR) or {}
    started = budget.get("started")
    final = json.loads((out / "final" / "final.json").read_text()) if (out / "final" / "final.json").exists() else {}
    chosen = next((p["val_f"] for p in final.get("predict_settings", []) if p["sizes"] == final.get("predict_sizes")),
                  None)
    check = (out / "check.log").read_text().strip().splitlines() if (out / "check.log").exists() else []
    return {
        "label": out.name, "budget_s": budget.get("seconds"), "counts": counts,
        "portfolio": sum("portfolio" in t.user_attrs for t in trials),
        "proxy_s": (max(t.datetime_complete for t in proxy) - min(t.datetime_start for t in proxy)).total_seconds()
        if proxy else None,
        "rung": rung_records(study), "plan": plan, "budget_started": started,
        "stale_plan": bool(plan) and not made_under(plan, budget),
        "skipped": sorted(n for n, r in skipped_runs(study).items() if r.get("budget_started") == started),
        "phases": phase_seconds(out), "final": final, "chosen": chosen, "check": check[-1] if check else None}


def minutes(seconds: float | None) -> str:
    return "not timed" if seconds is None else say_minutes(seconds)


def step_text(f: dict, name: str) -> str:
    step = (f["phases"] or {}).get(name)
    if step is None:
        return "not run"
    return say_minutes(step["seconds"]) + (f" + {step['untimed']} invocation(s) stopped untimed" if step["untimed"]
                                           else "")


def share(seconds: float | None, f: dict) -> str:
    return "" if seconds is None or not f["budget_s"] else f" ({seconds / f['budget_s']:.0%})"


def whole(f: dict) -> str:
    """The steps' timed seconds together, and on the budget's clock (its start to the final's last end: the gaps
    between invocations count there, as they do for the planner)."""
    steps = f["phases"] or {}
    total = sum(s["seconds"] for s in steps.values())
    text = say_minutes(total) + share(total, f) + (" + untimed invocations" if any(s["untimed"] for s in
                                                                                  steps.values()) else "")
    end = steps.get("final", {}).get("last")
    if end and f["budget_started"]:
        text += f"; on the budget's clock {say_minutes(end - f['budget_started'])}{share(end - f['budget_started'], f)}"
    return text if steps else "not timed"


def table(flows: list[dict]) -> list[str]:
    rows = {
        "budget": [say_minutes(f["budget_s"]) if f["budget_s"] else "none" for f in flows],
        "proxy trials": [", ".join(f"{v} {k}" for k, v in f["counts"].items()) + f" ({f['portfolio']} portfolio)"
                         for f in flows],
        "proxy phase (first start to last end)": [minutes(f["proxy_s"]) for f in flows],
        "rung runs": [(", ".join(f"#{n} {r['f']:.4f}" for n, r in sorted(f["rung"].items(), key=lambda i: -i[1]["f"]))
                       or "none (the rung was off)")
                      + (f"; skipped {', '.join(f'#{n}' for n in f['skipped'])}" if f["skipped"] else "")
                      for f in flows],
        "the plan (minutes left at the search's end; per pick)": [
            (f"{f['plan']['minutes_left']:.0f} min; " + ", ".join(
                f"#{n} {p['schedule']} ({p['minutes']:.0f} min)" for n, p in f["plan"]["schedules"].items())
             + (" (made under an earlier budget)" if f["stale_plan"] else ""))
            if f["plan"] else "none recorded" for f in flows],
        "the search": [step_text(f, "search") for f in flows],
        "train.final": [step_text(f, "final") for f in flows],
        "**the whole flow** (of the budget)": [whole(f) for f in flows],
        "shipped": [f"#{f['final']['trial']} at {f['final']['schedule']}" if f["final"] else "no final yet"
                    for f in flows],
        "**val F** (without TTA; the chosen setting's, flip TTA)": [
            f"{f['final']['val_f']:.4f} ({f['chosen']:.4f}, {'+'.join(map(str, f['final']['predict_sizes']))} px)"
            if f["final"] and f["chosen"] is not None else "-" for f in flows],
        "`train.submission check`": [f["check"] or "not run" for f in flows],
    }
    lines = ["| | " + " | ".join(f["label"] for f in flows) + " |", "|---" * (len(flows) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in rows.items()]
    per_class = [{c["id"]: c for c in f["final"].get("per_class", [])} for f in flows]
    if all(per_class):
        lines += ["", "| class | val images | " + " | ".join(f["label"] for f in flows) + " |",
                  "|---|---" + "|---" * len(flows) + "|"]
        for cid, c in sorted(per_class[0].items()):
            lines.append(f"| {cid} {c['name']} | {c['images']} | "
                         + " | ".join("-" if p.get(cid, {}).get("f") is None else f"{p[cid]['f']:.4f}"
                                      for p in per_class) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m bench.flow_rows", __doc__)
    g = p.add_argument_group("flows")
    g.add_argument("outs", nargs="+", type=Path, metavar="OUT", help="bench/flow.sh output folders, one per flow")
    args = p.parse_args(argv)
    missing = [str(o) for o in args.outs if not (o / "flow.json").exists()]
    if missing:
        p.error(f"not a bench/flow.sh folder (no flow.json): {', '.join(missing)}")
    try:
        flows = [flow(o) for o in args.outs]
    except StorageError as e:
        p.error(f"a flow's study cannot be read (did its search start?): {e}")
    print("\n".join(table(flows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
