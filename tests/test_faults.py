"""Faults in the rung's lever, the portfolio and resumed studies (issue 37): nothing stuck, nothing silently
rewritten. Each test failed on the code before its fix (docs/reliability.md)."""

from __future__ import annotations

import optuna
import pytest

import search.rung as rung_mod
from search.rung import PENDING_ATTR, RungSetting, rung_records
from space.portfolio import R85
from space.presets import PRESETS
from tests.test_rung import OTHER_RECIPE, _fake_train_at, _speed, _study_of


class _Numbered:
    number = -1


def test_a_pick_foretold_just_over_the_limit_finishes_the_rung(monkeypatch):
    """Item 1: foretold at 40.02 min under --final-minutes 40, the record kept 40.0, which finished() read as
    within the limit: the pick was redirected again on every run and the rung never finished."""
    ref_minutes = rung_mod.final_minutes(_fake_train_at([], {})(_Numbered(), {}, "32:2", 0, None),
                                         "128:24,256:12")  # what the reference's fake rung run predicts
    speed = ref_minutes * 50.0 / 40.02  # the pick's proxy images/s that foretells 40.02 min
    study = _study_of([({**PRESETS["dw_unet"], **R85, **OTHER_RECIPE}, _speed(speed), 0.60),
                       ({**PRESETS["dw_unet"], **R85}, {"portfolio": "dw_unet@R85", **_speed(50.0)}, 0.40)])
    study.set_user_attr(rung_mod.MINUTES_ATTR, 40.0)
    calls, lines = [], []
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at(calls, {}))
    setting = RungSetting(1, "32:2", 1.0, "last_f", 0, over_limit="reference")
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=lines.append)
    moved = rung_mod.redirected(study)
    assert moved[0]["redirected"]["predicted_minutes"] == pytest.approx(40.02, abs=1e-6)
    assert study.user_attrs[PENDING_ATTR] is None and not rung_mod.unfinished(study, setting)
    said = [line for line in lines if "from its proxy speed" in line]
    assert said and "40.02 min from its proxy speed > --final-minutes 40" in said[0], said
    assert not any("40 min > --final-minutes 40" in line for line in lines)
    calls.clear()
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=lines.append)  # nothing is redirected again
    assert calls == [] and not any("tried again" in line for line in lines)


def test_over_text_rounds_only_as_far_as_it_stays_over_the_limit():
    assert rung_mod.over_text(66.04, 40) == "66"
    assert rung_mod.over_text(40.02, 40) == "40.02"
    assert rung_mod.over_text(40.4, 40.0) == "40.4"
    assert rung_mod.over_text(35.6, None) == "36"


def test_a_portfolio_entry_from_before_a_parameter_existed_trains_its_own_network():
    """Item 2: an entry without rfs_threshold or decoder_cbam passed the check (replay fills them), then the sampler
    drew them at random: with seed 1, rfs 0.1 and CBAM on (1,716,941 params instead of 1,713,363)."""
    import search.run as run_mod
    from space.portfolio import Entry, check_entry
    from space.sample import ADDED_PARAMS, InCapSampler, sample_config

    old = {k: v for k, v in {**PRESETS["dw_unet"], **R85}.items() if k not in ADDED_PARAMS}
    entry = check_entry(Entry("dw_unet@R85-old", old), "test")
    for seed in range(4):
        sampler = InCapSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        run_mod.enqueue_portfolio(study, study._storage, (entry,))
        trial = study.ask()
        arch, _, train_cfg = sample_config(trial)
        assert trial.params["rfs_threshold"] == 0.0 and trial.params["decoder_cbam"] is False, seed
        assert trial.user_attrs["params"] == 1_713_363 and train_cfg.rfs_threshold == 0.0


def test_a_rung_only_run_or_a_resume_keeps_what_the_study_recorded(tiny_data, tmp_path, monkeypatch, capsys):
    """Item 3: `--trials 0 --study S` without --data generated the synthetic faces and recorded them as the study's
    data; a resume with --sampler random or the default pruner recorded a sampler and pruner its trials never used.
    Now a resume takes the data folder, proxy, sampler and pruner the study recorded, and refuses other ones."""
    import search.run as run_mod

    monkeypatch.chdir(tmp_path)  # where the synthetic set would be generated (data/synthetic)
    storage = str(tmp_path / "s.journal")
    first = ["--data", str(tiny_data), "--storage", storage, "--study", "t", "--artifact-dir", str(tmp_path / "a"),
             "--proxy-size", "32", "--proxy-epochs", "1", "--subset", "1", "--signal", "last_f", "--device", "cpu",
             "--sampler", "random", "--pruner", "none", "--flops-cap", "0", "--seed", "2", "--rung", "0"]
    assert run_mod.main(["--trials", "2", *first]) == 0
    recorded = run_mod.optuna.load_study(study_name="t", storage=run_mod.open_storage(storage)).user_attrs
    bare = ["--storage", storage, "--study", "t", "--artifact-dir", str(tmp_path / "a"), "--device", "cpu"]
    capsys.readouterr()
    assert run_mod.main(["--trials", "0", *bare, "--rung", "1", "--rung-size", "32:1"]) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "data").exists()  # nothing generated
    assert "0 trials in" not in out and f"data {tiny_data}" in out  # item 9: no "0 trials in 0 s"
    study = run_mod.optuna.load_study(study_name="t", storage=run_mod.open_storage(storage))
    for key in ("data", "proxy"):
        assert study.user_attrs[key] == recorded[key], key
    assert rung_records(study)  # the rung ran on the study's proxy settings, not the device's defaults
    for flag, message in ((["--sampler", "tpe"], "--sampler tpe: the study was searched with random"),
                          (["--pruner", "hyperband"], "--pruner hyperband: the study was searched with none"),
                          (["--data", str(tmp_path)], f"--data {tmp_path}: the study was searched on")):
        assert run_mod.main(["--trials", "1", *bare, *flag]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert run_mod.main(["--trials", "1", *bare, "--rung", "0"]) == 0  # a plain resume: the recorded settings
    study = run_mod.optuna.load_study(study_name="t", storage=run_mod.open_storage(storage))
    assert study.user_attrs["proxy"] == recorded["proxy"], (study.user_attrs["proxy"], recorded["proxy"])


def test_a_flops_cap_no_proposal_meets_ends_in_one_line_and_leaves_no_trial_running(tiny_data, tmp_path,
                                                                                    monkeypatch, capsys):
    """Item 4: SpaceError was raised inside study.ask(): a traceback, exit 1, and a trial RUNNING for ever."""
    import functools

    import search.run as run_mod

    monkeypatch.setattr(run_mod, "InCapSampler", functools.partial(run_mod.InCapSampler, max_draws=3))
    storage = str(tmp_path / "s.journal")
    argv = ["--trials", "2", "--data", str(tiny_data), "--storage", storage, "--study", "t", "--artifact-dir",
            str(tmp_path / "a"), "--proxy-size", "32", "--proxy-epochs", "1", "--subset", "1", "--device", "cpu",
            "--rung", "0", "--flops-cap", "0.000001", "--portfolio", str(_one_entry(tmp_path))]
    assert run_mod.main(argv) == 2
    err = capsys.readouterr().err
    assert "no network of the space within the FLOPs cap" in err and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    study = optuna.load_study(study_name="t", storage=run_mod.open_storage(storage))
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states and states[0] == optuna.trial.TrialState.COMPLETE
    assert "FLOPs cap" in study.trials[-1].user_attrs["fail_reason"]


def _one_entry(tmp_path):
    from tests.test_search import one_entry_portfolio

    return one_entry_portfolio(tmp_path, "dw_unet")


def test_when_the_references_process_dies_mid_rung_the_survivor_takes_it_over_then_redirects(tmp_path,
                                                                                           monkeypatch):
    """Item 5: the surviving process found the reference's claim dead while it waited, and trained the over-limit
    pick at its own recipe, unlike an uninterrupted run."""
    import socket

    from search.storage import open_storage
    from tests.test_rung import _lever_study

    path = f"sqlite:///{tmp_path / 's.db'}"
    study = _lever_study(open_storage(path, heartbeat=None))
    study.set_user_attr(rung_mod.MINUTES_ATTR, 40.0)
    setting = RungSetting(2, "32:2", 1.0, "last_f", 0, over_limit="reference")
    other = rung_mod.Claims(optuna.load_study(study_name="r", storage=open_storage(path, heartbeat=None)))
    held = other.take(f"{rung_mod.RUNG_ATTR}:2:{setting.id}")  # another process trains the reference
    calls, lines = [], []
    monkeypatch.setattr(rung_mod, "train_at", _fake_train_at(calls, {}))
    real_take, passed = rung_mod._take, []

    def skip_reference_once(claims, trial, setting_, say):  # it holds the reference as this process passes it
        if trial.number == 2 and not passed:
            passed.append(trial.number)
            return None
        return real_take(claims, trial, setting_, say)
    monkeypatch.setattr(rung_mod, "_take", skip_reference_once)

    def it_dies(seconds):  # ... and dies while this process waits for its run
        other.storage.set_trial_user_attr(held, "worker", f"{socket.gethostname()}:{2**22 + 12345}")
    monkeypatch.setattr(rung_mod.time, "sleep", it_dies)
    rung_mod.run_rung(study, setting, {}, None, "128:24,256:12", say=lines.append)
    assert any("no live process trains it: trained here first" in line for line in lines), lines
    assert calls[:2] == [2, 3] and 0 not in calls  # the reference here, then #0's network at its recipe
    assert set(rung_mod.redirected(study)) == {0} and study.user_attrs[PENDING_ATTR] is None


def test_the_report_names_a_portfolio_entry_as_one_not_as_searched():
    """Item 6: recipe_and_architecture labelled `arch-tpe#28@R85` "searched #0 at the study's recipe" (final.json's
    found_by and the PDF)."""
    from search.records import ATTR, HAND_ATTR, FullSetting, recipe_and_architecture, record_key

    study = _study_of([({**PRESETS["dw_unet"], **R85}, {"portfolio": "arch-tpe#28@R85"}, 0.55),
                       ({**PRESETS["dw_unet"], **R85}, {"portfolio": "dw_unet@R85", "preset": "dw_unet"}, 0.54),
                       ({**PRESETS["dw_unet"], **R85, "s4_depth": 4}, {}, 0.50)])
    study.set_user_attr("fixed", R85)
    setting = FullSetting("128:24,256:12", 0, 0.99, "/d")
    for item, f, prefix in ((0, 0.8187, ATTR), (1, 0.8145, ATTR), (2, 0.8100, ATTR), ("dw_unet", 0.79, HAND_ATTR)):
        study.set_user_attr(record_key(prefix, item, setting), {"f": f, **setting.__dict__})
    rows = [row for row, _, _ in recipe_and_architecture(study)]
    assert "portfolio entry arch-tpe#28@R85 (#0) at the study's recipe" in rows
    assert "searched #2 at the study's recipe" in rows and not any("searched #0" in r for r in rows), rows


def test_one_reference_per_rung_setting_and_the_verdict_names_it(tmp_path):
    """Item 7: after a resume two runs carried the reference flag; the verdict said the pick "beat the reference #1"
    although the pick was the reference now."""
    import dataclasses

    from search.run import Settings
    from search.summary import summary

    study = _study_of([({**PRESETS["dw_unet"], **R85}, {"portfolio": "arch-tpe#28@R85"}, 0.55),
                       ({**PRESETS["dw_unet"], **R85}, {"portfolio": "dw_unet@R85", "preset": "dw_unet"}, 0.50),
                       ({**PRESETS["deeplab_lite"], **R85}, {}, 0.60)])
    setting = RungSetting(1, "32:2", 1.0, "last_f", 0)
    study.set_user_attr(rung_mod.SETTING_ATTR, dataclasses.asdict(setting))
    for n, f, flag in ((1, 0.70, True), (0, 0.76, True), (2, 0.72, False)):  # #1 flagged by an earlier run
        study.set_user_attr(f"{rung_mod.RUNG_ATTR}:{n}:{setting.id}", {"f": f, "proxy_f": study.trials[n].value,
                                                                       "reference": flag})
    text = rung_mod.verdict(study)
    assert text.startswith("the reference #0 (arch-tpe#28@R85) won the rung"), text
    s = Settings(data=tmp_path, study="r", storage="x", artifact_dir=tmp_path, proxy_size=32, proxy_epochs=1,
                 subset=1.0, sampler="tpe", pruner="none", seed=0, device="cpu", loader_workers=0)
    marked = [line for line in summary(study, s).splitlines() if "(the reference)" in line]
    assert len(marked) == 1 and marked[0].strip().startswith("#0"), marked


def test_messages_say_each_thing_once_and_rounded(tiny_data, tmp_path):
    """Item 9: "proxy F None" and an unrounded proxy F in train.final's first lines; "unfinished at X; choosing by
    the last finished rung, at X" with the same X; a limit described under --final-minutes inf (where `own` and
    `reference` then had two ids, so switching re-trained the whole rung for nothing)."""
    import dataclasses

    from conftest import run_cli

    from search.run import Settings
    from search.storage import open_storage
    from space.sample import as_trial

    path = str(tmp_path / "s.journal")
    study = optuna.create_study(study_name="t", storage=open_storage(path), direction="maximize")
    study.add_trial(as_trial({**PRESETS["dw_unet"], **R85}, {rung_mod.STAGE_ATTR: {"network_of": 0, "recipe_of": 0}}))
    res = run_cli("train.final", "--storage", path, "--study", "t", "--trial", "0", "--data", str(tiny_data),
                  "--size", "32", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "(proxy F n/a)" in res.stdout and "None" not in res.stdout.split("epoch 1/1")[0], res.stdout[:600]
    study.set_user_attr("proxy", {})
    pending, last = RungSetting(2, "32:2", 1.0, "last_f", 0), RungSetting(1, "32:2", 1.0, "last_f", 0)
    study.set_user_attr(PENDING_ATTR, dataclasses.asdict(pending))
    study.set_user_attr(rung_mod.SETTING_ATTR, dataclasses.asdict(last))
    note = rung_mod.unfinished_note(study)
    assert "choosing by the last finished rung" not in note and "choosing among the" in note, note
    other_seed = dataclasses.replace(last, seed=3)
    study.set_user_attr(rung_mod.SETTING_ATTR, dataclasses.asdict(other_seed))
    note = rung_mod.unfinished_note(study)
    assert note.endswith(f"choosing by the last finished rung, at {other_seed.describe()} (seed 3)"), note
    s = Settings(data=tmp_path, study="t", storage=path, artifact_dir=tmp_path, proxy_size=32, proxy_epochs=1,
                 subset=1.0, sampler="tpe", pruner="none", seed=0, device="cpu", loader_workers=0, rung_k=2,
                 final_minutes=None, over_limit="reference")
    assert "limit" not in s.rung().describe()
    assert s.rung().id == dataclasses.replace(s.rung(), over_limit="own").id == dataclasses.replace(s, over_limit="own"
                                                                                                   ).rung().id
    s.final_minutes = 40.0
    assert "time limit" in s.rung().describe()


def test_a_retried_trial_replays_its_params_without_drawing_a_proposal(monkeypatch):
    """Item 10 (held): a retry of a killed trial keeps its params but InCapSampler drew a proposal for it anyway,
    which was never used and whose redraws were counted in the summary's FLOPs-cap share."""
    from search.workers import retry_once
    from space.sample import InCapSampler, sample_config

    sampler = InCapSampler(lambda s: optuna.samplers.RandomSampler(seed=s), 0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    killed = study.ask()
    sample_config(killed)
    study.tell(killed, state=optuna.trial.TrialState.FAIL)
    retry_once(study, study.trials[0])
    drawn = []
    monkeypatch.setattr(sampler, "propose", lambda study, number: drawn.append(number) or {})
    retry = study.ask()
    sample_config(retry)
    assert drawn == [] and retry.params == study.trials[0].params and sampler.last_redrawn == 0


def test_a_claims_beat_goes_on_after_a_storage_error(monkeypatch):
    """Item 10 (held): the beat thread stopped on any storage error but OSError, so a live run's claim went stale
    and another host could train the run a second time."""
    import time

    study = optuna.create_study(study_name="c")
    claims = rung_mod.Claims(study)
    mine = claims.take("rung2:0:x")
    real, errors = claims.storage.set_trial_user_attr, []

    def flaky(trial_id, key, value):
        if not errors:
            errors.append(key)
            raise RuntimeError("database is locked")
        return real(trial_id, key, value)
    monkeypatch.setattr(claims.storage, "set_trial_user_attr", flaky)
    monkeypatch.setattr(rung_mod, "CLAIM_BEAT_S", 0.05)
    before = claims.storage.get_trial(mine).user_attrs["beat"]
    with pytest.warns(UserWarning, match="beat not written"), claims.beating(mine):
        time.sleep(0.4)
    assert errors and claims.storage.get_trial(mine).user_attrs["beat"] > before


def test_a_live_process_on_this_host_keeps_its_claim_however_late_its_beat():
    """Item 10 (held): a claim whose beat was 600 s old was taken over even when its process on this host still
    ran (a stalled beat thread, a suspended machine): the run could be trained twice."""
    import os
    import socket
    import time

    study = optuna.create_study(study_name="c")
    claims = rung_mod.Claims(study)
    late = optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, user_attrs={
        "key": "rung2:0:x", "worker": f"{socket.gethostname()}:{os.getpid()}",
        "beat": time.time() - rung_mod.CLAIM_STALE_S - 60})
    rival = claims.storage.create_new_trial(claims.study._study_id, template_trial=late)
    claims.storage.set_trial_state_values(rival, optuna.trial.TrialState.RUNNING)
    assert claims.held(["rung2:0:x"]) == ["rung2:0:x"] and claims.take("rung2:0:x") is None


def test_sigterm_with_one_worker_fails_the_running_trial_and_enqueues_it_again(tiny_data, tmp_path):
    """Item 10 (held): with --workers 1 the trial trains in the main process, and SIGTERM's SystemExit went past
    Optuna: the trial stayed RUNNING until a heartbeat grace period or the next start noticed."""
    import signal
    import subprocess

    from tests.test_reliability import ENV, load, search_cmd, wait_mid_trial

    storage = str(tmp_path / "s.journal")
    proc = subprocess.Popen(search_cmd(tiny_data, storage, "t", 20, tmp_path / "art"), cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = wait_mid_trial(storage, "t")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "the running trial is failed and enqueued again" in err, err
    trials = load(storage, "t").trials
    killed = trials[running.number]
    assert killed.state == optuna.trial.TrialState.FAIL and killed.user_attrs["fail_reason"].startswith("terminated")
    assert [t.system_attrs.get("failed_trial") for t in trials if t.state == optuna.trial.TrialState.WAITING][-1] \
        == running.number
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in trials]


def _files(folder) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def _portfolio_cases(tmp_path) -> list[tuple[list[str], str]]:
    import json

    good = {**PRESETS["dw_unet"], **R85}
    files = {"not-json.json": "{nope", "dict.json": json.dumps({"name": "a"}), "empty.json": "[]",
             "no-params.json": json.dumps([{"name": "a"}]),
             "params-list.json": json.dumps([{"name": "a", "params": [1]}]),
             "unknown-param.json": json.dumps([{"name": "a", "params": {**good, "wings": 2}}]),
             "outside.json": json.dumps([{"name": "a", "params": {**good, "loss_dice": 7.0}}]),
             "nan.json": '[{"name": "a", "params": {"lr_adamw": NaN}}]',
             "twice.json": json.dumps([{"name": "a", "params": good}, {"name": "a", "params": good}])}
    cases = []
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        cases.append((["--portfolio", str(tmp_path / name)], f"--portfolio {tmp_path / name}"))
    cases += [(["--portfolio", str(tmp_path / "missing.json")], "not a readable JSON file"),
              (["--portfolio", str(tmp_path)], "not a readable JSON file")]
    return cases


SEARCH_CASES = [
    (["--final-minutes", "-5"], "--final-minutes must be > 0"), (["--final-minutes", "0"], "--final-minutes must be"),
    (["--final-minutes", "nan"], "--final-minutes must be"), (["--final-minutes", "ten"], "--final-minutes"),
    (["--over-limit-recipe", "both"], "invalid choice: 'both'"), (["--over-limit-recipe", ""], "invalid choice"),
    (["--trials", "-1"], "--trials must be >= 0"),
    (["--trials", "4294967296"], "--trials must be at most 2147483647"), (["--trials", "1.5"], "--trials"),
    (["--trials", "nan"], "--trials"),
    (["--subset", "nan"], "--subset must be in (0, 1]"), (["--subset", "0"], "--subset"),
    (["--rung-subset", "inf"], "--rung-subset"), (["--flops-cap", "nan"], "--flops-cap"),
    (["--flops-cap", "inf"], "--flops-cap"), (["--flops-cap", "-1"], "--flops-cap"),
    (["--heartbeat", "nan"], "--heartbeat"),
    (["--timeout", "inf"], "--timeout"), (["--timeout", "-3"], "--timeout"), (["--rung", "-2"], "--rung must be"),
    (["--seed", "-1"], "--seed must be"), (["--workers", "0"], "--workers must be"),
    (["--rung-size", "128:nan"], "--rung-size 128:nan"), (["--proxy-size", "0"], "--proxy-size must be"),
    (["--fix", "lr_adamw=nan"], "--fix lr_adamw='nan': outside the space"),
    (["--fix", "loss_dice=NaN"], "--fix loss_dice=nan: outside the space"), (["--fix", "wings=2"], "--fix wings"),
]


@pytest.mark.parametrize("case", range(len(SEARCH_CASES) + 11))
def test_search_run_refuses_nonsense_in_one_line_before_writing_anything(case, tiny_data, tmp_path, capsys):
    """Item 11: each new flag of the last round, swept with wrong values: one line on stderr, exit 2, nothing
    created (the storage, the artifacts, a generated data set)."""
    import search.run as run_mod

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    argv, message = (SEARCH_CASES + _portfolio_cases(inputs))[case]
    work = tmp_path / "work"
    work.mkdir()
    before = _files(tmp_path)
    try:
        status = run_mod.main(["--data", str(tiny_data), "--storage", str(work / "s.journal"), "--study", "t",
                               "--artifact-dir", str(work / "art"), "--device", "cpu", *argv])
    except SystemExit as e:  # argparse's refusals
        status = e.code
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.startswith("error:"), (argv, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert _files(tmp_path) == before


FINAL_CASES = [
    (["--predict-sizes", "0"], "--predict-sizes '0'"), (["--predict-sizes", "abc"], "--predict-sizes 'abc'"),
    (["--predict-sizes", "32+"], "--predict-sizes '32+'"), (["--predict-sizes", "nan"], "--predict-sizes 'nan'"),
    (["--predict-sizes", "-32"], "--predict-sizes '-32'"), (["--predict-sizes", "5000"], "--predict-sizes '5000'"),
    (["--predict-sizes", "32+40+48+56+64"], "--predict-sizes"), (["--predict-sizes", ""], "--predict-sizes"),
    (["--set", "lr_adamw=nan"], "--set"), (["--set", "lr_adamw=NaN"], "--set"), (["--set", "lr_adamw=-1"], "--set"),
    (["--set", "lr_adamw=Infinity"], "--set"), (["--set", "batch_size=7"], "--set"),
    (["--set", "loss_dice=abc"], "--set"),
    (["--set", "wings=2"], "--set wings"), (["--set", "=1"], "expected NAME=VALUE"),
    (["--set", "loss_dice"], "NAME=VALUE"),
    (["--set", "rfs_threshold=-0.5"], "--set"), (["--set", "optimizer=adam"], "--set"), (["--ema", "nan"], "--ema"),
    (["--ema", "1"], "--ema"), (["--seed", "x"], "--seed"), (["--epochs", "0", "--size", "32"], "--epochs"),
]


@pytest.mark.parametrize("argv, message", FINAL_CASES)
def test_train_final_refuses_nonsense_in_one_line_before_writing_anything(argv, message, tiny_data, tmp_path, capsys):
    import train.final as final

    before = _files(tmp_path)
    try:
        status = final.main(["--preset", "dw_unet", "--data", str(tiny_data), "--size", "32", "--epochs", "1",
                             "--device", "cpu", "--out", str(tmp_path / "out"), *argv])
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.startswith("error:"), (argv, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert _files(tmp_path) == before
