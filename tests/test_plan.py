"""The time budget (search.plan, search.run --time-budget): the ladder's rule, the up-front plan and its refusals,
the gates, and a whole tiny flow that ends within its budget across a kill."""

from __future__ import annotations

import os
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


def test_a_ladder_without_measured_rows_refuses_a_budget(tmp_path):
    with pytest.raises(PlanError, match="has no measured rows yet"):
        plan.load_ladder("cuda")  # the 512-px ladder waits for a GPU
    assert plan.load_ladder("cpu").rows  # the CPU ladder plans


def _flow_args(data: Path, storage: str, art: Path, *extra: str) -> list[str]:
    return ["search.run", "--data", str(data), "--storage", storage, "--study", "t", "--artifact-dir", str(art),
            "--proxy-size", "32", "--proxy-epochs", "2", "--subset", "1", "--device", "cpu", "--rung", "1",
            "--rung-size", "32:1", "--portfolio", str(_portfolio(art.parent)), "--trials", "60", *extra]


def _portfolio(folder: Path) -> Path:
    from tests.test_search import one_entry_portfolio

    return one_entry_portfolio(folder, "dw_unet")


def test_a_budget_too_small_is_refused_before_anything_is_written(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("FACENAS_LADDERS", str(FIXTURES / "ladders"))
    res = run_cli(*_flow_args(tiny_data, str(tmp_path / "s.journal"), tmp_path / "art", "--time-budget", "20s"),
                  cwd=tmp_path)
    assert res.returncode == 2 and "--time-budget 20 s: too small here" in res.stderr, res.stderr
    assert "give at least 1m" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "s.journal").exists() and not (tmp_path / "art").exists()
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

    wait_mid_trial(storage, "t", min_number=2)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    assert "time budget 2 min 00 s from" in out and "of the budget left" in out, out[-2000:]
    before = load(storage, "t").user_attrs[plan.BUDGET_ATTR]
    res = subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
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
    assert elapsed <= budget_s * 1.05, (elapsed, res.stdout[-3000:])
    again = subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and load(storage, "t").user_attrs[plan.PLAN_ATTR] == made  # nothing new: kept
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in study.trials]
