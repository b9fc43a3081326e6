"""Parallel search (issue 19): workers that do not repeat each other, an exact trial count, and RUNNING trials
left by dead workers on a journal file."""

from __future__ import annotations

import json
import socket
import subprocess

import optuna
from conftest import run_cli

from search.storage import open_storage
from space.sample import sample_config


def _args(data, storage, art, trials, *extra):
    return ["search.run", "--trials", str(trials), "--data", str(data), "--storage", storage, "--study", "t",
            "--artifact-dir", str(art), "--proxy-size", "32", "--proxy-epochs", "1", "--subset", "1",
            "--pruner", "none", "--device", "cpu", "--rung", "0", *extra]


def _load(storage: str) -> optuna.Study:
    return optuna.load_study(study_name="t", storage=open_storage(storage, heartbeat=None))


def test_two_random_workers_on_a_journal_never_sample_the_same_params(tiny_data, tmp_path):
    storage = str(tmp_path / "study.journal")
    res = run_cli(*_args(tiny_data, storage, tmp_path / "art", 9, "--workers", "2", "--sampler", "random",
                         "--flops-cap", "0"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    searched = [t for t in _load(storage).trials if "portfolio" not in t.user_attrs]
    assert len(searched) == 5
    keys = [json.dumps(t.params, sort_keys=True) for t in searched]
    assert len(set(keys)) == len(keys), "two workers sampled identical params"


def test_trials_n_runs_exactly_n_whatever_the_number_of_workers(tiny_data, tmp_path):
    for trials, workers in ((2, 3), (3, 2)):
        storage = str(tmp_path / f"{trials}-{workers}.journal")
        res = run_cli(*_args(tiny_data, storage, tmp_path / "art", trials, "--workers", str(workers)), cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        finished = [t for t in _load(storage).trials if t.state.is_finished()]
        assert len(finished) == trials, (trials, workers, [t.state.name for t in _load(storage).trials])


def _running_trial(study: optuna.Study, worker: str | None) -> int:
    trial = study.ask()
    sample_config(trial)
    if worker is not None:
        study._storage.set_trial_user_attr(trial._trial_id, "worker", worker)
    return trial.number


def test_a_running_trial_of_a_dead_worker_on_a_journal_is_failed_and_retried_once(tiny_data, tmp_path):
    storage = str(tmp_path / "study.journal")
    res = run_cli(*_args(tiny_data, storage, tmp_path / "art", 3), cwd=tmp_path)  # the presets
    assert res.returncode == 0, res.stderr[-3000:]
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid is dead now: a worker that was killed
    study = _load(storage)
    dead = _running_trial(study, f"{socket.gethostname()}:{gone.pid}")
    unknown = _running_trial(study, None)
    elsewhere = _running_trial(study, "another-host:1")
    res = run_cli(*_args(tiny_data, storage, tmp_path / "art", 1), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = _load(storage).trials
    assert trials[dead].state == optuna.trial.TrialState.FAIL
    assert f"worker {socket.gethostname()}:{gone.pid} is gone" in trials[dead].user_attrs["fail_reason"]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == dead]
    assert len(retries) == 1 and retries[0].params == trials[dead].params
    assert retries[0].state.is_finished()  # the retry was the one new trial run
    assert trials[unknown].state == trials[elsewhere].state == optuna.trial.TrialState.RUNNING
    assert f"trial {unknown} is RUNNING with no worker record" in res.stdout
    assert f"trial {elsewhere} is RUNNING on another host (another-host)" in res.stdout
    again = run_cli(*_args(tiny_data, storage, tmp_path / "art", 1), cwd=tmp_path)
    assert again.returncode == 0 and len([t for t in _load(storage).trials
                                          if t.system_attrs.get("failed_trial") == dead]) == 1  # retried once
