from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
import torch
from conftest import StopAtFit, capture_initial_weights, run_cli, run_main

import search.run as run_mod
from search.rung import RungSetting
from search.storage import StorageError, open_storage, pick_trial
from space.config import BUDGET
from space.portfolio import PORTFOLIO, R85
from space.presets import PRESETS
from train.infer import DEVICE_DEFAULTS

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def search_args(data: Path, storage: str, art: Path, trials: int, *extra: str, rung: bool = False) -> list[str]:
    """A small search on the CPU; the second rung only when a test asks (tests/test_rung.py tests it)."""
    return ["search.run", "--trials", str(trials), "--data", str(data), "--storage", storage, "--study", "t",
            "--artifact-dir", str(art), "--proxy-size", "64", "--proxy-epochs", "2", "--subset", "1",
            "--device", "cpu", *([] if rung else ["--rung", "0"]), *extra]


def budget(trials: int):
    """The invocation's trial budget that search.run shares between its workers."""
    import multiprocessing as mp

    return mp.get_context("spawn").Value("i", trials)


def load(storage: str) -> optuna.Study:
    return optuna.load_study(study_name="t", storage=open_storage(storage, heartbeat=None))


def test_three_trial_search_then_resume(tiny_data, tmp_path):
    storage, art = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "art"
    # the CPU default runs the second rung on the best three, at 128:4,256:2 on all of train: its schedule is
    # checked here and shrunk for the run (tests/test_rung.py trains rungs), its K is the default's
    cpu = DEVICE_DEFAULTS["cpu"]
    defaults = run_mod.settings_from_args(run_mod.parse_args(["--data", str(tiny_data), "--device", "cpu"]))
    assert (defaults.rung_k, defaults.rung_schedule, defaults.rung_subset) == (3, "128:4,256:2", 1.0)
    # and a pick foretold over the limit from its proxy speed is judged at the reference's recipe (search.rung)
    assert defaults.rung() == RungSetting(3, cpu["rung_schedule"], cpu["rung_subset"], cpu["signal"], 0,
                                          over_limit="reference")
    # picks whose final is predicted over 40 minutes are left out on the CPU (the whole flow within 2 hours); inf: off
    assert defaults.final_minutes == cpu["final_minutes"] == 40.0 and not defaults.final_minutes_given
    assert run_mod.settings_from_args(run_mod.parse_args(["--data", str(tiny_data), "--device", "cpu",
                                                          "--final-minutes", "inf"])).final_minutes is None
    res = run_cli(*search_args(tiny_data, storage, art, 3, "--rung-size", "32:2", rung=True), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rung = RungSetting(3, "32:2", cpu["rung_subset"], cpu["signal"], 0, over_limit="reference")
    assert f"rung 2: the top 3 complete trials at {rung.describe()}" in res.stdout
    study = load(storage)
    assert study.user_attrs["final_minutes"] == 40.0  # what train.final --study best reads
    # a new study starts from the portfolio, in its order, at the entries' own recipe (R85): all four entries are
    # enqueued, three trained (--trials 3), the fourth waits for the next run
    assert [t.user_attrs.get("portfolio") for t in study.trials] == [e.name for e in PORTFOLIO]
    assert all(t.state in FINISHED for t in study.trials[:3])
    assert study.trials[3].state == optuna.trial.TrialState.WAITING
    assert all({k: t.params[k] for k in R85} == R85 for t in study.trials[:3])
    assert all(t.user_attrs["params"] < BUDGET for t in study.trials[:3])
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    for t in complete:
        assert {"flops", "per_class_f", "epochs_run", "seconds", "train_images_per_s"} <= set(t.user_attrs)
        artifacts = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        assert len(artifacts) == 1 and artifacts[0].mimetype == "image/png"
        assert (art / artifacts[0].artifact_id).stat().st_size > 1000
    assert "optuna-dashboard" in res.stdout and "python -m train.final --study best" in res.stdout
    # one plain line per finished trial, although no terminal is attached (output captured)
    for t in study.trials[:3]:
        assert f"trial {t.number} {t.state.name.lower()}" in res.stdout
    assert re.search(r"trial 0 \w+.*: F=[0-9.]+ best=[0-9.na]+ params=1,[0-9,]+ \d+ s", res.stdout)
    # the CPU default signal: a complete trial reports the mean of its last two evaluations
    assert study.user_attrs["proxy"]["signal"] == "mean_last2_f"
    for t in complete:
        steps = sorted(t.intermediate_values)
        assert t.value == pytest.approx(sum(t.intermediate_values[e] for e in steps[-2:]) / len(steps[-2:]))
    # resume: the same command again adds trials, loses none
    res = run_cli(*search_args(tiny_data, storage, art, 2), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    study = load(storage)
    assert len(study.trials) == 5 and all(t.state in FINISHED for t in study.trials)
    assert len({t.number for t in study.trials}) == 5
    # another ranking signal would mix incomparable values in one study: refused
    res = run_cli(*search_args(tiny_data, storage, art, 1, "--signal", "last_f"), cwd=tmp_path)
    assert res.returncode == 2 and "signal mean_last2_f -> last_f" in res.stderr
    # so would another seed: the trials and rung runs were seeded from the recorded one (analysis replays them)
    res = run_cli(*search_args(tiny_data, storage, art, 1, "--seed", "3"), cwd=tmp_path)
    assert res.returncode == 2 and "seed 0 -> 3" in res.stderr and load(storage).user_attrs["proxy"]["seed"] == 0


def one_entry_portfolio(tmp_path: Path, name: str = "deeplab_lite") -> Path:
    path = tmp_path / "portfolio.json"
    path.write_text(json.dumps([{"name": f"{name}@R85", "params": {**PRESETS[name], **R85}}]))
    return path


def test_no_trial_is_created_over_the_flops_cap_and_every_trial_trains(tiny_data, tmp_path):
    """Proposals are drawn inside the cap, as inside the parameter budget: --trials N ends with N trials that
    trained, none stopped before training (random proposals are mostly over 0.9x the costliest preset)."""
    storage, cap = f"sqlite:///{tmp_path / 's.db'}", 0.9
    res = run_cli(*search_args(tiny_data, storage, tmp_path / "art", 4, "--proxy-size", "32", "--proxy-epochs", "1",
                               "--pruner", "none", "--sampler", "random", "--flops-cap", str(cap), "--portfolio",
                               str(one_entry_portfolio(tmp_path))), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    trials, limit = load(storage).trials, cap * run_mod.preset_flops(32)
    assert len(trials) == 4 and trials[0].user_attrs["portfolio"] == "deeplab_lite@R85"
    for t in trials:
        assert t.state == optuna.trial.TrialState.COMPLETE and t.intermediate_values, t.number  # all trained
        assert t.user_attrs["flops"] <= limit and "over_flops_cap" not in t.user_attrs
    redrawn = sum(t.user_attrs["draws_over_cap"] for t in trials[1:])  # the proposals: not the portfolio entry
    assert redrawn > 0  # the random sampler did draw networks over the cap: they never became trials
    assert f"FLOPs cap: {redrawn} of {redrawn + 3} draws were over it and drawn again" in res.stdout


def test_in_cap_proposals_are_seeded_by_trial_number_and_stay_within_the_cap():
    from space.budget import count_flops
    from space.sample import InCapSampler, sample_config

    def proposals(seed: int, cap: float | None, n: int = 3) -> list[dict]:
        sampler = InCapSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed, cap, 32)
        study = optuna.create_study(sampler=sampler)
        out = []
        for _ in range(n):
            trial = study.ask()
            arch = sample_config(trial)[0]
            assert cap is None or count_flops(arch, 32) <= cap
            study.tell(trial, 0.0)
            out.append(dict(trial.params))
        return out

    cap = 0.9 * run_mod.preset_flops(32)
    first = proposals(0, cap)
    assert first == proposals(0, cap)  # a study replays its proposals
    assert len({json.dumps(p, sort_keys=True) for p in first}) == 3  # each trial number its own stream
    assert proposals(1, cap) != first
    # a cap no network meets: one line naming the cap, not an endless loop
    with pytest.raises(ValueError, match="no network of the space within the FLOPs cap"):
        InCapSampler(lambda s: optuna.samplers.RandomSampler(seed=s), 0, 1.0, 32, max_draws=5).propose(
            optuna.create_study(), 0)


def test_two_workers_on_a_journal_file(tiny_data, tmp_path):
    storage = str(tmp_path / "study.journal")
    res = run_cli(*search_args(tiny_data, storage, tmp_path / "art", 4, "--workers", "2", "--proxy-epochs",
                               "1"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    study = load(storage)
    numbers = [t.number for t in study.trials]
    assert len(numbers) >= 4 and len(set(numbers)) == len(numbers)
    assert all(t.state in FINISHED for t in study.trials)


def test_workers_on_sqlite_are_refused(tiny_data, tmp_path):
    res = run_cli(*search_args(tiny_data, f"sqlite:///{tmp_path / 's.db'}", tmp_path / "a", 2, "--workers", "2"))
    assert res.returncode == 2 and "SQLite is unsafe for parallel writers" in res.stderr


@pytest.mark.parametrize("args,message", [
    (["--trials", "-1"], "--trials must be >= 0 (0 = only the second rung), got -1"),
    (["--trials", "0", "--rung", "0"], "--trials 0 runs only the second rung, and the rung is off here"),
    (["--storage", "redis://localhost/0"], "unknown storage scheme 'redis'"),
    (["--data", "/nonexistent/faces"], "folder missing"),
    (["--fix", "bogus=1"], "--fix bogus: not a parameter of the search space"),
    (["--fix", "batch_size=9"], "--fix batch_size=9: outside the space; expected one of 8, 16"),
    (["--fix", "lr_adamw=0.5"], "--fix lr_adamw=0.5: outside the space; expected 0.0005..0.01"),
    (["--fix", "batch_size"], "expected NAME=VALUE"),
    (["--recipe-from", "nope"], "study 'nope' not found"),
    (["--recipe-from", "nope:best"], "expected STUDY or STUDY:TRIAL"),
])
def test_bad_arguments(tmp_path, args, message):
    res = run_main("search.run", "--storage", f"sqlite:///{tmp_path / 's.db'}", *args, cwd=tmp_path)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_a_trial_that_raises_is_failed_and_the_next_runs(tiny_data, tmp_path, monkeypatch):
    import train.loop

    real_fit, calls = train.loop.fit, []

    def flaky_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise train.loop.NonFiniteLoss("loss became nan at epoch 1")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train.loop, "fit", flaky_fit)
    s = run_mod.Settings(data=tiny_data, study="t", storage=f"sqlite:///{tmp_path / 's.db'}",
                         artifact_dir=tmp_path / "art", proxy_size=32, proxy_epochs=1, subset=1.0, sampler="tpe",
                         pruner="none", seed=0, device="cpu", loader_workers=0)
    run_mod.run_worker(s, budget(2), None, 0)
    trials = load(s.storage).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert "NonFiniteLoss: loss became nan" in trials[0].user_attrs["fail_reason"]
    assert trials[1].state == optuna.trial.TrialState.COMPLETE


def test_portfolio_enqueued_by_concurrent_processes_is_deduplicated(tmp_path):
    """Optuna's skip_if_exists races across processes; enqueue_portfolio drops the duplicates it finds."""
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=None)
    study = optuna.create_study(study_name="t", storage=storage, direction="maximize")
    entries = PORTFOLIO[:3]
    for e in entries:  # a second process's enqueue, interleaved before the check
        study.enqueue_trial(e.params, user_attrs={"portfolio": e.name})
    first = study.ask()  # a worker already claimed the first entry: it must stay untouched
    study.enqueue_trial(entries[1].params, user_attrs={"portfolio": entries[1].name})  # a third one
    dropped = run_mod.enqueue_portfolio(study, storage, entries)
    trials = study.get_trials(deepcopy=False)
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert sorted(t.user_attrs["portfolio"] for t in waiting) == sorted(e.name for e in entries[1:])
    assert trials[first.number].state == optuna.trial.TrialState.RUNNING
    assert dropped and all(trials[n].state == optuna.trial.TrialState.FAIL for n in dropped)
    kept = {t.number for t in trials if t.number not in dropped}
    assert {trials[n].user_attrs["duplicate_of"] for n in dropped} <= kept
    assert len(dropped) == 1 and len(trials) == 4  # only the extra entry; the rest skipped as existing
    # a retry of a killed entry's trial keeps its name and must survive
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING,
                                              user_attrs={"portfolio": entries[2].name},
                                              system_attrs={"failed_trial": 0}))
    assert run_mod.enqueue_portfolio(study, storage, entries) == []
    assert study.get_trials(deepcopy=False)[-1].state == optuna.trial.TrialState.WAITING
    # a duplicate that another process dropped between our read and our claim is skipped, not an error
    dup = study.get_trials(deepcopy=False)[3]
    assert dup.state == optuna.trial.TrialState.FAIL and not run_mod.claim(storage, dup)


def test_the_portfolio_enters_a_study_when_it_starts_never_on_a_resume(tmp_path, capsys):
    s = run_mod.Settings(data=tmp_path, study="t", storage="", artifact_dir=tmp_path / "a", proxy_size=32,
                         proxy_epochs=1, subset=1.0, sampler="tpe", pruner="none", seed=0, device="cpu",
                         loader_workers=0, portfolio=PORTFOLIO[:1])
    study = optuna.create_study(direction="maximize")
    run_mod.enter_portfolio(study, study._storage, s, given=True)
    assert [t.user_attrs["portfolio"] for t in study.trials] == [PORTFOLIO[0].name]
    s.portfolio = PORTFOLIO  # resumed with another (here the built-in) portfolio: nothing is added
    assert run_mod.enter_portfolio(study, study._storage, s, given=True) == [] and len(study.trials) == 1
    assert "note: --portfolio ignored: the portfolio enters a study when it starts" in capsys.readouterr().out


def test_a_recipe_from_study_of_before_rfs_threshold_still_resumes(tmp_path):
    """Its recorded fixed params lack rfs_threshold (the parameter did not exist), which recipe_params now names
    at its old value 0.0; another value is still refused."""
    from space.sample import recipe_params

    old_fixed = {k: v for k, v in R85.items() if k != "rfs_threshold"}
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("proxy", {"size": 32, "epochs": 1, "subset": 1.0, "signal": "last_f", "seed": 0})
    study.set_user_attr("fixed", old_fixed)
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    s = run_mod.Settings(data=tmp_path, study="t", storage="", artifact_dir=tmp_path / "a", proxy_size=32,
                         proxy_epochs=1, subset=1.0, sampler="tpe", pruner="none", seed=0, device="cpu",
                         loader_workers=0, signal="last_f")
    s.fixed = recipe_params({**PRESETS["dw_unet"], **old_fixed})
    assert s.fixed["rfs_threshold"] == 0.0
    run_mod.check_resumable(study, s)  # accepted
    s.fixed = {**s.fixed, "rfs_threshold": 0.3}
    with pytest.raises(ValueError, match="was searched with other settings"):
        run_mod.check_resumable(study, s)


def test_portfolio_file_errors_are_one_line(tmp_path):
    from space.portfolio import load_portfolio
    from space.sample import SpaceError

    path = tmp_path / "p.json"
    for items, message in [([{"name": "a", "params": 5}], "entry 'a': 'params' must be a JSON object"),
                           ([{"name": "a", "params": {"foo": 1}}], f"--portfolio {path}: entry 'a': foo: not a "
                                                                   "parameter of the search space")]:
        path.write_text(json.dumps(items))
        with pytest.raises(SpaceError) as e:
            load_portfolio(path)
        assert message in str(e.value) and str(e.value).count("--portfolio") == 1, str(e.value)


def test_a_trial_starts_from_the_same_weights_whatever_ran_before_it(tmp_path, monkeypatch):
    """Initial weights depend on the seed and trial number only (not on the process's earlier draws)."""
    import torch

    calls = capture_initial_weights(monkeypatch)
    s = run_mod.Settings(data=tmp_path, study="t", storage="", artifact_dir=tmp_path / "a", proxy_size=32,
                         proxy_epochs=1, subset=1.0, sampler="tpe", pruner="none", seed=5, device="cpu",
                         loader_workers=0)
    objective = run_mod.Objective(s, None, None)
    for draws in (0, 1000):
        torch.randn(draws)  # what an earlier trial or build would have consumed
        study = optuna.create_study()
        study.enqueue_trial(run_mod.PRESETS["deeplab_lite"])
        with pytest.raises(StopAtFit):
            objective(study.ask())
    s.seed = 6
    with pytest.raises(StopAtFit):
        study = optuna.create_study()
        study.enqueue_trial(run_mod.PRESETS["deeplab_lite"])
        objective(study.ask())
    seen = [c.weights for c in calls]
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])


RECIPE = {"batch_size": 8, "loss_dice": 1.0, "class_weight_power": 0.25, "optimizer": "adamw", "lr_adamw": 0.009}


def test_fixed_params_hold_in_every_trial_and_train_final_replays_them(tiny_data, tmp_path):
    storage, art = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "art"
    fix = [a for k, v in RECIPE.items() for a in ("--fix", f"{k}={v}")]
    res = run_cli(*search_args(tiny_data, storage, art, 4, "--proxy-size", "32", "--proxy-epochs", "1",
                               "--pruner", "none", *fix), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    study = load(storage)
    assert study.user_attrs["fixed"] == RECIPE
    for t in study.trials:  # the portfolio's entries take the fixed values too
        assert {k: t.params[k] for k in RECIPE} == RECIPE, t.number
    # train.final replays a trial's fixed params exactly
    out = tmp_path / "final"
    res = run_cli("train.final", "--study", "t", "--trial", "3", "--storage", storage, "--epochs", "1",
                  "--size", "32", "--out", str(out), "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["train"]["batch_size"] == 8 and last["train"]["lr"] == 0.009 and last["loss"]["dice"] == 1.0
    assert last["loss"]["class_weight_power"] == 0.25
    # resuming the study under other fixed params would mix incomparable F values: refused
    res = run_cli(*search_args(tiny_data, storage, art, 1, "--proxy-size", "32", "--proxy-epochs", "1"),
                  cwd=tmp_path)
    assert res.returncode == 2 and "was searched with other settings (fixed params" in res.stderr
    # --recipe-from copies the loss and optimiser params of a trial (the others stay searched) into a new study
    res = run_cli(*search_args(tiny_data, storage, art, 1, "--proxy-size", "32", "--proxy-epochs", "1",
                               "--pruner", "none", "--study", "u", "--recipe-from", "t:3"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    source = study.trials[3].params
    u = optuna.load_study(study_name="u", storage=open_storage(storage, heartbeat=None))
    assert u.user_attrs["fixed"]["lr_adamw"] == 0.009 and "n_stages" not in u.user_attrs["fixed"]
    assert all(u.trials[0].params[k] == source[k] for k in u.user_attrs["fixed"])


def test_nonfinite_loss_and_oom_fail_the_trial_other_errors_end_the_run(tiny_data, tmp_path, monkeypatch):
    import train.loop

    s = run_mod.Settings(data=tiny_data, study="t", storage=f"sqlite:///{tmp_path / 's.db'}",
                         artifact_dir=tmp_path / "art", proxy_size=32, proxy_epochs=1, subset=1.0, sampler="tpe",
                         pruner="none", seed=0, device="cpu", loader_workers=0)

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(train.loop, "fit", oom)
    run_mod.run_worker(s, budget(1), None, 0)
    assert "OutOfMemoryError" in load(s.storage).trials[0].user_attrs["fail_reason"]

    def bug(*args, **kwargs):
        raise KeyError("a bug in the code")

    monkeypatch.setattr(train.loop, "fit", bug)
    with pytest.raises(KeyError, match="a bug in the code"):
        run_mod.run_worker(s, budget(3), None, 0)
    assert len(load(s.storage).trials) == 2  # it stopped at the first such trial instead of failing all three


def test_pick_trial_number_or_best_complete():
    # the one lookup behind train.final --trial and search.run --recipe-from STUDY[:TRIAL]
    study = optuna.create_study(direction="maximize", study_name="s")
    for value in (0.2, 0.7, 0.5):
        study.add_trial(optuna.trial.create_trial(params={"x": value}, distributions={
            "x": optuna.distributions.FloatDistribution(0, 1)}, value=value))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))  # no params
    assert pick_trial(study, None).number == 1
    assert pick_trial(study, 2).params == {"x": 0.5}
    for number in (3, 4, -1):
        with pytest.raises(StorageError, match=f"trial {number} not found"):
            pick_trial(study, number)
    empty = optuna.create_study(study_name="e")
    with pytest.raises(StorageError, match="no complete trial in study 'e'"):
        pick_trial(empty, None)


def test_a_study_another_process_is_still_setting_up_is_not_refused(tmp_path):
    """Workers started together: one creates the study and enqueues the presets, a second opens it before the
    first has written its settings (the CI failure of test_one_of_three_postgres_workers_killed_then_resumed: the
    second read the missing settings as a legacy study's, signal last_f, and exited 2). A study with finished
    trials and no settings is a legacy one and is still checked."""
    s = run_mod.Settings(data=tmp_path, study="t", storage="mem", artifact_dir=tmp_path, proxy_size=64,
                         proxy_epochs=4, subset=0.4, sampler="tpe", pruner="none", seed=0, device="cpu",
                         loader_workers=0, signal="mean_last2_f", fixed={"batch_size": 8})
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"batch_size": 8})
    run_mod.check_resumable(study, s)  # only WAITING trials, no settings yet: nothing to compare
    study.tell(study.ask(), 0.5)
    with pytest.raises(ValueError, match="signal last_f -> mean_last2_f"):
        run_mod.check_resumable(study, s)
    study.set_user_attr("proxy", {"size": 64, "epochs": 4, "subset": 0.4, "signal": "mean_last2_f"})
    study.set_user_attr("fixed", {"batch_size": 8})
    run_mod.check_resumable(study, s)
