"""Paired (image, mask) augmentation with albumentations: train and eval pipelines.

The horizontal flip swaps the subject's left/right classes (4<->5, 6<->7, 8<->9) exactly when it flips.
Masks are always resampled nearest-neighbour. No lambdas, so pipelines pickle into DataLoader workers.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks PyPI on import otherwise

import albumentations as A
import cv2
import numpy as np

from train.classes import FLIP_LUT


class LabelSwapHorizontalFlip(A.HorizontalFlip):
    """Horizontal flip that also swaps left/right face-part labels in the mask."""

    def apply_to_mask(self, mask: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        return FLIP_LUT[np.ascontiguousarray(mask[:, ::-1])]


def train_pipeline(size: int, strength: float = 1.0, seed: int | None = None) -> A.Compose:
    """Flip with label swap, scale/rotate/shift, colour jitter; `strength` in [0, 1] scales the geometry
    and colour ranges (0 leaves only the flip)."""
    s = float(strength)
    transforms = [LabelSwapHorizontalFlip(p=0.5)]
    if s > 0:
        transforms += [
            A.Affine(scale=(1 - 0.25 * s, 1 + 0.25 * s), rotate=(-20 * s, 20 * s),
                     translate_percent=(-0.08 * s, 0.08 * s), interpolation=cv2.INTER_LINEAR,
                     mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
                     fill=0, fill_mask=0, p=0.8),
            A.ColorJitter(brightness=0.3 * s, contrast=0.3 * s, saturation=0.3 * s, hue=0.03 * s, p=0.8),
        ]
    transforms.append(A.Resize(size, size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
    return A.Compose(transforms, seed=seed)


def eval_pipeline(size: int) -> A.Compose:
    """Resize only (masks nearest)."""
    return A.Compose([A.Resize(size, size, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST)])
