"""The time budget (search.plan, search.run --time-budget): the ladder's rule, the up-front plan and its refusals,
the gates, and a whole tiny flow that ends within its budget across a kill."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import REPO, run_cli

from search import plan
from search.plan import Ladder, PlanError, Row

FIXTURES = REPO / "tests" / "fixtures"


def _ladder(*rows: tuple[str, tuple[float, ...], float, float], default: str = "a") -> Ladder:
    return Ladder("cpu", "net", tuple(Row(s, f, m, a, "test") for s, f, m, a in rows), default, 300.0, 30.0,
                  Path("cpu.json"))


LADDER = _ladder(("a", (0.815, 0.817), 30, 3), ("b", (0.818, 0.820), 45, 3), ("c", (0.825, 0.827), 70, 5),
                 ("d", (0.8255, 0.8275), 100, 6))


@pytest.mark.parametrize("text, seconds", [("3h", 10800), ("150m", 9000), ("5400s", 5400), ("1h30m", 5400),
                                           ("2.5h", 9000), ("90 m", 5400)])
def test_durations_are_read_as_people_write_them(text, seconds):
    assert plan.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["3", "abc", "-1h", "0m", "3d", "", "h", "31d", "nan", "infh"])
def test_durations_that_make_no_sense_are_refused(text):
    with pytest.raises(ValueError, match="--time-budget"):
        plan.parse_duration(text)


def test_the_ladders_rule_takes_the_best_mean_that_fits_and_the_cheaper_of_a_tie():
    assert LADDER.spread == pytest.approx(0.002)
    assert plan.choose_row(LADDER, 32) is None  # a (33 min with its after-training part) does not fit
    assert plan.choose_row(LADDER, 40).schedule == "a"
    assert plan.choose_row(LADDER, 60).schedule == "b"  # +0.003 over a: more than the spread
    assert plan.choose_row(LADDER, 200).schedule == "c"  # d is 0.0005 above c, inside the spread: the cheaper
    assert plan.choose_row(LADDER, 60, factor=1.5).schedule == "a"  # a pick 1.5x slower: b takes 72 min


def test_a_budget_too_small_for_the_cheapest_final_is_refused_naming_the_smallest():
    with pytest.raises(PlanError, match=r"too small here.*give at least (\d+)m") as e:
        plan.initial_plan(LADDER, 30 * 60, entries=4, rung_k=3)
    smallest = int(str(e.value).rsplit("at least ", 1)[1].rstrip("m"))
    plan.initial_plan(LADDER, smallest * 60 + 60, entries=4, rung_k=3)  # that much works


def test_a_short_budget_promotes_fewer_picks_and_a_long_one_a_longer_final():
    short = plan.initial_plan(LADDER, 50 * 60, entries=4, rung_k=3)
    assert short["rung_k"] < 3 and short["final_target"] == "a" and short["proxy_until"] >= 0
    long = plan.initial_plan(LADDER, 6 * 3600, entries=4, rung_k=3)
    assert long["rung_k"] == 3 and long["final_target"] == "c"
    # the proxy phase ends where the rung's and the final's reserves begin
    assert long["proxy_until"] == pytest.approx(6 * 3600 - plan.margin(6 * 3600) - long["rung_reserve_s"]
                                                - long["final_reserve_s"])


def test_one_more_proxy_trial_starts_only_when_it_ends_in_time():
    budget = {"started": 1000.0, "seconds": 3600.0, "proxy_until": 600.0}
    durations = [20.0] * 9 + [90.0]  # the 90th percentile is the slow one
    assert plan.trial_estimate(durations, LADDER) == 90.0
    assert plan.may_start_trial(budget, durations, LADDER, now=1000.0 + 600 - 89) is False
    assert plan.may_start_trial(budget, durations, LADDER, now=1000.0 + 600 - 90)
    assert plan.trial_estimate([], LADDER) == LADDER.proxy_trial_seconds


def test_the_final_plan_gives_each_pick_the_schedule_its_speed_allows():
    budget = {"started": 0.0, "seconds": 3 * 3600.0}
    now = 3 * 3600.0 - 80 * 60  # 80 minutes left
    picks = {0: 30.0, 7: 60.0}  # #7 trains twice as slowly as the ladder's network at its default row
    made = plan.final_plan(LADDER, budget, picks, now=now)
    assert made["minutes_left"] == pytest.approx(80.0)
    assert made["schedules"]["0"]["schedule"] == "c" and made["schedules"]["7"]["schedule"] == "a"
    assert made["schedules"]["7"]["minutes"] == pytest.approx(66.0)


def test_the_replay_picks_as_train_final_does_by_what_each_pick_can_afford():
    from search.timebudget import choose_pick

    budget = {"started": 0.0, "seconds": 3 * 3600.0}
    records = {0: {"f": 0.700, "final_minutes": 30.0}, 7: {"f": 0.705, "final_minutes": 60.0},
               9: {"f": 0.800, "final_minutes": 500.0}}  # #9: its final at the default cannot fit: left out
    picks = {n: r["final_minutes"] for n, r in records.items()}
    made = plan.final_plan(LADDER, budget, picks, now=3 * 3600.0 - 80 * 60)  # 80 minutes left
    assert plan.planned_gains(made, budget) == pytest.approx({0: 0.010, 7: 0.0, 9: 0.0})
    assert choose_pick(records, made, budget, LADDER) == 0  # 0.700 + 0.010 (c over a) over 0.705 + 0 (a)
    records[7]["f"] = 0.711
    assert choose_pick(records, made, budget, LADDER) == 7
    assert plan.planned_gains(made, {**budget, "started": 1.0}) == {}  # a plan of another budget counts for nothing


def test_a_ladder_without_measured_rows_refuses_a_budget(tmp_path):
    with pytest.raises(PlanError, match="has no measured rows yet"):
        plan.load_ladder("cuda")  # the 512-px ladder waits for a GPU
    assert plan.load_ladder("cpu").rows  # the CPU ladder plans


def _flow_args(data: Path, storage: str, art: Path, *extra: str) -> list[str]:
    return ["search.run", "--data", str(data), "--storage", storage, "--study", "t", "--artifact-dir", str(art),
            "--proxy-size", "32", "--proxy-epochs", "2", "--subset", "1", "--device", "cpu", "--rung", "1",
            "--rung-size", "32:1", "--portfolio", str(_portfolio(art.parent)),
            *extra]  # no --trials: the budget decides


def _portfolio(folder: Path) -> Path:
    from tests.test_search import one_entry_portfolio

    return one_entry_portfolio(folder, "dw_unet")


def test_a_budget_too_small_is_refused_before_anything_is_written(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("FACENAS_LADDERS", str(FIXTURES / "ladders"))
    res = run_cli(*_flow_args(tiny_data, str(tmp_path / "s.journal"), tmp_path / "art", "--time-budget", "20s"),
                  cwd=tmp_path)
    assert res.returncode == 2 and "--time-budget 20 s: too small here" in res.stderr, res.stderr
    assert "give at least 2m" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "s.journal").exists() and not (tmp_path / "art").exists()
    bare = run_cli("search.run", "--storage", str(tmp_path / "s.journal"), "--device", "cpu", "--time-budget", "20s",
                   cwd=tmp_path)  # no --data: the refusal comes before the synthetic faces would be generated
    assert bare.returncode == 2 and "too small here" in bare.stderr and not (tmp_path / "data").exists()
    replay = run_cli("search.timebudget", "--study", "t", "--storage", str(tmp_path / "none.journal"), "--workers",
                     "0", cwd=tmp_path)
    assert replay.returncode == 2 and replay.stderr.startswith("error: --workers must be >= 1"), replay.stderr
    res = run_cli(*_flow_args(tiny_data, str(tmp_path / "s.journal"), tmp_path / "art", "--time-budget", "2h",
                              "--final-minutes", "30"), cwd=tmp_path)
    assert res.returncode == 2 and "the budget's plan sets the final's minutes" in res.stderr


def test_a_budgeted_flow_ends_in_time_across_a_kill_and_its_final_follows_the_plan(tiny_data, tmp_path):
    """The search is killed mid-proxy and run again (without the flag: the same budget, the same clock); then
    train.final --study best follows the plan; the two commands end within the budget + 5 %."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "FACENAS_LADDERS": str(FIXTURES / "ladders")}
    storage, art, budget_s = str(tmp_path / "s.journal"), tmp_path / "art", 120.0
    argv = _flow_args(tiny_data, storage, art)
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", *argv, "--time-budget", "2m"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from tests.test_reliability import load, wait_mid_trial

    wait_mid_trial(storage, "t", min_number=1)  # a proposal (the portfolio's entry is #0)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    assert "time budget 2 min 00 s from" in out and "of the budget left" in out, out[-2000:]
    before = load(storage, "t").user_attrs[plan.BUDGET_ATTR]
    res = subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "search: time budget: the proxy phase ends here" in res.stdout  # --trials unset: the budget ended it
    study = load(storage, "t")
    assert study.user_attrs[plan.BUDGET_ATTR] == before  # the resume kept the budget and its start
    made = study.user_attrs[plan.PLAN_ATTR]
    assert made["budget_started"] == before["started"] and "time budget 2 min 00 s:" in res.stdout
    final = subprocess.run([sys.executable, "-m", "train.final", "--storage", storage, "--study", "t", "--device",
                            "cpu", "--out", str(tmp_path / "final")], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    elapsed = time.time() - t0
    assert final.returncode == 0, final.stderr[-3000:]
    first = final.stdout.splitlines()[0]
    pick = first.split(" trial ")[1].split(",")[0]
    assert f"following the study's time-budget plan: {made['schedules'][pick]['schedule']}" in first, first
    left = r"\[(\d+ (s|min \d\d s) of the budget left|the time budget is spent)\]"
    assert re.search(rf"^epoch 1/\d+ at .* s {left}$", final.stdout, re.M), final.stdout
    assert elapsed <= budget_s * 1.05, (elapsed, res.stdout[-3000:])
    _check_flow_rows(tmp_path, storage, made)
    again = subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and load(storage, "t").user_attrs[plan.PLAN_ATTR] == made  # nothing new: kept
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in study.trials]


def _check_flow_rows(out: Path, storage: str, made: dict) -> None:
    """bench.flow_rows on the flow just run (its folder laid out as bench/flow.sh leaves it): the plan, the phases
    against the budget, the shipped trial and its val F."""
    import json

    from bench.flow_rows import flow, table

    (out / "flow.json").write_text(json.dumps({"study": "t", "storage": storage, "seed": 0, "budget": "2m"}))
    t0 = int(made["budget_started"]) + 1  # a search, a final stopped by SIGTERM and resumed 10 s later, the check
    (out / "times.txt").write_text(f"search start {t0}\nsearch end {t0 + 50} rc 0\nfinal start {t0 + 50}\n"
                                   f"final end {t0 + 75} rc 143\nfinal start {t0 + 85}\nfinal end {t0 + 110} rc 0\n"
                                   f"check start {t0 + 110}\ncheck end {t0 + 110} rc 0\n")
    text = "\n".join(table([flow(out)]))
    final = json.loads((out / "final" / "final.json").read_text())
    (pick, entry), = made["schedules"].items()
    assert f"#{pick} {entry['schedule']}" in text and f"| shipped | #{final['trial']} at {final['schedule']} |" in text
    assert f"| {final['val_f']:.4f} (" in text and "| the search | 50 s |" in text, text
    assert "| train.final | 50 s |" in text, text  # the gap between its two invocations is not the final's
    assert ("| **the whole flow** (of the budget) | 1 min 40 s (83%); on the budget's clock 1 min 50 s (92%) |"
            in text), text
    assert "| 0 background | " in text  # the per-class table


def test_flow_rows_counts_a_step_stopped_untimed_and_only_whole_invocations(tmp_path):
    from bench.flow_rows import phase_seconds

    (tmp_path / "times.txt").write_text("search start 100\nsearch end 160 rc 0\nfinal start 160\n"  # killed: no end
                                        "final start 500\nfinal end 530 rc 0\n")
    steps = phase_seconds(tmp_path)
    assert steps["search"]["seconds"] == 60 and steps["search"]["untimed"] == 0
    assert steps["final"]["seconds"] == 30 and steps["final"]["untimed"] == 1 and steps["final"]["last"] == 530
    assert phase_seconds(tmp_path / "none") is None


def test_a_short_budget_turns_the_rung_off_and_reserves_nothing_for_it():
    short = plan.initial_plan(LADDER, 45 * 60, entries=4, rung_k=3)
    assert short["rung_k"] == 0 and short["rung_reserve_s"] == 0.0
    from search.timebudget import describe

    said = describe({**short, "seconds": 45 * 60.0, "started": time.time()})
    assert "no second rung" in said and "picks" not in said


def test_every_plan_keeps_a_proxy_phase_worth_its_rung():
    """More budget never leaves the search with the portfolio alone (the review found 1 h planning 90 s of proxy
    trials, the portfolio's, while 55 min planned 14 min)."""
    for workers in (1, 2):
        for minutes in range(40, 400, 5):
            try:
                made = plan.initial_plan(LADDER, minutes * 60, entries=4, rung_k=3, workers=workers)
            except PlanError:
                continue
            floor = plan.proxy_minimum(LADDER, 4, made["rung_k"], workers)
            assert made["proxy_until"] >= floor - 1e-6, (minutes, workers, made)


def test_a_run_the_budget_skipped_is_trained_under_a_new_budget(monkeypatch):
    import search.rung as rung_mod
    from search.rung import RungSetting, rung_records
    from tests.test_rung import _fake_train_at, _lever_study

    study = _lever_study()
    study.set_user_attr(plan.BUDGET_ATTR, {"started": 1.0})
    calls = []
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at(calls, {}))
    setting = RungSetting(2, "32:2", 1.0, "last_f", 0)
    lines = []
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=lines.append,
                      gate=lambda trial: "the time budget: test" if trial.number == 1 else None)
    assert 1 not in calls and 1 not in rung_records(study) and not rung_mod.unfinished(study, setting)
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=lines.append)  # the same budget: still done
    assert 1 not in calls and any("not trained under this time budget" in line for line in lines)
    study.set_user_attr(plan.BUDGET_ATTR, {"started": 2.0})  # --time-budget given again
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=lines.append)
    assert 1 in calls and 1 in rung_records(study)


def test_a_resumed_budget_keeps_the_rung_flag_and_refuses_final_minutes(tmp_path):
    import argparse

    from search.run import Settings, apply_budget

    budget = {"rung_k": 1, "final_schedule": "32:2"}
    s = Settings(data=tmp_path, study="t", storage="x", artifact_dir=tmp_path, proxy_size=32, proxy_epochs=1,
                 subset=1.0, sampler="tpe", pruner="none", seed=0, device="cpu", loader_workers=0, rung_k=3)
    s.rung_k = 0  # settings_from_args took --rung 0
    apply_budget(s, argparse.Namespace(final_minutes=None, rung=0), budget)
    assert s.rung_k == 0 and s.final_schedule == "32:2"  # --rung 0 leaves the rung, as without a budget
    apply_budget(s, argparse.Namespace(final_minutes=None, rung=None), budget)
    assert s.rung_k == 1
    with pytest.raises(ValueError, match="--final-minutes with a time budget"):
        apply_budget(s, argparse.Namespace(final_minutes=30.0, rung=None), budget)


def test_the_portfolio_always_trains_and_a_spent_budget_says_so():
    from search.timebudget import may_take_another, proxy_end_note

    spent = {"started": time.time() - 3600, "seconds": 600.0, "proxy_until": 60.0, "device": "cpu"}
    study = optuna.create_study()
    study.enqueue_trial({"x": 1}, user_attrs={"portfolio": "a"})
    assert may_take_another(study, spent)  # its time was reserved: it trains even late
    study.tell(study.ask(), 0.5)
    assert not may_take_another(study, spent)
    assert "the budget is spent: give --time-budget again" in proxy_end_note(spent, 0)


SLOW_PICKS = Ladder("cpu", "net", LADDER.rows, "a", 300.0, 30.0, Path("cpu.json"), rung_pick_seconds=390.0)


def test_the_rung_reserves_the_picks_runs_at_the_picks_figure():
    assert plan.rung_reserve(SLOW_PICKS, 3) == 300.0 + 4 * 390.0  # the reference's run, three picks, the stage's
    assert plan.rung_reserve(LADDER, 3) == 5 * 300.0  # a ladder without a pick figure: the reference's for all
    assert plan.rung_reserve(SLOW_PICKS, 0) == 0.0
    assert plan.rung_run_estimate(SLOW_PICKS, None, 50.0, 50.0, pick=False) == 300.0
    assert plan.rung_run_estimate(SLOW_PICKS, None, 50.0, 50.0) == 390.0  # as fast by proxy speed: the pick floor
    assert plan.rung_run_estimate(SLOW_PICKS, 330.0, 50.0, 25.0) == 660.0  # twice as slow: by speed, from the ref
    assert plan.rung_run_estimate(SLOW_PICKS, 330.0, 50.0, 50.0) == pytest.approx(390.0 * 1.1)  # floor scaled too
    assert plan.rung_run_estimate(LADDER, None, 50.0, 100.0) == 300.0  # without a pick figure: the reference's run


@pytest.mark.parametrize("actual", [300.0, 390.0, 430.0])
def test_the_target_final_is_still_affordable_after_the_rung(actual):
    """The rung's runs, each started only when the gate lets it, leave the plan's target final whatever the picks
    take (the 3-hour CPU flow's picks ran 1.0x to 1.45x the reference's rung run: its final fell to a cheaper row
    when the gate protected only the cheapest final)."""
    budget_s = 3 * 3600.0
    up_front = plan.initial_plan(SLOW_PICKS, budget_s, entries=4, rung_k=3)
    assert up_front["final_target"] == "c" and up_front["rung_k"] == 3
    budget = {"seconds": budget_s, "started": 0.0, **up_front}
    now, ran = up_front["proxy_until"], 0  # the proxy phase ends on time
    for number in range(up_front["rung_k"] + 2):  # the reference first, then the picks, each `actual` s at most
        seconds = 300.0 if number == 0 else actual
        estimate = plan.rung_run_estimate(SLOW_PICKS, 300.0 if number else None, 50.0, 50.0, pick=number > 0)
        if plan.rung_gate(budget, SLOW_PICKS, estimate, now=now) is None:
            now, ran = now + seconds, ran + 1
    made = plan.final_plan(SLOW_PICKS, budget, {0: 30.0}, now=now)
    assert made["schedules"]["0"]["schedule"] == "c", (ran, made)
    assert ran == (5 if actual <= 390.0 else 4)  # the runs the reserve holds; one skipped when they overrun it


def test_a_rung_run_never_costs_the_final_a_step_once_the_target_is_out_of_reach():
    budget = {"seconds": 3 * 3600.0, "started": 0.0, "final_target": "c"}
    m = plan.margin(budget["seconds"])
    target_start = budget["seconds"] - m - 75 * 60  # c (75 min with its after-training part) must start here
    assert plan.protected_row(budget, SLOW_PICKS, now=target_start - 400).schedule == "c"
    assert plan.rung_gate(budget, SLOW_PICKS, 390.0, now=target_start - 400) is None
    assert "before the final (c, about 75 min)" in plan.rung_gate(budget, SLOW_PICKS, 390.0, now=target_start - 300)
    # within half a margin past c's start, final_plan still plans c (from the time left less half the margin): the
    # gate keeps protecting it
    assert plan.protected_row(budget, SLOW_PICKS, now=target_start + 60).schedule == "c"
    assert plan.rung_gate(budget, SLOW_PICKS, 390.0, now=target_start + 60) is not None
    made = plan.final_plan(SLOW_PICKS, budget, {0: 30.0}, now=target_start + 60)
    assert made["schedules"]["0"]["schedule"] == "c"
    late = target_start + m / 2 + 12  # the proxy phase overran: c is out of reach, b (48 min) is what is affordable
    assert plan.final_plan(SLOW_PICKS, budget, {0: 30.0}, now=late)["schedules"]["0"]["schedule"] == "b"
    assert plan.protected_row(budget, SLOW_PICKS, now=late).schedule == "b"
    assert plan.rung_gate(budget, SLOW_PICKS, 390.0, now=late) is None  # 27 min to spare before b
    assert "before the final (b," in plan.rung_gate(budget, SLOW_PICKS, 390.0, now=late + 26 * 60)
    assert plan.protected_row({**budget, "final_target": None}, SLOW_PICKS, now=late).schedule == "a"  # an old budget


def test_the_rungs_limit_for_picks_holds_the_reference_at_its_figure_and_the_rest_at_the_picks():
    from search.timebudget import rung_limit
    from tests.test_rung import _lever_study

    study = _lever_study()  # #2 the reference, no rung run yet
    ladder = plan.load_ladder("cpu")
    budget = {"seconds": 3 * 3600.0, "started": time.time(), "device": "cpu"}
    runs = ladder.rung_run_seconds + 4 * ladder.pick_run_seconds  # the reference's, three picks', the stage's
    expected = (plan.left_s(budget) - plan.margin(budget["seconds"]) - runs) / 60 - ladder.default_row.after_minutes
    assert rung_limit(study, budget, 3) == pytest.approx(expected, abs=0.05)
    assert rung_limit(study, budget, 0) == pytest.approx(expected + runs / 60, abs=0.05)  # no rung: nothing held


COMMITTED = REPO / "docs" / "studies" / "cpu-flow-s0-lever.journal"


@pytest.mark.skipif(not COMMITTED.exists(), reason="the committed flow study docs/studies/cpu-flow-s0-lever.journal")
def test_the_replay_gates_rung_runs_on_what_the_live_gate_foretells(monkeypatch):
    """The replay asks the gate with each run's estimate before it ran (not its recorded seconds), and without rung
    runs ships the proxy's best of the trials it replayed."""
    import search.timebudget as tb
    from search.rung import reference, rung_records
    from search.storage import load_existing_study

    study = load_existing_study(str(COMMITTED), "cpu-flow-s0")
    asked = []
    real_gate = tb.rung_gate
    monkeypatch.setattr(tb, "rung_gate", lambda budget, ladder, run_s, now=None: asked.append(run_s)
                        or real_gate(budget, ladder, run_s, now=now))
    made = tb.replay(study, 3 * 3600.0, workers=2)
    ladder, ref, records = tb.ladder_of({"device": "cpu"}), reference(study), rung_records(study)
    assert made["by"] == "rung" and made["rung_runs"] == len(asked) == len(records)
    ips = {n: study.trials[tb.network_of(study, n)].user_attrs["train_images_per_s"] for n in records}
    order = sorted(records, key=lambda n: (n != ref.number, n))
    foretold = [plan.rung_run_estimate(ladder, records[ref.number]["seconds"] if n != ref.number else None,
                                       ips[ref.number], ips[n], pick=n != ref.number) for n in order]
    assert asked == pytest.approx(foretold)
    assert asked != pytest.approx([records[n]["seconds"] for n in order])  # the recorded seconds were not asked
    short = tb.replay(study, 3600.0, workers=2)  # 1 hour: no rung
    assert short["by"] == "proxy" and short["rung_runs"] == 0
    replayed = [t for t in study.trials[:short["proxy_trials"]] if t.value is not None]
    assert short["pick"] == max(replayed, key=lambda t: t.value).number


BUDGETED = REPO / "docs" / "studies" / "budget-flow-s1.journal"


@pytest.mark.skipif(not BUDGETED.exists(), reason="the committed flow study docs/studies/budget-flow-s1.journal")
def test_the_replay_takes_rung_runs_in_the_live_rungs_order_a_redirected_pick_at_its_place():
    """Seed 1's budgeted flow (search.log): the reference #0, then the proxy's best #229 redirected to #0's recipe as
    #255, then #194; the gate refused the rest. Taken by number (#194 before #255), the replay ran out of time for
    #255 and shipped #0 at 320:12 where the live flow shipped #255 at 128:24,256:18."""
    from search.rung import run_order
    from search.storage import load_existing_study
    from search.timebudget import replay

    study = load_existing_study(str(BUDGETED), "budget-flow-s1")
    assert run_order(study)[:3] == [0, 255, 194]
    made = replay(study, 3 * 3600.0, workers=2)
    assert (made["proxy_trials"], made["rung_runs"], made["pick"], made["schedule"]) == (255, 3, 255, "128:24,256:18")


def _replay_study(n: int = 40) -> optuna.Study:
    """A finished study of `n` trials of 200 s, each better than the last: #0 a portfolio entry, #1 a recipe stage
    (a study resumed after a rung holds one among its proxy trials), #5 pruned with the best value of all."""
    from datetime import datetime, timedelta

    from search.rung import STAGE_ATTR

    study = optuna.create_study(direction="maximize")
    start, dist = datetime(2026, 12, 7), {"x": optuna.distributions.FloatDistribution(0, 1)}
    for i in range(n):
        attrs = {"portfolio": "net"} if i == 0 else {STAGE_ATTR: {"network_of": 2, "recipe_of": 0}} if i == 1 else {}
        pruned = i == 5
        trial = optuna.trial.create_trial(
            params={"x": i / n}, distributions=dist, user_attrs=attrs,
            state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
            value=0.99 if pruned else 0.1 + i / 100)
        trial.datetime_start, trial.datetime_complete = start, start + timedelta(seconds=200)
        study.add_trial(trial)
    return study


def test_the_replay_counts_proxy_trials_past_a_recipe_stage_trial_and_retrains_a_complete_one():
    """Without a rung the replay's pick is what train.final retrains: the best complete trial among the proxy trials
    it replayed, the last of them included (a recipe stage trial among them takes no place)."""
    from search.timebudget import replay

    made = replay(_replay_study(), 3600.0, workers=2)
    ran = made["proxy_trials"]
    assert made["by"] == "proxy" and 5 < ran < 39  # the pruned #5 among them
    assert made["pick"] == ran  # trials 0, 2, ..., ran (not the pruned #5)


def test_the_replay_trains_at_the_rung_a_pick_whose_network_it_replayed_last(monkeypatch):
    import search.timebudget as tb

    study = _replay_study()
    last = len(study.trials) - 1  # at 3 hours all 39 proxy trials fit; #39 is the last of them
    monkeypatch.setattr(tb, "rung_records", lambda s: {last: {"f": 0.77, "seconds": 300.0, "final_minutes": 30.0}})
    made = tb.replay(study, 3 * 3600.0, workers=2)
    assert made["proxy_trials"] == 39 and made["by"] == "rung" and made["pick"] == last and made["rung_runs"] == 1


def test_a_resume_that_trains_nothing_keeps_its_plan_and_the_plans_limit_for_picks():
    """The resumed rung sets the limit for picks from the time left (none once the budget is spent); the search's end
    puts back the kept plan's, which train.final --study best reads (it compared every pick after such a resume)."""
    from search.plan import BUDGET_ATTR, PLAN_ATTR
    from search.rung import MINUTES_ATTR
    from search.timebudget import close_plan, picks_limit

    budget = {"started": 0.0, "seconds": 3 * 3600.0, "device": "cpu"}
    ladder = plan.load_ladder("cpu")
    made = plan.final_plan(ladder, budget, {0: 30.0, 7: 70.0}, now=3 * 3600.0 - 80 * 60)
    study = optuna.create_study()
    study.set_user_attr(BUDGET_ATTR, budget)
    study.set_user_attr(PLAN_ATTR, made)
    study.set_user_attr(MINUTES_ATTR, 0.0)  # what the rung set, the budget spent
    close_plan(study, budget, trained=False, fallback=None)
    assert study.user_attrs[PLAN_ATTR] == made
    assert study.user_attrs[MINUTES_ATTR] == pytest.approx(picks_limit(made, ladder)) and picks_limit(made, ladder) > 70
    later = {**budget, "started": 60.0}  # a new --time-budget: the old plan is not this budget's, so it is replaced
    close_plan(study, later, trained=False, fallback=0)
    assert study.user_attrs[PLAN_ATTR]["budget_started"] == 60.0


def test_a_resume_that_trains_nothing_replans_when_the_plan_lacks_a_pick_at_the_rung():
    """An invocation whose rung trained a pick and was stopped before the search's end left the earlier plan without a
    schedule for it; the next one, with nothing left to train and the budget spent since, gives it one in the kept
    plan's time and keeps the plan's limit for picks (a plan made from the time left now would have none, and
    train.final would then compare every pick, the slow one included)."""
    import dataclasses

    from search.plan import BUDGET_ATTR, PLAN_ATTR
    from search.rung import MINUTES_ATTR, RUNG_ATTR, SETTING_ATTR, RungSetting
    from search.timebudget import close_plan, picks_limit

    budget, ladder = {"started": 0.0, "seconds": 3 * 3600.0, "device": "cpu"}, plan.load_ladder("cpu")
    # #7's 36.9 minutes leave about a minute of slack at 320:12 in the kept plan's time: a schedule planned at another
    # moment (the time left now, or planned_from taken for minutes_left) gives it another row
    whole = plan.final_plan(ladder, budget, {0: 30.0, 7: 36.9}, now=3 * 3600.0 - 80 * 60)
    made = {**whole, "schedules": {"0": whole["schedules"]["0"]}}  # the plan made before #7's rung run
    setting = RungSetting(3, "32:2", 1.0, "last_f", 0)
    study = optuna.create_study()
    study.set_user_attr(BUDGET_ATTR, budget)
    study.set_user_attr(PLAN_ATTR, made)
    study.set_user_attr(SETTING_ATTR, dataclasses.asdict(setting))
    for n, minutes in ((0, 30.0), (7, 36.9)):
        study.set_user_attr(f"{RUNG_ATTR}:{n}:{setting.id}", {"f": 0.77, "seconds": 300.0, "final_minutes": minutes})
    close_plan(study, budget, trained=False, fallback=None)  # the budget started at 0.0: long spent
    kept = study.user_attrs[PLAN_ATTR]
    assert kept == whole and whole["schedules"]["7"]["schedule"] == "128:24,256:12,320:12"
    assert study.user_attrs[MINUTES_ATTR] == pytest.approx(picks_limit(made, ladder)) and picks_limit(made, ladder) > 70
    close_plan(study, budget, trained=False, fallback=None)  # now covered: kept as it is
    assert study.user_attrs[PLAN_ATTR] == kept
