"""The one image resize used for training and inference (numpy + pillow only)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Square resize with PIL bilinear (antialiased when shrinking); the one resize used for training and
    inference."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0))
