"""The search's second rung (issue 21): exactly k promoted, records in the study, resumed after a kill, and
train.final --study best deciding by it."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from conftest import run_cli

import search.run as run_mod
import search.rung as rung_mod
from search.rung import PENDING_ATTR, RUNG_ATTR, SETTING_ATTR, RungSetting, rung_records
from search.storage import open_storage
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
    assert set(records) == {complete[0].number, complete[1].number}  # exactly k = 2: the two best proxies
    for number, record in records.items():
        assert 0 <= record["f"] <= 1 and record["f"] == record["mean_last2_f"]  # the study's signal
        assert record["proxy_f"] == study.trials[number].value and record["schedule"] == "32:2"
    assert study.user_attrs[PENDING_ATTR] is None
    assert "rung 2: the top 2 complete trials at 32 px x 2 epochs on 100% of train" in res.stdout
    assert "second rung (2 trials): best #" in res.stdout and "s of training (" in res.stdout


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
                                          (["--rung-subset", "0"], "--rung-subset must be in (0, 1]")])
def test_bad_rung_arguments_are_named(tmp_path, args, message):
    res = run_cli("search.run", "--storage", f"sqlite:///{tmp_path / 's.db'}", *args, cwd=tmp_path)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
