"""The challenge F-measure, exactly as the server scores it, plus dataset-level per-class F1 and mIoU.

Per image: the mean, over the classes present in the ground truth (background included), of
F1 = 2PR / (P + R + 1e-7) with P = tp / (tp + fp + 1e-7), R = tp / (tp + fn + 1e-7). The dataset score is the
plain mean over images. `python -m train.metric GT_DIR PRED_DIR` scores a folder of PNG masks.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from train.classes import CLASS_NAMES, NUM_CLASSES
from train.cli import parser as cli_parser

EPS = 1e-7


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(C, C) int64 confusion matrix, rows = ground truth, columns = prediction."""
    if gt.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    idx = gt.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 with the challenge's epsilons."""
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    p = tp / (tp + fp + EPS)
    r = tp / (tp + fn + EPS)
    return 2 * p * r / (p + r + EPS)


def image_f_measure(cm: np.ndarray) -> float:
    """The challenge score of one image from its confusion matrix."""
    present = cm.sum(1) > 0
    return float(f1_from_confusion(cm)[present].mean())


@dataclass
class Scorer:
    """Accumulates per-image scores and a dataset-level confusion matrix."""

    num_classes: int = NUM_CLASSES
    scores: list[float] = field(default_factory=list)
    total: np.ndarray = field(default_factory=lambda: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))
    class_f_sum: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES))
    class_count: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, np.int64))

    def add(self, gt: np.ndarray, pred: np.ndarray) -> float:
        return self.add_confusion(confusion(gt, pred, self.num_classes))

    def add_confusion(self, cm: np.ndarray) -> float:
        """One image's score from its (C, C) confusion matrix (computed wherever the prediction lives)."""
        present = cm.sum(1) > 0
        f1 = f1_from_confusion(cm)
        score = float(f1[present].mean())
        self.scores.append(score)
        self.total += cm
        self.class_f_sum[present] += f1[present]
        self.class_count += present
        return score

    @property
    def f_measure(self) -> float:
        """Mean over images of the per-image score: the challenge number."""
        return float(np.mean(self.scores)) if self.scores else float("nan")

    def per_class_image_f(self) -> np.ndarray:
        """Mean per-image F1 of each class over the images containing it (NaN where absent)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.class_f_sum / self.class_count

    def per_class_rows(self) -> list[dict]:
        """Each class's mean per-image F over the images containing it (None where none does), for final.json,
        the PDF report and analysis.compare."""
        return [{"id": c, "name": CLASS_NAMES[c], "images": int(self.class_count[c]),
                 "f": None if not self.class_count[c] else round(float(f), 4)}
                for c, f in enumerate(self.per_class_image_f())]

    def dataset_f1(self) -> np.ndarray:
        """F1 per class over the whole dataset's pooled confusion."""
        return f1_from_confusion(self.total)

    def miou(self) -> float:
        tp = np.diag(self.total).astype(np.float64)
        union = self.total.sum(0) + self.total.sum(1) - tp
        present = self.total.sum(1) > 0
        return float((tp[present] / union[present]).mean())

    def table(self) -> str:
        lines = [f"{'id':>3} {'class':<12} {'images':>6} {'mean F (img)':>12} {'dataset F1':>10}"]
        per_img, pooled = self.per_class_image_f(), self.dataset_f1()
        for c in range(self.num_classes):
            shown = f"{per_img[c]:12.4f}" if self.class_count[c] else f"{'-':>12}"
            lines.append(f"{c:>3} {CLASS_NAMES[c]:<12} {self.class_count[c]:>6} {shown} {pooled[c]:10.4f}")
        lines.append(f"mIoU={self.miou():.4f}")
        return "\n".join(lines)


def score_folders(gt_dir: Path, pred_dir: Path) -> Scorer:
    """Score every ground-truth mask in gt_dir against the PNG of the same stem in pred_dir."""
    from train.data import DataError, read_mask

    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for d in (gt_dir, pred_dir):
        if not d.is_dir():
            raise DataError(f"{d}: folder missing")
    gts = sorted(gt_dir.glob("*.png"))
    if not gts:
        raise DataError(f"{gt_dir}: no *.png ground-truth masks")
    missing = [pred_dir / g.name for g in gts if not (pred_dir / g.name).is_file()]
    if missing:
        raise DataError(f"missing predictions: {', '.join(map(str, missing[:10]))}"
                        + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""))
    scorer = Scorer()
    for g in gts:
        gt, pred = read_mask(g), read_mask(pred_dir / g.name)
        if gt.shape != pred.shape:
            raise DataError(f"{pred_dir / g.name}: size {pred.shape[1]}x{pred.shape[0]} differs from ground truth "
                            f"{gt.shape[1]}x{gt.shape[0]}")
        scorer.add(gt, pred)
    return scorer


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser("python -m train.metric", __doc__)
    parser.add_argument("gt_dir", type=Path, help="folder of ground-truth PNG label masks")
    parser.add_argument("pred_dir", type=Path, help="folder of predicted PNG label masks, same file names")
    args = parser.parse_args(argv)
    from train.data import DataError

    try:
        scorer = score_folders(args.gt_dir, args.pred_dir)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(scorer.table())
    print(f"f_measure={scorer.f_measure:.6f} images={len(scorer.scores)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
