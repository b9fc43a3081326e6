from __future__ import annotations

import dataclasses
import io

import optuna
import pytest
import torch

from space.presets import PRESETS
from space.sample import sample_config
from train.data import SplitCache
from train.loop import full_fit
from train.schedule import ScheduleError, Stage, format_schedule, parse_schedule, stage_at

SCHEDULE = (Stage(32, 2), Stage(48, 2))


def test_schedules_parse_and_bad_ones_are_named():
    assert parse_schedule("128:24,256:12") == (Stage(128, 24), Stage(256, 12))
    assert parse_schedule("256", 20) == parse_schedule("256:20") == parse_schedule("256:20", 20) == (Stage(256, 20),)
    assert format_schedule(parse_schedule(" 128:24, 256:12")) == "128:24,256:12"
    assert [stage_at(SCHEDULE, e).size for e in (1, 2, 3, 4)] == [32, 32, 48, 48]
    for text, epochs, message in [("256", None, "needs a number of epochs"), ("128:x", None, "epochs 'x' is not"),
                                  ("128:4,256", None, "stage '256' lacks its epochs"),
                                  ("128:4,256:2", 7, "has 6 epochs, but --epochs 7"), ("16:4", None, "32..1024 px"),
                                  ("64:0", None, "1..1000 epochs"), ("40000:1", None, "32..1024 px"),
                                  ("99999999999999999999:1", None, "32..1024 px"), ("128", 10**20, "1..1000 epochs"),
                                  ("128:5,64:5", None, "sizes must not decrease")]:
        with pytest.raises(ScheduleError, match=message):
            parse_schedule(text, epochs)


def _run(tiny_data, state=None, stop_after=None, saved=None, sizes=None):
    arch, loss_cfg, train_cfg = sample_config(optuna.trial.FixedTrial(PRESETS["dw_unet"]))
    train_cfg = dataclasses.replace(train_cfg, batch_size=8)
    splits = SplitCache(tiny_data, subset=0.5)

    def checkpoint(epoch: int, train_state: dict) -> None:
        buffer = io.BytesIO()  # exactly what train.final writes to last.pth and reads back
        torch.save(train_state, buffer)
        saved.append(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
        if epoch == stop_after:
            raise KeyboardInterrupt  # the kill

    model, result = full_fit(arch, splits, loss_cfg, train_cfg, schedule=SCHEDULE, seed=5, device=torch.device("cpu"),
                             state=state, on_epoch_end=checkpoint if saved is not None else None, progress=False)
    if sizes is not None:
        sizes += [h["size"] for h in result.history]
    return model, result


def test_the_size_switches_at_the_stated_epoch_and_a_killed_run_resumes_to_the_same_weights(tiny_data,
                                                                                             monkeypatch):
    from space.network import FaceParser

    seen: list[int] = []
    forward = FaceParser.forward
    monkeypatch.setattr(FaceParser, "forward", lambda self, x: (seen.append(x.shape[-1]) if self.training else None,
                                                            forward(self, x))[1])
    sizes: list[int] = []
    whole, result = _run(tiny_data, sizes=sizes)
    # 12 training images, batch 8: one step per epoch; the input is at the stage's size
    assert seen == [32, 32, 48, 48] and sizes == [32, 32, 48, 48]
    evaluated = [h["epoch"] for h in result.history if "val_f" in h]
    assert 2 in evaluated and 4 in evaluated  # each stage is scored before it ends
    # killed after the switch (epoch 3 done), then resumed from what was saved
    saved: list[dict] = []
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_data, stop_after=3, saved=saved)
    assert saved[-1]["epoch"] == 3
    seen.clear()
    resumed, again = _run(tiny_data, state=saved[-1])
    assert seen == [48] and [h["epoch"] for h in again.history] == [1, 2, 3, 4]
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    assert again.final_f == result.final_f


def test_a_resume_that_draws_other_data_would_be_caught(tiny_data):
    """Control for the test above: resuming with another seed's data order ends elsewhere (the equality is not
    trivially true, e.g. because the last epoch alone decided the weights)."""
    saved: list[dict] = []
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_data, stop_after=3, saved=saved)
    whole, _ = _run(tiny_data)
    state = saved[-1]
    arch, loss_cfg, train_cfg = sample_config(optuna.trial.FixedTrial(PRESETS["dw_unet"]))
    other, _ = full_fit(arch, SplitCache(tiny_data, subset=0.5), loss_cfg, dataclasses.replace(train_cfg, batch_size=8),
                        schedule=SCHEDULE, seed=6, device=torch.device("cpu"), state=state, progress=False)
    a, b = whole.state_dict(), other.state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_final_exports_at_the_last_stage_size(tiny_data, tmp_path):
    import train.final as final_mod

    out = tmp_path / "out"
    assert final_mod.main(["--preset", "dw_unet", "--data", str(tiny_data), "--size", "32:1,48:1", "--device", "cpu",
                           "--out", str(out)]) == 0
    ckpt = torch.load(out / "ckpt.pth", weights_only=True)
    last = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["size"] == 48 and last["schedule"] == "32:1,48:1"
    assert [h["size"] for h in last["history"]] == [32, 48]
    assert "32 px x 1 epochs, then 48 px x 1 epochs" in (out / "report.md").read_text()
