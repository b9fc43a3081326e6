"""Faults (killed workers, interrupted retraining) and bad input across the CLIs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from conftest import REPO, run_cli
from PIL import Image

from search.storage import open_storage
from space.config import ArchConfig, StageConfig
from space.network import build_model

POSTGRES = os.environ.get("FACENAS_TEST_POSTGRES")
needs_postgres = pytest.mark.skipif(
    not POSTGRES, reason="FACENAS_TEST_POSTGRES is not set (.ci/run starts PostgreSQL on 127.0.0.1 and sets it)")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def search_cmd(data: Path, storage: str, study: str, trials: int, art: Path) -> list[str]:
    return [sys.executable, "-m", "search.run", "--trials", str(trials), "--data", str(data), "--storage", storage,
            "--study", study, "--artifact-dir", str(art), "--proxy-size", "48", "--proxy-epochs", "5",
            "--subset", "1", "--pruner", "none", "--heartbeat", "1", "--device", "cpu", "--rung", "0"]


def load(storage: str, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=open_storage(storage, heartbeat=None))


def wait_mid_trial(storage: str, study: str, worker: str | None = None, min_number: int = 0,
                   timeout: float = 300) -> optuna.trial.FrozenTrial:
    """A RUNNING trial (of `worker`, if given) that has reported at least one epoch."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            for t in load(storage, study).trials:
                if (t.state == optuna.trial.TrialState.RUNNING and t.intermediate_values and t.number >= min_number
                        and (worker is None or t.user_attrs.get("worker", "").endswith(f":{worker}"))):
                    return t
        except KeyError:
            pass
        time.sleep(0.2)
    raise AssertionError("no trial reached the middle of its training in time")


def assert_recovered(study: optuna.Study, killed: int) -> None:
    trials = study.trials
    assert trials[killed].state == optuna.trial.TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state in FINISHED and retries[0].params == trials[killed].params
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]


def test_killed_worker_on_sqlite_is_failed_retried_and_nothing_lost(tiny_data, tmp_path):
    storage, art = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "art"
    proc = subprocess.Popen(search_cmd(tiny_data, storage, "k", 3, art), cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim = wait_mid_trial(storage, "k", min_number=1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = load(storage, "k")
    done_before = {t.number: t.value for t in before.trials if t.state in FINISHED}
    assert done_before and before.trials[victim.number].state == optuna.trial.TrialState.RUNNING
    time.sleep(4)  # past the grace period of 3 heartbeats
    res = subprocess.run(search_cmd(tiny_data, storage, "k", 3, art), cwd=tmp_path, env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    after = load(storage, "k")
    assert_recovered(after, victim.number)
    assert {t.number: t.value for t in after.trials if t.number in done_before} == done_before
    assert after.best_value >= max(done_before.values())


@needs_postgres
def test_one_of_three_postgres_workers_killed_then_resumed(tiny_data, tmp_path):
    study = f"pg-{uuid.uuid4().hex[:8]}"
    art = tmp_path / "art"
    procs = [subprocess.Popen(search_cmd(tiny_data, POSTGRES, study, 1, art), cwd=tmp_path, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(3)]
    victim_proc = procs[1]
    victim = wait_mid_trial(POSTGRES, study, worker=str(victim_proc.pid))
    os.kill(victim_proc.pid, signal.SIGKILL)
    for p in procs:
        p.wait(timeout=600)
    assert [p.returncode for p in procs] == [0, -signal.SIGKILL, 0]
    # the retry is enqueued behind the portfolio entries still waiting (trials run in queue order): the resume
    # runs those and the retry
    waiting = len(load(POSTGRES, study).get_trials(states=(optuna.trial.TrialState.WAITING,)))
    time.sleep(4)
    res = subprocess.run(search_cmd(tiny_data, POSTGRES, study, waiting + 1, art), cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    after = load(POSTGRES, study)
    assert_recovered(after, victim.number)
    assert not after.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len([t for t in after.trials if t.state in FINISHED]) >= 3
    numbers = [t.number for t in after.trials]
    assert len(numbers) == len(set(numbers))
    # the other commands work on PostgreSQL too
    final = run_cli("train.final", "--storage", POSTGRES, "--study", study, "--data", str(tiny_data), "--epochs",
                    "1", "--size", "32", "--out", str(tmp_path / "final"), "--device", "cpu", cwd=tmp_path)
    assert final.returncode == 0, final.stderr[-2000:]
    report = run_cli("analysis.report", "--storage", POSTGRES, "--study", study, "--out", str(tmp_path / "rep"))
    assert report.returncode == 0 and (tmp_path / "rep" / "index.html").exists(), report.stderr[-2000:]


# ---- bad input: one table ------------------------------------------------------------------------------------


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for r in roots for p in sorted(r.rglob("*"))
            if p.is_file()}


def broken_copy(tiny_data: Path, tmp: Path, breaker) -> Path:
    root = tmp / "data"
    shutil.copytree(tiny_data, root)
    breaker(root)
    return root


def first(folder: Path) -> Path:
    return sorted(folder.iterdir())[0]


def rgb_mask(root):
    p = first(root / "train" / "masks")
    Image.open(p).convert("RGB").save(p)


def label_out_of_range(root):
    p = first(root / "val" / "masks")
    m = np.array(Image.open(p))
    m[3, 3] = 40
    Image.fromarray(m, mode="L").save(p)


def corrupt_jpeg(root):
    p = first(root / "train" / "images")
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])


def mismatched_names(root):
    p = first(root / "train" / "masks")
    p.rename(p.with_name("someone_else.png"))


def non_image_file(root):
    (root / "val" / "images" / "notes.docx").write_bytes(b"PK\x03\x04")


def make_ckpt(path: Path, arch: ArchConfig, state_dict=None) -> Path:
    torch.save({"config": arch.to_dict(), "state_dict": state_dict if state_dict is not None else {}, "size": 32,
                "num_classes": 19}, path)
    return path


SMALL = ArchConfig(stem_width=8, stages=tuple(StageConfig(w, 1, "ds") for w in (8, 16, 16, 24)), context="none",
                   context_width=16, decoder_width=16, skip_width=8)
HUGE = ArchConfig(stem_width=64, stages=tuple(StageConfig(w, 4, "res") for w in (128, 256, 384, 512)))


def ckpt_over_budget(tmp):
    return make_ckpt(tmp / "big.pth", HUGE)


def ckpt_other_config(tmp):
    weights = build_model(SMALL).drop_aux().state_dict()
    other = ArchConfig(**{**SMALL.to_dict(), "decoder_width": 24})
    return make_ckpt(tmp / "other.pth", other, weights)


def submission(tmp: Path, images: Path, extra: str | None = None, mask_size: int | None = None) -> Path:
    path = tmp / "sub.zip"
    with zipfile.ZipFile(path, "w") as z:
        for i, img in enumerate(sorted(images.iterdir())):
            side = mask_size if mask_size and i == 0 else Image.open(img).size[0]
            buf = tmp / "m.png"
            Image.fromarray(np.zeros((side, side), np.uint8), mode="L").save(buf)
            z.write(buf, f"masks/{img.stem}.png")
        for name in ("ckpt.pth", "run.py", "requirements.txt"):
            z.writestr(f"solution/{name}", "x")
        if extra:
            z.writestr(f"{extra}/readme.txt", "x")
    (tmp / "m.png").unlink()
    return path


def make_study(tmp: Path) -> str:
    storage = f"sqlite:///{tmp / 'have.db'}"
    optuna.create_study(study_name="t", storage=open_storage(storage, heartbeat=None))
    return storage


# (id, command builder(tiny_data, tmp) -> args, expected message)
BAD_INPUTS = [
    ("unknown-storage-scheme", lambda d, t: ["search.run", "--data", str(d), "--storage", "mongodb://h/db"],
     "unknown storage scheme 'mongodb'"),
    ("final-study-missing", lambda d, t: ["train.final", "--storage", make_study(t), "--study", "nope"],
     "study 'nope' not found; available: t"),
    ("final-storage-missing", lambda d, t: ["train.final", "--storage", f"sqlite:///{t / 'none.db'}"],
     "no study storage at"),
    ("trials-zero-new-study", lambda d, t: ["search.run", "--data", str(d), "--trials", "0"],
     "no study storage at"),
    ("trials-zero-empty-study", lambda d, t: ["search.run", "--data", str(d), "--trials", "0", "--storage",
                                              make_study(t), "--study", "t"],
     "--trials 0 runs only the second rung, on the study's trials, and study 't' has no complete trial yet"),
    ("trials-negative", lambda d, t: ["search.run", "--data", str(d), "--trials", "-3"], "--trials must be >= 0"),
    ("data-folder-missing", lambda d, t: ["search.run", "--data", str(t / "nowhere")], "folder missing"),
    ("rgb-masks", lambda d, t: ["search.run", "--data", str(broken_copy(d, t, rgb_mask))], "mode RGB"),
    ("labels-out-of-range", lambda d, t: ["search.run", "--data", str(broken_copy(d, t, label_out_of_range))],
     "outside 0..18"),
    ("corrupt-jpeg", lambda d, t: ["search.run", "--data", str(broken_copy(d, t, corrupt_jpeg))], "corrupt"),
    ("mismatched-names", lambda d, t: ["search.run", "--data", str(broken_copy(d, t, mismatched_names))],
     "without a mask"),
    ("non-image-files", lambda d, t: ["search.run", "--data", str(broken_copy(d, t, non_image_file))],
     "unexpected files"),
    ("ckpt-over-budget", lambda d, t: ["train.predict", "--weights", str(ckpt_over_budget(t)), "--input",
                                       str(d / "test" / "images"), "--out", str(t / "pred")],
     "the limit is < 1,821,085"),
    ("ckpt-other-config", lambda d, t: ["train.predict", "--weights", str(ckpt_other_config(t)), "--input",
                                        str(d / "test" / "images"), "--out", str(t / "pred")],
     "weights do not match the checkpoint's config"),
    ("zip-extra-top-folder", lambda d, t: ["train.submission", "check", str(submission(t, d / "test" / "images",
                                                                                      extra="extra")),
                                           "--images", str(d / "test" / "images")],
     "unexpected entries at the zip root: extra"),
    ("test-image-unexpected-size", lambda d, t: ["train.submission", "check",
                                                 str(submission(t, d / "test" / "images", mask_size=48)),
                                                 "--images", str(d / "test" / "images")], "48x48, image is 64x64"),
    ("final-out-unwritable", lambda d, t: ["train.final", "--storage", make_study(t), "--study", "t",
                                           "--out", str(t / "have.db" / "final")], "not writable"),
]


@pytest.mark.parametrize("build,message", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_one_line_exit_2_nothing_written(tiny_data, tmp_path, build, message):
    sandbox = tmp_path / "cwd"
    sandbox.mkdir()
    args = build(tiny_data, tmp_path)
    before = snapshot(tmp_path, tiny_data)
    res = run_cli(*args, cwd=sandbox)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert snapshot(tmp_path, tiny_data) == before, "a failed command wrote or changed files"


# --- issue 28: the rung, the workers and the command lines -----------------------------------------------------------

def _rung_study(tiny_data: Path, tmp_path: Path, storage: str) -> list[str]:
    """A study whose proxy phase is over (the portfolio's four entries, complete), and the command that runs its
    second rung at 32 px."""
    argv = ["--data", str(tiny_data), "--storage", storage, "--study", "r", "--artifact-dir", str(tmp_path / "art"),
            "--proxy-size", "32", "--proxy-epochs", "1", "--subset", "1", "--pruner", "none", "--device", "cpu",
            "--flops-cap", "0"]
    res = run_cli("search.run", "--trials", "4", "--rung", "0", *argv, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    return [*argv, "--rung", "3", "--rung-size", "32:2"]


def test_a_failed_rung_run_is_recorded_retried_once_and_the_study_goes_on(tiny_data, tmp_path, monkeypatch):
    import search.run as run_mod
    import search.rung as rung_mod
    from train.loop import NonFiniteLoss

    storage = str(tmp_path / "s.journal")
    argv = ["--trials", "1", *_rung_study(tiny_data, tmp_path, storage)]
    real, calls = rung_mod.train_at, []

    def nan_for_the_first(trial, *args, **kwargs):
        calls.append(trial.number)
        if trial.number == first:
            raise NonFiniteLoss("loss became nan at epoch 1")
        return real(trial, *args, **kwargs)

    study = load(storage, "r")
    first = max(study.trials, key=lambda t: t.value).number  # the proxy's best: the first rung run
    monkeypatch.setattr(rung_mod, "train_at", nan_for_the_first)
    assert run_mod.main(argv) == 0  # no traceback: the failure is recorded and the other runs go on
    study = load(storage, "r")
    setting = rung_mod.RungSetting(3, "32:2", 1.0, "mean_last2_f", 0, over_limit="reference")  # the CPU default
    failed = study.user_attrs[f"{rung_mod.RUNG_ATTR}:{first}:{setting.id}"]
    assert failed["attempts"] == 1 and "NonFiniteLoss" in failed["failed"]
    assert len(calls) == 3 and len(rung_mod.rung_records(study)) == 2  # the other runs went on
    assert study.user_attrs[rung_mod.PENDING_ATTR] is not None  # to be tried once more
    n_trials = len(study.trials)
    calls.clear()
    assert run_mod.main(argv) == 0  # the next run retries it, without proxy trials; it fails again
    study = load(storage, "r")
    assert calls == [first] and len(study.trials) == n_trials
    assert study.user_attrs[rung_mod.PENDING_ATTR] is None  # tried twice: left out, the rung is finished
    assert first not in rung_mod.rung_records(study) and rung_mod.current_setting(study) == setting
    calls.clear()
    study.set_user_attr(rung_mod.PENDING_ATTR, {"k": 3, "schedule": "32:4", "subset": 1.0, "signal": "mean_last2_f",
                                                "seed": 0})  # a rung that would crash on every run
    assert run_mod.main([*argv[:-4], "--rung", "0"]) == 0  # --rung 0 leaves it and the search goes on
    study = load(storage, "r")
    assert study.user_attrs[rung_mod.PENDING_ATTR] is None and len(study.trials) == n_trials + 1 and not calls


def test_two_processes_on_one_journal_train_each_rung_run_once(tiny_data, tmp_path):
    import search.rung as rung_mod

    storage = str(tmp_path / "s.journal")
    argv = _rung_study(tiny_data, tmp_path, storage)
    study = load(storage, "r")
    setting = rung_mod.RungSetting(3, "32:2", 1.0, "mean_last2_f", 0)
    study.set_user_attr(rung_mod.PENDING_ATTR, {"k": 3, "schedule": "32:2", "subset": 1.0, "signal": "mean_last2_f",
                                                "seed": 0})  # both commands start by finishing this rung
    procs = [subprocess.Popen([sys.executable, "-m", "search.run", "--trials", "1", *argv], cwd=tmp_path, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    trained = [line for out, _ in outs for line in out.splitlines()
               if line.startswith("rung 2: trial") and "-> rung-2 F" in line]
    study = load(storage, "r")
    records = rung_mod.rung_records(study, setting)
    assert len(records) == len(trained) == len(rung_mod.promoted(study, setting)), trained  # each run once, all runs
    assert study.user_attrs[rung_mod.PENDING_ATTR] is None
    assert rung_mod.current_setting(study) == setting


def test_an_interrupted_new_rung_does_not_hide_a_finished_one(tmp_path, capsys):
    import dataclasses

    import search.rung as rung_mod
    from space.portfolio import R85
    from space.presets import PRESETS
    from space.sample import sample_config
    from train.final import choose_trial

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=None)
    study = optuna.create_study(study_name="r", storage=storage, direction="maximize")
    for proxy in (0.6, 0.5):
        study.enqueue_trial({**PRESETS["dw_unet"], **R85})
        trial = study.ask()
        sample_config(trial)
        study.tell(trial, proxy)
    done, new = rung_mod.RungSetting(2, "32:2", 1.0, "last_f", 0), rung_mod.RungSetting(2, "32:4", 1.0, "last_f", 0)
    study.set_user_attr(rung_mod.SETTING_ATTR, dataclasses.asdict(done))
    for number, f in ((0, 0.70), (1, 0.75)):
        study.set_user_attr(f"{rung_mod.RUNG_ATTR}:{number}:{done.id}", {"f": f, "proxy_f": 0.5})
    study.set_user_attr(rung_mod.PENDING_ATTR, dataclasses.asdict(new))  # re-run at another setting, interrupted
    chosen = choose_trial(storage, "r", None)
    assert chosen.trial.number == 1 and "the second rung (32 px x 2 epochs" in chosen.decided_by  # not the proxy
    out = capsys.readouterr().out
    assert "the second rung at 32 px x 4 epochs on 100% of train, last_f is unfinished (2 runs to go: #0, #1" in out
    assert "choosing by the last finished rung, at 32 px x 2 epochs" in out
    # a first rung, partly finished: used, and said so
    study.set_user_attr(rung_mod.SETTING_ATTR, None)
    study.set_user_attr(f"{rung_mod.RUNG_ATTR}:0:{new.id}", {"f": 0.71, "proxy_f": 0.6})
    assert choose_trial(storage, "r", None).trial.number == 0
    assert "(1 runs to go: #1;" in capsys.readouterr().out


def test_sigterm_stops_the_workers_too(tiny_data, tmp_path):
    storage = str(tmp_path / "s.journal")
    proc = subprocess.Popen(search_cmd(tiny_data, storage, "t", 20, tmp_path / "art") + ["--workers", "2"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_mid_trial(storage, "t")
    children = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(children) >= 2, children  # the two workers (and the resource tracker)
    proc.send_signal(signal.SIGTERM)  # what timeout and batch schedulers send
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "the workers are stopped" in err, err[-2000:]
    deadline = time.time() + 20
    while time.time() < deadline and any(Path(f"/proc/{c}").exists() for c in children):
        time.sleep(0.2)
    alive = [c for c in children if Path(f"/proc/{c}").exists() and "zombie" not in
             Path(f"/proc/{c}/status").read_text().lower()]
    assert not alive, f"worker processes {alive} still run after SIGTERM"
