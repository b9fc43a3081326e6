from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from conftest import REPO, StopAtFit, capture_initial_weights, run_cli, run_main
from PIL import Image

from space.config import BUDGET
from space.presets import PRESETS
from train.loop import WeightEMA
from train.scale import Row, candidates, pick
from train.submission import check_zip


@pytest.fixture(scope="module")
def searched(tiny_data, tmp_path_factory) -> tuple[Path, str]:
    """A finished 2-trial search on the tiny synthetic set."""
    work = tmp_path_factory.mktemp("final")
    storage = f"sqlite:///{work / 's.db'}"
    res = run_cli("search.run", "--trials", "2", "--data", str(tiny_data), "--storage", storage, "--study", "t",
                  "--artifact-dir", str(work / "art"), "--proxy-size", "32", "--proxy-epochs", "1",
                  "--pruner", "none", "--device", "cpu", "--rung", "0", cwd=work)
    assert res.returncode == 0, res.stderr[-2000:]
    return work, storage


def test_end_to_end_submission_and_standalone_runner(searched, tiny_data, tmp_path):
    """README's flow: `search.run --data ROOT`, then `train.final --study NAME` with no --data retrains on ROOT."""
    work, storage = searched
    out = work / "out"
    res = run_cli("train.final", "--study", "t", "--storage", storage,
                  "--epochs", "2", "--size", "32", "--out", str(out), "--device", "cpu", cwd=work)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"data {tiny_data.resolve()};" in res.stdout and "note:" not in res.stdout
    assert not (work / "data").exists()  # no synthetic set was generated to train on instead
    # one plain line per evaluated epoch (no terminal attached), and the history as CSV beside the checkpoint
    assert re.search(r"epoch 1/2 at 32 px: loss [0-9.]+, val F [0-9.]+ \(raw weights [0-9.]+\), [0-9.]+ img/s",
                     res.stdout)
    assert "epoch 2/2 at 32 px:" in res.stdout
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2] and {"loss", "val_f", "val_f_raw", "seconds"} <= set(history.columns)
    report = (out / "report.md").read_text()
    assert report.count("val F-measure") == 1 and "EMA 0.99 (raw weights: 0." in report
    assert "with flip TTA at prediction: 0." in report
    # the prediction setting was chosen on val among the candidates, by the tie rule, and stored in the checkpoint
    record = json.loads((out / "final.json").read_text())
    rows = [Row(tuple(r["sizes"]), r["val_f"], r["ms_per_image"]) for r in record["predict_settings"]]
    assert [r.sizes for r in rows] == candidates(32) and all(r.ms_per_image > 0 for r in rows)
    assert tuple(record["predict_sizes"]) == pick(rows, (32,))
    assert "## Prediction setting" in report and "**chosen**" in report
    ckpt = torch.load(out / "ckpt.pth", weights_only=True)
    assert ckpt["predict_sizes"] == record["predict_sizes"] and ckpt["size"] == 32
    last = torch.load(out / "last.pth", weights_only=True)
    ema = last["ema"]["module"]  # the exported weights are the EMA's, not the last step's
    assert all(torch.equal(v, ema[k]) for k, v in ckpt["state_dict"].items())
    assert any(not torch.equal(v, last["model"][k]) for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    assert ckpt["params"] < BUDGET and ckpt["params"] == sum(v.numel() for k, v in ckpt["state_dict"].items()
                                                             if not k.endswith(("running_mean", "running_var",
                                                                                "num_batches_tracked")))
    images = tiny_data / "test" / "images"
    assert check_zip(out / "submission.zip", images) == []
    checked = run_cli("train.submission", "check", str(out / "submission.zip"), "--images", str(images))
    assert checked.returncode == 0, checked.stderr
    with zipfile.ZipFile(out / "submission.zip") as z:
        assert {n.split("/")[0] for n in z.namelist()} == {"masks", "solution"}
        z.extractall(tmp_path / "unzipped")
    solution = tmp_path / "unzipped" / "solution"
    source = (solution / "run.py").read_text()
    assert "from space." not in source and "from train." not in source
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for img in sorted(images.iterdir()):
        target = tmp_path / f"{img.stem}.png"
        run = subprocess.run([sys.executable, "run.py", "--input", str(img), "--output", str(target),
                              "--weights", "ckpt.pth", "--device", "cpu"], cwd=solution, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        ours = np.asarray(Image.open(target))
        shipped = np.asarray(Image.open(out / "masks" / f"{img.stem}.png"))
        assert ours.shape == Image.open(img).size[::-1]
        assert np.array_equal(ours, shipped)


def test_predict_cli_writes_masks_and_overlays(searched, tiny_data, tmp_path):
    work, storage = searched
    out = work / "out_predict"
    res = run_cli("train.final", "--storage", storage, "--data", str(tiny_data), "--epochs", "1", "--size", "32",
                  "--out", str(out), "--device", "cpu", cwd=work)
    assert res.returncode == 0, res.stderr[-2000:]
    pred = run_cli("train.predict", "--weights", str(out / "ckpt.pth"), "--input", str(tiny_data / "test" / "images"),
                   "--out", str(tmp_path / "p"), "--overlay", "--flip-tta")
    assert pred.returncode == 0, pred.stderr[-2000:]
    assert len(list((tmp_path / "p").glob("*_overlay.jpg"))) == 4
    mask = np.asarray(Image.open(next((tmp_path / "p").glob("test_*[0-9].png"))))
    assert mask.shape == (64, 64) and mask.max() <= 18


def test_interrupted_final_resumes_from_its_checkpoint(searched, tiny_data):
    work, storage = searched
    out = work / "out_resume"
    args = [sys.executable, "-m", "train.final", "--storage", storage, "--data", str(tiny_data), "--epochs", "12",
            "--size", "32", "--out", str(out), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (out / "last.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(out / "last.pth", weights_only=True)["epoch"]
    assert 1 <= saved < 12, "the run was not interrupted mid-training"
    res = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming from {out / 'last.pth'} at epoch {saved}/12" in res.stdout
    final = torch.load(out / "last.pth", weights_only=True)
    assert final["epoch"] == 12 and [h["epoch"] for h in final["history"]] == list(range(1, 13))


@pytest.mark.parametrize("args,message", [
    (["--study", "nope"], "study 'nope' not found; available: t"),
    (["--trial", "99", "--study", "t"], "trial 99 not found"),
    (["--preset", "dw_unet", "--set", "foo=1"], "--set foo: not a parameter of this trial"),
    (["--preset", "dw_unet", "--set", "loss_lovasz=0.7"], "0.7' not in (0.0, 0.25, 0.5)"),
    (["--preset", "dw_unet", "--set", "lr_adamw"], "expected NAME=VALUE"),
    (["--preset", "dw_unet", "--size", "40000:1"], "--size 40000:1: schedule '40000:1': every size must be 32..1024"),
    (["--preset", "dw_unet", "--size", "99999999999999999999:1"], "every size must be 32..1024 px"),
    (["--preset", "dw_unet", "--size", "128:5,64:5"], "--size 128:5,64:5: schedule '128:5,64:5': sizes must not "
                                                      "decrease"),
    (["--preset", "dw_unet", "--size", "64", "--epochs", "99999999999999999999"], "1..1000 epochs"),
    (["--preset", "dw_unet", "--predict-sizes", "256+x"], "--predict-sizes '256+x': expected auto, SIZE or SIZE+SIZE"),
    (["--preset", "dw_unet", "--predict-sizes", "5000"], "with sizes 32..1024 px"),
])
def test_bad_choices_are_named(searched, tiny_data, args, message):
    work, storage = searched
    res = run_main("train.final", "--storage", storage, "--data", str(tiny_data), *args, cwd=work)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_set_overrides_a_recipe_parameter(tiny_data, tmp_path):
    out = tmp_path / "cw"
    res = run_cli("train.final", "--preset", "deeplab_lite", "--set", "class_weight_power=0.25", "--set",
                  "loss_lovasz=0.5", "--data", str(tiny_data), "--epochs", "1", "--size", "32", "--out", str(out),
                  "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["loss"]["class_weight_power"] == 0.25 and last["loss"]["lovasz"] == 0.5
    assert last["loss"]["dice"] == 0.5  # untouched parameters keep the preset's values


def test_submission_checker_names_problems(tmp_path, tiny_data):
    images = tiny_data / "test" / "images"
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("extra/readme.txt", "x")
        first = sorted(images.iterdir())[0]
        buf = tmp_path / "m.png"
        Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(buf)
        z.write(buf, f"masks/{first.stem}.png")
    problems = check_zip(bad, images)
    text = "\n".join(problems)
    assert "unexpected entries at the zip root: extra" in text
    assert "solution/ lacks ckpt.pth, run.py, requirements.txt" in text
    assert "test images without a mask (3)" in text and "mode RGB" in text
    res = run_main("train.submission", "check", str(bad), "--images", str(images))
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_accepted_dev_phase_fixture_passes(tmp_path):
    fixture = REPO.parent / "shared" / "fixtures" / "dev-phase-accepted-submission.zip"
    images = REPO.parent / "shared" / "data" / "celebamask-mini" / "test" / "images"
    if not fixture.exists() or not images.is_dir():
        pytest.skip(f"shared fixture or test images absent ({fixture}, {images})")
    assert check_zip(fixture, images, phase="dev") == []


def test_export_refuses_an_over_budget_model(tmp_path):
    from space.config import ArchConfig, StageConfig
    from space.network import build_model
    from train.final import FinalError, export_checkpoint

    huge = ArchConfig(stem_width=32, stages=tuple(StageConfig(w, 2, "res") for w in (64, 128, 256, 384)),
                      aux_head=True)
    with pytest.raises(FinalError, match="the limit is < 1,821,085: not exported"):
        export_checkpoint(build_model(huge), huge, 64, tmp_path / "ckpt.pth")
    assert not (tmp_path / "ckpt.pth").exists()
    small = ArchConfig(stem_width=8, stages=tuple(StageConfig(w, 1, "ds") for w in (8, 16, 16, 24)), aux_head=True)
    params = export_checkpoint(build_model(small), small, 64, tmp_path / "ok.pth")
    saved = torch.load(tmp_path / "ok.pth", weights_only=True)
    assert params < BUDGET and not any(k.startswith("aux.") for k in saved["state_dict"])


def test_weight_ema_warms_up_then_follows_the_decay():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # step 1: decay min(0.5, 2/11) -> the average moves 9/11 of the way
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 9 / 11))
    for _ in range(20):
        ema.update(model)
    assert torch.allclose(ema.module.weight, torch.ones(1, 2), atol=1e-5)
    restored = WeightEMA(torch.nn.Linear(2, 1), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.steps == 21 and torch.equal(restored.module.weight, ema.module.weight)


def test_final_initial_weights_depend_on_the_seed_only(tiny_data, tmp_path, monkeypatch):
    """`--seed` fixes the initial weights whatever the process drew before; another seed gives others."""
    import train.final as final_mod

    calls = capture_initial_weights(monkeypatch)
    for i, (draws, seed) in enumerate([(0, 3), (1000, 3), (0, 4)]):
        torch.randn(draws)  # what an earlier build or import would have consumed
        args = final_mod.parse_args(["--preset", "deeplab_lite", "--data", str(tiny_data), "--size", "32",
                                     "--epochs", "1", "--device", "cpu", "--seed", str(seed),
                                     "--out", str(tmp_path / str(i))])
        with pytest.raises(StopAtFit):
            final_mod.run(args)
    seen = [c.weights for c in calls]
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])


def _study_with_one_trial(storage: str, name: str, data: str | None):
    from search.storage import open_storage
    from space.presets import PRESETS
    from space.sample import sample_config

    study = optuna.create_study(study_name=name, storage=open_storage(storage, heartbeat=None), direction="maximize")
    study.enqueue_trial(PRESETS["dw_unet"])
    trial = study.ask()
    sample_config(trial)
    study.tell(trial, 0.5)
    if data is not None:
        study.set_user_attr("data", data)
    return study


def test_the_study_data_is_used_and_a_gone_folder_is_named(tmp_path, tiny_data, capsys):
    from train.final import Chosen, FinalError, choose_data

    storage = f"sqlite:///{tmp_path / 's.db'}"
    _study_with_one_trial(storage, "gone", "/nonexistent/faces")
    res = run_main("train.final", "--study", "gone", "--storage", storage, "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 2 and "was searched on /nonexistent/faces, which is gone; pass --data ROOT" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "data").exists()
    chosen = Chosen("s", None, str(tiny_data))
    assert choose_data(None, chosen) == tiny_data
    assert choose_data(tiny_data, chosen) == tiny_data and "note" not in capsys.readouterr().out
    assert choose_data(tmp_path, chosen) == tmp_path
    note = f"note: --data {tmp_path}: retraining on other data than the study was searched on"
    assert note in capsys.readouterr().out
    with pytest.raises(FinalError, match="nowhere"):
        choose_data(None, Chosen("s", None, str(tmp_path / "nowhere")))


def test_study_best_never_compares_studies_it_takes_the_most_recent(tmp_path, capsys):
    from search.storage import open_storage
    from train.final import FinalError, choose_trial

    storage = f"sqlite:///{tmp_path / 's.db'}"
    _study_with_one_trial(storage, "only", None)
    assert choose_trial(open_storage(storage, heartbeat=None), "best", None).study == "only"
    assert "note" not in capsys.readouterr().out
    newer = _study_with_one_trial(storage, "newer", None)
    newer.tell(newer.ask(), 0.1)  # a lower F than "only": best means the most recent study, not the highest F
    chosen = choose_trial(open_storage(storage, heartbeat=None), "best", None)
    assert chosen.study == "newer" and chosen.trial.value == 0.5
    assert "using the most recent, 'newer' (others: only;" in capsys.readouterr().out
    with pytest.raises(FinalError, match="--trial needs --study NAME"):
        choose_trial(open_storage(storage, heartbeat=None), "best", 0)


class _Code:
    def __reduce__(self):
        return (os.getcwd, ())


def test_checkpoints_that_hold_code_or_are_not_ours_are_refused_in_one_line(tmp_path, searched):
    work, storage = searched
    torch.save({"config": _Code(), "state_dict": {}, "size": 32}, tmp_path / "code.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    img = tmp_path / "face.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    for name, message in [("code.pth", "refused: it holds Python objects beyond tensors and plain data"),
                          ("text.pth", "not a PyTorch checkpoint"), ("list.pth", "not a facenas checkpoint")]:
        res = run_cli("train.predict", "--weights", str(tmp_path / name), "--input", str(img), "--out",
                      str(tmp_path / "o"), "--device", "cpu", cwd=tmp_path)
        assert res.returncode == 2 and message in res.stderr, (name, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "weights_only" not in res.stderr
    out = tmp_path / "final"  # a resumable last.pth that holds code is refused too, before anything is trained
    out.mkdir()
    torch.save({"config": _Code()}, out / "last.pth")
    res = run_cli("train.final", "--study", "t", "--storage", storage, "--epochs", "1", "--size", "32",
                  "--out", str(out), "--device", "cpu", cwd=work)
    assert res.returncode == 2 and "refused: it holds Python objects" in res.stderr and "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def finished_preset_run(tiny_data, tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished 1-epoch dw_unet run (seed 0) whose output folder later commands try to resume."""
    out = tmp_path_factory.mktemp("resume") / "out"
    base = ["--preset", "dw_unet", "--data", str(tiny_data), "--size", "32", "--epochs", "1", "--device", "cpu",
            "--out", str(out)]
    import train.final as final_mod

    assert final_mod.main(base) == 0
    return out, base


@pytest.mark.parametrize("change,named", [
    (["--seed", "1"], "seed"), (["--data", "COPY"], "data"), (["--epochs", "2"], "schedule"),
    (["--size", "48"], "schedule"), (["--include-val"], "include_val"), (["--set", "loss_dice=1.0"], "loss"),
    (["--ema", "0.9"], "train"),
])
def test_final_refuses_to_resume_a_run_of_other_inputs(finished_preset_run, tiny_data, tmp_path, capsys, change,
                                                        named):
    """Issue 19 item 4: a folder holding a finished seed-0 run is not returned as the result of another seed,
    data folder, schedule, --include-val or config; the refusal names what differs, in one line."""
    import shutil

    import train.final as final_mod

    out, base = finished_preset_run
    if "COPY" in change:
        change = ["--data", str(shutil.copytree(tiny_data, tmp_path / "faces-copy"))]
    before = (out / "last.pth").stat().st_mtime_ns
    capsys.readouterr()
    assert final_mod.main([*base, *change]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a checkpoint of another run" in err and named in err, err
    assert (out / "last.pth").stat().st_mtime_ns == before  # nothing was trained or written over it


def test_a_checkpoint_saved_before_decoder_cbam_existed_still_resumes(tmp_path):
    """last.pth of a run started by older code has no decoder_cbam in its config; the network is the same, so
    the run resumes; a config that really differs is still refused."""
    from space.sample import sample_config
    from train.final import FinalError, check_resume

    arch, _, _ = sample_config(optuna.trial.FixedTrial(PRESETS["dw_unet"]))
    identity = {"config": arch.to_dict(), "schedule": "32:1", "seed": 0, "data": "/d", "include_val": False}
    old = {**identity, "config": {k: v for k, v in arch.to_dict().items() if k != "decoder_cbam"}, "epoch": 1}
    torch.save(old, tmp_path / "last.pth")
    assert check_resume(tmp_path / "last.pth", identity)["epoch"] == 1
    other = {**identity, "config": {**arch.to_dict(), "decoder_cbam": True}}
    with pytest.raises(FinalError, match="differs in config"):
        check_resume(tmp_path / "last.pth", other)
