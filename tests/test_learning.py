"""Training learns: a few synthetic faces at 32 px, overfit in seconds, score above a threshold that a broken
loss or a misalignment of images and masks cannot reach (both are run here as controls, so the threshold is
shown to separate them on every run)."""

from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest
import torch

from space.presets import PRESETS
from space.sample import sample_config
from train.data import load_split
from train.loop import fit_new
from train.losses import SegLoss
from train.synthetic import write_dataset

THRESHOLD = 0.30  # measured: 0.37 when the loop works, 0.17 with masks shifted by one image, 0.00 with -loss


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("learn"), {"train": 8, "val": 2, "test": 0}, size=64, seed=1)
    return load_split(root, "train", size=32, keep_full_masks=True)


@pytest.mark.parametrize("breakage", ["none", "loss sign flipped", "masks of other images"])
def test_overfitting_a_few_faces_beats_the_threshold_only_when_nothing_is_broken(faces, breakage, monkeypatch):
    arch, loss_cfg, train_cfg = sample_config(optuna.trial.FixedTrial(PRESETS["dw_unet"]))
    train_cfg = dataclasses.replace(train_cfg, lr=1e-2, batch_size=4, warmup_frac=0.0, aug_strength=0.0)
    split = faces
    if breakage == "loss sign flipped":
        forward = SegLoss.forward
        monkeypatch.setattr(SegLoss, "forward", lambda self, *a: -forward(self, *a))
    if breakage == "masks of other images":
        split = dataclasses.replace(faces, masks=np.roll(faces.masks, 1, axis=0))
    _, result = fit_new(arch, split, faces, loss_cfg, train_cfg, seed=0, epochs=80, size=32,
                        device=torch.device("cpu"), eval_every=80, progress=False)
    if breakage == "none":
        assert result.final_f > THRESHOLD, f"training did not learn: F {result.final_f:.3f} on its own images"
    else:
        assert result.final_f < THRESHOLD, f"the threshold does not catch '{breakage}': F {result.final_f:.3f}"
