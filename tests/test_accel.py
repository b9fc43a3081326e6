"""The CUDA-only settings, checked on the CPU (issue 19 items 3 and 5): the arguments every CUDA-only call gets
pass torch's own argument handling, the CUDA path runs on the CPU device wherever torch allows, and the training
step builds no tensor from host data."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
from torch.cuda._utils import _get_device_index

import train.loop as loop
from space.presets import PRESETS
from space.sample import sample_config
from train.accel import Accel, memory_share, share_memory, sync_debug_mode
from train.data import SplitCache
from train.infer import autocast
from train.schedule import Stage

CPU = torch.device("cpu")


@pytest.mark.parametrize("device", [torch.device("cuda"), torch.device("cuda:1"), torch.device("cuda", 0)])
def test_memory_share_passes_torchs_device_index_resolution(device):
    """set_per_process_memory_fraction(fraction: float, device) resolves the device with _get_device_index, which
    refuses a bare torch.device('cuda') (the crash of every search worker on a GPU)."""
    with pytest.raises(ValueError, match="Expected a torch.device with a specified index"):
        _get_device_index(torch.device("cuda"))  # what the workers passed before
    fraction, index = memory_share(device, 4)
    assert _get_device_index(index) == (device.index or 0)
    assert isinstance(fraction, float) and 0 < fraction <= 1 and fraction == pytest.approx(0.95 / 4)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        memory_share(device, 0)
    share_memory(CPU, 4)  # a no-op off CUDA


def test_autocast_and_sync_debug_arguments():
    with autocast(torch.device("cuda")):  # bf16 on CUDA: the arguments are valid on a CPU build too
        pass
    with autocast(CPU, bf16=True):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    assert sync_debug_mode("error") == "error"
    with pytest.raises(ValueError, match="expected one of default, warn, error"):
        sync_debug_mode("strict")


def _configs():
    arch, loss_cfg, train_cfg = sample_config(optuna.trial.FixedTrial(PRESETS["dw_unet"]))
    return arch, loss_cfg, dataclasses.replace(train_cfg, batch_size=4, ema=0.9)


def test_the_cuda_settings_train_on_the_cpu(tiny_data, monkeypatch):
    """bf16 autocast, channels_last, fused AdamW and the device-side data path, through a two-stage schedule."""
    arch, loss_cfg, train_cfg = _configs()
    seen = {}
    real_setup = loop.setup_run

    def spy(*args, **kwargs):
        run = real_setup(*args, **kwargs)
        seen["run"] = run
        return run

    monkeypatch.setattr(loop, "setup_run", spy)
    model, result = loop.fit_new(arch, SplitCache(tiny_data, subset=0.5), loss_cfg, train_cfg, seed=0,
                                 schedule=(Stage(32, 1), Stage(48, 1)), device=CPU, accel=Accel.cuda_like(),
                                 progress=False)
    run = seen["run"]
    assert run.optimizer.defaults["fused"] is True
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert 0 <= result.final_f <= 1 and len(result.history) == 2
    weight = next(p for p in model.parameters() if p.ndim == 4 and p.shape[-1] > 1)
    assert weight.is_contiguous(memory_format=torch.channels_last)


def test_no_tensor_is_built_from_host_data_in_a_training_step_or_a_scoring_batch(tiny_data, monkeypatch):
    """Constants live on the device from the start (flip LUT, colour weights) and confusions are counted without
    bincount's host read: after the first epoch, training and scoring on the device path call neither
    torch.tensor nor torch.as_tensor nor torch.bincount."""
    arch, loss_cfg, train_cfg = _configs()
    armed, calls = [], []
    for name in ("tensor", "as_tensor", "bincount"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _n=name, _r=real, **k: (armed and calls.append(_n), _r(*a, **k))[1])
    model, _ = loop.fit_new(arch, SplitCache(tiny_data, subset=0.5), loss_cfg, train_cfg, seed=0,
                            schedule=(Stage(32, 2),), device=CPU, accel=Accel(device_data=True), progress=False,
                            on_epoch_end=lambda epoch, state: armed.append(epoch))  # epoch 2 and its scoring count
    assert armed == [1, 2]
    _, val = SplitCache(tiny_data)[32]
    targets = loop.device_targets(val, CPU)
    armed.clear()
    loop.evaluate(model, val, CPU, flip_tta=True, targets=targets)  # builds the device's flip LUT once
    armed.append(1)
    loop.evaluate(model, val, CPU, flip_tta=True, targets=targets)
    assert calls == [], calls


def test_confusions_without_bincount_equal_bincount():
    target, pred = torch.randint(0, 19, (2, 40, 40)), torch.randint(0, 19, (2, 40, 40))
    expected = torch.bincount(target.flatten() * 19 + pred.flatten(), minlength=19 * 19)
    assert torch.equal(loop.confusion(target, pred), expected)
