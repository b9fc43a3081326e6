"""Repeat-factor sampling (issue 29, item 2): images holding a rare class are drawn more often, an epoch keeps its
length, and the threshold 0 (the default, and every study from before) is today's shuffle."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch

from space.config import TrainConfig
from space.presets import PRESETS
from space.sample import replay_params, sample_config
from train.accel import Accel
from train.data import Split
from train.loop import HostBatches, epoch_order, make_batches, repeat_factors


def _split(n: int = 20, size: int = 16) -> Split:
    """`n` masks of skin (class 1) everywhere; image 0 also holds a necklace (16), images 0-9 hair (13)."""
    masks = np.ones((n, size, size), np.uint8)
    masks[:10, :4] = 13
    masks[0, 6:10, 6:10] = 16  # in the middle, where augmentation never crops it
    images = np.zeros((n, size, size, 3), np.uint8)
    images[..., 0] = np.arange(n, dtype=np.uint8)[:, None, None]  # the image's index, readable after a batch
    return Split("train", [f"i{i}" for i in range(n)], images, masks, None, [(size, size)] * n)


def test_repeat_factors_follow_the_rarest_class_of_each_image():
    masks = _split().masks
    assert np.array_equal(repeat_factors(masks, 0.0), np.ones(20))
    factors = repeat_factors(masks, 0.3)
    # necklace in 1 of 20 images: sqrt(0.3 / 0.05); hair in half of them: sqrt(0.3 / 0.5) < 1, so 1
    assert factors[0] == pytest.approx(np.sqrt(0.3 / 0.05)) and np.all(factors[1:] == 1.0)


def test_rare_class_images_are_drawn_more_often_and_an_epoch_keeps_its_length():
    split = _split()
    factors = repeat_factors(split.masks, 0.3)
    gen = torch.Generator().manual_seed(0)
    draws = [epoch_order(len(split), factors, gen) for _ in range(400)]
    assert all(len(d) == len(split) for d in draws)
    counts = np.bincount(torch.cat(draws).numpy(), minlength=len(split))
    expected = factors / factors.sum() * counts.sum()
    assert counts[0] == pytest.approx(expected[0], rel=0.15)  # about sqrt(6) times as often as any other image
    assert counts[0] > 2 * counts[1:].max()
    # off: exactly the permutation the loop drew before (a study from before replays the same epochs)
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(epoch_order(len(split), None, a), torch.randperm(len(split), generator=b))


@pytest.mark.parametrize("device_data", [False, True], ids=["host", "device"])
def test_the_training_loop_samples_by_repeat_factor(device_data):
    split, size = _split(), 16
    cpu = torch.device("cpu")
    accel = Accel(device_data=device_data, channels_last=False)
    plain = make_batches(split, size, TrainConfig(batch_size=4), cpu, accel, workers=0)
    rfs = make_batches(split, size, TrainConfig(batch_size=4, rfs_threshold=0.3), cpu, accel, workers=0)
    assert len(rfs) == len(plain) == 5
    if not device_data:
        assert isinstance(rfs, HostBatches)
    seen = {"plain": [], "rfs": []}
    for name, batches in (("plain", plain), ("rfs", rfs)):
        for epoch in range(60):
            for _x, y in batches.epoch(epoch):
                seen[name] += ((y == 16).flatten(1).any(1)).tolist()
    assert len(seen["rfs"]) == len(seen["plain"]) == 60 * 20
    assert sum(seen["plain"]) == 60  # each epoch shows the necklace image once
    assert sum(seen["rfs"]) > 1.8 * 60  # about sqrt(6) = 2.4 times


def test_the_threshold_is_a_recipe_parameter_and_old_trials_replay_without_it():
    params = dict(PRESETS["dw_unet"])
    assert sample_config(optuna.trial.FixedTrial(params))[2].rfs_threshold == 0.0
    params["rfs_threshold"] = 0.3
    assert sample_config(optuna.trial.FixedTrial(params))[2].rfs_threshold == 0.3
    del params["rfs_threshold"]  # a trial of a study from before the parameter existed
    assert replay_params(params)[2].rfs_threshold == 0.0
    seen = set()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        seen.add(sample_config(trial)[2].rfs_threshold)
        study.tell(trial, 0.0)
    assert seen == {0.0, 0.1, 0.3}
