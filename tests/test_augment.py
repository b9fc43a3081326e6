from __future__ import annotations

import albumentations as A
import numpy as np

from train.augment import LabelSwapHorizontalFlip, eval_pipeline, train_pipeline


def face_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[10:14, 22:28] = 4  # subject's left eye on the image's right
    mask[10:14, 4:10] = 5
    mask[5:7, 22:28] = 6
    mask[14:20, 30:32] = 8
    return img, mask


def test_flip_twice_is_identity_and_swaps_sides():
    img, mask = face_pair()
    flip = A.Compose([LabelSwapHorizontalFlip(p=1.0)])
    once = flip(image=img, mask=mask)
    assert (once["mask"][10:14, 4:10] == 5).all()  # the left eye moved to the image's left: now a right eye
    assert (once["mask"][10:14, 22:28] == 4).all()
    assert (once["mask"][5:7, 4:10] == 7).all() and (once["mask"][14:20, 0:2] == 9).all()
    assert np.array_equal(once["image"], img[:, ::-1])
    twice = flip(image=once["image"], mask=once["mask"])
    assert np.array_equal(twice["image"], img) and np.array_equal(twice["mask"], mask)


def test_labels_stay_in_range_and_seeded_pipelines_reproduce():
    img, mask = face_pair()
    mask[0:3] = 18
    a, b = train_pipeline(32, 1.0, seed=7), train_pipeline(32, 1.0, seed=7)
    for _ in range(30):
        out_a, out_b = a(image=img, mask=mask), b(image=img, mask=mask)
        assert np.array_equal(out_a["mask"], out_b["mask"]) and np.array_equal(out_a["image"], out_b["image"])
        assert set(np.unique(out_a["mask"])) <= set(range(19))
        assert set(np.unique(out_a["mask"])) <= set(np.unique(mask)) | {0, 5, 7, 9}


def test_flip_never_leaves_a_left_part_on_the_wrong_side():
    img, mask = face_pair()
    pipe = train_pipeline(32, 0.0, seed=1)  # flip only
    for _ in range(20):
        m = pipe(image=img, mask=mask)["mask"]
        xs = np.nonzero(m == 4)[1]
        assert xs.mean() > 16  # the subject's left eye stays on the image's right, flipped or not


def test_eval_pipeline_resizes_masks_nearest():
    img, mask = face_pair()
    out = eval_pipeline(64)(image=img, mask=mask)
    assert out["image"].shape == (64, 64, 3)
    assert set(np.unique(out["mask"])) == set(np.unique(mask))


def test_flip_tta_prediction_is_mirror_equivariant_with_label_swap():
    import optuna
    import torch

    from space.network import build_model
    from space.presets import PRESETS
    from space.sample import sample_config
    from train.classes import FLIP_LUT
    from train.infer import predict_logits

    torch.manual_seed(0)
    model = build_model(sample_config(optuna.trial.FixedTrial(PRESETS["deeplab_lite"]))[0]).eval()
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    device = torch.device("cpu")
    tta = predict_logits(model, images, device, flip_tta=True)
    tta_mirrored = predict_logits(model, np.ascontiguousarray(images[:, :, ::-1]), device, flip_tta=True)
    # predicting the mirror image = mirroring the prediction and swapping left/right classes
    expected = tta.flip(3)[:, torch.as_tensor(FLIP_LUT).long()]
    assert torch.allclose(tta_mirrored, expected, atol=1e-4)
    plain_mirrored = predict_logits(model, np.ascontiguousarray(images[:, :, ::-1]), device)
    assert not torch.allclose(plain_mirrored, predict_logits(model, images, device).flip(3)[
        :, torch.as_tensor(FLIP_LUT).long()], atol=1e-4)  # an untrained net alone is not symmetric
