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


def _device_augment(ranges, seed=0):
    import torch

    from train.augment import DeviceAugment

    return DeviceAugment(ranges, seed, torch.device("cpu"))


def test_device_flip_swaps_left_and_right_labels_and_twice_is_identity():
    import torch

    from train.augment import AugRanges

    img, mask = face_pair()
    aug = _device_augment(AugRanges(flip_p=1.0, affine_p=0.0, colour_p=0.0))
    images, masks = torch.from_numpy(np.stack([img, img])), torch.from_numpy(np.stack([mask, mask]))
    x, y = aug(images, masks)
    assert (y[:, 10:14, 4:10] == 5).all() and (y[:, 10:14, 22:28] == 4).all()
    assert (y[:, 5:7, 4:10] == 7).all() and (y[:, 14:20, 0:2] == 9).all()
    assert torch.allclose(x, images.permute(0, 3, 1, 2).float().div(255).flip(3))
    x2, y2 = aug((x * 255).round().to(torch.uint8).permute(0, 2, 3, 1), y)
    assert torch.equal(y2, masks) and torch.equal((x2 * 255).round().to(torch.uint8), images.permute(0, 3, 1, 2))


def _label_coded_pair(n: int = 8, side: int = 64):
    """Blocks of labels 0..18 whose image encodes the label (grey level 13 * label)."""
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 19, (n, side // 8, side // 8)).astype(np.uint8)
    masks = blocks.repeat(8, 1).repeat(8, 2)
    images = np.repeat((masks * 13)[..., None], 3, axis=3).astype(np.uint8)
    return images, masks


def test_device_geometry_keeps_image_and_mask_aligned():
    import torch

    from train.augment import AugRanges

    images, masks = _label_coded_pair()
    # no flip here: it swaps left/right labels in the mask only, by design (tested above)
    aug = _device_augment(AugRanges(flip_p=0.0, affine_p=1.0, colour_p=0.0, scale=0.25, rotate=20, translate=0.08))
    x, y = aug(torch.from_numpy(images), torch.from_numpy(masks))
    assert x.shape == (8, 3, 64, 64) and y.dtype == torch.uint8
    decoded = (x[:, 0] * 255 / 13).round().to(torch.uint8)
    # away from block edges (where bilinear mixes labels), the image's label is the mask's label
    interior = torch.nn.functional.max_pool2d(y[:, None].float(), 3, 1, 1)[:, 0] == \
        -torch.nn.functional.max_pool2d(-y[:, None].float(), 3, 1, 1)[:, 0]
    agree = (decoded == y)[interior].float().mean().item()
    assert agree > 0.99, agree
    assert not torch.equal(y, torch.from_numpy(masks))  # the geometry did move things
    moved = (y != torch.from_numpy(masks)).float().mean().item()
    assert moved > 0.2, moved
    # the mask keeps only labels that exist (nearest, never blended); outside the image: background
    assert set(torch.unique(y).tolist()) <= set(range(19))


def test_device_colour_changes_the_image_only():
    import torch

    from train.augment import AugRanges

    images, masks = _label_coded_pair()
    ranges = AugRanges(flip_p=0.0, affine_p=0.0, colour_p=1.0)
    x, y = _device_augment(ranges)(torch.from_numpy(images), torch.from_numpy(masks))
    assert torch.equal(y, torch.from_numpy(masks)) and 0 <= x.min() and x.max() <= 1
    assert not torch.allclose(x, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    same = _device_augment(AugRanges(flip_p=0.0, affine_p=0.0, colour_p=1.0, brightness=0, contrast=0,
                                     saturation=0, hue=0))
    x0, _ = same(torch.from_numpy(images), torch.from_numpy(masks))
    assert torch.allclose(x0, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, atol=1e-5)


def test_the_cpu_pipeline_reads_the_one_definition():
    from train.augment import AugRanges

    r = AugRanges.at(0.7)
    affine = next(t for t in train_pipeline(64, 0.7).transforms if isinstance(t, A.Affine))
    assert affine.p == r.affine_p and r.scale == 0.25 * 0.7 and r.rotate == 20 * 0.7
    assert not any(isinstance(t, A.Affine) for t in train_pipeline(64, 0.0).transforms)
    assert AugRanges.at(0.0).affine_p == 0.0 and AugRanges.at(0.0).colour_p == 0.0


def _draw_statistics(outputs: list[tuple[np.ndarray, np.ndarray]], disc_area: float, source_hue: float
                     ) -> dict[str, float]:
    """Per draw of a disc (label 1, uniform colour) with a left-eye marker (label 4) on the image's right:
    zoom = sqrt(area ratio), anisotropy = |log| of the ratio of the disc's principal axes (0 when x and y share
    one scale, whatever the rotation), flipped = the marker became a right eye, hue shift of the disc's colour."""
    import colorsys

    zoom, aniso, flipped, hue = [], [], [], []
    for image, mask in outputs:
        ys, xs = np.nonzero(mask == 1)
        zoom.append(np.sqrt(len(xs) / disc_area))
        eig = np.linalg.eigvalsh(np.cov(np.stack([xs, ys]).astype(float)))
        aniso.append(0.5 * abs(np.log(eig[1] / eig[0])))
        flipped.append((mask == 5).any())
        core = np.median(image[mask == 1].astype(float), axis=0) / 255
        shift = colorsys.rgb_to_hsv(*core)[0] - source_hue
        hue.append((shift + 0.5) % 1 - 0.5)
    return {"zoom_mean": float(np.mean(zoom)), "zoom_std": float(np.std(zoom)), "aniso": float(np.mean(aniso)),
            "flip_rate": float(np.mean(flipped)), "hue_std": float(np.std(hue))}


def test_cpu_and_device_augmentations_draw_from_one_distribution():
    """Issue 19 item 6: one scale for x and y in both paths, the same flip rate and zoom and hue-shift spread."""
    import colorsys

    import torch

    side, n = 96, 400
    yy, xx = np.mgrid[:side, :side]
    mask = np.zeros((side, side), np.uint8)
    mask[(yy - 48) ** 2 + (xx - 48) ** 2 <= 14 ** 2] = 1
    mask[44:52, 72:78] = 4
    disc_area = float((mask == 1).sum())
    colour = np.array([170, 100, 60], np.uint8)
    image = np.broadcast_to(colour, (side, side, 3)).copy()
    source_hue = colorsys.rgb_to_hsv(*(colour / 255))[0]

    pipe = train_pipeline(side, 1.0, seed=11)
    cpu = [(o["image"], o["mask"]) for o in (pipe(image=image, mask=mask) for _ in range(n))]
    from train.augment import AugRanges, DeviceAugment

    aug = DeviceAugment(AugRanges.at(1.0), 11, torch.device("cpu"))
    x, y = aug(torch.from_numpy(np.stack([image] * n)), torch.from_numpy(np.stack([mask] * n)))
    dev_images = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    dev = list(zip(dev_images, y.numpy()))
    a, b = _draw_statistics(cpu, disc_area, source_hue), _draw_statistics(dev, disc_area, source_hue)
    assert a["aniso"] < 0.05 and b["aniso"] < 0.05, (a, b)  # one scale for x and y: the disc stays round
    assert abs(a["flip_rate"] - b["flip_rate"]) < 0.1 and abs(a["flip_rate"] - 0.5) < 0.08, (a, b)
    assert abs(a["zoom_mean"] - b["zoom_mean"]) < 0.02, (a, b)
    assert abs(a["zoom_std"] - b["zoom_std"]) < 0.2 * a["zoom_std"], (a, b)
    assert abs(a["hue_std"] - b["hue_std"]) < 0.2 * a["hue_std"] and a["hue_std"] > 0.005, (a, b)


def test_cpu_colour_jitter_applies_its_parts_in_the_device_order():
    """Brightness, contrast, saturation, hue: the order `DeviceAugment._colour` uses (albumentations shuffles it)."""
    jitter = next(t for t in train_pipeline(64, 1.0, seed=0).transforms if isinstance(t, A.ColorJitter))
    assert all(jitter.get_params()["order"] == [0, 1, 2, 3] for _ in range(50))
