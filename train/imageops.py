"""The one image resize used for training and inference, and how a prediction setting is named (numpy + pillow
only: the bundled run.py holds this module too)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Square resize with PIL bilinear (antialiased when shrinking); the one resize used for training and
    inference."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0))


def describe_sizes(sizes: tuple[int, ...]) -> str:
    """A prediction setting in words: '256 px', or '256 + 320 px (logits averaged)'."""
    return " + ".join(str(s) for s in sizes) + " px" + (" (logits averaged)" if len(sizes) > 1 else "")
