"""`search.run --time-budget` in the study: the budget record, the questions the proxy workers and the rung ask
before they start something, and the plan written at the search's end (the arithmetic is `search.plan`'s)."""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna

from search.plan import (
    BUDGET_ATTR,
    PLAN_ATTR,
    Ladder,
    final_plan,
    initial_plan,
    left_s,
    load_ladder,
    made_under,
    margin,
    may_start_trial,
    planned_gains,
    rung_gate,
    rung_run_estimate,
    say_minutes,
)
from search.rung import (
    MINUTES_ATTR,
    STAGE_ATTR,
    current_setting,
    pick_of,
    reference,
    run_order,
    rung_records,
    within,
)


def device_kind(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


def ladder_of(budget: dict) -> Ladder:
    return load_ladder(budget["device"])


def new_budget(seconds: float, device: str, entries: int, rung_k: int, workers: int) -> dict:
    """A budget starting now, with its up-front plan (a PlanError when it is too small or nothing is measured)."""
    ladder = load_ladder(device_kind(device))
    planned = initial_plan(ladder, seconds, entries, rung_k, workers)
    default = ladder.default_row
    return {"seconds": seconds, "started": time.time(), "device": ladder.device, **planned,
            "final_schedule": ladder.default,  # the rung predicts each pick's final at it: its speed against the row
            "final_minutes": planned["final_reserve_s"] / 60 - default.after_minutes}


def describe(budget: dict) -> str:
    started = time.strftime("%H:%M", time.localtime(budget["started"]))
    until = time.strftime("%H:%M", time.localtime(budget["started"] + budget["proxy_until"]))
    return (f"time budget {say_minutes(budget['seconds'])} from {started} for this search and train.final --study "
            f"best: "
            f"proxy trials until about {until}, then "
            + (f"the second rung ({budget['rung_k']} pick{'s' if budget['rung_k'] > 1 else ''}, about "
               f"{say_minutes(budget['rung_reserve_s'])}), then "
               if budget["rung_k"] else "no second rung (the budget is short: the proxy's best is retrained), ")
            + f"the final (planned {budget['final_target']}, about "
            f"{say_minutes(budget['final_reserve_s'])}); {say_minutes(left_s(budget))} left")


def finished_durations(study: optuna.Study, budget: dict) -> list[float]:
    """Seconds of the proxy trials finished since the budget started (what one more will take is read from them)."""
    return [t.duration.total_seconds() for t in study.get_trials(deepcopy=False)
            if t.duration is not None and t.datetime_start.timestamp() >= budget["started"] - 1]


def may_take_another(study: optuna.Study, budget: dict | None) -> bool:
    """Whether a worker may start one more proxy trial under the budget (always without one; always while a
    portfolio entry waits: the plan reserved their time, and the rung's reference is one of them)."""
    if budget is None or any("portfolio" in t.user_attrs for t in study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.WAITING,))):
        return True
    return may_start_trial(budget, finished_durations(study, budget), ladder_of(budget))


def proxy_end_note(budget: dict, ran: int) -> str:
    """Why the proxy phase ended before --trials under the budget."""
    end = time.strftime("%H:%M", time.localtime(budget["started"] + budget["proxy_until"]))
    head = f"time budget: the proxy phase ends here ({ran} trials in this command; the plan ended it at {end})"
    if left_s(budget) <= 0:
        return head + "; the budget is spent: give --time-budget again for a new one"
    return head + f"; {say_minutes(left_s(budget))} left for the rung and the final"


def rung_limit(study: optuna.Study, budget: dict, k: int) -> float:
    """Minutes the final can take at the device's default schedule once the rung's remaining runs are done: the
    rung's time limit for picks (`--final-minutes`) under the budget."""
    ladder = ladder_of(budget)
    default = ladder.default_row
    records, ref = rung_records(study), reference(study)
    runs_left = max(0, (k + 2 if k else 0) - len(records))
    ref_left = int(runs_left > 0 and ref is not None and ref.number not in records)  # held at its own figure
    held = ref_left * ladder.rung_run_seconds + (runs_left - ref_left) * ladder.pick_run_seconds
    left = left_s(budget) - margin(budget["seconds"]) - held
    return max(0.0, left / 60 - default.after_minutes)


def network_of(study: optuna.Study, number: int) -> int:
    """The trial whose network trial `number` trains: a recipe stage's network trial, else itself."""
    return study.trials[number].user_attrs.get(STAGE_ATTR, {}).get("network_of", number)


def foretold_run(study: optuna.Study, ladder: Ladder, number: int, ref: optuna.trial.FrozenTrial | None,
                 ref_seconds: float | None) -> float:
    """What the gate foretells for trial `number`'s rung run (`rung_run_estimate`), from its network's proxy images/s
    and the reference's, and the reference's rung seconds once its run is done (`ref_seconds`, else None)."""
    ips = study.trials[network_of(study, number)].user_attrs.get("train_images_per_s")
    return rung_run_estimate(ladder, ref_seconds, ref.user_attrs.get("train_images_per_s") if ref is not None else None,
                             ips, pick=ref is None or number != ref.number)


def gate(study: optuna.Study, budget: dict) -> Callable[[optuna.trial.FrozenTrial], str | None]:
    """What the rung asks before each run: why it must not start under the budget (None: it may)."""
    ladder = ladder_of(budget)

    def ask(trial: optuna.trial.FrozenTrial) -> str | None:
        ref = reference(study)
        ref_record = rung_records(study).get(ref.number) if ref is not None else None
        return rung_gate(budget, ladder, foretold_run(study, ladder, trial.number, ref,
                                                      ref_record and ref_record.get("seconds")))
    return ask


def record_plan(study: optuna.Study, budget: dict, fallback: int | None) -> dict:
    """The plan at the search's end: for each pick at the rung (else `fallback`, the proxy's best) the schedule its
    final gets in the time left; the study records it and the rung's limit for picks becomes the plan's."""
    ladder = ladder_of(budget)
    records = rung_records(study)
    picks = {n: r.get("final_minutes") for n, r in records.items()} or (
        {fallback: None} if fallback is not None else {})
    plan = final_plan(ladder, budget, picks)
    study.set_user_attr(PLAN_ATTR, plan)
    study.set_user_attr(MINUTES_ATTR, picks_limit(plan, ladder))
    return plan


def close_plan(study: optuna.Study, budget: dict, trained: bool, fallback: int | None) -> None:
    """At the search's end under `budget`: record the plan when this invocation trained something or the study holds
    none made under this budget; else keep the recorded plan and put back its limit for picks (the rung set the
    limit from the time left when it began, none once the budget is spent, and `train.final --study best` reads it).
    A kept plan without a schedule for a pick at the rung (an invocation stopped after training it) gets one, planned
    in the kept plan's time: the time left now may be none, and re-planning from it would drop the limit."""
    planned = study.user_attrs.get(PLAN_ATTR) or {}
    if trained or not made_under(planned, budget):
        record_plan(study, budget, fallback)
        return
    ladder = ladder_of(budget)
    missing = {n: r.get("final_minutes") for n, r in rung_records(study).items()
               if str(n) not in planned.get("schedules", {})}
    if missing:
        then = budget["started"] + budget["seconds"] - planned["minutes_left"] * 60  # when the kept plan was made
        added = final_plan(ladder, budget, missing, now=then)["schedules"]
        planned = {**planned, "schedules": {**planned["schedules"], **added}}
        study.set_user_attr(PLAN_ATTR, planned)
    study.set_user_attr(MINUTES_ATTR, picks_limit(planned, ladder))


def picks_limit(plan: dict, ladder: Ladder) -> float:
    """The rung's limit for picks under a plan: a pick's final at the default schedule, training and scoring, must fit
    in the minutes the plan has for the final."""
    return max(0.0, plan["planned_from"] - ladder.default_row.after_minutes)


def skipped_runs(study: optuna.Study) -> dict[int, dict]:
    """The rung runs at the study's rung setting that a time budget did not let start."""
    setting = current_setting(study)
    suffix = f":{setting.id}" if setting else None
    return {int(k.split(":")[1]): v for k, v in study.user_attrs.items()
            if suffix and k.startswith("rung2:") and k.endswith(suffix) and "skipped" in v}


def plan_lines(study: optuna.Study) -> list[str]:
    """The summary's lines for the recorded plan (none without a budget)."""
    budget, plan = study.user_attrs.get(BUDGET_ATTR), study.user_attrs.get(PLAN_ATTR)
    if not budget or not plan:
        return []
    lines = [f"time budget {say_minutes(budget['seconds'])}: {say_minutes(plan['minutes_left'] * 60)} left at the "
             f"search's end for train.final --study best; its schedule by the ladder ({plan['ladder']}), per pick:"]
    lines += [f"  #{n}: {p['schedule']} (about {p['minutes']:.0f} min; ladder mean val F {p['val_f_mean']:.4f})"
              for n, p in plan["schedules"].items()]
    skipped = sorted(n for n, r in skipped_runs(study).items() if r.get("budget_started") == budget["started"])
    if skipped:
        lines.append(f"  not trained at the rung for the time budget: {', '.join(f'#{n}' for n in skipped)}; run "
                     f"the command again with --time-budget to train them in a new budget")
    return lines


def choose_pick(records: dict[int, dict], made: dict, budget: dict, ladder: Ladder) -> int | None:
    """The pick train.final would take from these rung records under the plan `made` (as search.rung.best_by_rung
    does): among those predicted within the plan's minutes for the final, by rung-2 F plus the ladder's gain of each
    one's planned schedule."""
    if not records:
        return None
    kept = within(records, picks_limit(made, ladder))
    return pick_of(kept, planned_gains(made, budget))


def replay(study: optuna.Study, budget_s: float, workers: int, rung_k: int = 3) -> dict:
    """What the planner would do with `budget_s` on a finished study, planning only: the study's proxy trials in
    their order and with their durations, run by `workers` processes while one more fits; the rung's recorded runs in
    the live rung's order (`run_order`), each only when the live gate would start it (from its estimate before the
    run), taking its recorded seconds; then the final's schedule for the rung's pick. The picks are the study's own (a
    shorter proxy phase could have promoted others: the replay cannot know which)."""
    ladder = load_ladder(device_kind(study.user_attrs.get("proxy", {}).get("device", "cpu")))
    entries = sum("portfolio" in t.user_attrs for t in study.trials)
    up_front = initial_plan(ladder, budget_s, entries, rung_k, workers)
    budget = {"seconds": budget_s, "started": 0.0, **up_front}
    proxy = [t for t in study.trials if t.duration is not None and STAGE_ATTR not in t.user_attrs]  # number order
    free, done, ran = [0.0] * workers, [], 0
    for seconds in (t.duration.total_seconds() for t in proxy):  # each goes to the worker that is free first
        w = min(range(workers), key=lambda i: free[i])
        if not may_start_trial(budget, done, ladder, now=free[w]):
            break
        free[w] += seconds
        done.append(seconds)
        ran += 1
    now = max(free) if ran else 0.0
    replayed = proxy[:ran]  # a recipe stage or an unfinished trial between them shifts no position
    numbers = {t.number for t in replayed}

    def proxied(n: int) -> bool:  # its network had its proxy trial within the replayed proxy phase
        return network_of(study, n) in numbers

    records = {n: r for n, r in rung_records(study).items() if proxied(n)}
    ref = reference(study)
    live = [n for n in run_order(study) if n in records]  # as the live rung took them
    order = live + sorted(set(records) - set(live))
    trained = {}
    for n in order[:up_front["rung_k"] + 2 if up_front["rung_k"] else 0]:
        ref_seconds = trained[ref.number]["seconds"] if ref is not None and ref.number in trained else None
        estimate = foretold_run(study, ladder, n, ref, ref_seconds)  # what the live gate would have foretold; the
        if rung_gate(budget, ladder, estimate, now=now) is None:  # clock runs the recorded seconds
            now += records[n]["seconds"]
            trained[n] = records[n]
    # what train.final retrains without rung runs: the best complete trial (pruned ones carry a value too)
    proxied_best = max((t for t in replayed if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value,
                       default=None)
    fallback = proxied_best.number if proxied_best is not None else 0
    made = final_plan(ladder, budget, {n: r.get("final_minutes") for n, r in trained.items()} or {fallback: None},
                      now=now)
    pick = choose_pick(trained, made, budget, ladder)
    entry = made["schedules"][str(pick if pick is not None else fallback)]
    return {"budget_s": budget_s, "proxy_trials": ran, "proxy_s": max(free) if ran else 0.0,
            "rung_runs": len(trained), "search_s": now, "pick": pick if pick is not None else fallback,
            "by": "rung" if pick is not None else "proxy", **entry,
            "final_target": up_front["final_target"], "minutes_left": made["minutes_left"]}


def main(argv: list[str] | None = None) -> int:
    import sys

    from search.plan import PlanError, parse_duration
    from search.storage import StorageError, load_existing_study
    from train.cli import parser

    p = parser("python -m search.timebudget", "`python -m search.timebudget --study S --storage F --budgets 1h 3h`: "
               "the plans a time budget would make on a finished study (planning only, no training).")
    g = p.add_argument_group("study and budgets")
    g.add_argument("--study", required=True, help="a finished study (proxy trials and a second rung)")
    g.add_argument("--storage", required=True, help="its Optuna storage URL or journal file")
    g.add_argument("--budgets", nargs="+", default=["1h", "2h", "3h", "6h"], help="budgets to plan")
    g.add_argument("--workers", type=int, default=2, help="search processes the replay runs the proxy trials on")
    args = p.parse_args(argv)
    try:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        study = load_existing_study(args.storage, args.study)
        rows = []
        for text in args.budgets:
            try:
                rows.append(replay(study, parse_duration(text), args.workers))
            except PlanError as e:
                rows.append({"budget_s": parse_duration(text), "refused": str(e)})
    except (ValueError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("| budget | proxy trials (time) | rung runs | search | pick | final's schedule (predicted) | whole flow |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "refused" in r:
            print(f"| {say_minutes(r['budget_s'])} | refused: {r['refused']} | | | | | |")
            continue
        whole = r["search_s"] / 60 + r["minutes"]
        pick = f"#{r['pick']}" + (" (the proxy's best: no rung run)" if r["by"] == "proxy" else "")
        print(f"| {say_minutes(r['budget_s'])} | {r['proxy_trials']} ({r['proxy_s'] / 60:.0f} min) | {r['rung_runs']} "
              f"| {r['search_s'] / 60:.0f} min | {pick} | {r['schedule']} ({r['minutes']:.0f} min; ladder mean "
              f"{r['val_f_mean']:.4f}) | {whole:.0f} min |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
