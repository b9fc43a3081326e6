"""bench.ladder_rows: a ladder run's wall time, timed in full or across a restart that stopped an invocation."""

from pathlib import Path

import pytest

from bench.ladder_rows import predicted_minutes, wall_seconds

HEADER = "epoch,size,loss,lr,seconds,images_per_s,train_seconds,val_f,val_f_raw\n"


def _run(folder: Path, log: str, seconds: list[float]) -> Path:
    folder.mkdir()
    (folder / "log").write_text(log)
    (folder / "history.csv").write_text(HEADER + "".join(f"{i + 1},128,0.5,0.01,{s},10,1,," + "\n"
                                                         for i, s in enumerate(seconds)))
    return folder


def test_a_run_timed_in_full_sums_its_invocations(tmp_path):
    run = _run(tmp_path / "r", "training: x\nwall 100.00 s\ntraining: x\nresuming from L at epoch 3/4\nwall 50.5 s\n",
               [30, 60, 90, 120])
    assert wall_seconds(run, 120.0) == (150.5, False)


def test_a_run_stopped_by_a_restart_adds_its_last_invocations_after_training_time(tmp_path):
    # the first invocation died untimed after epoch 2 (60 s of training); the second resumed (train.final says "at
    # epoch 2/4": the epochs finished), trained 120 - 60 = 60 s and ended 25 s after its last epoch: the run is its
    # 120 s of training plus those 25 s
    run = _run(tmp_path / "r", "training: x\ntraining: x\nresuming from L at epoch 2/4\nwall 85.0 s\n",
               [30, 60, 90, 120])
    assert wall_seconds(run, 120.0) == (pytest.approx(145.0), True)


def test_a_run_with_no_timed_invocation_has_no_wall_time(tmp_path):
    run = _run(tmp_path / "r", "training: x\n", [30])
    assert wall_seconds(run, 30.0) == (None, True)


def test_the_prediction_adds_epochs_scorings_and_decodes():
    seconds = {"128": {"epoch_s": 10, "score_s": 2, "decode_s": 1}}
    one = predicted_minutes("128:1", seconds)
    assert predicted_minutes("128:3", seconds) > one > 10 / 60
