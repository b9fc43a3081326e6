from __future__ import annotations

import numpy as np
from conftest import run_cli, run_main
from PIL import Image

from train.data import read_mask
from train.metric import Scorer, confusion, image_f_measure


def slow_image_f(gt: np.ndarray, pred: np.ndarray) -> float:
    """The challenge formula written plainly, one class at a time."""
    scores = []
    for c in np.unique(gt):
        tp = np.sum((gt == c) & (pred == c))
        fp = np.sum((gt != c) & (pred == c))
        fn = np.sum((gt == c) & (pred != c))
        p = tp / (tp + fp + 1e-7)
        r = tp / (tp + fn + 1e-7)
        scores.append(2 * p * r / (p + r + 1e-7))
    return float(np.mean(scores))


def perturb(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pred = np.roll(mask, (int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), (0, 1)).copy()
    a, b = rng.choice(19, 2, replace=False)
    swap = pred == a
    pred[pred == b] = a
    pred[swap] = b
    for c in (3, 15, 16):  # erase small classes
        if rng.random() < 0.5:
            pred[pred == c] = 1
    return pred


def test_hand_computed_case():
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    # class 0: tp 1, fn 1 -> P 1, R .5, F 2/3; class 1: tp 2, fp 1 -> P 2/3, R 1, F 0.8
    assert abs(image_f_measure(confusion(gt, pred)) - (2 / 3 + 0.8) / 2) < 1e-6


def test_fast_metric_equals_plain_loop_on_real_masks(real_data):
    rng = np.random.default_rng(0)
    scorer, slow = Scorer(), []
    for path in sorted((real_data / "val" / "masks").glob("*.png"))[:40]:
        gt = read_mask(path)
        pred = perturb(gt, rng)
        fast = scorer.add(gt, pred)
        ref = slow_image_f(gt, pred)
        assert abs(fast - ref) < 1e-9
        slow.append(ref)
        assert scorer.add(gt, gt) > 0.999999
    assert np.mean(slow) < 0.99  # the perturbations really changed the masks


def test_cli_scores_folders(tmp_path, tiny_data):
    gt_dir = tiny_data / "val" / "masks"
    same = run_cli("train.metric", str(gt_dir), str(gt_dir))
    assert same.returncode == 0, same.stderr
    assert same.stdout.strip().splitlines()[-1] == "f_measure=1.000000 images=8"
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    rng = np.random.default_rng(1)
    expected = []
    for path in sorted(gt_dir.glob("*.png")):
        gt = read_mask(path)
        pred = perturb(gt, rng)
        Image.fromarray(pred).save(pred_dir / path.name)
        expected.append(slow_image_f(gt, pred))
    res = run_cli("train.metric", str(gt_dir), str(pred_dir))
    assert res.returncode == 0, res.stderr
    value = float(res.stdout.strip().splitlines()[-1].split()[0].split("=")[1])
    assert abs(value - np.mean(expected)) < 1e-6
    (pred_dir / sorted(gt_dir.glob("*.png"))[0].name).unlink()
    missing = run_main("train.metric", str(gt_dir), str(pred_dir))
    assert missing.returncode == 2 and "missing predictions" in missing.stderr and "Traceback" not in missing.stderr
