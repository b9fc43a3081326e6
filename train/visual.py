"""Pictures a person can look at: input / ground truth / prediction grids and colour overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from train.classes import colorize


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colour-coded `mask` over `image` (both H x W)."""
    return (image * (1 - alpha) + colorize(mask) * alpha).astype(np.uint8)


def prediction_grid(images: list[np.ndarray], gts: list[np.ndarray], preds: list[np.ndarray], path: Path,
                    cell: int = 128) -> Path:
    """One row per image: input, ground truth, prediction (colour-coded), saved as PNG."""
    def fit(a: np.ndarray, nearest: bool) -> np.ndarray:
        r = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
        return np.asarray(Image.fromarray(a).resize((cell, cell), r))

    rows = [np.concatenate([fit(i, False), fit(colorize(g), True), fit(colorize(p), True)], 1)
            for i, g, p in zip(images, gts, preds)]
    Image.fromarray(np.concatenate(rows, 0)).save(path)
    return path
