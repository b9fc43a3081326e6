"""The search's second rung (issue 21): exactly k promoted, records in the study, resumed after a kill, and
train.final --study best deciding by it."""

from __future__ import annotations

import dataclasses
import time

import optuna
import pytest
from conftest import run_cli, run_main

import search.run as run_mod
import search.rung as rung_mod
from search.rung import PENDING_ATTR, RUNG_ATTR, SETTING_ATTR, RungSetting, rung_records
from search.storage import open_storage
from space.portfolio import R85
from space.presets import PRESETS
from space.sample import sample_config


def _argv(data, storage, art, *extra):
    return ["--trials", "5", "--data", str(data), "--storage", storage, "--study", "t", "--artifact-dir", str(art),
            "--proxy-size", "32", "--proxy-epochs", "1", "--subset", "1", "--pruner", "none", "--flops-cap", "0",
            "--device", "cpu", "--rung", "2", "--rung-size", "32:2", "--rung-subset", "1", *extra]


def _load(storage: str) -> optuna.Study:
    return optuna.load_study(study_name="t", storage=open_storage(storage, heartbeat=None))


def test_the_top_k_are_promoted_and_their_rung_values_land_in_the_study(tiny_data, tmp_path):
    storage = str(tmp_path / "s.journal")
    res = run_cli("search.run", *_argv(tiny_data, storage, tmp_path / "art"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    study = _load(storage)
    complete = sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: -t.value)
    assert len(complete) >= 3
    records = rung_records(study)
    stage = {t.number for t in rung_mod.stage_trials(study).values()}  # the recipe stage's pairing, if it had one
    assert set(records) - stage == {complete[0].number, complete[1].number}  # exactly k = 2: the two best proxies
    for number, record in records.items():
        assert 0 <= record["f"] <= 1 and record["f"] == record["mean_last2_f"]  # the study's signal
        assert record["proxy_f"] == study.trials[number].value and record["schedule"] == "32:2"
    assert study.user_attrs[PENDING_ATTR] is None
    assert "rung 2: the top 2 complete trials at 32 px x 2 epochs on 100% of train" in res.stdout
    assert "second rung (2 trials), train.final predicted at 128:24,256:12, picks over 40 min left out:" in res.stdout
    assert "s of training (" in res.stdout and "train.final --study best takes it" in res.stdout
    for record in records.values():  # each run's seconds per epoch and scoring, and the final it predicts
        assert set(record["stage_seconds"]) == {"32"} and record["final_minutes"] > 0


def test_a_search_killed_in_the_rung_finishes_it_without_retraining_or_adding_trials(tiny_data, tmp_path,
                                                                                      monkeypatch):
    storage = str(tmp_path / "s.journal")
    argv = _argv(tiny_data, storage, tmp_path / "art")
    real, calls = rung_mod.train_at, []

    def killed_at_the_second(trial, *args, **kwargs):
        calls.append(trial.number)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(trial, *args, **kwargs)

    monkeypatch.setattr(rung_mod, "train_at", killed_at_the_second)
    assert run_mod.main(argv) == 130
    study = _load(storage)
    n_trials, first = len(study.trials), calls[0]
    assert len(rung_records(study)) == 1 and study.user_attrs[PENDING_ATTR] is not None
    calls.clear()
    monkeypatch.setattr(rung_mod, "train_at", lambda trial, *a, **k: (calls.append(trial.number),
                                                                     real(trial, *a, **k))[1])
    assert run_mod.main(argv) == 0  # the same command
    study = _load(storage)
    assert len(study.trials) == n_trials  # no proxy trial added
    assert first not in calls and len(calls) == 1  # the finished rung run was not trained again
    assert len(rung_records(study)) == 2 and study.user_attrs[PENDING_ATTR] is None
    assert run_mod.main(argv) == 0 and len(_load(storage).trials) == n_trials + 5  # then trials again


def test_train_final_study_best_takes_the_best_rung_not_the_best_proxy(tiny_data, tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="r", storage=open_storage(storage, heartbeat=None), direction="maximize")
    for name, proxy in (("deeplab_lite", 0.60), ("dw_unet", 0.50)):  # the proxy prefers #0
        study.enqueue_trial(PRESETS[name])
        trial = study.ask()
        sample_config(trial)
        study.tell(trial, proxy)
    setting = RungSetting(2, "32:2", 1.0, "last_f", 0)
    study.set_user_attr(SETTING_ATTR, dataclasses.asdict(setting))
    for number, f in ((0, 0.70), (1, 0.75)):  # the rung prefers #1
        study.set_user_attr(f"{RUNG_ATTR}:{number}:{setting.id}", {"f": f, "proxy_f": study.trials[number].value})
    study.set_user_attr(f"{RUNG_ATTR}:0:othersetting", {"f": 0.99, "proxy_f": 0.6})  # another rung setting: ignored
    res = run_cli("train.final", "--study", "r", "--storage", storage, "--data", str(tiny_data), "--size", "32",
                  "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-3000:]
    first = res.stdout.splitlines()[0]
    assert first.startswith("final: study 'r' trial 1, chosen by the second rung (32 px x 2 epochs"), first
    assert "rung-2 F 0.7500 of 2 promoted trials" in first
    res = run_cli("train.final", "--study", "r", "--storage", storage, "--trial", "0", "--data", str(tiny_data),
                  "--size", "32", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "out0"))
    assert res.returncode == 0 and res.stdout.splitlines()[0] == "final: study 'r' trial 0, chosen by --trial"


@pytest.mark.parametrize("args,message", [(["--rung", "-1"], "--rung must be >= 0"),
                                          (["--rung-size", "128"], "needs a number of epochs"),
                                          (["--rung-size", "99999999999999999999:1"],
                                           "--rung-size 99999999999999999999:1: schedule"),
                                          (["--rung-size", "256:1,128:1"], "sizes must not decrease"),
                                          (["--proxy-size", "5000"], "--proxy-size must be 32..1024, got 5000"),
                                          (["--final-minutes", "0"], "--final-minutes must be > 0"),
                                          (["--rung-subset", "0"], "--rung-subset must be in (0, 1]")])
def test_bad_rung_arguments_are_named(tmp_path, args, message):
    res = run_main("search.run", "--storage", f"sqlite:///{tmp_path / 's.db'}", *args, cwd=tmp_path)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def _study_with(entries: list[tuple[str | None, float]], storage=None) -> optuna.Study:
    """A study of complete trials: (portfolio entry name or None for a searched trial, proxy F) each."""
    study = optuna.create_study(study_name="r", storage=storage, direction="maximize")
    for name, proxy in entries:
        study.enqueue_trial({**PRESETS["dw_unet"], **R85}, user_attrs={"portfolio": name} if name else {})
        trial = study.ask()
        sample_config(trial)
        study.tell(trial, proxy)
    return study


def _fake_train_at(calls: list[int], f: dict[int, float]):
    def train_at(trial, splits, schedule, seed, device, **kwargs):
        calls.append(trial.number)
        value = f.get(trial.number, 0.5)
        return {"last_f": value, "mean_last2_f": value, "neg_loss_sum": -1.0, "seconds": 1.0,
                "stage_seconds": {"128": {"epoch_s": 10.0, "score_s": 2.0}, "256": {"epoch_s": 40.0, "score_s": 5.0}}}
    return train_at


def test_the_reference_is_trained_at_the_rung_when_it_ranks_below_the_top_k(monkeypatch):
    study = _study_with([(None, 0.60), ("dw_unet@R85", 0.40), (None, 0.55), ("bisenet_style@R85", 0.30),
                         (None, 0.50)])
    calls = []
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at(calls, {}))
    setting = RungSetting(2, "128:4,256:2", 1.0, "mean_last2_f", 0)
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=lambda line: None)
    assert calls == [0, 2, 1]  # the top 2, then the best portfolio entry (4th by proxy), not the other entry
    assert not rung_mod.stage_trials(study)  # every network trains at the reference's recipe: no recipe stage
    records = rung_records(study)
    assert records[1]["reference"] and not records[0]["reference"] and not records[2]["reference"]
    # train.final's minutes at 128:24,256:12 from the recorded seconds: 24 x 10 + 12 x 40 s of training, and 10
    # scorings of the EMA and raw weights (every 3rd epoch and the stage ends: 3, 6, ..., 24, 27, 30, 33, 36)
    evals_128, evals_256 = 8, 4
    expected = (24 * 10 + 12 * 40 + 2 * (evals_128 * 2 + evals_256 * 5)) / 60
    assert records[0]["final_minutes"] == pytest.approx(expected)


def test_study_best_ships_the_reference_when_it_has_the_best_rung_f(tmp_path):
    from train.final import choose_trial

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=None)
    study = _study_with([(None, 0.60), (None, 0.58), ("dw_unet@R85", 0.40)], storage)
    setting = RungSetting(2, "32:2", 1.0, "last_f", 0)
    study.set_user_attr(SETTING_ATTR, dataclasses.asdict(setting))
    for number, f in ((0, 0.70), (1, 0.69), (2, 0.72)):
        study.set_user_attr(f"{RUNG_ATTR}:{number}:{setting.id}", {"f": f, "proxy_f": study.trials[number].value,
                                                                   "reference": number == 2})
    chosen = choose_trial(storage, "r", None)
    assert chosen.trial.number == 2
    assert ("the reference #2 (dw_unet@R85) won the rung (rung-2 F 0.7200), +0.0200 over the best searched "
            "network #0 (searched) (0.7000)") in chosen.decided_by
    study.set_user_attr(f"{RUNG_ATTR}:1:{setting.id}", {"f": 0.75, "proxy_f": 0.58, "reference": False})
    chosen = choose_trial(storage, "r", None)
    assert chosen.trial.number == 1
    assert "the rung's pick #1 (searched) (rung-2 F 0.7500) beat the reference #2 (dw_unet@R85) (0.7200) by +0.0300" \
        in chosen.decided_by


def test_final_minutes_leaves_slow_picks_out(tmp_path):
    study = _study_with([(None, 0.60), ("dw_unet@R85", 0.50)])
    setting = RungSetting(2, "32:2", 1.0, "last_f", 0)
    study.set_user_attr(SETTING_ATTR, dataclasses.asdict(setting))
    for number, f, minutes in ((0, 0.75, 60.0), (1, 0.70, 30.0)):
        study.set_user_attr(f"{RUNG_ATTR}:{number}:{setting.id}", {"f": f, "proxy_f": 0.5, "final_minutes": minutes,
                                                                   "reference": number == 1})
    assert rung_mod.best_by_rung(study)[0].number == 0  # no limit: the best rung-2 F
    study.set_user_attr(rung_mod.MINUTES_ATTR, 45.0)
    assert rung_mod.best_by_rung(study)[0].number == 1  # #0's final is predicted at 60 minutes: left out
    study.set_user_attr(rung_mod.MINUTES_ATTR, 10.0)
    assert rung_mod.best_by_rung(study)[0].number == 0  # nothing within 10: the best again, not nothing
    assert "no pick is predicted within --final-minutes 10: all were compared" in rung_mod.verdict(study)
    # the reference left out by the limit is said to be left out, never "beaten" by a lower F
    study.set_user_attr(f"{RUNG_ATTR}:0:{setting.id}", {"f": 0.70, "proxy_f": 0.5, "final_minutes": 30.0})
    study.set_user_attr(f"{RUNG_ATTR}:1:{setting.id}", {"f": 0.80, "proxy_f": 0.5, "final_minutes": 90.0,
                                                        "reference": True})
    study.set_user_attr(rung_mod.MINUTES_ATTR, 60.0)
    line = rung_mod.verdict(study)
    assert "beat" not in line and line.endswith("the reference #1 (dw_unet@R85) (0.8000) was left out: predicted 90 "
                                                 "min > --final-minutes 60"), line


def test_under_a_time_budget_a_pick_is_judged_by_the_schedule_it_can_afford(tmp_path, capsys):
    from pathlib import Path

    from search.plan import BUDGET_ATTR, PLAN_ATTR, Ladder, Row, final_plan
    from train.final import choose_trial

    ladder = Ladder("cpu", "net", (Row("a", (0.815, 0.817), 30, 3, "t"), Row("c", (0.825, 0.827), 70, 5, "t")), "a",
                    300.0, 30.0, Path("cpu.json"))
    storage = open_storage(str(tmp_path / "b.journal"))
    study = _study_with([("dw_unet@R85", 0.50), (None, 0.60)], storage)
    setting = RungSetting(1, "32:2", 1.0, "last_f", 0)
    study.set_user_attr(SETTING_ATTR, dataclasses.asdict(setting))
    for number, f, minutes in ((0, 0.700, 30.0), (1, 0.705, 60.0)):  # #1: +0.005 at the rung, twice as slow
        study.set_user_attr(f"{RUNG_ATTR}:{number}:{setting.id}", {"f": f, "proxy_f": 0.5, "final_minutes": minutes,
                                                                   "reference": number == 0, "seconds": 9.0})
    assert rung_mod.best_by_rung(study)[0].number == 1  # no budget: the best rung-2 F
    budget = {"started": 0.0, "seconds": 3 * 3600.0}
    made = final_plan(ladder, budget, {0: 30.0, 1: 60.0}, now=3 * 3600.0 - 80 * 60)  # 80 minutes left
    assert made["schedules"]["0"]["schedule"] == "c" and made["schedules"]["1"]["schedule"] == "a"
    study.set_user_attr(BUDGET_ATTR, budget)
    study.set_user_attr(PLAN_ATTR, made)
    assert rung_mod.best_by_rung(study)[0].number == 0  # 0.700 + 0.010 (c over a) beats 0.705 + 0
    assert rung_mod.verdict(study) == (
        "the time budget's pick #0 (dw_unet@R85) (rung-2 F 0.7000, at c: +0.0100, expected 0.7100) over the best "
        "rung-2 F #1 (searched) (rung-2 F 0.7050, at a: +0.0000, expected 0.7050): each judged by its rung-2 F plus "
        "the ladder's gain of the schedule the plan affords it over the default")
    chosen = choose_trial(storage, "r", None)
    assert chosen.trial.number == 0 and chosen.plan["schedule"] == "c"
    assert "the time budget's pick #0" in chosen.decided_by
    import html

    from analysis.report import second_rung

    _, text = second_rung(study, tmp_path)
    assert "(under the time budget's plan: plus the ladder's gain of the schedule each pick can afford)" in text
    assert html.escape("the time budget's pick #0") in text
    ungained = {n: {k: v for k, v in e.items() if k != "gain"} for n, e in made["schedules"].items()}
    older = {**made, "schedules": ungained}
    study.set_user_attr(PLAN_ATTR, older)  # a plan from before the gains were recorded: by F, its schedule followed
    chosen = choose_trial(storage, "r", None)
    assert chosen.trial.number == 1 and chosen.plan["schedule"] == "a"
    study.set_user_attr(PLAN_ATTR, {**made, "schedules": {"0": made["schedules"]["0"]}})  # #1 not planned: by F
    assert rung_mod.best_by_rung(study)[0].number == 1
    study.set_user_attr(PLAN_ATTR, made)
    study.set_user_attr(BUDGET_ATTR, {**budget, "started": 5.0})  # a newer budget: the plan is stale, not followed
    assert rung_mod.best_by_rung(study)[0].number == 1
    capsys.readouterr()
    chosen = choose_trial(storage, "r", None)
    assert chosen.trial.number == 1 and chosen.plan is None
    assert "its time-budget plan was made under an earlier budget" in capsys.readouterr().out


def test_a_claim_of_a_dead_process_on_another_host_is_taken_over_once_stale(monkeypatch):
    study = optuna.create_study(study_name="c")
    claims = rung_mod.Claims(study)
    key = "rung2:0:x"
    for beat in (time.time(), time.time() - rung_mod.CLAIM_STALE_S - 5):  # a live claim, then one gone silent
        rival = optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING,
                                          user_attrs={"key": key, "worker": "othermachine:4242", "beat": beat})
        rival_id = claims.storage.create_new_trial(claims.study._study_id, template_trial=rival)
        claims.storage.set_trial_state_values(rival_id, optuna.trial.TrialState.RUNNING)
        if beat > time.time() - 60:
            assert claims.held([key]) == [key] and claims.take(key) is None  # nothing here can tell it is dead
            claims.release(rival_id, optuna.trial.TrialState.FAIL)
    assert claims.held([key]) == []
    mine = claims.take(key)
    assert mine is not None
    # while its run trains, the claim's beat is renewed, so that no other process takes it over
    monkeypatch.setattr(rung_mod, "CLAIM_BEAT_S", 0.05)
    before = claims.storage.get_trial(mine).user_attrs["beat"]
    with claims.beating(mine):
        time.sleep(0.3)
    assert claims.storage.get_trial(mine).user_attrs["beat"] > before


def test_stage_seconds_from_a_history():
    from train.loop import stage_seconds

    history = [{"size": 128, "seconds": 12.0, "train_seconds": 10.0, "val_f": 0.1, "val_f_raw": 0.1},
               {"size": 128, "seconds": 22.0, "train_seconds": 10.0},
               {"size": 256, "seconds": 70.0, "train_seconds": 40.0, "val_f": 0.2}]
    times = stage_seconds(history, subset=0.5)  # a run on half of train: an epoch on all of it takes twice as long
    assert times == {128: {"epoch_s": 20.0, "score_s": 1.0}, 256: {"epoch_s": 80.0, "score_s": 8.0}}
    assert stage_seconds([{"size": 64, "seconds": 1.0}]) == {}  # a history from before train_seconds was kept


OTHER_RECIPE = {"loss_dice": 0.5, "batch_size": 16, "lr_adamw": 0.003}


def _study_of(rows: list[tuple[dict, dict, float]], storage=None) -> optuna.Study:
    """A study of complete trials: (params, user attrs, proxy F) each."""
    study = optuna.create_study(study_name="r", storage=storage, direction="maximize")
    for params, attrs, proxy in rows:
        study.enqueue_trial(params, user_attrs=attrs)
        trial = study.ask()
        sample_config(trial)
        study.tell(trial, proxy)
    return study


def test_the_recipe_stage_trains_the_rungs_best_searched_network_at_the_references_recipe(tmp_path, monkeypatch):
    from analysis.report import second_rung
    from space.sample import recipe_params, replay
    from train.final import choose_trial

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=None)
    study = _study_of([({**PRESETS["dw_unet"], **R85, **OTHER_RECIPE}, {}, 0.60),
                       ({**PRESETS["deeplab_lite"], **R85, **OTHER_RECIPE}, {}, 0.55),
                       ({**PRESETS["dw_unet"], **R85}, {"portfolio": "dw_unet@R85"}, 0.40)], storage)
    calls = []
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at(calls, {0: 0.70, 1: 0.72, 2: 0.71, 3: 0.75}))
    setting = RungSetting(2, "32:2", 1.0, "last_f", 0)
    lines = []
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=lines.append)
    assert calls == [0, 1, 2, 3]  # the top 2, the reference, then the stage: #1 (best searched at the rung)
    stage = study.trials[3]
    assert stage.state == optuna.trial.TrialState.FAIL and stage.value is None  # no proxy F: nothing for TPE
    assert stage.user_attrs[rung_mod.STAGE_ATTR] == {"network_of": 1, "recipe_of": 2}
    (arch, loss, train), (arch1, _, _), (_, loss2, train2) = (replay(study.trials[n]) for n in (3, 1, 2))
    assert arch == arch1 and loss == loss2 and train == train2  # #1's network, the reference's recipe
    assert recipe_params(stage.params) == recipe_params(study.trials[2].params)
    assert study.user_attrs[PENDING_ATTR] is None and rung_records(study)[3]["proxy_f"] is None
    assert "recipe stage: the best searched network at the rung, #1, at the reference's recipe: trial 3" in lines
    assert not [line for line in lines if "already done" in line]  # the stage's pass does not repeat the runs
    assert any(line.startswith("rung 2: trial #3 (#1's network at #2's recipe): proxy F - -> rung-2 F 0.7500")
               for line in lines), lines
    chosen = choose_trial(storage, "r", None)  # train.final --study best ships the pairing
    assert chosen.trial.number == 3 and chosen.trial.params == stage.params
    assert ("the rung's pick #3 (#1's network at #2's recipe) (rung-2 F 0.7500) beat the reference #2 (dw_unet@R85) "
            "(0.7100) by +0.0400") in chosen.decided_by
    assert "<td>-</td><td>0.7500</td>" in second_rung(study, tmp_path)[1]  # the report: no proxy F for it
    calls.clear()
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=lambda line: None)  # run again: nothing new
    assert calls == [] and len(study.trials) == 4


def test_a_limit_leaves_slow_searched_networks_out_and_the_stage_still_pairs_the_best(monkeypatch):
    study = _study_of([({**PRESETS["dw_unet"], **R85, **OTHER_RECIPE}, {}, 0.60),
                       ({**PRESETS["deeplab_lite"], **R85, **OTHER_RECIPE}, {}, 0.55),
                       ({**PRESETS["dw_unet"], **R85}, {"portfolio": "dw_unet@R85"}, 0.40)])
    study.set_user_attr(rung_mod.MINUTES_ATTR, 40.0)  # the CPU default
    calls, fast = [], _fake_train_at([], {0: 0.74, 1: 0.72, 2: 0.70, 3: 0.69})

    def train_at(trial, *args, **kwargs):
        calls.append(trial.number)
        out = fast(trial, *args, **kwargs)
        if trial.number in (0, 1):  # the searched networks at their own (slow) recipe: about 2 h of final
            out["stage_seconds"] = {"128": {"epoch_s": 100.0, "score_s": 2.0},
                                    "256": {"epoch_s": 400.0, "score_s": 5.0}}
        return out
    monkeypatch.setattr(rung_mod, "train_at", train_at)
    rung_mod.run_rung(study, RungSetting(2, "32:2", 1.0, "last_f", 0), {}, None, "128:24,256:12", say=lambda _: None)
    records = rung_records(study)
    assert records[0]["final_minutes"] > 40 >= records[2]["final_minutes"]
    # the best searched network is over the limit at its own recipe, yet the stage pairs it with the reference's
    assert calls == [0, 1, 2, 3] and study.trials[3].user_attrs[rung_mod.STAGE_ATTR] == {"network_of": 0,
                                                                                        "recipe_of": 2}
    assert rung_mod.best_by_rung(study)[0].number == 2  # #0 and #1 (0.74, 0.72) are left out: the reference ships
    line = rung_mod.verdict(study)
    assert line.startswith("the reference #2 (dw_unet@R85) won the rung (rung-2 F 0.7000), +0.0100 over the best "
                           "searched network #3 (#0's network at #2's recipe) (0.6900); left out, predicted over "
                           "--final-minutes 40: #0 (searched) (0.7400, "), line
    assert "#1 (searched) (0.7200, " in line and "-0.0" not in line


def test_a_resumed_study_keeps_its_recorded_final_minutes_unless_one_is_given(tmp_path, capsys):
    study = optuna.create_study()
    s = run_mod.Settings(data=tmp_path, study="s", storage="", artifact_dir=tmp_path, proxy_size=32, proxy_epochs=1,
                         subset=1.0, sampler="tpe", pruner="none", seed=0, device="cpu", loader_workers=0,
                         final_minutes=40.0, final_minutes_given=False)
    run_mod.record_settings(study, s)  # a new study: the default
    assert study.user_attrs[rung_mod.MINUTES_ATTR] == 40.0
    study.set_user_attr(rung_mod.MINUTES_ATTR, None)  # a study searched with the limit off (before the default)
    run_mod.record_settings(study, s)
    assert study.user_attrs[rung_mod.MINUTES_ATTR] is None and s.final_minutes is None  # its pick stays its pick
    s.final_minutes, s.final_minutes_given = 30.0, True
    run_mod.record_settings(study, s)
    assert study.user_attrs[rung_mod.MINUTES_ATTR] == 30.0
    assert "note: --final-minutes 30 replaces the study's inf" in capsys.readouterr().out


def test_a_resumed_study_keeps_the_over_limit_rule_of_its_last_rung_unless_one_is_given(tmp_path):
    def settings(over_limit: str, given: bool) -> run_mod.Settings:
        return run_mod.Settings(data=tmp_path, study="s", storage="", artifact_dir=tmp_path, proxy_size=32,
                                proxy_epochs=1, subset=1.0, sampler="tpe", pruner="none", seed=0, device="cpu",
                                loader_workers=0, rung_k=3, rung_schedule="32:2", rung_subset=1.0,
                                over_limit=over_limit, over_limit_given=given, final_minutes=40.0)
    study = optuna.create_study()
    s = settings("reference", given=False)
    run_mod.record_settings(study, s)  # a new study: the default
    assert s.rung().over_limit == "reference"
    old = {"k": 3, "schedule": "32:2", "subset": 1.0, "signal": "last_f", "seed": 0}  # a rung from before the rule
    study.set_user_attr(SETTING_ATTR, old)
    run_mod.record_settings(study, s)
    assert s.rung().over_limit == "own" and s.rung().id == RungSetting(**old).id  # its next rung keeps its id
    s = settings("reference", given=True)
    run_mod.record_settings(study, s)
    assert s.rung().over_limit == "reference"
    study.set_user_attr(SETTING_ATTR, {**old, "over_limit": "reference"})
    s = settings("own", given=False)
    run_mod.record_settings(study, s)
    assert s.rung().over_limit == "reference"


def test_no_recipe_stage_without_a_reference(monkeypatch):
    study = _study_of([({**PRESETS["dw_unet"], **R85, **OTHER_RECIPE}, {}, 0.60),
                       ({**PRESETS["dw_unet"], **R85}, {}, 0.50)])
    calls = []
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at(calls, {}))
    rung_mod.run_rung(study, RungSetting(2, "32:2", 1.0, "last_f", 0), {}, None, "128:24,256:12", say=print)
    assert calls == [0, 1] and not rung_mod.stage_trials(study) and len(study.trials) == 2


def test_the_recipe_stage_keeps_a_network_from_before_a_parameter_existed(monkeypatch):
    from space.sample import replay

    new = _study_of([({**PRESETS["dw_unet"], **R85, **OTHER_RECIPE}, {}, 0.60)]).trials[0]
    old = optuna.trial.create_trial(  # searched before decoder_cbam existed: it replays with decoder_cbam=False
        params={k: v for k, v in new.params.items() if k != "decoder_cbam"},
        distributions={k: v for k, v in new.distributions.items() if k != "decoder_cbam"},
        value=0.60, user_attrs=dict(new.user_attrs))
    study = optuna.create_study(direction="maximize")
    study.add_trial(old)
    study.add_trial(_study_of([({**PRESETS["dw_unet"], **R85}, {"portfolio": "dw_unet@R85"}, 0.40)]).trials[0])
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at([], {0: 0.70, 1: 0.60}))
    for seed in range(8):  # a random draw for the missing parameter would differ between runs
        stage = rung_mod.add_stage_trial(study, RungSetting(1, f"32:{seed + 1}", 1.0, "last_f", 0),
                                         {"params": {**{k: v for k, v in old.params.items() if k not in R85}, **R85},
                                          rung_mod.STAGE_ATTR: {"network_of": 0, "recipe_of": 100 + seed}})
        assert stage.params["decoder_cbam"] is False
    rung_mod.run_rung(study, RungSetting(1, "32:9", 1.0, "last_f", 0), {}, None, "128:24,256:12", say=lambda _: None)
    stage, = rung_mod.stage_trials_at(study, RungSetting(1, "32:9", 1.0, "last_f", 0))
    assert stage.user_attrs[rung_mod.STAGE_ATTR] == {"network_of": 0, "recipe_of": 1}
    assert replay(stage)[0] == replay(study.trials[0])[0]  # the very network of #0


def test_a_stage_trial_chosen_by_another_process_keeps_the_rung_pending(tmp_path, monkeypatch):
    path = f"sqlite:///{tmp_path / 's.db'}"
    study = _study_of([({**PRESETS["dw_unet"], **R85, **OTHER_RECIPE}, {}, 0.60),
                       ({**PRESETS["dw_unet"], **R85}, {"portfolio": "dw_unet@R85"}, 0.40)],
                      open_storage(path, heartbeat=None))
    setting, real = RungSetting(1, "32:2", 1.0, "last_f", 0), rung_mod.stage_pairing
    calls = []
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at(calls, {}))

    def other_process_first(study, setting):  # between this process's last run and its stage_pairing call
        other = optuna.load_study(study_name="r", storage=open_storage(path, heartbeat=None))
        if f"{rung_mod.STAGE_ATTR}:{setting.id}" not in other.user_attrs:
            claim = rung_mod.Claims(other).take(f"{RUNG_ATTR}:2:{setting.id}")  # and starts training it
            assert rung_mod.add_stage_trial(other, setting, real(other, setting)).number == 2 and claim is not None
        return real(study, setting)

    monkeypatch.setattr(rung_mod, "stage_pairing", other_process_first)
    lines = []
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=lines.append)
    assert calls == [0, 1]  # not the stage's trial: the other process trains it
    assert study.user_attrs[PENDING_ATTR] is not None and not study.user_attrs.get(SETTING_ATTR)
    assert "still trained by another process" in lines[-1] and "unfinished" in rung_mod.unfinished_note(study)


def test_a_new_rung_setting_trains_only_its_own_stage_trial(monkeypatch):
    study = _study_of([({**PRESETS["dw_unet"], **R85, **OTHER_RECIPE}, {}, 0.60),
                       ({**PRESETS["deeplab_lite"], **R85, **OTHER_RECIPE}, {}, 0.55),
                       ({**PRESETS["dw_unet"], **R85}, {"portfolio": "dw_unet@R85"}, 0.40)])
    calls = []
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at(calls, {0: 0.70, 1: 0.72, 2: 0.71, 4: 0.80}))
    rung_mod.run_rung(study, RungSetting(2, "32:2", 1.0, "last_f", 0), {}, None, "128:24,256:12", say=print)
    assert calls == [0, 1, 2, 3]  # #3: #1's network at #2's recipe
    study.add_trial(_study_of([({**PRESETS["bisenet_style"], **R85, **OTHER_RECIPE}, {}, 0.65)]).trials[0])  # #4
    calls.clear()
    rung_mod.run_rung(study, RungSetting(2, "48:2", 1.0, "last_f", 0), {}, None, "128:24,256:12", say=print)
    assert calls == [4, 0, 2, 5]  # the new top 2, the reference, then #4's network at #2's recipe: not #3 again
    assert study.trials[5].user_attrs[rung_mod.STAGE_ATTR] == {"network_of": 4, "recipe_of": 2}


def test_a_later_search_at_the_same_setting_pairs_its_new_best_network_too(monkeypatch):
    study = _study_of([({**PRESETS["dw_unet"], **R85, **OTHER_RECIPE}, {}, 0.60),
                       ({**PRESETS["deeplab_lite"], **R85, **OTHER_RECIPE}, {}, 0.55),
                       ({**PRESETS["dw_unet"], **R85}, {"portfolio": "dw_unet@R85"}, 0.40)])
    calls, setting = [], RungSetting(2, "32:2", 1.0, "last_f", 0)
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at(calls, {0: 0.70, 1: 0.72, 2: 0.71, 4: 0.90}))
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=print)
    study.add_trial(_study_of([({**PRESETS["bisenet_style"], **R85, **OTHER_RECIPE}, {}, 0.65)]).trials[0])  # #4
    calls.clear()
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=print)  # the same command once more
    assert calls == [4, 5]  # the new best searched network at the rung, then it at the reference's recipe
    assert [t.user_attrs[rung_mod.STAGE_ATTR]["network_of"] for t in rung_mod.stage_trials_at(study, setting)] == [1, 4]
    assert set(rung_records(study)) == {0, 1, 2, 3, 4, 5}  # the first pairing stays a candidate


def test_train_final_says_when_only_the_recipe_stage_is_left(monkeypatch):
    study = _study_of([({**PRESETS["dw_unet"], **R85, **OTHER_RECIPE}, {}, 0.60),
                       ({**PRESETS["dw_unet"], **R85}, {"portfolio": "dw_unet@R85"}, 0.40)])
    setting = RungSetting(1, "32:2", 1.0, "last_f", 0)

    def killed(study, setting, pairing):
        raise KeyboardInterrupt

    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at([], {}))
    monkeypatch.setattr(rung_mod, "add_stage_trial", killed)  # killed after the last run, before the stage
    with pytest.raises(KeyboardInterrupt):
        rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=print)
    note = rung_mod.unfinished_note(study)
    assert "(the recipe stage's run is still to be chosen and trained; run the search command again" in note, note


def _speed(ips: float) -> dict:
    return {"train_images_per_s": ips}


def _lever_study(storage=None) -> optuna.Study:
    """#0 a searched network slow at the proxy, #1 a fast one, #2 the reference (both searched at another recipe)."""
    return _study_of([({**PRESETS["dw_unet"], **R85, **OTHER_RECIPE}, _speed(10.0), 0.60),
                      ({**PRESETS["deeplab_lite"], **R85, **OTHER_RECIPE}, _speed(100.0), 0.55),
                      ({**PRESETS["dw_unet"], **R85}, {"portfolio": "dw_unet@R85", **_speed(50.0)}, 0.40)], storage)


def test_a_pick_foretold_over_the_limit_trains_its_network_at_the_references_recipe_instead(monkeypatch):
    from space.sample import recipe_params, replay

    study = _lever_study()
    study.set_user_attr(rung_mod.MINUTES_ATTR, 40.0)
    calls, lines = [], []
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at(calls, {2: 0.70, 3: 0.76, 1: 0.72, 4: 0.73}))
    setting = RungSetting(2, "32:2", 1.0, "last_f", 0, over_limit="reference")
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=lines.append)
    ref_minutes = rung_records(study)[2]["final_minutes"]  # 13.2 min from the fake run's seconds
    # the reference first; #0 foretold at 13.2 x 50 / 10 = 66 min > 40: its network at #2's recipe (#3) instead of
    # itself; #1 at 13.2 x 50 / 100 = 6.6 min trains as searched; then the stage pairs #1, the best searched at the rung
    assert calls == [2, 3, 1, 4]
    moved = rung_mod.redirected(study)
    assert set(moved) == {0} and 0 not in rung_records(study)
    assert moved[0]["redirected"]["predicted_minutes"] == pytest.approx(ref_minutes * 50 / 10, abs=0.05)
    assert moved[0]["redirected"]["network_at"] == {"network_of": 0, "recipe_of": 2}
    assert study.trials[3].user_attrs[rung_mod.STAGE_ATTR] == {"network_of": 0, "recipe_of": 2}
    assert replay(study.trials[3])[0] == replay(study.trials[0])[0]  # #0's very network
    assert recipe_params(study.trials[3].params) == recipe_params(study.trials[2].params)
    assert study.trials[4].user_attrs[rung_mod.STAGE_ATTR] == {"network_of": 1, "recipe_of": 2}
    assert study.user_attrs[PENDING_ATTR] is None and study.user_attrs[SETTING_ATTR]["over_limit"] == "reference"
    assert rung_mod.best_by_rung(study)[0].number == 3  # the slow pick's network can now ship
    said = f"its final predicted at {ref_minutes * 5:.0f} min from its proxy speed > --final-minutes 40"
    assert any(said in line for line in lines), lines
    calls.clear()
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=lines.append)  # again: nothing new
    assert calls == [] and len(study.trials) == 5


def test_own_trains_slow_picks_as_searched_and_keeps_the_rung_ids_of_earlier_studies(monkeypatch):
    study = _lever_study()
    study.set_user_attr(rung_mod.MINUTES_ATTR, 40.0)
    calls = []
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at(calls, {}))
    rung_mod.run_rung(study, RungSetting(2, "32:2", 1.0, "last_f", 0), {}, None, "128:24,256:12", say=print)
    assert calls[:3] == [0, 1, 2] and not rung_mod.redirected(study)
    # a study recorded before over_limit existed finds its records: the id of an "own" setting is the old one
    import hashlib
    import json
    old = hashlib.sha1(json.dumps({"schedule": "32:2", "subset": 1.0, "signal": "last_f", "seed": 0},
                                  sort_keys=True).encode()).hexdigest()[:10]
    assert RungSetting(2, "32:2", 1.0, "last_f", 0).id == old
    assert RungSetting(2, "32:2", 1.0, "last_f", 0, over_limit="reference").id != old


def test_without_a_limit_or_a_speed_the_lever_trains_picks_as_searched(monkeypatch):
    study = _lever_study()  # no final_minutes: nothing is over it
    calls = []
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at(calls, {}))
    setting = RungSetting(2, "32:2", 1.0, "last_f", 0, over_limit="reference")
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=print)
    assert calls[:3] == [0, 1, 2] and not rung_mod.redirected(study)
    slow, ref = study.trials[0], study.trials[2]
    assert rung_mod.proxy_minutes(slow, ref, {"final_minutes": 13.0}) == pytest.approx(65.0)
    bare = optuna.trial.create_trial(params=slow.params, distributions=slow.distributions, value=0.6)
    assert rung_mod.proxy_minutes(bare, ref, {"final_minutes": 13.0}) is None  # a trial from before the speed was kept


def test_a_process_waits_for_the_reference_run_another_process_trains(tmp_path, monkeypatch):
    path = f"sqlite:///{tmp_path / 's.db'}"
    study = _lever_study(open_storage(path, heartbeat=None))
    study.set_user_attr(rung_mod.MINUTES_ATTR, 40.0)
    setting = RungSetting(2, "32:2", 1.0, "last_f", 0, over_limit="reference")
    other = optuna.load_study(study_name="r", storage=open_storage(path, heartbeat=None))
    ref_key = f"{RUNG_ATTR}:2:{setting.id}"
    held = rung_mod.Claims(other).take(ref_key)  # another process trains the reference
    assert held is not None
    calls, lines, waits = [], [], []
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at(calls, {}))

    def other_finishes(seconds):  # while this process waits, the other one records the reference's run
        waits.append(seconds)
        record = _fake_train_at([], {})(study.trials[2], {}, "32:2", 0, None)
        other.set_user_attr(ref_key, {"f": 0.7, **record, "reference": True,
                                      "final_minutes": rung_mod.final_minutes(record, "128:24,256:12")})
        rung_mod.Claims(other).release(held, optuna.trial.TrialState.COMPLETE, 0.7)
    monkeypatch.setattr(rung_mod.time, "sleep", other_finishes)
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=lines.append)
    assert waits and any("waiting for the reference #2's run" in line for line in lines)
    assert 2 not in calls and calls[:2] == [3, 1]  # #0 judged by the other process's reference run: redirected
    assert set(rung_mod.redirected(study)) == {0} and study.user_attrs[PENDING_ATTR] is None


def test_trials_0_judges_a_study_again_at_the_lever_without_adding_proxy_trials(tiny_data, tmp_path):
    from tests.test_search import one_entry_portfolio

    storage = str(tmp_path / "s.journal")
    argv = _argv(tiny_data, storage, tmp_path / "art", "--portfolio", str(one_entry_portfolio(tmp_path, "dw_unet")),
                 "--sampler", "random", "--over-limit-recipe", "own")
    assert run_mod.main(argv) == 0
    before = _load(storage)
    n_before, first = len(before.trials), rung_mod.current_setting(before).id
    searched = [t.number for t in before.trials if "train_images_per_s" in t.user_attrs and rung_mod.searched(t)]
    assert searched  # random recipes: not the reference's
    res = run_cli("search.run", *argv[2:-2], "--trials", "0", "--over-limit-recipe", "reference", "--final-minutes",
                  "0.0001", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    study = _load(storage)
    added = study.trials[n_before:]
    assert all(rung_mod.STAGE_ATTR in t.user_attrs for t in added)  # only recipe stage trials, no proxy trial
    setting = rung_mod.current_setting(study)
    assert setting.over_limit == "reference" and setting.id != first
    promoted = [t.number for t in rung_mod.promoted(study, setting) if rung_mod.searched(t)]
    moved = rung_mod.redirected(study, setting)
    assert promoted and set(promoted) == set(moved)  # every searched pick is over 0.0001 min: none as searched
    pairs = rung_mod.stage_trials(study)
    for n in moved:
        assert pairs[(n, 0)].number in rung_records(study, setting)  # its network at #0's recipe was trained
    assert "0 trials in" not in res.stdout and "from its proxy speed: not trained at its own recipe" in res.stdout


def test_a_limit_raised_above_a_redirected_pick_trains_it_at_its_own_recipe(monkeypatch):
    study = _lever_study()
    study.set_user_attr(rung_mod.MINUTES_ATTR, 40.0)
    calls = []
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at(calls, {}))
    setting = RungSetting(2, "32:2", 1.0, "last_f", 0, over_limit="reference")
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=print)
    assert 0 not in calls and set(rung_mod.redirected(study)) == {0}  # foretold at 66 min
    study.set_user_attr(rung_mod.MINUTES_ATTR, 100.0)  # search.run --final-minutes 100 on the same study
    calls.clear()
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=print)
    assert calls == [0] and not rung_mod.redirected(study) and "f" in rung_records(study)[0]
    assert 3 in rung_records(study)  # its pairing stays a candidate


def test_a_kill_at_a_redirect_trains_the_pairing_on_resume(monkeypatch):
    study = _lever_study()
    study.set_user_attr(rung_mod.MINUTES_ATTR, 40.0)
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at([], {}))
    real, kills = rung_mod.add_stage_trial, []

    def killed_once(*args, **kwargs):  # the process dies as the redirect adds the pairing
        if not kills:
            kills.append(1)
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(rung_mod, "add_stage_trial", killed_once)
    setting = RungSetting(2, "32:2", 1.0, "last_f", 0, over_limit="reference")
    with pytest.raises(KeyboardInterrupt):
        rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=print)
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=print)  # the same command again
    assert set(rung_mod.redirected(study)) == {0}
    pairing, = [t for t in rung_mod.stage_trials_at(study, setting)
                if t.user_attrs[rung_mod.STAGE_ATTR]["network_of"] == 0]
    assert pairing.number in rung_records(study) and study.user_attrs[PENDING_ATTR] is None


def test_a_redirected_pairing_dropped_from_the_chosen_list_stays_promoted(monkeypatch):
    study = _lever_study()
    study.set_user_attr(rung_mod.MINUTES_ATTR, 40.0)
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at([], {}))
    setting = RungSetting(2, "32:2", 1.0, "last_f", 0, over_limit="reference")
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=print)
    study.set_user_attr(f"{rung_mod.STAGE_ATTR}:{setting.id}", [])  # two processes appended at once: one list lost
    assert 3 in {t.number for t in rung_mod.promoted(study, setting)}  # read from #0's redirect record


@pytest.mark.parametrize("lever", [False, True])
def test_run_order_is_the_order_the_rung_trained_in(monkeypatch, lever):
    """search.timebudget's replay takes the rung's runs in `run_order`: the order `train_at` was called in; with the
    lever the reference first and a redirected pick's pairing at the pick's place."""
    calls = []
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at(calls, {}))
    if lever:
        study = _lever_study()
        study.set_user_attr(rung_mod.MINUTES_ATTR, 40.0)
        setting = RungSetting(2, "32:2", 1.0, "last_f", 0, over_limit="reference")
    else:
        study = _study_with([(None, 0.60), ("dw_unet@R85", 0.40), (None, 0.55), ("bisenet_style@R85", 0.30),
                             (None, 0.50)])
        setting = RungSetting(2, "128:4,256:2", 1.0, "mean_last2_f", 0)
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=lambda line: None)
    assert len(calls) >= 3 and rung_mod.run_order(study, setting)[:len(calls)] == calls
    if lever:
        assert calls[0] == rung_mod.reference(study).number and rung_mod.redirected(study, setting)
